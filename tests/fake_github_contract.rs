//! The fake GitHub against GitHub's published OpenAPI description (npm
//! `@octokit/openapi`, fetched at test time), and `GitHubClient` end to end
//! against the fake.

#[path = "support/fake_github.rs"]
mod fake_github;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use claude_operator::admission::ActorFacts;
use claude_operator::api::{ActorType, Permission, TokenAccess};
use claude_operator::github::client::{Error, GitHubClient, GitHubClientConfig, Reaction};
use fake_github::{APP_ID, APP_SLUG, FakeFile, FakeGitHub, FakeIssue, FakePull, Fault, FaultKind, ROUTES};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

/// The pinned version of GitHub's description.
const OPENAPI_PACKAGE: &str = "@octokit/openapi@23.0.2";

/// GitHub's OpenAPI description of api.github.com, fetched with npm once per
/// target directory.
fn openapi() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("octokit-openapi-23.0.2");
        let file = dir.join("package/generated/api.github.com.json");
        if !file.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            let out = Command::new("npm")
                .args(["pack", OPENAPI_PACKAGE, "--silent", "--pack-destination"])
                .arg(&dir)
                .output()
                .unwrap_or_else(|e| panic!("npm is needed to fetch {OPENAPI_PACKAGE}: {e}"));
            assert!(
                out.status.success(),
                "`npm pack {OPENAPI_PACKAGE}` failed; the contract test needs the npm registry:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let tarball = String::from_utf8_lossy(&out.stdout)
                .trim()
                .lines()
                .last()
                .unwrap()
                .to_owned();
            let status = Command::new("tar")
                .arg("xzf")
                .arg(dir.join(&tarball))
                .arg("-C")
                .arg(&dir)
                .arg("package/generated/api.github.com.json")
                .status()
                .unwrap();
            assert!(status.success(), "extracting {tarball} failed");
        }
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        serde_json::from_str(&text).expect("the OpenAPI description is JSON")
    })
}

fn resolve<'a>(spec: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..8 {
        let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
            return schema;
        };
        let pointer = reference.strip_prefix('#').expect("local $ref");
        schema = spec
            .pointer(pointer)
            .unwrap_or_else(|| panic!("dangling $ref {reference}"));
    }
    schema
}

/// Checks `value` against `schema`: type, enum, nullability, and for objects
/// that every required property is present and itself conforms, down to
/// `depth` levels of nesting. Collects problems with their JSON path.
fn conform(spec: &Value, schema: &Value, value: &Value, path: &str, depth: u32, problems: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    if value.is_null() {
        let nullable = schema.get("nullable") == Some(&Value::Bool(true))
            || schema
                .get("type")
                .and_then(Value::as_array)
                .is_some_and(|t| t.contains(&"null".into()))
            || ["anyOf", "oneOf"].iter().any(|k| {
                schema.get(*k).and_then(Value::as_array).is_some_and(|vs| {
                    vs.iter()
                        .any(|v| resolve(spec, v).get("nullable") == Some(&Value::Bool(true)))
                })
            });
        if !nullable {
            problems.push(format!("{path}: null, but the schema is not nullable"));
        }
        return;
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for s in all {
            conform(spec, s, value, path, depth, problems);
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(variants) = schema.get(key).and_then(Value::as_array) {
            let fits = variants.iter().any(|s| {
                let mut p = vec![];
                conform(spec, s, value, path, depth, &mut p);
                p.is_empty()
            });
            if !fits {
                problems.push(format!("{path}: matches none of the {key} variants"));
            }
        }
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() {
        let ok = types.iter().any(|t| match *t {
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            "null" => value.is_null(),
            _ => true,
        });
        if !ok {
            problems.push(format!("{path}: {value} is not of type {types:?}"));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        problems.push(format!("{path}: {value} is not one of {options:?}"));
    }
    if depth == 0 {
        return;
    }
    if let (Some(object), Some(required)) = (value.as_object(), schema.get("required").and_then(Value::as_array)) {
        for name in required.iter().filter_map(Value::as_str) {
            match object.get(name) {
                None => problems.push(format!("{path}.{name}: required, missing")),
                Some(v) => {
                    if let Some(s) = schema.pointer(&format!("/properties/{name}")) {
                        conform(spec, s, v, &format!("{path}.{name}"), depth - 1, problems);
                    }
                }
            }
        }
    }
    if let (Some(items), Some(item_schema)) = (value.as_array(), schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            conform(spec, item_schema, item, &format!("{path}[{i}]"), depth - 1, problems);
        }
    }
}

/// The documented response of `method template` for `status`.
fn documented<'a>(spec: &'a Value, method: &str, template: &str, status: u16) -> Option<&'a Value> {
    let operation = spec.get("paths")?.get(template)?.get(method.to_ascii_lowercase())?;
    let response = operation.get("responses")?.get(status.to_string())?;
    Some(resolve(spec, response))
}

