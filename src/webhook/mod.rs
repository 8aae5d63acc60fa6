//! The webhook receiver: verifies, parses, deduplicates and matches deliveries
//! to policies, and creates `ClaudeRun` objects.

pub mod intake;
pub mod matching;
pub mod secrets;
pub mod server;
