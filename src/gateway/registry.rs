//! The grants this gateway knows, by the SHA-256 of their capability, kept
//! current from a watch of the grant Secrets in the gateway's namespace
//! (label [`grant::LABEL_GRANT`]). The registry is the only authority: a
//! capability with no grant here gets nothing.
//!
//! Closed and expired grants stay in the registry (until their Secret is
//! deleted) so the server can answer "the run has ended" instead of
//! "unauthenticated"; [`Grant::is_open`] decides.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher;
use kube::{Api, Client};
use secrecy::SecretString;
use subtle::ConstantTimeEq;

use super::Grant;
use crate::cli::GatewayArgs;
use crate::grant::{self, GrantFacts};

/// Namespace used when nothing else names one.
pub const DEFAULT_NAMESPACE: &str = "claude-operator";

/// Where a pod finds its own namespace.
const SERVICE_ACCOUNT_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The gateway's namespace (where the grant Secrets live):
/// `--gateway-namespace`, else `POD_NAMESPACE`, else the in-cluster namespace
/// file, else [`DEFAULT_NAMESPACE`]. The controller creates grants there.
pub fn gateway_namespace(args: &GatewayArgs) -> String {
    let from_env = std::env::var("POD_NAMESPACE").ok();
    let from_file = || std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE).ok();
    resolve_namespace(args.gateway_namespace.as_deref(), from_env.as_deref(), from_file)
}

fn resolve_namespace(flag: Option<&str>, env: Option<&str>, file: impl FnOnce() -> Option<String>) -> String {
    let usable = |s: &str| {
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_owned())
    };
    flag.and_then(usable)
        .or_else(|| env.and_then(usable))
        .or_else(|| file().as_deref().and_then(usable))
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
}

/// Why a grant Secret was skipped. Names the Secret and the key at fault,
/// never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("grant Secret has no name")]
    NoName,
    #[error("grant Secret {secret}: key {key} is missing or empty")]
    Missing { secret: String, key: &'static str },
    #[error("grant Secret {secret}: key {key} is not UTF-8")]
    NotUtf8 { secret: String, key: &'static str },
    #[error("grant Secret {secret}: {key} is not a lower-case hex SHA-256")]
    BadHash { secret: String, key: &'static str },
    #[error("grant Secret {secret}: {key} is not valid grant facts: {reason}")]
    BadFacts {
        secret: String,
        key: &'static str,
        reason: String,
    },
    #[error("grant Secret {secret}: expiresAt is not an RFC 3339 time")]
    BadExpiry { secret: String },
}

/// Reads one grant Secret: the capability's hash and the grant.
pub fn parse_grant(secret: &Secret) -> Result<(String, Grant), GrantError> {
    let name = secret.metadata.name.clone().ok_or(GrantError::NoName)?;
    let data = secret.data.as_ref();
    let text = |key: &'static str| -> Result<String, GrantError> {
        let bytes = data
            .and_then(|d| d.get(key))
            .filter(|b| !b.0.is_empty())
            .ok_or_else(|| GrantError::Missing {
                secret: name.clone(),
                key,
            })?;
        String::from_utf8(bytes.0.clone()).map_err(|_| GrantError::NotUtf8 {
            secret: name.clone(),
            key,
        })
    };
    let hash = text(grant::KEY_CAPABILITY_SHA256)?.trim().to_owned();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(GrantError::BadHash {
            secret: name,
            key: grant::KEY_CAPABILITY_SHA256,
        });
    }
    let facts: GrantFacts = serde_json::from_str(&text(grant::KEY_FACTS)?).map_err(|e| GrantError::BadFacts {
        secret: name.clone(),
        key: grant::KEY_FACTS,
        // serde_json's messages name the field and position, not the value.
        reason: e.to_string(),
    })?;
    let expires_at = facts
        .expires_at
        .parse::<jiff::Timestamp>()
        .map_err(|_| GrantError::BadExpiry { secret: name.clone() })?;
    let github_token = SecretString::from(text(grant::KEY_GITHUB_TOKEN)?);
    let anthropic_key = SecretString::from(text(grant::KEY_ANTHROPIC_API_KEY)?);
    let closed = secret
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(grant::ANNOTATION_CLOSED));
    Ok((
        hash,
        Grant {
            secret_name: name,
            facts,
            github_token,
            anthropic_key,
            expires_at,
            closed,
        },
    ))
}

/// A set of grants (the registry's contents, or a list being read).
#[derive(Default)]
pub struct GrantSet {
    /// Grants by capability hash (hex).
    by_hash: HashMap<String, Arc<Grant>>,
    /// Capability hash by grant Secret name (to remove a grant on delete).
    by_name: HashMap<String, String>,
}

