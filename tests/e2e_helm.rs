//! The Helm chart (`charts/claude-operator`) against the local control plane:
//! it lints and renders with the default and the full values and refuses bad
//! ones; it installs (kwok runs the Deployment's pod) and uninstalls without
//! leaving anything behind; its RBAC is enough for the real operator, run as
//! the chart's ServiceAccount, to take a webhook through to a Succeeded run,
//! and grants nothing beyond the rules the chart documents; its admission
//! policy keeps webhook runs to the operator; and a security scanner finds
//! nothing it does not explain. Needs `helm`, `kubectl`, `python3` on PATH
//! (`make e2e` sets it). Run with `make e2e`.

#[path = "support/fake_github.rs"]
mod fake_github;
mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use claude_operator::api::{ClaudeRun, ClaudeRunPolicy, CostSource, Phase};
use claude_operator::github::signature::sign;
use claude_operator::webhook::intake::run_name;
use fake_github::{APP_ID, FakeGitHub};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::*;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/claude-operator");
const RELEASE: &str = "claude-operator";
/// What `helm template` assumes the cluster runs (the local one's version).
const KUBE_VERSION: &str = "1.37.0";
const WEBHOOK_SECRET: &str = "e2e-helm-webhook-secret";

fn kubeconfig() -> String {
    std::env::var("CLAUDE_OPERATOR_E2E_KUBECONFIG").expect("run with `make e2e`")
}

