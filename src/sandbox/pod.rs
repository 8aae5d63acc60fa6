//! The runner pod: one non-root container running `claude-operator runner`
//! under Pod Security "restricted", with no service account token, a
//! read-only root, size-limited scratch space, a deadline shorter than the
//! token's life, and its capability and prompt as read-only files (never
//! environment). It holds no credential: everything it does outside the pod
//! goes through the gateway, authenticated by the capability.
//!
//! The contract with `claude-operator runner` ([`crate::cli::RunnerArgs`]) is
//! the environment set here: every flag as `CLAUDE_OPERATOR_<FLAG>`, and the
//! files of the run's Secret under [`SECRETS_DIR`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, KeyToPath, PodSecurityContext, PodSpec,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    ANNOTATION_DELIVERY_ID, LABEL_MANAGED_BY, LABEL_NAME, MANAGED_BY, RUNNER_APP_NAME, Result, SECRET_KEY_CAPABILITY,
    SECRET_KEY_PROMPT, controlled_by, pod_name, run_labels, run_owner,
};
use crate::api::{ClaudeRun, ClaudeRunPolicySpec, MAX_TIMEOUT_MINUTES};

/// The per-namespace service account of runner pods: no token, no bindings.
pub const RUNNER_SERVICE_ACCOUNT: &str = "claude-runner";
/// The runner pod's only container.
pub const RUNNER_CONTAINER: &str = "runner";
/// User and group the runner runs as (and the pod's fsGroup).
pub const RUNNER_UID: i64 = 10001;
/// Where the run's Secret is mounted, read-only.
pub const SECRETS_DIR: &str = "/run/claude-operator/secrets";
/// The work space (the clone goes below it).
pub const WORKSPACE_DIR: &str = "/workspace";
/// The runner's home (git and Claude Code configuration).
pub const HOME_DIR: &str = "/home/runner";
/// Scratch space.
pub const TMP_DIR: &str = "/tmp";
/// Where the runner writes its report, read by the kubelet.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// Size of the work space when the policy sets none.
const DEFAULT_WORKSPACE_SIZE: &str = "4Gi";
const HOME_SIZE: &str = "256Mi";
const TMP_SIZE: &str = "1Gi";
/// Owner read only; the pod's fsGroup makes the files group-readable by the runner.
const SECRET_FILE_MODE: i32 = 0o400;

/// Operator-wide settings of runner pods (not per policy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunnerParams {
    /// The gateway's URL as the pod reaches it (`CLAUDE_OPERATOR_GATEWAY_URL`):
    /// an address, since the pod has no DNS.
    pub gateway_url: String,
}

impl Default for RunnerParams {
    fn default() -> Self {
        Self {
            gateway_url: "http://127.0.0.1:8081".into(),
        }
    }
}

