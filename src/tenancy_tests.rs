use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn policy(ns: &str, name: &str, repos: &[&str], created: i64) -> ClaudeRunPolicy {
    let mut p: ClaudeRunPolicy = serde_yaml::from_str(include_str!("../config/samples/policy.yaml")).unwrap();
    p.metadata.namespace = Some(ns.into());
    p.metadata.name = Some(name.into());
    p.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::from_second(created).unwrap()));
    p.spec.repositories = repos.iter().map(|r| r.to_string()).collect();
    p
}

const CONFIG: &str = r#"
namespaces:
  - names: [team-a]
    repositories: ["acme/api", "acme/api-*"]
  - names: ["ci-*"]
    repositories: ["acme/*"]
    permissions: {contents: write, workflows: write, metadata: read}
    runnerImages: ["ghcr.io/acme/runner:*", "ghcr.io/acme/runner@sha256:*"]
  - names: [team-a, team-b]
    repositories: ["other/*"]
default:
  repositories: ["sandbox/*"]
"#;

#[test]
fn pattern_within_table() {
    let cases: &[(&str, &str, bool)] = &[
        ("acme/api", "acme/api", true),
        ("ACME/Api", "acme/api", true),
        ("acme/api", "acme/*", true),
        ("acme/api-?", "acme/api-*", true),
        ("acme/api-[ab]", "acme/api-*", true),
        ("acme/api-[ab]", "acme/api-?", true),
        ("acme/api-*", "acme/api-*", true),
        ("acme/api-*x", "acme/api-*", true),
        ("acme/*", "acme/api-*", false),
        ("acme/a*", "acme/a?", false),
        ("acme/api-?", "acme/api-??", false),
        ("acme/api", "acme/web", false),
        ("acme/api", "other/*", false),
        ("acme/api", "*/*", true),
        ("acme/anything-*", "*/*", true),
        ("acme/api", "ac?e/api", true),
        ("acme/api", "*/api", true),
        ("acme/[unclosed", "*/*", false),
        ("noslash", "*/*", false),
        ("acme/api", "noslash", false),
        ("acme/", "acme/*", true),
    ];
    for (pattern, grant, want) in cases {
        assert_eq!(pattern_within(pattern, grant), *want, "{pattern} within {grant}");
    }
}

#[test]
fn the_builtin_default_allows_any_repository_and_no_dangerous_permission() {
    let t = Tenancy::default();
    let mut p = policy("anyone", "p", &["acme/api", "x/*"], 1).spec;
    assert_eq!(t.check_policy("anyone", &p), Ok(()));
    assert!(!t.names_grant("anyone", "acme/api"), "the default names no one");
    for (name, level, reason) in [
        ("workflows", TokenAccess::Write, reasons::PERMISSION_NOT_ALLOWED),
        ("administration", TokenAccess::Read, reasons::PERMISSION_NOT_ALLOWED),
        ("secrets", TokenAccess::Read, reasons::PERMISSION_NOT_ALLOWED),
        (
            "organization_administration",
            TokenAccess::Read,
            reasons::PERMISSION_NOT_ALLOWED,
        ),
        ("members", TokenAccess::Read, reasons::PERMISSION_NOT_ALLOWED),
        ("actions", TokenAccess::Write, reasons::PERMISSION_NOT_ALLOWED),
        ("metadata", TokenAccess::Write, reasons::PERMISSION_NOT_ALLOWED),
        ("contentz", TokenAccess::Read, reasons::UNKNOWN_PERMISSION),
        ("Contents", TokenAccess::Read, reasons::UNKNOWN_PERMISSION),
    ] {
        let mut spec = p.clone();
        spec.github.permissions.insert(name.into(), level);
        let err = t.check_policy("anyone", &spec).unwrap_err();
        assert_eq!(err.reason, reason, "{name}");
        assert!(err.message.contains(name), "{}", err.message);
    }
    for (name, level) in [
        ("actions", TokenAccess::Read),
        ("checks", TokenAccess::Write),
        ("statuses", TokenAccess::Write),
        ("metadata", TokenAccess::Read),
    ] {
        p.github.permissions.insert(name.into(), level);
    }
    assert_eq!(t.check_policy("anyone", &p), Ok(()));
}