/// Runs a tool with the local control plane's kubeconfig and `stdin` as input.
fn exec(tool: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{tool} not runnable ({e}): run with `make e2e`"));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// Runs a tool that must succeed; returns its stdout.
fn ok(tool: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = exec(tool, args, stdin);
    assert!(
        out.status.success(),
        "{tool} {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a tool that must fail; returns its stderr.
fn fails(tool: &str, args: &[&str], stdin: Option<&str>) -> String {
    let out = exec(tool, args, stdin);
    assert!(
        !out.status.success(),
        "{tool} {} should have failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// A values file for one test.
fn values_file(values: &Value) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), serde_yaml::to_string(values).unwrap()).unwrap();
    file
}

/// `helm template` with a values file; the rendered documents.
fn template(values: &Value, namespace: &str) -> Vec<Value> {
    let file = values_file(values);
    let yaml = ok(
        "helm",
        &[
            "template",
            RELEASE,
            CHART,
            "--namespace",
            namespace,
            "--kube-version",
            KUBE_VERSION,
            "-f",
            file.path().to_str().unwrap(),
        ],
        None,
    );
    serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// A Helm release of the chart in its own namespace, uninstalled when
/// dropped (its admission policy and bindings are cluster-scoped).
struct Release {
    namespace: String,
    _values: tempfile::NamedTempFile,
}

impl Release {
    fn install(namespace: &str, values: &Value, wait: bool) -> Release {
        let file = values_file(values);
        let mut args = vec![
            "install",
            RELEASE,
            CHART,
            "--namespace",
            namespace,
            // The CRDs are shared with every other test: installed by
            // `install_crds`, never by (or deleted with) a release.
            "--skip-crds",
            "-f",
            file.path().to_str().unwrap(),
        ];
        if wait {
            args.extend(["--wait", "--timeout", "3m"]);
        }
        ok("helm", &args, None);
        Release {
            namespace: namespace.to_owned(),
            _values: file,
        }
    }

    fn uninstall(&self) {
        ok(
            "helm",
            &["uninstall", RELEASE, "--namespace", &self.namespace, "--wait"],
            None,
        );
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = exec(
            "helm",
            &[
                "uninstall",
                RELEASE,
                "--namespace",
                &self.namespace,
                "--ignore-not-found",
            ],
            None,
        );
    }
}

/// The GitHub App Secret the chart mounts (a throwaway key: nothing runs it).
async fn github_secret(client: &kube::Client, ns: &str, pem: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "claude-operator-github"},
        "stringData": {
            "app-id": APP_ID.to_string(),
            "private-key.pem": pem,
            "webhook-secrets": WEBHOOK_SECRET,
        },
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// The sample run, in `ns`, named `name`, from `source`.
fn sample_run(ns: &str, name: &str, source: &str) -> String {
    let mut run: Value = load_yaml("config/samples/run.yaml");
    run["metadata"]["name"] = json!(name);
    run["metadata"]["namespace"] = json!(ns);
    run["spec"]["trigger"]["source"] = json!(source);
    serde_yaml::to_string(&run).unwrap()
}

// ---------------------------------------------------------------------------

#[test]
fn lint_and_template_accept_good_values_and_reject_bad_ones() {
    let full = format!("{CHART}/ci/full-values.yaml");
    let base = ["--kube-version", KUBE_VERSION];
    ok("helm", &[&["lint", CHART, "--strict"][..], &base].concat(), None);
    ok(
        "helm",
        &[&["lint", CHART, "--strict", "-f", &full][..], &base].concat(),
        None,
    );
    ok(
        "helm",
        &[&["template", RELEASE, CHART, "-f", &full][..], &base].concat(),
        None,
    );

    // Defaults: one replica, no leader election, cluster-wide rules.
    let ns = "claude-operator";
    let defaults = template(&json!({"github": {"existingSecret": "gh"}}), ns);
    let deploy = of_kind(&defaults, "Deployment")[0];
    let pod = &deploy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "ghcr.io/claude-operator/claude-operator:0.1.0");
    assert_eq!(container["args"], json!(["run", "--log-format=json"]));
    assert_eq!(pod["serviceAccountName"], "claude-operator");
    assert_eq!(pod["automountServiceAccountToken"], true);
    let sc = &container["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env = container["env"].as_array().unwrap();
    let app_id = env
        .iter()
        .find(|e| e["name"] == "CLAUDE_OPERATOR_GITHUB_APP_ID")
        .unwrap();
    assert_eq!(
        app_id["valueFrom"]["secretKeyRef"],
        json!({"name": "gh", "key": "app-id"})
    );
    assert!(container["volumeMounts"][0]["readOnly"].as_bool().unwrap());
    let sa = of_kind(&defaults, "ServiceAccount")[0];
    assert_eq!(sa["automountServiceAccountToken"], false);
    let service = of_kind(&defaults, "Service")[0];
    let ports: Vec<_> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_i64().unwrap(),
                p["targetPort"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(ports, [(80, "webhook".into()), (9090, "metrics".into())]);
    assert!(of_kind(&defaults, "Role").is_empty() && of_kind(&defaults, "RoleBinding").is_empty());
    let cluster_rules = of_kind(&defaults, "ClusterRole")[0]["rules"].clone();
    assert_eq!(
        of_kind(&defaults, "ClusterRole")[0]["metadata"]["name"],
        "claude-operator-claude-operator"
    );
    // No wildcard anywhere in the rules.
    for rule in cluster_rules.as_array().unwrap() {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(!rule[field].as_array().unwrap().iter().any(|v| v == "*"), "{rule}");
        }
    }
    let binding = of_kind(&defaults, "ValidatingAdmissionPolicyBinding")[0];
    assert!(binding["spec"]["matchResources"].is_null(), "cluster-wide by default");
    let vap = of_kind(&defaults, "ValidatingAdmissionPolicy")[0];
    assert!(
        vap.to_string()
            .contains("system:serviceaccount:claude-operator:claude-operator")
    );

    // Two replicas: leader election and the Lease Role; watchNamespace: the
    // same rules as a Role in that namespace, and --watch-namespace.
    let scoped = template(
        &json!({"github": {"existingSecret": "gh"}, "replicaCount": 2, "watchNamespace": "team-a"}),
        ns,
    );
    let container = &of_kind(&scoped, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["args"],
        json!(["run", "--log-format=json", "--leader-election"])
    );
    let env = container["env"].as_array().unwrap();
    for (name, value) in [
        ("CLAUDE_OPERATOR_WATCH_NAMESPACE", "team-a"),
        ("CLAUDE_OPERATOR_LEADER_ELECTION_NAMESPACE", ns),
    ] {
        assert!(env.iter().any(|e| e["name"] == name && e["value"] == value), "{name}");
    }
    for name in ["POD_NAME", "POD_NAMESPACE"] {
        assert!(
            env.iter()
                .any(|e| e["name"] == name && e["valueFrom"]["fieldRef"].is_object())
        );
    }
    assert!(of_kind(&scoped, "ClusterRole").is_empty() && of_kind(&scoped, "ClusterRoleBinding").is_empty());
    let roles = of_kind(&scoped, "Role");
    let main = roles.iter().find(|r| r["metadata"]["namespace"] == "team-a").unwrap();
    assert_eq!(main["rules"], cluster_rules, "one list of rules for both modes");
    let lease = roles.iter().find(|r| r["metadata"]["namespace"] == ns).unwrap();
    assert!(lease.to_string().contains("leases"));
    let binding = of_kind(&scoped, "ValidatingAdmissionPolicyBinding")[0];
    assert_eq!(
        binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "team-a"
    );

    // Run namespaces the chart creates are labelled restricted.
    let created = template(
        &json!({"github": {"existingSecret": "gh"}, "runNamespaces": ["runs-a"], "createRunNamespaces": true}),
        ns,
    );
    let namespace = of_kind(&created, "Namespace")[0];
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );

    // Bad values: a typo, a wrong type, a missing Secret name, a nested typo.
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [&["template", RELEASE, CHART][..], base, extra].concat()
    }
    let err = fails(
        "helm",
        &with(&base, &["--set", "github.existingSecret=gh", "--set", "replicaCuont=2"]),
        None,
    );
    assert!(err.contains("replicaCuont"), "{err}");
    let err = fails(
        "helm",
        &with(
            &base,
            &["--set", "github.existingSecret=gh", "--set-string", "replicaCount=2"],
        ),
        None,
    );
    assert!(err.contains("replicaCount"), "{err}");
    let err = fails("helm", &with(&base, &[]), None);
    assert!(err.contains("github.existingSecret"), "{err}");
    let err = fails(
        "helm",
        &with(&base, &["--set", "github.existingSecret=gh", "--set", "image.tga=x"]),
        None,
    );
    assert!(err.contains("tga"), "{err}");
    let err = fails(
        "helm",
        &[
            "lint",
            CHART,
            "--strict",
            "--kube-version",
            KUBE_VERSION,
            "--set",
            "replicaCount=two",
        ],
        None,
    );
    assert!(err.contains("replicaCount") || err.contains("failed"), "{err}");
}

#[test]
fn a_security_scanner_finds_nothing_unexplained() {
    let out = Command::new(format!("{CHART}/scan.sh"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run charts/claude-operator/scan.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "scan.sh found something:\n{text}");
    assert!(text.contains("Failed checks: 0"), "{text}");
    // Every skipped check is explained in the chart's README.
    let readme = std::fs::read_to_string(format!("{CHART}/README.md")).unwrap();
    let deployment = std::fs::read_to_string(format!("{CHART}/templates/deployment.yaml")).unwrap();
    let skipped = regex::Regex::new(r"checkov\.io/skip\d+: (CKV2?_K8S_\d+)=").unwrap();
    let ids: Vec<_> = skipped.captures_iter(&deployment).map(|c| c[1].to_owned()).collect();
    assert!(!ids.is_empty());
    for id in ids {
        assert!(readme.contains(&id), "{id} is skipped but not explained in README.md");
    }
}

#[tokio::test]
async fn installs_becomes_ready_and_uninstalls_cleanly() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "helm-install").await;
    github_secret(&client, &ns.name, "not-a-key").await;
    let release = Release::install(
        &ns.name,
        &json!({
            "github": {"existingSecret": "claude-operator-github"},
            // Other tests create webhook runs as an administrator elsewhere.
            "admissionPolicy": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}}},
        }),
        true,
    );
    let deploy = ok(
        "kubectl",
        &["get", "deployment", RELEASE, "-n", &ns.name, "-o", "json"],
        None,
    );
    let deploy: Value = serde_json::from_str(&deploy).unwrap();
    assert_eq!(deploy["status"]["readyReplicas"], 1, "{deploy:#}");

    // A policy and a run the operator never saw: no finalizer holds them.
    let mut policy: ClaudeRunPolicy = load_yaml("config/samples/policy.yaml");
    policy.metadata.namespace = Some(ns.name.clone());
    Api::<ClaudeRunPolicy>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    ok(
        "kubectl",
        &["create", "-f", "-"],
        Some(&sample_run(&ns.name, "manual-run", "Manual")),
    );

    release.uninstall();
    let cluster_name = format!("{RELEASE}-{}", ns.name);
    for (kind, name) in [
        ("clusterrole", cluster_name.clone()),
        ("clusterrolebinding", cluster_name.clone()),
        ("validatingadmissionpolicy", format!("{cluster_name}-webhook-runs")),
        (
            "validatingadmissionpolicybinding",
            format!("{cluster_name}-webhook-runs"),
        ),
    ] {
        let out = exec("kubectl", &["get", kind, &name], None);
        assert!(!out.status.success(), "{kind} {name} left behind");
    }
    let left = ok(
        "kubectl",
        &[
            "get",
            "deploy,svc,sa,pdb,networkpolicy",
            "-n",
            &ns.name,
            "-l",
            "app.kubernetes.io/instance=claude-operator",
            "-o",
            "name",
        ],
        None,
    );
    assert!(left.trim().is_empty(), "left behind: {left}");
    let runs: Api<ClaudeRun> = Api::namespaced(client.clone(), &ns.name);
    let r = runs.get("manual-run").await.unwrap();
    assert!(r.metadata.finalizers.unwrap_or_default().is_empty());
    ok(
        "kubectl",
        &[
            "delete",
            "clauderuns,clauderunpolicies",
            "--all",
            "-n",
            &ns.name,
            "--timeout",
            "30s",
        ],
        None,
    );
}

