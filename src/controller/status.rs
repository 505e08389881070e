//! Status writes: server-side apply of the whole status with one field manager, only when it changed.
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Error, Result};
use crate::naming::FIELD_MANAGER;

/// Applies `status` to the object's status subresource unless it equals `current`. Returns whether it wrote.
pub async fn apply_status<K, S>(api: &Api<K>, obj: &K, current: Option<&S>, status: &S) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    Ok(apply_status_checked(api, obj, current, status, false).await?.is_some())
}

/// Like [`apply_status`]; with `precondition`, the write carries the read `resourceVersion` and fails with a
/// conflict (retried) when the object changed meanwhile — for fields another writer also changes (the connect
/// server rotates the link's nonce). Returns the object's new resourceVersion when it wrote.
pub async fn apply_status_checked<K, S>(
    api: &Api<K>,
    obj: &K,
    current: Option<&S>,
    status: &S,
    precondition: bool,
) -> Result<Option<String>>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(None);
    }
    let name = obj.meta().name.clone().unwrap_or_default();
    let mut patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    if precondition {
        patch["metadata"] = serde_json::json!({ "name": name, "resourceVersion": obj.meta().resource_version });
    }
    let written = api
        .patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(Error::kube("writing status"))?;
    Ok(Some(written.meta().resource_version.clone().unwrap_or_default()))
}
