//! Credentials the application supplies in a source Secret: read only when its resourceVersion changed, labelled
//! so that later changes are seen by the metadata watch.
use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::reflector::ObjectRef;

use crate::controller::{Context, Error, Result, connector::label_source};

/// A source Secret as read: its data and resourceVersion.
pub struct SourceData {
    pub resource_version: String,
    pub data: BTreeMap<String, ByteString>,
}

/// The source Secret's resourceVersion as the metadata watch last saw it (`None`: not labelled or absent).
pub fn watched_version(ctx: &Context, ns: &str, name: &str) -> Option<String> {
    ctx.stores.source_secrets.get(&ObjectRef::new(name).within(ns)).and_then(|m| m.version().map(String::from))
}

/// Reads the source Secret, labelling it first when it lacks the source label. `None` when it does not exist.
pub async fn read(ctx: &Context, ns: &str, name: &str) -> Result<Option<SourceData>> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let Some(secret) = api.get_opt(name).await.map_err(Error::kube("reading the credentials Secret"))? else {
        return Ok(None);
    };
    let secret = label_source(&api, &secret).await?.unwrap_or(secret);
    Ok(Some(SourceData { resource_version: secret.metadata.resource_version.unwrap_or_default(), data: secret.data.unwrap_or_default() }))
}
