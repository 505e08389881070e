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

// ---- OAuth2: a refresh URL of its own, extra token parameters, scope growth, suspend ----------------------------

mod oauth_setup {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, PostParams};
    use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
    use serde_json::json;

    use super::support::oauth_server::{Login, OAuthClient, OAuthServer, OAuthServerConfig, authorize_without_browser};
    use super::support::operator::Operator;
    use super::support::{TestNamespace, wait_for_value};

    pub const RETURN_URL: &str = "https://app.example.com/integrations/done";

    pub struct Setup {
        pub ns: TestNamespace,
        pub op: Operator,
        pub server: OAuthServer,
    }

    /// An operator, the real OAuth server with the organisation's app ("app", redirecting to the operator's
    /// callback), and the app's Secret.
    pub async fn setup(name: &str, config: impl FnOnce(OAuthServerConfig) -> OAuthServerConfig) -> Setup {
        let bed = super::support::bed().await;
        let ns = super::support::namespace(&bed, name).await;
        let op = Operator::start(&bed, name, &[ns.name()], &[]).await;
        let client = OAuthClient::confidential("app", "app-secret").redirect_uri(&format!("{}/oauth/callback", op.connect_base_url));
        let server = OAuthServer::start(config(OAuthServerConfig::default().client(client)));
        let app: Secret = serde_json::from_value(
            json!({"metadata": {"name": "oauth-app"}, "stringData": {"client_id": "app", "client_secret": "app-secret"}}),
        )
        .unwrap();
        ns.api::<Secret>().create(&PostParams::default(), &app).await.unwrap();
        Setup { ns, op, server }
    }

    impl Setup {
        pub fn activations(&self) -> Api<UserActivation> {
            self.ns.api()
        }

        /// Connector `idp` (method `oauth`, fields of `extra` merged into its oauth2) and EmbeddedConnection
        /// `sync`, with `connection` merged into its spec.
        pub async fn connection(&self, flow: &str, extra: serde_json::Value, connection: serde_json::Value) {
            let mut oauth2 = json!({
                "flow": flow,
                "authorizationUrl": self.server.authorize_url(),
                "tokenUrl": self.server.token_url(),
                "scopes": ["read"],
                "clientSecretRef": {"name": "oauth-app"},
            });
            for (k, v) in extra.as_object().unwrap() {
                oauth2[k] = v.clone();
            }
            let connector: Connector = serde_json::from_value(json!({
                "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": "idp"},
                "spec": {"displayName": "Test Provider", "baseUrl": self.server.issuer(), "authMethods": [{"name": "oauth", "oauth2": oauth2}]}
            }))
            .unwrap();
            self.ns.api::<Connector>().create(&PostParams::default(), &connector).await.unwrap();
            let mut spec =
                json!({"connectorRef": {"name": "idp"}, "authMethod": "oauth", "allowedReturnUrls": ["https://app.example.com/"]});
            for (k, v) in connection.as_object().unwrap() {
                spec[k] = v.clone();
            }
            let ec: EmbeddedConnection = serde_json::from_value(
                json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "sync"}, "spec": spec}),
            )
            .unwrap();
            self.ns.api::<EmbeddedConnection>().create(&PostParams::default(), &ec).await.unwrap();
        }

        pub async fn activation(&self, name: &str, source: Option<&str>) {
            let mut spec = json!({"connectionRef": {"name": "sync"}, "user": {"id": name}, "returnUrl": RETURN_URL});
            if let Some(s) = source {
                spec["credentialsSecretRef"] = json!({"name": s});
            }
            let ua: UserActivation = serde_json::from_value(
                json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": name}, "spec": spec}),
            )
            .unwrap();
            self.activations().create(&PostParams::default(), &ua).await.unwrap();
        }

        /// Waits for a connect link other than `not`.
        pub async fn connect_url(&self, name: &str, not: Option<&str>) -> String {
            let api = self.activations();
            wait_for_value("status.connectUrl", Duration::from_secs(30), || async {
                let st = api.get(name).await.map_err(|e| e.to_string())?.status.unwrap_or_default();
                match st.connect_url {
                    Some(u) if Some(u.as_str()) != not => Ok(u),
                    _ => Err(format!("phase {:?}, conditions {:?}", st.phase, st.conditions)),
                }
            })
            .await
        }

        /// The user opens the link, consents at the provider, and the operator's callback stores the tokens.
        pub async fn connect(&self, name: &str, not: Option<&str>) {
            let url = self.connect_url(name, not).await;
            let callback = format!("{}/oauth/callback", self.op.connect_base_url);
            let redirect = authorize_without_browser(&url, &callback, &Login::default()).await.expect("consent");
            let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
            let res = http.get(redirect.url.to_string()).send().await.unwrap();
            assert_eq!(res.status(), 302, "callback: {}", res.text().await.unwrap_or_default());
        }

        pub async fn phase(&self, name: &str, want: &str) -> UserActivation {
            let api = self.activations();
            wait_for_value(&format!("phase {want}"), Duration::from_secs(30), || async {
                let ua = api.get(name).await.map_err(|e| e.to_string())?;
                let p = ua.status.as_ref().and_then(|s| s.phase).map(|p| format!("{p:?}")).unwrap_or_default();
                if p == want { Ok(ua) } else { Err(format!("phase {p}, status {:?}", ua.status)) }
            })
            .await
        }
    }
}

