//! Who triggers whom: indexes from a referenced object to its referrers, and the channels that queue reconciles.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::watch::Change;
use crate::api::{Connector, EmbeddedConnection, UserActivation};

/// One activation, shared by every index that lists it (name and namespace only: no resourceVersion or uid).
type Ref = Arc<ObjectRef<UserActivation>>;
/// An index key: its parts in one string joined by NUL (see [`key`]), shared by the index and the entries that
/// point into it, so that a key costs one allocation however many activations it lists.
type Key = Arc<str>;

/// The parts of a key joined by NUL. Names and namespaces cannot hold one; only the last part may (a user id),
/// so a key stands for one tuple of parts.
fn key(parts: &[&str]) -> String {
    parts.join("\0")
}

/// What one activation is indexed under, to unindex it.
struct Entry {
    connection: Key,
    secret: Option<Key>,
    user: Key,
    tenant_user: Key,
}

/// Indexes kept up to date by the activation watch.
#[derive(Default)]
pub struct Relations {
    inner: RwLock<Index>,
}

/// The indexes under keys of few activations (a Secret, a user) list them in a `Vec` (usually one); those of many
/// (a connection, a namespace) in a set.
#[derive(Default)]
struct Index {
    /// (connection namespace, connection name) → activations.
    by_connection: HashMap<Key, HashSet<Ref>>,
    /// (namespace, source Secret name) → activations.
    by_secret: HashMap<Key, Vec<Ref>>,
    by_namespace: HashMap<Key, HashSet<Ref>>,
    /// (connection namespace, connection name, user id) → activations: for the DuplicateUser check.
    by_user: HashMap<Key, Vec<Ref>>,
    /// (namespace, user id) → activations: a user's other connections, for Jobs that need several.
    by_tenant_user: HashMap<Key, Vec<Ref>>,
    entries: HashMap<Ref, Entry>,
    /// (namespace, activation uid) → names of its Jobs.
    jobs: HashMap<Box<str>, Vec<Box<str>>>,
}

/// A list of referrers under one key.
trait Referrers: Default {
    fn add(&mut self, r: &Ref);
    /// Removes `r`; whether the list is empty now.
    fn remove(&mut self, r: &Ref) -> bool;
    fn refs(&self) -> Vec<ObjectRef<UserActivation>>;
}

impl Referrers for HashSet<Ref> {
    fn add(&mut self, r: &Ref) {
        self.insert(r.clone());
    }
    fn remove(&mut self, r: &Ref) -> bool {
        HashSet::remove(self, r);
        self.is_empty()
    }
    fn refs(&self) -> Vec<ObjectRef<UserActivation>> {
        self.iter().map(|r| (**r).clone()).collect()
    }
}

impl Referrers for Vec<Ref> {
    fn add(&mut self, r: &Ref) {
        if !self.contains(r) {
            self.push(r.clone());
        }
    }
    fn remove(&mut self, r: &Ref) -> bool {
        self.retain(|x| x != r);
        self.is_empty()
    }
    fn refs(&self) -> Vec<ObjectRef<UserActivation>> {
        self.iter().map(|r| (**r).clone()).collect()
    }
}

/// Lists `r` under `k`; returns the key as the index holds it (the existing one when there is one).
fn add<L: Referrers>(map: &mut HashMap<Key, L>, k: &str, r: &Ref) -> Key {
    let k = match map.get_key_value(k) {
        Some((k, _)) => k.clone(),
        None => Key::from(k),
    };
    map.entry(k.clone()).or_default().add(r);
    k
}

fn remove<L: Referrers>(map: &mut HashMap<Key, L>, k: &str, r: &Ref) {
    if map.get_mut(k).is_some_and(|l| l.remove(r)) {
        map.remove(k);
    }
}

fn refs<L: Referrers>(map: &HashMap<Key, L>, k: &str) -> Vec<ObjectRef<UserActivation>> {
    map.get(k).map(L::refs).unwrap_or_default()
}

