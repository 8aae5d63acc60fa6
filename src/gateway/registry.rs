//! The open grants this gateway knows, by the SHA-256 of their capability,
//! kept current from a watch of the grant Secrets.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::Grant;

/// Grants by lower-case hex SHA-256 of the capability.
#[derive(Clone, Default)]
pub struct Registry {
    grants: Arc<RwLock<HashMap<String, Arc<Grant>>>>,
}

impl Registry {
    /// The grant whose capability hashes to `sha256_hex`.
    pub fn get(&self, sha256_hex: &str) -> Option<Arc<Grant>> {
        self.grants.read().expect("registry lock").get(sha256_hex).cloned()
    }

    /// Adds or replaces a grant.
    pub fn insert(&self, sha256_hex: String, grant: Grant) {
        self.grants
            .write()
            .expect("registry lock")
            .insert(sha256_hex, Arc::new(grant));
    }

    /// Removes a grant.
    pub fn remove(&self, sha256_hex: &str) {
        self.grants.write().expect("registry lock").remove(sha256_hex);
    }
}
