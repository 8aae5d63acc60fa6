//! The operator's Kubernetes API: the `ClaudeRunPolicy` and `ClaudeRun` custom
//! resources (group `claude-operator.dev`, version `v1alpha1`), their status
//! types, condition types and reasons. Plain data only; no I/O lives here.
//!
//! The schema the apiserver enforces is generated from these types: every
//! bound, pattern and enum declared here is a validation rule of the CRD.

pub mod conditions;
pub mod labels;
pub mod permissions;
mod policy;
mod run;

pub use policy::*;
pub use run::*;

use kube::CustomResourceExt;
use serde::{Deserialize, Serialize};

/// The API group of both resources.
pub const GROUP: &str = "claude-operator.dev";
/// The only served version.
pub const VERSION: &str = "v1alpha1";

/// Finalizer on every `ClaudeRun`: the run's token is revoked before the run
/// goes. The receiver sets it at creation (saving the controller a write);
/// the controller adds it to runs created otherwise.
pub const RUN_FINALIZER: &str = "claude-operator.dev/revoke-token";

/// Pattern of a money amount in US dollars, as written by people in specs:
/// a non-negative decimal with at most two fractional digits (`"5"`, `"5.00"`).
/// Money is never a float in the API.
pub const MONEY_PATTERN: &str = r"^(0|[1-9][0-9]{0,6})(\.[0-9]{1,2})?$";

/// Pattern of a money amount as recorded by the operator on status: up to six
/// fractional digits, so a run's cost is kept to the micro-dollar.
pub const MONEY_STATUS_PATTERN: &str = r"^(0|[1-9][0-9]*)(\.[0-9]{1,6})?$";

/// Pattern of a repository pattern: `owner/name-glob`. The owner is literal
/// (GitHub login rules); the name may use `*`, `?` and `[...]` globs.
pub const REPOSITORY_PATTERN_PATTERN: &str = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._*?\[\]!-]{1,100}$";

/// Pattern of a concrete repository full name `owner/name`.
pub const REPOSITORY_PATTERN: &str = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$";

/// Pattern of a price per million tokens: up to six fractional digits.
pub const PRICE_PATTERN: &str = r"^(0|[1-9][0-9]{0,6})(\.[0-9]{1,6})?$";

/// Pattern of a user or organization login (no bots).
pub const USER_OR_ORG_PATTERN: &str = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$";

/// Pattern of a GitHub login (user, bot or organization). Bots end in `[bot]`.
pub const LOGIN_PATTERN: &str = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})(\[bot\])?$";

/// Longest runner timeout: shorter than a GitHub App installation token's
/// one-hour life, so a pod can never outlive the token it was given.
pub const MAX_TIMEOUT_MINUTES: i32 = 55;

/// A reference to one key of a Secret in the policy's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as the policy.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Every CRD of the operator, in a stable order, as the apiserver receives them.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    vec![ClaudeRunPolicy::crd(), ClaudeRun::crd()]
}

