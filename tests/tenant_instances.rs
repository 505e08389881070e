//! Tenant-specific instances: a Connector whose base URL (and OAuth2 URLs) hold `{parameters}` filled per tenant
//! from the activation's spec, the connect page or the token response, always within `allowedHosts`. On the real
//! control plane, the operator binary and the real OAuth2 server; a tenant's API is a small counting server of our
//! own, and the "other host" a tenant must never reach is another one on 127.0.0.2.
mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ListParams, PostParams};
use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
use serde_json::json;
use support::fixtures::{condition, decoded, put_source, wait_condition};
use support::oauth_server::{Login, OAuthClient, OAuthServer, OAuthServerConfig, authorize_without_browser};
use support::operator::Operator;
use support::{TestNamespace, wait_for_value};

/// An API on one loopback address that accepts `Bearer good-*` on `/api/me` and counts every request.
struct TenantApi {
    /// `http://127.0.0.x:PORT`
    url: String,
    host: String,
    port: u16,
    requests: Arc<AtomicUsize>,
}

async fn api_on(ip: &str) -> TenantApi {
    use axum::http::{HeaderMap, StatusCode};
    let requests = Arc::new(AtomicUsize::new(0));
    let r = requests.clone();
    let app = axum::Router::new().fallback(move |h: HeaderMap| {
        let r = r.clone();
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            let ok = h.get("authorization").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("Bearer good-"));
            if ok { StatusCode::OK } else { StatusCode::UNAUTHORIZED }
        }
    });
    let listener = tokio::net::TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    TenantApi { url: format!("http://{ip}:{port}"), host: ip.into(), port, requests }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(15)).build().unwrap()
}

async fn create<K>(ns: &TestNamespace, value: serde_json::Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).unwrap();
    ns.api::<K>().create(&PostParams::default(), &obj).await.unwrap();
}

/// An API-key Connector at `http://{host}:{port}/api`, the parameters from `from`, and a connection with a Job.
async fn api_key_connection(ns: &TestNamespace, from: &str) {
    create::<Connector>(
        ns,
        json!({
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": "selfhosted"},
            "spec": {
                "displayName": "Self-hosted API",
                "baseUrl": "http://{host}:{port}/api",
                "allowedHosts": ["http://127.0.0.1"],
                "instanceParameters": [
                    {"name": "host", "from": from, "label": "Server"},
                    {"name": "port", "from": from, "label": "Port"}
                ],
                "authMethods": [{"name": "token", "apiKey": {"in": "Header", "name": "Authorization", "prefix": "Bearer "}}],
                "verification": {"path": "/me"}
            }
        }),
    )
    .await;
    create::<EmbeddedConnection>(
        ns,
        json!({
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "sync"},
            "spec": {"connectorRef": {"name": "selfhosted"}, "authMethod": "token",
                     "job": {"template": {"spec": {"containers": [{"name": "sync", "image": "busybox"}]}}}}
        }),
    )
    .await;
}

async fn activation(ns: &TestNamespace, name: &str, source: Option<&str>, instance: serde_json::Value) {
    let mut spec = json!({"connectionRef": {"name": "sync"}, "user": {"id": name}, "instance": instance});
    if let Some(s) = source {
        spec["credentialsSecretRef"] = json!({"name": s});
    }
    create::<UserActivation>(
        ns,
        json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": name}, "spec": spec}),
    )
    .await;
}

fn status_of(ua: &UserActivation) -> latchkey::api::UserActivationStatus {
    ua.status.clone().unwrap_or_default()
}

/// The `LATCHKEY_BASE_URL` of the activation's first Job.
async fn job_base_url(ns: &TestNamespace, activation: &str) -> String {
    let jobs: Api<Job> = ns.api();
    let job = wait_for_value("a Job", Duration::from_secs(30), || async {
        let list =
            jobs.list(&ListParams::default().labels(&format!("latchkey.dev/activation={activation}"))).await.map_err(|e| e.to_string())?;
        list.items.into_iter().next().ok_or_else(|| "no Job yet".to_string())
    })
    .await;
    let pod = job.spec.unwrap().template.spec.unwrap();
    let env = pod.containers[0].env.clone().unwrap_or_default();
    env.into_iter().find(|e| e.name == "LATCHKEY_BASE_URL").and_then(|e| e.value).expect("LATCHKEY_BASE_URL")
}

