//! Reflectors fed by one watch per namespace (or one for the whole cluster), pruned before they are stored, with
//! a callback per change so that relations can trigger reconciles.
//!
//! kube's store expects one watch: its `InitDone` replaces the whole store. With several namespaces each watch
//! re-lists on its own, so this module feeds the store itself: the first listing of every watch is buffered and
//! swapped in once all are done; a later re-list of one namespace removes only that namespace's vanished objects.
use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{Stream, StreamExt, TryStreamExt, stream::BoxStream};
use kube::{
    Resource,
    runtime::{
        reflector::{self, Lookup, ObjectRef, Store},
        watcher::{self, Event},
    },
};
use tracing::warn;

/// A change seen on a watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Applied,
    Deleted,
}

/// One watch and the namespace it covers (`None`: all).
pub struct Watch<K> {
    pub namespace: Option<String>,
    pub events: BoxStream<'static, Result<Event<K>, watcher::Error>>,
}

impl<K> Watch<K> {
    pub fn new(namespace: Option<String>, events: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static) -> Self {
        Self { namespace, events: events.boxed() }
    }

    /// The same watch with each object turned into a `T` as it arrives: only the `T` reaches the store.
    pub fn map<T: 'static>(self, f: fn(K) -> T) -> Watch<T>
    where
        K: 'static,
    {
        let events = self.events.map_ok(move |e| match e {
            Event::Apply(o) => Event::Apply(f(o)),
            Event::InitApply(o) => Event::InitApply(f(o)),
            Event::Delete(o) => Event::Delete(f(o)),
            Event::Init => Event::Init,
            Event::InitDone => Event::InitDone,
        });
        Watch::new(self.namespace, events)
    }
}

/// How far each watch of a store has read: the highest resourceVersion among the changes it delivered. A watch
/// delivers changes in resourceVersion order, so every change up to that version is in the store: an object the
/// operator wrote at a version at most that far is shown there, or a later version of it, or its deletion. A
/// listing arrives in key order, so it counts only once it is complete.
///
/// resourceVersions are opaque to clients in general; the apiserver's are etcd revisions (one counter for all
/// kinds), and a version that does not parse as a number is never counted as reached.
#[derive(Debug, Default)]
pub struct Progress {
    marks: Vec<(Option<String>, AtomicU64)>,
}

impl Progress {
    pub(crate) fn new(namespaces: &[Option<String>]) -> Self {
        Self { marks: namespaces.iter().map(|ns| (ns.clone(), AtomicU64::new(0))).collect() }
    }

    pub(crate) fn advance(&self, watch: usize, version: u64) {
        if let Some((_, m)) = self.marks.get(watch) {
            m.fetch_max(version, Ordering::Relaxed);
        }
    }

    /// Whether the watch covering `namespace` has delivered every change up to `resource_version`.
    pub fn reached(&self, namespace: &str, resource_version: &str) -> bool {
        let Ok(wanted) = resource_version.parse::<u64>() else { return false };
        self.marks
            .iter()
            .find(|(ns, _)| ns.as_deref().is_none_or(|n| n == namespace))
            .is_some_and(|(_, m)| m.load(Ordering::Relaxed) >= wanted)
    }
}

fn version_of<K: Lookup>(obj: &K) -> Option<u64> {
    obj.resource_version().and_then(|v| v.parse().ok())
}

/// Starts a task that keeps a store of `K` from `watches`; `prune` runs on every object before it is stored and
/// `on_change` after. Returns the store's reader; `Store::wait_until_ready` resolves once every watch has listed.
pub fn reflect<K>(
    kind: &'static str,
    watches: Vec<Watch<K>>,
    prune: impl FnMut(&mut K) + Send + 'static,
    on_change: impl FnMut(&K, Change) + Send + 'static,
) -> Store<K>
where
    K: Lookup + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    reflect_tracked(kind, watches, prune, on_change).0
}

