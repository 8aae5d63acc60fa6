//! Which namespaces a process watches (`--watch-namespace`): all, one (a
//! namespaced watch, so namespaced Roles suffice), or several (a cluster-wide
//! watch whose events outside them are dropped before any cache sees them).

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};

/// The namespaces watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace.
    All,
    /// Exactly one.
    One(String),
    /// Several, from a cluster-wide watch.
    Some(Arc<BTreeSet<String>>),
}

impl Scope {
    /// From the flag's values (empty ones ignored).
    pub fn new(namespaces: &[String]) -> Self {
        let set: BTreeSet<String> = namespaces
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        match set.len() {
            0 => Self::All,
            1 => Self::One(set.into_iter().next().unwrap_or_default()),
            _ => Self::Some(Arc::new(set)),
        }
    }

    /// The API to watch: namespaced for one namespace, else cluster-wide.
    pub fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        match self {
            Self::One(ns) => Api::namespaced(client.clone(), ns),
            _ => Api::all(client.clone()),
        }
    }

    /// Whether an object in `namespace` is in scope.
    pub fn contains(&self, namespace: Option<&str>) -> bool {
        match self {
            Self::All => true,
            Self::One(ns) => namespace == Some(ns.as_str()),
            Self::Some(set) => namespace.is_some_and(|n| set.contains(n)),
        }
    }

    /// Whether a watch event is kept: object events only in scope; the
    /// list markers (`Init`, `InitDone`) always, so caches stay consistent.
    pub fn keeps<K: ResourceExt>(&self, event: &Result<watcher::Event<K>, watcher::Error>) -> bool {
        match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o) | watcher::Event::InitApply(o)) => {
                self.contains(o.namespace().as_deref())
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ClaudeRunPolicy;

    fn policy_in(ns: &str) -> ClaudeRunPolicy {
        let mut p = crate::sandbox::fixtures::policy();
        p.metadata.namespace = Some(ns.into());
        p
    }

    #[test]
    fn scope_table() {
        let s = |v: &[&str]| Scope::new(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&[]), Scope::All);
        assert_eq!(s(&["", " "]), Scope::All);
        assert_eq!(s(&["a"]), Scope::One("a".into()));
        assert_eq!(s(&["a", "a"]), Scope::One("a".into()));
        let two = s(&["a", "b"]);
        assert!(matches!(two, Scope::Some(_)));
        for (scope, ns, want) in [
            (Scope::All, Some("x"), true),
            (s(&["a"]), Some("a"), true),
            (s(&["a"]), Some("b"), false),
            (two.clone(), Some("b"), true),
            (two.clone(), Some("c"), false),
            (two.clone(), None, false),
        ] {
            assert_eq!(scope.contains(ns), want, "{scope:?} {ns:?}");
        }
        assert!(two.keeps(&Ok(watcher::Event::Apply(policy_in("a")))));
        assert!(!two.keeps(&Ok(watcher::Event::InitApply(policy_in("c")))));
        assert!(!two.keeps(&Ok(watcher::Event::Delete(policy_in("c")))));
        assert!(two.keeps(&Ok(watcher::Event::<ClaudeRunPolicy>::InitDone)));
        assert!(two.keeps(&Ok(watcher::Event::<ClaudeRunPolicy>::Init)));
    }
}
