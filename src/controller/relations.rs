//! Who triggers whom: indexes from a referenced object to its referrers, and the channels that queue reconciles.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::watch::Change;
use crate::api::{Connector, EmbeddedConnection, UserActivation};

type Key = (String, String);
/// One activation, shared by every index that lists it (name and namespace only: no resourceVersion or uid).
type Ref = Arc<ObjectRef<UserActivation>>;
/// What one activation is indexed under: its connection, its source Secret (if any), its (connection, user) key.
type Entry = (Key, Option<Key>, (String, String, String));

/// Indexes kept up to date by the activation watch.
#[derive(Default)]
pub struct Relations {
    inner: RwLock<Index>,
}

#[derive(Default)]
struct Index {
    by_connection: HashMap<Key, HashSet<Ref>>,
    by_secret: HashMap<Key, HashSet<Ref>>,
    by_namespace: HashMap<String, HashSet<Ref>>,
    /// (connection namespace, connection name, user id) → activations: for the DuplicateUser check.
    by_user: HashMap<(String, String, String), HashSet<Ref>>,
    /// (namespace, user id) → activations: a user's other connections, for Jobs that need several.
    by_tenant_user: HashMap<Key, HashSet<Ref>>,
    /// What each activation was indexed under, to unindex it.
    entries: HashMap<Ref, Entry>,
    /// (namespace, activation uid) → names of its Jobs.
    jobs: HashMap<Key, HashSet<String>>,
}

impl Relations {
    pub fn activation_changed(&self, ua: &UserActivation, change: Change) {
        let ns = ua.namespace().unwrap_or_default();
        let r: Ref = Arc::new(ObjectRef::new(&ua.name_any()).within(&ns));
        let Ok(mut idx) = self.inner.write() else { return };
        if let Some((conn, secret, user)) = idx.entries.remove(&r) {
            remove(&mut idx.by_connection, &conn, &r);
            if let Some(s) = secret {
                remove(&mut idx.by_secret, &s, &r);
            }
            if let Some(set) = idx.by_user.get_mut(&user) {
                set.remove(&r);
                if set.is_empty() {
                    idx.by_user.remove(&user);
                }
            }
            let tu = (r.namespace.clone().unwrap_or_default(), user.2.clone());
            remove(&mut idx.by_tenant_user, &tu, &r);
        }
        if change == Change::Deleted {
            if let Some(set) = idx.by_namespace.get_mut(&ns) {
                set.remove(&r);
            }
            return;
        }
        let conn = (ua.connection_namespace().unwrap_or_default(), ua.spec.connection_ref.name.clone());
        let secret = ua.spec.credentials_secret_ref.as_ref().map(|s| (ns.clone(), s.name.clone()));
        idx.by_connection.entry(conn.clone()).or_default().insert(r.clone());
        if let Some(s) = &secret {
            idx.by_secret.entry(s.clone()).or_default().insert(r.clone());
        }
        idx.by_namespace.entry(ns).or_default().insert(r.clone());
        let user = (conn.0.clone(), conn.1.clone(), ua.spec.user.id.clone());
        idx.by_user.entry(user.clone()).or_default().insert(r.clone());
        idx.by_tenant_user.entry((ns_of(&r), user.2.clone())).or_default().insert(r.clone());
        idx.entries.insert(r, (conn, secret, user));
    }

    /// The activations of one user (by `user.id`) in one namespace.
    pub fn activations_of_tenant_user(&self, ns: &str, user_id: &str) -> Vec<ObjectRef<UserActivation>> {
        self.get(|i| i.by_tenant_user.get(&(ns.to_string(), user_id.to_string())))
    }

    /// Activations of the same connection with the same user id (including `ua` itself).
    pub fn activations_of_user(&self, ua: &UserActivation) -> Vec<ObjectRef<UserActivation>> {
        let key = (ua.connection_namespace().unwrap_or_default(), ua.spec.connection_ref.name.clone(), ua.spec.user.id.clone());
        self.inner.read().ok().and_then(|i| i.by_user.get(&key).map(|s| s.iter().map(|r| (**r).clone()).collect())).unwrap_or_default()
    }

