//! `claude-operator runner`: the wrapper around the Claude Code CLI inside the
//! runner pod.