impl Relations {
    pub fn activation_changed(&self, ua: &UserActivation, change: Change) {
        let ns = ua.namespace().unwrap_or_default();
        let r: Ref = Arc::new(ObjectRef::new(&ua.name_any()).within(&ns));
        let conn_ns = ua.connection_namespace().unwrap_or_default();
        let (conn_name, user_id) = (ua.spec.connection_ref.name.as_str(), ua.spec.user.id.as_str());
        let connection = key(&[&conn_ns, conn_name]);
        let secret = ua.spec.credentials_secret_ref.as_ref().map(|s| key(&[&ns, &s.name]));
        let user = key(&[&conn_ns, conn_name, user_id]);
        let tenant_user = key(&[&ns, user_id]);
        let Ok(mut idx) = self.inner.write() else { return };
        let idx = &mut *idx;
        if let Some(old) = idx.entries.get(&r) {
            let same = change == Change::Applied
                && (&*old.connection, old.secret.as_deref(), &*old.user, &*old.tenant_user)
                    == (connection.as_str(), secret.as_deref(), user.as_str(), tenant_user.as_str());
            if same {
                return;
            }
        }
        if let Some(old) = idx.entries.remove(&r) {
            remove(&mut idx.by_connection, &old.connection, &r);
            if let Some(s) = &old.secret {
                remove(&mut idx.by_secret, s, &r);
            }
            remove(&mut idx.by_user, &old.user, &r);
            remove(&mut idx.by_tenant_user, &old.tenant_user, &r);
        }
        if change == Change::Deleted {
            remove(&mut idx.by_namespace, &ns, &r);
            return;
        }
        let entry = Entry {
            connection: add(&mut idx.by_connection, &connection, &r),
            secret: secret.map(|s| add(&mut idx.by_secret, &s, &r)),
            user: add(&mut idx.by_user, &user, &r),
            tenant_user: add(&mut idx.by_tenant_user, &tenant_user, &r),
        };
        add(&mut idx.by_namespace, &ns, &r);
        idx.entries.insert(r, entry);
    }

    /// The activations of one user (by `user.id`) in one namespace.
    pub fn activations_of_tenant_user(&self, ns: &str, user_id: &str) -> Vec<ObjectRef<UserActivation>> {
        self.get(|i| refs(&i.by_tenant_user, &key(&[ns, user_id])))
    }

    /// Activations of the same connection with the same user id (including `ua` itself).
    pub fn activations_of_user(&self, ua: &UserActivation) -> Vec<ObjectRef<UserActivation>> {
        let k = key(&[&ua.connection_namespace().unwrap_or_default(), &ua.spec.connection_ref.name, &ua.spec.user.id]);
        self.get(|i| refs(&i.by_user, &k))
    }

    /// Keeps the index of Jobs by owning activation: the uid of its controlling UserActivation owner (the Job's
    /// `latchkey.dev/activation-uid` label says the same; the store does not keep labels).
    pub fn job_changed(&self, meta: &ObjectMeta, change: Change) {
        let (Some(ns), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else { return };
        let owner = meta.owner_references.iter().flatten().find(|o| o.kind == "UserActivation" && o.controller == Some(true));
        let Some(uid) = owner.map(|o| o.uid.as_str()) else { return };
        let k = key(&[ns, uid]);
        let Ok(mut idx) = self.inner.write() else { return };
        if change == Change::Deleted {
            if let Some(names) = idx.jobs.get_mut(k.as_str()) {
                names.retain(|n| &**n != name);
                if names.is_empty() {
                    idx.jobs.remove(k.as_str());
                }
            }
        } else {
            let names = idx.jobs.entry(k.into()).or_default();
            if !names.iter().any(|n| &**n == name) {
                names.push(name.into());
            }
        }
    }

    /// Names of the Jobs of the activation with `uid` in `ns`.
    pub fn jobs_of(&self, ns: &str, uid: &str) -> Vec<String> {
        let k = key(&[ns, uid]);
        self.inner.read().ok().and_then(|i| i.jobs.get(k.as_str()).map(|s| s.iter().map(|n| n.to_string()).collect())).unwrap_or_default()
    }

    pub fn activations_of_connection(&self, ec: &EmbeddedConnection) -> Vec<ObjectRef<UserActivation>> {
        let k = key(&[&ec.namespace().unwrap_or_default(), &ec.name_any()]);
        self.get(|i| refs(&i.by_connection, &k))
    }

    pub fn activations_using_secret(&self, ns: &str, name: &str) -> Vec<ObjectRef<UserActivation>> {
        self.get(|i| refs(&i.by_secret, &key(&[ns, name])))
    }

    pub fn activations_in_namespace(&self, ns: &str) -> Vec<ObjectRef<UserActivation>> {
        self.get(|i| refs(&i.by_namespace, ns))
    }

    fn get(&self, f: impl FnOnce(&Index) -> Vec<ObjectRef<UserActivation>>) -> Vec<ObjectRef<UserActivation>> {
        self.inner.read().ok().map(|i| f(&i)).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn ua(name: &str, ns: &str, user: &str, secret: Option<&str>) -> UserActivation {
        let mut spec = serde_json::json!({"connectionRef": {"name": "c", "namespace": "int"}, "user": {"id": user}});
        if let Some(s) = secret {
            spec["credentialsSecretRef"] = serde_json::json!({"name": s});
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": name, "namespace": ns}, "spec": spec
        }))
        .unwrap()
    }

