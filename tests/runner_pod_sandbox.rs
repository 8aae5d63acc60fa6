//! The runner pod under a real container runtime: the pod the operator
//! builds (`sandbox::runner_pod`, from the sample policy and run) is started
//! by runc with the OCI config that kubelet and containerd's CRI plugin would
//! give it (e2e/podsandbox/: containerd's RuntimeDefault seccomp profile and
//! default spec, kubelet's /proc masks), and runs `claude-operator runner`
//! with the real Claude Code CLI against the loopback fakes of
//! runner_claude.rs behind the stand-in gateway (the pod's one door, with
//! the run's capability). The pod holds no credential, so Claude Code's own
//! Bash sandbox (bubblewrap) is not used: the pod is the sandbox, and its
//! Bash calls run under runc as built. What works and why: docs/pod-sandbox.md.
//!
//! Needs root, runc and Go (the first run builds the config generator from
//! the Go module proxy). Without them each test is recorded as skipped with
//! the reason (support/skip.rs; `make test` lists skips at the end), except
//! under CI=true, where a missing prerequisite fails the test.

#[path = "support/runner/claude_cli.rs"]
mod claude_cli;
#[path = "support/runner/fake_anthropic.rs"]
mod fake_anthropic;
#[path = "support/runner/fake_github.rs"]
mod fake_github;
#[path = "support/runner/git_server.rs"]
mod git_server;
#[path = "support/skip.rs"]
mod skip;
#[path = "support/runner/test_gateway.rs"]
mod test_gateway;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use claude_operator::api::{ClaudeRun, ClaudeRunPolicy};
use claude_operator::report::RunReport;
use claude_operator::sandbox::{RunnerParams, runner_pod};
use fake_anthropic::{FakeAnthropic, Turn, TurnUsage};
use fake_github::FakeGithub;
use git_server::{GitServer, git};
use k8s_openapi::api::core::v1::Container;
use test_gateway::{TestGateway, Upstreams};

const REPOSITORY: &str = "octo/hello";
const TOKEN: &str = "ghs_PodSandboxToken0123456789SECRET";
const ANTHROPIC_KEY: &str = "sk-ant-pod-sandbox-key-0123456789";
const CAPABILITY: &str = "cocap_cG9kLXNhbmRib3gtY2FwYWJpbGl0eS1ub3QtcmVhbDAxMjM";
const USAGE: TurnUsage = TurnUsage {
    input_tokens: 1000,
    output_tokens: 200,
};
/// Where the pieces of the runner image are mounted in the container.
const RUNNER_BIN_DIR: &str = "/opt/claude-operator";
const CLAUDE_CODE_DIR: &str = "/opt/claude-code";
const CLAUDE_SHIM: &str = "/opt/claude-shim";

/// One pod at a time: Claude Code runs are heavy on two cores.
static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn run_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/podsandbox/run.sh")
}

/// Why this machine cannot run the tests, if it cannot.
fn skip_reason() -> Option<String> {
    let Ok(uid) = Command::new("id").arg("-u").output() else {
        return Some("`id -u` cannot run: whether this is root is unknown".into());
    };
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root: runc needs root to create the pod's container".into());
    }
    if !Command::new("runc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some("runc is missing (apt-get install runc, or e2e/ensure-deps.sh)".into());
    }
    if !Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some("go is missing: e2e/podsandbox/run.sh builds its OCI config generator with it".into());
    }
    None
}

/// Without the prerequisites: fails under CI=true, else recorded as skipped
/// (`make test` lists skips at the end) and the test returns.
macro_rules! skip_unless_able {
    () => {
        if let Some(reason) = skip_reason() {
            skip::skip(&reason);
            return;
        }
    };
}