use oauth_setup::setup;
use support::oauth_server::OAuthClient;

#[tokio::test]
async fn refresh_goes_to_the_refresh_url_and_every_token_request_carries_the_extra_parameters() {
    let s = setup("refresh-url", |c| {
        let mut c = c.access_ttl(3);
        c.clients.push(OAuthClient::confidential("tenant-client", "tenant-secret").grant_types(&["client_credentials"]));
        c
    })
    .await;
    let refresh_url = format!("{}/refresh", s.server.issuer());
    s.connection(
        "AuthorizationCode",
        json!({"refreshUrl": refresh_url, "tokenParams": {"audience": "https://api.example.com"}}),
        json!({}),
    )
    .await;
    s.activation("acme", None).await;
    s.connect("acme", None).await;
    s.phase("acme", "Active").await;

    // The code exchange at the token URL, then refreshes (3-second tokens) at the refresh URL only.
    let events = wait_for_value("two refreshes", std::time::Duration::from_secs(30), || async {
        let ev = s.server.token_events().await;
        let refreshes = ev.iter().filter(|e| e.is_refresh() && e.outcome == "ok").count();
        if refreshes >= 2 { Ok(ev) } else { Err(format!("{refreshes} refreshes")) }
    })
    .await;
    let audience = |e: &support::oauth_server::Event| e.extra_params.as_ref().and_then(|p| p.get("audience")).cloned();
    let code: Vec<_> = events.iter().filter(|e| e.grant_type.as_deref() == Some("authorization_code")).collect();
    assert_eq!(code.len(), 1);
    assert_eq!(code[0].path.as_deref(), Some("/token"));
    assert_eq!(audience(code[0]).as_deref(), Some("https://api.example.com"), "the code exchange carries tokenParams");
    for r in events.iter().filter(|e| e.is_refresh()) {
        assert_eq!(r.path.as_deref(), Some("/refresh"), "refreshes go to refreshUrl: {r:?}");
        assert_eq!(audience(r).as_deref(), Some("https://api.example.com"), "each refresh carries tokenParams");
        assert_eq!(r.outcome, "ok");
    }

    // Client credentials (the tenant's own client) carry them too.
    let cc = latchkey::api::Connector {
        metadata: kube::api::ObjectMeta { name: Some("idp-cc".into()), ..Default::default() },
        spec: serde_json::from_value(json!({
            "baseUrl": s.server.issuer(),
            "authMethods": [{"name": "client", "oauth2": {"flow": "ClientCredentials", "tokenUrl": s.server.token_url(),
                "scopes": ["read"], "tokenParams": {"audience": "https://api.example.com"}}}]
        }))
        .unwrap(),
        status: None,
    };
    s.ns.api::<Connector>().create(&PostParams::default(), &cc).await.unwrap();
    let ec: EmbeddedConnection = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "sync-cc"},
        "spec": {"connectorRef": {"name": "idp-cc"}, "authMethod": "client"}
    }))
    .unwrap();
    s.ns.api::<EmbeddedConnection>().create(&PostParams::default(), &ec).await.unwrap();
    let src: Secret = serde_json::from_value(json!({
        "metadata": {"name": "tenant-client", "labels": {"latchkey.dev/source": "true"}},
        "stringData": {"client_id": "tenant-client", "client_secret": "tenant-secret"}
    }))
    .unwrap();
    s.ns.api::<Secret>().create(&PostParams::default(), &src).await.unwrap();
    let ua: UserActivation = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "machine"},
        "spec": {"connectionRef": {"name": "sync-cc"}, "user": {"id": "machine"}, "credentialsSecretRef": {"name": "tenant-client"}}
    }))
    .unwrap();
    s.activations().create(&PostParams::default(), &ua).await.unwrap();
    s.phase("machine", "Active").await;
    let cc_events: Vec<_> =
        s.server.token_events().await.into_iter().filter(|e| e.grant_type.as_deref() == Some("client_credentials")).collect();
    assert!(!cc_events.is_empty());
    assert!(cc_events.iter().all(|e| audience(e).as_deref() == Some("https://api.example.com")), "{cc_events:?}");
}

