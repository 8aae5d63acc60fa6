//! Which namespaces a process watches (`--watch-namespace`): all (one
//! cluster-wide watch), one, or several (one namespaced watch each, merged
//! into one stream by [`Merge`]): with namespaces named, namespaced Roles in
//! them suffice and nothing cluster-wide is read.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};

/// One item of a watch stream.
pub type WatchItem<K> = Result<watcher::Event<K>, watcher::Error>;

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

    /// A watch of the scope as one stream: `open` starts a watch (with its
    /// backoff) on the API it is given, cluster-wide for all namespaces,
    /// else namespaced, one per namespace, merged by [`Merge`]. `cache`
    /// reads the store the stream feeds, if one does (a re-listed
    /// namespace's deletions are found there).
    pub fn watch<A, K, S>(
        &self,
        client: &Client,
        open: impl Fn(Api<A>) -> S,
        cache: Option<Store<K>>,
    ) -> BoxStream<'static, WatchItem<K>>
    where
        A: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <A as Resource>::DynamicType: Default,
        K: Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + Hash + Clone,
        S: Stream<Item = WatchItem<K>> + Send + 'static,
    {
        match self {
            Self::All => open(Api::all(client.clone())).boxed(),
            Self::One(ns) => open(Api::namespaced(client.clone(), ns)).boxed(),
            Self::Some(set) => {
                let watches = set.iter().map(|ns| {
                    let tag = ns.clone();
                    open(Api::namespaced(client.clone(), ns))
                        .map(move |item| (tag.clone(), item))
                        .boxed()
                });
                let mut merge = Merge::new(set.iter().cloned());
                let merged = futures::stream::select_all(watches).flat_map(move |(ns, item)| {
                    let out: Vec<WatchItem<K>> = match item {
                        Err(e) => vec![Err(e)],
                        Ok(event) => {
                            let cached = || cached_in(cache.as_ref(), &ns);
                            merge.on(&ns, event, cached).into_iter().map(Ok).collect()
                        }
                    };
                    futures::stream::iter(out)
                });
                futures::stream::once(futures::future::ready(Ok(watcher::Event::Init)))
                    .chain(merged)
                    .boxed()
            }
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
}

/// What `cache` holds in namespace `ns`.
fn cached_in<K>(cache: Option<&Store<K>>, ns: &str) -> Vec<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    cache
        .map(|c| {
            c.state()
                .iter()
                .filter(|o| o.namespace().as_deref() == Some(ns))
                .map(|o| (**o).clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Merges the watches of several namespaces into one stream a single cache
/// (a kube reflector store) follows correctly. A store replaces all it holds
/// at a list's `InitDone`, so a namespace's own list markers cannot pass:
/// the merged stream opens with one `Init` (see [`Scope::watch`]), passes
/// each namespace's first list as `InitApply`, and closes it with one
/// `InitDone` once every namespace has listed. A namespace that lists again
/// later (its watch was lost) has what it lists applied, and what the cache
/// holds in it but the new list lacks deleted.
#[derive(Debug)]
pub struct Merge {
    /// Namespaces whose first list is not done.
    unlisted: BTreeSet<String>,
    /// Namespaces listing again, with the names listed so far.
    relisting: HashMap<String, HashSet<String>>,
}

impl Merge {
    pub fn new(namespaces: impl IntoIterator<Item = String>) -> Self {
        Self {
            unlisted: namespaces.into_iter().collect(),
            relisting: HashMap::new(),
        }
    }

    /// The events to pass on for `event` of namespace `ns`'s watch;
    /// `cached` gives what the cache holds in `ns` (read only at the end of
    /// a re-list).
    pub fn on<K: ResourceExt>(
        &mut self,
        ns: &str,
        event: watcher::Event<K>,
        cached: impl FnOnce() -> Vec<K>,
    ) -> Vec<watcher::Event<K>> {
        use watcher::Event::*;
        let first = self.unlisted.contains(ns);
        match event {
            Apply(o) => vec![Apply(o)],
            Delete(o) => vec![Delete(o)],
            Init if first => vec![],
            Init => {
                self.relisting.insert(ns.to_owned(), HashSet::new());
                vec![]
            }
            InitApply(o) if first => vec![InitApply(o)],
            InitApply(o) => {
                self.relisting.entry(ns.to_owned()).or_default().insert(o.name_any());
                vec![Apply(o)]
            }
            InitDone if first => {
                self.unlisted.remove(ns);
                if self.unlisted.is_empty() {
                    vec![InitDone]
                } else {
                    vec![]
                }
            }
            InitDone => {
                let listed = self.relisting.remove(ns).unwrap_or_default();
                cached()
                    .into_iter()
                    .filter(|o| !listed.contains(&o.name_any()))
                    .map(Delete)
                    .collect()
            }
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
    }

    fn named(ns: &str, name: &str) -> ClaudeRunPolicy {
        let mut p = policy_in(ns);
        p.metadata.name = Some(name.into());
        p
    }

    /// An event as `kind ns/name`, to compare.
    fn show(e: &watcher::Event<ClaudeRunPolicy>) -> String {
        let o = |p: &ClaudeRunPolicy| format!("{}/{}", p.namespace().unwrap(), p.name_any());
        match e {
            watcher::Event::Apply(p) => format!("Apply {}", o(p)),
            watcher::Event::Delete(p) => format!("Delete {}", o(p)),
            watcher::Event::InitApply(p) => format!("InitApply {}", o(p)),
            watcher::Event::Init => "Init".into(),
            watcher::Event::InitDone => "InitDone".into(),
        }
    }

    #[test]
    fn merged_watches_keep_one_cache_right() {
        use watcher::Event::*;
        let mut merge = Merge::new(["a".to_owned(), "b".to_owned()]);
        // What the cache holds in a namespace when a re-list ends.
        let cache = vec![named("a", "kept"), named("a", "gone")];
        // Row: (namespace, event, what passes on).
        let table: Vec<(&str, watcher::Event<ClaudeRunPolicy>, Vec<&str>)> = vec![
            // The first lists: one InitDone once both namespaces listed.
            ("a", Init, vec![]),
            ("a", InitApply(named("a", "kept")), vec!["InitApply a/kept"]),
            ("b", Init, vec![]),
            ("a", InitDone, vec![]),
            ("b", InitApply(named("b", "x")), vec!["InitApply b/x"]),
            ("b", InitDone, vec!["InitDone"]),
            ("a", Apply(named("a", "gone")), vec!["Apply a/gone"]),
            ("b", Delete(named("b", "x")), vec!["Delete b/x"]),
            // `a` lists again: what it lists is applied, what it lacks deleted.
            ("a", Init, vec![]),
            ("a", InitApply(named("a", "kept")), vec!["Apply a/kept"]),
            ("a", InitApply(named("a", "new")), vec!["Apply a/new"]),
            ("a", InitDone, vec!["Delete a/gone"]),
        ];
        for (i, (ns, event, want)) in table.into_iter().enumerate() {
            let got: Vec<String> = merge.on(ns, event, || cache.clone()).iter().map(show).collect();
            assert_eq!(got, want, "row {i}");
        }
    }
}
