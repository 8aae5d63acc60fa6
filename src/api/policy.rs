//! `ClaudeRunPolicy`: who may start runs on which repositories, with what token,
//! in what sandbox and on what budget. The namespace of a policy is the sandbox
//! boundary: its runs and their pods, secrets and network policies live there.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// Who may trigger Claude Code runs on which repositories, and within what limits.
// clippy misreads the repeated `type_ = ...` of printcolumn(...) as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "claude-operator.dev",
    version = "v1alpha1",
    kind = "ClaudeRunPolicy",
    namespaced,
    shortname = "crp",
    category = "claude",
    status = "ClaudeRunPolicyStatus",
    derive = "PartialEq",
    doc = "Who may trigger Claude Code runs on which GitHub repositories, with what token, sandbox and budget.",
    printcolumn(name = "Repositories", type_ = "string", json_path = ".spec.repositories"),
    printcolumn(name = "Spent", type_ = "string", json_path = ".status.budget.spentUSD"),
    printcolumn(name = "Limit", type_ = "string", json_path = ".spec.budget.limitUSD"),
    printcolumn(name = "Active", type_ = "integer", json_path = ".status.activeRuns"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ClaudeRunPolicySpec {
    /// Repositories this policy covers, as `owner/name` patterns; the name may
    /// use globs (`acme/*`, `acme/api-?`). Exactly one policy should match a
    /// repository: a trigger matched by several policies is ignored and the
    /// overlap is reported on their status.
    #[schemars(length(min = 1, max = 100), inner(pattern(crate::api::REPOSITORY_PATTERN_PATTERN)))]
    pub repositories: Vec<String>,

    /// What counts as a trigger.
    #[serde(default)]
    pub triggers: Triggers,

    /// Who may start a run.
    #[serde(default)]
    pub authorization: Authorization,

    /// What the per-run GitHub token may do.
    #[serde(default)]
    pub github: GitHubAccess,

    /// Money and concurrency limits.
    pub budget: Budget,

    /// How the runner pod is run.
    pub runner: Runner,

    /// Where the runner pod may connect to.
    #[serde(default)]
    pub network: Network,

    /// ResourceQuota and LimitRange the operator keeps in the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,

    /// How long finished runs are kept.
    #[serde(default)]
    pub retention: Retention,

    /// How outcomes are reported back on GitHub.
    #[serde(default)]
    pub feedback: Feedback,

    /// What of the GitHub thread (title, body, comments, a pull request's
    /// files and diff) the prompt carries, marked as untrusted data.
    #[serde(default)]
    pub context: ThreadContext,
}

/// What of the GitHub thread the prompt carries.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThreadContext {
    /// Whose words the prompt carries: `All` (default), or `Authorized`:
    /// only the body and comments of people who pass this policy's
    /// authorization on their own (checked with GitHub as an approver is),
    /// and the earlier runs' answers.
    #[serde(default)]
    pub thread: ThreadAuthors,
    /// Most bytes of thread context in a prompt (the oldest comments are
    /// dropped first, then the diff is left out and the body cut); 0 carries
    /// none. Default 40960.
    #[serde(default = "default_context_bytes")]
    #[schemars(range(min = 0, max = 49152))]
    pub max_bytes: i32,
}

fn default_context_bytes() -> i32 {
    40 * 1024
}

impl Default for ThreadContext {
    fn default() -> Self {
        Self {
            thread: ThreadAuthors::default(),
            max_bytes: default_context_bytes(),
        }
    }
}

/// Whose words of the thread a prompt carries.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ThreadAuthors {
    /// Everyone's (each marked with author and association).
    #[default]
    All,
    /// Only of people who pass the policy's authorization, and earlier runs'.
    Authorized,
}

/// GitHub events that can carry a trigger.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum TriggerEvent {
    /// A new comment on an issue or a pull request (`issue_comment` `created`).
    IssueComment,
    /// A new comment on a pull request's diff (`pull_request_review_comment` `created`).
    PullRequestReviewComment,
    /// A submitted pull request review with a body (`pull_request_review` `submitted`).
    PullRequestReview,
    /// A new issue whose body holds the phrase (`issues` `opened`).
    IssueOpened,
    /// An issue assigned to `triggers.assignee` (`issues` `assigned`).
    IssueAssigned,
    /// An issue labelled with `triggers.label` (`issues` `labeled`).
    IssueLabeled,
    /// A pull request opened (`pull_request` `opened`): an automatic review
    /// under `triggers.review`.
    PullRequestOpened,
    /// New commits on a pull request (`pull_request` `synchronize`): an
    /// automatic review, which supersedes (cancels) a review still going for
    /// the same pull request.
    PullRequestSynchronize,
    /// A draft pull request marked ready (`pull_request` `ready_for_review`).
    PullRequestReadyForReview,
    /// A pull request labelled with `triggers.review.label` (`pull_request`
    /// `labeled`).
    PullRequestLabeled,
}

