//! The labels and annotations the receiver writes on a `ClaudeRun` and the
//! controller reads: a contract between two components, so it lives in the
//! API, not in either of them.

/// Label: the policy a run belongs to.
pub const POLICY_LABEL: &str = "claude-operator.dev/policy";
/// Label: the run's repository (`owner.name`, or a hash when too long).
pub const REPOSITORY_LABEL: &str = "claude-operator.dev/repository";
/// Label: the issue or pull request number.
pub const NUMBER_LABEL: &str = "claude-operator.dev/number";
/// Annotation on a waiting run: an approval comment to verify (JSON).
pub const APPROVAL_REQUEST_ANNOTATION: &str = "claude-operator.dev/approval-request";

/// An approval comment, to be verified by the controller.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequest {
    #[serde(skip)]
    pub namespace: String,
    #[serde(skip)]
    pub repository: String,
    #[serde(skip)]
    pub number: i64,
    pub login: String,
    pub id: i64,
    pub comment_id: Option<i64>,
    pub delivery_id: String,
}
