//! The whole job on a real node (`e2e/node.sh`: containerd, runc, CNI,
//! kube-proxy and a NetworkPolicy agent), with the images built from the
//! repository's own Dockerfiles (`e2e/images.sh`, docs/images.md):
//!
//! - `helm install` of the chart with the real operator image: the receiver,
//!   the controller and the gateway run as containers on the real node and
//!   become Ready through their real probes;
//! - a signed "@claude" comment from an authorized member becomes a runner pod
//!   that really starts, in a namespace enforcing Pod Security "restricted";
//!   inside it the real runner and Claude Code talk to the fake Messages API
//!   through the gateway, run a Bash edit, push `claude/<run>` and open a draft
//!   pull request on the fake GitHub; the run ends Succeeded with its metered
//!   cost;
//! - the agent's own Bash tool calls, scripted at the fake model, probe the pod
//!   from inside: no token, key or service-account token in its environment or
//!   files, DNS fails, the apiserver's service address, the node's bridge
//!   address (where the fakes listen) and a test host in a network namespace
//!   this test creates are unreachable, the gateway is reachable, writes
//!   outside the emptyDirs fail, no capabilities;
//! - a pod that "restricted" forbids is rejected by the real apiserver.
//!
//! The fakes (tests/support) run in this process on loopback; small forwarders
//! bound to the node's bridge address (`E2E_NODE_IP`) put them where the
//! gateway's upstream settings point. `e2e/run-tests.sh` brings the node up and
//! sets `CLAUDE_OPERATOR_E2E_NODE` (its name) or
//! `CLAUDE_OPERATOR_E2E_NODE_UNAVAILABLE` (why not), and what `e2e/node.sh env`
//! prints (KUBECONFIG, PATH with kubectl, helm and ctr, CONTAINERD_ADDRESS,
//! E2E_NODE_IP); the tests also need root (a network namespace), `ip` and
//! `socat`. Without them a test fails under `CI=true` and says why; elsewhere
//! it is recorded as skipped with the reason (tests/support/skip.rs).

#[path = "support/runner/fake_anthropic.rs"]
mod fake_anthropic;
#[path = "support/fake_github.rs"]
mod fake_github;
#[path = "support/runner/git_server.rs"]
mod git_server;
#[path = "support/runner/fake_github.rs"]
mod pulls_github;
#[path = "support/run_env.rs"]
mod run_env;
#[path = "support/skip.rs"]
mod skip;
mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use claude_operator::api::{ClaudeRun, ClaudeRunPolicy, CostSource, Phase};
use claude_operator::github::signature::sign;
use claude_operator::receiver::intake::run_name;
use fake_anthropic::{FakeAnthropic, Turn, TurnUsage};
use fake_github::{APP_ID, FakeGitHub};
use git_server::{GitServer, git};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use pulls_github::FakeGithub as PullsGithub;
use serde_json::{Value, json};
use support::*;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/claude-operator");
const RELEASE: &str = "claude-operator";
const OPERATOR_IMAGE: &str = "localhost/claude-operator";
const RUNNER_IMAGE: &str = "localhost/claude-operator-runner:dev";
const WEBHOOK_SECRET: &str = "e2e-realnode-webhook-secret";
const ANTHROPIC_KEY: &str = "sk-ant-e2e-realnode-not-a-real-key";
/// The git server's own password; the front checks the minted token instead.
const GIT_PASSWORD: &str = "e2e-realnode-git-backend";
const NODE_LABEL: (&str, &str) = ("claude-operator.dev/node", "real");
const NODE_TAINT: &str = "claude-operator.dev/real-node";
/// The test host's network (a /30 this test assigns to its own namespace).
const TEST_HOST_HOST_SIDE: &str = "10.250.200.1";
const TEST_HOST: &str = "10.250.200.2";
const TEST_HOST_PORT: u16 = 18080;

/// The real node's settings, or why the test cannot run here.
struct RealNode {
    node_ip: String,
}

fn why_no_real_node() -> Result<RealNode, String> {
    match std::env::var("CLAUDE_OPERATOR_E2E_NODE") {
        Ok(name) if !name.is_empty() => {}
        _ => {
            return Err(
                std::env::var("CLAUDE_OPERATOR_E2E_NODE_UNAVAILABLE").unwrap_or_else(|_| {
                    "CLAUDE_OPERATOR_E2E_NODE is not set (run through e2e/run-tests.sh, or source e2e/node.sh env)"
                        .into()
                }),
            );
        }
    }
    let node_ip = std::env::var("E2E_NODE_IP").map_err(|_| "E2E_NODE_IP is not set (e2e/node.sh env sets it)")?;
    std::env::var("CONTAINERD_ADDRESS").map_err(|_| "CONTAINERD_ADDRESS is not set (e2e/node.sh env sets it)")?;
    if std::env::var("CLAUDE_OPERATOR_E2E_KUBECONFIG").is_err() {
        let kubeconfig =
            std::env::var("KUBECONFIG").map_err(|_| "neither CLAUDE_OPERATOR_E2E_KUBECONFIG nor KUBECONFIG is set")?;
        // SAFETY: set once, before any thread of this test reads it.
        unsafe { std::env::set_var("CLAUDE_OPERATOR_E2E_KUBECONFIG", kubeconfig) };
    }
    if !is_root() {
        return Err("needs root (a network namespace for the test host)".into());
    }
    missing_tool(&["kubectl", "helm", "ctr", "ip", "socat"])?;
    Ok(RealNode { node_ip })
}