impl TriggerEvent {
    /// Whether this event asks for an automatic pull request review (a
    /// read-only run that posts one review) rather than a task.
    pub fn is_review(self) -> bool {
        matches!(
            self,
            TriggerEvent::PullRequestOpened
                | TriggerEvent::PullRequestSynchronize
                | TriggerEvent::PullRequestReadyForReview
                | TriggerEvent::PullRequestLabeled
        )
    }
}

/// What counts as a trigger. Edited and deleted comments, and the operator's
/// own comments, never do.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Triggers {
    /// The phrase that starts a run, matched case-insensitively at a word
    /// boundary, outside quoted replies and code.
    #[serde(default = "default_phrase")]
    #[schemars(length(min = 2, max = 64))]
    pub phrase: String,

    /// The comment that approves a run waiting for approval (see
    /// `authorization.outsiders`).
    #[serde(default = "default_approval_phrase")]
    #[schemars(length(min = 2, max = 64))]
    pub approval_phrase: String,

    /// The comment that cancels the runs still going on its issue or pull
    /// request, when written by a run's own trigger author or by someone
    /// GitHub says has write access (closing the issue or pull request
    /// cancels them too).
    #[serde(default = "default_cancel_phrase")]
    #[schemars(length(min = 2, max = 64))]
    pub cancel_phrase: String,

    /// Events that may trigger a run. `IssueAssigned` and `IssueLabeled` also
    /// need `assignee` and `label`.
    #[serde(default = "default_events")]
    pub events: Vec<TriggerEvent>,

    /// Label whose addition to an issue triggers a run (with `IssueLabeled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 50))]
    pub label: Option<String>,

    /// Login whose assignment to an issue triggers a run (with `IssueAssigned`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(crate::api::LOGIN_PATTERN))]
    pub assignee: Option<String>,

    /// Which pull requests get an automatic review (with the `PullRequest*`
    /// events). The pull request's sender is authorized exactly like a
    /// comment's author (a stranger's pull request is reviewed only under
    /// `outsiders: RequireApproval`, once approved).
    #[serde(default)]
    pub review: ReviewTriggers,
}

/// Filters of automatic pull request reviews. A review run is read-only for
/// code (its token reads contents, it pushes nothing) and posts one pull
/// request review, with line comments, through the gateway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReviewTriggers {
    /// Paths (globs over the repository's tree, `**` for any depth): only a
    /// pull request changing at least one of them is reviewed (its files as
    /// GitHub lists them). Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 256)))]
    pub paths: Vec<String>,
    /// Base branches (globs, such as `main` or `release/*`) whose pull
    /// requests are reviewed. Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 256)))]
    pub base_branches: Vec<String>,
    /// Skip draft pull requests (they get their review when marked ready).
    #[serde(default = "default_true")]
    pub skip_drafts: bool,
    /// Label whose addition to a pull request asks for a review (with
    /// `PullRequestLabeled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 50))]
    pub label: Option<String>,
    /// What the review should look at, in place of the built-in request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8192))]
    pub instructions: Option<String>,
}

fn default_true() -> bool {
    true
}

impl Default for ReviewTriggers {
    fn default() -> Self {
        Self {
            paths: vec![],
            base_branches: vec![],
            skip_drafts: true,
            label: None,
            instructions: None,
        }
    }
}

fn default_phrase() -> String {
    "@claude".into()
}
fn default_approval_phrase() -> String {
    "/claude approve".into()
}
fn default_cancel_phrase() -> String {
    "/claude cancel".into()
}
fn default_events() -> Vec<TriggerEvent> {
    vec![
        TriggerEvent::IssueComment,
        TriggerEvent::PullRequestReviewComment,
        TriggerEvent::PullRequestReview,
        TriggerEvent::IssueOpened,
        TriggerEvent::IssueAssigned,
        TriggerEvent::IssueLabeled,
    ]
}

