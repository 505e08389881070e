//! What the operator keeps of a Secret's metadata in its stores: name, namespace, resourceVersion, the
//! UserActivation owner references and the few annotations the reconcile reads, each in a plain field. An
//! `ObjectMeta` takes ~350 bytes before a field is set and keeps annotations in a `BTreeMap` (a 540-byte node for
//! four entries); a record holds only the strings, once per Secret in the store.
//!
//! A record is not a [`kube::Resource`] (it has no `ObjectMeta`): it implements the store's
//! [`Lookup`](kube::runtime::reflector::Lookup) itself, and
//! its store key holds name and namespace only (no resourceVersion or uid).
use std::borrow::Cow;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::reflector::ObjectRef;

use crate::api::UserActivation;
use crate::credentials::oauth::{EXPIRES_AT_ANNOTATION, EXPIRY_GENERATION_ANNOTATION, GRANTED_SCOPE_ANNOTATION, REFRESH_AT_ANNOTATION};
use crate::naming::{DATA_HASH_ANNOTATION, GENERATION_ANNOTATION, REFRESH_NOW_ANNOTATION, SOURCE_VERSION_ANNOTATION, VERIFIED_ANNOTATION};

/// The annotations a record keeps: those the reconcile reads of its owned Secret (the credentials step, the token
/// timing and the refresh-now handshake). Any other is dropped.
pub const KEPT_ANNOTATIONS: [&str; 9] = [
    GENERATION_ANNOTATION,
    DATA_HASH_ANNOTATION,
    SOURCE_VERSION_ANNOTATION,
    VERIFIED_ANNOTATION,
    EXPIRY_GENERATION_ANNOTATION,
    EXPIRES_AT_ANNOTATION,
    REFRESH_AT_ANNOTATION,
    GRANTED_SCOPE_ANNOTATION,
    REFRESH_NOW_ANNOTATION,
];