/// The real node, or None after recording why the test is skipped (outside
/// CI; under `CI=true` a missing prerequisite fails the test: support/skip.rs).
fn real_node() -> Option<RealNode> {
    why_no_real_node()
        .map_err(|why| skip::skip(&format!("no real node: {why}")))
        .ok()
}

/// The first of `tools` that is not on PATH, as an error.
fn missing_tool(tools: &[&str]) -> Result<(), String> {
    match tools.iter().find(|t| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }) {
        Some(t) => Err(format!("{t} is not on PATH (e2e/ensure-deps.sh, e2e/node.sh env)")),
        None => Ok(()),
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs a tool; returns (success, stdout, stderr).
fn exec(tool: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(tool)
        .args(args)
        .env("KUBECONFIG", std::env::var("CLAUDE_OPERATOR_E2E_KUBECONFIG").unwrap())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{tool} not runnable: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The images of the current sources, built (a no-op when they are current)
/// and imported into the node's containerd.
fn images_on_the_node() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/images.sh");
    for step in ["build", "import"] {
        let status = Command::new(script)
            .arg(step)
            .stdout(Stdio::null())
            .status()
            .expect("e2e/images.sh");
        assert!(status.success(), "e2e/images.sh {step} failed (its output is above)");
    }
}

/// The images as built, run with runc as the pods run them (e2e/images.sh
/// verify, docs/images.md): each entrypoint answers `--version` as the image's
/// own user on a read-only root file system with no capabilities, the runner
/// image holds the pinned Claude Code, and its root file system refuses writes.
/// Needs root, buildah, mmdebstrap, umoci, skopeo and runc (e2e/ensure-deps.sh),
/// not the real node.
#[test]
fn the_images_run_as_their_users_with_a_read_only_root_file_system() {
    let prerequisites = if is_root() {
        missing_tool(&["buildah", "mmdebstrap", "umoci", "skopeo", "runc", "jq"])
    } else {
        Err("needs root (buildah, runc)".to_owned())
    };
    if let Err(why) = prerequisites {
        skip::skip(&why);
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/images.sh");
    let build = Command::new(script).arg("build").output().unwrap();
    let stderr = String::from_utf8_lossy(&build.stderr);
    assert!(build.status.success(), "e2e/images.sh build: {stderr}");
    let archives = String::from_utf8_lossy(&build.stdout);
    for name in ["claude-operator.tar", "claude-operator-runner.tar"] {
        let path = archives
            .lines()
            .find(|l| l.ends_with(&format!("/{name}")))
            .unwrap_or_else(|| panic!("no {name} in {archives}"));
        assert!(std::path::Path::new(path).is_file(), "{path}");
    }
    let verify = Command::new(script).arg("verify").output().unwrap();
    let log = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "e2e/images.sh verify: {log}");
    let version = env!("CARGO_PKG_VERSION");
    for expected in [
        format!("operator image, uid 65532, read-only root: claude-operator {version}"),
        "operator image: git version".to_owned(),
        format!(
            "runner image, uid 10001, read-only root: claude {}",
            claude_code_version()
        ),
        format!("runner image: claude-operator {version}"),
        "runner image: a write to /usr/local/bin fails".to_owned(),
    ] {
        assert!(log.contains(&expected), "expected {expected:?} in: {log}");
    }
}

/// The pinned Claude Code version, as `Dockerfile.runner` declares it.
fn claude_code_version() -> String {
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile.runner")).unwrap();
    dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG CLAUDE_CODE_VERSION="))
        .expect("ARG CLAUDE_CODE_VERSION= in Dockerfile.runner")
        .trim()
        .to_owned()
}

// --- the fakes, where the gateway's upstream settings point ------------------

/// Forwards a request to `base` (same path and query) and returns the answer.
async fn forward(
    http: &reqwest::Client,
    base: &str,
    method: Method,
    uri: &Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let url = format!("{base}{}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let mut request = http.request(method, &url).body(body);
    for (name, value) in &headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            request = request.header(name, value);
        }
    }
    match request.send().await {
        Ok(answer) => {
            let status = answer.status();
            let mut out = Response::builder().status(status);
            for (name, value) in answer.headers() {
                if name != header::TRANSFER_ENCODING && name != header::CONTENT_LENGTH {
                    out = out.header(name, value);
                }
            }
            let bytes = answer.bytes().await.unwrap_or_default();
            out.body(Body::from(bytes)).unwrap()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("forwarding to {url}: {e}")).into_response(),
    }
}