impl Default for Triggers {
    fn default() -> Self {
        Self {
            phrase: default_phrase(),
            approval_phrase: default_approval_phrase(),
            cancel_phrase: default_cancel_phrase(),
            events: default_events(),
            label: None,
            assignee: None,
            review: ReviewTriggers::default(),
        }
    }
}

/// A repository permission level, lowest first. GitHub's `role_name` answers
/// in these terms; `triage` and `maintain` sit between the classic levels.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Can read and clone.
    Read,
    /// Can manage issues and pull requests without write access.
    Triage,
    /// Can push.
    #[default]
    Write,
    /// Can manage the repository without admin rights.
    Maintain,
    /// Full control.
    Admin,
}

/// What happens to a trigger from someone who does not pass `authorization`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum OutsiderPolicy {
    /// The run is denied with a reason.
    #[default]
    Deny,
    /// The run waits until an authorized person comments the approval phrase
    /// on the same issue or pull request, within the approval window.
    RequireApproval,
}

/// Who may start a run. Every check is made against GitHub by the controller;
/// the webhook's `author_association` is only a pre-filter.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// Minimum permission of the actor on the repository.
    #[serde(default)]
    pub min_permission: Permission,

    /// Organizations the actor must be a member of (all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(crate::api::USER_OR_ORG_PATTERN)))]
    pub organizations: Vec<String>,

    /// Teams, as `org/team-slug`, the actor must be an active member of (any one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[a-z0-9][a-z0-9_-]{0,99}$")))]
    pub teams: Vec<String>,

    /// Logins allowed even without the organization and team requirements.
    /// They must still be real users with `minPermission` on the repository.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(crate::api::USER_OR_ORG_PATTERN)))]
    pub allow_users: Vec<String>,

    /// Logins that are always denied, whatever else they pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(crate::api::LOGIN_PATTERN)))]
    pub deny_users: Vec<String>,

    /// Bot accounts (`name[bot]`) allowed to trigger runs. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})\[bot\]$")))]
    pub allow_bots: Vec<String>,

    /// What happens to triggers from people who do not pass these checks.
    #[serde(default)]
    pub outsiders: OutsiderPolicy,

    /// Whose runs need an authorized person's approval comment before they
    /// start: `Outsiders` (only those `outsiders: RequireApproval` lets
    /// wait) or `All` (every run from GitHub, members' too: a gradual
    /// rollout). The same approval phrase, window and checks either way; a
    /// trigger's own author never approves it. Manual runs are authorized by
    /// their Kubernetes identity and never wait.
    #[serde(default)]
    pub require_approval: ApprovalRequirement,

    /// Most runs of outsiders that may wait for approval at once on one
    /// repository. A trigger past it is denied `TooManyWaitingRuns`.
    #[serde(default = "default_max_waiting_runs")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_waiting_runs: i32,

    /// How long a run waits for approval before it is denied, in hours.
    #[serde(default = "default_approval_window_hours")]
    #[schemars(range(min = 1, max = 168))]
    pub approval_window_hours: i32,

    /// Give runs on pull requests from forks the policy's write permissions.
    /// Dangerous: the fork's code then runs with a token that can push here.
    #[serde(default)]
    pub allow_fork_write: bool,

    /// Kubernetes users and groups that may start runs by hand (`ClaudeRun`s
    /// whose `trigger.source` is `Manual`). Default none. The identity is the
    /// one the apiserver authenticated when the run was created, never a
    /// login typed into the run's spec.
    #[serde(default, skip_serializing_if = "ManualRuns::is_empty")]
    pub manual_runs: ManualRuns,
}

/// Who may start manual runs: Kubernetes identities, as the apiserver
/// authenticated them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ManualRuns {
    /// Kubernetes user names (as in `request.userInfo.username`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Kubernetes groups (as in `request.userInfo.groups`); a member of any one may.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl ManualRuns {
    /// Whether nobody may start manual runs.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.groups.is_empty()
    }
}

fn default_approval_window_hours() -> i32 {
    24
}

fn default_max_waiting_runs() -> i32 {
    10
}

/// Whose runs wait for an approval comment (see `authorization.requireApproval`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ApprovalRequirement {
    /// Only outsiders' runs, under `outsiders: RequireApproval`.
    #[default]
    Outsiders,
    /// Every run triggered on GitHub.
    All,
}

