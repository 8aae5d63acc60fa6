//! The webhook secrets, loaded from `--webhook-secret-file` and re-read when
//! the file changes, so a secret can be rotated (add the new line, switch
//! GitHub, remove the old line) without a restart. A file that becomes
//! unreadable or empty keeps the last good secrets: rotation mistakes must not
//! open the door or close it for everyone.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::github::signature::WebhookSecrets;

/// Shared handle on the current secrets.
#[derive(Clone)]
pub struct SecretsHandle(Arc<RwLock<Arc<WebhookSecrets>>>);

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("reading webhook secret file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("webhook secret file {path} holds no secret")]
    Empty { path: PathBuf },
}

fn load(path: &Path) -> Result<WebhookSecrets, SecretsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretsError::Read {
        path: path.to_owned(),
        source,
    })?;
    WebhookSecrets::from_file_contents(&text).map_err(|_| SecretsError::Empty { path: path.to_owned() })
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl SecretsHandle {
    /// Secrets fixed for the life of the handle (tests, benchmarks).
    pub fn fixed(secrets: WebhookSecrets) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(secrets))))
    }

    /// Loads the file now (failing if it is unusable) and re-reads it every
    /// `interval` when its modification time or size changed.
    pub fn watch(path: PathBuf, interval: Duration) -> Result<Self, SecretsError> {
        let handle = Self::fixed(load(&path)?);
        let weak = Arc::downgrade(&handle.0);
        let mut last = stamp(&path);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let now = stamp(&path);
                if now == last {
                    continue;
                }
                match load(&path) {
                    Ok(secrets) => {
                        let count = secrets.len();
                        *inner.write().expect("secrets lock") = Arc::new(secrets);
                        last = now;
                        tracing::info!(secrets = count, "webhook secrets reloaded");
                    }
                    Err(err) => tracing::warn!(error = %err, "keeping the previous webhook secrets"),
                }
            }
        });
        Ok(handle)
    }

    /// The secrets in force.
    pub fn current(&self) -> Arc<WebhookSecrets> {
        self.0.read().expect("secrets lock").clone()
    }
}
