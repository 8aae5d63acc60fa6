//! Everything GitHub: webhook signature verification, event parsing, trigger
//! phrase matching, the REST API client used for authorization, token
//! minting, feedback and a thread's context, and that context as a prompt
//! carries it.

pub mod client;
pub mod context;
pub mod events;
pub mod signature;
pub mod trigger;