/// The per-namespace service account runner pods use, so that they never
/// run as `default`: it mounts no token and the operator binds it to nothing.
pub fn runner_service_account(namespace: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(RUNNER_SERVICE_ACCOUNT.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.into(), MANAGED_BY.into()),
                (LABEL_NAME.into(), RUNNER_APP_NAME.into()),
            ])),
            ..ObjectMeta::default()
        },
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// The run's pod, named [`pod_name`] of the run, in the run's namespace,
/// mounting the Secret `secret_name` (see [`super::run_secret`]).
pub fn runner_pod(
    policy: &ClaudeRunPolicySpec,
    run: &ClaudeRun,
    secret_name: &str,
    params: &RunnerParams,
) -> Result<Pod> {
    let (name, namespace, owner) = run_owner(run)?;
    let runner = &policy.runner;
    let timeout_minutes = runner.timeout_minutes.clamp(1, MAX_TIMEOUT_MINUTES);

    let container = Container {
        name: RUNNER_CONTAINER.into(),
        image: Some(runner.image.clone()),
        command: Some(vec!["claude-operator".into(), "runner".into()]),
        working_dir: Some(WORKSPACE_DIR.into()),
        env: Some(runner_env(policy, run, &name, params)),
        volume_mounts: Some(vec![
            mount("workspace", WORKSPACE_DIR, false),
            mount("home", HOME_DIR, false),
            mount("tmp", TMP_DIR, false),
            mount("secrets", SECRETS_DIR, true),
        ]),
        resources: Some(
            runner
                .resources
                .clone()
                .filter(|r| r.limits.is_some() || r.requests.is_some())
                .unwrap_or_else(default_resources),
        ),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(RUNNER_UID),
            run_as_group: Some(RUNNER_UID),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
        termination_message_path: Some(TERMINATION_LOG.into()),
        termination_message_policy: Some("File".into()),
        ..Container::default()
    };

    let workspace_size = runner
        .workspace_size_limit
        .clone()
        .unwrap_or_else(|| Quantity(DEFAULT_WORKSPACE_SIZE.into()));
    let volumes = vec![
        empty_dir("workspace", workspace_size),
        empty_dir("home", Quantity(HOME_SIZE.into())),
        empty_dir("tmp", Quantity(TMP_SIZE.into())),
        Volume {
            name: "secrets".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret_name.into()),
                default_mode: Some(SECRET_FILE_MODE),
                optional: Some(false),
                items: Some(
                    [SECRET_KEY_CAPABILITY, SECRET_KEY_PROMPT]
                        .map(|key| KeyToPath {
                            key: key.into(),
                            path: key.into(),
                            ..KeyToPath::default()
                        })
                        .into(),
                ),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];

    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&name)),
            namespace: Some(namespace),
            labels: Some(run_labels(run)),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_DELIVERY_ID.to_owned(),
                run.spec.trigger.delivery_id.clone(),
            )])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(i64::from(timeout_minutes) * 60),
            service_account_name: Some(RUNNER_SERVICE_ACCOUNT.into()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            host_network: Some(false),
            host_pid: Some(false),
            host_ipc: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(RUNNER_UID),
                run_as_group: Some(RUNNER_UID),
                fs_group: Some(RUNNER_UID),
                seccomp_profile: Some(runtime_default()),
                ..PodSecurityContext::default()
            }),
            containers: vec![container],
            volumes: Some(volumes),
            runtime_class_name: runner.runtime_class_name.clone(),
            node_selector: (!runner.node_selector.is_empty()).then(|| runner.node_selector.clone()),
            tolerations: (!runner.tolerations.is_empty()).then(|| runner.tolerations.clone()),
            priority_class_name: runner.priority_class_name.clone(),
            ..PodSpec::default()
        }),
        status: None,
    })
}

/// The runner's environment: its flags (see [`crate::cli::RunnerArgs`]) and
/// `HOME`. Only non-secret values; secrets are named by their file paths.
fn runner_env(policy: &ClaudeRunPolicySpec, run: &ClaudeRun, run_name: &str, params: &RunnerParams) -> Vec<EnvVar> {
    let runner = &policy.runner;
    let trigger = &run.spec.trigger;
    let secret_file = |key: &str| format!("{SECRETS_DIR}/{key}");
    let mut env = vec![
        ("HOME", HOME_DIR.to_owned()),
        ("CLAUDE_OPERATOR_RUN_NAME", run_name.to_owned()),
        ("CLAUDE_OPERATOR_REPOSITORY", run.spec.repository.clone()),
        ("CLAUDE_OPERATOR_NUMBER", trigger.number.to_string()),
        ("CLAUDE_OPERATOR_PULL_REQUEST", trigger.is_pull_request.to_string()),
        ("CLAUDE_OPERATOR_FORK", trigger.fork.to_string()),
        ("CLAUDE_OPERATOR_MODEL", runner.model.clone()),
        ("CLAUDE_OPERATOR_MAX_TURNS", runner.max_turns.to_string()),
        (
            "CLAUDE_OPERATOR_MAX_BUDGET_USD",
            policy.budget.max_cost_per_run_usd.clone(),
        ),
        ("CLAUDE_OPERATOR_ALLOWED_TOOLS", runner.allowed_tools.join(",")),
        ("CLAUDE_OPERATOR_CAPABILITY_FILE", secret_file(SECRET_KEY_CAPABILITY)),
        ("CLAUDE_OPERATOR_PROMPT_FILE", secret_file(SECRET_KEY_PROMPT)),
        ("CLAUDE_OPERATOR_WORKSPACE", WORKSPACE_DIR.to_owned()),
        ("CLAUDE_OPERATOR_TERMINATION_LOG", TERMINATION_LOG.to_owned()),
        ("CLAUDE_OPERATOR_GATEWAY_URL", params.gateway_url.clone()),
    ];
    if let Some(sha) = &trigger.head_sha {
        env.push(("CLAUDE_OPERATOR_HEAD_SHA", sha.clone()));
    }
    if trigger.is_review() {
        env.push(("CLAUDE_OPERATOR_REVIEW", "true".to_owned()));
    }
    // The branch the grant lets the run push (the gateway enforces it).
    if let Some(branch) = super::push_target(policy, run, run_name).branch() {
        env.push(("CLAUDE_OPERATOR_PUSH_BRANCH", branch.to_owned()));
    }
    env.into_iter()
        .map(|(name, value)| EnvVar {
            name: name.into(),
            value: Some(value),
            value_from: None,
        })
        .collect()
}

