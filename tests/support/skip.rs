//! Skipping a test whose prerequisite this machine lacks, never silently:
//! under `CI=true` the test fails with the reason; elsewhere it prints the
//! reason and appends it to the skip file that `make test` (and
//! `e2e/run-tests.sh`) print at the end ("N skipped: why").
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

/// The file skips are appended to: `CLAUDE_OPERATOR_SKIP_FILE`, else
/// `skipped-tests.txt` in cargo's target directory for tests.
pub fn skip_file() -> PathBuf {
    std::env::var_os("CLAUDE_OPERATOR_SKIP_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests.txt"))
}

/// Whether a missing prerequisite must fail the test (`CI=true`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Records that the running test (named after its thread, as libtest names
/// it) cannot run here because of `reason`; panics under `CI=true`. The
/// caller returns after it.
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let test = format!(
        "{} {}",
        env!("CARGO_CRATE_NAME"),
        thread.name().unwrap_or("(unnamed test)")
    );
    assert!(!in_ci(), "CI=true and {test} cannot run on this machine: {reason}");
    let line = format!("{test}: {reason}");
    eprintln!("SKIPPED {line}");
    let path = skip_file();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // One write per line: concurrent tests append whole lines.
    match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        Ok(mut f) => {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
        Err(e) => panic!(
            "{test} cannot run ({reason}) and the skip cannot be recorded in {}: {e}",
            path.display()
        ),
    }
}
