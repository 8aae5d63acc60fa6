//! The command line: one binary, `claude-operator`, with the subcommands
//! `receiver` (the internet-facing webhook receiver), `controller` (the
//! reconcilers), `gateway` (the runner pods' only door), `run` (all three in
//! one process, for development and the demo), `crd` (prints the CRDs) and
//! `runner` (the wrapper inside the runner pod). Every flag can also be set
//! through an environment variable `CLAUDE_OPERATOR_<FLAG>`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Runs Claude Code on GitHub events inside sandboxed, budgeted Kubernetes pods.
#[derive(Parser, Debug)]
#[command(name = "claude-operator", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "CLAUDE_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written (levels are set with `RUST_LOG`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the webhook receiver, the controllers and the gateway in one
    /// process (development and the demo), with metrics and health endpoints.
    Run(RunArgs),
    /// Run the webhook receiver only (internet-facing: verifies deliveries
    /// and creates runs; holds no GitHub App key and reads no Secret).
    Receiver(RunArgs),
    /// Run the controllers only (no ingress but metrics and health).
    Controller(RunArgs),
    /// Run the gateway only: the runner pods' one route out.
    Gateway(RunArgs),
    /// Print every CustomResourceDefinition as YAML (what `crds/` holds).
    Crd,
    /// The wrapper that runs Claude Code inside a runner pod.
    Runner(RunnerArgs),
}

/// Flags of `claude-operator run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Address of the webhook receiver (path `/webhook`).
    #[arg(long, env = "CLAUDE_OPERATOR_WEBHOOK_LISTEN", default_value = "0.0.0.0:8080")]
    pub webhook_listen: SocketAddr,

    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "CLAUDE_OPERATOR_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,

    /// File with the webhook secrets, one per line; every line is accepted, so
    /// a secret can be rotated without downtime. Re-read when it changes.
    #[arg(long, env = "CLAUDE_OPERATOR_WEBHOOK_SECRET_FILE", value_name = "PATH")]
    pub webhook_secret_file: Option<PathBuf>,

    /// Largest webhook body the receiver reads, bytes; a larger delivery gets
    /// 413 without being read past the limit (GitHub allows 25 MiB; a trigger
    /// comment is kilobytes).
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_WEBHOOK_MAX_BODY_BYTES",
        default_value_t = 1024 * 1024,
        value_parser = clap::value_parser!(u64).range(1024..=25 * 1024 * 1024)
    )]
    pub webhook_max_body_bytes: u64,

    /// Seconds a webhook client may take to send a request's headers (also
    /// how long an idle kept-alive connection stays open).
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_WEBHOOK_HEADER_TIMEOUT_SECONDS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=300)
    )]
    pub webhook_header_timeout_seconds: u64,

    /// Seconds a webhook client may take to send a body once its headers
    /// are in; slower ones get 408.
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_WEBHOOK_BODY_TIMEOUT_SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=600)
    )]
    pub webhook_body_timeout_seconds: u64,

    /// Deliveries the receiver handles at once; past it, 503 at once.
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_WEBHOOK_MAX_CONCURRENT",
        default_value_t = 64,
        value_parser = clap::value_parser!(u64).range(1..=10_000)
    )]
    pub webhook_max_concurrent: u64,

    /// The GitHub App's id.
    #[arg(long, env = "CLAUDE_OPERATOR_GITHUB_APP_ID", value_name = "ID")]
    pub github_app_id: Option<u64>,

    /// PEM file with the GitHub App's private key.
    #[arg(long, env = "CLAUDE_OPERATOR_GITHUB_APP_PRIVATE_KEY_FILE", value_name = "PATH")]
    pub github_app_private_key_file: Option<PathBuf>,

    /// Base URL of the GitHub REST API (GitHub Enterprise Server, or tests).
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_GITHUB_API_URL",
        default_value = "https://api.github.com"
    )]
    pub github_api_url: String,

    /// Login of the GitHub App's bot account (`<slug>[bot]`), whose own comments
    /// never trigger a run. Looked up from the API when not set.
    #[arg(long, env = "CLAUDE_OPERATOR_GITHUB_APP_BOT_LOGIN", value_name = "LOGIN")]
    pub github_app_bot_login: Option<String>,

    /// Reconcile only while holding a Lease, so several replicas can run.
    #[arg(long, env = "CLAUDE_OPERATOR_LEADER_ELECTION")]
    pub leader_election: bool,

    /// Namespace of the leader-election Lease (default: the pod's namespace,
    /// else `default`).
    #[arg(long, env = "CLAUDE_OPERATOR_LEADER_ELECTION_NAMESPACE", value_name = "NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// Watch only this namespace (default: all namespaces), or several,
    /// comma-separated: one namespaced watch each, so Roles in them suffice
    /// and nothing cluster-wide is read.
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_WATCH_NAMESPACE",
        value_name = "NAMESPACE",
        value_delimiter = ','
    )]
    pub watch_namespace: Vec<String>,

    /// Runs the controller reconciles at once (each run's steps are waits on
    /// the apiserver and GitHub, so this bounds runs in progress, not CPU).
    /// Decisions of one policy are serialized whatever this is.
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_RECONCILE_CONCURRENCY",
        default_value_t = 16,
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    pub reconcile_concurrency: u16,

    /// The cluster admin's tenancy configuration (YAML): per namespace, the
    /// repositories its policies may claim, the most a run's token may be
    /// granted, the runner images it may use. Read once at start by the
    /// receiver and the controller (restart them to apply a change); an
    /// invalid file stops the process. Without it, any namespace may claim any
    /// repository and use any image, and dangerous token permissions are
    /// refused. See docs/tenancy.md.
    #[arg(long, env = "CLAUDE_OPERATOR_TENANCY_FILE", value_name = "PATH")]
    pub tenancy_file: Option<PathBuf>,

    /// Do not serve the webhook receiver (controller only).
    #[arg(long, env = "CLAUDE_OPERATOR_NO_WEBHOOK", conflicts_with = "no_controller")]
    pub no_webhook: bool,

    /// Do not run the controller (webhook receiver only).
    #[arg(long, env = "CLAUDE_OPERATOR_NO_CONTROLLER")]
    pub no_controller: bool,

    /// Do not run the gateway in this process.
    #[arg(long, env = "CLAUDE_OPERATOR_NO_GATEWAY")]
    pub no_gateway: bool,

    #[command(flatten)]
    pub gateway: GatewayArgs,

    #[command(flatten)]
    pub timers: TimerArgs,
}

