//! Finding YAML files and splitting them into documents.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// One YAML document of a file.
#[derive(Clone, Debug)]
pub struct Document {
    /// File it came from.
    pub file: PathBuf,
    /// Position in the file (0-based, empty documents counted).
    pub index: usize,
    /// The document as a JSON value.
    pub value: Value,
}

impl Document {
    /// `file#index`, for messages.
    pub fn location(&self) -> String {
        format!("{}#{}", self.file.display(), self.index)
    }
}

/// Why a file could not be read as YAML documents.
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    /// The file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// Path read.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A document is not valid YAML.
    #[error("{path}: {source}")]
    Yaml {
        /// File parsed.
        path: PathBuf,
        /// Cause.
        source: serde_yaml_ng::Error,
    },
}

/// Every `.yaml`/`.yml` file under `root`, sorted.
pub fn yaml_files(root: &Path) -> Result<Vec<PathBuf>, DocsError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|source| DocsError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let path = entry
                .map_err(|source| DocsError::Io {
                    path: dir.clone(),
                    source,
                })?
                .path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `path` is a kustomization file rather than a Kubernetes object.
pub fn is_kustomization(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("kustomization.yaml" | "kustomization.yml" | "Kustomization")
    )
}

/// The non-empty documents of a YAML text.
pub fn parse_documents(file: &Path, text: &str) -> Result<Vec<Document>, DocsError> {
    let mut out = Vec::new();
    for (index, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(de).map_err(|source| DocsError::Yaml {
            path: file.to_path_buf(),
            source,
        })?;
        if !value.is_null() {
            out.push(Document {
                file: file.to_path_buf(),
                index,
                value,
            });
        }
    }
    Ok(out)
}

/// The documents of one file.
pub fn read_documents(file: &Path) -> Result<Vec<Document>, DocsError> {
    let text = fs::read_to_string(file).map_err(|source| DocsError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    parse_documents(file, &text)
}