#[tokio::test]
async fn a_tenant_address_from_the_spec_is_verified_shown_and_given_to_the_job() {
    let bed = support::bed().await;
    let ns = support::namespace(&bed, "inst-spec").await;
    let op = Operator::start(&bed, "inst-spec", &[ns.name()], &[]).await;
    let good = api_on("127.0.0.1").await;
    let evil = api_on("127.0.0.2").await;
    api_key_connection(&ns, "Spec").await;
    put_source(&ns, "acme-key", "good-acme").await;
    put_source(&ns, "mallory-key", "good-mallory").await;

    activation(&ns, "acme", Some("acme-key"), json!({"host": good.host, "port": good.port.to_string()})).await;
    let uas: Api<UserActivation> = ns.api();
    wait_condition(&uas, "acme", "Ready", "True").await;
    let st = status_of(&uas.get("acme").await.unwrap());
    assert_eq!(st.base_url.as_deref(), Some(format!("{}/api", good.url).as_str()));
    assert!(good.requests.load(Ordering::SeqCst) >= 1, "verified at the tenant's address");
    assert_eq!(job_base_url(&ns, "acme").await, format!("{}/api", good.url));

    // A tenant that names a host outside allowedHosts: refused, and nothing is sent there.
    activation(&ns, "mallory", Some("mallory-key"), json!({"host": evil.host, "port": evil.port.to_string()})).await;
    let (reason, message) = wait_condition(&uas, "mallory", "Ready", "False").await;
    assert_eq!(reason, "InvalidBaseUrl", "{message}");
    assert!(message.contains("127.0.0.2") && message.contains("allowedHosts"), "{message}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(evil.requests.load(Ordering::SeqCst), 0, "no request reached the host outside allowedHosts");
    assert!(ns.api::<Secret>().get_opt("mallory-sync-credentials").await.unwrap().is_none());
    let st = status_of(&uas.get("mallory").await.unwrap());
    assert!(st.base_url.is_none() && st.last_run.is_none(), "{st:?}");

    // Corrected, it works.
    let patch = json!({"spec": {"instance": {"host": good.host, "port": good.port.to_string()}}});
    uas.patch("mallory", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    wait_condition(&uas, "mallory", "Ready", "True").await;
    assert_eq!(evil.requests.load(Ordering::SeqCst), 0);
    op.assert_no_leaks("acme", &["good-acme", "good-mallory"]);
}

#[tokio::test]
async fn the_connect_page_asks_the_user_for_the_address() {
    let bed = support::bed().await;
    let ns = support::namespace(&bed, "inst-page").await;
    let op = Operator::start(&bed, "inst-page", &[ns.name()], &[]).await;
    let good = api_on("127.0.0.1").await;
    let evil = api_on("127.0.0.2").await;
    api_key_connection(&ns, "ConnectPage").await;
    activation(&ns, "acme", None, json!({})).await;
    let uas: Api<UserActivation> = ns.api();
    let link = wait_for_value("status.connectUrl", Duration::from_secs(30), || async {
        status_of(&uas.get("acme").await.map_err(|e| e.to_string())?).connect_url.ok_or_else(|| "no link yet".to_string())
    })
    .await;
    assert!(status_of(&uas.get("acme").await.unwrap()).base_url.is_none(), "no address before the user gives one");

    let page = http().get(&link).send().await.unwrap().text().await.unwrap();
    assert!(
        page.contains(r#"name="instance.host""#) && page.contains(r#"name="instance.port""#) && page.contains(r#"name="api_key""#),
        "{page}"
    );

    // An address outside allowedHosts: the form again, nothing sent there, nothing stored.
    let form = |host: &str, port: u16| {
        HashMap::from([("instance.host", host.to_string()), ("instance.port", port.to_string()), ("api_key", "good-acme".to_string())])
    };
    let refused = http().post(&link).form(&form(&evil.host, evil.port)).send().await.unwrap();
    assert_eq!(refused.status(), 422);
    let body = refused.text().await.unwrap();
    assert!(body.contains("127.0.0.2") && body.contains(r#"value="127.0.0.2""#), "the form keeps what was typed: {body}");
    assert_eq!(evil.requests.load(Ordering::SeqCst), 0);
    assert!(ns.api::<Secret>().get_opt("acme-sync-credentials").await.unwrap().is_none());

    let done = http().post(&link).form(&form(&good.host, good.port)).send().await.unwrap();
    assert_eq!(done.status(), 200, "{}", done.text().await.unwrap_or_default());
    wait_condition(&uas, "acme", "Ready", "True").await;
    let st = status_of(&uas.get("acme").await.unwrap());
    assert_eq!(st.base_url.as_deref(), Some(format!("{}/api", good.url).as_str()));
    assert_eq!(st.instance_parameters.get("host").map(String::as_str), Some("127.0.0.1"));
    assert!(good.requests.load(Ordering::SeqCst) >= 1);
    assert_eq!(job_base_url(&ns, "acme").await, format!("{}/api", good.url));
    op.assert_no_leaks("acme", &["good-acme"]);
}

/// An operator, a real OAuth server whose client redirects to the operator, the organisation's app Secret.
async fn oauth_setup(name: &str, config: impl FnOnce(OAuthServerConfig) -> OAuthServerConfig) -> (TestNamespace, Operator, OAuthServer) {
    let bed = support::bed().await;
    let ns = support::namespace(&bed, name).await;
    let op = Operator::start(&bed, name, &[ns.name()], &[]).await;
    let client = OAuthClient::confidential("app", "app-secret").redirect_uri(&format!("{}/oauth/callback", op.connect_base_url));
    let server = OAuthServer::start(config(OAuthServerConfig::default().client(client)));
    create::<Secret>(&ns, json!({"metadata": {"name": "oauth-app"}, "stringData": {"client_id": "app", "client_secret": "app-secret"}}))
        .await;
    (ns, op, server)
}

#[tokio::test]
async fn an_oauth_shop_entered_before_consent_sets_the_provider_urls() {
    let (ns, op, server) = oauth_setup("inst-shop", |c| c.access_ttl(3)).await;
    let port = server.info().port;
    // Like Shopify: the authorization and token URLs are the shop's own.
    create::<Connector>(
        &ns,
        json!({
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": "shop"},
            "spec": {
                "displayName": "Shop", "baseUrl": "http://{shop}:{port}/api", "allowedHosts": ["http://127.0.0.1"],
                "instanceParameters": [{"name": "shop", "from": "ConnectPage", "label": "Shop address"}, {"name": "port", "from": "Spec"}],
                "authMethods": [{"name": "oauth", "oauth2": {
                    "flow": "AuthorizationCode", "authorizationUrl": "http://{shop}:{port}/auth", "tokenUrl": "http://{shop}:{port}/token",
                    "scopes": ["read"], "clientSecretRef": {"name": "oauth-app"}}}]
            }
        }),
    )
    .await;
    create::<EmbeddedConnection>(
        &ns,
        json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "sync"},
               "spec": {"connectorRef": {"name": "shop"}, "authMethod": "oauth"}}),
    )
    .await;
    activation(&ns, "acme", None, json!({"port": port.to_string()})).await;
    let uas: Api<UserActivation> = ns.api();
    let link = wait_for_value("status.connectUrl", Duration::from_secs(30), || async {
        status_of(&uas.get("acme").await.map_err(|e| e.to_string())?).connect_url.ok_or_else(|| "no link yet".to_string())
    })
    .await;
    let page = http().get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200, "the page asks for the shop before the redirect");
    assert!(page.text().await.unwrap().contains("Shop address"));

    // A shop outside allowedHosts is refused before any redirect.
    let refused = http().post(&link).form(&[("instance.shop", "127.0.0.2")]).send().await.unwrap();
    assert_eq!(refused.status(), 422);
    let to_provider = http().post(&link).form(&[("instance.shop", "127.0.0.1")]).send().await.unwrap();
    assert_eq!(to_provider.status(), 303);
    let location = to_provider.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&format!("http://127.0.0.1:{port}/auth?")), "{location}");

    let callback = format!("{}/oauth/callback", op.connect_base_url);
    let redirect = authorize_without_browser(&location, &callback, &Login::default()).await.expect("consent");
    let done = http().get(redirect.url.as_str()).send().await.unwrap();
    assert_eq!(done.status(), 200, "{}", done.text().await.unwrap_or_default());
    wait_condition(&uas, "acme", "Ready", "True").await;
    let st = status_of(&uas.get("acme").await.unwrap());
    assert_eq!(st.base_url.as_deref(), Some(format!("http://127.0.0.1:{port}/api").as_str()));
    assert_eq!(st.instance_parameters.get("shop").map(String::as_str), Some("127.0.0.1"));
    // The shop's token URL serves the refreshes too.
    wait_for_value("a refresh at the shop's token URL", Duration::from_secs(20), || async {
        let n = server.refresh_events().await.iter().filter(|e| e.outcome == "ok").count();
        if n >= 1 { Ok(()) } else { Err(format!("{n} refreshes")) }
    })
    .await;
}