impl Default for Authorization {
    fn default() -> Self {
        Self {
            min_permission: Permission::default(),
            organizations: vec![],
            teams: vec![],
            allow_users: vec![],
            deny_users: vec![],
            allow_bots: vec![],
            outsiders: OutsiderPolicy::default(),
            require_approval: ApprovalRequirement::default(),
            max_waiting_runs: default_max_waiting_runs(),
            approval_window_hours: default_approval_window_hours(),
            allow_fork_write: false,
            manual_runs: ManualRuns::default(),
        }
    }
}

/// An installation token permission level.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenAccess {
    /// Read only.
    Read,
    /// Read and write.
    Write,
}

/// The GitHub token each run gets: minted per run, scoped to the run's one
/// repository, expiring within the hour, revoked when the run ends.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitHubAccess {
    /// GitHub App permissions of the run's token (GitHub's names, such as
    /// `contents`, `pull_requests`, `issues`; the apiserver refuses a name
    /// the operator does not know, and `write` where GitHub offers only
    /// `read`). Runs on pull requests from forks get read-only access
    /// whatever this says, unless `authorization.allowForkWrite` is set.
    #[serde(default = "default_permissions")]
    #[schemars(schema_with = "crate::api::permissions::permissions_schema")]
    pub permissions: BTreeMap<String, TokenAccess>,

    /// The GitHub App installation to use. Looked up from the repository
    /// when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub installation_id: Option<i64>,

    /// Paths (globs over the repository's tree, `**` for any depth) a run may
    /// never change: the gateway refuses a push whose commits touch one.
    #[serde(default = "default_protected_paths")]
    #[schemars(inner(length(min = 1, max = 256)))]
    pub protected_paths: Vec<String>,

    /// Where a run on a pull request pushes its commits: `NewBranch` (its
    /// own `claude/<run>` branch) or `PullRequestBranch` (the pull request's
    /// own head branch, fast-forward only). Runs on issues always push to
    /// `claude/<run>` and open a draft pull request.
    #[serde(default)]
    pub pull_request_push: PullRequestPush,
}

/// Where a run on a pull request pushes (see `github.pullRequestPush`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum PullRequestPush {
    /// A new branch `claude/<run>`, named in a comment on the pull request.
    #[default]
    NewBranch,
    /// The pull request's own head branch, only when it lives in the same
    /// repository (GitHub's answer, never the payload's) and is not the
    /// repository's default branch; the gateway lets the run push exactly
    /// that branch, fast-forward only. A pull request from a fork stays
    /// read-only; one whose head is the default branch gets `claude/<run>`.
    PullRequestBranch,
}

fn default_protected_paths() -> Vec<String> {
    vec![".github/**".into()]
}

fn default_permissions() -> BTreeMap<String, TokenAccess> {
    ["contents", "pull_requests", "issues"]
        .into_iter()
        .map(|p| (p.to_owned(), TokenAccess::Write))
        .collect()
}

impl Default for GitHubAccess {
    fn default() -> Self {
        Self {
            permissions: default_permissions(),
            installation_id: None,
            protected_paths: default_protected_paths(),
            pull_request_push: PullRequestPush::default(),
        }
    }
}

/// The length of a budget period.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum BudgetPeriod {
    /// A calendar day.
    Daily,
    /// An ISO week, starting on Monday.
    Weekly,
    /// A calendar month.
    #[default]
    Monthly,
}

/// Money and concurrency limits. Amounts are US dollars as decimal strings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// Most one run may spend (passed to Claude Code as `--max-budget-usd`).
    /// Reserved for every active run at admission.
    #[serde(rename = "maxCostPerRunUSD")]
    #[schemars(pattern(crate::api::MONEY_PATTERN))]
    pub max_cost_per_run_usd: String,

    /// Most all runs of the policy may spend in one period.
    #[serde(rename = "limitUSD")]
    #[schemars(pattern(crate::api::MONEY_PATTERN))]
    pub limit_usd: String,

    /// The budget period.
    #[serde(default)]
    pub period: BudgetPeriod,

    /// IANA time zone in which periods start (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,

    /// Most runs active at once.
    #[serde(default = "default_max_concurrent_runs")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrent_runs: i32,

    /// Most runs one actor may start in an hour.
    #[serde(default = "default_max_runs_per_user_per_hour")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_runs_per_user_per_hour: i32,

    /// Prices that replace the built-in table for the named models, used when
    /// a runner reports usage but no cost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prices: Vec<ModelPrice>,
}

fn default_max_concurrent_runs() -> i32 {
    3
}
fn default_max_runs_per_user_per_hour() -> i32 {
    10
}