    /// Keeps the index of Jobs by owning activation: the uid of its controlling UserActivation owner (the Job's
    /// `latchkey.dev/activation-uid` label says the same; the store does not keep labels).
    pub fn job_changed(&self, meta: &ObjectMeta, change: Change) {
        let (Some(ns), Some(name)) = (meta.namespace.clone(), meta.name.clone()) else { return };
        let owner = meta.owner_references.iter().flatten().find(|o| o.kind == "UserActivation" && o.controller == Some(true));
        let Some(uid) = owner.map(|o| o.uid.clone()) else { return };
        let Ok(mut idx) = self.inner.write() else { return };
        let key = (ns, uid);
        if change == Change::Deleted {
            if let Some(set) = idx.jobs.get_mut(&key) {
                set.remove(&name);
                if set.is_empty() {
                    idx.jobs.remove(&key);
                }
            }
        } else {
            idx.jobs.entry(key).or_default().insert(name);
        }
    }

    /// Names of the Jobs of the activation with `uid` in `ns`.
    pub fn jobs_of(&self, ns: &str, uid: &str) -> Vec<String> {
        self.inner
            .read()
            .ok()
            .and_then(|i| i.jobs.get(&(ns.to_string(), uid.to_string())).map(|s| s.iter().cloned().collect()))
            .unwrap_or_default()
    }

    pub fn activations_of_connection(&self, ec: &EmbeddedConnection) -> Vec<ObjectRef<UserActivation>> {
        self.get(|i| i.by_connection.get(&(ec.namespace().unwrap_or_default(), ec.name_any())))
    }

    pub fn activations_using_secret(&self, ns: &str, name: &str) -> Vec<ObjectRef<UserActivation>> {
        self.get(|i| i.by_secret.get(&(ns.to_string(), name.to_string())))
    }

    pub fn activations_in_namespace(&self, ns: &str) -> Vec<ObjectRef<UserActivation>> {
        self.get(|i| i.by_namespace.get(ns))
    }

    fn get(&self, f: impl FnOnce(&Index) -> Option<&HashSet<Ref>>) -> Vec<ObjectRef<UserActivation>> {
        self.inner.read().ok().and_then(|i| f(&i).map(|s| s.iter().map(|r| (**r).clone()).collect())).unwrap_or_default()
    }
}

fn ns_of(r: &Ref) -> String {
    r.namespace.clone().unwrap_or_default()
}

fn remove(map: &mut HashMap<Key, HashSet<Ref>>, key: &Key, r: &Ref) {
    if let Some(set) = map.get_mut(key) {
        set.remove(r);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

/// Senders that queue reconciles.
#[derive(Clone)]
pub struct Triggers {
    activations: UnboundedSender<ObjectRef<UserActivation>>,
    connections: UnboundedSender<ObjectRef<EmbeddedConnection>>,
    connectors: UnboundedSender<ObjectRef<Connector>>,
}

pub struct Receivers {
    pub activations: UnboundedReceiver<ObjectRef<UserActivation>>,
    pub connections: UnboundedReceiver<ObjectRef<EmbeddedConnection>>,
    pub connectors: UnboundedReceiver<ObjectRef<Connector>>,
}

impl Triggers {
    pub fn new() -> (Self, Receivers) {
        let (a, ar) = unbounded_channel();
        let (c, cr) = unbounded_channel();
        let (k, kr) = unbounded_channel();
        (Self { activations: a, connections: c, connectors: k }, Receivers { activations: ar, connections: cr, connectors: kr })
    }

    pub fn activation(&self, r: ObjectRef<UserActivation>) {
        let _ = self.activations.send(r);
    }
    pub fn connection(&self, r: ObjectRef<EmbeddedConnection>) {
        let _ = self.connections.send(r);
    }
    pub fn connector(&self, r: ObjectRef<Connector>) {
        let _ = self.connectors.send(r);
    }

    /// An activation changed: reconcile it and recount its connection.
    pub fn activation_changed(&self, ua: &UserActivation) {
        self.activation(ObjectRef::from_obj(ua));
        if let Some(ns) = ua.connection_namespace() {
            self.connection(ObjectRef::new(&ua.spec.connection_ref.name).within(&ns));
        }
    }

    /// A Secret or Job the operator owns changed: reconcile its activation.
    pub fn owner_of(&self, meta: &ObjectMeta) {
        let Some(ns) = meta.namespace.as_deref() else { return };
        for o in meta.owner_references.iter().flatten().filter(|o| o.kind == "UserActivation" && o.controller == Some(true)) {
            self.activation(ObjectRef::new(&o.name).within(ns));
        }
    }
}