fn fake_world(fake: &FakeGitHub) {
    fake.add_user("acme", 10, "Organization")
        .add_user("alice", 11, "User")
        .add_user("tess", 12, "User")
        .add_user("mona", 13, "User")
        .add_user("rita", 14, "User")
        .add_user("wes", 15, "User")
        .add_user("nobody", 16, "User")
        .add_user("renovate[bot]", 17, "Bot")
        .install("acme/api", 77)
        .install("acme/web", 77)
        .set_role("acme/api", "alice", "admin")
        .set_role("acme/api", "mona", "maintain")
        .set_role("acme/api", "wes", "write")
        .set_role("acme/api", "tess", "triage")
        .set_role("acme/api", "rita", "read")
        .set_role("acme/api", "renovate[bot]", "write")
        .add_org_member("acme", "alice")
        .add_org_member("acme", "wes")
        .set_team_membership("acme", "platform", "alice", "active")
        .set_team_membership("acme", "platform", "wes", "pending")
        .add_pull(
            "acme/api",
            5,
            FakePull {
                head_sha: "a".repeat(40),
                head_ref: "feature".into(),
                head_repo: Some("stranger/api".into()),
                author: "stranger".into(),
            },
        )
        .add_pull(
            "acme/api",
            6,
            FakePull {
                head_sha: "b".repeat(40),
                head_ref: "topic".into(),
                head_repo: Some("acme/api".into()),
                author: "wes".into(),
            },
        )
        .set_pull_files("acme/api", 6, &["src/lib.rs", "docs/guide.md"])
        .add_issue(
            "acme/api",
            7,
            FakeIssue {
                title: "Parser crashes".into(),
                body: "Steps to reproduce: ...".into(),
                author: "rita".into(),
                association: "CONTRIBUTOR".into(),
            },
        );
    fake.add_thread_comment("acme/api", 7, "wes", "MEMBER", "I see it too");
}