/// A model's prices in US dollars per million tokens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelPrice {
    /// Model name, or a prefix of it ending in `*`.
    #[schemars(length(min = 1, max = 128))]
    pub model: String,
    /// Input tokens.
    #[serde(rename = "inputUSD")]
    #[schemars(pattern(crate::api::PRICE_PATTERN))]
    pub input_usd: String,
    /// Output tokens.
    #[serde(rename = "outputUSD")]
    #[schemars(pattern(crate::api::PRICE_PATTERN))]
    pub output_usd: String,
    /// Cache writes with a five-minute life.
    #[serde(rename = "cacheWrite5mUSD")]
    #[schemars(pattern(crate::api::PRICE_PATTERN))]
    pub cache_write_5m_usd: String,
    /// Cache writes with a one-hour life.
    #[serde(rename = "cacheWrite1hUSD")]
    #[schemars(pattern(crate::api::PRICE_PATTERN))]
    pub cache_write_1h_usd: String,
    /// Cache reads.
    #[serde(rename = "cacheReadUSD")]
    #[schemars(pattern(crate::api::PRICE_PATTERN))]
    pub cache_read_usd: String,
}

/// How the runner pod is run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Runner {
    /// Runner image: git, the Claude Code CLI and `claude-operator runner`.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// Claude model to use.
    #[serde(default = "default_model")]
    #[schemars(length(min = 1, max = 128))]
    pub model: String,

    /// Most agent turns (`--max-turns`).
    #[serde(default = "default_max_turns")]
    #[schemars(range(min = 1, max = 500))]
    pub max_turns: i32,

    /// Wall-clock limit of the pod, in minutes. At most 55, so the pod always
    /// ends before its one-hour GitHub token expires.
    #[serde(default = "default_timeout_minutes")]
    #[schemars(range(min = 1, max = 55))]
    pub timeout_minutes: i32,

    /// Tools Claude Code may use (`--allowedTools`), for example `Read`, `Edit`,
    /// `Bash(git diff:*)`.
    #[serde(default = "default_allowed_tools")]
    pub allowed_tools: Vec<String>,

    /// The Secret key holding the Anthropic API key. The Secret is in the
    /// GATEWAY's namespace (`--gateway-namespace`), never in the run's: the
    /// controller copies the key into each run's grant there, and the runner
    /// pod never sees it.
    pub anthropic_api_key_secret_ref: SecretKeyRef,

    /// Compute resources of the runner container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// RuntimeClass of the pod, for example `gvisor` or `kata` where the
    /// cluster has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,

    /// Node selector of the pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// PriorityClass of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,

    /// Size limit of the pod's work space (the clone and Claude's scratch files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_size_limit: Option<Quantity>,

    /// Models (globs such as `claude-haiku-*`) the gateway lets the run use
    /// besides `model`. Default none: only `model`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 128)))]
    pub allowed_models: Vec<String>,
}

fn default_model() -> String {
    "claude-sonnet-4-5".into()
}
fn default_max_turns() -> i32 {
    30
}
fn default_timeout_minutes() -> i32 {
    30
}
fn default_allowed_tools() -> Vec<String> {
    [
        "Read",
        "Edit",
        "Write",
        "Glob",
        "Grep",
        "Bash(git diff:*)",
        "Bash(git status:*)",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// What the runner pod may reach. The pod itself may open connections to
/// the gateway only (its NetworkPolicy allows nothing else, not even DNS);
/// the gateway serves the model API, git and GitHub for the run, and opens
/// the hosts listed here for the agent's tools.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// Hosts the agent's tools may reach through the gateway's CONNECT proxy
    /// (package registries and the like). Nothing else is reachable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_hosts: Vec<AllowHost>,
}

/// One host (or host pattern) the gateway's CONNECT proxy may open.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowHost {
    /// A DNS name, `*.` followed by a DNS name (any subdomain), or an IP
    /// address. Only an exact name or address may resolve to a loopback,
    /// private, link-local or cluster address; a wildcard never does.
    #[schemars(length(min = 1, max = 253))]
    #[schemars(pattern(r"^(\*\.)?[A-Za-z0-9.:-]+$"))]
    pub host: String,
    /// TCP ports; empty means 443 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 1, max = 65535)))]
    pub ports: Vec<i32>,
}

/// ResourceQuota and LimitRange kept in the policy's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    /// Hard limits of the namespace's ResourceQuota (for example `pods`,
    /// `requests.cpu`, `limits.memory`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hard: BTreeMap<String, Quantity>,
    /// Default limits for containers that set none (LimitRange).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub default_limits: BTreeMap<String, Quantity>,
    /// Default requests for containers that set none (LimitRange).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub default_requests: BTreeMap<String, Quantity>,
}