/// Whether `pod` is the runner pod we build for the run with uid `run_uid`:
/// controlled by the run, running `image`, and mounting the run's Secret
/// `secret_name` (and no other Secret). A pod failing this is never
/// followed, fed or deleted.
pub fn is_our_pod(pod: &Pod, run_uid: &str, image: &str, secret_name: &str) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let image_ok = spec.containers.len() == 1
        && spec.containers[0].name == RUNNER_CONTAINER
        && spec.containers[0].image.as_deref() == Some(image);
    let secrets: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.as_ref())
        .map(|s| s.secret_name.as_deref().unwrap_or_default())
        .collect();
    controlled_by(&pod.metadata, run_uid) && image_ok && secrets == [secret_name]
}

fn default_resources() -> ResourceRequirements {
    let q = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.into())),
            ("memory".to_owned(), Quantity(memory.into())),
        ])
    };
    ResourceRequirements {
        requests: Some(q("500m", "1Gi")),
        limits: Some(q("2", "4Gi")),
        ..ResourceRequirements::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

fn empty_dir(name: &str, size_limit: Quantity) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(size_limit),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{fixtures, secret_name};
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use k8s_openapi::api::core::v1::Toleration;
    use pretty_assertions::assert_eq;
    use serde_json::{Value, json};

    fn build(policy: &ClaudeRunPolicySpec, run: &ClaudeRun) -> Pod {
        runner_pod(
            policy,
            run,
            &secret_name("gh-3f1c2a9d0b7e4c61"),
            &RunnerParams::default(),
        )
        .unwrap()
    }

    fn sample() -> Pod {
        build(&fixtures::policy().spec, &fixtures::run())
    }

    fn value(pod: &Pod) -> Value {
        serde_json::to_value(pod).unwrap()
    }

    fn env_of(pod: &Pod) -> Vec<(String, String)> {
        pod.spec.as_ref().unwrap().containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.clone(), e.value.clone().expect("literal value")))
            .collect()
    }

    #[test]
    fn every_security_field_is_set() {
        let pod = value(&sample());
        let container = "/spec/containers/0";
        for (pointer, want) in [
            ("/spec/restartPolicy", json!("Never")),
            ("/spec/automountServiceAccountToken", json!(false)),
            ("/spec/serviceAccountName", json!("claude-runner")),
            ("/spec/enableServiceLinks", json!(false)),
            ("/spec/hostNetwork", json!(false)),
            ("/spec/hostPID", json!(false)),
            ("/spec/hostIPC", json!(false)),
            ("/spec/activeDeadlineSeconds", json!(30 * 60)),
            ("/spec/securityContext/runAsNonRoot", json!(true)),
            ("/spec/securityContext/runAsUser", json!(10001)),
            ("/spec/securityContext/runAsGroup", json!(10001)),
            ("/spec/securityContext/fsGroup", json!(10001)),
            (
                "/spec/securityContext/seccompProfile",
                json!({"type": "RuntimeDefault"}),
            ),
            ("/spec/containers/1", Value::Null),
            ("/spec/initContainers", Value::Null),
            ("/spec/hostUsers", Value::Null),
            (&format!("{container}/name"), json!("runner")),
            (
                &format!("{container}/image"),
                json!("ghcr.io/claude-operator/runner:0.1.0"),
            ),
            (&format!("{container}/command"), json!(["claude-operator", "runner"])),
            (&format!("{container}/args"), Value::Null),
            (
                &format!("{container}/securityContext/allowPrivilegeEscalation"),
                json!(false),
            ),
            (&format!("{container}/securityContext/privileged"), json!(false)),
            (
                &format!("{container}/securityContext/capabilities"),
                json!({"drop": ["ALL"]}),
            ),
            (
                &format!("{container}/securityContext/readOnlyRootFilesystem"),
                json!(true),
            ),
            (&format!("{container}/securityContext/runAsNonRoot"), json!(true)),
            (&format!("{container}/securityContext/runAsUser"), json!(10001)),
            (
                &format!("{container}/securityContext/seccompProfile"),
                json!({"type": "RuntimeDefault"}),
            ),
            (&format!("{container}/securityContext/procMount"), Value::Null),
            (&format!("{container}/ports"), Value::Null),
            (&format!("{container}/envFrom"), Value::Null),
            (
                &format!("{container}/terminationMessagePath"),
                json!("/dev/termination-log"),
            ),
            (&format!("{container}/terminationMessagePolicy"), json!("File")),
        ] {
            assert_eq!(pod.pointer(pointer).unwrap_or(&Value::Null), &want, "{pointer}");
        }
    }

    /// The checks of Pod Security "restricted" (latest) that a pod spec can fail.
    #[test]
    fn passes_pod_security_restricted() {
        let pod = sample();
        let spec = pod.spec.as_ref().unwrap();
        let psc = spec.security_context.as_ref().unwrap();
        assert!(spec.host_network != Some(true) && spec.host_pid != Some(true) && spec.host_ipc != Some(true));
        assert!(psc.sysctls.is_none() && psc.se_linux_options.is_none() && psc.app_armor_profile.is_none());
        for v in spec.volumes.as_ref().unwrap() {
            assert!(v.empty_dir.is_some() || v.secret.is_some(), "volume type of {}", v.name);
        }
        for c in &spec.containers {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_ne!(sc.privileged, Some(true));
            assert!(sc.run_as_non_root == Some(true) || psc.run_as_non_root == Some(true));
            assert_ne!(sc.run_as_user.or(psc.run_as_user), Some(0));
            let caps = sc.capabilities.as_ref().unwrap();
            assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
            assert!(
                caps.add
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .all(|c| c == "NET_BIND_SERVICE")
            );
            let seccomp = sc.seccomp_profile.as_ref().or(psc.seccomp_profile.as_ref()).unwrap();
            assert_eq!(seccomp.type_, "RuntimeDefault");
            assert!(c.ports.is_none(), "no host ports");
        }
    }

    #[test]
    fn volumes_and_mounts_are_exact() {
        let pod = value(&sample());
        assert_eq!(
            pod["spec"]["volumes"],
            json!([
                {"name": "workspace", "emptyDir": {"sizeLimit": "4Gi"}},
                {"name": "home", "emptyDir": {"sizeLimit": "256Mi"}},
                {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                {"name": "secrets", "secret": {
                    "secretName": "gh-3f1c2a9d0b7e4c61-secrets",
                    "defaultMode": 0o400,
                    "optional": false,
                    "items": [
                        {"key": "capability", "path": "capability"},
                        {"key": "prompt", "path": "prompt"},
                    ],
                }},
            ])
        );
        assert_eq!(
            pod["spec"]["containers"][0]["volumeMounts"],
            json!([
                {"name": "workspace", "mountPath": "/workspace"},
                {"name": "home", "mountPath": "/home/runner"},
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "secrets", "mountPath": "/run/claude-operator/secrets", "readOnly": true},
            ])
        );

        let mut policy = fixtures::policy().spec;
        policy.runner.workspace_size_limit = Some(Quantity("20Gi".into()));
        let pod = value(&build(&policy, &fixtures::run()));
        assert_eq!(
            pod["spec"]["volumes"][0],
            json!({"name": "workspace", "emptyDir": {"sizeLimit": "20Gi"}})
        );
    }

    #[test]
    fn environment_is_the_runner_contract() {
        assert_eq!(
            env_of(&sample()),
            [
                ("HOME", "/home/runner"),
                ("CLAUDE_OPERATOR_RUN_NAME", "gh-3f1c2a9d0b7e4c61"),
                ("CLAUDE_OPERATOR_REPOSITORY", "acme/api"),
                ("CLAUDE_OPERATOR_NUMBER", "42"),
                ("CLAUDE_OPERATOR_PULL_REQUEST", "false"),
                ("CLAUDE_OPERATOR_FORK", "false"),
                ("CLAUDE_OPERATOR_MODEL", "claude-sonnet-4-5"),
                ("CLAUDE_OPERATOR_MAX_TURNS", "40"),
                ("CLAUDE_OPERATOR_MAX_BUDGET_USD", "5.00"),
                (
                    "CLAUDE_OPERATOR_ALLOWED_TOOLS",
                    "Read,Edit,Write,Glob,Grep,Bash(git diff:*),Bash(cargo test:*)"
                ),
                (
                    "CLAUDE_OPERATOR_CAPABILITY_FILE",
                    "/run/claude-operator/secrets/capability"
                ),
                ("CLAUDE_OPERATOR_PROMPT_FILE", "/run/claude-operator/secrets/prompt"),
                ("CLAUDE_OPERATOR_WORKSPACE", "/workspace"),
                ("CLAUDE_OPERATOR_TERMINATION_LOG", "/dev/termination-log"),
                ("CLAUDE_OPERATOR_GATEWAY_URL", "http://127.0.0.1:8081"),
                ("CLAUDE_OPERATOR_PUSH_BRANCH", "claude/gh-3f1c2a9d0b7e4c61"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    /// Under `pullRequestPush: PullRequestBranch` the runner is told the pull
    /// request's branch; a fork's run is told none (it is read-only).
    #[test]
    fn the_push_branch_is_the_grant_s() {
        let mut policy = fixtures::policy().spec;
        policy.github.pull_request_push = crate::api::PullRequestPush::PullRequestBranch;
        let mut run = fixtures::run();
        run.spec.trigger.is_pull_request = true;
        run.spec.trigger.head_ref = Some("feature/retry".into());
        let push_branch = |run: &ClaudeRun| {
            env_of(&build(&policy, run))
                .into_iter()
                .find(|(k, _)| k == "CLAUDE_OPERATOR_PUSH_BRANCH")
                .map(|(_, v)| v)
        };
        assert_eq!(push_branch(&run).as_deref(), Some("feature/retry"));
        run.spec.trigger.fork = true;
        assert_eq!(push_branch(&run), None);
    }

    /// The runner's own flag parser accepts exactly what the pod sets.
    #[test]
    fn the_runner_parses_the_environment() {
        let mut run = fixtures::run();
        run.spec.trigger.is_pull_request = true;
        run.spec.trigger.fork = true;
        run.spec.trigger.head_sha = Some("0123456789abcdef0123456789abcdef01234567".into());
        let env = env_of(&build(&fixtures::policy().spec, &run));
        let prefix = "CLAUDE_OPERATOR_";
        let mut argv = vec!["claude-operator".to_owned(), "runner".to_owned()];
        for (name, value) in &env {
            let Some(flag) = name.strip_prefix(prefix) else {
                continue;
            };
            let flag = flag.to_lowercase().replace('_', "-");
            match value.as_str() {
                "true" => argv.push(format!("--{flag}")),
                "false" => {}
                _ => argv.push(format!("--{flag}={value}")),
            }
        }
        let Command::Runner(args) = Cli::try_parse_from(&argv).unwrap().command else {
            panic!("not runner")
        };
        assert_eq!((args.number, args.pull_request, args.fork), (42, true, true));
        assert_eq!(args.max_budget_usd, "5.00");
        assert_eq!(args.max_turns, 40);
        assert_eq!(args.allowed_tools.len(), 7);
        assert_eq!(
            args.capability_file.to_str(),
            Some("/run/claude-operator/secrets/capability")
        );
        assert_eq!(args.gateway_url, "http://127.0.0.1:8081");
        assert_eq!(
            args.head_sha.as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        assert_eq!(args.push_branch, None, "a fork's run pushes nowhere");
    }

    #[test]
    fn no_secret_reaches_the_environment() {
        let mut policy = fixtures::policy().spec;
        policy.runner.allowed_tools = vec!["Read".into()];
        let pod = build(&policy, &fixtures::run());
        let container = &pod.spec.as_ref().unwrap().containers[0];
        assert!(container.env_from.is_none());
        for e in container.env.as_ref().unwrap() {
            assert!(e.value_from.is_none(), "{} comes from a reference", e.name);
            let value = e.value.as_deref().unwrap_or_default();
            assert!(!value.contains("cocap_"), "{}", e.name);
            for secretish in ["TOKEN", "KEY", "CAPABILITY", "ANTHROPIC"] {
                if e.name.contains(secretish) {
                    assert!(e.name.ends_with("_FILE"), "{} looks like a secret", e.name);
                    assert!(value.starts_with("/run/claude-operator/secrets/"), "{}", e.name);
                }
            }
        }
        // Nor anywhere else in the pod.
        let text = serde_json::to_string(&pod).unwrap();
        assert!(!text.contains(&fixtures::run().spec.prompt), "the prompt is a file too");
        assert!(!text.contains("github-token") && !text.contains("anthropic-api-key"));
    }

    #[test]
    fn deadline_stays_under_an_hour() {
        let mut policy = fixtures::policy().spec;
        for (minutes, want) in [
            (1, 60),
            (30, 1800),
            (55, 3300),
            (60, 3300),
            (10_000, 3300),
            (0, 60),
            (-5, 60),
        ] {
            policy.runner.timeout_minutes = minutes;
            let deadline = build(&policy, &fixtures::run()).spec.unwrap().active_deadline_seconds;
            assert_eq!(deadline, Some(want), "{minutes}");
            assert!(deadline.unwrap() < 3600);
        }
    }

    #[test]
    fn resources_default_when_the_policy_sets_none() {
        let sample = value(&sample());
        assert_eq!(
            sample["spec"]["containers"][0]["resources"],
            json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}})
        );
        let mut policy = fixtures::policy().spec;
        policy.runner.resources = None;
        let defaulted = value(&build(&policy, &fixtures::run()));
        assert_eq!(
            defaulted["spec"]["containers"][0]["resources"],
            sample["spec"]["containers"][0]["resources"]
        );
        policy.runner.resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([("memory".into(), Quantity("8Gi".into()))])),
            ..ResourceRequirements::default()
        });
        let custom = value(&build(&policy, &fixtures::run()));
        assert_eq!(
            custom["spec"]["containers"][0]["resources"],
            json!({"limits": {"memory": "8Gi"}})
        );
    }

    #[test]
    fn scheduling_comes_from_the_policy() {
        let pod = value(&sample());
        for field in ["runtimeClassName", "nodeSelector", "tolerations", "priorityClassName"] {
            assert_eq!(pod["spec"][field], Value::Null, "{field}");
        }
        let mut policy = fixtures::policy().spec;
        policy.runner.runtime_class_name = Some("gvisor".into());
        policy.runner.node_selector = BTreeMap::from([("sandbox".into(), "true".into())]);
        policy.runner.tolerations = vec![Toleration {
            key: Some("sandbox".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }];
        policy.runner.priority_class_name = Some("low".into());
        let pod = value(&build(&policy, &fixtures::run()));
        assert_eq!(pod["spec"]["runtimeClassName"], "gvisor");
        assert_eq!(pod["spec"]["nodeSelector"], json!({"sandbox": "true"}));
        assert_eq!(
            pod["spec"]["tolerations"],
            json!([{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}])
        );
        assert_eq!(pod["spec"]["priorityClassName"], "low");
    }

    #[test]
    fn metadata_names_labels_owner_and_delivery() {
        let pod = sample();
        fixtures::assert_owned_by_run(&pod.metadata);
        assert_eq!(pod.metadata.name.as_deref(), Some("gh-3f1c2a9d0b7e4c61-runner"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("claude-runs"));
        assert_eq!(pod.metadata.labels, Some(run_labels(&fixtures::run())));
        assert_eq!(
            pod.metadata.annotations,
            Some(BTreeMap::from([(
                "claude-operator.dev/delivery-id".to_owned(),
                "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_owned()
            )]))
        );
    }

    #[test]
    fn params_reach_the_environment() {
        let params = RunnerParams {
            gateway_url: "http://10.96.0.20:8081".into(),
        };
        let pod = runner_pod(&fixtures::policy().spec, &fixtures::run(), "s", &params).unwrap();
        let env: BTreeMap<String, String> = env_of(&pod).into_iter().collect();
        assert_eq!(env["CLAUDE_OPERATOR_GATEWAY_URL"], "http://10.96.0.20:8081");
        for gone in [
            "ANTHROPIC_BASE_URL",
            "CLAUDE_OPERATOR_GITHUB_API_URL",
            "CLAUDE_OPERATOR_GIT_BASE_URL",
        ] {
            assert!(!env.contains_key(gone), "{gone}");
        }
        assert_eq!(value(&pod)["spec"]["volumes"][3]["secret"]["secretName"], "s");
    }

    #[test]
    fn only_the_pod_we_build_is_ours() {
        let policy = fixtures::policy().spec;
        let secret = secret_name("gh-3f1c2a9d0b7e4c61");
        let image = policy.runner.image.clone();
        let ours = sample();
        assert!(is_our_pod(&ours, fixtures::RUN_UID, &image, &secret));
        assert!(!is_our_pod(&ours, "another-uid", &image, &secret), "another run's");
        assert!(
            !is_our_pod(&ours, fixtures::RUN_UID, "evil:latest", &secret),
            "another image"
        );
        assert!(!is_our_pod(&ours, fixtures::RUN_UID, &image, "other-secrets"));
        let mut unowned = ours.clone();
        unowned.metadata.owner_references = None;
        assert!(
            !is_our_pod(&unowned, fixtures::RUN_UID, &image, &secret),
            "not controlled by the run"
        );
        let mut extra = ours.clone();
        let mut sidecar = extra.spec.as_ref().unwrap().containers[0].clone();
        sidecar.name = "sidecar".into();
        extra.spec.as_mut().unwrap().containers.push(sidecar);
        assert!(
            !is_our_pod(&extra, fixtures::RUN_UID, &image, &secret),
            "a second container"
        );
        let mut no_spec = ours;
        no_spec.spec = None;
        assert!(!is_our_pod(&no_spec, fixtures::RUN_UID, &image, &secret));
    }

    #[test]
    fn service_account_mounts_no_token() {
        let sa = serde_json::to_value(runner_service_account("claude-runs")).unwrap();
        assert_eq!(
            sa,
            json!({
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {
                    "name": "claude-runner",
                    "namespace": "claude-runs",
                    "labels": {
                        "app.kubernetes.io/managed-by": "claude-operator",
                        "app.kubernetes.io/name": "claude-runner",
                    },
                },
                "automountServiceAccountToken": false,
            })
        );
    }
}