/// The controller's timers. Production keeps the defaults (and the policies'
/// own windows); the end-to-end suite shortens them to seconds.
#[derive(Args, Debug, Clone)]
pub struct TimerArgs {
    /// Seconds a run may wait for namespace quota before it fails with
    /// `QuotaTimeout`.
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_QUOTA_WAIT_SECONDS",
        default_value_t = 15 * 60,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub quota_wait_seconds: u64,

    /// Longest approval window, seconds: a policy's
    /// `authorization.approvalWindowHours` is cut to this when longer
    /// (never lengthened). Unset: the policy's window.
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_APPROVAL_WINDOW_MAX_SECONDS",
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub approval_window_max_seconds: Option<u64>,

    /// Longest time a finished run's pod is kept, seconds: a policy's
    /// `retention.podMinutes` is cut to this when longer. Unset: the policy's.
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_POD_RETENTION_MAX_SECONDS",
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(0..)
    )]
    pub pod_retention_max_seconds: Option<u64>,

    /// Longest time a finished run is kept, seconds: cuts a policy's
    /// `retention.*Hours` (a run with a cost is still kept until it is
    /// charged to its policy's ledger, so no deletion frees budget).
    /// Unset: the policy's retention.
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_RUN_RETENTION_MAX_SECONDS",
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(0..)
    )]
    pub run_retention_max_seconds: Option<u64>,

    /// Seconds between copies of a running run's meter onto its status.
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_METER_INTERVAL_SECONDS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub meter_interval_seconds: u64,

    /// Fewest seconds between two writes of a run's GitHub status comment:
    /// live progress (turns, cost so far, last tool) and phase changes are
    /// coalesced to at most one edit per interval.
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_PROGRESS_INTERVAL_SECONDS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub progress_interval_seconds: u64,

    /// Seconds a closed grant's requests in flight may take to settle before
    /// their reservations are charged as they stand.
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_DRAIN_WAIT_SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(0..=3600)
    )]
    pub drain_wait_seconds: u64,

    /// Seconds the leader Lease is held without renewal; a replica that
    /// cannot renew within it loses the Lease (and exits).
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_LEADER_ELECTION_LEASE_SECONDS",
        default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(2..=3600)
    )]
    pub leader_election_lease_seconds: u64,

    /// Seconds before the Lease expires at which the holder renews it; less
    /// than `--leader-election-lease-seconds`.
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_LEADER_ELECTION_RENEW_GRACE_SECONDS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..=3599)
    )]
    pub leader_election_renew_grace_seconds: u64,
}