#[derive(Clone)]
struct Front {
    http: reqwest::Client,
    github: Arc<FakeGitHub>,
    pulls: Arc<PullsGithub>,
    git_base: String,
}

/// The one GitHub the gateway sees (REST and git at one base URL): git
/// requests go to the git server when they carry an installation token the
/// fake GitHub minted for that repository (and not revoked); pull request
/// creation goes to the runner fake, which records it; the rest to the fake
/// GitHub the controller uses.
async fn front(State(f): State<Front>, method: Method, uri: Uri, mut headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if parts.len() >= 2 && parts[1].ends_with(".git") {
        let repository = format!("{}/{}", parts[0], parts[1].trim_end_matches(".git")).to_ascii_lowercase();
        let password = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v.trim()).ok())
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.split_once(':').map(|(_, p)| p.to_owned()));
        let live = password.as_deref().is_some_and(|p| {
            f.github.state().tokens.get(p).is_some_and(|t| {
                !t.revoked
                    && t.expires_at > jiff::Timestamp::now()
                    && t.repositories
                        .as_ref()
                        .is_none_or(|r| r.iter().any(|r| r.to_ascii_lowercase() == repository))
            })
        });
        if !live {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"GitHub\"")],
                "no live installation token for this repository",
            )
                .into_response();
        }
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{GIT_PASSWORD}"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {basic}")).unwrap(),
        );
        return forward(&f.http, &f.git_base, method, &uri, headers, body).await;
    }
    if method == Method::POST && matches!(parts.as_slice(), ["repos", _, _, "pulls"]) {
        return forward(&f.http, &f.pulls.base_url, method, &uri, headers, body).await;
    }
    forward(&f.http, &f.github.url, method, &uri, headers, body).await
}

/// Serves `app` on the node's bridge address, an ephemeral port.
async fn serve_on_node(node_ip: &str, app: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind((node_ip, 0))
        .await
        .unwrap_or_else(|e| panic!("binding the node's bridge address {node_ip}: {e}"));
    let addr = listener.local_addr().unwrap();
    (
        addr,
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }),
    )
}

// --- a test host in a network namespace of our own ----------------------------

/// A TCP service in a network namespace this test creates, joined to the host
/// by a veth pair with addresses the test assigns; removed when dropped.
struct TestHost {
    netns: String,
    veth: String,
    server: Child,
}

impl TestHost {
    fn start() -> Self {
        let tag = std::process::id() % 100_000;
        let netns = format!("co-rn-{tag}");
        let veth = format!("corn{tag}h");
        let peer = format!("corn{tag}n");
        let sh = |cmd: &str| {
            let status = Command::new("sh").args(["-c", cmd]).status().unwrap();
            assert!(status.success(), "{cmd}");
        };
        sh(&format!("ip netns add {netns}"));
        sh(&format!("ip link add {veth} type veth peer name {peer}"));
        sh(&format!("ip link set {peer} netns {netns}"));
        sh(&format!(
            "ip addr add {TEST_HOST_HOST_SIDE}/30 dev {veth} && ip link set {veth} up"
        ));
        sh(&format!(
            "ip -n {netns} addr add {TEST_HOST}/30 dev {peer} && ip -n {netns} link set {peer} up && \
             ip -n {netns} link set lo up && ip -n {netns} route add default via {TEST_HOST_HOST_SIDE}"
        ));
        let server = Command::new("ip")
            .args(["netns", "exec", &netns, "socat"])
            .arg(format!("TCP-LISTEN:{TEST_HOST_PORT},bind={TEST_HOST},fork,reuseaddr"))
            .arg("SYSTEM:echo test-host")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { netns, veth, server }
    }

    /// Whether the host itself reaches the test host (the positive control),
    /// waiting up to 10 s for its server to listen.
    fn reachable_from_host(&self) -> bool {
        (0..50).any(|i| {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(200));
            }
            self.connects()
        })
    }

    fn connects(&self) -> bool {
        Command::new("timeout")
            .args([
                "3",
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{TEST_HOST}/{TEST_HOST_PORT}"),
            ])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip").args(["link", "del", &self.veth]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

// --- the release -------------------------------------------------------------

/// A Helm release of the chart, uninstalled when dropped (its admission policy
/// and bindings are cluster-scoped).
struct Release {
    namespace: String,
}

impl Release {
    fn install(namespace: &str, values: &Value) -> Release {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), serde_json::to_string(values).unwrap()).unwrap();
        let release = Release {
            namespace: namespace.to_owned(),
        };
        let (success, stdout, stderr) = exec(
            "helm",
            &[
                "install",
                RELEASE,
                CHART,
                "--namespace",
                namespace,
                "--values",
                file.path().to_str().unwrap(),
                "--wait",
                "--timeout",
                "300s",
            ],
        );
        if !success {
            let (_, pods, _) = exec("kubectl", &["get", "pods", "-n", namespace, "-o", "wide"]);
            let (_, events, _) = exec("kubectl", &["get", "events", "-n", namespace]);
            panic!("helm install: {stderr}\n{stdout}\npods:\n{pods}\nevents:\n{events}");
        }
        release
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = exec(
            "helm",
            &["uninstall", RELEASE, "--namespace", &self.namespace, "--wait"],
        );
    }
}

