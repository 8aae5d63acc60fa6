//! Who may trigger a run (GitHub actors, and Kubernetes identities for manual
//! runs) and whether the budget allows it: pure decisions over plain data, no I/O.

mod authorize;
mod cancel;
mod manual;
pub mod matching;

pub use authorize::{
    ActorFacts, Approval, AuthzDecision, Unavailable, approval_deadline, approval_is_valid, approver_may_approve,
    authorize, may_wait, review_token_permissions, token_permissions,
};
pub use cancel::{cancel_needs_lookup, cancel_reason, may_cancel};
pub use manual::authorize_manual;