#[tokio::test]
async fn an_instance_url_from_the_token_response_becomes_the_base_url() {
    let evil = api_on("127.0.0.2").await;
    let (ns, op, server) = oauth_setup("inst-token", |c| c.extra_token_fields(json!({"instance_url": "{issuer}"}))).await;
    // Like Salesforce: each org's API lives at the instance_url of its token response.
    create::<Connector>(
        &ns,
        json!({
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": "crm"},
            "spec": {
                "displayName": "CRM", "baseUrl": "{instance_url}/services/data/v62.0", "allowedHosts": ["http://127.0.0.1"],
                "instanceParameters": [{"name": "instance_url", "from": "TokenResponse", "part": "Url"}],
                "authMethods": [{"name": "oauth", "oauth2": {
                    "flow": "AuthorizationCode", "authorizationUrl": server.authorize_url(), "tokenUrl": server.token_url(),
                    "scopes": ["read"], "clientSecretRef": {"name": "oauth-app"}, "tokenResponseFields": ["instance_url"]}}]
            }
        }),
    )
    .await;
    create::<EmbeddedConnection>(
        &ns,
        json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "sync"},
               "spec": {"connectorRef": {"name": "crm"}, "authMethod": "oauth",
                        "job": {"template": {"spec": {"containers": [{"name": "sync", "image": "busybox"}]}}}}}),
    )
    .await;
    let uas: Api<UserActivation> = ns.api();
    let callback = format!("{}/oauth/callback", op.connect_base_url);
    let connect = |name: &'static str| {
        let (uas, callback) = (uas.clone(), callback.clone());
        async move {
            let link = wait_for_value("status.connectUrl", Duration::from_secs(30), || async {
                status_of(&uas.get(name).await.map_err(|e| e.to_string())?).connect_url.ok_or_else(|| "no link yet".to_string())
            })
            .await;
            let redirect = authorize_without_browser(&link, &callback, &Login::default()).await.expect("consent");
            http().get(redirect.url.as_str()).send().await.unwrap()
        }
    };

    activation(&ns, "acme", None, json!({})).await;
    let done = connect("acme").await;
    assert_eq!(done.status(), 200);
    wait_condition(&uas, "acme", "Ready", "True").await;
    let want = format!("{}/services/data/v62.0", server.issuer());
    assert_eq!(status_of(&uas.get("acme").await.unwrap()).base_url.as_deref(), Some(want.as_str()));
    assert_eq!(job_base_url(&ns, "acme").await, want);

    // A provider answer that points elsewhere: a clear page, a condition, nothing stored, nothing sent there.
    server.set_extra_token_fields(json!({"instance_url": evil.url})).await;
    activation(&ns, "bob", None, json!({})).await;
    let refused = connect("bob").await;
    assert_eq!(refused.status(), 422);
    assert!(refused.text().await.unwrap().contains("cannot be connected"));
    let (ua, message) = wait_for_value("bob Ready=False InvalidBaseUrl", Duration::from_secs(20), || async {
        let ua = uas.get("bob").await.map_err(|e| e.to_string())?;
        match condition(&ua, "Ready") {
            Some((s, r, m)) if s == "False" && r == "InvalidBaseUrl" => Ok((ua, m)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(message.contains("127.0.0.2"), "{message}");
    assert!(status_of(&ua).connect_url.is_some(), "a new link to try again");
    assert!(ns.api::<Secret>().get_opt("bob-sync-credentials").await.unwrap().is_none());
    assert_eq!(evil.requests.load(Ordering::SeqCst), 0);
    let secret = ns.api::<Secret>().get("acme-sync-credentials").await.unwrap();
    assert_eq!(decoded(&secret, "token_response.instance_url").as_deref(), Some(server.issuer()));
}
