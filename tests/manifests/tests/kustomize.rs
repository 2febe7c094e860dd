//! The kustomization resolver reports what kustomize itself would refuse.

use std::fs;
use std::path::PathBuf;

use kvroute_manifests_test::kustomize::{KustomizeError, resolve};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("kustomize")
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

const HEADER: &str = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n";

#[test]
fn missing_resource_is_reported() {
    let dir = scratch("missing");
    fs::write(
        dir.join("kustomization.yaml"),
        format!("{HEADER}resources: [gone.yaml]\n"),
    )
    .expect("write");
    let err = resolve(&dir).expect_err("gone.yaml does not exist");
    assert!(
        matches!(err, KustomizeError::Missing(_, ref r) if r == "gone.yaml"),
        "{err}"
    );
}

#[test]
fn missing_patch_and_unknown_field_are_reported() {
    let dir = scratch("patch");
    fs::write(
        dir.join("a.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
    )
    .expect("write");
    fs::write(
        dir.join("kustomization.yaml"),
        format!("{HEADER}resources: [a.yaml]\npatches:\n  - path: p.yaml\n"),
    )
    .expect("write");
    assert!(matches!(resolve(&dir), Err(KustomizeError::Missing(..))));

    fs::write(
        dir.join("kustomization.yaml"),
        format!("{HEADER}resources: [a.yaml]\npatchesStrategicMergee: []\n"),
    )
    .expect("write");
    assert!(matches!(resolve(&dir), Err(KustomizeError::Invalid(..))));
}

#[test]
fn nested_directories_resolve_and_cycles_are_caught() {
    let root = scratch("nested");
    let base = root.join("base");
    let overlay = root.join("overlay");
    fs::create_dir_all(&base).expect("dir");
    fs::create_dir_all(&overlay).expect("dir");
    fs::write(
        base.join("a.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
    )
    .expect("write");
    fs::write(
        base.join("kustomization.yaml"),
        format!("{HEADER}resources: [a.yaml]\n"),
    )
    .expect("write");
    fs::write(
        overlay.join("kustomization.yaml"),
        format!("{HEADER}resources: [../base]\n"),
    )
    .expect("write");
    let resolved = resolve(&overlay).expect("resolves");
    assert_eq!(
        resolved.resources,
        vec![overlay.join("../base").join("a.yaml")]
    );

    fs::write(
        base.join("kustomization.yaml"),
        format!("{HEADER}resources: [a.yaml, ../overlay]\n"),
    )
    .expect("write");
    assert!(matches!(resolve(&overlay), Err(KustomizeError::Cycle(_))));
}
