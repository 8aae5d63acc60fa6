//! Shared support of the end-to-end tests: a client for the local control
//! plane (from `CLAUDE_OPERATOR_E2E_KUBECONFIG`, set by `e2e/run-tests.sh`),
//! a namespace per test that is deleted afterwards, CRD installation, and
//! polling helpers. Each test file uses a part of it.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Field manager of the tests' own writes.
pub const TEST_MANAGER: &str = "e2e-tests";

/// A client for the local control plane. Panics with instructions when the
/// suite is run without it.
pub async fn client() -> Client {
    let path = std::env::var("CLAUDE_OPERATOR_E2E_KUBECONFIG")
        .expect("CLAUDE_OPERATOR_E2E_KUBECONFIG is not set: run the end-to-end suite with `make e2e`");
    let kubeconfig = Kubeconfig::read_from(&path).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// Installs (server-side applies) the CRDs from `crds/` and waits until the
/// apiserver serves them. Safe to call from every test.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let yaml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/claude-operator.yaml")).unwrap();
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let crd: CustomResourceDefinition = serde::Deserialize::deserialize(doc).unwrap();
        let name = crd.metadata.name.clone().unwrap();
        api.patch(&name, &PatchParams::apply(TEST_MANAGER).force(), &Patch::Apply(&crd))
            .await
            .unwrap();
        eventually(&format!("CRD {name} established"), Duration::from_secs(30), || async {
            let crd = api.get(&name).await.ok()?;
            let established = crd
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        })
        .await;
    }
}

/// A namespace of one test, labelled for Pod Security "restricted", deleted
/// when dropped (also when the test panics).
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let suffix: String = format!("{:x}", rand_suffix());
        let name = format!("{prefix}-{}", &suffix[..8.min(suffix.len())]);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [
                        ("pod-security.kubernetes.io/enforce", "restricted"),
                        ("pod-security.kubernetes.io/enforce-version", "latest"),
                        ("e2e.claude-operator.dev/test", "true"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Drop cannot await; kubectl (on PATH from e2e/run-tests.sh) deletes
        // without waiting, and the controller-manager finishes the job.
        let kubeconfig = std::env::var("CLAUDE_OPERATOR_E2E_KUBECONFIG").unwrap_or_default();
        let _ = std::process::Command::new("kubectl")
            .args([
                "--kubeconfig",
                &kubeconfig,
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

/// Polls `check` until it returns `Some`, or panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads a YAML file of the repository into a typed object.
pub fn load_yaml<T: serde::de::DeserializeOwned>(path: &str) -> T {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    serde_yaml::from_str(&std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))).unwrap()
}

/// The status code of a kube API error, if it is one.
pub fn api_error_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Creates namespace `name` unless it exists.
pub async fn ensure_namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

/// A free TCP port on loopback (bound and released; fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `claude-operator run` process, started against the local control
/// plane and killed when dropped.
pub struct OperatorProcess {
    pub child: std::process::Child,
    pub webhook_url: String,
    pub metrics_url: String,
    /// The gateway's base URL (`--gateway-listen` on loopback).
    pub gateway_url: String,
    pub log_path: std::path::PathBuf,
}

/// The namespace of the run grants in the end-to-end suite (the chart's
/// release namespace in a real install): every test's operator shares it.
pub const GATEWAY_NAMESPACE: &str = "claude-operator-e2e-gateway";

/// The controller's timers an operator under test runs with (`None`: the
/// binary's default). [`Timers::fast`] shortens them all to seconds.
#[derive(Clone, Debug, Default)]
pub struct Timers {
    pub quota_wait_seconds: Option<u64>,
    pub approval_window_max_seconds: Option<u64>,
    pub pod_retention_max_seconds: Option<u64>,
    pub run_retention_max_seconds: Option<u64>,
    pub meter_interval_seconds: Option<u64>,
    pub drain_wait_seconds: Option<u64>,
    pub leader_election_lease_seconds: Option<u64>,
    pub leader_election_renew_grace_seconds: Option<u64>,
}

impl Timers {
    /// Every timer in seconds: quota 2 s, approval window 3 s, pod and run
    /// retention 1 s and 2 s, meter 1 s, drain 1 s, lease 4 s renewed 2 s early.
    pub fn fast() -> Self {
        Self {
            quota_wait_seconds: Some(2),
            approval_window_max_seconds: Some(3),
            pod_retention_max_seconds: Some(1),
            run_retention_max_seconds: Some(2),
            meter_interval_seconds: Some(1),
            drain_wait_seconds: Some(1),
            leader_election_lease_seconds: Some(4),
            leader_election_renew_grace_seconds: Some(2),
        }
    }

    /// The flags that set them.
    pub fn args(&self) -> Vec<String> {
        [
            ("--quota-wait-seconds", self.quota_wait_seconds),
            ("--approval-window-max-seconds", self.approval_window_max_seconds),
            ("--pod-retention-max-seconds", self.pod_retention_max_seconds),
            ("--run-retention-max-seconds", self.run_retention_max_seconds),
            ("--meter-interval-seconds", self.meter_interval_seconds),
            ("--drain-wait-seconds", self.drain_wait_seconds),
            ("--leader-election-lease-seconds", self.leader_election_lease_seconds),
            (
                "--leader-election-renew-grace-seconds",
                self.leader_election_renew_grace_seconds,
            ),
        ]
        .into_iter()
        .filter_map(|(flag, value)| value.map(|v| [flag.to_owned(), v.to_string()]))
        .flatten()
        .collect()
    }
}

impl OperatorProcess {
    /// Starts `claude-operator run` with these timers and extra flags, and
    /// waits for `/readyz`.
    pub async fn start_with_timers(timers: &Timers, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let timer_args = timers.args();
        let mut all: Vec<&str> = timer_args.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        Self::start(&all, env).await
    }

    /// Starts `claude-operator run` with these extra flags and waits for `/readyz`.
    pub async fn start(extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_component("run", extra, env).await
    }

    /// Starts `claude-operator <component>` (`run`, `receiver`, `controller`
    /// or `gateway`) with these extra flags and waits for `/readyz`.
    pub async fn start_component(component: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let webhook_port = free_port();
        let metrics_port = free_port();
        let gateway_port = free_port();
        ensure_namespace(&client().await, GATEWAY_NAMESPACE).await;
        let kubeconfig = std::env::var("CLAUDE_OPERATOR_E2E_KUBECONFIG").expect("run with `make e2e`");
        let log_dir = std::env::temp_dir().join("claude-operator-e2e-logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        let log_path = log_dir.join(format!("operator-{webhook_port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_claude-operator"));
        cmd.arg(component)
            .args(["--webhook-listen", &format!("127.0.0.1:{webhook_port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--gateway-listen", &format!("127.0.0.1:{gateway_port}")])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("E2E_OPERATOR_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if !extra.contains(&"--gateway-namespace") {
            cmd.args(["--gateway-namespace", GATEWAY_NAMESPACE]);
        }
        let child = cmd.spawn().expect("start claude-operator");
        let me = Self {
            child,
            webhook_url: format!("http://127.0.0.1:{webhook_port}/webhook"),
            metrics_url: format!("http://127.0.0.1:{metrics_port}"),
            gateway_url: format!("http://127.0.0.1:{gateway_port}"),
            log_path,
        };
        let http = reqwest::Client::new();
        let ready = format!("{}/readyz", me.metrics_url);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(&ready).send().await
                && r.status().is_success()
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("operator not ready; log:\n{}", me.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        me
    }

    /// What the process has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