/// Runs `run.sh` synchronously; returns (exit code, stdout, stderr).
/// The first run.sh on a fresh machine builds the OCI config generator and says
/// so on stderr: build it once, before any case whose stderr is asserted.
fn generator_built() {
    static GENERATOR: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    GENERATOR.get_or_init(|| {
        let out = Command::new(run_sh()).arg("--list").output().unwrap();
        assert!(
            out.status.success(),
            "building the generator failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

fn podsandbox(args: &[&str]) -> (i32, String, String) {
    generator_built();
    let out = Command::new(run_sh()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// bubblewrap as Claude Code 2.1.330 runs it for a Bash call with
/// CLAUDE_CODE_SUBPROCESS_ENV_SCRUB=1 (seen with strace on the host: the
/// namespace, /proc and /dev arguments in its order; its many file system
/// arguments cut down to `/` read-only and the secrets hidden by a tmpfs).
const BWRAP_AS_CLAUDE_CODE_RUNS_IT: &[&str] = &[
    "bwrap",
    "--new-session",
    "--die-with-parent",
    "--ro-bind",
    "/",
    "/",
    "--tmpfs",
    "/run/claude-operator/secrets",
    "--dev",
    "/dev",
    "--unshare-pid",
    "--unshare-user",
    "--proc",
    "/proc",
    "--disable-userns",
    "--",
    "/bin/bash",
    "-c",
    "echo sandboxed; cat /run/claude-operator/secrets/github-token",
];

const NO_NAMESPACES: &str = "bwrap: No permissions to create new namespace, likely because the kernel does not allow \
                             non-privileged user namespaces.";
const NO_PROC: &str = "bwrap: Can't mount proc on /newroot/proc: Operation not permitted";

/// Per variant, what bubblewrap says, or None when it runs the command.
const BWRAP_IN: [(&str, Option<&str>); 8] = [
    ("runtime-default", Some(NO_NAMESPACES)),
    ("userns", Some(NO_NAMESPACES)),
    ("userns-unmasked", Some(NO_NAMESPACES)),
    ("localhost", Some(NO_PROC)),
    ("localhost-userns", Some(NO_PROC)),
    ("localhost-userns-unmasked", None),
    ("unconfined", Some(NO_PROC)),
    ("unconfined-userns-unmasked", None),
];

/// RuntimeDefault refuses the namespaces; with them allowed (Localhost or
/// Unconfined) a fresh /proc cannot be mounted over the masked one; only an
/// unmasked /proc (which needs hostUsers: false) lets bubblewrap run.
#[test]
fn bubblewrap_needs_namespace_syscalls_and_an_unmasked_proc() {
    skip_unless_able!();
    let mut failures = Vec::new();
    for (variant, refusal) in BWRAP_IN {
        let mut args = vec!["--variant", variant, "--secrets"];
        let secrets = tempfile::tempdir().unwrap();
        std::fs::write(secrets.path().join("github-token"), TOKEN).unwrap();
        args.push(secrets.path().to_str().unwrap());
        args.push("--");
        args.extend(BWRAP_AS_CLAUDE_CODE_RUNS_IT);
        let (code, stdout, stderr) = podsandbox(&args);
        eprintln!("{variant}: exit {code}: {}{}", stdout.trim(), stderr.trim());
        let as_expected = match refusal {
            Some(message) => code == 1 && stdout.is_empty() && stderr.starts_with(message),
            // The secrets directory is hidden, as Claude Code asks.
            None => {
                code == 1
                    && stdout == "sandboxed\n"
                    && stderr.contains("cat: /run/claude-operator/secrets/github-token: No such file or directory")
            }
        };
        if !as_expected || stdout.contains(TOKEN) {
            failures.push(format!("{variant}: exit {code}: {stdout}{stderr}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// What Claude Code's `enableWeakerNestedSandbox` would do (bind the
/// container's /proc instead of mounting a fresh one) does run under a
/// Localhost profile that restricted admits; other processes' /proc entries
/// stay closed to the sandbox (another user namespace: no ptrace access).
/// (The runner no longer uses Claude Code's bubblewrap sandbox; these
/// bubblewrap facts stay as the record of why: docs/pod-sandbox.md.)
#[test]
fn bubblewrap_binding_the_container_s_proc_runs_under_a_localhost_profile() {
    skip_unless_able!();
    let mut argv: Vec<&str> = BWRAP_AS_CLAUDE_CODE_RUNS_IT.to_vec();
    let at = argv.iter().position(|a| *a == "--proc").unwrap();
    argv.splice(at..at + 2, ["--bind", "/proc", "/proc"]);
    argv.retain(|a| *a != "--disable-userns");
    *argv.last_mut().unwrap() = "echo sandboxed; cat /proc/1/environ /proc/1/root/etc/hostname";
    for variant in ["localhost", "localhost-userns"] {
        let mut args = vec!["--variant", variant, "--"];
        args.extend(&argv);
        let (code, stdout, stderr) = podsandbox(&args);
        eprintln!("{variant}: exit {code}: {stdout}{stderr}");
        assert_eq!(stdout, "sandboxed\n", "{variant}: {stderr}");
        assert!(
            stderr.contains("cat: /proc/1/environ: Permission denied"),
            "{variant}: {stderr}"
        );
        assert!(
            stderr.contains("cat: /proc/1/root/etc/hostname: Permission denied"),
            "{variant}: {stderr}"
        );
    }
}

/// Pod Security admission's own checks (k8s.io/pod-security-admission
/// v0.37.2, policy version v1.37) on the runner pod changed as each variant
/// says: (restricted, baseline).
#[test]
fn restricted_admits_localhost_profiles_and_user_namespaces_but_not_an_unmasked_proc() {
    skip_unless_able!();
    let expected = [
        ("runtime-default", true, true),
        ("userns", true, true),
        ("userns-unmasked", false, true),
        ("localhost", true, true),
        ("localhost-userns", true, true),
        ("localhost-userns-unmasked", false, true),
        ("unconfined", false, false),
        ("unconfined-userns-unmasked", false, false),
    ];
    for (variant, restricted, baseline) in expected {
        let (code, stdout, stderr) = podsandbox(&["--admit", variant]);
        assert_eq!(code, 0, "{stderr}");
        eprintln!("{variant}:\n{stdout}");
        let verdict = |level: &str| {
            let line = stdout.lines().find(|l| l.starts_with(level)).unwrap();
            line.ends_with(": allowed")
        };
        assert_eq!(
            (verdict("restricted"), verdict("baseline")),
            (restricted, baseline),
            "{variant}: {stdout}"
        );
    }
    let (_, stdout, _) = podsandbox(&["--admit", "localhost-userns-unmasked"]);
    assert!(
        stdout.contains(r#"procMount (container "runner" must not set securityContext.procMount to "Unmasked")"#),
        "{stdout}"
    );
}

/// The servers, the repository, the secrets and the pod the operator builds.
struct Setup {
    dir: tempfile::TempDir,
    git: GitServer,
    api: FakeAnthropic,
    github: FakeGithub,
    gateway: TestGateway,
    runner: Container,
    run_name: String,
}

/// What a pod run left behind.
struct PodRun {
    code: i32,
    stdout: String,
    stderr: String,
    report: Option<RunReport>,
    claude_argv: String,
}

impl Setup {
    async fn new(script: Vec<Turn>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed");
        std::fs::create_dir_all(&seed).unwrap();
        git(&seed, &["init", "-q"]);
        std::fs::write(seed.join("README.md"), "# hello\n").unwrap();
        git(&seed, &["add", "-A"]);
        git(&seed, &["commit", "-qm", "initial"]);
        let root = dir.path().join("git");
        let bare = root.join(format!("{REPOSITORY}.git"));
        std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
        git(
            dir.path(),
            &["clone", "-q", "--bare", seed.to_str().unwrap(), bare.to_str().unwrap()],
        );
        let git = GitServer::start(&root, TOKEN).await;
        let api = FakeAnthropic::start(script, USAGE).await;
        let github = FakeGithub::start().await;

        // The pod the operator would create, from the samples.
        let mut policy: ClaudeRunPolicy = serde_yaml::from_str(include_str!("../config/samples/policy.yaml")).unwrap();
        let mut run: ClaudeRun = serde_yaml::from_str(include_str!("../config/samples/run.yaml")).unwrap();
        run.metadata.uid = Some("6a1c5f2e-0d7b-4a39-9a57-3c1f0e2b8d44".into());
        run.spec.repository = REPOSITORY.into();
        run.spec.trigger.number = 7;
        policy.spec.runner.allowed_tools = ["Bash", "Edit", "Read"].map(String::from).into();
        policy.spec.runner.max_turns = 5;
        policy.spec.budget.max_cost_per_run_usd = "1.00".into();
        let gateway = TestGateway::start(
            CAPABILITY,
            Upstreams {
                anthropic_url: api.base_url.clone(),
                anthropic_key: ANTHROPIC_KEY.into(),
                git_url: git.base_url.clone(),
                github_url: github.base_url.clone(),
                github_token: TOKEN.into(),
            },
        )
        .await;
        let params = RunnerParams {
            gateway_url: gateway.base_url.clone(),
        };
        let pod = runner_pod(&policy.spec, &run, "run-secret", &params).unwrap();
        let spec = pod.spec.unwrap();
        let runner = spec.containers.into_iter().next().unwrap();

        // run.sh models these mounts and this user (e2e/README.md).
        let mounts: Vec<(String, bool)> = runner
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.mount_path.clone(), m.read_only.unwrap_or(false)))
            .collect();
        assert_eq!(
            mounts,
            [
                ("/workspace".into(), false),
                ("/home/runner".into(), false),
                ("/tmp".into(), false),
                ("/run/claude-operator/secrets".into(), true)
            ]
        );
        let sc = runner.security_context.clone().unwrap();
        assert_eq!((sc.run_as_user, sc.run_as_group), (Some(10001), Some(10001)));
        assert_eq!(runner.termination_message_path.as_deref(), Some("/dev/termination-log"));

        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(&secrets).unwrap();
        std::fs::write(secrets.join("capability"), format!("{CAPABILITY}\n")).unwrap();
        std::fs::write(secrets.join("prompt"), "Please greet in the README.").unwrap();
        Setup {
            run_name: run.metadata.name.clone().unwrap(),
            dir,
            git,
            api,
            github,
            gateway,
            runner,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn bare(&self) -> PathBuf {
        self.git.repo_path(REPOSITORY)
    }

    /// Runs the runner container in `variant`, Claude Code through a shim
    /// that records its arguments.
    async fn run(&self, variant: &str) -> PodRun {
        let _one = RUNNING.lock().await;
        let claude = claude_cli::claude_bin();
        // .../npm/<version>/node_modules/.bin/claude -> .../npm/<version>
        let npm_dir = claude.parent().unwrap().parent().unwrap().parent().unwrap();
        let shim = self.path("claude-shim");
        std::fs::write(
            &shim,
            format!(
                "#!/bin/bash\nargs=()\nfor a in \"$@\"; do\n  case \"$a\" in --settings=*) : ;; esac\n  \
                 args+=(\"$a\")\ndone\nprintf '%s\\n' \"${{args[@]}}\" > /tmp/claude-argv.txt\n\
                 exec {CLAUDE_CODE_DIR}/node_modules/.bin/claude \"${{args[@]}}\"\n"
            ),
        )
        .unwrap();
        Command::new("chmod").arg("755").arg(&shim).status().unwrap();
        let volumes = self.path(&format!("volumes-{variant}"));
        let _ = std::fs::remove_dir_all(&volumes);
        std::fs::create_dir_all(&volumes).unwrap();

        let mut args: Vec<String> = ["--variant", variant, "--volumes"].map(String::from).into();
        args.push(volumes.to_string_lossy().into());
        args.extend(["--secrets".into(), self.path("secrets").to_string_lossy().into()]);
        for (src, dst) in [
            (
                PathBuf::from(env!("CARGO_BIN_EXE_claude-operator")),
                format!("{RUNNER_BIN_DIR}/claude-operator"),
            ),
            (npm_dir.to_owned(), CLAUDE_CODE_DIR.to_owned()),
            (shim, CLAUDE_SHIM.to_owned()),
        ] {
            args.extend(["--mount".into(), format!("{}:{dst}:ro", src.display())]);
        }
        // The image's environment (Dockerfile.runner), then the pod's.
        let image_env = [
            format!("PATH={RUNNER_BIN_DIR}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME=/home/runner".into(),
            format!("CLAUDE_OPERATOR_CLAUDE_BIN={CLAUDE_SHIM}"),
        ];
        let pod_env = self
            .runner
            .env
            .iter()
            .flatten()
            .map(|e| format!("{}={}", e.name, e.value.clone().unwrap_or_default()));
        for e in image_env.into_iter().chain(pod_env) {
            args.extend(["--env".into(), e]);
        }
        args.extend(["--cwd".into(), self.runner.working_dir.clone().unwrap()]);
        args.push("--".into());
        args.extend(self.runner.command.clone().unwrap());

        tokio::task::spawn_blocking(generator_built).await.unwrap();
        let out = tokio::time::timeout(
            Duration::from_secs(240),
            tokio::process::Command::new(run_sh()).args(&args).output(),
        )
        .await
        .expect("the pod finished in time")
        .unwrap();
        let read = |p: &str| std::fs::read_to_string(volumes.join(p)).unwrap_or_default();
        let report_raw = read("termination-log");
        let run = PodRun {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            report: serde_json::from_str(&report_raw).ok(),
            claude_argv: read("tmp/claude-argv.txt"),
        };
        eprintln!(
            "pod ({variant}) exit {}\nstdout:\n{}\nstderr:\n{}",
            run.code, run.stdout, run.stderr
        );
        for text in [&run.stdout, &run.stderr, &report_raw] {
            assert!(
                !text.contains(TOKEN) && !text.contains(ANTHROPIC_KEY),
                "a credential leaked"
            );
            assert!(
                !text.contains(CAPABILITY),
                "the capability leaked into the pod's output"
            );
        }
        run
    }
}

/// What a Bash call in the pod does: edit the README, and record who it is,
/// what the mounted Secret holds and every environment it can read.
const PROBE: &str = "printf 'hello from the pod\\n' >> README.md; \
     { id; ls /run/claude-operator/secrets; env; for p in /proc/[0-9]*; do cat $p/environ; echo; done; } \
     > probe.txt 2>&1; true";

impl Setup {
    /// The result Claude Code got for the scripted Bash call.
    fn bash_result(&self) -> (bool, String) {
        let requests = self.api.message_requests();
        assert_eq!(requests.len(), 2, "two model turns");
        let messages = requests[1]["messages"].as_array().unwrap();
        let result = &messages.last().unwrap()["content"][0];
        assert_eq!(result["type"], "tool_result", "{result}");
        (
            result["is_error"].as_bool().unwrap_or(false),
            result["content"].as_str().unwrap_or_default().to_owned(),
        )
    }

    fn branch(&self) -> String {
        format!("claude/{}", self.run_name)
    }
}

/// The pod as src/sandbox/pod.rs builds it (seccomp RuntimeDefault, user
/// namespaces of the host, /proc masked, read-only root): Claude Code's Bash
/// call runs (no bubblewrap), the edit is pushed to the run's branch and a
/// draft pull request opened, all through the gateway; the only credential
/// anywhere in the pod is the capability.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_as_built_runs_bash_and_holds_only_the_capability() {
    skip_unless_able!();
    let setup = Setup::new(vec![Turn::Bash(PROBE.into()), Turn::Text("Done.".into())]).await;
    let sc = setup.runner.security_context.clone().unwrap();
    assert_eq!(sc.seccomp_profile.clone().unwrap().type_, "RuntimeDefault");
    assert_eq!(sc.proc_mount, None);
    let run = setup.run("runtime-default").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.report.expect("a report").outcome, "success");
    let (is_error, text) = setup.bash_result();
    assert!(!is_error, "{text}");
    assert!(!run.claude_argv.contains("\"sandbox\""), "{}", run.claude_argv);

    let bare = setup.bare();
    let readme = git(&bare, &["show", &format!("{}:README.md", setup.branch())]);
    assert_eq!(readme, "# hello\nhello from the pod");
    let probe = git(&bare, &["show", &format!("{}:probe.txt", setup.branch())]);
    eprintln!("probe.txt:\n{probe}");
    assert!(probe.starts_with("uid=10001 gid=10001"), "{probe}");
    let listing: Vec<&str> = probe.lines().skip(1).take(2).collect();
    assert_eq!(listing, ["capability", "prompt"], "{probe}");
    assert!(!probe.contains(TOKEN) && !probe.contains(ANTHROPIC_KEY), "{probe}");
    assert!(!probe.contains("CLAUDE_CODE_SUBPROCESS_ENV_SCRUB"), "{probe}");

    let calls = setup.github.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].path, "/repos/octo/hello/pulls");
    assert_eq!(calls[0].body["draft"], true);
    // Everything went through the gateway, with the capability.
    let requests = setup.gateway.requests();
    for kind in ["model", "git", "github"] {
        assert!(
            requests.iter().any(|r| r.kind == kind && r.authorized),
            "{kind}: {requests:?}"
        );
    }
}