impl TimerArgs {
    /// Refuses a renew grace that is not shorter than the lease (the Lease
    /// would lapse before its renewal).
    pub fn check(&self) -> Result<(), String> {
        if self.leader_election_renew_grace_seconds >= self.leader_election_lease_seconds {
            return Err(format!(
                "--leader-election-renew-grace-seconds ({}) must be less than --leader-election-lease-seconds ({})",
                self.leader_election_renew_grace_seconds, self.leader_election_lease_seconds
            ));
        }
        Ok(())
    }
}

/// Where the gateway is, and what it talks to. The controller and the
/// gateway share `--gateway-namespace` (where run grants live).
#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Address the gateway serves runner pods on (model API under `/v1`, git
    /// under `/git`, GitHub's REST API under `/github`, and CONNECT).
    #[arg(long, env = "CLAUDE_OPERATOR_GATEWAY_LISTEN", default_value = "0.0.0.0:8081")]
    pub gateway_listen: SocketAddr,

    /// Namespace of the run grants (the Secrets holding each run's GitHub
    /// token and Anthropic key, readable by the gateway only). Default: the
    /// pod's namespace, else `claude-operator`.
    #[arg(long, env = "CLAUDE_OPERATOR_GATEWAY_NAMESPACE", value_name = "NAMESPACE")]
    pub gateway_namespace: Option<String>,

    /// The gateway's URL as runner pods are given it: an address, not a name
    /// (runner pods have no DNS), such as the gateway Service's cluster IP.
    #[arg(long, env = "CLAUDE_OPERATOR_GATEWAY_URL", value_name = "URL")]
    pub gateway_url: Option<String>,

    /// Name of the gateway's Service in `--gateway-namespace`: when
    /// `--gateway-url` is not set and the gateway runs elsewhere, the
    /// controller gives runner pods `http://<its cluster IP>:<its port>`.
    #[arg(long, env = "CLAUDE_OPERATOR_GATEWAY_SERVICE", value_name = "NAME")]
    pub gateway_service: Option<String>,

    /// Labels of the gateway's pods (`k=v,k=v`): the run's NetworkPolicy
    /// allows egress to these pods in `--gateway-namespace` only.
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_GATEWAY_POD_LABELS",
        default_value = "app.kubernetes.io/component=gateway"
    )]
    pub gateway_pod_labels: String,

    /// Base URL of the Anthropic API the gateway forwards model requests to.
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_ANTHROPIC_API_URL",
        default_value = "https://api.anthropic.com"
    )]
    pub anthropic_api_url: String,

    /// Base URL of GitHub's git smart HTTP service the gateway forwards to
    /// (`<base>/<owner>/<name>.git`).
    #[arg(long, env = "CLAUDE_OPERATOR_GITHUB_GIT_URL", default_value = "https://github.com")]
    pub github_git_url: String,

    /// Base URL of the GitHub REST API the gateway forwards `/github/...`
    /// to. Default: `--github-api-url`.
    #[arg(long, env = "CLAUDE_OPERATOR_GATEWAY_GITHUB_API_URL", value_name = "URL")]
    pub gateway_github_api_url: Option<String>,

    /// Address ranges of the cluster (pod and service CIDRs, `a.b.c.d/n` or
    /// IPv6), comma-separated: the CONNECT proxy never opens them for a
    /// wildcard host, as it never opens loopback, private or link-local ones.
    #[arg(
        long = "gateway-denied-cidrs",
        env = "CLAUDE_OPERATOR_GATEWAY_DENIED_CIDRS",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub cluster_cidrs: Vec<String>,

    /// Largest push the gateway accepts, bytes.
    #[arg(long, env = "CLAUDE_OPERATOR_MAX_PUSH_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_push_bytes: u64,

    /// Name of this gateway replica in its audit lines and meter entries
    /// (default: the host name).
    #[arg(long, env = "CLAUDE_OPERATOR_GATEWAY_REPLICA", value_name = "NAME")]
    pub gateway_replica: Option<String>,
}

