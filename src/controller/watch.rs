//! Reflectors fed by one watch per namespace (or one for the whole cluster), pruned before they are stored, with
//! a callback per change so that relations can trigger reconciles.
//!
//! kube's store expects one watch: its `InitDone` replaces the whole store. With several namespaces each watch
//! re-lists on its own, so this module feeds the store itself: the first listing of every watch is buffered and
//! swapped in once all are done; a later re-list of one namespace removes only that namespace's vanished objects.
use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

use futures::{Stream, StreamExt, stream::BoxStream};
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::{
    Resource, ResourceExt,
    runtime::{
        reflector::{self, ObjectRef, Store},
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
}

/// Starts a task that keeps a store of `K` from `watches`; `prune` runs on every object before it is stored and
/// `on_change` after. Returns the store's reader; `Store::wait_until_ready` resolves once every watch has listed.
pub fn reflect<K>(
    kind: &'static str,
    watches: Vec<Watch<K>>,
    mut prune: impl FnMut(&mut K) + Send + 'static,
    mut on_change: impl FnMut(&K, Change) + Send + 'static,
) -> Store<K>
where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, mut writer) = reflector::store::<K>();
    let store = reader.clone();
    let namespaces: Vec<Option<String>> = watches.iter().map(|w| w.namespace.clone()).collect();
    let n = watches.len();
    let mut merged = futures::stream::select_all(watches.into_iter().enumerate().map(|(i, w)| w.events.map(move |e| (i, e))));
    tokio::spawn(async move {
        writer.apply_watcher_event(&Event::Init);
        let mut listed = vec![false; n];
        let mut ready = false;
        let mut relisting: Vec<Option<HashSet<ObjectRef<K>>>> = (0..n).map(|_| None).collect();
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
                Event::InitApply(mut obj) | Event::Apply(mut obj) => {
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
                Event::Delete(obj) => {
                    writer.apply_watcher_event(&Event::Delete(obj.clone()));
                    on_change(&obj, Change::Deleted);
                }
                Event::InitDone => {
                    if !ready {
                        listed[i] = true;
                        if listed.iter().all(|l| *l) {
                            writer.apply_watcher_event(&Event::InitDone);
                            ready = true;
                        }
                    } else if let Some(seen) = relisting[i].take() {
                        let ns = &namespaces[i];
                        let gone: Vec<_> = reader
                            .state()
                            .into_iter()
                            .filter(|o| ns.is_none() || o.namespace() == *ns)
                            .filter(|o| !seen.contains(&ObjectRef::from_obj(o.as_ref())))
                            .collect();
                        for obj in gone {
                            let obj = (*obj).clone();
                            writer.apply_watcher_event(&Event::Delete(obj.clone()));
                            on_change(&obj, Change::Deleted);
                        }
                    }
                }
            }
        }
    });
    store
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

/// What the owned-Secret store keeps: the annotations (data hash, source version, generation, token timing) and
/// the owner reference; the labels served the selector and are dropped, and so is the type (every object of a
/// store is a Secret).
pub fn prune_owned_secret(obj: &mut PartialObjectMeta<Secret>) {
    prune_meta(obj);
    obj.types = None;
    obj.metadata.labels = None;
}

/// What the source-Secret store keeps: name and resourceVersion (whether the data changed).
pub fn prune_source_secret(obj: &mut PartialObjectMeta<Secret>) {
    obj.types = None;
    let meta = &mut obj.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
    meta.owner_references = None;
    meta.uid = None;
    meta.creation_timestamp = None;
    meta.generation = None;
}