impl GrantSet {
    fn insert(&mut self, hash: String, grant: Grant) {
        if let Some(old) = self.by_name.insert(grant.secret_name.clone(), hash.clone())
            && old != hash
        {
            self.by_hash.remove(&old);
        }
        self.by_hash.insert(hash, Arc::new(grant));
    }

    fn remove_name(&mut self, name: &str) {
        if let Some(hash) = self.by_name.remove(name) {
            self.by_hash.remove(&hash);
        }
    }
}

/// Told of every grant Secret the watch sees (`true`: it was deleted).
pub type Listener = Arc<dyn Fn(&Secret, bool) + Send + Sync>;

/// Grants by lower-case hex SHA-256 of the capability.
#[derive(Clone, Default)]
pub struct Registry {
    grants: Arc<RwLock<GrantSet>>,
    ready: Arc<tokio::sync::watch::Sender<bool>>,
    /// The meter's ear on the shared meters (closed grants, budget wanted).
    listener: Arc<RwLock<Option<Listener>>>,
}

impl Registry {
    /// The grant whose capability hashes to `sha256_hex`. The map finds the
    /// entry by digest; the digest itself is compared in constant time.
    pub fn get(&self, sha256_hex: &str) -> Option<Arc<Grant>> {
        let inner = self.grants.read().unwrap_or_else(|e| e.into_inner());
        let (stored, grant) = inner.by_hash.get_key_value(sha256_hex)?;
        bool::from(stored.as_bytes().ct_eq(sha256_hex.as_bytes())).then(|| grant.clone())
    }

    /// The grant for a presented capability.
    pub fn lookup(&self, capability: &str) -> Option<Arc<Grant>> {
        self.get(&grant::capability_sha256(capability))
    }

    /// Adds or replaces a grant.
    pub fn insert(&self, sha256_hex: String, grant: Grant) {
        self.grants
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sha256_hex, grant);
    }

    /// Removes a grant.
    pub fn remove(&self, sha256_hex: &str) {
        let mut inner = self.grants.write().unwrap_or_else(|e| e.into_inner());
        if let Some(grant) = inner.by_hash.remove(sha256_hex) {
            inner.by_name.remove(&grant.secret_name);
        }
    }

    /// How many grants are known.
    pub fn len(&self) -> usize {
        self.grants.read().unwrap_or_else(|e| e.into_inner()).by_hash.len()
    }

    /// Whether no grant is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first complete list of grants has been read.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Marks the registry ready (the watcher does, after its first list;
    /// tests that fill it by hand do too).
    pub fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    /// Resolves once [`Registry::is_ready`].
    pub fn wait_ready(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.ready.subscribe();
        async move {
            let _ = rx.wait_for(|ready| *ready).await;
        }
    }

    /// Tells `listener` of every grant Secret seen from now on, after the
    /// registry has taken it in.
    pub fn listen(&self, listener: Listener) {
        *self.listener.write().unwrap_or_else(|e| e.into_inner()) = Some(listener);
    }

    fn tell(&self, secret: &Secret, deleted: bool) {
        let listener = self.listener.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(listener) = listener {
            listener(secret, deleted);
        }
    }

    /// Applies one watcher event. A restarted watch (`Init` .. `InitDone`)
    /// replaces the whole set at `InitDone`, so grants deleted while the
    /// watch was down disappear.
    pub fn apply(&self, event: watcher::Event<Secret>, pending: &mut Option<GrantSet>) {
        match event {
            watcher::Event::Init => *pending = Some(GrantSet::default()),
            watcher::Event::InitApply(secret) => {
                let buffer = pending.get_or_insert_with(GrantSet::default);
                if let Some((hash, grant)) = read_or_warn(&secret) {
                    buffer.insert(hash, grant);
                }
                // A grant closed while the watch was down is seen here.
                self.tell(&secret, false);
            }
            watcher::Event::InitDone => {
                let fresh = pending.take().unwrap_or_default();
                *self.grants.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                self.set_ready();
            }
            watcher::Event::Apply(secret) => {
                {
                    let mut inner = self.grants.write().unwrap_or_else(|e| e.into_inner());
                    match read_or_warn(&secret) {
                        Some((hash, grant)) => inner.insert(hash, grant),
                        // A grant that became unreadable is no grant any more.
                        None => {
                            if let Some(name) = &secret.metadata.name {
                                inner.remove_name(name);
                            }
                        }
                    }
                }
                self.tell(&secret, false);
            }
            watcher::Event::Delete(secret) => {
                if let Some(name) = &secret.metadata.name {
                    self.grants.write().unwrap_or_else(|e| e.into_inner()).remove_name(name);
                }
                self.tell(&secret, true);
            }
        }
    }

    /// Watches the grant Secrets of `namespace` into this registry until
    /// the returned future is dropped. Watch errors are retried with backoff.
    pub fn watch(&self, client: Client, namespace: &str) -> impl std::future::Future<Output = ()> + Send + 'static {
        let api: Api<Secret> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().labels(&format!("{}=true", grant::LABEL_GRANT));
        let registry = self.clone();
        async move {
            use kube::runtime::WatchStreamExt;
            let mut pending = None;
            let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => registry.apply(event, &mut pending),
                    Err(err) => tracing::warn!(error = %err, "watching grants failed; retrying"),
                }
            }
        }
    }
}

