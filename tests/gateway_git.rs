//! The gateway's git guard against real git: a bare repository served by
//! `git http-backend` (the upstream, demanding the run's token), the
//! gateway's git handler in front of it, and the `git` client talking to the
//! handler with no credential at all. Fetches and the run's own pushes go
//! through; every other push is refused with a message `git push` prints,
//! and the upstream stays unchanged. The token never shows up in git's
//! output or in the logs.

#[path = "support/runner/git_server.rs"]
mod git_server;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use axum::Router;
use axum::extract::Request;
use axum::routing::any;
use clap::Parser;
use claude_operator::cli::GatewayArgs;
use claude_operator::gateway::server::State;
use claude_operator::gateway::{Grant, git, registry::Registry};
use claude_operator::grant::GrantFacts;
use claude_operator::telemetry::Metrics;
use git_server::{GitServer, git};
use secrecy::SecretString;

const TOKEN: &str = "ghs_TestInstallationToken0123456789abcdefXY";
const REPO: &str = "octo/repo";
const BRANCH: &str = "claude/run-1";

/// Every log line of this test binary.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap()).into_owned()
}

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    gateway: GatewayArgs,
}

fn grant(push_branch: Option<&str>) -> Grant {
    Grant {
        secret_name: "grant-test".into(),
        facts: GrantFacts {
            namespace: "team-a".into(),
            run: "run-1".into(),
            run_uid: "uid-1".into(),
            policy: "default".into(),
            repository: REPO.into(),
            number: 7,
            is_pull_request: false,
            head_sha: None,
            push_branch: push_branch.map(str::to_owned),
            push_to_pull_request: false,
            review: false,
            allowed_models: vec!["claude-*".into()],
            max_cost_usd: "1".into(),
            prices: vec![],
            protected_paths: vec![".github/workflows/**".into()],
            allow_hosts: vec![],
            expires_at: "2099-01-01T00:00:00Z".into(),
            triggered_at: None,
        },
        github_token: SecretString::from(TOKEN),
        anthropic_key: SecretString::from("sk-ant-test"),
        expires_at: "2099-01-01T00:00:00Z".parse().unwrap(),
        closed: false,
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    upstream: GitServer,
    /// The gateway's base URL.
    gateway: String,
    /// A clone through the gateway.
    work: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fixture {
    async fn start(push_branch: Option<&str>, max_push_bytes: u64) -> Fixture {
        Fixture::start_with(push_branch, max_push_bytes, false).await
    }

    /// `admitted_head`: the grant names the seed commit as the run's admitted
    /// head (a pull request run).
    async fn start_with(push_branch: Option<&str>, max_push_bytes: u64, admitted_head: bool) -> Fixture {
        Fixture::start_full(push_branch, max_push_bytes, admitted_head, None).await
    }

    /// A pull request run under `pullRequestPush: PullRequestBranch`: the
    /// upstream has `branch` one commit ahead of main, the grant lets the
    /// run move exactly that branch with its tip as the admitted head, and
    /// the clone has it checked out.
    async fn start_on_pull_request_branch(branch: &str) -> Fixture {
        Fixture::start_full(Some(branch), 1 << 20, true, Some(branch)).await
    }

    async fn start_full(
        push_branch: Option<&str>,
        max_push_bytes: u64,
        admitted_head: bool,
        pull_request_branch: Option<&str>,
    ) -> Fixture {
        logs();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("upstream");
        std::fs::create_dir_all(root.join("octo")).unwrap();
        let bare = root.join("octo/repo.git");
        git(tmp.path(), &["init", "--quiet", "--bare", bare.to_str().unwrap()]);
        let seed = tmp.path().join("seed");
        std::fs::create_dir_all(seed.join(".github/workflows")).unwrap();
        git(&seed, &["init", "--quiet"]);
        std::fs::write(seed.join("README.md"), "hello\n").unwrap();
        std::fs::write(seed.join(".github/workflows/ci.yml"), "on: push\n").unwrap();
        git(&seed, &["add", "."]);
        git(&seed, &["commit", "--quiet", "-m", "seed"]);
        git(&seed, &["push", "--quiet", bare.to_str().unwrap(), "main"]);
        if let Some(branch) = pull_request_branch {
            git(&seed, &["checkout", "--quiet", "-b", branch]);
            std::fs::write(seed.join("FEATURE.md"), "from the pull request\n").unwrap();
            git(&seed, &["add", "."]);
            git(&seed, &["commit", "--quiet", "-m", "feature"]);
            git(&seed, &["push", "--quiet", bare.to_str().unwrap(), branch]);
        }
        let upstream = GitServer::start(&root, TOKEN).await;

        let flags = Flags::parse_from([
            "test",
            "--github-git-url",
            &upstream.base_url,
            "--max-push-bytes",
            &max_push_bytes.to_string(),
        ]);
        let state = Arc::new(
            State::with_parts(
                flags.gateway,
                Registry::default(),
                Arc::new(claude_operator::gateway::meter::InMemoryMeterStore::default()),
                Metrics::default(),
            )
            .expect("gateway state"),
        );
        let mut grant = grant(push_branch);
        if admitted_head {
            grant.facts.head_sha = Some(git(&seed, &["rev-parse", "HEAD"]));
            grant.facts.is_pull_request = true;
        }
        grant.facts.push_to_pull_request = pull_request_branch.is_some();
        let grant = Arc::new(grant);
        let app = Router::new().route(
            "/git/{*rest}",
            any(move |req: Request| git::handle(state.clone(), grant.clone(), req)),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });

        let work = tmp.path().join("work");
        let (ok, out) = run_git(tmp.path(), &["clone", &format!("{gateway}/git/{REPO}.git"), "work"]).await;
        assert!(ok, "clone through the gateway: {out}");
        if let Some(branch) = pull_request_branch {
            git(&work, &["checkout", "--quiet", branch]);
        }
        Fixture {
            _tmp: tmp,
            upstream,
            gateway,
            work,
            task,
        }
    }

    /// Every ref of the upstream repository with its value.
    fn upstream_refs(&self) -> String {
        git(&self.upstream.repo_path(REPO), &["for-each-ref"])
    }

    fn commit(&self, path: &str, content: &[u8], message: &str) -> String {
        let file = self.work.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
        git(&self.work, &["add", "."]);
        git(&self.work, &["commit", "--quiet", "-m", message]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    async fn push(&self, args: &[&str]) -> (bool, String) {
        let mut all = vec!["push"];
        all.extend_from_slice(args);
        run_git(&self.work, &all).await
    }

    /// Pushes and expects a refusal that names `message`, with the upstream
    /// unchanged.
    async fn refused(&self, args: &[&str], message: &str) -> String {
        let before = self.upstream_refs();
        let (ok, out) = self.push(args).await;
        assert!(!ok, "push {args:?} should be refused: {out}");
        assert!(out.contains(message), "push {args:?}: want {message:?} in:\n{out}");
        assert_eq!(
            self.upstream_refs(),
            before,
            "the upstream changed after a refused push {args:?}"
        );
        assert!(!out.contains(TOKEN));
        out
    }
}

/// Runs git (it talks to the servers of this runtime, so not on its thread)
/// and returns whether it succeeded and its output.
async fn run_git(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(TOKEN), "the token leaked into git's output");
    (out.status.success(), text)
}

fn assert_no_token_in_logs() {
    let logs = log_text();
    assert!(!logs.contains(TOKEN), "the token is in the logs");
    assert!(logs.contains("gateway request"), "no audit line was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_and_the_runs_own_pushes_go_through() {
    let fx = Fixture::start(Some(BRANCH), 8 << 20).await;
    let first = fx.commit("src/lib.rs", b"pub fn a() {}\n", "add a");
    let (ok, out) = fx.push(&["origin", &format!("HEAD:{BRANCH}")]).await;
    assert!(ok, "create: {out}");
    let upstream = fx.upstream.repo_path(REPO);
    assert_eq!(git(&upstream, &["rev-parse", &format!("refs/heads/{BRANCH}")]), first);

    let second = fx.commit("src/lib.rs", b"pub fn a() {}\npub fn b() {}\n", "add b");
    let (ok, out) = fx.push(&["origin", &format!("HEAD:{BRANCH}")]).await;
    assert!(ok, "fast-forward: {out}");
    assert_eq!(git(&upstream, &["rev-parse", &format!("refs/heads/{BRANCH}")]), second);
    // main is untouched.
    assert_eq!(
        git(&upstream, &["rev-parse", "refs/heads/main"]),
        git(&fx.work, &["rev-parse", "origin/main"])
    );

    // A push over git's post buffer (1 MiB): git probes, then streams it chunked.
    let mut noise = vec![0u8; 3 << 19];
    getrandom::fill(&mut noise).unwrap();
    let third = fx.commit("assets/big.bin", &noise, "big");
    let (ok, out) = fx.push(&["origin", &format!("HEAD:{BRANCH}")]).await;
    assert!(ok, "large fast-forward: {out}");
    assert_eq!(git(&upstream, &["rev-parse", &format!("refs/heads/{BRANCH}")]), third);
    let second = third;

    // Fetch sees what the run pushed.
    let (ok, out) = run_git(&fx.work, &["fetch", "origin"]).await;
    assert!(ok, "fetch: {out}");
    assert_eq!(git(&fx.work, &["rev-parse", &format!("origin/{BRANCH}")]), second);
    // The upstream saw the token on every request; the client never sent one.
    assert!(fx.upstream.requests().iter().all(|r| r.authorized));
    let logs = log_text();
    assert!(
        logs.contains(&format!("{REPO} refs/heads/{BRANCH}")),
        "push audit target"
    );
    assert_no_token_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_outside_the_runs_branch_are_refused() {
    let fx = Fixture::start(Some(BRANCH), 1 << 20).await;
    let base = fx.commit("src/lib.rs", b"pub fn a() {}\n", "add a");
    let (ok, out) = fx.push(&["origin", &format!("HEAD:{BRANCH}")]).await;
    assert!(ok, "create: {out}");
    let dest = format!("HEAD:{BRANCH}");

    // Another branch.
    fx.commit("src/lib.rs", b"pub fn main_change() {}\n", "to main");
    fx.refused(&["origin", "HEAD:main"], "only refs/heads/claude/run-1 may be pushed")
        .await;

    // A tag.
    git(&fx.work, &["tag", "v1"]);
    fx.refused(&["origin", "v1"], "tags may not be pushed").await;

    // A delete: the gateway does not offer deletes, so git does not even try.
    fx.refused(&["origin", &format!(":{BRANCH}")], "rejected").await;

    // A force push (not a fast-forward).
    git(&fx.work, &["reset", "--quiet", "--hard", &format!("{base}~1")]);
    fx.commit("other.txt", b"rewritten\n", "rewrite");
    fx.refused(&["--force", "origin", &dest], "may only be fast-forwarded")
        .await;

    // Another repository.
    let other = format!("{}/git/octo/other.git", fx.gateway);
    fx.refused(&[&other, &dest], "may only use the repository octo/repo")
        .await;

    // A protected path.
    git(&fx.work, &["reset", "--quiet", "--hard", &base]);
    fx.commit(".github/workflows/ci.yml", b"on: push\njobs: {}\n", "workflow");
    fx.refused(&["origin", &dest], "protected path .github/workflows/ci.yml")
        .await;
    git(&fx.work, &["reset", "--quiet", "--hard", &base]);
    fx.commit(".github/workflows/new.yml", b"on: push\n", "new workflow");
    fx.refused(&["origin", &dest], "protected path .github/workflows/new.yml")
        .await;

    // The run's own token in a file.
    git(&fx.work, &["reset", "--quiet", "--hard", &base]);
    fx.commit("notes.txt", format!("token={TOKEN}\n").as_bytes(), "oops");
    fx.refused(&["origin", &dest], "credential (run secret) in notes.txt")
        .await;

    // The run's own token in a commit message only.
    git(&fx.work, &["reset", "--quiet", "--hard", &base]);
    fx.commit("clean.txt", b"clean\n", &format!("leak {TOKEN}"));
    fx.refused(&["origin", &dest], "credential (run secret) in the commit")
        .await;

    // And after all that, the run's branch still takes a good push.
    git(&fx.work, &["reset", "--quiet", "--hard", &base]);
    let good = fx.commit("src/good.rs", b"ok\n", "good");
    let (ok, out) = fx.push(&["origin", &dest]).await;
    assert!(ok, "good push after refusals: {out}");
    assert_eq!(
        git(
            &fx.upstream.repo_path(REPO),
            &["rev-parse", &format!("refs/heads/{BRANCH}")]
        ),
        good
    );
    let logs = log_text();
    for reason in [
        "RefNotAllowed",
        "WrongRepository",
        "ProtectedPath",
        "CredentialInContent",
    ] {
        assert!(logs.contains(reason), "no audit line with {reason}");
    }
    assert_no_token_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_run_pushes_on_its_admitted_head() {
    let fx = Fixture::start_with(Some(BRANCH), 1 << 20, true).await;
    let head = fx.commit("src/fix.rs", b"fixed\n", "fix");
    let (ok, out) = fx.push(&["origin", &format!("HEAD:{BRANCH}")]).await;
    assert!(ok, "push on the admitted head: {out}");
    assert_eq!(
        git(
            &fx.upstream.repo_path(REPO),
            &["rev-parse", &format!("refs/heads/{BRANCH}")]
        ),
        head
    );
    fx.commit(".github/workflows/ci.yml", b"on: pull_request_target\n", "widen");
    fx.refused(
        &["origin", &format!("HEAD:{BRANCH}")],
        "protected path .github/workflows/ci.yml",
    )
    .await;
    assert_no_token_in_logs();
}

/// Under `pullRequestPush: PullRequestBranch` the run moves the pull
/// request's own branch, by fast-forwards only, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_its_pull_request_s_branch_only_fast_forwards_it() {
    let branch = "feature/retry";
    let fx = Fixture::start_on_pull_request_branch(branch).await;
    let upstream = fx.upstream.repo_path(REPO);
    let admitted = git(&upstream, &["rev-parse", &format!("refs/heads/{branch}")]);
    let dest = format!("HEAD:{branch}");

    // The push lands on the pull request's branch.
    let first = fx.commit("src/fix.rs", b"fixed\n", "fix");
    let (ok, out) = fx.push(&["origin", &dest]).await;
    assert!(ok, "fast-forward of the pull request's branch: {out}");
    assert_eq!(git(&upstream, &["rev-parse", &format!("refs/heads/{branch}")]), first);
    assert_eq!(git(&upstream, &["rev-parse", &format!("{branch}~1")]), admitted);

    // Not a fast-forward: refused, with the reason git prints.
    git(&fx.work, &["reset", "--quiet", "--hard", &admitted]);
    fx.commit("other.txt", b"rewritten\n", "rewrite");
    fx.refused(&["--force", "origin", &dest], "may only be fast-forwarded")
        .await;

    // Any other branch: neither main nor a branch of the run's own.
    git(&fx.work, &["reset", "--quiet", "--hard", &first]);
    fx.commit("more.txt", b"more\n", "more");
    fx.refused(&["origin", "HEAD:main"], "only refs/heads/feature/retry may be pushed")
        .await;
    fx.refused(
        &["origin", "HEAD:claude/run-1"],
        "only refs/heads/feature/retry may be pushed",
    )
    .await;
    // The guards still hold on the pull request's branch.
    fx.commit(".github/workflows/ci.yml", b"on: pull_request_target\n", "widen");
    fx.refused(&["origin", &dest], "protected path .github/workflows/ci.yml")
        .await;
    let logs = log_text();
    assert!(
        logs.contains(&format!("{REPO} refs/heads/{branch}")) && logs.contains("RefNotAllowed"),
        "the refusals are in the audit lines"
    );
    assert_no_token_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_github_token_pattern_in_a_commit_is_refused() {
    let fx = Fixture::start(Some(BRANCH), 1 << 20).await;
    let fake = format!("ghp_{}", "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5");
    fx.commit("config.env", format!("GITHUB_TOKEN={fake}\n").as_bytes(), "config");
    fx.refused(&["origin", &format!("HEAD:{BRANCH}")], "credential").await;
    assert_no_token_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_over_the_size_limit_is_refused() {
    let fx = Fixture::start(Some(BRANCH), 64 * 1024).await;
    // Incompressible: random bytes from the OS.
    let mut noise = vec![0u8; 256 * 1024];
    getrandom::fill(&mut noise).unwrap();
    fx.commit("blob.bin", &noise, "big");
    fx.refused(&["origin", &format!("HEAD:{BRANCH}")], "413").await;
    assert!(log_text().contains("TooLarge"));
    assert_no_token_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_run_fetches_but_never_pushes() {
    let fx = Fixture::start(None, 1 << 20).await;
    let (ok, out) = run_git(&fx.work, &["fetch", "origin"]).await;
    assert!(ok, "fetch: {out}");
    fx.commit("x.txt", b"x\n", "x");
    fx.refused(&["origin", &format!("HEAD:{BRANCH}")], "read-only").await;
    assert_no_token_in_logs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_git_would_not_send_get_clear_answers() {
    let fx = Fixture::start(Some(BRANCH), 1 << 16).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}/git/{REPO}.git/{path}", fx.gateway);
    let before = fx.upstream_refs();

    // The dumb protocol and unknown endpoints.
    for path in ["info/refs", "HEAD", "objects/info/packs", "info/refs?service=git-other"] {
        let resp = http.get(url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
    }
    // A compressed push body.
    let resp = http
        .post(url("git-receive-pack"))
        .header("content-encoding", "gzip")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    assert!(resp.text().await.unwrap().contains("compressed"));
    // Not pkt-lines.
    let resp = http
        .post(url("git-receive-pack"))
        .body("hello, world")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().starts_with("malformed push"));
    // A shallow client.
    let shallow = format!("{:04x}shallow {}\n0000", 4 + 8 + 40 + 1, "1".repeat(40));
    let resp = http.post(url("git-receive-pack")).body(shallow).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("shallow"));
    // git's probe before a large push: answered, nothing forwarded.
    let resp = http.post(url("git-receive-pack")).body("0000").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap().is_empty());
    // A command with no capabilities cannot be answered with a report.
    let zero = "0".repeat(40);
    let one = "1".repeat(40);
    let cmd = format!("{zero} {one} refs/heads/main");
    let body = format!("{:04x}{cmd}0000", cmd.len() + 4);
    let resp = http.post(url("git-receive-pack")).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("only refs/heads/claude/run-1"));

    // Declared too large: refused before the body is read (the client may
    // see the connection close while it is still writing; its own client, so
    // no other request reuses that connection).
    let sent = reqwest::Client::new()
        .post(url("git-receive-pack"))
        .body(vec![b'0'; (1 << 16) + 1])
        .send()
        .await;
    match sent {
        Ok(resp) => assert_eq!(resp.status(), 413),
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    assert_eq!(fx.upstream_refs(), before);
    assert!(
        fx.upstream
            .requests()
            .iter()
            .all(|r| !r.path.contains("git-receive-pack") || r.method == "GET"),
        "no push reached the upstream"
    );
    assert_no_token_in_logs();
}
