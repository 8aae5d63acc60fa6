//! `ClaudeRun`: one trigger, and everything that happened to it: the admission
//! decision, the sandbox it ran in, and what it cost. The spec is the trigger
//! as GitHub delivered it and cannot change after creation.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// One Claude Code run started by a trigger, and its outcome and cost.
// clippy misreads the repeated `type_ = ...` of printcolumn(...) as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "claude-operator.dev",
    version = "v1alpha1",
    kind = "ClaudeRun",
    namespaced,
    shortname = "crun",
    category = "claude",
    status = "ClaudeRunStatus",
    derive = "PartialEq",
    doc = "One Claude Code run started by a trigger on GitHub, with its admission decision, sandbox and cost.",
    printcolumn(name = "Repository", type_ = "string", json_path = ".spec.repository"),
    printcolumn(name = "Actor", type_ = "string", json_path = ".spec.trigger.actor.login"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Cost", type_ = "string", json_path = ".status.cost.usd"),
    printcolumn(name = "Turns", type_ = "integer", json_path = ".status.cost.turns", priority = 1),
    printcolumn(name = "LastTool", type_ = "string", json_path = ".status.lastTool", priority = 1),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.admission.reason",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    selectable = ".spec.policyName",
    selectable = ".status.phase"
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable"))]
#[serde(rename_all = "camelCase")]
pub struct ClaudeRunSpec {
    /// The ClaudeRunPolicy, in the same namespace, that governs this run.
    #[schemars(length(min = 1, max = 253))]
    pub policy_name: String,

    /// The repository, `owner/name`.
    #[schemars(pattern(crate::api::REPOSITORY_PATTERN))]
    pub repository: String,

    /// What started the run, as GitHub reported it.
    pub trigger: Trigger,

    /// What Claude is asked to do: the trigger's text after the phrase, with
    /// hidden content removed, plus the issue or pull request context. Data,
    /// never part of a command line.
    #[schemars(length(max = 65536))]
    pub prompt: String,

    /// Who created a Manual run: the Kubernetes identity exactly as the
    /// apiserver authenticated the create request (the chart's admission
    /// policy refuses a Manual run whose requester differs from
    /// `request.userInfo`). Manual runs are authorized as this identity under
    /// the policy's `authorization.manualRuns`, never as `trigger.actor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<Requester>,
}

/// A Kubernetes identity, as in an admission request's `userInfo`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Requester {
    /// `request.userInfo.username`.
    #[schemars(length(min = 1, max = 253))]
    pub username: String,
    /// `request.userInfo.groups`, all of them.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub groups: Vec<String>,
}

/// Where a run came from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum TriggerSource {
    /// A verified GitHub webhook delivery, created by the operator's receiver.
    GitHubWebhook,
    /// Created by hand with kubectl.
    Manual,
}

/// GitHub's classification of a user.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ActorType {
    /// A person.
    User,
    /// A GitHub App or other bot account.
    Bot,
    /// An organization.
    Organization,
}

/// The relation of the author to the repository as the webhook states it.
/// Only a pre-filter: `COLLABORATOR` includes read-only collaborators.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorAssociation {
    /// Owner of the repository.
    Owner,
    /// Member of the organization that owns the repository.
    Member,
    /// Invited collaborator (any permission, read-only included).
    Collaborator,
    /// Has contributed before.
    Contributor,
    /// First contribution to this repository.
    FirstTimeContributor,
    /// First contribution on GitHub.
    FirstTimer,
    /// A placeholder for an imported user.
    Mannequin,
    /// No relation.
    None,
}

/// The account that triggered the run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    /// GitHub login.
    #[schemars(pattern(crate::api::LOGIN_PATTERN))]
    pub login: String,
    /// GitHub's numeric id, which survives renames.
    pub id: i64,
    /// User, Bot or Organization, from the payload's `sender`.
    #[serde(rename = "type")]
    pub type_: ActorType,
}

/// The trigger as GitHub delivered it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    /// Where the run came from.
    pub source: TriggerSource,
    /// The `X-GitHub-Event` header (`issue_comment`, `issues`, ...).
    #[schemars(length(max = 64))]
    pub event: String,
    /// The payload's `action` (`created`, `opened`, ...).
    #[schemars(length(max = 64))]
    pub action: String,
    /// The `X-GitHub-Delivery` header, for audit. The run's name derives
    /// from the signed body instead (a replay under a new delivery id finds
    /// the run already there).
    #[schemars(length(max = 128))]
    pub delivery_id: String,
    /// Who triggered the run.
    pub actor: Actor,
    /// The author's association with the repository, as the payload states it.
    pub author_association: AuthorAssociation,
    /// Number of the issue or pull request.
    #[schemars(range(min = 1))]
    pub number: i64,
    /// Whether `number` is a pull request.
    #[serde(default)]
    pub is_pull_request: bool,
    /// Title of the issue or pull request.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub title: String,
    /// Web URL of the issue or pull request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html_url: Option<String>,
    /// Id of the triggering comment or review, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment_id: Option<i64>,
    /// Web URL of the triggering comment or review, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment_url: Option<String>,
    /// Head commit of the pull request, if the trigger is on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9a-f]{40}$"))]
    pub head_sha: Option<String>,
    /// Head branch of the pull request, if the trigger is on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_ref: Option<String>,
    /// Whether the pull request comes from a fork. Such runs get a read-only token.
    #[serde(default)]
    pub fork: bool,
}

