//! The GitHub App permissions a policy's token may name: GitHub's names, the
//! highest level GitHub offers for each, and the most a token gets without
//! the cluster admin's leave. The CRD schema admits only these names and
//! levels (so an unknown or misspelt permission is refused at create);
//! tenancy (`crate::tenancy`) decides which of them a namespace may use.

use serde_json::{Value, json};

use super::TokenAccess;

/// A GitHub App permission the operator knows: its name, the highest level
/// GitHub offers for it, and the most a token gets without the cluster
/// admin's leave (`None`: dangerous, never without it).
pub struct KnownPermission {
    /// GitHub's name, as in `POST /app/installations/{id}/access_tokens`.
    pub name: &'static str,
    /// The highest level GitHub offers.
    pub max: TokenAccess,
    /// The ceiling without a tenancy grant that names it.
    pub default_ceiling: Option<TokenAccess>,
}

const fn known(name: &'static str, max: TokenAccess, default_ceiling: Option<TokenAccess>) -> KnownPermission {
    KnownPermission {
        name,
        max,
        default_ceiling,
    }
}

use TokenAccess::{Read as R, Write as W};

/// Every permission name a policy may ask for. The dangerous ones change
/// what runs on the repository's CI (`workflows`), its settings and
/// protections (`administration`, `repository_hooks`, `environments`), read
/// or write credentials (`secrets`, `dependabot_secrets`,
/// `secret_scanning_alerts`), or reach beyond the repository (`members`,
/// `organization_*`, `codespaces`).
pub const PERMISSIONS: &[KnownPermission] = &[
    known("contents", W, Some(W)),
    known("pull_requests", W, Some(W)),
    known("issues", W, Some(W)),
    known("metadata", R, Some(R)),
    known("checks", W, Some(W)),
    known("statuses", W, Some(W)),
    known("discussions", W, Some(W)),
    // Write re-runs and cancels workflows and deletes their logs.
    known("actions", W, Some(R)),
    known("deployments", W, Some(R)),
    known("pages", W, Some(R)),
    known("packages", W, Some(R)),
    known("security_events", W, Some(R)),
    known("vulnerability_alerts", W, Some(R)),
    known("repository_projects", W, Some(R)),
    known("merge_queues", W, Some(R)),
    known("workflows", W, None),
    known("administration", W, None),
    known("secrets", W, None),
    known("dependabot_secrets", W, None),
    known("secret_scanning_alerts", W, None),
    known("environments", W, None),
    known("repository_hooks", W, None),
    known("single_file", W, None),
    known("codespaces", W, None),
    known("members", W, None),
    known("team_discussions", W, None),
    known("organization_administration", W, None),
    known("organization_hooks", W, None),
    known("organization_packages", W, None),
    known("organization_plan", R, None),
    known("organization_projects", W, None),
    known("organization_secrets", W, None),
    known("organization_self_hosted_runners", W, None),
    known("organization_user_blocking", W, None),
];

/// The known permission of this name.
pub fn known_permission(name: &str) -> Option<&'static KnownPermission> {
    PERMISSIONS.iter().find(|p| p.name == name)
}

/// The CEL list literal of the given names: `['contents', 'issues']`.
fn cel_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = names.map(|n| format!("'{n}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The schema of `spec.github.permissions`: a map from a known permission
/// name to `read` or `write`, at a level GitHub offers. Kubernetes' structural
/// schemas cannot constrain map keys (no `propertyNames`), so the names are
/// CEL rules the apiserver checks at create and update; a bad name is refused
/// whatever `fieldValidation` the client asks for. Dangerous names stay
/// admissible here: the cluster admin may grant them per namespace, and
/// tenancy refuses them everywhere else.
pub fn permissions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names = cel_list(PERMISSIONS.iter().map(|p| p.name));
    let read_only = cel_list(
        PERMISSIONS
            .iter()
            .filter(|p| p.max == TokenAccess::Read)
            .map(|p| p.name),
    );
    let schema: Value = json!({
        "type": "object",
        "maxProperties": PERMISSIONS.len(),
        "additionalProperties": {"type": "string", "enum": ["read", "write"]},
        "x-kubernetes-validations": [
            {
                "rule": format!("self.all(k, k in {names})"),
                // The first offender only: a join over keys of unbounded
                // length would exceed the apiserver's cost budget.
                "messageExpression": format!(
                    "'not a GitHub App permission the operator knows: ' + self.filter(k, !(k in {names}))[0]"
                ),
            },
            {
                "rule": format!("self.all(k, !(k in {read_only}) || self[k] == 'read')"),
                "messageExpression": format!(
                    "'GitHub offers only read for: ' + self.filter(k, k in {read_only} && self[k] != 'read')[0]"
                ),
            },
        ],
    });
    schemars::Schema::try_from(schema).expect("a JSON object is a schema")
}
