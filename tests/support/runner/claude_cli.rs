//! The real Claude Code CLI from npm, at a pinned version, installed once into
//! `${XDG_CACHE_HOME:-~/.cache}/claude-operator/npm/<version>/`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The pinned `@anthropic-ai/claude-code` version (also in Dockerfile.runner).
pub const CLAUDE_CODE_VERSION: &str = "2.1.330";

/// Path of the installed `claude` executable; installs it on first use.
pub fn claude_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(install).clone()
}

fn install() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    let dir = cache.join("claude-operator/npm").join(CLAUDE_CODE_VERSION);
    let bin = dir.join("node_modules/.bin/claude");
    if !works(&bin) {
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg(format!("@anthropic-ai/claude-code@{CLAUDE_CODE_VERSION}"))
            .status()
            .expect("npm (Node.js) is needed to install Claude Code");
        assert!(status.success(), "npm install of Claude Code failed");
        assert!(works(&bin), "{} does not run after npm install", bin.display());
    }
    // No bubblewrap or socat: the runner no longer turns on Claude Code's
    // own sandbox (the pod is the sandbox, and holds no credential).
    bin
}

fn works(bin: &PathBuf) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CLAUDE_CODE_VERSION))
}
