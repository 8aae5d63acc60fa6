//! Who may trigger a run and whether the budget allows it: pure decisions over
//! plain data, no I/O.

mod authorize;

pub use authorize::{
    ActorFacts, Approval, AuthzDecision, Unavailable, approval_deadline, approval_is_valid, authorize,
    token_permissions,
};
