//! Names, labels, annotations and owner references: deterministic, within Kubernetes' length limits.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::api::UserActivation;

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "latchkey";
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=latchkey";
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
/// Label on application-written source Secrets so the operator can watch them by selector.
pub const SOURCE_LABEL: &str = "latchkey.dev/source";
pub const SOURCE_SELECTOR: &str = "latchkey.dev/source=true";
pub const ACTIVATION_LABEL: &str = "latchkey.dev/activation";
pub const ACTIVATION_UID_LABEL: &str = "latchkey.dev/activation-uid";
pub const CONNECTION_LABEL: &str = "latchkey.dev/connection";
pub const RUN_KEY_ANNOTATION: &str = "latchkey.dev/run-key";
pub const DATA_HASH_ANNOTATION: &str = "latchkey.dev/data-hash";
pub const SOURCE_VERSION_ANNOTATION: &str = "latchkey.dev/source-resource-version";
pub const GENERATION_ANNOTATION: &str = "latchkey.dev/credential-generation";
/// `true` on an owned Secret whose credentials the connector's verification request accepted.
pub const VERIFIED_ANNOTATION: &str = "latchkey.dev/verified";
/// Set (to any new value) on an activation to refresh its OAuth2 token now, e.g. after a Job saw a 401.
pub const REFRESH_NOW_ANNOTATION: &str = "latchkey.dev/refresh-now";
/// Set (to any new value) on an activation to start its Job now.
pub const RUN_NOW_ANNOTATION: &str = "latchkey.dev/run-now";
pub const VARIABLES_ANNOTATION: &str = "latchkey.dev/variables";
/// On an owned Secret written by the connect server: which connect link stored it ([`link_hash`] of the link's
/// nonce). The Secret's write is the link's compare-and-swap, so a Secret carrying a link's hash means that link
/// is spent.
pub const CONNECT_LINK_ANNOTATION: &str = "latchkey.dev/connect-link";
pub const FINALIZER: &str = "latchkey.dev/cleanup";

/// The field manager of the reconcilers' server-side applies.
pub const FIELD_MANAGER: &str = "latchkey";
/// The field manager of the connect server's writes (any replica).
pub const CONNECT_FIELD_MANAGER: &str = "latchkey-connect";
/// The field manager that labels referenced source Secrets.
pub const SOURCE_LABEL_MANAGER: &str = "latchkey-source-label";

/// Lowercase hex SHA-256 of the parts, joined by NUL.
pub fn hash_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What [`CONNECT_LINK_ANNOTATION`] holds for a link's nonce (the nonce itself never leaves status).
pub fn link_hash(nonce: &str) -> String {
    hash_hex(&[b"latchkey connect link", nonce.as_bytes()])[..32].to_string()
}

/// `base` if it fits in `max`, else a prefix of it, `-` and 10 hex characters of its hash: still unique.
pub fn bounded(base: &str, max: usize) -> String {
    if base.len() <= max {
        return base.to_string();
    }
    let digest = hash_hex(&[base.as_bytes()]);
    let keep = max - 11;
    let prefix = base[..keep].trim_end_matches(['-', '.']);
    format!("{prefix}-{}", &digest[..10])
}

/// The Secret the operator owns for an activation: `<activation>-<connection>-credentials`.
pub fn credentials_secret_name(ua: &UserActivation) -> String {
    bounded(&format!("{}-{}-credentials", ua.name_any(), ua.spec.connection_ref.name), 253)
}

/// A Job's name from the activation and its run key: at most 63 characters (Jobs put it in a label).
pub fn job_name(ua: &UserActivation, run_key: &str) -> String {
    let uid = ua.uid().unwrap_or_default();
    let digest = hash_hex(&[uid.as_bytes(), run_key.as_bytes()]);
    let name = ua.name_any();
    let prefix: String = name.chars().take(40).collect();
    format!("{}-{}", prefix.trim_end_matches(['-', '.']), &digest[..10])
}

/// Labels of everything the operator creates for an activation.
pub fn activation_labels(ua: &UserActivation, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.into(), MANAGED_BY_VALUE.into()),
        (NAME_LABEL.into(), "latchkey".into()),
        (PART_OF_LABEL.into(), "latchkey".into()),
        (COMPONENT_LABEL.into(), component.into()),
        (ACTIVATION_LABEL.into(), label_value(&ua.name_any())),
        (ACTIVATION_UID_LABEL.into(), ua.uid().unwrap_or_default()),
        (CONNECTION_LABEL.into(), label_value(&ua.spec.connection_ref.name)),
    ])
}

/// A label value (≤ 63 characters) standing for `s`.
pub fn label_value(s: &str) -> String {
    bounded(s, 63)
}

/// Controller owner reference to the activation (same namespace: the garbage collector removes dependants).
pub fn owner_ref(ua: &UserActivation) -> OwnerReference {
    ua.controller_owner_ref(&()).expect("a stored activation has a name and uid")
}

/// Whether `meta` is owned by the activation with `uid`.
pub fn owned_by(owners: Option<&Vec<OwnerReference>>, uid: &str) -> bool {
    owners.is_some_and(|o| o.iter().any(|r| r.uid == uid && r.kind == UserActivation::kind(&())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_names_fit_and_stay_unique() {
        let long = "a".repeat(300);
        let b = bounded(&long, 253);
        assert_eq!(b.len(), 253);
        assert_ne!(bounded(&format!("{long}x"), 253), b);
        assert_eq!(bounded("short", 63), "short");
    }

    #[test]
    fn job_names_are_deterministic_and_short() {
        let mut ua: UserActivation = serde_json::from_value(serde_json::json!({
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation",
            "metadata": {"name": "x".repeat(80), "namespace": "t", "uid": "u-1"},
            "spec": {"connectionRef": {"name": "c"}, "user": {"id": "1"}}
        }))
        .unwrap();
        let a = job_name(&ua, "cred-1");
        assert!(a.len() <= 63, "{a}");
        assert_eq!(a, job_name(&ua, "cred-1"));
        assert_ne!(a, job_name(&ua, "cred-2"));
        ua.metadata.uid = Some("u-2".into());
        assert_ne!(a, job_name(&ua, "cred-1"));
    }
}