fn pod_logs(ns: &str, selector: &str) -> String {
    let (_, out, err) = exec(
        "kubectl",
        &[
            "logs",
            "-n",
            ns,
            "-l",
            selector,
            "--all-containers",
            "--tail",
            "60",
            "--prefix",
        ],
    );
    format!("{out}{err}")
}

/// The probes the agent's Bash tool runs inside the runner pod: one
/// `probe.<name>=<result>` line each. The command never spells a result or a
/// credential prefix itself (Claude Code keeps the command in its transcript
/// under $HOME, and the model sees it), so only the output can match.
fn probes(node_ip: &str, front_port: u16) -> String {
    format!(
        r#"res() {{ echo "probe.$1=$2"; }}
yes_no() {{ if "$@" >/dev/null 2>&1; then echo "$Y"; else echo "$N"; fi; }}
Y=open N=closed
tcp() {{ res "$1" "$(yes_no timeout 3 bash -c "exec 3<>/dev/tcp/$2/$3")"; }}
g=gh; g="$g"s_; k=sk-; k="$k"ant-
res uid "$(id -u)"
res capeff "$(awk '/^CapEff/ {{print $2}}' /proc/self/status)"
res capprm "$(awk '/^CapPrm/ {{print $2}}' /proc/self/status)"
res env-secrets "$( (env; tr '\0' '\n' < /proc/$PPID/environ) | grep -c -e "$g" -e "$k")"
Y=present N=absent
res sa-token "$(yes_no test -e /var/run/secrets/kubernetes.io/serviceaccount/token -o -e /run/secrets/kubernetes.io/serviceaccount/token)"
res disk-secrets "$(grep -rIls -e "$g" -e "$k" /workspace /home /tmp /run /etc /var 2>/dev/null | wc -l)"
Y=resolved N=failed
res dns "$(yes_no getent hosts kubernetes.default.svc.cluster.local)"
Y=open N=closed
tcp apiserver 10.96.0.1 443
tcp node-bridge {node_ip} {front_port}
tcp test-host {TEST_HOST} {TEST_HOST_PORT}
hp="${{ANTHROPIC_BASE_URL#http://}}"; hp="${{hp%%/*}}"
tcp gateway "${{hp%:*}}" "${{hp##*:}}"
Y=ok N=failed
res rootfs-write "$(yes_no touch /usr/local/bin/probe)"
res etc-write "$(yes_no touch /etc/probe)"
res workspace-write "$(yes_no touch /workspace/.probe)"
rm -f /workspace/.probe
true"#
    )
}

