//! Auth methods beyond header keys and OAuth2 defaults: an API key sent in a cookie, `none` for APIs that need no
//! credentials. On the real control plane with the operator binary.
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
use serde_json::json;
use support::fixtures::*;
use support::operator::Operator;
use support::{bed, namespace, wait_for_value};

/// An API that accepts only `Cookie: session=good-...` on `/me` (any other cookie or header: 401) and counts
/// the requests that carried the key in a cookie.
async fn cookie_api() -> (String, Arc<AtomicUsize>) {
    use axum::http::{HeaderMap, StatusCode};
    let with_cookie = Arc::new(AtomicUsize::new(0));
    let seen = with_cookie.clone();
    let app = axum::Router::new().route(
        "/me",
        axum::routing::get(move |h: HeaderMap| {
            let seen = seen.clone();
            async move {
                let cookie = h.get("cookie").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                let session = cookie.split(';').map(str::trim).find_map(|c| c.strip_prefix("session=")).map(str::to_string);
                if session.is_some() {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                if session.is_some_and(|s| s.starts_with("good-")) && h.get("authorization").is_none() {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, with_cookie)
}

fn activation(name: &str, connection_ns: &str, source: Option<&str>) -> UserActivation {
    let mut spec = json!({"connectionRef": {"name": "sync", "namespace": connection_ns}, "user": {"id": name}, "variables": {"org": name}});
    if let Some(s) = source {
        spec["credentialsSecretRef"] = json!({"name": s});
    }
    serde_json::from_value(
        json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap()
}

async fn connection(ns: &support::TestNamespace, base_url: &str, method: serde_json::Value, job: bool) {
    let mut conn_spec = json!({"displayName": "Acme", "baseUrl": base_url, "authMethods": [method]});
    if method.get("apiKey").is_some() {
        conn_spec["verification"] = json!({"path": "/me"});
    }
    let connector: Connector = serde_json::from_value(
        json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": "acme"}, "spec": conn_spec}),
    )
    .unwrap();
    ns.api::<Connector>().create(&PostParams::default(), &connector).await.unwrap();
    let mut spec = json!({"connectorRef": {"name": "acme"}, "authMethod": method["name"]});
    if job {
        spec["job"] = busybox_job();
    }
    let ec: EmbeddedConnection = serde_json::from_value(
        json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "sync"}, "spec": spec}),
    )
    .unwrap();
    ns.api::<EmbeddedConnection>().create(&PostParams::default(), &ec).await.unwrap();
}

#[tokio::test]
async fn api_key_in_a_cookie_is_verified_with_the_cookie() {
    let (url, with_cookie) = cookie_api().await;
    let bed = bed().await;
    let ns = namespace(&bed, "cookie").await;
    let _op = Operator::start(&bed, "cookie_key", &[ns.name()], &[]).await;
    connection(&ns, &url, json!({"name": "session", "apiKey": {"in": "Cookie", "name": "session"}}), false).await;
    let api = ns.api::<UserActivation>();

    put_source(&ns, "good-key", "good-cookie-value-1").await;
    api.create(&PostParams::default(), &activation("good", ns.name(), Some("good-key"))).await.unwrap();
    let (reason, _) = wait_condition(&api, "good", "Ready", "True").await;
    assert_eq!(reason, "Active");
    let ua = api.get("good").await.unwrap();
    assert_eq!(condition(&ua, "CredentialsValid").map(|c| c.1).as_deref(), Some("Verified"), "the API accepted the cookie");
    assert!(with_cookie.load(Ordering::SeqCst) >= 1, "the verification request carried the key in a cookie");

    // A key the API refuses is reported as rejected.
    put_source(&ns, "bad-key", "bad-cookie-value").await;
    api.create(&PostParams::default(), &activation("bad", ns.name(), Some("bad-key"))).await.unwrap();
    let (reason, message) = wait_condition(&api, "bad", "Ready", "False").await;
    assert_eq!(reason, "CredentialsRejected", "{message}");

    // A key that would smuggle a second cookie is never sent: the application has to fix its Secret.
    let before = with_cookie.load(Ordering::SeqCst);
    put_source(&ns, "smuggle-key", "good-x; admin=true").await;
    api.create(&PostParams::default(), &activation("smuggle", ns.name(), Some("smuggle-key"))).await.unwrap();
    let (reason, message) = wait_condition(&api, "smuggle", "Ready", "False").await;
    assert_eq!(reason, "SourceSecretInvalid");
    assert!(message.contains("cookie"), "{message}");
    assert!(!message.contains("admin=true"), "the key is not in the message: {message}");
    assert_eq!(with_cookie.load(Ordering::SeqCst), before, "no request was sent with it");
}

#[tokio::test]
async fn none_method_is_active_without_credentials_and_runs_the_tenants_job() {
    let bed = bed().await;
    let ns = namespace(&bed, "none-method").await;
    let op = Operator::start(&bed, "none_method", &[ns.name()], &[]).await;
    connection(&ns, "https://open-data.example.com/v1", json!({"name": "public", "none": {}}), true).await;
    let api = ns.api::<UserActivation>();
    api.create(&PostParams::default(), &activation("acme", ns.name(), None)).await.unwrap();

    let (reason, _) = wait_condition(&api, "acme", "Ready", "True").await;
    assert_eq!(reason, "Active");
    let ua = api.get("acme").await.unwrap();
    let st = ua.status.clone().unwrap();
    assert_eq!(format!("{:?}", st.phase.unwrap()), "Active");
    assert_eq!(condition(&ua, "CredentialsValid").map(|c| c.1).as_deref(), Some("NoCredentialsNeeded"));
    assert!(st.connect_url.is_none(), "nothing for the user to connect");
    assert!(st.secret_name.is_none(), "no Secret for a method without credentials");
    let secrets = ns.api::<Secret>().list(&Default::default()).await.unwrap();
    assert!(
        secrets.items.iter().all(|s| !s.metadata.labels.as_ref().is_some_and(|l| l.contains_key("latchkey.dev/activation"))),
        "no owned Secret"
    );

    let jobs = wait_for_value("the tenant's Job", T, || async {
        let j = jobs_of(&ns, "acme").await;
        if j.len() == 1 { Ok(j) } else { Err(format!("{} jobs", j.len())) }
    })
    .await;
    let pod = jobs[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert!(pod.volumes.iter().flatten().all(|v| v.secret.is_none()), "no Secret volume");
    let env = pod.containers[0].env.clone().unwrap_or_default();
    assert!(env.iter().all(|e| e.value_from.is_none()), "no env from a Secret");
    let get = |n: &str| env.iter().find(|e| e.name == n).and_then(|e| e.value.clone());
    assert_eq!(get("LATCHKEY_BASE_URL").as_deref(), Some("https://open-data.example.com/v1"));
    assert_eq!(get("LATCHKEY_USER_ID").as_deref(), Some("acme"));
    assert_eq!(get("LATCHKEY_VAR_ORG").as_deref(), Some("acme"));
    wait_for_value("lastRun succeeded", T, || async {
        let ua = api.get("acme").await.map_err(|e| e.to_string())?;
        match ua.status.and_then(|s| s.last_run) {
            Some(r) if r.succeeded == Some(true) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Nothing later counts as a credential change: still one Job.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(jobs_of(&ns, "acme").await.len(), 1, "one run per activation; log:\n{}", op.log());
    let _ = Api::<Secret>::namespaced(bed.client(), ns.name());
}
