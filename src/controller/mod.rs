//! Reconcilers of `ClaudeRun` and `ClaudeRunPolicy`.