impl Trigger {
    /// Whether the run is an automatic pull request review (a `pull_request`
    /// event): read-only for code, it posts one review and pushes nothing.
    pub fn is_review(&self) -> bool {
        self.is_pull_request && self.event == "pull_request"
    }
}

/// Where a run is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema, Default)]
pub enum Phase {
    /// Created, not yet decided.
    #[default]
    Pending,
    /// Waiting for an authorized person to approve it.
    AwaitingApproval,
    /// Admitted; its sandbox is being created or waits for quota.
    Admitted,
    /// Its pod runs.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Stopped by its deadline.
    TimedOut,
    /// Not admitted; see `status.admission`.
    Denied,
    /// Stopped before it finished.
    Cancelled,
}

impl Phase {
    /// Whether the run is over: nothing more will happen to it but cleanup.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::Failed | Phase::TimedOut | Phase::Denied | Phase::Cancelled
        )
    }

    /// Whether the run holds a budget reservation and a concurrency slot.
    pub fn is_active(self) -> bool {
        matches!(self, Phase::Admitted | Phase::Running)
    }
}

/// An admission outcome.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum Decision {
    /// The run may proceed.
    Admit,
    /// The run waits for approval.
    AwaitApproval,
    /// The run is refused.
    Deny,
}

/// The admission decision and why.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Admission {
    /// The outcome.
    pub decision: Decision,
    /// Machine-readable reason (`InsufficientPermission`, `BudgetExhausted`, ...).
    pub reason: String,
    /// What a person should know.
    pub message: String,
    /// When the decision was made.
    pub checked_at: Time,
    /// Who approved the run, when it needed approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

/// Where a cost figure came from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum CostSource {
    /// The runner reported the cost Claude Code computed.
    Reported,
    /// Computed by the operator from reported token usage and the price table.
    Computed,
    /// No usable report: the run was charged its full reservation.
    Estimated,
    /// Metered by the gateway from the model API's own usage figures (while
    /// the run runs: so far; when it ended: settled plus open reservations).
    Metered,
}

/// What a run cost.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    /// US dollars, exact decimal.
    #[schemars(pattern(crate::api::MONEY_STATUS_PATTERN))]
    pub usd: String,
    /// Input tokens.
    #[serde(default)]
    pub input_tokens: i64,
    /// Output tokens.
    #[serde(default)]
    pub output_tokens: i64,
    /// Tokens written to the prompt cache.
    #[serde(default)]
    pub cache_creation_input_tokens: i64,
    /// Tokens read from the prompt cache.
    #[serde(default)]
    pub cache_read_input_tokens: i64,
    /// Agent turns.
    #[serde(default)]
    pub turns: i32,
    /// Models used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Where the figure came from.
    pub source: CostSource,
}

/// Observed state of a run. Never holds a token or key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClaudeRunStatus {
    /// Where the run is in its life.
    #[serde(default)]
    pub phase: Phase,
    /// The admission decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admission: Option<Admission>,
    /// The runner pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The uid of the runner pod the controller created: a pod of the same
    /// name with another uid is not the run's and is never followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The Secret holding the run's capability and prompt (no credential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The NetworkPolicy fencing the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy_name: Option<String>,
    /// When the run's GitHub token expires (the token itself is never recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<Time>,
    /// How many GitHub tokens may have been minted for this run: recorded
    /// before each mint, so it is an upper bound that survives a crash. More
    /// than one means a mint's answer was lost (operator restart or a failed
    /// call); such a token never reached anyone, cannot be found to be
    /// revoked, and expires within the hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub token_mints: Option<i32>,
    /// Budget held for this run while it is active, in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "reservedUSD")]
    pub reserved_usd: Option<String>,
    /// When the pod started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run reached a terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// What the run cost, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
    /// The last tool the agent asked for, as the gateway saw it in the
    /// model's answers (while the run goes: live progress with `cost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub last_tool: Option<String>,
    /// The runner's outcome (`success`, `error_max_turns`, ...) or the pod's failure reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Whether the run's cost is in its policy's ledger
    /// (`status.ledger` of the policy). Set only after the ledger holds it;
    /// retention deletes a run with a cost only once this is set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub charged: bool,
    /// Approval comments checked with GitHub, each once (at most 20, the
    /// latest kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalCheck>,
    /// Id of the status comment the operator keeps on GitHub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback_comment_id: Option<i64>,
    /// Conditions: `Admitted`, `SandboxReady`, `WaitingForQuota`, `CostRecorded`, `TokenRevoked`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// An approval comment the controller checked with GitHub.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalCheck {
    /// Who wrote the comment.
    pub login: String,
    /// The comment's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment_id: Option<i64>,
    /// Whether the comment approved the run.
    pub accepted: bool,
    /// Why not, when it did not (machine-readable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was checked.
    pub checked_at: Time,
}
