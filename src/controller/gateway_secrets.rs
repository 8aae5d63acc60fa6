//! The controller's view of the gateway's namespace: the metadata of its
//! Secrets (the runs' grants and the policies' Anthropic key Secrets), kept
//! by one watch. A running run's meter is an annotation on its grant, so it
//! is read from here rather than asked of the apiserver every interval; a key
//! Secret is read again only when its `resourceVersion` moved. No Secret's
//! data enters the cache (metadata only); the key values read are kept
//! beside it, each with the version it was read at, and a value is used only
//! while the cache shows that version (deleted or changed: read again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use secrecy::SecretString;

use crate::grant::{self, Meter};

/// (Secret name, data key) -> (`resourceVersion` read, the key's value).
type Keys = HashMap<(String, String), (String, Option<SecretString>)>;

pub struct GatewaySecrets {
    api: Api<Secret>,
    namespace: String,
    meta: Store<PartialObjectMeta<Secret>>,
    keys: Mutex<Keys>,
}

impl GatewaySecrets {
    /// The view of `namespace`, and the watch that fills it (to be driven;
    /// until its first list is in, every lookup misses and is asked).
    pub fn watch(client: Client, namespace: &str) -> (Self, impl std::future::Future<Output = ()> + Send + use<>) {
        let (store, writer) = reflector::store();
        let api: Api<PartialObjectMeta<Secret>> = Api::namespaced(client.clone(), namespace);
        // An `Api` of `PartialObjectMeta` watches metadata only.
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|s: &mut PartialObjectMeta<Secret>| s.managed_fields_mut().clear());
        let driven = reflector::reflector(writer, stream).for_each(|_| futures::future::ready(()));
        let view = Self::new(Api::namespaced(client, namespace), namespace, store);
        (view, driven)
    }

    fn new(api: Api<Secret>, namespace: &str, meta: Store<PartialObjectMeta<Secret>>) -> Self {
        Self {
            api,
            namespace: namespace.to_owned(),
            meta,
            keys: Mutex::default(),
        }
    }

    fn cached(&self, name: &str) -> Option<Arc<PartialObjectMeta<Secret>>> {
        self.meta.get(&ObjectRef::new(name).within(&self.namespace))
    }

    /// The meter on grant `name` as the cache shows it: `None` when the cache
    /// does not hold the grant (not seen yet, or gone); a meter that does not
    /// parse is an error, never zero.
    pub fn cached_meter(&self, name: &str) -> Option<Result<Meter, serde_json::Error>> {
        self.cached(name).map(|s| meter_of(s.annotations()))
    }

    /// Key `key` of the Anthropic key Secret `name`: the value read before
    /// while the cache shows the Secret unchanged since, else read now.
    /// `None` when the Secret or the key is missing or empty, or the Secret
    /// is a grant.
    pub async fn anthropic_key(&self, name: &str, key: &str) -> kube::Result<Option<SecretString>> {
        let slot = (name.to_owned(), key.to_owned());
        if let Some(version) = self.cached(name).and_then(|s| s.resource_version())
            && let Some((read_at, value)) = self.keys.lock().expect("keys lock").get(&slot)
            && *read_at == version
        {
            return Ok(value.clone());
        }
        let secret = self.api.get_opt(name).await?;
        let version = secret.as_ref().and_then(|s| s.resource_version());
        let value = anthropic_key_of(secret, key);
        let mut keys = self.keys.lock().expect("keys lock");
        match version {
            Some(v) => keys.insert(slot, (v, value.clone())),
            None => keys.remove(&slot),
        };
        Ok(value)
    }
}

/// The meter in a grant's annotations: none recorded yet is an empty meter;
/// one that does not parse is an error (and is never read as zero).
pub(super) fn meter_of(annotations: &std::collections::BTreeMap<String, String>) -> Result<Meter, serde_json::Error> {
    match annotations.get(grant::ANNOTATION_METER) {
        None => Ok(Meter::default()),
        Some(text) => serde_json::from_str(text),
    }
}

/// The Anthropic key from its Secret in the gateway's namespace. A grant is
/// never a key Secret: a policy naming one would copy another run's
/// credentials into its own grant.
pub(super) fn anthropic_key_of(secret: Option<Secret>, key: &str) -> Option<SecretString> {
    let secret = secret?;
    if is_grant(&secret) {
        return None;
    }
    secret
        .data
        .and_then(|mut d| d.remove(key))
        .and_then(|v| String::from_utf8(v.0).ok())
        .filter(|k| !k.trim().is_empty())
        .map(|k| SecretString::from(k.trim().to_owned()))
}