#[test]
fn every_known_permission_has_a_sane_entry() {
    let mut names: Vec<&str> = PERMISSIONS.iter().map(|p| p.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), PERMISSIONS.len(), "no duplicate names");
    for p in PERMISSIONS {
        assert!(p.default_ceiling.is_none_or(|c| c <= p.max), "{}", p.name);
        if p.name.starts_with("organization_")
            || ["workflows", "administration", "secrets", "members"].contains(&p.name)
        {
            assert!(p.default_ceiling.is_none(), "{} is dangerous", p.name);
        }
    }
    // The policy's own default permissions pass the default ceiling.
    let spec = policy("ns", "p", &["acme/api"], 1).spec;
    assert_eq!(
        check_permissions(
            "ns",
            &crate::api::GitHubAccess::default().permissions,
            &default_ceiling()
        ),
        Ok(())
    );
    assert_eq!(Tenancy::default().check_policy("ns", &spec), Ok(()));
}

#[test]
fn a_configuration_grants_per_namespace() {
    let t = Tenancy::from_yaml(CONFIG).unwrap();
    let spec = |repos: &[&str]| policy("x", "p", repos, 1).spec;
    let check = |ns: &str, s: &ClaudeRunPolicySpec| t.check_policy(ns, s).map_err(|v| v.reason);
    let cases: &[(&str, &[&str], Result<(), &str>)] = &[
        ("team-a", &["acme/api", "acme/api-2"], Ok(())),
        ("team-a", &["acme/api-*"], Ok(())),
        ("team-a", &["acme/web"], Err(reasons::REPOSITORY_NOT_ALLOWED)),
        ("team-a", &["acme/*"], Err(reasons::REPOSITORY_NOT_ALLOWED)),
        // The first entry naming a namespace is its grant: team-a's second
        // entry does not add to it.
        ("team-a", &["other/x"], Err(reasons::REPOSITORY_NOT_ALLOWED)),
        ("team-b", &["other/x"], Ok(())),
        ("team-b", &["acme/api"], Err(reasons::REPOSITORY_NOT_ALLOWED)),
        // Unnamed namespaces get the default.
        ("team-z", &["sandbox/x"], Ok(())),
        ("team-z", &["acme/api"], Err(reasons::REPOSITORY_NOT_ALLOWED)),
    ];
    for (ns, repos, want) in cases {
        assert_eq!(check(ns, &spec(repos)), *want, "{ns} {repos:?}");
    }
    assert!(t.names_grant("team-a", "acme/api"));
    assert!(!t.names_grant("team-a", "acme/web"));
    assert!(!t.names_grant("team-z", "sandbox/x"), "the default names no one");

    // ci-*: workflows allowed by name, an image allow list, and a ceiling
    // that is exactly what it lists.
    let mut ci = spec(&["acme/web"]);
    ci.runner.image = "ghcr.io/acme/runner:v1".into();
    ci.github.permissions = [("contents", TokenAccess::Write), ("workflows", TokenAccess::Write)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(check("ci-main", &ci), Ok(()));
    ci.github.permissions.insert("issues".into(), TokenAccess::Read);
    assert_eq!(check("ci-main", &ci), Err(reasons::PERMISSION_NOT_ALLOWED));
    ci.github.permissions.remove("issues");
    for (image, ok) in [
        ("ghcr.io/acme/runner:v1", true),
        ("ghcr.io/acme/runner@sha256:abc", true),
        ("ghcr.io/acme/runner-evil:v1", false),
        ("ghcr.io/acme/runner:v1/../x", false),
        ("docker.io/acme/runner:v1", false),
    ] {
        ci.runner.image = image.into();
        let want = if ok {
            Ok(())
        } else {
            Err(reasons::RUNNER_IMAGE_NOT_ALLOWED)
        };
        assert_eq!(check("ci-main", &ci), want, "{image}");
    }
    // Workflows elsewhere is still refused.
    let mut wf = spec(&["acme/api"]);
    wf.github.permissions.insert("workflows".into(), TokenAccess::Write);
    assert_eq!(check("team-a", &wf), Err(reasons::PERMISSION_NOT_ALLOWED));
}

#[test]
fn without_a_default_unnamed_namespaces_get_nothing() {
    let t = Tenancy::from_yaml("namespaces: [{names: [team-a], repositories: ['acme/*']}]").unwrap();
    let v = t
        .check_policy("team-b", &policy("team-b", "p", &["acme/api"], 1).spec)
        .unwrap_err();
    assert_eq!(v.reason, reasons::REPOSITORY_NOT_ALLOWED);
    assert!(v.message.contains("team-b"), "{}", v.message);
    // An empty file is a configuration too: it grants nothing.
    let empty = Tenancy::from_yaml("").unwrap();
    assert!(
        empty
            .check_policy("team-a", &policy("team-a", "p", &["acme/api"], 1).spec)
            .is_err()
    );
}

#[test]
fn bad_configurations_are_refused_with_the_place() {
    let cases: &[(&str, &str)] = &[
        ("namespaces: [{names: [], repositories: []}]", "names is empty"),
        ("namespaces: [{names: ['Team_A']}]", "not a namespace name"),
        ("namespaces: [{names: [a], repositories: ['acme']}]", "owner/name"),
        (
            "namespaces: [{names: [a], repositories: ['acme/[ab]']}]",
            "only letters",
        ),
        (
            "namespaces: [{names: [a], permissions: {wrokflows: write}}]",
            "wrokflows",
        ),
        (
            "namespaces: [{names: [a], permissions: {metadata: write}}]",
            "read only",
        ),
        (
            "namespaces: [{names: [a], permissions: {contents: admin}}]",
            "not valid",
        ),
        ("namespaces: [{names: [a], runnerImages: ['']}]", "1 to 512"),
        ("namespaces: [{names: [a], runnerImages: ['x[']}]", "runner image"),
        ("namespaces: [{names: [a], bogus: 1}]", "bogus"),
        ("default: {repositories: ['a/b'], permissions: {nope: read}}", "default"),
        ("tenants: []", "tenants"),
        ("[1, 2", "not valid"),
    ];
    for (text, want) in cases {
        let err = Tenancy::from_yaml(text).unwrap_err().to_string();
        assert!(err.contains(want), "{text}: {err}");
    }
    let err = Tenancy::load(Some(Path::new("/nonexistent/tenancy.yaml"))).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/tenancy.yaml"), "{err}");
    assert!(!Tenancy::load(None).unwrap().configured);
}

#[test]
fn route_table() {
    let t = Tenancy::from_yaml(CONFIG).unwrap();
    let builtin = Tenancy::default();
    let older = Arc::new(policy("team-x", "first", &["acme/*"], 100));
    let newer = Arc::new(policy("team-y", "second", &["acme/api"], 200));
    let named = Arc::new(policy("team-a", "granted", &["acme/api"], 300));
    let mut outside = policy("team-a", "outside", &["acme/web"], 1);
    outside.metadata.creation_timestamp = None;
    let outside = Arc::new(outside);
    let mut wf = policy("team-q", "workflows", &["acme/api"], 1);
    wf.spec
        .github
        .permissions
        .insert("workflows".into(), TokenAccess::Write);
    let wf = Arc::new(wf);

    let served = |repo: &str, ps: &[Arc<ClaudeRunPolicy>], t: &Tenancy| match route(repo, ps, t) {
        Route::None => None,
        Route::To { policy, losers } => Some((
            policy.metadata.name.clone().unwrap(),
            losers.into_iter().map(|k| k.name).collect::<Vec<_>>(),
        )),
    };
    let s = |name: &str, losers: &[&str]| Some((name.to_owned(), losers.iter().map(|l| l.to_string()).collect()));

    // Built-in default: the older claim wins, in any namespace, whatever the order.
    assert_eq!(
        served("acme/api", &[newer.clone(), older.clone()], &builtin),
        s("first", &["second"])
    );
    assert_eq!(
        served("acme/api", &[older.clone(), newer.clone()], &builtin),
        s("first", &["second"])
    );
    assert_eq!(
        served("acme/web", &[older.clone(), newer.clone()], &builtin),
        s("first", &[])
    );
    assert_eq!(served("other/api", std::slice::from_ref(&older), &builtin), None);
    // A policy asking for a dangerous permission never serves, even when older.
    assert_eq!(
        served("acme/api", &[wf.clone(), newer.clone()], &builtin),
        s("second", &[])
    );
    assert_eq!(served("acme/api", std::slice::from_ref(&wf), &builtin), None);
    // With the configuration: team-x and team-y get the default (sandbox/*
    // only) and never serve acme; team-a is named for acme/api and serves it.
    assert_eq!(
        served("acme/api", &[older.clone(), newer.clone(), named.clone()], &t),
        s("granted", &[])
    );
    // A policy outside its grant never serves.
    assert_eq!(served("acme/web", std::slice::from_ref(&outside), &t), None);
}

#[test]
fn a_named_grant_wins_over_an_older_default_claim() {
    // team-a is named for acme/api; sandbox namespaces may claim anything by default.
    let t = Tenancy::from_yaml(
        "namespaces: [{names: [team-a], repositories: ['acme/api']}]\ndefault: {repositories: ['*/*']}",
    )
    .unwrap();
    let squatter = Arc::new(policy("squat", "early", &["acme/*"], 1));
    let owner = Arc::new(policy("team-a", "api", &["acme/api"], 500));
    let route_name = |repo: &str| match route(repo, &[squatter.clone(), owner.clone()], &t) {
        Route::To { policy, .. } => policy.metadata.name.clone(),
        Route::None => None,
    };
    assert_eq!(route_name("acme/api").as_deref(), Some("api"));
    assert_eq!(route_name("acme/web").as_deref(), Some("early"));
}