#[tokio::test]
async fn only_the_operator_may_create_webhook_runs() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "helm-vap").await;
    let _release = Release::install(
        &ns.name,
        &json!({"github": {"existingSecret": "claude-operator-github"}, "watchNamespace": ns.name}),
        false,
    );
    // Someone else may create and patch runs here (RBAC), but not webhook ones.
    ok(
        "kubectl",
        &["apply", "-f", "-"],
        Some(&format!(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: run-author, namespace: {ns}}}
rules:
- apiGroups: [claude-operator.dev]
  resources: [clauderuns]
  verbs: [create, get, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: run-author, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: run-author}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: someone-else}}
"#,
            ns = ns.name
        )),
    );
    let someone = ["--as", "someone-else"];
    let operator = format!("system:serviceaccount:{}:{RELEASE}", ns.name);
    let webhook = sample_run(&ns.name, "from-webhook", "GitHubWebhook");

    // The policy takes effect within moments: probe with server-side dry runs.
    eventually("the admission policy in force", Duration::from_secs(30), || async {
        let out = exec(
            "kubectl",
            &[&["create", "--dry-run=server", "-f", "-"][..], &someone].concat(),
            Some(&webhook),
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (!out.status.success() && err.contains("ValidatingAdmissionPolicy")).then_some(())
    })
    .await;
    let err = fails(
        "kubectl",
        &[&["create", "-f", "-"][..], &someone].concat(),
        Some(&webhook),
    );
    assert!(
        err.contains("only the claude-operator service account may create"),
        "{err}"
    );
    // Cluster administrators are bound by it too.
    fails("kubectl", &["create", "-f", "-"], Some(&webhook));

    // A Manual run is fine for someone else.
    ok(
        "kubectl",
        &[&["create", "-f", "-"][..], &someone].concat(),
        Some(&sample_run(&ns.name, "by-hand", "Manual")),
    );
    // The operator's identity may create the webhook run.
    ok("kubectl", &["create", "-f", "-", "--as", &operator], Some(&webhook));
    // Someone else may label it, but not forge the operator's annotations.
    ok(
        "kubectl",
        &[
            &["label", "clauderun", "from-webhook", "-n", &ns.name, "team=a"][..],
            &someone,
        ]
        .concat(),
        None,
    );
    let err = fails(
        "kubectl",
        &[
            &[
                "annotate",
                "clauderun",
                "from-webhook",
                "-n",
                &ns.name,
                "claude-operator.dev/approval-request={\"login\":\"alice\"}",
            ][..],
            &someone,
        ]
        .concat(),
        None,
    );
    assert!(err.contains("ValidatingAdmissionPolicy"), "{err}");
    // The operator records approvals with a patch (it never reads a run by
    // name, so kubectl, which reads first, cannot play it): its own client.
    let sa_config = service_account_kubeconfig(&ns.name, RELEASE);
    let kubeconfig = kube::config::Kubeconfig::read_from(sa_config.path()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let as_operator: Api<ClaudeRun> = Api::namespaced(kube::Client::try_from(config).unwrap(), &ns.name);
    as_operator
        .patch(
            "from-webhook",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "claude-operator.dev/approval-request": "{\"login\":\"alice\"}"
            }}})),
        )
        .await
        .unwrap();
}

