//! The container, compose and Kubernetes files, checked offline (no docker
//! engine or cluster runs here): each checker validates against the schema
//! (compose specification, Kubernetes OpenAPI via kubernetes-validate on
//! `kubectl kustomize` output) and this project's rules (env names the
//! crates read, probes, PDBs, PgBouncer routing, the dashboard's metrics...),
//! and its self-test breaks a temporary copy once per rule to prove it
//! catches the mistake. The tools come from `deploy/local/stack install`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use e2e_tests::repo_root;

/// Runs `script args` from the repository root; panics with its output
/// unless it succeeds.
fn passes(script: &str, args: &[&str]) -> String {
    let output = Command::new(repo_root().join(script))
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{script} {args:?} failed:\n{text}");
    text
}

#[test]
fn the_dockerfile_builds_what_ci_builds_and_runs_as_non_root() {
    passes("deploy/docker/check", &[]);

    // The checker fails on a root user and on an env name no crate reads.
    let copy = std::env::temp_dir().join(format!("docker-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&copy);
    let root = repo_root();
    copy_tree(&root, &copy, &["Cargo.toml"]);
    for crate_dir in [
        "command-service",
        "query-service",
        "projector",
        "service-runtime",
        "traffic-control",
        "access-control",
        "event-bus",
        "deploy/docker",
    ] {
        copy_tree(&root.join(crate_dir), &copy.join(crate_dir), &[]);
    }
    let dockerfile = copy.join("deploy/docker/Dockerfile");
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    std::fs::write(
        &dockerfile,
        text.replace("USER 10001:10001", "USER root")
            .replace("LOG_FORMAT=json", "LOG_FROMAT=json"),
    )
    .unwrap();
    let output = Command::new(root.join("deploy/docker/check"))
        .arg(&copy)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&copy);
    let found = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "a broken Dockerfile passed");
    assert!(found.contains("runtime USER 'root'"), "{found}");
    assert!(
        found.contains("ENV LOG_FROMAT is read by no crate"),
        "{found}"
    );
}

#[test]
fn the_compose_stack_is_valid_and_its_checker_catches_each_mistake() {
    passes("deploy/compose/check", &[]);
    let report = passes("deploy/compose/check", &["--self-test"]);
    assert!(report.contains("mistakes caught"), "{report}");
}

#[test]
fn the_kubernetes_manifests_are_valid_and_their_checker_catches_each_mistake() {
    passes("deploy/k8s/check", &[]);
    let report = passes("deploy/k8s/check", &["--self-test"]);
    assert!(report.contains("check --self-test:"), "{report}");
}

/// Copies `from` into `to`: the named files only, or everything if none.
fn copy_tree(from: &Path, to: &Path, only: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if !only.is_empty() && !only.iter().any(|n| name == **n) {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target, &[]);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