/// [`reflect`], also returning how far its watches have read.
pub fn reflect_tracked<K>(
    kind: &'static str,
    watches: Vec<Watch<K>>,
    mut prune: impl FnMut(&mut K) + Send + 'static,
    mut on_change: impl FnMut(&K, Change) + Send + 'static,
) -> (Store<K>, Arc<Progress>)
where
    K: Lookup + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, mut writer) = reflector::store::<K>();
    let store = reader.clone();
    let namespaces: Vec<Option<String>> = watches.iter().map(|w| w.namespace.clone()).collect();
    let n = watches.len();
    let progress = Arc::new(Progress::new(&namespaces));
    let read = progress.clone();
    let mut merged = futures::stream::select_all(watches.into_iter().enumerate().map(|(i, w)| w.events.map(move |e| (i, e))));
    tokio::spawn(async move {
        writer.apply_watcher_event(&Event::Init);
        let mut listed = vec![false; n];
        let mut ready = false;
        let mut relisting: Vec<Option<HashSet<ObjectRef<K>>>> = (0..n).map(|_| None).collect();
        // The highest version in each watch's listing under way.
        let mut listing: Vec<u64> = vec![0; n];
        while let Some((i, event)) = merged.next().await {
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    warn!(kind, error = %e, "watch failed; retrying with backoff");
                    continue;
                }
            };
            match event {
                Event::Init => {
                    if ready {
                        relisting[i] = Some(HashSet::new());
                    }
                }
                Event::InitApply(mut obj) => {
                    listing[i] = listing[i].max(version_of(&obj).unwrap_or(0));
                    prune(&mut obj);
                    if !ready {
                        writer.apply_watcher_event(&Event::InitApply(obj.clone()));
                    } else {
                        if let Some(seen) = relisting[i].as_mut() {
                            seen.insert(ObjectRef::from_obj(&obj));
                        }
                        writer.apply_watcher_event(&Event::Apply(obj.clone()));
                    }
                    on_change(&obj, Change::Applied);
                }
                Event::Apply(mut obj) => {
                    let v = version_of(&obj).unwrap_or(0);
                    prune(&mut obj);
                    if !ready {
                        // Other watches are still listing: buffered with the listing, counted with it.
                        writer.apply_watcher_event(&Event::InitApply(obj.clone()));
                        listing[i] = listing[i].max(v);
                    } else {
                        writer.apply_watcher_event(&Event::Apply(obj.clone()));
                        read.advance(i, v);
                    }
                    on_change(&obj, Change::Applied);
                }
                Event::Delete(obj) => {
                    writer.apply_watcher_event(&Event::Delete(obj.clone()));
                    if ready {
                        read.advance(i, version_of(&obj).unwrap_or(0));
                    }
                    on_change(&obj, Change::Deleted);
                }
                Event::InitDone => {
                    if !ready {
                        listed[i] = true;
                        if listed.iter().all(|l| *l) {
                            writer.apply_watcher_event(&Event::InitDone);
                            ready = true;
                            // The store shows no listing before all are done: they count from now.
                            for (w, v) in listing.iter_mut().enumerate() {
                                read.advance(w, std::mem::take(v));
                            }
                        }
                        continue;
                    }
                    if let Some(seen) = relisting[i].take() {
                        let ns = &namespaces[i];
                        let gone: Vec<_> = reader
                            .state()
                            .into_iter()
                            .filter(|o| ns.is_none() || o.namespace().as_deref() == ns.as_deref())
                            .filter(|o| !seen.contains(&ObjectRef::from_obj(o.as_ref())))
                            .collect();
                        for obj in gone {
                            let obj = (*obj).clone();
                            writer.apply_watcher_event(&Event::Delete(obj.clone()));
                            on_change(&obj, Change::Deleted);
                        }
                    }
                    read.advance(i, std::mem::take(&mut listing[i]));
                }
            }
        }
    });
    (store, progress)
}

/// Drops what a store does not need: managed fields and the last-applied annotation.
pub fn prune_meta<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// What the Job store keeps of a [`JobRecord`] (already without spec or pod counters): the metadata the relations
/// and the history limits read (name, owner, creation time); managed fields, annotations, labels (the relations
/// index a Job by its controlling owner's uid, the same as its activation-uid label) and its own uid are dropped.
pub fn prune_job(job: &mut crate::job_record::JobRecord) {
    prune_meta(job);
    job.metadata.annotations = None;
    job.metadata.labels = None;
    job.metadata.uid = None;
}
#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use std::time::Duration;

    fn cm(ns: &str, name: &str, version: u64) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                resource_version: Some(version.to_string()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    async fn eventually(what: &str, f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("never: {what}");
    }

    #[test]
    fn progress_is_per_watch_namespace_and_never_reached_by_an_opaque_version() {
        let p = Progress::new(&[Some("a".into()), Some("b".into())]);
        p.advance(0, 100);
        assert!(p.reached("a", "100") && p.reached("a", "42"));
        assert!(!p.reached("a", "101"));
        assert!(!p.reached("b", "42"), "watch b has read nothing");
        assert!(!p.reached("c", "1"), "no watch covers c");
        assert!(!p.reached("a", "not-a-number"));
        p.advance(0, 7);
        assert!(p.reached("a", "100"), "never goes back");
        let all = Progress::new(&[None]);
        all.advance(0, 5);
        assert!(all.reached("any", "5"));
        assert!(!Progress::default().reached("a", "1"), "no watches: nothing read");
    }

    #[tokio::test]
    async fn a_listing_counts_once_complete_and_live_changes_at_once() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let (store, read) = reflect_tracked("ConfigMap", vec![Watch::new(None, rx)], |_: &mut ConfigMap| {}, |_, _| {});
        tx.unbounded_send(Ok(Event::Init)).unwrap();
        // A listing comes in key order: its highest version says nothing until the listing is complete.
        tx.unbounded_send(Ok(Event::InitApply(cm("t", "a", 70)))).unwrap();
        tx.unbounded_send(Ok(Event::InitApply(cm("t", "b", 30)))).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!read.reached("t", "30"), "listing not complete");
        tx.unbounded_send(Ok(Event::InitDone)).unwrap();
        eventually("the listing counted", || read.reached("t", "70")).await;
        assert_eq!(store.state().len(), 2);
        tx.unbounded_send(Ok(Event::Apply(cm("t", "c", 90)))).unwrap();
        eventually("a live change counted", || read.reached("t", "90")).await;
        assert!(store.get(&ObjectRef::new("c").within("t")).is_some(), "the store shows what was counted");
        tx.unbounded_send(Ok(Event::Delete(cm("t", "a", 95)))).unwrap();
        eventually("a deletion counted", || read.reached("t", "95")).await;
        assert!(store.get(&ObjectRef::new("a").within("t")).is_none());
        // A re-list (after a watch desync) counts again only once complete.
        tx.unbounded_send(Ok(Event::Init)).unwrap();
        tx.unbounded_send(Ok(Event::InitApply(cm("t", "b", 120)))).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!read.reached("t", "120"));
        tx.unbounded_send(Ok(Event::InitDone)).unwrap();
        eventually("the re-list counted", || read.reached("t", "120")).await;
        assert!(store.get(&ObjectRef::new("c").within("t")).is_none(), "gone from the re-list: removed");
    }
}