/// A kubeconfig that authenticates as the chart's ServiceAccount with a real
/// token minted for it: exactly the identity the operator has in a pod.
fn service_account_kubeconfig(ns: &str, sa: &str) -> tempfile::NamedTempFile {
    let token = ok("kubectl", &["create", "token", sa, "-n", ns, "--duration", "1h"], None);
    let admin = kube::config::Kubeconfig::read_from(kubeconfig()).unwrap();
    let cluster = admin.clusters[0].cluster.clone().unwrap();
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {
            "server": cluster.server,
            "certificate-authority": cluster.certificate_authority,
            "certificate-authority-data": cluster.certificate_authority_data,
        }}],
        "users": [{"name": sa, "user": {"token": token.trim()}}],
        "contexts": [{"name": "sa", "context": {"cluster": "e2e", "user": sa, "namespace": ns}}],
        "current-context": "sa",
    });
    let file = tempfile::Builder::new().suffix(".kubeconfig").tempfile().unwrap();
    std::fs::write(file.path(), serde_yaml::to_string(&config).unwrap()).unwrap();
    file
}

/// `kubectl auth can-i --list` as `user` in `ns`: (resource, names, verb).
fn permissions(user: &str, ns: &str) -> BTreeSet<(String, String, String)> {
    let out = ok("kubectl", &["auth", "can-i", "--list", "-n", ns, "--as", user], None);
    let brackets = regex::Regex::new(r"\[([^\]]*)\]").unwrap();
    let mut set = BTreeSet::new();
    for line in out.lines().skip(1) {
        // Rows that start blank are non-resource URLs.
        if line.starts_with(char::is_whitespace) || line.trim().is_empty() {
            continue;
        }
        let (resource, rest) = line.split_once(char::is_whitespace).unwrap();
        let groups: Vec<&str> = brackets
            .captures_iter(rest)
            .map(|c| c.get(1).unwrap().as_str())
            .collect();
        let [_, names, verbs] = groups[..] else {
            panic!("unexpected can-i row: {line}")
        };
        for verb in verbs.split_whitespace() {
            set.insert((resource.to_owned(), names.to_owned(), verb.to_owned()));
        }
    }
    set
}