#[tokio::test]
async fn fake_answers_conform_to_githubs_openapi_description() {
    let spec = openapi();
    let fake = FakeGitHub::start().await;
    fake_world(&fake);
    let http = reqwest::Client::new();
    let jwt = fake.app_jwt();

    // Mint an installation token first (also checked below).
    let minted: Value = http
        .post(format!("{}/app/installations/77/access_tokens", fake.url))
        .bearer_auth(&jwt)
        .json(&serde_json::json!({"repositories": ["api"], "permissions": {"issues": "write"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = minted["token"].as_str().unwrap().to_owned();
    let wide: Value = http
        .post(format!("{}/app/installations/77/access_tokens", fake.url))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let wide = wide["token"].as_str().unwrap().to_owned();

    enum Auth<'a> {
        App,
        Token(&'a str),
    }
    let comment_body = serde_json::json!({"body": "hello"});
    // (method, OpenAPI path, concrete path, credentials, request body, expected status)
    type Case<'a> = (&'static str, &'static str, String, Auth<'a>, Option<Value>, u16);
    let cases: Vec<Case> = vec![
        ("GET", "/app", "/app".into(), Auth::App, None, 200),
        (
            "GET",
            "/repos/{owner}/{repo}/installation",
            "/repos/acme/api/installation".into(),
            Auth::App,
            None,
            200,
        ),
        (
            "POST",
            "/app/installations/{installation_id}/access_tokens",
            "/app/installations/77/access_tokens".into(),
            Auth::App,
            Some(serde_json::json!({"repositories": ["web"]})),
            201,
        ),
        (
            "GET",
            "/repos/{owner}/{repo}/collaborators/{username}/permission",
            "/repos/acme/api/collaborators/tess/permission".into(),
            Auth::Token(&wide),
            None,
            200,
        ),
        (
            "GET",
            "/repos/{owner}/{repo}/collaborators/{username}/permission",
            "/repos/acme/api/collaborators/nobody/permission".into(),
            Auth::Token(&wide),
            None,
            200,
        ),
        (
            "GET",
            "/orgs/{org}/members/{username}",
            "/orgs/acme/members/alice".into(),
            Auth::Token(&wide),
            None,
            204,
        ),
        (
            "GET",
            "/orgs/{org}/members/{username}",
            "/orgs/acme/members/rita".into(),
            Auth::Token(&wide),
            None,
            404,
        ),
        (
            "GET",
            "/orgs/{org}/teams/{team_slug}/memberships/{username}",
            "/orgs/acme/teams/platform/memberships/wes".into(),
            Auth::Token(&wide),
            None,
            200,
        ),
        (
            "GET",
            "/orgs/{org}/teams/{team_slug}/memberships/{username}",
            "/orgs/acme/teams/platform/memberships/rita".into(),
            Auth::Token(&wide),
            None,
            404,
        ),
        (
            "GET",
            "/users/{username}",
            "/users/alice".into(),
            Auth::Token(&wide),
            None,
            200,
        ),
        (
            "GET",
            "/users/{username}",
            "/users/renovate%5Bbot%5D".into(),
            Auth::Token(&wide),
            None,
            200,
        ),
        (
            "GET",
            "/repos/{owner}/{repo}/pulls/{pull_number}",
            "/repos/acme/api/pulls/5".into(),
            Auth::Token(&token),
            None,
            200,
        ),
        (
            "GET",
            "/repos/{owner}/{repo}/pulls/{pull_number}/files",
            "/repos/acme/api/pulls/6/files?per_page=100&page=1".into(),
            Auth::Token(&token),
            None,
            200,
        ),
        (
            "POST",
            "/repos/{owner}/{repo}/pulls/{pull_number}/reviews",
            "/repos/acme/api/pulls/6/reviews".into(),
            Auth::Token(&token),
            Some(serde_json::json!({
                "commit_id": "b".repeat(40), "event": "COMMENT", "body": "Two remarks.",
                "comments": [{"path": "src/lib.rs", "line": 1, "body": "Off by one."}],
            })),
            200,
        ),
        (
            "POST",
            "/repos/{owner}/{repo}/pulls/{pull_number}/reviews",
            "/repos/acme/api/pulls/6/reviews".into(),
            Auth::Token(&token),
            Some(serde_json::json!({"event": "COMMENT"})),
            422,
        ),
        (
            "GET",
            "/repos/{owner}/{repo}/issues/{issue_number}",
            "/repos/acme/api/issues/7".into(),
            Auth::Token(&token),
            None,
            200,
        ),
        (
            "GET",
            "/repos/{owner}/{repo}/issues/{issue_number}",
            "/repos/acme/api/issues/6".into(),
            Auth::Token(&token),
            None,
            200,
        ),
        (
            "GET",
            "/repos/{owner}/{repo}/issues/{issue_number}/comments",
            "/repos/acme/api/issues/7/comments?per_page=100&page=1".into(),
            Auth::Token(&token),
            None,
            200,
        ),
        (
            "POST",
            "/repos/{owner}/{repo}/issues/{issue_number}/comments",
            "/repos/acme/api/issues/5/comments".into(),
            Auth::Token(&token),
            Some(comment_body.clone()),
            201,
        ),
        (
            "PATCH",
            "/repos/{owner}/{repo}/issues/comments/{comment_id}",
            "/repos/acme/api/issues/comments/{last}".into(),
            Auth::Token(&token),
            Some(comment_body.clone()),
            200,
        ),
        (
            "POST",
            "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions",
            "/repos/acme/api/issues/comments/{last}/reactions".into(),
            Auth::Token(&token),
            Some(serde_json::json!({"content": "eyes"})),
            201,
        ),
        (
            "POST",
            "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions",
            "/repos/acme/api/issues/comments/{last}/reactions".into(),
            Auth::Token(&token),
            Some(serde_json::json!({"content": "eyes"})),
            200,
        ),
        (
            "DELETE",
            "/installation/token",
            "/installation/token".into(),
            Auth::Token(&token),
            None,
            204,
        ),
    ];

    // Every endpoint the fake serves is checked.
    let covered: std::collections::BTreeSet<(&str, &str)> = cases.iter().map(|c| (c.0, c.1)).collect();
    for route in ROUTES {
        assert!(covered.contains(&route), "no contract case for {route:?}");
    }

    let mut problems = vec![];
    let mut last_comment = 0i64;
    let mut checked = 0;
    for (method, template, concrete, auth, body, expected) in cases {
        let concrete = concrete.replace("{last}", &last_comment.to_string());
        let mut request = http.request(method.parse().unwrap(), format!("{}{concrete}", fake.url));
        request = match auth {
            Auth::App => request.bearer_auth(&jwt),
            Auth::Token(t) => request.header("authorization", format!("token {t}")),
        };
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let what = format!("{method} {concrete} ({template})");
        if status != expected {
            problems.push(format!("{what}: status {status}, expected {expected}: {text}"));
            continue;
        }
        let Some(doc) = documented(spec, method, template, status) else {
            problems.push(format!("{what}: status {status} is not documented"));
            continue;
        };
        checked += 1;
        match doc.pointer("/content/application~1json/schema") {
            None => {
                if (200..300).contains(&status) && !text.is_empty() {
                    problems.push(format!("{what}: documented without a body, but the fake sent {text}"));
                }
            }
            Some(schema) => {
                let value: Value = match serde_json::from_str(&text) {
                    Ok(v) => v,
                    Err(e) => {
                        problems.push(format!("{what}: body is not JSON ({e}): {text}"));
                        continue;
                    }
                };
                let mut found = vec![];
                conform(spec, schema, &value, "$", 6, &mut found);
                problems.extend(found.into_iter().map(|p| format!("{what}: {p}")));
                if template.ends_with("/comments") && method == "POST" {
                    last_comment = value["id"].as_i64().unwrap();
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the fake departs from GitHub's description:\n{}",
        problems.join("\n")
    );
    assert_eq!(checked, 23);

    // The checker itself catches departures.
    let schema = spec.pointer("/components/schemas/team-membership").unwrap();
    let mut p = vec![];
    conform(
        spec,
        schema,
        &serde_json::json!({"role": "member", "state": "gone"}),
        "$",
        3,
        &mut p,
    );
    assert_eq!(p.len(), 2, "{p:?}");
}

#[tokio::test]
async fn fake_checks_authentication() {
    let fake = FakeGitHub::start().await;
    fake_world(&fake);
    let http = reqwest::Client::new();
    let get = |path: &str, auth: Option<String>| {
        let mut r = http.get(format!("{}{path}", fake.url));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    assert_eq!(get("/app", None).await.unwrap().status(), 401);
    // A JWT-shaped value not signed by the App's key.
    let forged = {
        let jwt = fake.app_jwt();
        let mut parts: Vec<&str> = jwt.split('.').collect();
        parts[2] = "c2lnbmF0dXJl";
        parts.join(".")
    };
    assert_eq!(
        get("/app", Some(format!("Bearer {forged}"))).await.unwrap().status(),
        401
    );
    assert_eq!(
        get("/app", Some(format!("Bearer {}", fake.app_jwt())))
            .await
            .unwrap()
            .status(),
        200
    );
    // Installation endpoints refuse the JWT and unknown tokens.
    let jwt = format!("Bearer {}", fake.app_jwt());
    assert_ne!(get("/users/alice", Some(jwt)).await.unwrap().status(), 200);
    assert_eq!(
        get("/users/alice", Some("token ghs_nope".into()))
            .await
            .unwrap()
            .status(),
        401
    );
}

fn client_for(fake: &FakeGitHub, tune: impl FnOnce(&mut GitHubClientConfig)) -> GitHubClient {
    let mut config = GitHubClientConfig::new(APP_ID, SecretString::from(fake.private_key_pem()), fake.url.clone());
    config.retry_backoff = Duration::from_millis(10);
    tune(&mut config);
    GitHubClient::new(config).unwrap()
}

async fn facts(client: &GitHubClient, login: &str) -> Result<ActorFacts, claude_operator::admission::Unavailable> {
    client
        .actor_facts(
            77,
            "acme",
            "api",
            login,
            &["acme".to_owned()],
            &["acme/platform".to_owned()],
        )
        .await
}

#[tokio::test]
async fn client_reads_permissions_memberships_and_account_types() {
    let fake = FakeGitHub::start().await;
    fake_world(&fake);
    let client = client_for(&fake, |_| {});

    assert_eq!(client.app_slug().await.unwrap(), APP_SLUG);
    assert_eq!(client.installation_for_repo("acme", "api").await.unwrap(), 77);
    assert!(matches!(
        client.installation_for_repo("acme", "elsewhere").await,
        Err(Error::Status { status: 404, .. })
    ));

    let cases = [
        ("alice", Some(Permission::Admin)),
        ("mona", Some(Permission::Maintain)),
        ("wes", Some(Permission::Write)),
        ("tess", Some(Permission::Triage)),
        ("rita", Some(Permission::Read)),
        ("nobody", None),
    ];
    for (login, permission) in cases {
        let f = facts(&client, login).await.unwrap();
        assert_eq!(f.permission, permission, "{login}");
        assert_eq!(f.user_type, ActorType::User);
    }
    let alice = facts(&client, "alice").await.unwrap();
    assert_eq!(alice.org_member.get("acme"), Some(&true));
    assert_eq!(alice.team_member.get("acme/platform"), Some(&true));
    let wes = facts(&client, "wes").await.unwrap();
    assert_eq!(wes.org_member.get("acme"), Some(&true));
    assert_eq!(
        wes.team_member.get("acme/platform"),
        Some(&false),
        "pending is not active"
    );
    let rita = facts(&client, "rita").await.unwrap();
    assert_eq!(rita.org_member.get("acme"), Some(&false));
    assert_eq!(rita.team_member.get("acme/platform"), Some(&false));

    let bot = facts(&client, "renovate[bot]").await.unwrap();
    assert_eq!(bot.user_type, ActorType::Bot);
    assert_eq!(bot.permission, Some(Permission::Write));

    // An unknown user: GitHub cannot answer, so the facts are unavailable.
    assert!(facts(&client, "ghost").await.is_err());

    let fork = client.pull_head(77, "acme", "api", 5).await.unwrap();
    assert!(fork.fork);
    assert_eq!(fork.sha, "a".repeat(40));
    let same = client.pull_head(77, "acme", "api", 6).await.unwrap();
    assert!(!same.fork);
    assert_eq!(same.ref_, "topic");
    assert_eq!(same.default_branch.as_deref(), Some("main"));
    // The changed files, page by page (the fake pages as GitHub does).
    let many: Vec<String> = (0..230).map(|i| format!("src/f{i}.rs")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    fake.set_pull_files("acme/api", 5, &refs);
    assert_eq!(client.pull_files(77, "acme", "api", 5).await.unwrap(), many);
    assert_eq!(
        client.pull_files(77, "acme", "api", 6).await.unwrap(),
        ["src/lib.rs", "docs/guide.md"]
    );
}

#[tokio::test]
async fn client_caches_answers_within_the_ttl_but_not_errors() {
    let fake = FakeGitHub::start().await;
    fake_world(&fake);
    let client = client_for(&fake, |c| {
        c.facts_ttl = Duration::from_millis(600);
        c.negative_facts_ttl = Duration::from_millis(200);
    });
    facts(&client, "alice").await.unwrap();
    // Concurrent lookups shared one installation token.
    assert_eq!(fake.minted("*"), 1);
    let after_first = fake.requests().len();
    facts(&client, "alice").await.unwrap();
    facts(&client, "ALICE").await.unwrap();
    assert_eq!(
        fake.requests().len(),
        after_first,
        "second call within the TTL asks nothing"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    facts(&client, "alice").await.unwrap();
    assert!(fake.requests().len() > after_first, "expired answers are asked again");

    // Negative answers expire sooner.
    facts(&client, "rita").await.unwrap();
    let n = fake.requests().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    facts(&client, "rita").await.unwrap();
    assert!(fake.requests().len() > n);

    // Errors are not cached.
    fake.inject(Fault::new(FaultKind::Status(404)).on_path("/users/mona"));
    assert!(facts(&client, "mona").await.is_err());
    assert_eq!(
        facts(&client, "mona").await.unwrap().permission,
        Some(Permission::Maintain)
    );
}

#[tokio::test]
async fn server_errors_are_retried_a_bounded_number_of_times() {
    let fake = FakeGitHub::start().await;
    fake_world(&fake);
    let client = client_for(&fake, |c| c.max_retries = 2);
    // A transient failure is retried away.
    fake.inject(Fault::new(FaultKind::Status(502)).on_path("/collaborators/").times(2));
    assert_eq!(facts(&client, "wes").await.unwrap().permission, Some(Permission::Write));
    assert_eq!(fake.count("GET", "/collaborators/wes/permission"), 3);

    // A persistent one is Unavailable after 1 + 2 attempts.
    fake.inject(Fault::new(FaultKind::Status(500)).on_path("/collaborators/").times(100));
    let err = facts(&client, "tess").await.unwrap_err();
    assert!(err.message.contains("500"), "{err}");
    assert_eq!(fake.count("GET", "/collaborators/tess/permission"), 3);
}

#[tokio::test]
async fn slow_answers_time_out_as_unavailable() {
    let fake = FakeGitHub::start().await;
    fake_world(&fake);
    let client = client_for(&fake, |c| {
        c.request_timeout = Duration::from_millis(300);
        c.max_retries = 1;
    });
    facts(&client, "alice").await.unwrap(); // mints the lookup token
    // An answer that never comes (an hour): only the client's own deadline
    // can end the call, so it ending at all, Unavailable after its two
    // attempts, is the proof; the outer bound only keeps a broken client
    // from hanging the suite.
    fake.inject(
        Fault::new(FaultKind::Delay(Duration::from_secs(3600)))
            .on_path("/users/rita")
            .times(10),
    );
    let err = tokio::time::timeout(Duration::from_secs(120), facts(&client, "rita"))
        .await
        .expect("the client waited for an answer that never comes")
        .unwrap_err();
    assert!(err.message.contains("no answer within"), "{err}");
    assert_eq!(fake.count("GET", "/users/rita"), 2);
}

#[tokio::test]
async fn rate_limits_are_waited_out_and_counted() {
    let fake = FakeGitHub::start().await;
    fake_world(&fake);
    let client = client_for(&fake, |c| c.max_rate_limit_wait = Duration::from_secs(5));
    fake.inject(Fault::new(FaultKind::SecondaryRateLimit { retry_after_secs: 1 }).on_path("/users/alice"));
    fake.inject(Fault::new(FaultKind::TooManyRequests { retry_after_secs: 0 }).on_path("/orgs/acme/members/alice"));
    let started = std::time::Instant::now();
    facts(&client, "alice").await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(client.rate_limit_waits(), 2);
    assert_eq!(
        client
            .rate_limit_wait_counter()
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    // A wait longer than allowed fails at once, and is not counted.
    fake.inject(Fault::new(FaultKind::PrimaryRateLimit { reset_in_secs: 3600 }).on_path("/users/wes"));
    let err = facts(&client, "wes").await.unwrap_err();
    assert!(err.message.contains("rate limited"), "{err}");
    assert_eq!(client.rate_limit_waits(), 2);
    // A plain 403 is a refusal, not a rate limit.
    fake.inject(Fault::new(FaultKind::Status(403)).on_path("/users/tess"));
    assert!(facts(&client, "tess").await.is_err());
    assert_eq!(client.rate_limit_waits(), 2);
    assert_eq!(fake.count("GET", "/users/tess"), 1);
}

#[tokio::test]
async fn run_tokens_are_minted_and_revoked_exactly_once() {
    let fake = FakeGitHub::start().await;
    fake_world(&fake);
    let client = client_for(&fake, |_| {});
    let permissions: BTreeMap<String, TokenAccess> = [
        ("contents".to_owned(), TokenAccess::Read),
        ("issues".to_owned(), TokenAccess::Write),
    ]
    .into();
    let minted = client.mint_token(77, "api", &permissions).await.unwrap();
    assert!(minted.expires_at > jiff::Timestamp::now());
    assert_eq!(fake.minted("acme/api"), 1);
    {
        let state = fake.state();
        let token = &state.tokens[minted.token.expose_secret()];
        assert_eq!(token.repositories.as_deref(), Some(&["acme/api".to_owned()][..]));
        assert_eq!(token.permissions["contents"], "read");
    }
    // The minted token never shows in the debug output.
    assert!(!format!("{minted:?}").contains(minted.token.expose_secret()));

    client.revoke_token(&minted.token).await.unwrap();
    // Revoking again is fine (GitHub answers 401 for a dead token) and not counted twice.
    client.revoke_token(&minted.token).await.unwrap();
    assert_eq!(fake.revoked("acme/api"), 1);
    assert_eq!(fake.minted("acme/api"), 1);
    assert_eq!(fake.count("POST", "/access_tokens"), 1);

    // A mint that fails on a 5xx is not repeated by the client.
    fake.inject(Fault::new(FaultKind::Status(502)).on_path("/access_tokens"));
    assert!(client.mint_token(77, "api", &permissions).await.is_err());
    assert_eq!(fake.count("POST", "/access_tokens"), 2);
    // A repository outside the installation is refused.
    let err = client.mint_token(77, "elsewhere", &permissions).await.unwrap_err();
    assert!(matches!(err, Error::Status { status: 422, .. }), "{err}");
}

#[tokio::test]
async fn feedback_comments_and_reactions() {
    let fake = FakeGitHub::start().await;
    fake_world(&fake);
    let client = client_for(&fake, |_| {});
    let id = client
        .create_comment(77, "acme", "api", 5, "Working on it")
        .await
        .unwrap();
    client
        .update_comment(77, "acme", "api", id, "Done: $0.42")
        .await
        .unwrap();
    client
        .add_reaction(77, "acme", "api", id, Reaction::Eyes)
        .await
        .unwrap();
    client
        .add_reaction(77, "acme", "api", id, Reaction::Eyes)
        .await
        .unwrap();
    let state = fake.state();
    assert_eq!(state.comments[&id].2, "Done: $0.42");
    assert_eq!(state.reactions, vec![(id, "eyes".to_owned())]);
    // One installation-wide lookup token served all of it.
    assert_eq!(state.minted.get("*"), Some(&1));
}

#[tokio::test]
async fn a_threads_post_comments_and_changed_files_are_read_page_by_page() {
    let fake = FakeGitHub::start().await;
    fake_world(&fake);
    let client = client_for(&fake, |_| {});
    let (title, body) = client.issue_post(77, "acme", "api", 7).await.unwrap();
    assert_eq!(title, "Parser crashes");
    assert_eq!(
        (body.author.as_str(), body.association.as_str(), body.body.as_str()),
        ("rita", "CONTRIBUTOR", "Steps to reproduce: ...")
    );
    for i in 0..150 {
        fake.add_thread_comment("acme/api", 7, "alice", "OWNER", &format!("comment {i}"));
    }
    fake.clear_requests();
    let comments = client.issue_comments(77, "acme", "api", 7, 10).await.unwrap();
    assert_eq!(comments.len(), 151, "two pages");
    assert_eq!(fake.count("GET", "/issues/7/comments"), 2);
    assert_eq!(
        (
            comments[0].post.author.as_str(),
            comments[0].post.body.as_str(),
            comments[0].user_type.as_str()
        ),
        ("wes", "I see it too", "User")
    );
    assert_eq!(comments[150].post.body, "comment 149", "oldest first");
    let capped = client.issue_comments(77, "acme", "api", 7, 1).await.unwrap();
    assert_eq!(capped.len(), 100, "at most the pages asked for");
    fake.add_pull(
        "acme/api",
        8,
        FakePull {
            head_sha: "d".repeat(40),
            head_ref: "fix".into(),
            head_repo: Some("acme/api".into()),
            author: "wes".into(),
        },
    )
    .set_pull_changes(
        "acme/api",
        8,
        vec![
            FakeFile {
                filename: "src/lib.rs".into(),
                status: "modified".into(),
                additions: 2,
                deletions: 1,
                patch: Some("@@ -1 +1,2 @@\n-a\n+b\n+c".into()),
            },
            FakeFile {
                filename: "logo.png".into(),
                status: "added".into(),
                additions: 0,
                deletions: 0,
                patch: None,
            },
        ],
    );
    let files = client.pull_changed_files(77, "acme", "api", 8, 3).await.unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(
        (
            files[0].filename.as_str(),
            files[0].additions,
            files[0].patch.as_deref()
        ),
        ("src/lib.rs", 2, Some("@@ -1 +1,2 @@\n-a\n+b\n+c"))
    );
    assert_eq!(files[1].patch, None);
    assert!(matches!(
        client.issue_post(77, "acme", "api", 99).await,
        Err(Error::Status { status: 404, .. })
    ));
}

#[tokio::test]
async fn errors_never_carry_the_token() {
    let fake = FakeGitHub::start().await;
    fake_world(&fake);
    let client = client_for(&fake, |c| c.max_retries = 1);
    let minted = client
        .mint_token(77, "api", &BTreeMap::from([("issues".to_owned(), TokenAccess::Write)]))
        .await
        .unwrap();
    let secret = minted.token.expose_secret().to_owned();
    fake.inject(
        Fault::new(FaultKind::Status(500))
            .on_path("/installation/token")
            .times(2),
    );
    let err = client.revoke_token(&minted.token).await.unwrap_err();
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(&secret), "{text}");
        assert!(!text.contains("BEGIN"), "{text}");
    }
    assert_eq!(err.metric_label(), "server_error");
    // Once GitHub is back the revocation goes through.
    client.revoke_token(&minted.token).await.unwrap();
    assert_eq!(fake.revoked("acme/api"), 1);
}

#[tokio::test]
async fn facts_from_github_drive_the_decision() {
    use claude_operator::admission::{AuthzDecision, authorize};
    use claude_operator::api::conditions::reasons;
    use claude_operator::api::{Actor, AuthorAssociation, Authorization, Trigger, TriggerSource};

    let fake = FakeGitHub::start().await;
    fake_world(&fake);
    let client = client_for(&fake, |_| {});
    let policy = Authorization {
        organizations: vec!["acme".into()],
        teams: vec!["acme/platform".into()],
        ..Default::default()
    };
    let trigger = |login: &str| Trigger {
        source: TriggerSource::GitHubWebhook,
        event: "issue_comment".into(),
        action: "created".into(),
        delivery_id: "d".into(),
        actor: Actor {
            login: login.into(),
            id: 1,
            type_: ActorType::User,
        },
        // Every payload claims COLLABORATOR; GitHub's answers decide.
        author_association: AuthorAssociation::Collaborator,
        number: 6,
        is_pull_request: true,
        title: String::new(),
        html_url: None,
        comment_id: None,
        comment_url: None,
        head_sha: None,
        head_ref: None,
        fork: false,
    };
    let cases = [
        ("alice", reasons::ADMITTED),
        ("rita", reasons::INSUFFICIENT_PERMISSION),
        ("tess", reasons::INSUFFICIENT_PERMISSION),
        ("mona", reasons::NOT_ORG_MEMBER),
        ("wes", reasons::NOT_TEAM_MEMBER),
        ("ghost", reasons::AUTHORIZATION_UNAVAILABLE),
    ];
    for (login, expected) in cases {
        let facts = client
            .actor_facts(77, "acme", "api", login, &policy.organizations, &policy.teams)
            .await;
        let decision = authorize(&policy, &trigger(login), &facts);
        assert_eq!(decision.reason(), expected, "{login}: {decision:?}");
    }
    // GitHub down: never admitted.
    fake.inject(Fault::new(FaultKind::Status(503)).times(100));
    client.clear_facts_cache();
    let facts = client
        .actor_facts(77, "acme", "api", "alice", &policy.organizations, &policy.teams)
        .await;
    assert!(matches!(
        authorize(&policy, &trigger("alice"), &facts),
        AuthzDecision::Deny {
            reason: reasons::AUTHORIZATION_UNAVAILABLE,
            ..
        }
    ));
}

#[tokio::test]
async fn client_works_under_an_enterprise_path_prefix() {
    let fake = FakeGitHub::start_at("/api/v3").await;
    fake_world(&fake);
    let client = client_for(&fake, |_| {});
    assert_eq!(client.installation_for_repo("acme", "api").await.unwrap(), 77);
    assert_eq!(
        facts(&client, "tess").await.unwrap().permission,
        Some(Permission::Triage)
    );
    assert!(fake.count("GET", "/users/tess") == 1);
}
