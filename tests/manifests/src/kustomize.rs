//! Kustomization files: their typed form and the resources they pull in.
//!
//! Only what the manifests use is supported; resolving follows `resources` (files and
//! directories) without running kustomize.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A `kustomization.yaml`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Kustomization {
    /// `kustomize.config.k8s.io/v1beta1`.
    pub api_version: String,
    /// `Kustomization`.
    pub kind: String,
    /// Namespace set on every object.
    pub namespace: Option<String>,
    /// Labels added to every object.
    pub labels: Option<Vec<LabelSet>>,
    /// Files and directories included.
    pub resources: Vec<String>,
    /// Patches applied.
    pub patches: Option<Vec<PatchRef>>,
}

/// `labels[]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSet {
    /// The labels.
    pub pairs: BTreeMap<String, String>,
    /// Also add them to selectors.
    pub include_selectors: Option<bool>,
}

/// `patches[]`: a patch file or an inline patch, optionally with a target.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchRef {
    /// Patch file, relative to the kustomization.
    pub path: Option<String>,
    /// Inline patch (strategic merge or JSON 6902 list).
    pub patch: Option<String>,
    /// Objects the patch applies to.
    pub target: Option<PatchTarget>,
}

/// `patches[].target`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchTarget {
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
}

/// Why a kustomization does not resolve.
#[derive(Debug, thiserror::Error)]
pub enum KustomizeError {
    /// A file could not be read.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The kustomization does not fit its type.
    #[error("{0}: {1}")]
    Invalid(PathBuf, serde_yaml_ng::Error),
    /// A listed resource or patch does not exist.
    #[error("{0}: lists {1}, which does not exist")]
    Missing(PathBuf, String),
    /// A patch has neither `path` nor `patch`, or both.
    #[error("{0}: a patch needs exactly one of path and patch")]
    BadPatch(PathBuf),
    /// Resources include each other in a cycle.
    #[error("{0}: resources form a cycle")]
    Cycle(PathBuf),
}

/// Everything a kustomization directory pulls in, recursively.
#[derive(Clone, Debug, Default)]
pub struct Resolved {
    /// Object files, in order.
    pub resources: Vec<PathBuf>,
    /// Patch files.
    pub patch_files: Vec<PathBuf>,
    /// Targets of patches (file or inline) that name one.
    pub targets: Vec<PatchTarget>,
}

/// Reads `dir/kustomization.yaml`.
pub fn load(dir: &Path) -> Result<Kustomization, KustomizeError> {
    let file = dir.join("kustomization.yaml");
    let text = fs::read_to_string(&file).map_err(|e| KustomizeError::Io(file.clone(), e))?;
    serde_yaml_ng::from_str(&text).map_err(|e| KustomizeError::Invalid(file, e))
}

/// Resolves a kustomization directory: every resource and patch must exist.
pub fn resolve(dir: &Path) -> Result<Resolved, KustomizeError> {
    let mut out = Resolved::default();
    resolve_into(dir, &mut Vec::new(), &mut out)?;
    Ok(out)
}

fn resolve_into(
    dir: &Path,
    stack: &mut Vec<PathBuf>,
    out: &mut Resolved,
) -> Result<(), KustomizeError> {
    let canonical = dir
        .canonicalize()
        .map_err(|e| KustomizeError::Io(dir.to_path_buf(), e))?;
    if stack.contains(&canonical) {
        return Err(KustomizeError::Cycle(canonical));
    }
    stack.push(canonical);
    let file = dir.join("kustomization.yaml");
    let k = load(dir)?;
    for resource in &k.resources {
        let path = dir.join(resource);
        if path.is_dir() && path.join("kustomization.yaml").is_file() {
            resolve_into(&path, stack, out)?;
        } else if path.is_file() {
            out.resources.push(path);
        } else {
            return Err(KustomizeError::Missing(file, resource.clone()));
        }
    }
    for patch in k.patches.iter().flatten() {
        match (&patch.path, &patch.patch) {
            (Some(p), None) => {
                let path = dir.join(p);
                if !path.is_file() {
                    return Err(KustomizeError::Missing(file, p.clone()));
                }
                out.patch_files.push(path);
            }
            (None, Some(_)) => {}
            _ => return Err(KustomizeError::BadPatch(file)),
        }
        out.targets.extend(patch.target.clone());
    }
    stack.pop();
    Ok(())
}