fn expected(rows: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    rows.iter()
        .flat_map(|(resource, names, verbs)| {
            verbs
                .split_whitespace()
                .map(move |v| (resource.to_string(), names.to_string(), v.to_string()))
        })
        .collect()
}

#[tokio::test]
async fn the_charts_rbac_suffices_for_a_whole_run_and_grants_nothing_more() {
    let client = client().await;
    install_crds(&client).await;
    let ops = TestNamespace::new(&client, "helm-ops").await;
    let runs_ns = TestNamespace::new(&client, "helm-runs").await;
    let fake = FakeGitHub::start().await;
    github_secret(&client, &ops.name, &fake.private_key_pem()).await;
    // The chart as a team would install it for one namespace, with leader
    // election. kwok plays its pod; the real operator runs here, as its
    // ServiceAccount.
    let _release = Release::install(
        &ops.name,
        &json!({
            "github": {"existingSecret": "claude-operator-github"},
            "watchNamespace": runs_ns.name,
            "leaderElection": {"enabled": true},
        }),
        false,
    );
    let sa_kubeconfig = service_account_kubeconfig(&ops.name, RELEASE);

    let repo = format!("acme/helm-{}", std::process::id());
    fake.install(&repo, 78);
    fake.add_user("alice", 1001, "User");
    fake.set_role(&repo, "alice", "write");
    fake.add_org_member("acme", "alice");
    fake.set_team_membership("acme", "platform", "alice", "active");

    let key: Secret = serde_json::from_value(json!({
        "metadata": {"name": "anthropic"},
        "stringData": {"api-key": "sk-ant-e2e-not-a-real-key"},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &runs_ns.name)
        .create(&PostParams::default(), &key)
        .await
        .unwrap();
    // The sample policy, with its namespace quota: the operator applies a
    // ResourceQuota and a LimitRange too.
    let mut policy: ClaudeRunPolicy = load_yaml("config/samples/policy.yaml");
    policy.metadata.namespace = Some(runs_ns.name.clone());
    policy.spec.repositories = vec![repo.clone()];
    policy.spec.authorization.teams = vec!["acme/platform".into()];
    Api::<ClaudeRunPolicy>::namespaced(client.clone(), &runs_ns.name)
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();

    let secrets_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secrets_file.path(), WEBHOOK_SECRET).unwrap();
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), fake.private_key_pem()).unwrap();
    let op = OperatorProcess::start(
        &[
            "--webhook-secret-file",
            secrets_file.path().to_str().unwrap(),
            "--github-app-id",
            &APP_ID.to_string(),
            "--github-app-private-key-file",
            key_file.path().to_str().unwrap(),
            "--github-api-url",
            &fake.url,
            "--watch-namespace",
            &runs_ns.name,
            "--leader-election",
            "--leader-election-namespace",
            &ops.name,
        ],
        // Later settings win: the ServiceAccount's kubeconfig, not the admin's.
        &[
            ("KUBECONFIG", sa_kubeconfig.path().to_str().unwrap()),
            ("POD_NAME", "claude-operator-e2e"),
        ],
    )
    .await;

    // A member's comment, signed as GitHub signs it.
    let mut payload: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/webhooks/issue_comment.created.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let (owner, name) = repo.split_once('/').unwrap();
    payload["repository"]["full_name"] = json!(repo);
    payload["repository"]["name"] = json!(name);
    payload["repository"]["owner"]["login"] = json!(owner);
    payload["comment"]["body"] = json!("@claude add a retry");
    payload["comment"]["author_association"] = json!("MEMBER");
    payload["comment"]["user"]["login"] = json!("alice");
    payload["sender"] = json!({"login": "alice", "id": 1001, "type": "User"});
    let body = serde_json::to_vec(&payload).unwrap();
    let run = run_name("issue_comment", &body).expect("a trigger");
    let delivery = "helm-rbac-1";
    let status = reqwest::Client::new()
        .post(&op.webhook_url)
        .header("x-github-event", "issue_comment")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sign(WEBHOOK_SECRET, &body))
        .body(body)
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}\n{}", op.log());

    let runs: Api<ClaudeRun> = Api::namespaced(client.clone(), &runs_ns.name);
    let wait_phase = |want: Phase| {
        let runs = runs.clone();
        let run = run.clone();
        let op = &op;
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let r = runs.get_opt(&run).await.unwrap();
                if r.as_ref().and_then(|r| r.status.as_ref()).map(|s| s.phase) == Some(want) {
                    return r.unwrap();
                }
                if tokio::time::Instant::now() > deadline {
                    panic!(
                        "{run} never reached {want:?}: {:#?}\noperator log:\n{}",
                        r.map(|r| r.status),
                        op.log()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let running = wait_phase(Phase::Running).await;
    assert_eq!(running.status.unwrap().admission.unwrap().reason, "Admitted");

    // The runner exits with its report; the cost lands on the run.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &runs_ns.name);
    let pod = format!("{run}-runner");
    eventually("pod Running", Duration::from_secs(60), || async {
        (pods.get(&pod).await.ok()?.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    let report = json!({
        "outcome": "success",
        "total_cost_usd": "0.006",
        "usage": {"claude-sonnet-4-5": {"input_tokens": 1000, "output_tokens": 200}},
        "num_turns": 2,
        "duration_ms": 4200,
        "session_id": "e2e-session"
    });
    pods.patch(
        &pod,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            "e2e.claude-operator.dev/outcome": "Succeeded",
            "e2e.claude-operator.dev/termination-message": report.to_string(),
        }}})),
    )
    .await
    .unwrap();
    let done = wait_phase(Phase::Succeeded).await;
    let cost = done.status.unwrap().cost.unwrap();
    assert_eq!(cost.usd, "0.006");
    assert_eq!(cost.source, CostSource::Reported);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &runs_ns.name);
    eventually("token revoked and Secret deleted", Duration::from_secs(30), || async {
        let gone = secrets.get_opt(&format!("{run}-secrets")).await.ok()?.is_none();
        (gone && fake.revoked(&repo) == 1).then_some(())
    })
    .await;
    let policies: Api<ClaudeRunPolicy> = Api::namespaced(client.clone(), &runs_ns.name);
    eventually("policy spend", Duration::from_secs(30), || async {
        let budget = policies
            .get(&policy.metadata.name.clone()?)
            .await
            .ok()?
            .status?
            .budget?;
        (budget.spent_usd == "0.006").then_some(())
    })
    .await;
    let quota = ok(
        "kubectl",
        &["get", "resourcequota,limitrange", "-n", &runs_ns.name, "-o", "name"],
        None,
    );
    assert!(
        quota.contains("resourcequota") && quota.contains("limitrange"),
        "{quota}"
    );
    let lease = ok(
        "kubectl",
        &["get", "lease", "claude-operator-leader", "-n", &ops.name, "-o", "json"],
        None,
    );
    assert!(lease.contains("claude-operator-e2e"), "{lease}");

    // Deleting the run: the operator's finalizer runs and lets it go.
    runs.delete(&run, &DeleteParams::background()).await.unwrap();
    eventually("run deleted through its finalizer", Duration::from_secs(30), || async {
        runs.get_opt(&run).await.ok()?.is_none().then_some(())
    })
    .await;
    let log = op.log();
    assert!(
        !log.contains(" 403") && !log.to_lowercase().contains("forbidden"),
        "{log}"
    );
    drop(op);

    // Nothing beyond the documented rules: what the ServiceAccount may do,
    // less what any authenticated ServiceAccount may, is exactly this.
    let sa = format!("system:serviceaccount:{}:{RELEASE}", ops.name);
    let nobody = format!("system:serviceaccount:{}:nobody", ops.name);
    let granted = |ns: &str| -> BTreeSet<_> {
        permissions(&sa, ns)
            .difference(&permissions(&nobody, ns))
            .cloned()
            .collect()
    };
    assert_eq!(
        granted(&runs_ns.name),
        expected(&[
            ("clauderuns.claude-operator.dev", "", "list watch create patch delete"),
            ("clauderuns.claude-operator.dev/status", "", "patch"),
            ("clauderuns.claude-operator.dev/finalizers", "", "update"),
            ("clauderunpolicies.claude-operator.dev", "", "list watch"),
            ("clauderunpolicies.claude-operator.dev/status", "", "patch"),
            ("clauderunpolicies.claude-operator.dev/finalizers", "", "update"),
            ("pods", "", "get list watch create delete"),
            ("secrets", "", "get list watch create delete"),
            ("serviceaccounts", "", "create patch"),
            ("resourcequotas", "", "create patch"),
            ("limitranges", "", "create patch"),
            ("networkpolicies.networking.k8s.io", "", "list watch create patch"),
            ("events.events.k8s.io", "", "create patch"),
        ])
    );
    assert_eq!(
        granted(&ops.name),
        expected(&[
            ("leases.coordination.k8s.io", "claude-operator-leader", "get patch"),
            ("leases.coordination.k8s.io", "", "create"),
        ])
    );
    // Nothing in any other namespace, nothing cluster-wide.
    assert!(granted("default").is_empty());
    let out = exec(
        "kubectl",
        &["auth", "can-i", "list", "secrets", "--all-namespaces", "--as", &sa],
        None,
    );
    assert!(!out.status.success(), "list secrets cluster-wide must be denied");
}