/// The CRDs as one multi-document YAML stream: what `claude-operator crd` prints
/// and what `crds/` holds.
pub fn crds_yaml() -> String {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).expect("CRDs always serialize"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn sample_policy() -> ClaudeRunPolicy {
        serde_yaml::from_str(include_str!("../../config/samples/policy.yaml")).unwrap()
    }

    fn sample_run() -> ClaudeRun {
        serde_yaml::from_str(include_str!("../../config/samples/run.yaml")).unwrap()
    }

    fn crd_json(kind: &str) -> Value {
        let crd = crds().into_iter().find(|c| c.spec.names.kind == kind).unwrap();
        serde_json::to_value(crd).unwrap()
    }

    /// The schema node at a dotted path of property names below the version's root.
    fn schema_at<'a>(crd: &'a Value, path: &str) -> &'a Value {
        let mut node = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        for part in path.split('.') {
            node = if part == "[]" {
                &node["items"]
            } else {
                &node["properties"][part]
            };
            assert!(!node.is_null(), "no schema at {path} (stopped at {part})");
        }
        node
    }

    #[test]
    fn samples_parse_and_round_trip() {
        let policy = sample_policy();
        assert_eq!(policy.spec.repositories, ["acme/api", "acme/billing-*"]);
        assert_eq!(policy.spec.authorization.teams, ["acme/platform", "acme/backend"]);
        assert_eq!(policy.spec.budget.period, BudgetPeriod::Monthly);
        let back: ClaudeRunPolicy = serde_json::from_value(serde_json::to_value(&policy).unwrap()).unwrap();
        assert_eq!(back, policy);

        let run = sample_run();
        assert_eq!(run.spec.trigger.actor.type_, ActorType::User);
        assert_eq!(run.spec.trigger.author_association, AuthorAssociation::Member);
        let back: ClaudeRun = serde_json::from_value(serde_json::to_value(&run).unwrap()).unwrap();
        assert_eq!(back, run);
    }

    #[test]
    fn a_minimal_policy_gets_safe_defaults() {
        let spec: ClaudeRunPolicySpec = serde_json::from_value(json!({
            "repositories": ["acme/api"],
            "budget": {"maxCostPerRunUSD": "2", "limitUSD": "100"},
            "runner": {"image": "runner:1", "anthropicApiKeySecretRef": {"name": "a", "key": "k"}},
        }))
        .unwrap();
        assert_eq!(spec.triggers.phrase, "@claude");
        assert_eq!(spec.triggers.approval_phrase, "/claude approve");
        assert_eq!(spec.triggers.cancel_phrase, "/claude cancel");
        assert_eq!(spec.authorization.min_permission, Permission::Write);
        assert_eq!(spec.authorization.outsiders, OutsiderPolicy::Deny);
        assert!(spec.authorization.allow_bots.is_empty(), "no bot is allowed by default");
        assert!(!spec.authorization.allow_fork_write);
        assert_eq!(spec.authorization.approval_window_hours, 24);
        assert_eq!(
            spec.github
                .permissions
                .iter()
                .map(|(k, v)| (k.as_str(), *v))
                .collect::<Vec<_>>(),
            [
                ("contents", TokenAccess::Write),
                ("issues", TokenAccess::Write),
                ("pull_requests", TokenAccess::Write)
            ]
        );
        assert_eq!(spec.budget.period, BudgetPeriod::Monthly);
        assert_eq!(spec.budget.max_concurrent_runs, 3);
        assert_eq!(spec.runner.timeout_minutes, 30);
        assert!(spec.runner.timeout_minutes <= MAX_TIMEOUT_MINUTES);
        assert!(
            spec.network.allow_hosts.is_empty(),
            "no host beyond the gateway by default"
        );
        assert_eq!(spec.feedback, Feedback::Comment);
    }

    #[test]
    fn permissions_are_ordered_lowest_first() {
        use Permission::*;
        assert!(Read < Triage && Triage < Write && Write < Maintain && Maintain < Admin);
        let parsed: Vec<Permission> =
            serde_json::from_value(json!(["read", "triage", "write", "maintain", "admin"])).unwrap();
        assert_eq!(parsed, [Read, Triage, Write, Maintain, Admin]);
    }

    #[test]
    fn phases_classify_terminal_and_active() {
        use Phase::*;
        for p in [Succeeded, Failed, TimedOut, Denied, Cancelled] {
            assert!(p.is_terminal() && !p.is_active(), "{p:?}");
        }
        for p in [Admitted, Running] {
            assert!(p.is_active() && !p.is_terminal(), "{p:?}");
        }
        for p in [Pending, AwaitingApproval] {
            assert!(!p.is_active() && !p.is_terminal(), "{p:?}");
        }
    }

    #[test]
    fn names_scope_and_categories() {
        for (kind, plural, short) in [
            ("ClaudeRunPolicy", "clauderunpolicies", "crp"),
            ("ClaudeRun", "clauderuns", "crun"),
        ] {
            let crd = crd_json(kind);
            assert_eq!(crd["spec"]["group"], GROUP);
            assert_eq!(crd["spec"]["scope"], "Namespaced");
            assert_eq!(crd["spec"]["names"]["plural"], plural);
            assert_eq!(crd["spec"]["names"]["shortNames"], json!([short]));
            assert_eq!(crd["spec"]["names"]["categories"], json!(["claude"]));
            let version = &crd["spec"]["versions"][0];
            assert_eq!(version["name"], VERSION);
            assert_eq!(version["subresources"]["status"], json!({}));
        }
    }

    #[test]
    fn printer_columns() {
        let cols = |kind| -> Vec<String> {
            crd_json(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c.get("priority").is_none())
                .map(|c| c["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(cols("ClaudeRun"), ["Repository", "Actor", "Phase", "Cost", "Age"]);
        assert_eq!(
            cols("ClaudeRunPolicy"),
            ["Repositories", "Spent", "Limit", "Active", "Ready", "Age"]
        );
    }

    #[test]
    fn schema_carries_the_validation_rules() {
        let policy = crd_json("ClaudeRunPolicy");
        for field in ["budget.maxCostPerRunUSD", "budget.limitUSD"] {
            assert_eq!(
                schema_at(&policy, &format!("spec.{field}"))["pattern"],
                MONEY_PATTERN,
                "{field}"
            );
            assert_eq!(
                schema_at(&policy, &format!("spec.{field}"))["type"],
                "string",
                "{field}"
            );
        }
        let timeout = schema_at(&policy, "spec.runner.timeoutMinutes");
        assert_eq!(
            (timeout["minimum"].as_f64(), timeout["maximum"].as_f64()),
            (Some(1.0), Some(55.0))
        );
        for count in [
            "budget.maxConcurrentRuns",
            "budget.maxRunsPerUserPerHour",
            "runner.maxTurns",
        ] {
            assert_eq!(
                schema_at(&policy, &format!("spec.{count}"))["minimum"].as_f64(),
                Some(1.0),
                "{count}"
            );
        }
        assert_eq!(
            schema_at(&policy, "spec.repositories.[]")["pattern"],
            REPOSITORY_PATTERN_PATTERN
        );
        assert_eq!(schema_at(&policy, "spec.repositories")["minItems"].as_f64(), Some(1.0));
        assert_eq!(
            schema_at(&policy, "spec.budget.period")["enum"],
            json!(["Daily", "Weekly", "Monthly"])
        );
        assert_eq!(
            schema_at(&policy, "spec.authorization.minPermission")["enum"],
            json!(["read", "triage", "write", "maintain", "admin"])
        );
        assert_eq!(
            schema_at(&policy, "spec.authorization.outsiders")["enum"],
            json!(["Deny", "RequireApproval"])
        );
        // Token permissions: known names only, levels GitHub offers (CEL,
        // since a structural schema cannot constrain map keys).
        let permissions = schema_at(&policy, "spec.github.permissions");
        assert_eq!(permissions["additionalProperties"]["enum"], json!(["read", "write"]));
        assert_eq!(
            permissions["maxProperties"].as_u64(),
            Some(permissions::PERMISSIONS.len() as u64)
        );
        let rules = permissions["x-kubernetes-validations"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        for p in permissions::PERMISSIONS {
            assert!(
                rules[0]["rule"].as_str().unwrap().contains(&format!("'{}'", p.name)),
                "{}",
                p.name
            );
            let read_only = rules[1]["rule"].as_str().unwrap().contains(&format!("'{}'", p.name));
            assert_eq!(read_only, p.max == TokenAccess::Read, "{}", p.name);
        }
        assert!(permissions["description"].as_str().unwrap().contains("refuses a name"));

        let run = crd_json("ClaudeRun");
        let spec = schema_at(&run, "spec");
        assert_eq!(
            spec["x-kubernetes-validations"],
            json!([{"rule": "self == oldSelf", "message": "spec is immutable"}])
        );
        assert_eq!(
            schema_at(&run, "status.phase")["enum"],
            json!([
                "Pending",
                "AwaitingApproval",
                "Admitted",
                "Running",
                "Succeeded",
                "Failed",
                "TimedOut",
                "Denied",
                "Cancelled"
            ])
        );
        assert_eq!(schema_at(&run, "spec.repository")["pattern"], REPOSITORY_PATTERN);
        assert_eq!(schema_at(&run, "status.cost.usd")["pattern"], MONEY_STATUS_PATTERN);
    }

    #[test]
    fn patterns_accept_and_reject_what_the_docs_say() {
        let money = regex_lite(MONEY_PATTERN);
        for ok in ["0", "5", "5.0", "5.00", "1234567.99"] {
            assert!(money(ok), "{ok}");
        }
        for bad in ["-5.00", "5.001", "05", "", "1e3", "5.", "12345678"] {
            assert!(!money(bad), "{bad}");
        }
        let repo = regex_lite(REPOSITORY_PATTERN_PATTERN);
        for ok in ["acme/api", "acme/*", "my-org/billing-?", "a/b.c_d-e"] {
            assert!(repo(ok), "{ok}");
        }
        for bad in ["api", "/api", "acme/", "acme/api/x", "-acme/api", "ac me/api"] {
            assert!(!repo(bad), "{bad}");
        }
    }

    /// A matcher for the anchored patterns used here, with the `regex` crate
    /// (an RE2-like dialect, as the apiserver's Go regexp is).
    fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool {
        let re = regex::Regex::new(pattern).unwrap();
        move |s| re.is_match(s)
    }
}