/// How long runs are kept after they end. A run with a cost is kept, whatever
/// this says, until its cost is in the policy's spend ledger
/// (`status.ledger`); deleting runs never lowers the spend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Hours a succeeded run is kept.
    #[serde(default = "default_succeeded_hours")]
    #[schemars(range(min = 0, max = 8760))]
    pub succeeded_hours: i32,
    /// Hours a failed, timed-out or cancelled run is kept.
    #[serde(default = "default_failed_hours")]
    #[schemars(range(min = 0, max = 8760))]
    pub failed_hours: i32,
    /// Hours a denied run is kept.
    #[serde(default = "default_denied_hours")]
    #[schemars(range(min = 0, max = 8760))]
    pub denied_hours: i32,
    /// Minutes a finished run's pod is kept, for its logs.
    #[serde(default = "default_pod_minutes")]
    #[schemars(range(min = 0, max = 10080))]
    pub pod_minutes: i32,
}

fn default_succeeded_hours() -> i32 {
    24 * 7
}
fn default_failed_hours() -> i32 {
    24 * 7
}
fn default_denied_hours() -> i32 {
    24
}
fn default_pod_minutes() -> i32 {
    60
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            succeeded_hours: default_succeeded_hours(),
            failed_hours: default_failed_hours(),
            denied_hours: default_denied_hours(),
            pod_minutes: default_pod_minutes(),
        }
    }
}

/// How the operator answers on GitHub.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum Feedback {
    /// A reaction on the trigger and a status comment edited as the run goes.
    #[default]
    Comment,
    /// Only a reaction on the trigger.
    Reaction,
    /// Nothing.
    None,
}

/// Observed state of a policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClaudeRunPolicyStatus {
    /// `Ready` and `Overlapping`, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The current budget period and what it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetStatus>,
    /// What the policy's runs were charged: the durable record `budget`'s
    /// spend comes from. Written only by the controller, once per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<SpendLedger>,
    /// Runs admitted and not yet finished.
    #[serde(default)]
    pub active_runs: i32,
    /// Runs created in this period.
    #[serde(default)]
    pub runs_this_period: i32,
    /// Runs denied in this period.
    #[serde(default)]
    pub denials_this_period: i32,
    /// When this status was computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<Time>,
}

/// Spend in the current budget period: the ledger's charges, plus finished
/// runs not charged yet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetStatus {
    /// Start of the period (inclusive).
    pub period_start: Time,
    /// End of the period (exclusive).
    pub period_end: Time,
    /// Cost of the period's finished runs (charged in the ledger, or about to be).
    #[serde(rename = "spentUSD")]
    pub spent_usd: String,
    /// `maxCostPerRunUSD` held for each active run.
    #[serde(rename = "reservedUSD")]
    pub reserved_usd: String,
    /// What is left of the period's limit after spent and reserved.
    #[serde(rename = "remainingUSD")]
    pub remaining_usd: String,
}

/// The durable record of what a policy's runs were charged, on the policy's
/// status. The controller adds each finished run's cost exactly once (the
/// run's uid goes in `unmarked` in the same write, with optimistic
/// concurrency; only then is the run marked `status.charged`), so deleting
/// runs, or restarting anything, never lowers a period's spend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpendLedger {
    /// Start of the period being charged (inclusive).
    pub period_start: Time,
    /// End of the period being charged (exclusive).
    pub period_end: Time,
    /// What the period's runs were charged.
    #[serde(rename = "chargedUSD")]
    pub charged_usd: String,
    /// How many runs were charged in the period.
    #[serde(default)]
    pub runs_charged: i64,
    /// Uids of runs charged whose own `status.charged` mark may not be
    /// written yet: a run listed here is never charged again. Removed once
    /// the mark shows; at most 500 (oldest dropped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmarked: Vec<String>,
    /// Totals of the earlier periods, newest first (at most 12).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<PeriodSpend>,
}

/// What one closed budget period's runs were charged.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeriodSpend {
    /// Start of the period (inclusive).
    pub period_start: Time,
    /// End of the period (exclusive).
    pub period_end: Time,
    /// What the period's runs were charged.
    #[serde(rename = "chargedUSD")]
    pub charged_usd: String,
    /// How many runs were charged in the period.
    #[serde(default)]
    pub runs_charged: i64,
}