fn read_or_warn(secret: &Secret) -> Option<(String, Grant)> {
    match parse_grant(secret) {
        Ok(parsed) => Some(parsed),
        Err(err) => {
            tracing::warn!(error = %err, "skipping a malformed grant");
            None
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;

    use super::*;

    pub(crate) fn facts() -> GrantFacts {
        GrantFacts {
            namespace: "team-a".into(),
            run: "gh-1".into(),
            run_uid: "uid-1".into(),
            policy: "default".into(),
            repository: "acme/widgets".into(),
            number: 7,
            is_pull_request: false,
            head_sha: None,
            push_branch: Some("claude/gh-1".into()),
            push_to_pull_request: false,
            review: false,
            allowed_models: vec!["claude-sonnet-4-5*".into()],
            max_cost_usd: "5".into(),
            prices: vec![],
            protected_paths: vec![],
            allow_hosts: vec![],
            expires_at: "2099-01-01T00:00:00Z".into(),
            triggered_at: None,
        }
    }

    pub(crate) fn secret(name: &str, cap: &str, facts: &GrantFacts, closed: bool) -> Secret {
        let mut data = BTreeMap::new();
        let mut put = |k: &str, v: &str| data.insert(k.to_owned(), ByteString(v.as_bytes().to_vec()));
        put(grant::KEY_CAPABILITY_SHA256, &grant::capability_sha256(cap));
        put(grant::KEY_FACTS, &serde_json::to_string(facts).unwrap());
        put(grant::KEY_GITHUB_TOKEN, "ghs_token");
        put(grant::KEY_ANTHROPIC_API_KEY, "sk-ant-key");
        let annotations =
            closed.then(|| BTreeMap::from([(grant::ANNOTATION_CLOSED.to_owned(), "2026-01-01T00:00:00Z".to_owned())]));
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations,
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        }
    }

    #[test]
    fn namespace_resolution_order() {
        assert_eq!(resolve_namespace(Some("gw"), Some("pod"), || Some("file".into())), "gw");
        assert_eq!(resolve_namespace(None, Some("pod"), || Some("file".into())), "pod");
        assert_eq!(resolve_namespace(Some(" "), None, || Some("file\n".into())), "file");
        assert_eq!(resolve_namespace(None, Some(""), || None), DEFAULT_NAMESPACE);
    }

    #[test]
    fn a_grant_secret_is_read() {
        let (hash, grant) = parse_grant(&secret("g1", "cocap_x", &facts(), false)).unwrap();
        assert_eq!(hash, grant::capability_sha256("cocap_x"));
        assert_eq!(grant.secret_name, "g1");
        assert!(!grant.closed);
        assert!(grant.is_open(jiff::Timestamp::now()));
        let (_, closed) = parse_grant(&secret("g1", "cocap_x", &facts(), true)).unwrap();
        assert!(closed.closed);
    }

    #[test]
    fn malformed_grants_are_refused_without_their_secrets() {
        let good = secret("g1", "cocap_x", &facts(), false);
        type Breaker = Box<dyn Fn(&mut Secret)>;
        let cases: Vec<(&str, Breaker)> = vec![
            (
                "missing token",
                Box::new(|s: &mut Secret| {
                    s.data.as_mut().unwrap().remove(grant::KEY_GITHUB_TOKEN);
                }),
            ),
            (
                "missing key",
                Box::new(|s: &mut Secret| {
                    s.data.as_mut().unwrap().remove(grant::KEY_ANTHROPIC_API_KEY);
                }),
            ),
            (
                "bad hash",
                Box::new(|s: &mut Secret| {
                    s.data
                        .as_mut()
                        .unwrap()
                        .insert(grant::KEY_CAPABILITY_SHA256.into(), ByteString(b"abc".to_vec()));
                }),
            ),
            (
                "bad facts",
                Box::new(|s: &mut Secret| {
                    s.data
                        .as_mut()
                        .unwrap()
                        .insert(grant::KEY_FACTS.into(), ByteString(b"{\"namespace\":1}".to_vec()));
                }),
            ),
            (
                "bad expiry",
                Box::new(|s: &mut Secret| {
                    let mut f = facts();
                    f.expires_at = "tomorrow".into();
                    s.data
                        .as_mut()
                        .unwrap()
                        .insert(grant::KEY_FACTS.into(), ByteString(serde_json::to_vec(&f).unwrap()));
                }),
            ),
            (
                "no data",
                Box::new(|s: &mut Secret| {
                    s.data = None;
                }),
            ),
        ];
        for (what, break_it) in cases {
            let mut s = good.clone();
            break_it(&mut s);
            let err = parse_grant(&s).expect_err(what).to_string();
            assert!(
                !err.contains("ghs_token") && !err.contains("sk-ant-key"),
                "{what}: {err}"
            );
            assert!(err.contains("g1"), "{what}: {err}");
        }
    }

    #[test]
    fn watch_events_keep_the_registry_current() {
        let reg = Registry::default();
        let mut pending = None;
        assert!(!reg.is_ready());
        reg.apply(watcher::Event::Init, &mut pending);
        reg.apply(
            watcher::Event::InitApply(secret("g1", "cap1", &facts(), false)),
            &mut pending,
        );
        // A malformed grant is skipped, the others still load.
        let mut bad = secret("g2", "cap2", &facts(), false);
        bad.data = None;
        reg.apply(watcher::Event::InitApply(bad), &mut pending);
        assert!(reg.lookup("cap1").is_none(), "not before the list completes");
        reg.apply(watcher::Event::InitDone, &mut pending);
        assert!(reg.is_ready());
        assert!(reg.lookup("cap1").is_some());
        assert!(reg.lookup("cap2").is_none());
        assert!(reg.lookup("cap3").is_none());

        reg.apply(
            watcher::Event::Apply(secret("g1", "cap1", &facts(), true)),
            &mut pending,
        );
        assert!(reg.lookup("cap1").unwrap().closed);
        // The capability of a grant changed: the old one no longer works.
        reg.apply(
            watcher::Event::Apply(secret("g1", "cap9", &facts(), false)),
            &mut pending,
        );
        assert!(reg.lookup("cap1").is_none());
        assert!(reg.lookup("cap9").is_some());
        reg.apply(
            watcher::Event::Delete(secret("g1", "cap9", &facts(), false)),
            &mut pending,
        );
        assert!(reg.lookup("cap9").is_none());
        assert!(reg.is_empty());

        // A restarted watch drops grants deleted meanwhile.
        reg.apply(
            watcher::Event::Apply(secret("g3", "cap3", &facts(), false)),
            &mut pending,
        );
        reg.apply(watcher::Event::Init, &mut pending);
        reg.apply(watcher::Event::InitDone, &mut pending);
        assert!(reg.lookup("cap3").is_none());
    }

    #[test]
    fn the_listener_hears_every_grant_secret_after_the_registry_took_it_in() {
        let reg = Registry::default();
        let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (ear, seen) = (heard.clone(), reg.clone());
        reg.listen(Arc::new(move |secret, deleted| {
            let name = secret.metadata.name.clone().unwrap();
            // The registry already reflects what the listener is told.
            let known = seen.lookup("cap1").is_some_and(|g| g.closed);
            ear.lock().unwrap().push((name, deleted, known));
        }));
        let mut pending = None;
        reg.apply(watcher::Event::Init, &mut pending);
        reg.apply(
            watcher::Event::InitApply(secret("g1", "cap1", &facts(), false)),
            &mut pending,
        );
        reg.apply(watcher::Event::InitDone, &mut pending);
        reg.apply(
            watcher::Event::Apply(secret("g1", "cap1", &facts(), true)),
            &mut pending,
        );
        reg.apply(
            watcher::Event::Delete(secret("g1", "cap1", &facts(), true)),
            &mut pending,
        );
        let heard = heard.lock().unwrap().clone();
        assert_eq!(
            heard,
            [
                ("g1".to_owned(), false, false),
                ("g1".to_owned(), false, true),
                ("g1".to_owned(), true, false),
            ]
        );
    }
}
