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
#[path = "support/run_env.rs"]
mod run_env;
mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use claude_operator::api::{ClaudeRun, ClaudeRunPolicy, CostSource, Phase};
use claude_operator::github::signature::sign;
use claude_operator::receiver::intake::run_name;
use fake_github::{APP_ID, FakeGitHub};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use run_env::comment_payload;
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
    sample_run_by(ns, name, source, None)
}

/// The sample run, naming `requester` (username, groups) as who creates it.
fn sample_run_by(ns: &str, name: &str, source: &str, requester: Option<(&str, &[&str])>) -> String {
    let mut run: Value = load_yaml("config/samples/run.yaml");
    run["metadata"]["name"] = json!(name);
    run["metadata"]["namespace"] = json!(ns);
    run["spec"]["trigger"]["source"] = json!(source);
    if let Some((username, groups)) = requester {
        run["spec"]["requester"] = json!({"username": username, "groups": groups});
    }
    serde_yaml::to_string(&run).unwrap()
}

/// The identity kubectl presents as `user`: `kubectl auth whoami` as it.
fn whoami(args: &[&str]) -> (String, Vec<String>) {
    let out = ok("kubectl", &[&["auth", "whoami", "-o", "json"][..], args].concat(), None);
    let v: Value = serde_json::from_str(&out).unwrap();
    let info = &v["status"]["userInfo"];
    let groups = info["groups"]
        .as_array()
        .map(|a| a.iter().map(|g| g.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    (info["username"].as_str().unwrap().to_owned(), groups)
}

// ---------------------------------------------------------------------------

#[test]
fn the_dashboard_renders_as_a_configmap_the_grafana_sidecar_picks_up() {
    let ns = "claude-operator";
    let dashboards = |values: &Value| -> Vec<Value> {
        of_kind(&template(values, ns), "ConfigMap")
            .into_iter()
            .filter(|c| c["metadata"]["labels"]["grafana_dashboard"].is_string())
            .cloned()
            .collect()
    };
    assert!(
        dashboards(&json!({"github": {"existingSecret": "gh"}})).is_empty(),
        "off by default"
    );
    let on = dashboards(&json!({"github": {"existingSecret": "gh"}, "dashboard": {"enabled": true}}));
    assert_eq!(on.len(), 1);
    assert_eq!(on[0]["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(on[0]["metadata"]["namespace"], ns);
    let rendered: Value = serde_json::from_str(on[0]["data"]["claude-operator.json"].as_str().unwrap()).unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/claude-operator/dashboards/claude-operator.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(rendered, file, "the ConfigMap carries the dashboard unchanged");
    let elsewhere = dashboards(&json!({"github": {"existingSecret": "gh"},
        "dashboard": {"enabled": true, "namespace": "monitoring", "label": "grafana_dashboard", "labelValue": "present"}}));
    assert_eq!(elsewhere[0]["metadata"]["namespace"], "monitoring");
    assert_eq!(elsewhere[0]["metadata"]["labels"]["grafana_dashboard"], "present");
}

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

    // Defaults: one Deployment and ServiceAccount per component, one replica
    // (two gateways), no leader election, cluster-wide rules.
    let ns = "claude-operator";
    let defaults = template(&json!({"github": {"existingSecret": "gh"}}), ns);
    let deployments = of_kind(&defaults, "Deployment");
    assert_eq!(deployments.len(), 3);
    for component in ["receiver", "controller", "gateway"] {
        let deploy = deployments
            .iter()
            .find(|d| d["metadata"]["name"] == format!("claude-operator-{component}"))
            .unwrap_or_else(|| panic!("{component} Deployment"));
        let replicas = if component == "gateway" { 2 } else { 1 };
        assert_eq!(deploy["spec"]["replicas"], replicas, "{component}");
        assert_eq!(
            deploy["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
            component
        );
        let pod = &deploy["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(container["image"], "ghcr.io/claude-operator/claude-operator:0.1.0");
        assert_eq!(container["args"], json!([component, "--log-format=json"]));
        assert_eq!(pod["serviceAccountName"], format!("claude-operator-{component}"));
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
        assert_eq!(container["livenessProbe"]["httpGet"]["port"], "metrics");
        // Each component gets only its own part of the GitHub Secret.
        let env = container["env"].as_array().unwrap();
        let has_env = |name: &str| env.iter().any(|e| e["name"] == name);
        let items: Vec<&str> = pod["volumes"][0]["secret"]["items"]
            .as_array()
            .map(|a| a.iter().map(|i| i["key"].as_str().unwrap()).collect())
            .unwrap_or_default();
        match component {
            "receiver" => {
                assert_eq!(items, ["webhook-secrets"]);
                assert!(!has_env("CLAUDE_OPERATOR_GITHUB_APP_ID"));
                assert!(has_env("CLAUDE_OPERATOR_WEBHOOK_MAX_BODY_BYTES"));
            }
            "controller" => {
                assert_eq!(items, ["private-key.pem"]);
                let app_id = env
                    .iter()
                    .find(|e| e["name"] == "CLAUDE_OPERATOR_GITHUB_APP_ID")
                    .unwrap();
                assert_eq!(
                    app_id["valueFrom"]["secretKeyRef"],
                    json!({"name": "gh", "key": "app-id"})
                );
                assert!(!has_env("CLAUDE_OPERATOR_GATEWAY_URL"), "empty gateway.url: looked up");
                assert!(container["volumeMounts"][0]["readOnly"].as_bool().unwrap());
            }
            _ => {
                // No Secret and no ConfigMap: only an emptyDir for git's work.
                assert!(items.is_empty(), "the gateway mounts no Secret");
                assert_eq!(
                    pod["volumes"],
                    json!([{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]),
                    "the gateway mounts only its /tmp"
                );
                assert_eq!(container["volumeMounts"], json!([{"name": "tmp", "mountPath": "/tmp"}]));
                assert!(!has_env("CLAUDE_OPERATOR_GITHUB_APP_ID"));
                assert!(has_env("CLAUDE_OPERATOR_ANTHROPIC_API_URL") && has_env("CLAUDE_OPERATOR_GITHUB_GIT_URL"));
            }
        }
    }
    let sas = of_kind(&defaults, "ServiceAccount");
    assert_eq!(sas.len(), 3);
    assert!(sas.iter().all(|sa| sa["automountServiceAccountToken"] == false));
    let gateway_service = of_kind(&defaults, "Service")
        .into_iter()
        .find(|s| s["metadata"]["name"] == "claude-operator-gateway")
        .unwrap();
    assert_eq!(gateway_service["spec"]["ports"][0]["port"], 8081);
    assert_eq!(
        gateway_service["spec"]["selector"]["app.kubernetes.io/component"],
        "gateway"
    );
    let service = of_kind(&defaults, "Service")
        .into_iter()
        .find(|s| s["metadata"]["name"] == "claude-operator")
        .unwrap();
    assert_eq!(service["spec"]["selector"]["app.kubernetes.io/component"], "receiver");
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
    // Only the release namespace's Roles (grants, gateway); cluster-wide
    // rules for the receiver and the controller.
    let roles = of_kind(&defaults, "Role");
    assert!(roles.iter().all(|r| r["metadata"]["namespace"] == ns), "{roles:?}");
    let role_names: BTreeSet<&str> = roles.iter().map(|r| r["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(
        role_names,
        BTreeSet::from(["claude-operator-controller-grants", "claude-operator-gateway"])
    );
    let cluster_role = |component: &str| {
        of_kind(&defaults, "ClusterRole")
            .into_iter()
            .find(|r| r["metadata"]["name"] == format!("claude-operator-claude-operator-{component}"))
            .unwrap_or_else(|| panic!("{component} ClusterRole"))["rules"]
            .clone()
    };
    let (receiver_rules, controller_rules) = (cluster_role("receiver"), cluster_role("controller"));
    assert_eq!(
        of_kind(&defaults, "ClusterRole").len(),
        2,
        "no cluster-wide gateway rules"
    );
    assert!(
        !receiver_rules.to_string().contains("secrets"),
        "the receiver reads no Secret"
    );
    // No wildcard anywhere in the rules.
    for rule in receiver_rules
        .as_array()
        .unwrap()
        .iter()
        .chain(controller_rules.as_array().unwrap())
        .chain(roles.iter().flat_map(|r| r["rules"].as_array().unwrap()))
    {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(!rule[field].as_array().unwrap().iter().any(|v| v == "*"), "{rule}");
        }
    }
    for binding in of_kind(&defaults, "ValidatingAdmissionPolicyBinding") {
        assert!(binding["spec"]["matchResources"].is_null(), "cluster-wide by default");
    }
    let vaps = of_kind(&defaults, "ValidatingAdmissionPolicy");
    let vap = |suffix: &str| {
        vaps.iter()
            .find(|v| v["metadata"]["name"].as_str().unwrap().ends_with(suffix))
            .unwrap()
            .to_string()
    };
    assert!(vap("webhook-runs").contains("system:serviceaccount:claude-operator:claude-operator-receiver"));
    assert!(vap("webhook-runs").contains("request.userInfo.groups"));
    let status = vap("status-writes");
    assert!(status.contains("clauderuns/status") && status.contains("clauderunpolicies/status"));
    assert!(status.contains("system:serviceaccount:claude-operator:claude-operator-controller"));
    // Dangerous token permissions no tenancy grant names are refused at
    // create: exactly the table's, less those a grant names.
    let refused_by = |vaps: &[&Value]| -> Vec<String> {
        let vap = vaps
            .iter()
            .find(|v| v["metadata"]["name"].as_str().unwrap().ends_with("token-permissions"))
            .unwrap();
        let refused = vap["spec"]["variables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "refused")
            .unwrap()["expression"]
            .as_str()
            .unwrap()
            .to_owned();
        serde_json::from_str(&refused).unwrap()
    };
    let dangerous: Vec<String> = claude_operator::tenancy::PERMISSIONS
        .iter()
        .filter(|p| p.default_ceiling.is_none())
        .map(|p| p.name.to_owned())
        .collect();
    assert_eq!(refused_by(&vaps), dangerous);
    let granting = template(
        &json!({"github": {"existingSecret": "gh"}, "tenancy": {"enabled": true,
            "namespaces": [{"names": ["release-bots"], "repositories": ["acme/*"],
                            "permissions": {"contents": "write", "workflows": "write"}}]}}),
        ns,
    );
    let granted_vaps = of_kind(&granting, "ValidatingAdmissionPolicy");
    let left = refused_by(&granted_vaps);
    assert!(
        !left.contains(&"workflows".to_owned()) && left.len() == dangerous.len() - 1,
        "{left:?}"
    );
    let keep_spend = vap("keep-spend");
    assert!(keep_spend.contains("claude-operator.dev/keep-spend"));
    assert!(keep_spend.contains("system:serviceaccount:claude-operator:claude-operator-controller"));

    // Two replicas: leader election and the Lease Role; watchNamespace: the
    // same rules as a Role in that namespace, and --watch-namespace.
    let scoped = template(
        &json!({"github": {"existingSecret": "gh"}, "replicaCount": 2, "watchNamespace": "team-a"}),
        ns,
    );
    let controller = of_kind(&scoped, "Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "claude-operator-controller")
        .unwrap();
    let container = &controller["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["args"],
        json!(["controller", "--log-format=json", "--leader-election"])
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
    let in_team = |name: &str| {
        roles
            .iter()
            .find(|r| r["metadata"]["namespace"] == "team-a" && r["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("Role {name}"))["rules"]
            .clone()
    };
    assert_eq!(
        in_team("claude-operator-receiver"),
        receiver_rules,
        "one list of rules for both modes"
    );
    assert_eq!(in_team("claude-operator-controller"), controller_rules);
    let lease = roles
        .iter()
        .find(|r| r["metadata"]["name"] == "claude-operator-controller-leader-election")
        .unwrap();
    assert_eq!(lease["metadata"]["namespace"], ns);
    assert!(lease.to_string().contains("leases"));
    let selects = |binding: &Value, namespaces: Value| {
        assert_eq!(
            binding["spec"]["matchResources"]["namespaceSelector"],
            json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}]})
        );
    };
    for binding in of_kind(&scoped, "ValidatingAdmissionPolicyBinding") {
        selects(binding, json!(["team-a"]));
    }
    // A list of run namespaces: the same Roles in each, one watch each,
    // still nothing cluster-wide.
    let several = template(
        &json!({"github": {"existingSecret": "gh"}, "watchNamespace": ["team-a", "team-b"]}),
        ns,
    );
    assert!(of_kind(&several, "ClusterRole").is_empty() && of_kind(&several, "ClusterRoleBinding").is_empty());
    let roles = of_kind(&several, "Role");
    for team in ["team-a", "team-b"] {
        for (name, rules) in [
            ("claude-operator-receiver", &receiver_rules),
            ("claude-operator-controller", &controller_rules),
        ] {
            let role = roles
                .iter()
                .find(|r| r["metadata"]["namespace"] == team && r["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("Role {name} in {team}"));
            assert_eq!(&role["rules"], rules, "{name} in {team}");
        }
    }
    let bound: BTreeSet<String> = of_kind(&several, "RoleBinding")
        .iter()
        .filter(|b| b["metadata"]["namespace"] != ns)
        .map(|b| format!("{}/{}", b["metadata"]["namespace"], b["metadata"]["name"]).replace('"', ""))
        .collect();
    assert_eq!(
        bound,
        BTreeSet::from([
            "team-a/claude-operator-controller".to_owned(),
            "team-a/claude-operator-receiver".to_owned(),
            "team-b/claude-operator-controller".to_owned(),
            "team-b/claude-operator-receiver".to_owned(),
        ])
    );
    for d in of_kind(&several, "Deployment") {
        let name = d["metadata"]["name"].as_str().unwrap();
        let env = d["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap();
        let watch = env.iter().find(|e| e["name"] == "CLAUDE_OPERATOR_WATCH_NAMESPACE");
        if name != "claude-operator-gateway" {
            assert_eq!(watch.unwrap()["value"], "team-a,team-b", "{name}");
        }
    }
    for binding in of_kind(&several, "ValidatingAdmissionPolicyBinding") {
        selects(binding, json!(["team-a", "team-b"]));
    }
    // A set gateway.url reaches the controller.
    let pinned = template(
        &json!({"github": {"existingSecret": "gh"}, "gateway": {"url": "http://10.96.0.81:8081"}}),
        ns,
    );
    assert!(pinned.iter().any(|d| {
        d["kind"] == "Deployment"
            && d["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "CLAUDE_OPERATOR_GATEWAY_URL" && e["value"] == "http://10.96.0.81:8081")
    }));

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

/// The chart's tenancy values become a file the binary reads (parsed here
/// with the binary's own parser), mounted in the receiver and the controller
/// only, whose pods roll when it changes; bad tenancy values are refused.
#[test]
fn the_tenancy_values_render_a_configuration_the_receiver_and_controller_read() {
    use claude_operator::tenancy::Tenancy;
    let ns = "claude-operator";
    let values = |repos: Value| {
        json!({
            "github": {"existingSecret": "gh"},
            "tenancy": {
                "enabled": true,
                "namespaces": [
                    {"names": ["team-a"], "repositories": repos},
                    {"names": ["release-*"], "repositories": ["acme/*"], "permissions": {"workflows": "write"},
                     "runnerImages": ["ghcr.io/acme/runner:*"]},
                ],
                "default": {"repositories": ["sandbox/*"]},
            },
        })
    };
    let docs = template(&values(json!(["acme/api"])), ns);
    let maps = of_kind(&docs, "ConfigMap");
    let map = maps
        .iter()
        .find(|m| m["metadata"]["name"] == "claude-operator-tenancy")
        .expect("the tenancy ConfigMap");
    let text = map["data"]["tenancy.yaml"].as_str().unwrap();
    let tenancy = Tenancy::from_yaml(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut policy: ClaudeRunPolicy = load_yaml("config/samples/policy.yaml");
    policy.spec.repositories = vec!["acme/api".into()];
    assert_eq!(tenancy.check_policy("team-a", &policy.spec), Ok(()));
    assert!(tenancy.names_grant("team-a", "acme/api"));
    assert_eq!(
        tenancy.check_policy("team-b", &policy.spec).unwrap_err().reason,
        "RepositoryNotAllowed"
    );
    policy
        .spec
        .github
        .permissions
        .insert("workflows".into(), claude_operator::api::TokenAccess::Write);
    assert_eq!(
        tenancy.check_policy("team-a", &policy.spec).unwrap_err().reason,
        "PermissionNotAllowed"
    );
    // release-*: exactly the listed ceiling (workflows only), its image only.
    policy.spec.github.permissions = [("workflows".to_owned(), claude_operator::api::TokenAccess::Write)].into();
    policy.spec.runner.image = "ghcr.io/acme/runner:v1".into();
    assert_eq!(tenancy.check_policy("release-bots", &policy.spec), Ok(()));
    policy.spec.runner.image = "ghcr.io/other/runner:v1".into();
    assert_eq!(
        tenancy.check_policy("release-bots", &policy.spec).unwrap_err().reason,
        "RunnerImageNotAllowed"
    );

    let checksum = |docs: &[Value], component: &str| -> Option<String> {
        let d = of_kind(docs, "Deployment")
            .into_iter()
            .find(|d| d["metadata"]["labels"]["app.kubernetes.io/component"] == component)
            .unwrap();
        let pod = &d["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let env_set = container["env"].as_array().unwrap().iter().any(|e| {
            e["name"] == "CLAUDE_OPERATOR_TENANCY_FILE" && e["value"] == "/etc/claude-operator/tenancy/tenancy.yaml"
        });
        let mounted = container["volumeMounts"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["mountPath"] == "/etc/claude-operator/tenancy"));
        let volume = pod["volumes"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["configMap"]["name"] == "claude-operator-tenancy"));
        assert_eq!((env_set, mounted, volume), (env_set, env_set, env_set), "{component}");
        env_set.then(|| {
            d["spec"]["template"]["metadata"]["annotations"]["checksum/tenancy"]
                .as_str()
                .unwrap()
                .to_owned()
        })
    };
    let receiver = checksum(&docs, "receiver").expect("the receiver reads the tenancy file");
    let controller = checksum(&docs, "controller").expect("the controller reads the tenancy file");
    assert_eq!(receiver, controller);
    assert_eq!(checksum(&docs, "gateway"), None, "the gateway does not need it");
    let changed = template(&values(json!(["acme/api", "acme/web"])), ns);
    assert_ne!(
        checksum(&changed, "receiver").unwrap(),
        receiver,
        "a change rolls the pods"
    );

    // Off (the default): no ConfigMap, no flag; the built-in default applies.
    let off = template(&json!({"github": {"existingSecret": "gh"}}), ns);
    assert!(
        of_kind(&off, "ConfigMap")
            .iter()
            .all(|m| m["metadata"]["name"] != "claude-operator-tenancy")
    );
    assert_eq!(checksum(&off, "controller"), None);

    // Bad values are refused by the chart's schema.
    for (bad, word) in [
        (
            json!({"enabled": true, "namespaces": [{"repositories": ["acme/api"]}]}),
            "names",
        ),
        (
            json!({"enabled": true, "namespaces": [{"names": ["a"], "permissions": {"contents": "admin"}}]}),
            // Helm names the field and the allowed levels, not the bad value.
            "permissions/contents",
        ),
        (
            json!({"enabled": true, "namespaces": [{"names": ["a"], "repositories": ["acme"]}]}),
            "acme",
        ),
        (json!({"enabled": true, "tenants": []}), "tenants"),
    ] {
        let file = values_file(&json!({"github": {"existingSecret": "gh"}, "tenancy": bad}));
        let err = fails(
            "helm",
            &[
                "template",
                RELEASE,
                CHART,
                "--kube-version",
                KUBE_VERSION,
                "-f",
                file.path().to_str().unwrap(),
            ],
            None,
        );
        assert!(err.contains(word), "{bad}: {err}");
    }
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
    let templates: String = ["deployment.yaml", "rbac.yaml"]
        .iter()
        .map(|f| std::fs::read_to_string(format!("{CHART}/templates/{f}")).unwrap())
        .collect();
    let skipped = regex::Regex::new(r"checkov\.io/skip\d+: (CKV2?_K8S_\d+)=").unwrap();
    let ids: Vec<_> = skipped.captures_iter(&templates).map(|c| c[1].to_owned()).collect();
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
    for (component, replicas) in [("receiver", 1), ("controller", 1), ("gateway", 2)] {
        let deploy = ok(
            "kubectl",
            &[
                "get",
                "deployment",
                &format!("{RELEASE}-{component}"),
                "-n",
                &ns.name,
                "-o",
                "json",
            ],
            None,
        );
        let deploy: Value = serde_json::from_str(&deploy).unwrap();
        assert_eq!(deploy["status"]["readyReplicas"], replicas, "{deploy:#}");
    }

    // A policy and a run the operator never saw: no finalizer holds them.
    let mut policy: ClaudeRunPolicy = load_yaml("config/samples/policy.yaml");
    policy.metadata.namespace = Some(ns.name.clone());
    Api::<ClaudeRunPolicy>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let (admin, admin_groups) = whoami(&[]);
    let admin_groups: Vec<&str> = admin_groups.iter().map(String::as_str).collect();
    ok(
        "kubectl",
        &["create", "-f", "-"],
        Some(&sample_run_by(
            &ns.name,
            "manual-run",
            "Manual",
            Some((&admin, &admin_groups)),
        )),
    );

    release.uninstall();
    let cluster_name = format!("{RELEASE}-{}", ns.name);
    let mut cluster_scoped = vec![];
    for suffix in ["receiver", "controller"] {
        cluster_scoped.push(("clusterrole", format!("{cluster_name}-{suffix}")));
        cluster_scoped.push(("clusterrolebinding", format!("{cluster_name}-{suffix}")));
    }
    for suffix in ["webhook-runs", "token-permissions", "keep-spend", "status-writes"] {
        cluster_scoped.push(("validatingadmissionpolicy", format!("{cluster_name}-{suffix}")));
        cluster_scoped.push(("validatingadmissionpolicybinding", format!("{cluster_name}-{suffix}")));
    }
    for (kind, name) in cluster_scoped {
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
async fn only_the_receiver_creates_webhook_runs_manual_runs_name_their_creator_and_only_the_controller_writes_status() {
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
  resources: [clauderuns, clauderuns/status, clauderunpolicies]
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
    let operator = format!("system:serviceaccount:{}:{RELEASE}-receiver", ns.name);
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
        err.contains("only the claude-operator receiver's service account may create"),
        "{err}"
    );
    // Cluster administrators are bound by it too.
    fails("kubectl", &["create", "-f", "-"], Some(&webhook));

    // A Manual run is fine for someone else, naming themselves exactly as
    // the apiserver authenticated them...
    let (me, my_groups) = whoami(&someone);
    let my_groups: Vec<&str> = my_groups.iter().map(String::as_str).collect();
    assert_eq!(me, "someone-else");
    ok(
        "kubectl",
        &[&["create", "-f", "-"][..], &someone].concat(),
        Some(&sample_run_by(&ns.name, "by-hand", "Manual", Some((&me, &my_groups)))),
    );
    // ...but not without a requester, as someone else, or with other groups.
    for (name, requester) in [
        ("no-requester", None),
        ("as-admin", Some(("kubernetes-admin", &my_groups[..]))),
        (
            "more-groups",
            Some((me.as_str(), &["system:authenticated", "system:masters"][..])),
        ),
    ] {
        let err = fails(
            "kubectl",
            &[&["create", "-f", "-"][..], &someone].concat(),
            Some(&sample_run_by(&ns.name, name, "Manual", requester)),
        );
        assert!(err.contains("spec.requester equal to the identity"), "{name}: {err}");
    }
    // Status is the controller's alone, even with RBAC to patch it.
    for who in [&someone[..], &[]] {
        let err = fails(
            "kubectl",
            &[
                &[
                    "patch",
                    "clauderun",
                    "by-hand",
                    "-n",
                    &ns.name,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    r#"{"status":{"phase":"Succeeded"}}"#,
                ][..],
                who,
            ]
            .concat(),
            None,
        );
        assert!(
            err.contains("only the claude-operator controller's service account may write the"),
            "{err}"
        );
    }
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
    let sa_config = service_account_kubeconfig(&ns.name, &format!("{RELEASE}-receiver"));
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

    // A policy asking for a dangerous permission no tenancy grant names is
    // refused at create.
    let mut dangerous: ClaudeRunPolicy = load_yaml("config/samples/policy.yaml");
    dangerous.metadata.namespace = Some(ns.name.clone());
    dangerous.metadata.name = Some("wants-workflows".into());
    dangerous
        .spec
        .github
        .permissions
        .insert("workflows".into(), claude_operator::api::TokenAccess::Write);
    let err = Api::<ClaudeRunPolicy>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &dangerous)
        .await
        .expect_err("workflows without leave is refused");
    assert!(
        err.to_string()
            .contains("token permission workflows needs the cluster admin's leave"),
        "{err}"
    );

    // A policy's keep-spend finalizer is the controller's to remove: no one
    // deletes a policy around it (and its period's spend with it).
    let mut policy: ClaudeRunPolicy = load_yaml("config/samples/policy.yaml");
    policy.metadata.namespace = Some(ns.name.clone());
    policy.metadata.finalizers = Some(vec!["claude-operator.dev/keep-spend".into()]);
    let policy_name = policy.metadata.name.clone().unwrap();
    Api::<ClaudeRunPolicy>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    let strip = json!({"metadata": {"finalizers": null}});
    let strip_text = strip.to_string();
    for who in [&someone[..], &[]] {
        let err = fails(
            "kubectl",
            &[
                &[
                    "patch",
                    "clauderunpolicy",
                    &policy_name,
                    "-n",
                    &ns.name,
                    "--type=merge",
                    "-p",
                    &strip_text,
                ][..],
                who,
            ]
            .concat(),
            None,
        );
        assert!(
            err.contains("may remove the claude-operator.dev/keep-spend finalizer"),
            "{err}"
        );
    }
    let sa_config = service_account_kubeconfig(&ns.name, &format!("{RELEASE}-controller"));
    let kubeconfig = kube::config::Kubeconfig::read_from(sa_config.path()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Api::<ClaudeRunPolicy>::namespaced(kube::Client::try_from(config).unwrap(), &ns.name)
        .patch(&policy_name, &PatchParams::default(), &Patch::Merge(&strip))
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
    // A second run namespace: the components watch both, each on its own
    // (one namespaced watch per namespace), with Roles only.
    let other_runs = TestNamespace::new(&client, "helm-runs2").await;
    let watched = format!("{},{}", runs_ns.name, other_runs.name);
    let fake = FakeGitHub::start().await;
    github_secret(&client, &ops.name, &fake.private_key_pem()).await;
    // The chart as a platform team would install it for its run namespaces,
    // with leader election. kwok plays its pod; the real operator runs here,
    // as its ServiceAccount.
    let _release = Release::install(
        &ops.name,
        &json!({
            "github": {"existingSecret": "claude-operator-github"},
            "watchNamespace": [runs_ns.name, other_runs.name],
            "leaderElection": {"enabled": true},
        }),
        false,
    );
    let receiver_kubeconfig = service_account_kubeconfig(&ops.name, &format!("{RELEASE}-receiver"));
    let controller_kubeconfig = service_account_kubeconfig(&ops.name, &format!("{RELEASE}-controller"));

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
    // The Anthropic key lives in the release namespace (the gateway's), never
    // in the run namespace.
    Api::<Secret>::namespaced(client.clone(), &ops.name)
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
    // The receiver and the controller as the chart runs them: two processes,
    // each as its own ServiceAccount.
    let op = OperatorProcess::start(
        &[
            "--no-controller",
            "--no-gateway",
            "--webhook-secret-file",
            secrets_file.path().to_str().unwrap(),
            "--github-app-bot-login",
            "claude-operator[bot]",
            "--watch-namespace",
            &watched,
        ],
        &[("KUBECONFIG", receiver_kubeconfig.path().to_str().unwrap())],
    )
    .await;
    let controller = OperatorProcess::start(
        &[
            "--no-webhook",
            "--no-gateway",
            "--github-app-id",
            &APP_ID.to_string(),
            "--github-app-private-key-file",
            key_file.path().to_str().unwrap(),
            "--github-api-url",
            &fake.url,
            "--watch-namespace",
            &watched,
            "--leader-election",
            "--leader-election-namespace",
            &ops.name,
            "--gateway-namespace",
            &ops.name,
            "--gateway-url",
            "http://127.0.0.1:8081",
        ],
        // Later settings win: the ServiceAccount's kubeconfig, not the admin's.
        &[
            ("KUBECONFIG", controller_kubeconfig.path().to_str().unwrap()),
            ("POD_NAME", "claude-operator-e2e"),
        ],
    )
    .await;

    // A member's comment, signed as GitHub signs it.
    // The comment id GitHub's example carries.
    let payload = comment_payload(
        &repo,
        "alice",
        1001,
        "User",
        "MEMBER",
        "@claude add a retry",
        492_700_400,
    );
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
        let (op, controller) = (&op, &controller);
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                let r = runs.get_opt(&run).await.unwrap();
                if r.as_ref().and_then(|r| r.status.as_ref()).map(|s| s.phase) == Some(want) {
                    return r.unwrap();
                }
                if tokio::time::Instant::now() > deadline {
                    panic!(
                        "{run} never reached {want:?}: {:#?}\nreceiver log:\n{}\ncontroller log:\n{}",
                        r.map(|r| r.status),
                        op.log(),
                        controller.log()
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
    // Play the gateway: what it metered is on the run's grant (in the
    // release namespace), where the controller reads it.
    let grants: Api<Secret> = Api::namespaced(client.clone(), &ops.name);
    let meter = json!({"spentMicros": 6000, "requests": 2,
        "usage": {"claude-sonnet-4-5": {"input_tokens": 1000, "output_tokens": 200}}});
    grants
        .patch(
            &claude_operator::grant::grant_name(&runs_ns.name, &run),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                claude_operator::grant::ANNOTATION_METER: meter.to_string()}}})),
        )
        .await
        .unwrap();
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
    assert_eq!(cost.source, CostSource::Metered);
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
    // Deleting the policy: its spend is kept in the release namespace first.
    let policy_name = policy.metadata.name.clone().unwrap();
    policies
        .delete(&policy_name, &DeleteParams::background())
        .await
        .unwrap();
    eventually(
        "policy deleted through its finalizer",
        Duration::from_secs(30),
        || async { policies.get_opt(&policy_name).await.ok()?.is_none().then_some(()) },
    )
    .await;
    let record = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &ops.name)
        .get(&claude_operator::controller::spend_record::record_name(
            &runs_ns.name,
            &policy_name,
        ))
        .await
        .unwrap();
    assert!(
        record.data.unwrap()["ledger"].contains("\"chargedUSD\":\"0.006\""),
        "the record keeps the spend"
    );
    for log in [op.log(), controller.log()] {
        assert!(
            !log.contains(" 403") && !log.to_lowercase().contains("forbidden"),
            "{log}"
        );
    }
    drop(op);
    drop(controller);

    // Nothing beyond the documented rules: what each component's
    // ServiceAccount may do, less what any authenticated ServiceAccount may,
    // is exactly what the chart's comments say.
    let nobody = format!("system:serviceaccount:{}:nobody", ops.name);
    let granted = |component: &str, ns: &str| -> BTreeSet<_> {
        let sa = format!("system:serviceaccount:{}:{RELEASE}-{component}", ops.name);
        permissions(&sa, ns)
            .difference(&permissions(&nobody, ns))
            .cloned()
            .collect()
    };
    assert_eq!(
        granted("receiver", &runs_ns.name),
        expected(&[
            ("clauderuns.claude-operator.dev", "", "list create patch"),
            ("clauderunpolicies.claude-operator.dev", "", "list watch"),
        ])
    );
    assert!(granted("receiver", &ops.name).is_empty(), "the receiver reads no grant");
    assert!(
        granted("gateway", &runs_ns.name).is_empty(),
        "the gateway has nothing in run namespaces"
    );
    // The second run namespace: exactly the same as the first.
    for component in ["receiver", "controller", "gateway"] {
        assert_eq!(
            granted(component, &other_runs.name),
            granted(component, &runs_ns.name),
            "{component}"
        );
    }
    assert_eq!(
        granted("gateway", &ops.name),
        expected(&[("secrets", "", "get list watch update patch")])
    );
    assert_eq!(
        granted("controller", &runs_ns.name),
        expected(&[
            ("clauderuns.claude-operator.dev", "", "get list watch patch delete"),
            ("clauderuns.claude-operator.dev/status", "", "patch"),
            ("clauderuns.claude-operator.dev/finalizers", "", "update"),
            ("clauderunpolicies.claude-operator.dev", "", "get list watch patch"),
            ("clauderunpolicies.claude-operator.dev/status", "", "patch"),
            ("clauderunpolicies.claude-operator.dev/finalizers", "", "update"),
            ("pods", "", "get list watch create delete"),
            ("secrets", "", "get list watch create delete"),
            ("serviceaccounts", "", "create patch"),
            ("resourcequotas", "", "create patch"),
            ("limitranges", "", "create patch"),
            ("networkpolicies.networking.k8s.io", "", "get list watch create patch"),
            ("events.events.k8s.io", "", "create patch"),
        ])
    );
    assert_eq!(
        granted("controller", &ops.name),
        expected(&[
            ("leases.coordination.k8s.io", "claude-operator-leader", "get patch"),
            ("leases.coordination.k8s.io", "", "create"),
            ("secrets", "", "get list watch create patch delete"),
            ("configmaps", "", "get create update"),
            ("services", "claude-operator-gateway", "get"),
        ])
    );
    // Nothing in any other namespace, nothing cluster-wide.
    for component in ["receiver", "controller", "gateway"] {
        assert!(granted(component, "default").is_empty(), "{component}");
        let sa = format!("system:serviceaccount:{}:{RELEASE}-{component}", ops.name);
        let out = exec(
            "kubectl",
            &["auth", "can-i", "list", "secrets", "--all-namespaces", "--as", &sa],
            None,
        );
        assert!(
            !out.status.success(),
            "{component}: list secrets cluster-wide must be denied"
        );
    }
}

/// The controller's timers reach its container as the flags' environment
/// variables, the caps only when set; the schema refuses a zero quota wait.
#[test]
fn the_controllers_timers_are_values() {
    let ns = "claude-operator";
    let controller_env = |values: &Value| -> Vec<(String, String)> {
        let docs = template(values, ns);
        let deployment = of_kind(&docs, "Deployment")
            .into_iter()
            .find(|d| d["metadata"]["name"] == "claude-operator-controller")
            .cloned()
            .unwrap();
        deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["value"].is_string())
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_owned(),
                    e["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let has = |env: &[(String, String)], name: &str, value: &str| env.iter().any(|(n, v)| n == name && v == value);
    let defaults = controller_env(&json!({"github": {"existingSecret": "gh"}}));
    for (name, value) in [
        ("CLAUDE_OPERATOR_QUOTA_WAIT_SECONDS", "900"),
        ("CLAUDE_OPERATOR_METER_INTERVAL_SECONDS", "10"),
        ("CLAUDE_OPERATOR_PROGRESS_INTERVAL_SECONDS", "10"),
        ("CLAUDE_OPERATOR_DRAIN_WAIT_SECONDS", "30"),
        ("CLAUDE_OPERATOR_RECONCILE_CONCURRENCY", "16"),
    ] {
        assert!(has(&defaults, name, value), "{name}={value} in {defaults:?}");
    }
    assert!(
        !defaults
            .iter()
            .any(|(n, _)| n.ends_with("_MAX_SECONDS") || n.contains("LEADER_ELECTION")),
        "no cap and no lease without being asked: {defaults:?}"
    );
    let set = controller_env(&json!({
        "github": {"existingSecret": "gh"},
        "leaderElection": {"enabled": true, "leaseSeconds": 8, "renewGraceSeconds": 3},
        "controller": {"quotaWaitSeconds": 60, "approvalWindowMaxSeconds": 120, "podRetentionMaxSeconds": 0,
                       "runRetentionMaxSeconds": 600, "meterIntervalSeconds": 2, "drainWaitSeconds": 5,
                       "progressIntervalSeconds": 4, "reconcileConcurrency": 48},
    }));
    for (name, value) in [
        ("CLAUDE_OPERATOR_LEADER_ELECTION_LEASE_SECONDS", "8"),
        ("CLAUDE_OPERATOR_LEADER_ELECTION_RENEW_GRACE_SECONDS", "3"),
        ("CLAUDE_OPERATOR_QUOTA_WAIT_SECONDS", "60"),
        ("CLAUDE_OPERATOR_APPROVAL_WINDOW_MAX_SECONDS", "120"),
        ("CLAUDE_OPERATOR_POD_RETENTION_MAX_SECONDS", "0"),
        ("CLAUDE_OPERATOR_RUN_RETENTION_MAX_SECONDS", "600"),
        ("CLAUDE_OPERATOR_METER_INTERVAL_SECONDS", "2"),
        ("CLAUDE_OPERATOR_PROGRESS_INTERVAL_SECONDS", "4"),
        ("CLAUDE_OPERATOR_DRAIN_WAIT_SECONDS", "5"),
        ("CLAUDE_OPERATOR_RECONCILE_CONCURRENCY", "48"),
    ] {
        assert!(has(&set, name, value), "{name}={value} in {set:?}");
    }
    let values = values_file(&json!({"github": {"existingSecret": "gh"}, "controller": {"quotaWaitSeconds": 0}}));
    let err = fails(
        "helm",
        &[
            "template",
            RELEASE,
            CHART,
            "--kube-version",
            KUBE_VERSION,
            "-f",
            values.path().to_str().unwrap(),
        ],
        None,
    );
    assert!(err.contains("quotaWaitSeconds"), "{err}");
}