#[tokio::test]
async fn grown_connector_scopes_need_the_users_consent_again_and_stop_jobs_until_then() {
    let s = setup("scope-growth", |c| c).await;
    s.connection("AuthorizationCode", json!({}), json!({"job": busybox_job()})).await;
    s.activation("acme", None).await;
    s.connect("acme", None).await;
    s.phase("acme", "Active").await;
    let secret = s.ns.api::<Secret>().get("acme-sync-credentials").await.unwrap();
    assert_eq!(decoded(&secret, "scope").as_deref(), Some("read"), "the provider granted what was asked");
    wait_for_value("the first run", T, || async {
        let n = jobs_of(&s.ns, "acme").await.len();
        if n == 1 { Ok(()) } else { Err(format!("{n} jobs")) }
    })
    .await;

    // The organisation asks for more: the user's grant lacks `write`.
    let patch = json!({"spec": {"authMethods": [{"name": "oauth", "oauth2": {
        "flow": "AuthorizationCode", "authorizationUrl": s.server.authorize_url(), "tokenUrl": s.server.token_url(),
        "scopes": ["read", "write"], "clientSecretRef": {"name": "oauth-app"}}}]}});
    s.ns.api::<Connector>().patch("idp", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    let ua = s.phase("acme", "NeedsReauthorization").await;
    let (status, reason, message) = condition(&ua, "Ready").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "ScopesAdded"));
    assert!(message.contains("write") && !message.contains("read,"), "names the missing scope: {message}");
    let link = ua.status.as_ref().and_then(|st| st.connect_url.clone()).expect("a fresh connect link");
    let events = s.ns.api::<k8s_openapi::api::core::v1::Event>().list(&Default::default()).await.unwrap();
    assert!(events.items.iter().any(|e| e.reason.as_deref() == Some("ScopesAdded")), "an event says so");
    // No run with fewer scopes than asked.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(jobs_of(&s.ns, "acme").await.len(), 1, "no new Job while the grant lacks scopes");

    // The user consents again through the new link: Active with both scopes, and one run for the new grant.
    assert!(link.starts_with(&s.op.connect_base_url), "{link}");
    s.connect("acme", None).await;
    s.phase("acme", "Active").await;
    let secret = s.ns.api::<Secret>().get("acme-sync-credentials").await.unwrap();
    assert_eq!(decoded(&secret, "scope").as_deref(), Some("read write"));
    wait_for_value("the run after re-consent", T, || async {
        let n = jobs_of(&s.ns, "acme").await.len();
        if n == 2 { Ok(()) } else { Err(format!("{n} jobs")) }
    })
    .await;
    let auth: Vec<_> = s.server.events().await.into_iter().filter(|e| e.endpoint == "authorization").collect();
    assert_eq!(auth.last().and_then(|e| e.scope.clone()).as_deref(), Some("read write"), "the new consent asked for both");
}