/// Flags of `claude-operator runner`. The pod builder sets them through the
/// environment; the capability and prompt arrive as files mounted from the
/// run's Secret.
#[derive(Args, Debug, Clone)]
pub struct RunnerArgs {
    /// Name of the ClaudeRun (the default push branch is `claude/<run>`).
    #[arg(long, env = "CLAUDE_OPERATOR_RUN_NAME")]
    pub run_name: String,

    /// Repository, `owner/name`.
    #[arg(long, env = "CLAUDE_OPERATOR_REPOSITORY")]
    pub repository: String,

    /// Issue or pull request number.
    #[arg(long, env = "CLAUDE_OPERATOR_NUMBER")]
    pub number: u64,

    /// Whether `--number` is a pull request (its head is checked out).
    #[arg(long, env = "CLAUDE_OPERATOR_PULL_REQUEST")]
    pub pull_request: bool,

    /// Pull request from a fork: the token is read-only and nothing is pushed.
    #[arg(long, env = "CLAUDE_OPERATOR_FORK")]
    pub fork: bool,

    /// Claude model.
    #[arg(long, env = "CLAUDE_OPERATOR_MODEL")]
    pub model: String,

    /// Most agent turns.
    #[arg(long, env = "CLAUDE_OPERATOR_MAX_TURNS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_turns: u32,

    /// Most the run may spend, US dollars (decimal).
    #[arg(long, env = "CLAUDE_OPERATOR_MAX_BUDGET_USD")]
    pub max_budget_usd: String,

    /// Tools Claude Code may use, comma-separated.
    #[arg(long, env = "CLAUDE_OPERATOR_ALLOWED_TOOLS", value_delimiter = ',')]
    pub allowed_tools: Vec<String>,

