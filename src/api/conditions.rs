//! Condition types and reasons written on status. Reasons are part of the API:
//! alerting rules and people's scripts match on them, so they are constants
//! here and never spelled inline elsewhere.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Policy condition: the policy is usable (secrets exist, no overlap).
pub const READY: &str = "Ready";
/// Policy condition: another policy matches one of the same repositories.
pub const OVERLAPPING: &str = "Overlapping";

/// Run condition: the admission decision has been made.
pub const ADMITTED: &str = "Admitted";
/// Run condition: the sandbox (Secret, NetworkPolicy, Pod) exists.
pub const SANDBOX_READY: &str = "SandboxReady";
/// Run condition: the run waits for namespace quota to free up.
pub const WAITING_FOR_QUOTA: &str = "WaitingForQuota";
/// Run condition: the run's cost is final and recorded.
pub const COST_RECORDED: &str = "CostRecorded";
/// Run condition: the run's GitHub token has been revoked.
pub const TOKEN_REVOKED: &str = "TokenRevoked";
/// Run condition: the runner reported a lower cost than the gateway metered
/// (the metered cost stands; the report is a cross-check only).
pub const COST_REPORT_MISMATCH: &str = "CostReportMismatch";

/// Machine-readable reasons. Admission denial reasons double as
/// `status.admission.reason`.
pub mod reasons {
    // Admission outcomes.
    pub const ADMITTED: &str = "Admitted";
    pub const AWAITING_APPROVAL: &str = "AwaitingApproval";
    /// The run waits for approval because the policy requires one for every
    /// run (`authorization.requireApproval: All`), not because of who asked.
    pub const APPROVAL_REQUIRED: &str = "ApprovalRequired";
    /// An outsider's trigger past `authorization.maxWaitingRuns` runs
    /// waiting on the repository.
    pub const TOO_MANY_WAITING_RUNS: &str = "TooManyWaitingRuns";
    /// An approval comment by the trigger's own author.
    pub const OWN_TRIGGER: &str = "OwnTrigger";
    pub const APPROVED: &str = "Approved";
    pub const INSUFFICIENT_PERMISSION: &str = "InsufficientPermission";
    pub const NOT_ORG_MEMBER: &str = "NotOrgMember";
    pub const NOT_TEAM_MEMBER: &str = "NotTeamMember";
    pub const DENIED_USER: &str = "DeniedUser";
    pub const BOT_NOT_ALLOWED: &str = "BotNotAllowed";
    pub const FORK_NOT_ALLOWED: &str = "ForkNotAllowed";
    pub const AUTHORIZATION_UNAVAILABLE: &str = "AuthorizationUnavailable";
    pub const NO_MATCHING_POLICY: &str = "NoMatchingPolicy";
    pub const APPROVAL_EXPIRED: &str = "ApprovalExpired";
    pub const BUDGET_EXHAUSTED: &str = "BudgetExhausted";
    pub const CONCURRENCY_LIMIT: &str = "ConcurrencyLimit";
    pub const RATE_LIMITED: &str = "RateLimited";
    /// A Manual run whose authenticated requester the policy's
    /// `authorization.manualRuns` does not list (or that names none).
    pub const MANUAL_RUN_NOT_ALLOWED: &str = "ManualRunNotAllowed";
    // Lifecycle.
    pub const POD_DELETED: &str = "PodDeleted";
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    pub const QUOTA_TIMEOUT: &str = "QuotaTimeout";
    pub const QUOTA_EXCEEDED: &str = "QuotaExceeded";
    pub const TOKEN_MINT_RETRIED: &str = "TokenMintRetried";
    /// An automatic review the policy's `triggers.review` filters do not ask
    /// for (changed paths).
    pub const REVIEW_NOT_WANTED: &str = "ReviewNotWanted";
    /// Under `github.pullRequestPush: PullRequestBranch`, the pull request's
    /// own branch is not used (a fork's, or the default branch); the Event
    /// says what the run does instead.
    pub const PULL_REQUEST_BRANCH_REFUSED: &str = "PullRequestBranchRefused";
    /// A pod, Secret or NetworkPolicy with the run's child's name exists and
    /// is not the run's (or not what we built): never used.
    pub const SANDBOX_CONFLICT: &str = "SandboxConflict";
    // Cancel (the run's outcome, and its Event).
    /// Cancelled by a comment with the policy's cancel phrase.
    pub const CANCEL_REQUESTED: &str = "CancelRequested";
    /// Cancelled because its issue or pull request was closed.
    pub const THREAD_CLOSED: &str = "ThreadClosed";
    /// Cancelled because a newer trigger replaces it.
    pub const SUPERSEDED: &str = "Superseded";
    /// Cancelled because the run object was deleted.
    pub const RUN_DELETED: &str = "RunDeleted";
    /// A cancel request that may not cancel (Event only).
    pub const CANCEL_REFUSED: &str = "CancelRefused";
    // Cost.
    pub const REPORTED: &str = "Reported";
    pub const REPORT_MISSING: &str = "ReportMissing";
    pub const REPORT_MALFORMED: &str = "ReportMalformed";
    /// The gateway's meter of the run's model requests.
    pub const METERED: &str = "Metered";
    /// The run's meter could not be read (its grant is gone): charged its reservation.
    pub const METER_MISSING: &str = "MeterMissing";
    /// The runner's report says less than the meter.
    pub const COST_REPORT_MISMATCH: &str = "CostReportMismatch";
    /// The run's cost went into its policy's ledger.
    pub const CHARGED: &str = "Charged";
    // Policy readiness.
    pub const VALID: &str = "Valid";
    pub const SECRET_MISSING: &str = "SecretMissing";
    pub const OVERLAPPING_POLICIES: &str = "OverlappingPolicies";
    /// Another policy covers some of this one's repositories and serves them.
    pub const OVERLAP_LOST: &str = "OverlapLost";
    /// Other policies cover some of this one's repositories; this one serves them.
    pub const OVERLAP_WON: &str = "OverlapWon";
    /// Tenancy: a repository pattern outside the namespace's grant.
    pub const REPOSITORY_NOT_ALLOWED: &str = "RepositoryNotAllowed";
    /// Tenancy: a token permission above the namespace's ceiling.
    pub const PERMISSION_NOT_ALLOWED: &str = "PermissionNotAllowed";
    /// A token permission name the operator does not know.
    pub const UNKNOWN_PERMISSION: &str = "UnknownPermission";
    /// Tenancy: a runner image the namespace may not use.
    pub const RUNNER_IMAGE_NOT_ALLOWED: &str = "RunnerImageNotAllowed";
}