/// A Secret's metadata as a store keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretRecord {
    name: Box<str>,
    namespace: Box<str>,
    resource_version: Option<Box<str>>,
    /// Owner references of kind UserActivation (the only kind the operator asks about).
    owners: Box<[ActivationOwner]>,
    /// Values of [`KEPT_ANNOTATIONS`] present, by key.
    annotations: Box<[(&'static str, Box<str>)]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ActivationOwner {
    name: Box<str>,
    uid: Box<str>,
    controller: bool,
}

impl SecretRecord {
    /// The record of an owned Secret: its UserActivation owners and the [`KEPT_ANNOTATIONS`].
    pub fn owned(meta: &ObjectMeta) -> Self {
        let kind = UserActivation::kind(&());
        let owners = meta.owner_references.iter().flatten().filter(|o| o.kind == kind);
        let annotations = meta.annotations.iter().flatten();
        SecretRecord {
            owners: owners
                .map(|o| ActivationOwner {
                    name: o.name.as_str().into(),
                    uid: o.uid.as_str().into(),
                    controller: o.controller == Some(true),
                })
                .collect(),
            annotations: annotations
                .filter_map(|(k, v)| KEPT_ANNOTATIONS.iter().find(|kept| **kept == k).map(|kept| (*kept, v.as_str().into())))
                .collect(),
            ..Self::source(meta)
        }
    }

    /// The record of an application's source Secret: name, namespace and resourceVersion (whether its data changed).
    pub fn source(meta: &ObjectMeta) -> Self {
        SecretRecord {
            name: meta.name.as_deref().unwrap_or_default().into(),
            namespace: meta.namespace.as_deref().unwrap_or_default().into(),
            resource_version: meta.resource_version.as_deref().map(Into::into),
            owners: Box::default(),
            annotations: Box::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The resourceVersion the watch last saw.
    pub fn version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    /// The value of one of [`KEPT_ANNOTATIONS`].
    pub fn annotation(&self, key: &str) -> Option<&str> {
        debug_assert!(KEPT_ANNOTATIONS.contains(&key), "{key} is not kept in a SecretRecord");
        self.annotations.iter().find(|(k, _)| *k == key).map(|(_, v)| &**v)
    }

    /// Whether the activation with `uid` is among the owners.
    pub fn owned_by(&self, uid: &str) -> bool {
        self.owners.iter().any(|o| &*o.uid == uid)
    }

    /// Names of the activations that control this Secret (at most one, as the apiserver enforces).
    pub fn controllers(&self) -> impl Iterator<Item = &str> {
        self.owners.iter().filter(|o| o.controller).map(|o| &*o.name)
    }
}

impl kube::runtime::reflector::Lookup for SecretRecord {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        <Secret as Resource>::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        <Secret as Resource>::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        <Secret as Resource>::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        <Secret as Resource>::plural(&())
    }
    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }
    fn namespace(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.namespace))
    }
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        self.resource_version.as_deref().map(Cow::Borrowed)
    }
    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
    /// Name and namespace only: the store's key needs no copy of the resourceVersion.
    fn to_object_ref(&self, _: ()) -> ObjectRef<Self> {
        ObjectRef::new(&self.name).within(&self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta() -> ObjectMeta {
        serde_json::from_value(json!({
            "name": "ua-1-c-credentials", "namespace": "t", "resourceVersion": "41", "uid": "s-1",
            "labels": {"app.kubernetes.io/managed-by": "latchkey"},
            "annotations": {GENERATION_ANNOTATION: "2", DATA_HASH_ANNOTATION: "45c2", "example.com/other": "x",
                "kubectl.kubernetes.io/last-applied-configuration": "{}"},
            "ownerReferences": [
                {"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "name": "ua-1", "uid": "u-1", "controller": true},
                {"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "name": "ua-2", "uid": "u-2"},
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": "u-3", "controller": false},
            ],
        }))
        .unwrap()
    }

    #[test]
    fn an_owned_record_keeps_what_the_reconcile_reads() {
        let r = SecretRecord::owned(&meta());
        assert_eq!((r.name(), r.namespace(), r.version()), ("ua-1-c-credentials", "t", Some("41")));
        assert_eq!(r.annotation(GENERATION_ANNOTATION), Some("2"));
        assert_eq!(r.annotation(DATA_HASH_ANNOTATION), Some("45c2"));
        assert_eq!(r.annotation(VERIFIED_ANNOTATION), None);
        assert_eq!(r.annotations.len(), 2, "other annotations are dropped");
        assert!(r.owned_by("u-1") && r.owned_by("u-2") && !r.owned_by("u-3"), "owners of kind UserActivation only");
        assert_eq!(r.controllers().collect::<Vec<_>>(), ["ua-1"]);
    }

    #[test]
    fn a_source_record_keeps_name_and_version() {
        let r = SecretRecord::source(&meta());
        assert_eq!((r.name(), r.namespace(), r.version()), ("ua-1-c-credentials", "t", Some("41")));
        assert!(!r.owned_by("u-1"));
        assert_eq!(r.annotation(GENERATION_ANNOTATION), None);
    }

    #[test]
    fn a_store_finds_a_record_by_name_and_namespace() {
        use kube::runtime::reflector::Lookup;
        let r = SecretRecord::owned(&meta());
        assert_eq!(Lookup::resource_version(&r).as_deref(), Some("41"), "what the watch's progress reads");
        let key = r.to_object_ref(());
        assert!(key.extra.resource_version.is_none() && key.extra.uid.is_none(), "the key holds no copy of it");
        let (reader, mut writer) = kube::runtime::reflector::store::<SecretRecord>();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(SecretRecord::owned(&meta())));
        let found = reader.get(&kube::runtime::reflector::ObjectRef::new("ua-1-c-credentials").within("t"));
        assert_eq!(found.as_deref().and_then(SecretRecord::version), Some("41"));
    }
}