    /// File holding the run's capability: the one credential the pod has,
    /// good only at the gateway and only while the run lasts.
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_CAPABILITY_FILE",
        default_value = "/run/claude-operator/secrets/capability"
    )]
    pub capability_file: PathBuf,

    /// File holding the prompt.
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_PROMPT_FILE",
        default_value = "/run/claude-operator/secrets/prompt"
    )]
    pub prompt_file: PathBuf,

    /// Work space directory (the clone goes below it).
    #[arg(long, env = "CLAUDE_OPERATOR_WORKSPACE", default_value = "/workspace")]
    pub workspace: PathBuf,

    /// Where the termination report is written.
    #[arg(
        long,
        env = "CLAUDE_OPERATOR_TERMINATION_LOG",
        default_value = "/dev/termination-log"
    )]
    pub termination_log: PathBuf,

    /// The gateway's base URL: the model API under `/v1`, git under `/git`,
    /// GitHub's REST API under `/github`, and the CONNECT proxy.
    #[arg(long, env = "CLAUDE_OPERATOR_GATEWAY_URL")]
    pub gateway_url: String,

    /// The pull request's head commit that was admitted: exactly this commit
    /// is checked out.
    #[arg(long, env = "CLAUDE_OPERATOR_HEAD_SHA")]
    pub head_sha: Option<String>,

    /// An automatic pull request review: nothing is pushed, and Claude's
    /// answer (a JSON review) is posted as one review of `--number` at
    /// `--head-sha`.
    #[arg(long, env = "CLAUDE_OPERATOR_REVIEW")]
    pub review: bool,

    /// The branch to push to: `claude/<run>` (the default), or the pull
    /// request's own head branch when the policy's
    /// `github.pullRequestPush` is `PullRequestBranch` (the gateway allows
    /// only the branch of the run's grant, fast-forward only).
    #[arg(long, env = "CLAUDE_OPERATOR_PUSH_BRANCH")]
    pub push_branch: Option<String>,

    /// The Claude Code executable.
    #[arg(long, env = "CLAUDE_OPERATOR_CLAUDE_BIN", default_value = "claude")]
    pub claude_bin: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_an_environment_variable_and_help() {
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments() {
                if arg.get_long().is_none() || ["help", "version"].contains(&arg.get_id().as_str()) {
                    continue;
                }
                let long = arg.get_long().unwrap();
                let want = format!("CLAUDE_OPERATOR_{}", long.to_uppercase().replace('-', "_"));
                assert_eq!(
                    arg.get_env().and_then(|e| e.to_str()),
                    Some(want.as_str()),
                    "{} --{long}",
                    sub.get_name()
                );
                assert!(arg.get_help().is_some(), "{} --{long} has no help", sub.get_name());
            }
        }
    }

    #[test]
    fn run_defaults_match_the_design() {
        let cli = Cli::try_parse_from(["claude-operator", "run"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.webhook_listen.to_string(), "0.0.0.0:8080");
        assert_eq!(args.metrics_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(args.github_api_url, "https://api.github.com");
        assert!(!args.leader_election && !args.no_webhook && !args.no_controller);
        assert_eq!(
            (
                args.webhook_max_body_bytes,
                args.webhook_header_timeout_seconds,
                args.webhook_body_timeout_seconds,
                args.webhook_max_concurrent
            ),
            (1024 * 1024, 10, 30, 64)
        );
        let t = &args.timers;
        assert_eq!(
            (
                t.quota_wait_seconds,
                t.approval_window_max_seconds,
                t.pod_retention_max_seconds,
                t.run_retention_max_seconds,
                t.meter_interval_seconds,
                t.progress_interval_seconds,
                t.drain_wait_seconds,
                t.leader_election_lease_seconds,
                t.leader_election_renew_grace_seconds
            ),
            (900, None, None, None, 10, 10, 30, 15, 5)
        );
        assert!(t.check().is_ok());
    }

    #[test]
    fn timers_are_bounded_and_the_renewal_comes_before_the_lease_lapses() {
        for bad in [
            ["--quota-wait-seconds", "0"],
            ["--approval-window-max-seconds", "0"],
            ["--meter-interval-seconds", "0"],
            ["--leader-election-lease-seconds", "1"],
            ["--leader-election-renew-grace-seconds", "0"],
            ["--pod-retention-max-seconds", "soon"],
        ] {
            let err = Cli::try_parse_from(["claude-operator", "controller", bad[0], bad[1]]).unwrap_err();
            assert!(err.to_string().contains(bad[0]), "{bad:?}: {err}");
        }
        for (lease, grace, ok) in [
            ("15", "5", true),
            ("3", "2", true),
            ("5", "5", false),
            ("4", "9", false),
        ] {
            let cli = Cli::try_parse_from([
                "claude-operator",
                "controller",
                "--leader-election-lease-seconds",
                lease,
                "--leader-election-renew-grace-seconds",
                grace,
            ])
            .unwrap();
            let Command::Controller(args) = cli.command else {
                panic!("not controller")
            };
            let checked = args.timers.check();
            assert_eq!(checked.is_ok(), ok, "{lease}/{grace}: {checked:?}");
            if let Err(err) = checked {
                assert!(err.contains("--leader-election-renew-grace-seconds"), "{err}");
            }
        }
    }

    #[test]
    fn several_watched_namespaces_and_a_tenancy_file() {
        let cli = Cli::try_parse_from([
            "claude-operator",
            "controller",
            "--watch-namespace",
            "a,b",
            "--watch-namespace",
            "c",
            "--tenancy-file",
            "/etc/t.yaml",
        ])
        .unwrap();
        let Command::Controller(args) = cli.command else {
            panic!("not controller")
        };
        assert_eq!(args.watch_namespace, ["a", "b", "c"]);
        assert_eq!(args.tenancy_file.as_deref(), Some(std::path::Path::new("/etc/t.yaml")));
        let cli = Cli::try_parse_from(["claude-operator", "run"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert!(args.watch_namespace.is_empty() && args.tenancy_file.is_none());
    }

    #[test]
    fn receiver_limits_are_bounded() {
        for bad in [
            ["--webhook-max-body-bytes", "10"],
            ["--webhook-max-body-bytes", "26214401"],
            ["--webhook-max-concurrent", "0"],
            ["--webhook-header-timeout-seconds", "0"],
            ["--webhook-body-timeout-seconds", "601"],
        ] {
            let err = Cli::try_parse_from(["claude-operator", "receiver", bad[0], bad[1]]).unwrap_err();
            assert!(err.to_string().contains(bad[0]), "{bad:?}: {err}");
        }
    }

    #[test]
    fn bad_flags_are_rejected_with_a_clear_error() {
        let err = Cli::try_parse_from(["claude-operator", "run", "--webhook-listen", "nowhere"]).unwrap_err();
        assert!(err.to_string().contains("--webhook-listen"), "{err}");
        let err = Cli::try_parse_from(["claude-operator", "run", "--no-webhook", "--no-controller"]).unwrap_err();
        assert!(err.to_string().contains("cannot be used with"), "{err}");
        let err = Cli::try_parse_from(["claude-operator", "run", "--bogus"]).unwrap_err();
        assert!(err.to_string().contains("--bogus"), "{err}");
    }
}
