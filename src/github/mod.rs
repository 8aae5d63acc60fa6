//! Everything GitHub: webhook signature verification, event parsing, trigger
//! phrase matching, and the REST API client used for authorization, token
//! minting and feedback.

pub mod client;
pub mod events;
pub mod signature;
pub mod trigger;
