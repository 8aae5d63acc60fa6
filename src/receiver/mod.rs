//! The receiver, the internet-facing component: verifies, parses, deduplicates and matches deliveries
//! to policies, and creates `ClaudeRun` objects.

pub mod intake;
pub mod secrets;
pub mod server;