/// Builds a condition with `observedGeneration`, ready to merge with
/// [`set_condition`].
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}

/// Inserts or replaces the condition of the same type, keeping the old
/// `lastTransitionTime` when the status did not change (as the Kubernetes API
/// conventions ask).
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            let keep_time = old.status == new.status;
            let time = old.last_transition_time.clone();
            *old = new;
            if keep_time {
                old.last_transition_time = time;
            }
        }
        None => conditions.push(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_is_unchanged() {
        let mut conds = vec![];
        set_condition(&mut conds, condition(READY, true, reasons::VALID, "ok", Some(1), t(10)));
        set_condition(
            &mut conds,
            condition(READY, true, reasons::VALID, "still ok", Some(2), t(20)),
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, t(10));
        assert_eq!(conds[0].message, "still ok");
        assert_eq!(conds[0].observed_generation, Some(2));

        set_condition(
            &mut conds,
            condition(READY, false, reasons::SECRET_MISSING, "gone", Some(3), t(30)),
        );
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, t(30));
        assert_eq!(conds[0].status, "False");
    }

    #[test]
    fn conditions_of_different_types_coexist() {
        let mut conds = vec![];
        set_condition(&mut conds, condition(READY, true, reasons::VALID, "", None, t(1)));
        set_condition(
            &mut conds,
            condition(OVERLAPPING, false, reasons::VALID, "", None, t(1)),
        );
        assert_eq!(conds.len(), 2);
    }
}
