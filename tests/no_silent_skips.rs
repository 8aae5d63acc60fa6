//! A test that cannot run here is never a silent pass: under `CI=true`
//! support/skip.rs fails it with the reason; elsewhere it records the reason
//! in the skip file, which `e2e/skipped.sh report` (run by `make test` and
//! `e2e/run-tests.sh`) prints as "N skipped:" with each test and why.

#[path = "support/skip.rs"]
mod skip;

/// One test on purpose: it sets the process's environment.
#[test]
fn a_missing_prerequisite_fails_under_ci_and_is_reported_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("skipped.txt");
    // SAFETY: the only test of this binary; nothing else reads the environment.
    unsafe {
        std::env::set_var("CLAUDE_OPERATOR_SKIP_FILE", &file);
        std::env::set_var("CI", "true");
    }
    let failed = std::panic::catch_unwind(|| skip::skip("runc is missing")).unwrap_err();
    let message = failed.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("CI=true") && message.contains("runc is missing"),
        "{message}"
    );
    assert!(!file.exists(), "under CI nothing is recorded as skipped");

    unsafe { std::env::remove_var("CI") };
    skip::skip("runc is missing");
    skip::skip("go is missing");
    let recorded = std::fs::read_to_string(&file).unwrap();
    let test = "no_silent_skips a_missing_prerequisite_fails_under_ci_and_is_reported_elsewhere";
    assert_eq!(recorded, format!("{test}: runc is missing\n{test}: go is missing\n"));
    let report = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/skipped.sh"))
        .arg("report")
        .env("CLAUDE_OPERATOR_SKIP_FILE", &file)
        .output()
        .unwrap();
    assert!(report.status.success());
    let out = String::from_utf8(report.stdout).unwrap();
    assert!(out.contains("2 skipped:"), "{out}");
    assert!(out.contains(&format!("  {test}: go is missing")), "{out}");
}
