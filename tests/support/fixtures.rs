//! Fixtures of the integration tests: a provider's API for verification, an integrations namespace with a
//! Connector (API key) and an EmbeddedConnection, tenant namespaces, application-written source Secrets, and
//! waiting on an activation's conditions.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
use serde_json::json;

use super::{TestNamespace, bed, namespace, wait_for_value};

pub const T: Duration = Duration::from_secs(30);

/// A provider's API that accepts `Authorization: Bearer good-*` on `/me` and counts requests.
pub struct FakeProvider {
    pub url: String,
    pub requests: Arc<AtomicUsize>,
    /// While true, every request gets 503.
    pub down: Arc<std::sync::atomic::AtomicBool>,
}

pub async fn provider() -> FakeProvider {
    use axum::http::{HeaderMap, StatusCode};
    let requests = Arc::new(AtomicUsize::new(0));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (r, d) = (requests.clone(), down.clone());
    let app = axum::Router::new().route(
        "/me",
        axum::routing::get(move |h: HeaderMap| {
            let (r, d) = (r.clone(), d.clone());
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                if d.load(Ordering::SeqCst) {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let ok = h.get("authorization").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("Bearer good-"));
                if ok { StatusCode::OK } else { StatusCode::UNAUTHORIZED }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    FakeProvider { url, requests, down }
}

/// An integrations namespace with a Connector (API key, verified against `provider`) and an EmbeddedConnection
/// that admits namespaces labelled `latchkey.dev/tenant-of=<integrations namespace>`.
pub struct Fixture {
    pub client: Client,
    pub integrations: TestNamespace,
    pub tenant_label: (String, String),
}

pub async fn fixture(prefix: &str, provider_url: &str, job: serde_json::Value) -> Fixture {
    fixture_with(prefix, provider_url, job, json!({})).await
}

/// Like [`fixture`], with extra fields merged into the EmbeddedConnection's spec.
pub async fn fixture_with(prefix: &str, provider_url: &str, job: serde_json::Value, extra_spec: serde_json::Value) -> Fixture {
    let bed = bed().await;
    let client = bed.client();
    let integrations = namespace(&bed, prefix).await;
    let ns = integrations.name().to_string();
    api_key_connection(&client, &ns, provider_url, job, extra_spec).await;
    Fixture { client, integrations, tenant_label: (TENANT_OF.to_string(), ns) }
}

/// The label a connection made by [`api_key_connection`] admits: `latchkey.dev/tenant-of=<its namespace>`.
pub const TENANT_OF: &str = "latchkey.dev/tenant-of";

/// Connector `acme-api` (API key, verified at `provider_url/me`) and EmbeddedConnection `acme-sync` in `ns`
/// (of any bed), admitting namespaces labelled [`TENANT_OF`]`=<ns>`, with `job` (unless null) and extra fields
/// merged into the connection's spec.
pub async fn api_key_connection(client: &Client, ns: &str, provider_url: &str, job: serde_json::Value, extra_spec: serde_json::Value) {
    let connector: Connector = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector",
        "metadata": {"name": "acme-api", "namespace": ns},
        "spec": {
            "displayName": "Acme API",
            "baseUrl": provider_url,
            "authMethods": [{"name": "token", "apiKey": {"in": "Header", "name": "Authorization", "prefix": "Bearer "}}],
            "verification": {"path": "/me"}
        }
    }))
    .unwrap();
    Api::<Connector>::namespaced(client.clone(), ns).create(&PostParams::default(), &connector).await.unwrap();
    let mut spec = json!({
        "connectorRef": {"name": "acme-api"},
        "authMethod": "token",
        "allowedNamespaces": {"matchLabels": {TENANT_OF: ns}},
    });
    if !job.is_null() {
        spec["job"] = job;
    }
    for (k, v) in extra_spec.as_object().cloned().unwrap_or_default() {
        spec[k] = v;
    }
    let ec: EmbeddedConnection = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection",
        "metadata": {"name": "acme-sync", "namespace": ns}, "spec": spec
    }))
    .unwrap();
    Api::<EmbeddedConnection>::namespaced(client.clone(), ns).create(&PostParams::default(), &ec).await.unwrap();
}

pub fn busybox_job() -> serde_json::Value {
    json!({"template": {"spec": {"containers": [{"name": "sync", "image": "busybox", "command": ["sh", "-c", "echo sync"]}]}}})
}

impl Fixture {
    /// A tenant namespace, admitted by the connection when `allowed`.
    pub async fn tenant(&self, prefix: &str, allowed: bool) -> TestNamespace {
        let bed = bed().await;
        let t = namespace(&bed, prefix).await;
        if allowed {
            let patch = json!({"metadata": {"labels": {self.tenant_label.0.clone(): self.tenant_label.1.clone()}}});
            Api::<Namespace>::all(self.client.clone()).patch(t.name(), &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        }
        t
    }

    /// The application writes the tenant's key and an activation that references it.
    pub async fn activate(&self, tenant: &TestNamespace, name: &str, user: &str, key: &str) {
        put_source(tenant, &format!("{name}-key"), key).await;
        let ua: UserActivation = serde_json::from_value(json!({
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation",
            "metadata": {"name": name, "namespace": tenant.name()},
            "spec": {
                "connectionRef": {"name": "acme-sync", "namespace": self.integrations.name()},
                "user": {"id": user},
                "credentialsSecretRef": {"name": format!("{name}-key")},
                "variables": {"org": user, "limit": 50}
            }
        }))
        .unwrap();
        tenant.api::<UserActivation>().create(&PostParams::default(), &ua).await.unwrap();
    }

    pub fn ns(&self) -> &str {
        self.integrations.name()
    }
}

pub async fn put_source(tenant: &TestNamespace, name: &str, key: &str) {
    write_source(&tenant.api::<Secret>(), name, key).await;
}

/// The application writes a tenant's API key into its own Secret `name` (labelled as a source), in any bed.
pub async fn write_source(secrets: &Api<Secret>, name: &str, key: &str) {
    let s: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "labels": {"latchkey.dev/source": "true"}},
        "stringData": {"api_key": key}
    }))
    .unwrap();
    secrets.patch(name, &PatchParams::apply("the-application").force(), &Patch::Apply(&s)).await.unwrap();
}

pub fn condition(ua: &UserActivation, type_: &str) -> Option<(String, String, String)> {
    ua.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.to_string(), c.reason.to_string(), c.message.clone()))
}

/// Waits until the activation's condition `type_` has `status`, returning its reason and message.
pub async fn wait_condition(api: &Api<UserActivation>, name: &str, type_: &str, status: &str) -> (String, String) {
    wait_for_value(&format!("{name} {type_}={status}"), T, || async {
        let ua = api.get(name).await.map_err(|e| e.to_string())?;
        match condition(&ua, type_) {
            Some((s, r, m)) if s == status => Ok((r, m)),
            other => Err(format!("{other:?}, phase {:?}", ua.status.as_ref().and_then(|s| s.phase))),
        }
    })
    .await
}

pub fn decoded(s: &Secret, key: &str) -> Option<String> {
    s.data.as_ref()?.get(key).map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

pub async fn jobs_of(tenant: &TestNamespace, activation: &str) -> Vec<Job> {
    tenant.api::<Job>().list(&ListParams::default().labels(&format!("latchkey.dev/activation={activation}"))).await.unwrap().items
}
