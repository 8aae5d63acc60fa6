//! `crds/` is generated from the Rust types by `claude-operator crd` and checked
//! in. This test fails when the two disagree: run `make crds` and commit.

use std::process::Command;

#[test]
fn crds_directory_matches_the_crd_subcommand() {
    let out = Command::new(env!("CARGO_BIN_EXE_claude-operator"))
        .arg("crd")
        .output()
        .expect("run claude-operator crd");
    assert!(
        out.status.success(),
        "claude-operator crd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).expect("utf-8 YAML");

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("crds/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let checked_in: String = files.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();

    assert!(
        printed == checked_in,
        "crds/ is out of date with src/api: run `make crds` and commit the result"
    );
}

#[test]
fn the_charts_crds_are_a_copy_of_crds_directory() {
    let root = env!("CARGO_MANIFEST_DIR");
    let source = std::fs::read(format!("{root}/crds/claude-operator.yaml")).expect("crds/claude-operator.yaml");
    let chart = std::fs::read(format!("{root}/charts/claude-operator/crds/claude-operator.yaml"))
        .expect("charts/claude-operator/crds/claude-operator.yaml");
    assert!(
        source == chart,
        "charts/claude-operator/crds/ differs from crds/: run `make crds` and commit the result"
    );
}