/// Whether a Secret is a run's grant.
pub(crate) fn is_grant(secret: &Secret) -> bool {
    secret.labels().contains_key(grant::LABEL_GRANT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use kube::runtime::watcher::Event;
    use secrecy::ExposeSecret;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn secret(labels: &[(&str, &str)], data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                labels: Some(map(labels)),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_meter_is_empty_until_written_and_never_zero_when_unreadable() {
        assert_eq!(meter_of(&map(&[])).unwrap(), Meter::default());
        let written = map(&[(grant::ANNOTATION_METER, r#"{"spentMicros":42,"requests":1}"#)]);
        let m = meter_of(&written).unwrap();
        assert_eq!((m.spent_micros, m.requests), (42, 1));
        for bad in ["", "{", "[]", r#"{"spentMicros":-1}"#] {
            assert!(meter_of(&map(&[(grant::ANNOTATION_METER, bad)])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_anthropic_key_comes_from_a_key_secret_never_from_a_grant() {
        let key = |s: Option<Secret>| anthropic_key_of(s, "api-key").map(|k| k.expose_secret().to_owned());
        assert_eq!(
            key(Some(secret(&[], &[("api-key", " sk-ant-x\n")]))).as_deref(),
            Some("sk-ant-x")
        );
        assert_eq!(key(None), None);
        assert_eq!(key(Some(secret(&[], &[("other", "sk-ant-x")]))), None);
        assert_eq!(key(Some(secret(&[], &[("api-key", "  ")]))), None);
        let grant = secret(&[(grant::LABEL_GRANT, "true")], &[("api-key", "ghs_someone_elses")]);
        assert_eq!(key(Some(grant)), None, "a grant is never a key Secret");
    }

    /// The key Secret `anthropic` at `version` holding `value`.
    fn key_secret(version: &str, value: &str) -> Secret {
        let mut s = secret(&[], &[("api-key", value)]);
        s.metadata.name = Some("anthropic".into());
        s.metadata.namespace = Some("gw".into());
        s.metadata.resource_version = Some(version.into());
        s
    }

    fn metadata(s: &Secret) -> PartialObjectMeta<Secret> {
        PartialObjectMeta {
            types: None,
            metadata: s.metadata.clone(),
            _phantom: Default::default(),
        }
    }

    /// A scripted apiserver that answers every GET with `current` and counts them.
    fn apiserver(current: Arc<Mutex<Secret>>, gets: Arc<AtomicUsize>) -> Client {
        let (service, mut handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                assert_eq!(request.method(), http::Method::GET);
                assert_eq!(request.uri().path(), "/api/v1/namespaces/gw/secrets/anthropic");
                gets.fetch_add(1, Ordering::SeqCst);
                let body = serde_json::to_vec(&*current.lock().unwrap()).unwrap();
                send.send_response(http::Response::builder().body(kube::client::Body::from(body)).unwrap());
            }
        });
        Client::new(service, "default")
    }

    #[tokio::test]
    async fn the_key_secret_is_read_again_only_when_the_watch_shows_it_changed() {
        let current = Arc::new(Mutex::new(key_secret("5", "sk-ant-one")));
        let gets = Arc::new(AtomicUsize::new(0));
        let client = apiserver(current.clone(), gets.clone());
        let (store, mut writer) = reflector::store();
        let view = GatewaySecrets::new(Api::namespaced(client, "gw"), "gw", store);
        let key = || async {
            view.anthropic_key("anthropic", "api-key")
                .await
                .unwrap()
                .map(|k| k.expose_secret().to_owned())
        };

        // Not in the watch's cache yet: asked every time.
        assert_eq!(key().await.as_deref(), Some("sk-ant-one"));
        assert_eq!(key().await.as_deref(), Some("sk-ant-one"));
        assert_eq!(gets.load(Ordering::SeqCst), 2);
        // The watch shows the version read: not asked again.
        writer.apply_watcher_event(&Event::Apply(metadata(&key_secret("5", ""))));
        assert_eq!(key().await.as_deref(), Some("sk-ant-one"));
        assert_eq!(key().await.as_deref(), Some("sk-ant-one"));
        assert_eq!(gets.load(Ordering::SeqCst), 2);
        // Rotated: the new version is read once, then served from memory.
        *current.lock().unwrap() = key_secret("9", "sk-ant-two");
        writer.apply_watcher_event(&Event::Apply(metadata(&key_secret("9", ""))));
        assert_eq!(key().await.as_deref(), Some("sk-ant-two"));
        assert_eq!(key().await.as_deref(), Some("sk-ant-two"));
        assert_eq!(gets.load(Ordering::SeqCst), 3);
        // Deleted: asked (and the apiserver's answer, here still the key, is what counts).
        writer.apply_watcher_event(&Event::Delete(metadata(&key_secret("9", ""))));
        key().await;
        assert_eq!(gets.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_grants_meter_is_read_from_the_watchs_copy() {
        let (store, mut writer) = reflector::store();
        let (service, _handle) =
            tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
        let client = Client::new(service, "default");
        let view = GatewaySecrets::new(Api::namespaced(client, "gw"), "gw", store);
        assert!(view.cached_meter("g").is_none(), "not seen: the caller asks");
        let mut g = secret(&[(grant::LABEL_GRANT, "true")], &[]);
        g.metadata.name = Some("g".into());
        g.metadata.namespace = Some("gw".into());
        g.metadata.annotations = Some(map(&[(grant::ANNOTATION_METER, r#"{"spentMicros":7,"requests":2}"#)]));
        writer.apply_watcher_event(&Event::Apply(metadata(&g)));
        let m = view.cached_meter("g").unwrap().unwrap();
        assert_eq!((m.spent_micros, m.requests), (7, 2));
    }
}