/// Everything one job needs: the fakes behind the node's bridge address, the
/// chart installed with the real images (Ready), the policy, the test host.
/// Fields drop in order: the release before its namespaces.
struct Job {
    node_ip: String,
    node_name: String,
    client: kube::Client,
    http: reqwest::Client,
    _release: Release,
    ops: TestNamespace,
    runs_ns: TestNamespace,
    github: Arc<FakeGitHub>,
    pulls: Arc<PullsGithub>,
    api: Arc<FakeAnthropic>,
    _git_server: GitServer,
    _repos: tempfile::TempDir,
    repo: String,
    bare: std::path::PathBuf,
    front_addr: SocketAddr,
    receiver_ip: String,
    placement: Value,
    _servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Job {
    async fn start(node: RealNode, edit_policy: impl FnOnce(&mut ClaudeRunPolicy)) -> Job {
        images_on_the_node();
        let client = client().await;
        install_crds(&client).await;
        let ops = TestNamespace::new(&client, "rn-ops").await;
        let runs_ns = TestNamespace::new(&client, "rn-runs").await;

        // The fakes, each behind one address on the node's bridge.
        let github = Arc::new(FakeGitHub::start().await);
        let pulls = Arc::new(PullsGithub::start().await);
        let repos = tempfile::tempdir().unwrap();
        let git_server = GitServer::start(repos.path(), GIT_PASSWORD).await;
        let repo = format!("acme/realnode-{}", std::process::id());
        let bare = git_server.repo_path(&repo);
        let seed = tempfile::tempdir().unwrap();
        std::fs::write(seed.path().join("README.md"), "# hello\n").unwrap();
        git(seed.path(), &["init", "-q", "-b", "main"]);
        git(seed.path(), &["add", "-A"]);
        git(
            seed.path(),
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.com",
                "commit",
                "-qm",
                "init",
            ],
        );
        std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
        git(
            repos.path(),
            &[
                "clone",
                "-q",
                "--bare",
                seed.path().to_str().unwrap(),
                bare.to_str().unwrap(),
            ],
        );
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let (front_addr, front_task) = serve_on_node(
            &node.node_ip,
            Router::new().fallback(front).with_state(Front {
                http: http.clone(),
                github: github.clone(),
                pulls: pulls.clone(),
                git_base: git_server.base_url.clone(),
            }),
        )
        .await;
        let usage = TurnUsage {
            input_tokens: 1000,
            output_tokens: 200,
        };
        let api = Arc::new(FakeAnthropic::start(vec![Turn::Text("Done.".into())], usage).await);
        let api_base = api.base_url.clone();
        let forwarder = http.clone();
        let (api_addr, api_task) = serve_on_node(
            &node.node_ip,
            Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (http, base) = (forwarder.clone(), api_base.clone());
                async move { forward(&http, &base, method, &uri, headers, body).await }
            }),
        )
        .await;

        github.install(&repo, 91);
        github.add_user("alice", 1001, "User");
        github.set_role(&repo, "alice", "write");
        github.add_org_member("acme", "alice");
        github.set_team_membership("acme", "platform", "alice", "active");

        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "claude-operator-github"},
            "stringData": {
                "app-id": APP_ID.to_string(),
                "private-key.pem": github.private_key_pem(),
                "webhook-secrets": WEBHOOK_SECRET,
            },
        }))
        .unwrap();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ops.name);
        secrets.create(&PostParams::default(), &secret).await.unwrap();
        let key: Secret = serde_json::from_value(json!({
            "metadata": {"name": "anthropic"},
            "stringData": {"api-key": ANTHROPIC_KEY},
        }))
        .unwrap();
        secrets.create(&PostParams::default(), &key).await.unwrap();

        // The chart with the real image, on the real node, every component as
        // a container; --wait returns when each Deployment is Available.
        let front_url = format!("http://{front_addr}");
        let placement = json!({
            "nodeSelector": {NODE_LABEL.0: NODE_LABEL.1},
            "tolerations": [{"key": NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
        });
        let mut values = json!({
            "image": {"repository": OPERATOR_IMAGE, "tag": "dev", "pullPolicy": "Never"},
            "github": {"existingSecret": "claude-operator-github", "apiUrl": front_url,
                       "appBotLogin": "claude-operator[bot]"},
            "gateway": {"replicas": 1, "anthropicApiUrl": format!("http://{api_addr}"), "githubGitUrl": front_url},
            "watchNamespace": runs_ns.name,
            "podDisruptionBudget": {"enabled": false},
        });
        values
            .as_object_mut()
            .unwrap()
            .extend(placement.as_object().unwrap().clone());
        let release = Release::install(&ops.name, &values);

        // The policy: the sample, on the real node, with the real runner image.
        let mut policy: ClaudeRunPolicy = load_yaml("config/samples/policy.yaml");
        policy.metadata.namespace = Some(runs_ns.name.clone());
        policy.spec.repositories = vec![repo.clone()];
        policy.spec.authorization.teams = vec!["acme/platform".into()];
        policy.spec.runner.image = RUNNER_IMAGE.into();
        policy.spec.runner.allowed_tools = vec!["Bash".into(), "Edit".into(), "Read".into()];
        policy.spec.runner.node_selector = [(NODE_LABEL.0.to_owned(), NODE_LABEL.1.to_owned())].into();
        policy.spec.runner.tolerations = serde_json::from_value(placement["tolerations"].clone()).unwrap();
        policy.spec.runner.resources = Some(
            serde_json::from_value(json!({"requests": {"cpu": "100m", "memory": "256Mi"},
                                          "limits": {"cpu": "1", "memory": "1Gi"}}))
            .unwrap(),
        );
        edit_policy(&mut policy);
        Api::<ClaudeRunPolicy>::namespaced(client.clone(), &runs_ns.name)
            .create(&PostParams::default(), &policy)
            .await
            .unwrap();

        let receiver = Api::<Pod>::namespaced(client.clone(), &ops.name)
            .list(&ListParams::default().labels("app.kubernetes.io/component=receiver"))
            .await
            .unwrap()
            .items
            .remove(0);
        let receiver_ip = receiver.status.unwrap().pod_ip.unwrap();
        Job {
            node_ip: node.node_ip,
            node_name: std::env::var("E2E_NODE_NAME").unwrap_or_else(|_| "real-node-0".into()),
            client,
            http,
            _release: release,
            ops,
            runs_ns,
            github,
            pulls,
            api,
            _git_server: git_server,
            _repos: repos,
            repo,
            bare,
            front_addr,
            receiver_ip,
            placement,
            _servers: vec![front_task, api_task],
        }
    }

    /// Sends a member's signed "@claude" comment to the receiver's pod; the
    /// run's name.
    async fn comment(&self, delivery: &str, comment_id: i64) -> String {
        let payload = run_env::comment_payload(
            &self.repo,
            "alice",
            1001,
            "User",
            "MEMBER",
            "@claude add a retry",
            comment_id,
        );
        let body = serde_json::to_vec(&payload).unwrap();
        let run = run_name("issue_comment", &body).expect("a trigger");
        let status = self
            .http
            .post(format!("http://{}:8080/webhook", self.receiver_ip))
            .header("x-github-event", "issue_comment")
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", sign(WEBHOOK_SECRET, &body))
            .body(body)
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success(), "{status}\n{}", self.diagnostics());
        run
    }

    fn diagnostics(&self) -> String {
        format!(
            "operator logs:\n{}\nrunner:\n{}\npods:\n{}",
            pod_logs(&self.ops.name, "app.kubernetes.io/instance=claude-operator"),
            pod_logs(&self.runs_ns.name, "claude-operator.dev/run"),
            exec(
                "kubectl",
                &["get", "pods,events", "-n", &self.runs_ns.name, "-o", "wide"]
            )
            .1
        )
    }

    /// Waits until the run is over; the run.
    async fn finished(&self, run: &str, within: Duration) -> ClaudeRun {
        let runs: Api<ClaudeRun> = Api::namespaced(self.client.clone(), &self.runs_ns.name);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let r = runs.get_opt(run).await.unwrap();
            let phase = r.as_ref().and_then(|r| r.status.as_ref()).map(|s| s.phase);
            if phase.is_some_and(Phase::is_terminal) {
                return r.unwrap();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{run} did not finish: {:#?}\n{}",
                r.map(|r| r.status),
                self.diagnostics()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_job_runs_in_real_containers_on_the_real_node() {
    let Some(node) = real_node() else { return };
    let job = Job::start(node, |_| {}).await;
    let test_host = TestHost::start();
    assert!(test_host.reachable_from_host(), "the host must reach its own test host");
    job.api.set_script(vec![
        Turn::Bash("echo 'retry with backoff' >> README.md".into()),
        Turn::Bash(probes(&job.node_ip, job.front_addr.port())),
        Turn::Text("Added the retry.".into()),
    ]);

    // Ready through the real probes, running as containers on the real node.
    let pods: Api<Pod> = Api::namespaced(job.client.clone(), &job.ops.name);
    for component in ["receiver", "controller", "gateway"] {
        let list = pods
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/component={component}")))
            .await
            .unwrap();
        assert!(!list.items.is_empty(), "no {component} pod");
        for pod in list.items {
            let spec = pod.spec.unwrap();
            assert_eq!(
                spec.node_name.as_deref(),
                Some(job.node_name.as_str()),
                "{component} runs on the real node"
            );
            let status = pod.status.unwrap();
            let ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            assert!(ready, "{component} is Ready");
            let container = &status.container_statuses.unwrap()[0];
            assert!(
                container.ready && container.state.as_ref().unwrap().running.is_some(),
                "{container:?}"
            );
            assert!(
                container
                    .container_id
                    .as_deref()
                    .unwrap_or("")
                    .starts_with("containerd://"),
                "{container:?}"
            );
            assert_eq!(container.restart_count, 0, "{component} never restarted");
        }
    }

    // Not even a try reaches the node: "restricted" rejects a privileged pod.
    let privileged: Pod = serde_json::from_value(json!({
        "metadata": {"name": "privileged"},
        "spec": {"nodeSelector": {NODE_LABEL.0: NODE_LABEL.1},
                 "tolerations": job.placement["tolerations"],
                 "containers": [{"name": "c", "image": RUNNER_IMAGE, "imagePullPolicy": "Never",
                                 "securityContext": {"privileged": true}}]},
    }))
    .unwrap();
    let refused = Api::<Pod>::namespaced(job.client.clone(), &job.runs_ns.name)
        .create(&PostParams::default(), &privileged)
        .await
        .expect_err("a privileged pod in a restricted namespace");
    assert_eq!(api_error_code(&refused), Some(403), "{refused}");
    assert!(refused.to_string().contains("violates PodSecurity"), "{refused}");

    // A member's comment, signed as GitHub signs it, to the receiver's pod.
    let run = job.comment("realnode-1", 4_200_001).await;
    let done = job.finished(&run, Duration::from_secs(300)).await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.phase, Phase::Succeeded, "{status:#?}\n{}", job.diagnostics());

    // It really ran in a container on the real node.
    let runner_pod = Api::<Pod>::namespaced(job.client.clone(), &job.runs_ns.name)
        .get(status.pod_name.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(
        runner_pod.spec.unwrap().node_name.as_deref(),
        Some(job.node_name.as_str())
    );
    let terminated = runner_pod.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(terminated.exit_code, 0);
    assert!(terminated.container_id.unwrap_or_default().starts_with("containerd://"));

    // The edit reached the run's branch, main is untouched, and the draft pull
    // request was opened with the token (never the capability).
    let branch = format!("claude/{run}");
    let readme = git(&job.bare, &["show", &format!("{branch}:README.md")]);
    assert!(readme.contains("retry with backoff"), "{readme}");
    assert_eq!(git(&job.bare, &["show", "main:README.md"]), "# hello");
    let calls = job.pulls.calls();
    let pull = calls
        .iter()
        .find(|c| c.path == format!("/repos/{}/pulls", job.repo))
        .unwrap_or_else(|| panic!("no pull request: {calls:?}"));
    assert_eq!(pull.body["head"], json!(branch));
    assert_eq!(pull.body["draft"], true);
    assert!(pull.authorization.as_deref().unwrap_or("").contains("ghs_"), "{pull:?}");

    // The cost is the gateway's meter.
    let cost = status.cost.unwrap();
    assert_eq!(cost.source, CostSource::Metered, "{cost:?}");
    assert!(cost.usd != "0" && !cost.usd.is_empty(), "{cost:?}");
    assert!(cost.input_tokens >= 3000, "three model requests metered: {cost:?}");

    // What the agent saw from inside the pod (its Bash output went back to
    // the model in the next request).
    let seen: String = job.api.message_requests().iter().map(|r| r.to_string()).collect();
    for expected in [
        "probe.uid=10001",
        "probe.capeff=0000000000000000",
        "probe.capprm=0000000000000000",
        "probe.env-secrets=0",
        "probe.sa-token=absent",
        "probe.disk-secrets=0",
        "probe.dns=failed",
        "probe.apiserver=closed",
        "probe.node-bridge=closed",
        "probe.test-host=closed",
        "probe.gateway=open",
        "probe.rootfs-write=failed",
        "probe.etc-write=failed",
        "probe.workspace-write=ok",
    ] {
        assert!(
            seen.contains(expected),
            "inside the pod: expected {expected} in what the agent saw: {seen}"
        );
    }
    assert!(
        !seen.contains(ANTHROPIC_KEY) && !seen.contains("ghs_fake"),
        "a credential reached the agent"
    );
    // The requests are JSON: the tool output's line breaks are `\n` there.
    let seen_text = seen.replace("\\n", " ");
    let probes_seen: Vec<&str> = seen_text
        .split(|c: char| !(c.is_ascii_alphanumeric() || "._=-".contains(c)))
        .filter(|w| w.starts_with("probe.") && w.contains('='))
        .collect();
    eprintln!(
        "run {run}: {:?}, ${} metered ({} input, {} output tokens); pull request from {branch}; inside the pod: {}",
        status.phase,
        cost.usd,
        cost.input_tokens,
        cost.output_tokens,
        probes_seen.join(" ")
    );
    // The positive controls: the host still reaches its test host, and the
    // gateway reached the fakes on the node's bridge address; a pod without
    // the run's NetworkPolicy (the gateway's: it has no egress policy) on the
    // same node reaches the test host and the API service the runner could
    // not, so what stopped the runner is its policy, not the network.
    assert!(test_host.reachable_from_host());
    assert!(job.github.minted(&job.repo) >= 1);
    let gateway_pod = pods
        .list(&ListParams::default().labels("app.kubernetes.io/component=gateway"))
        .await
        .unwrap()
        .items
        .remove(0)
        .metadata
        .name
        .unwrap();
    for (target, host, port) in [
        ("test host", TEST_HOST.to_owned(), TEST_HOST_PORT),
        ("API service", "10.96.0.1".to_owned(), 443),
    ] {
        let (reached, out, err) = exec(
            "kubectl",
            &[
                "exec",
                "-n",
                &job.ops.name,
                &gateway_pod,
                "--",
                "timeout",
                "5",
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{host}/{port}"),
            ],
        );
        assert!(
            reached,
            "the gateway's pod reaches the {target} ({host}:{port}): {out}{err}"
        );
    }
}

/// The benchmark (e2e/bench/realnode.sh; figures, not assertions): the time
/// from the signed webhook POST to the agent's first model request arriving
/// at the gateway's upstream, over BENCH_RUNS (default 20) runs one after the
/// other on the warm node, next to the floor measured in the same run: a bare
/// pod of the runner image created and reaching Running. Prints JSON and
/// writes it to BENCH_OUT when set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: e2e/bench/realnode.sh"]
async fn bench_webhook_to_first_model_request_on_the_real_node() {
    let Some(node) = real_node() else { return };
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let job = Job::start(node, |policy| {
        policy.spec.budget.max_runs_per_user_per_hour = 1000;
        policy.spec.budget.max_concurrent_runs = 1000;
    })
    .await;
    job.api.set_script(vec![Turn::Text("Done.".into())]);

    // Warm-up: one run, so the image is in the page cache and the node warm.
    let warm = job.comment("bench-warm", 4_300_000).await;
    job.finished(&warm, Duration::from_secs(300)).await;

    let mut job_ms = Vec::new();
    // Where the time goes, as the test sees it (polled every ~20 ms): the
    // webhook POST to the runner pod's creation (receiver, admission, token,
    // fence), creation to Running (the node: what the floor measures), and
    // Running to the first model request (the runner: gateway, clone, CLI).
    let (mut to_pod_ms, mut to_running_ms, mut to_request_ms) = (Vec::new(), Vec::new(), Vec::new());
    let run_pods: Api<Pod> = Api::namespaced(job.client.clone(), &job.runs_ns.name);
    for i in 0..runs {
        let before = job.api.requests().len();
        let t0 = std::time::Instant::now();
        let run = job.comment(&format!("bench-{i}"), 4_300_001 + i as i64).await;
        let pod_name = claude_operator::sandbox::pod_name(&run);
        let (mut created, mut running) = (None, None);
        let mut polls = 0u32;
        loop {
            if job.api.requests().len() > before {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "no model request for {run}\n{}",
                job.diagnostics()
            );
            polls += 1;
            if running.is_none()
                && polls.is_multiple_of(4)
                && let Ok(Some(pod)) = run_pods.get_opt(&pod_name).await
            {
                created.get_or_insert(t0.elapsed());
                if pod.status.and_then(|s| s.phase).as_deref() == Some("Running") {
                    running = Some(t0.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let total = t0.elapsed();
        job_ms.push(total.as_secs_f64() * 1000.0);
        // A phase the polls missed (too short to see) counts as ending where the next did.
        let running = running.unwrap_or(total);
        let created = created.unwrap_or(running);
        to_pod_ms.push(created.as_secs_f64() * 1000.0);
        to_running_ms.push((running - created).as_secs_f64() * 1000.0);
        to_request_ms.push((total - running).as_secs_f64() * 1000.0);
        job.finished(&run, Duration::from_secs(300)).await;
    }

    // The floor: a bare pod of the same image, created and reaching Running.
    let pods: Api<Pod> = Api::namespaced(job.client.clone(), &job.runs_ns.name);
    let mut floor_ms = Vec::new();
    for i in 0..runs {
        let name = format!("bare-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "nodeSelector": {NODE_LABEL.0: NODE_LABEL.1},
                "tolerations": job.placement["tolerations"],
                "automountServiceAccountToken": false,
                "securityContext": {"runAsNonRoot": true, "runAsUser": 10001,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "c", "image": RUNNER_IMAGE, "imagePullPolicy": "Never",
                                "command": ["sleep", "30"],
                                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                                              "limits": {"cpu": "1", "memory": "256Mi"}},
                                "securityContext": {"allowPrivilegeEscalation": false,
                                                    "readOnlyRootFilesystem": true,
                                                    "capabilities": {"drop": ["ALL"]}}}],
            },
        }))
        .unwrap();
        let t0 = std::time::Instant::now();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        loop {
            let phase = pods.get(&name).await.unwrap().status.and_then(|s| s.phase);
            if phase.as_deref() == Some("Running") {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "{name} never ran");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        floor_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        pods.delete(&name, &kube::api::DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }
    let summary = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let pct = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        json!({"n": v.len(), "p50_ms": pct(0.50).round(), "p99_ms": pct(0.99).round(),
               "min_ms": v[0].round(), "max_ms": v[v.len() - 1].round()})
    };
    let job_summary = summary(&mut job_ms);
    let floor_summary = summary(&mut floor_ms);
    let ratio = job_summary["p50_ms"].as_f64().unwrap() / floor_summary["p50_ms"].as_f64().unwrap().max(1.0);
    let report = json!({
        "benchmark": "signed webhook POST -> first model request at the gateway, real node",
        "node": job.node_name,
        "runner_image": RUNNER_IMAGE,
        "webhook_to_first_model_request": job_summary,
        "floor_bare_pod_created_to_running": floor_summary,
        "breakdown": {
            "webhook_to_pod_created": summary(&mut to_pod_ms),
            "pod_created_to_running": summary(&mut to_running_ms),
            "running_to_first_model_request": summary(&mut to_request_ms),
        },
        "p50_ratio_to_floor": (ratio * 100.0).round() / 100.0,
        "goal": "p50 within 1.5x of the floor and under 3 s",
    });
    let text = serde_json::to_string_pretty(&report).unwrap();
    println!("{text}");
    if let Ok(out) = std::env::var("BENCH_OUT") {
        std::fs::write(out, format!("{text}\n")).unwrap();
    }
}