    fn names(mut refs: Vec<ObjectRef<UserActivation>>) -> Vec<String> {
        refs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        refs.into_iter().map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name)).collect()
    }

    fn connection() -> EmbeddedConnection {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "c", "namespace": "int"},
            "spec": {"connectorRef": {"name": "k"}, "authMethod": "token"}
        }))
        .unwrap()
    }

    #[test]
    fn activations_are_found_by_what_they_reference_until_it_changes_or_they_go() {
        let r = Relations::default();
        let (a, b) = (ua("a", "t1", "u1", Some("key-a")), ua("b", "t2", "u1", Some("key-a")));
        for _ in 0..2 {
            r.activation_changed(&a, Change::Applied);
            r.activation_changed(&b, Change::Applied);
        }
        assert_eq!(names(r.activations_of_connection(&connection())), ["t1/a", "t2/b"]);
        assert_eq!(names(r.activations_using_secret("t1", "key-a")), ["t1/a"], "a Secret is looked up in the activation's namespace");
        assert_eq!(names(r.activations_of_user(&a)), ["t1/a", "t2/b"], "one user of one connection, twice");
        assert_eq!(names(r.activations_of_tenant_user("t1", "u1")), ["t1/a"]);
        assert_eq!(names(r.activations_in_namespace("t2")), ["t2/b"]);

        let a2 = ua("a", "t1", "u2", Some("key-new"));
        r.activation_changed(&a2, Change::Applied);
        assert!(r.activations_using_secret("t1", "key-a").is_empty());
        assert_eq!(names(r.activations_using_secret("t1", "key-new")), ["t1/a"]);
        assert_eq!(names(r.activations_of_user(&a)), ["t2/b"]);
        assert_eq!(names(r.activations_of_tenant_user("t1", "u2")), ["t1/a"]);

        r.activation_changed(&a2, Change::Deleted);
        r.activation_changed(&ua("b", "t2", "u1", None), Change::Applied);
        assert_eq!(names(r.activations_of_connection(&connection())), ["t2/b"]);
        assert!(r.activations_using_secret("t1", "key-new").is_empty() && r.activations_using_secret("t1", "key-a").is_empty());
        assert!(r.activations_in_namespace("t1").is_empty());
        let idx = r.inner.read().unwrap();
        assert_eq!(
            (idx.by_secret.len(), idx.by_user.len(), idx.by_tenant_user.len(), idx.by_namespace.len()),
            (0, 1, 1, 1),
            "no empty lists left"
        );
    }

    #[test]
    fn a_user_id_holding_the_separator_is_found_as_itself() {
        let r = Relations::default();
        r.activation_changed(&ua("a", "t", "x\0y", None), Change::Applied);
        assert_eq!(names(r.activations_of_tenant_user("t", "x\0y")), ["t/a"]);
        assert!(r.activations_of_tenant_user("t", "x").is_empty());
    }

    #[test]
    fn jobs_are_listed_by_their_controlling_activation() {
        let r = Relations::default();
        let job = |name: &str, controller: bool| ObjectMeta {
            name: Some(name.into()),
            namespace: Some("t".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "latchkey.dev/v1alpha1".into(),
                kind: "UserActivation".into(),
                name: "a".into(),
                uid: "u-1".into(),
                controller: Some(controller),
                ..Default::default()
            }]),
            ..Default::default()
        };
        r.job_changed(&job("a-1", true), Change::Applied);
        r.job_changed(&job("a-1", true), Change::Applied);
        r.job_changed(&job("a-2", true), Change::Applied);
        r.job_changed(&job("other", false), Change::Applied);
        let mut jobs = r.jobs_of("t", "u-1");
        jobs.sort();
        assert_eq!(jobs, ["a-1", "a-2"]);
        r.job_changed(&job("a-1", true), Change::Deleted);
        r.job_changed(&job("a-2", true), Change::Deleted);
        assert!(r.jobs_of("t", "u-1").is_empty());
        assert!(r.inner.read().unwrap().jobs.is_empty());
    }
}
