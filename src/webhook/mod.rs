//! The webhook receiver: verifies, parses, deduplicates and matches deliveries
//! to policies, and creates `ClaudeRun` objects.

pub mod matching;