#[tokio::test]
async fn a_suspended_activation_runs_no_jobs_keeps_or_stops_refreshing_as_its_connection_says_and_resumes_without_consent() {
    use support::oauth_server::fingerprint;
    let s = setup("suspend", |c| c.access_ttl(3)).await;
    s.connection("AuthorizationCode", json!({}), json!({"job": busybox_job(), "suspendPolicy": "StopRefresh"})).await;
    let fresh: EmbeddedConnection = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "sync-fresh"},
        "spec": {"connectorRef": {"name": "idp"}, "authMethod": "oauth", "allowedReturnUrls": ["https://app.example.com/"],
                 "job": busybox_job()}
    }))
    .unwrap();
    s.ns.api::<EmbeddedConnection>().create(&PostParams::default(), &fresh).await.unwrap();
    s.activation("stop", None).await;
    let ua: UserActivation = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "fresh"},
        "spec": {"connectionRef": {"name": "sync-fresh"}, "user": {"id": "fresh"}, "returnUrl": oauth_setup::RETURN_URL}
    }))
    .unwrap();
    s.activations().create(&PostParams::default(), &ua).await.unwrap();
    for name in ["stop", "fresh"] {
        s.connect(name, None).await;
        s.phase(name, "Active").await;
    }
    for name in ["stop", "fresh"] {
        wait_for_value("the first run", T, || async {
            let n = jobs_of(&s.ns, name).await.len();
            if n == 1 { Ok(()) } else { Err(format!("{n} jobs")) }
        })
        .await;
    }

    let suspend = |v: bool| json!({"spec": {"suspend": v}});
    for name in ["stop", "fresh"] {
        s.activations().patch(name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&suspend(true))).await.unwrap();
        s.phase(name, "Suspended").await;
    }
    let rt = |name: &'static str| {
        let secrets = s.ns.api::<Secret>();
        async move {
            decoded(
                &secrets.get(&format!("{name}-{}-credentials", if name == "stop" { "sync" } else { "sync-fresh" })).await.unwrap(),
                "refresh_token",
            )
            .unwrap()
        }
    };
    let stop_rt = fingerprint(&rt("stop").await);
    let authorizations = s.server.events().await.iter().filter(|e| e.endpoint == "authorization").count();
    let fresh_before = s.activations().get("fresh").await.unwrap().status.unwrap().last_refresh_time;
    // Two token lifetimes later: the KeepFresh activation refreshed, the StopRefresh one made no token request.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let presented = |events: &[support::oauth_server::Event], fp: &str| {
        events.iter().filter(|e| e.is_refresh() && e.refresh_token.as_ref().is_some_and(|t| t.fingerprint == fp)).count()
    };
    let events = s.server.token_events().await;
    assert_eq!(presented(&events, &stop_rt), 0, "StopRefresh: no refresh while suspended");
    let fresh_after = s.activations().get("fresh").await.unwrap().status.unwrap().last_refresh_time;
    assert!(fresh_after > fresh_before, "KeepFresh: refreshed while suspended ({fresh_before:?} -> {fresh_after:?})");
    for name in ["stop", "fresh"] {
        assert_eq!(jobs_of(&s.ns, name).await.len(), 1, "{name}: no Job while suspended");
    }

    // Resuming needs no consent: the StopRefresh activation refreshes with its stored refresh token at once.
    for name in ["stop", "fresh"] {
        s.activations().patch(name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&suspend(false))).await.unwrap();
    }
    s.phase("stop", "Active").await;
    s.phase("fresh", "Active").await;
    wait_for_value("the resumed activation's refresh", T, || async {
        let ev = s.server.token_events().await;
        let ok = ev
            .iter()
            .filter(|e| e.is_refresh() && e.outcome == "ok" && e.refresh_token.as_ref().is_some_and(|t| t.fingerprint == stop_rt))
            .count();
        if ok == 1 { Ok(()) } else { Err(format!("{ok} refreshes with the stored token")) }
    })
    .await;
    let after = s.server.events().await;
    assert_eq!(after.iter().filter(|e| e.endpoint == "authorization").count(), authorizations, "no new consent");
    assert!(after.iter().filter(|e| e.is_refresh()).all(|e| e.outcome == "ok"), "no invalid_grant");
    s.phase("stop", "Active").await;
}
