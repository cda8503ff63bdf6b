//! Where the policy comes from, so that a reload reads the same source.
use std::path::{Path, PathBuf};

use super::{load, parse, Diagnostic, Policy, DEFAULT_CONFIG_PATH, DEFAULT_POLICY, DEFAULT_POLICY_NAME};

#[derive(Clone, Debug)]
pub enum PolicySource {
    File(PathBuf),
    Embedded,
}

impl PolicySource {
    pub fn path(&self) -> Option<&Path> {
        match self {
            PolicySource::File(p) => Some(p),
            PolicySource::Embedded => None,
        }
    }

    /// `--config` if given, else the default file if it exists, else the embedded default.
    pub fn resolve(config: Option<PathBuf>) -> Self {
        match config {
            Some(p) => PolicySource::File(p),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => PolicySource::File(DEFAULT_CONFIG_PATH.into()),
            None => PolicySource::Embedded,
        }
    }

    pub fn load(&self) -> Result<Policy, Vec<Diagnostic>> {
        match self {
            PolicySource::File(p) => load(p),
            PolicySource::Embedded => parse(DEFAULT_POLICY_NAME, DEFAULT_POLICY),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            PolicySource::File(p) => p.display().to_string(),
            PolicySource::Embedded => DEFAULT_POLICY_NAME.to_string(),
        }
    }
}
