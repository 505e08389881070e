//! OAuth2 end to end: the operator binary, the real control plane and the real OAuth2 server (oidc-provider).
//! The user's browser is driven without one, from `status.connectUrl` to the operator's callback.
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};
use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
use serde_json::json;
use support::oauth_server::{
    Consent, ConsentError, Fault, Login, OAuthClient, OAuthServer, OAuthServerConfig, authorize_without_browser, fingerprint,
};
use support::operator::Operator;
use support::{TestNamespace, wait_for_value};

const RETURN_URL: &str = "https://app.example.com/integrations/done";

fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(15)).build().unwrap()
}

struct Setup {
    ns: TestNamespace,
    op: Operator,
    server: OAuthServer,
}

impl Setup {
    fn callback(&self) -> String {
        format!("{}/oauth/callback", self.op.connect_base_url)
    }
    fn activations(&self) -> Api<UserActivation> {
        self.ns.api()
    }
    fn secrets(&self) -> Api<Secret> {
        self.ns.api()
    }
}

/// An operator, an OAuth server whose client redirects to the operator's callback, and the app's Secret.
async fn setup(name: &str, config: impl FnOnce(OAuthServerConfig) -> OAuthServerConfig) -> Setup {
    let bed = support::bed().await;
    let ns = support::namespace(&bed, name).await;
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

async fn create_connection(s: &Setup, flow: &str, extra: serde_json::Value) {
    create_connection_with(s, flow, extra, json!({})).await
}

/// The connector `idp` and the connection `sync`, with `extra` merged into the OAuth2 method and `ec_extra` into
/// the EmbeddedConnection's spec.
async fn create_connection_with(s: &Setup, flow: &str, extra: serde_json::Value, ec_extra: serde_json::Value) {
    let mut oauth2 = json!({
        "flow": flow,
        "authorizationUrl": s.server.authorize_url(),
        "tokenUrl": s.server.token_url(),
        "revocationUrl": s.server.revocation_url(),
        "scopes": ["read", "write"],
        "clientSecretRef": {"name": "oauth-app"},
    });
    for (k, v) in extra.as_object().unwrap() {
        oauth2[k] = v.clone();
    }
    let connector: Connector = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": "idp"},
        "spec": {"displayName": "Test Provider", "baseUrl": s.server.issuer(), "authMethods": [{"name": "oauth", "oauth2": oauth2}]}
    }))
    .unwrap();
    s.ns.api::<Connector>().create(&PostParams::default(), &connector).await.unwrap();
    let mut ec_spec = json!({"connectorRef": {"name": "idp"}, "authMethod": "oauth", "allowedReturnUrls": ["https://app.example.com/"]});
    for (k, v) in ec_extra.as_object().unwrap() {
        ec_spec[k] = v.clone();
    }
    let ec: EmbeddedConnection = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "sync"}, "spec": ec_spec
    }))
    .unwrap();
    s.ns.api::<EmbeddedConnection>().create(&PostParams::default(), &ec).await.unwrap();
}

async fn create_activation(s: &Setup, name: &str, source: Option<&str>) {
    let mut spec = json!({"connectionRef": {"name": "sync"}, "user": {"id": name, "displayName": "Acme Corp"}, "returnUrl": RETURN_URL});
    if let Some(src) = source {
        spec["credentialsSecretRef"] = json!({"name": src});
    }
    let ua: UserActivation = serde_json::from_value(
        json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap();
    s.activations().create(&PostParams::default(), &ua).await.unwrap();
}

async fn connect_url(s: &Setup, name: &str, not: Option<&str>) -> String {
    let api = s.activations();
    wait_for_value("status.connectUrl", Duration::from_secs(30), || async {
        let ua = api.get(name).await.map_err(|e| e.to_string())?;
        let st = ua.status.unwrap_or_default();
        match st.connect_url {
            Some(u) if Some(u.as_str()) != not => Ok(u),
            _ => Err(format!(
                "phase {:?}, conditions {:?}",
                st.phase,
                st.conditions.iter().map(|c| (&c.type_, &c.reason)).collect::<Vec<_>>()
            )),
        }
    })
    .await
}

async fn phase(s: &Setup, name: &str, want: &str, timeout: Duration) -> UserActivation {
    let api = s.activations();
    wait_for_value(&format!("phase {want}"), timeout, || async {
        let ua = api.get(name).await.map_err(|e| e.to_string())?;
        let p = ua.status.as_ref().and_then(|s| s.phase).map(|p| format!("{p:?}")).unwrap_or_default();
        if p == want { Ok(ua) } else { Err(format!("phase {p}, status {:?}", ua.status)) }
    })
    .await
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    secret.data.as_ref()?.get(key).map(|b| String::from_utf8_lossy(&b.0).to_string())
}

/// Connects the user: consent at the provider, then the operator's callback. Returns the callback URL used.
async fn connect(s: &Setup, name: &str) -> String {
    let url = connect_url(s, name, None).await;
    let redirect = authorize_without_browser(&url, &s.callback(), &Login::default()).await.expect("consent");
    let cb = redirect.url.to_string();
    let res = http().get(&cb).send().await.unwrap();
    assert_eq!(res.status(), 302, "callback: {}", res.text().await.unwrap_or_default());
    let loc = res.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(loc, format!("{RETURN_URL}?status=success"));
    cb
}

#[tokio::test]
async fn a_user_connects_through_the_link_and_tokens_refresh_before_expiry() {
    let s = setup("oauth-flow", |c| c.access_ttl(3)).await;
    create_connection(&s, "AuthorizationCode", json!({})).await;
    create_activation(&s, "acme", None).await;

    // Opening the link changes nothing; a forged link or state is refused before any write.
    let url = connect_url(&s, "acme", None).await;
    assert!(url.starts_with(&format!("{}/connect/", s.op.connect_base_url)));
    let first = http().get(&url).send().await.unwrap();
    assert_eq!(first.status(), 302);
    let to = first.headers()["location"].to_str().unwrap().to_string();
    assert!(
        to.starts_with(s.server.authorize_url()) && to.contains("code_challenge_method=S256") && to.contains("scope=read+write"),
        "{to}"
    );
    assert_eq!(first.headers()["x-frame-options"], "DENY");
    assert_eq!(first.headers()["cache-control"], "no-store");
    let forged = http().get(format!("{}/connect/eyJucyI6Inh4In0.AAAA", s.op.connect_base_url)).send().await.unwrap();
    assert_eq!(forged.status(), 400);
    let bad_state = http()
        .get(format!(
            "{}/oauth/callback?code=abc&state=s1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            s.op.connect_base_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_state.status(), 400);
    let secret_name = "acme-sync-credentials";
    assert!(s.secrets().get_opt(secret_name).await.unwrap().is_none(), "nothing written by refused requests");

    // The user consents; the callback stores the tokens and sends them back.
    let cb = connect(&s, "acme").await;
    let ua = phase(&s, "acme", "Active", Duration::from_secs(30)).await;
    let st = ua.status.unwrap();
    assert!(st.connect_url.is_none() && st.expires_at.is_some() && st.next_refresh_time.is_some());
    let secret = s.secrets().get(secret_name).await.unwrap();
    assert!(text(&secret, "access_token").is_some() && text(&secret, "refresh_token").is_some());
    assert_eq!(text(&secret, "token_type").as_deref(), Some("Bearer"));
    let code_events: Vec<_> =
        s.server.token_events().await.into_iter().filter(|e| e.grant_type.as_deref() == Some("authorization_code")).collect();
    assert_eq!(code_events.len(), 1);
    assert_eq!(code_events[0].pkce, Some(true));

    // Replaying the callback (same state, same code) is refused and writes nothing.
    let rv = s.secrets().get(secret_name).await.unwrap().resource_version();
    let replay = http().get(&cb).send().await.unwrap();
    assert_eq!(replay.status(), 410);
    let generation = |s: &Secret| s.annotations().get("latchkey.dev/credential-generation").cloned();
    let after = s.secrets().get(secret_name).await.unwrap();
    assert_eq!(generation(&after).as_deref(), Some("1"));
    let _ = rv;

    // 3-second tokens: refreshed before expiry, repeatedly, each refresh token used once.
    let old_refresh = text(&after, "refresh_token").unwrap();
    let probe = http();
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        let sec = s.secrets().get(secret_name).await.unwrap();
        let token = text(&sec, "access_token").unwrap();
        let r = probe.get(s.server.resource_url()).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200, "the stored access token works at every moment");
    }
    let refreshes = s.server.refresh_events().await;
    eprintln!("measured: {} refreshes of 3 s tokens in ~7.2 s", refreshes.len());
    assert!(refreshes.len() >= 3, "expected at least 3 refreshes in 7 s of 3 s tokens, got {}", refreshes.len());
    for e in &refreshes {
        assert_eq!(e.outcome, "ok", "{e:?}");
        let rt = e.refresh_token.as_ref().unwrap();
        assert_eq!(rt.prior_uses, 0, "each refresh token is used once");
        assert!(!rt.expired);
    }
    let resource_expired = s
        .server
        .events()
        .await
        .into_iter()
        .filter(|e| e.endpoint == "resource")
        .any(|e| e.access_token.as_ref().is_some_and(|t| t.expired));
    assert!(!resource_expired, "no expired token was ever served");
    let ua = s.activations().get("acme").await.unwrap();
    let st = ua.status.unwrap();
    assert!(st.last_refresh_time.is_some());
    assert_eq!(st.credential_generation, 1, "a refresh is not a credential change");

    // A reused refresh token kills the grant at the provider: NeedsReauthorization and a new link.
    let reuse = http()
        .post(s.server.token_url())
        .basic_auth("app", Some("app-secret"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", old_refresh.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(reuse.status(), 400);
    let ua = phase(&s, "acme", "NeedsReauthorization", Duration::from_secs(20)).await;
    let new_link = ua.status.unwrap().connect_url.expect("a fresh connect link");
    assert_ne!(new_link, url);
    let events = s.server.refresh_events().await;
    let invalid = events.iter().filter(|e| e.error.as_deref() == Some("invalid_grant")).count();
    assert!(invalid <= 2, "the operator stops after invalid_grant ({invalid} refused refreshes including the test's own)");

    // The user connects again; deleting the activation revokes the grant.
    connect(&s, "acme").await;
    let ua = phase(&s, "acme", "Active", Duration::from_secs(30)).await;
    assert!(ua.finalizers().iter().any(|f| f == "latchkey.dev/cleanup"));
    assert_eq!(ua.status.unwrap().credential_generation, 2);
    s.activations().delete("acme", &DeleteParams::default()).await.unwrap();
    wait_for_value("the activation to be gone", Duration::from_secs(20), || async {
        match s.activations().get_opt("acme").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|o| o.map(|u| u.finalizers().to_vec())))),
        }
    })
    .await;
    let revocations = s.server.revocations().await;
    assert_eq!(revocations.len(), 1, "{revocations:?}");
    assert_eq!(revocations[0].status, 200);
    s.op.assert_no_leaks("acme", &[&old_refresh, "app-secret"]);
}

#[tokio::test]
async fn client_credentials_are_fetched_and_refetched_without_a_user() {
    let s = setup("oauth-cc", |mut c| {
        c.client_credentials_ttl = Some(4);
        c.clients.push(OAuthClient::confidential("tenant-client", "tenant-secret").grant_types(&["client_credentials"]));
        c
    })
    .await;
    create_connection(&s, "ClientCredentials", json!({})).await;
    let src: Secret = serde_json::from_value(
        json!({"metadata": {"name": "acme-client"}, "stringData": {"client_id": "tenant-client", "client_secret": "tenant-secret"}}),
    )
    .unwrap();
    s.secrets().create(&PostParams::default(), &src).await.unwrap();
    create_activation(&s, "acme", Some("acme-client")).await;
    phase(&s, "acme", "Active", Duration::from_secs(30)).await;
    let secret = wait_for_value("an access token in the owned Secret", Duration::from_secs(15), || async {
        let sec = s.secrets().get("acme-sync-credentials").await.map_err(|e| e.to_string())?;
        if text(&sec, "access_token").is_some() { Ok(sec) } else { Err("no access_token yet".to_string()) }
    })
    .await;
    let first = text(&secret, "access_token").unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cc: Vec<_> = s
        .server
        .token_events()
        .await
        .into_iter()
        .filter(|e| e.grant_type.as_deref() == Some("client_credentials") && e.outcome == "ok")
        .collect();
    assert!(cc.len() >= 2, "re-fetched before expiry: {} fetches", cc.len());
    let now = text(&s.secrets().get("acme-sync-credentials").await.unwrap(), "access_token").unwrap();
    assert_ne!(fingerprint(&first), fingerprint(&now));
    let r = http().get(s.server.resource_url()).bearer_auth(&now).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_failing_provider_is_retried_with_backoff_then_recovers() {
    let s = setup("oauth-backoff", |c| c.access_ttl(30)).await;
    create_connection(&s, "AuthorizationCode", json!({"refreshBefore": "28s"})).await;
    create_activation(&s, "acme", None).await;
    // refreshBefore 28s with 30 s tokens: margin = min(28 s, 15 s) = 15 s, so the first refresh is due ~15 s in.
    s.server.inject_fault(Fault::token(500, 1000).grant_type("refresh_token")).await;
    connect(&s, "acme").await;
    phase(&s, "acme", "Active", Duration::from_secs(30)).await;
    let window = Duration::from_secs(30);
    tokio::time::sleep(window).await;
    let tried = s.server.refresh_events().await.len();
    // Backoff 1, 2, 4, 8, 16 s from the first due refresh (~14-15 s in): at most 5 attempts in the remaining
    // ~16 s; allow 7 for timing. A tight loop would make hundreds.
    eprintln!("measured: {tried} refresh attempts against a failing provider in {window:?}");
    assert!((1..=7).contains(&tried), "{tried} refresh attempts in {window:?}");
    let ua = s.activations().get("acme").await.unwrap();
    let st = ua.status.unwrap();
    assert!(st.consecutive_failures >= 1, "{st:?}");
    s.server.clear_faults().await;
    wait_for_value("a successful refresh after the provider recovered", Duration::from_secs(40), || async {
        let ok = s.server.refresh_events().await.into_iter().any(|e| e.outcome == "ok");
        let ua = s.activations().get("acme").await.map_err(|e| e.to_string())?;
        let failures = ua.status.map(|s| s.consecutive_failures).unwrap_or(99);
        if ok && failures == 0 { Ok(()) } else { Err(format!("ok={ok} failures={failures}")) }
    })
    .await;
}

#[tokio::test]
async fn a_provider_without_expires_in_still_refreshes() {
    let s = setup("oauth-noexp", |mut c| {
        c.omit_expires_in = true;
        c
    })
    .await;
    create_connection(&s, "AuthorizationCode", json!({"defaultTokenLifetime": "4s"})).await;
    create_activation(&s, "acme", None).await;
    connect(&s, "acme").await;
    let ua = phase(&s, "acme", "Active", Duration::from_secs(30)).await;
    let st = ua.status.unwrap();
    let lifetime = st.expires_at.unwrap() - chrono::Utc::now();
    assert!(lifetime <= chrono::Duration::seconds(4), "the default lifetime applies: {lifetime}");
    wait_for_value("two refreshes", Duration::from_secs(15), || async {
        let n = s.server.refresh_events().await.iter().filter(|e| e.outcome == "ok").count();
        if n >= 2 { Ok(n) } else { Err(format!("{n} refreshes")) }
    })
    .await;
    let _ = BTreeMap::<String, String>::new();
}

#[tokio::test]
async fn the_refresh_now_annotation_refreshes_once() {
    let s = setup("oauth-refresh-now", |c| c.access_ttl(3600)).await;
    create_connection(&s, "AuthorizationCode", json!({})).await;
    create_activation(&s, "acme", None).await;
    connect(&s, "acme").await;
    phase(&s, "acme", "Active", Duration::from_secs(30)).await;
    assert!(s.server.refresh_events().await.is_empty(), "hour-long tokens: no refresh yet");
    let patch = json!({"metadata": {"annotations": {"latchkey.dev/refresh-now": "job-saw-401"}}});
    s.activations().patch("acme", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    wait_for_value("one refresh after the annotation", Duration::from_secs(15), || async {
        let n = s.server.refresh_events().await.into_iter().filter(|e| e.outcome == "ok").count();
        if n == 1 { Ok(()) } else { Err(format!("{n} refreshes")) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(s.server.refresh_events().await.len(), 1, "the same annotation value refreshes once");
    let ua = s.activations().get("acme").await.unwrap();
    assert_eq!(ua.status.unwrap().refresh_now_handled.as_deref(), Some("job-saw-401"));
    // What an operator's dashboard shows: one successful refresh, and the connect requests by route and status.
    let metrics = s.op.metrics().await;
    assert!(metrics.contains("latchkey_token_refreshes_total{outcome=\"ok\"} 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("latchkey_connect_requests_total{route=\"connect_page\"")), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("latchkey_connect_requests_total{route=\"oauth_callback\"")), "{metrics}");
    assert!(metrics.contains("latchkey_activations{phase=\"Active\"} 1"), "{metrics}");
}

#[tokio::test]
async fn the_token_response_fields_a_connector_asks_for_are_kept_across_refreshes() {
    let s = setup("oauth-fields", |c| {
        c.access_ttl(3).extra_token_fields(json!({"instance_url": "{issuer}", "team": {"id": "T1", "name": "Acme"}, "other": "x"}))
    })
    .await;
    create_connection(&s, "AuthorizationCode", json!({"tokenResponseFields": ["instance_url", "team"]})).await;
    create_activation(&s, "acme", None).await;
    connect(&s, "acme").await;
    phase(&s, "acme", "Active", Duration::from_secs(30)).await;
    let secret = s.secrets().get("acme-sync-credentials").await.unwrap();
    assert_eq!(text(&secret, "token_response.instance_url").as_deref(), Some(s.server.issuer()));
    assert_eq!(text(&secret, "token_response.team").as_deref(), Some(r#"{"id":"T1","name":"Acme"}"#));
    assert!(text(&secret, "token_response.other").is_none(), "only the fields asked for are kept");

    // Refreshes that no longer carry instance_url keep it; a new team value replaces the old one.
    // A value no status field could hold by chance (a bare "T2" is in every RFC 3339 time from 20:00 to 23:59).
    s.server.set_extra_token_fields(json!({"team": "team-two-7f3a"})).await;
    let after = wait_for_value("a refresh that brought team team-two-7f3a", Duration::from_secs(20), || async {
        let sec = s.secrets().get("acme-sync-credentials").await.map_err(|e| e.to_string())?;
        if text(&sec, "token_response.team").as_deref() == Some("team-two-7f3a") {
            Ok(sec)
        } else {
            Err(format!("{:?}", text(&sec, "token_response.team")))
        }
    })
    .await;
    assert_eq!(text(&after, "token_response.instance_url").as_deref(), Some(s.server.issuer()), "kept when a refresh omits it");
    assert!(s.server.refresh_events().await.iter().any(|e| e.outcome == "ok"));
    let ua = s.activations().get("acme").await.unwrap();
    assert!(!serde_json::to_string(&ua.status).unwrap().contains("team-two-7f3a"), "token-response values stay out of status");
}

#[tokio::test]
async fn a_user_who_declines_consent_sees_a_clear_page_and_the_activation_says_so() {
    let s = setup("oauth-deny", |c| c.consent(Consent::AutoDeny)).await;
    create_connection(&s, "AuthorizationCode", json!({})).await;
    create_activation(&s, "acme", None).await;
    let url = connect_url(&s, "acme", None).await;
    let denied = authorize_without_browser(&url, &s.callback(), &Login::default()).await;
    let Err(ConsentError::Denied { error, url: callback, .. }) = denied else { panic!("expected a denial, got {denied:?}") };
    assert_eq!(error, "access_denied");

    let page = http().get(&callback).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let body = page.text().await.unwrap();
    assert!(body.contains("You did not allow access") && body.contains("Test Provider"), "{body}");
    assert!(body.contains("https://app.example.com/integrations/done?status=error"), "a way back to the application: {body}");

    // The activation says why, with a fresh link; nothing else was written and no code was exchanged.
    let ua = wait_for_value("Ready=False ConsentDeclined", Duration::from_secs(20), || async {
        let ua = s.activations().get("acme").await.map_err(|e| e.to_string())?;
        let st = ua.status.clone().unwrap_or_default();
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready").map(|c| (c.status.to_string(), c.reason.to_string()));
        match (ready, &st.connect_url) {
            (Some((status, reason)), Some(u)) if status == "False" && reason == "ConsentDeclined" && *u != url => Ok(ua),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let st = ua.status.unwrap();
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains("declined"), "{}", ready.message);
    assert_eq!(st.phase.map(|p| format!("{p:?}")).as_deref(), Some("AwaitingUser"));
    assert!(s.secrets().get_opt("acme-sync-credentials").await.unwrap().is_none(), "no Secret");
    assert!(s.server.token_events().await.is_empty(), "no token request");

    // The denied state is spent: replaying it is refused.
    let replay = http().get(&callback).send().await.unwrap();
    assert_eq!(replay.status(), 410);
}

#[tokio::test]
async fn an_expired_connect_link_is_replaced_by_a_new_one_and_the_old_one_is_refused() {
    let s = setup("oauth-renew", |c| c).await;
    // Links are renewed 30 s before they expire: a 40 s lifetime renews every ~10 s.
    create_connection_with(&s, "AuthorizationCode", json!({}), json!({"connectUrlTtl": "40s"})).await;
    create_activation(&s, "acme", None).await;
    let first = connect_url(&s, "acme", None).await;
    let first_expiry = s.activations().get("acme").await.unwrap().status.unwrap().connect_url_expires_at.unwrap();
    assert!(first_expiry <= chrono::Utc::now() + chrono::Duration::seconds(41), "the connection's lifetime applies: {first_expiry}");
    let second = connect_url(&s, "acme", Some(&first)).await;
    let second_expiry = s.activations().get("acme").await.unwrap().status.unwrap().connect_url_expires_at.unwrap();
    assert!(second_expiry > first_expiry, "{second_expiry} after {first_expiry}");

    let old = http().get(&first).send().await.unwrap();
    assert_eq!(old.status(), 410, "the replaced link is refused");
    let new = http().get(&second).send().await.unwrap();
    assert_eq!(new.status(), 302, "the new link leads to the provider");
    assert!(new.headers()["location"].to_str().unwrap().starts_with(s.server.authorize_url()));
    assert!(s.secrets().get_opt("acme-sync-credentials").await.unwrap().is_none());
}

#[tokio::test]
async fn a_callback_for_an_activation_deleted_since_is_refused_and_writes_nothing() {
    let s = setup("oauth-gone", |c| c).await;
    create_connection(&s, "AuthorizationCode", json!({})).await;
    create_activation(&s, "acme", None).await;
    let url = connect_url(&s, "acme", None).await;
    let redirect = authorize_without_browser(&url, &s.callback(), &Login::default()).await.expect("consent");

    // The application deletes the activation while the user is at the provider, then creates one of the same name.
    s.activations().delete("acme", &DeleteParams::default()).await.unwrap();
    wait_for_value("the activation to be gone", Duration::from_secs(20), || async {
        match s.activations().get_opt("acme").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|o| o.map(|u| u.finalizers().to_vec())))),
        }
    })
    .await;
    let gone = http().get(redirect.url.as_str()).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    assert!(gone.text().await.unwrap().contains("no longer exists"));

    create_activation(&s, "acme", None).await;
    connect_url(&s, "acme", None).await;
    let other = http().get(redirect.url.as_str()).send().await.unwrap();
    assert_eq!(other.status(), 404, "a state for the old activation does not serve its successor");
    assert!(s.secrets().get_opt("acme-sync-credentials").await.unwrap().is_none(), "nothing written");
    let exchanged = s.server.token_events().await.into_iter().filter(|e| e.grant_type.as_deref() == Some("authorization_code")).count();
    assert_eq!(exchanged, 0, "the code was never exchanged");
    let ua = s.activations().get("acme").await.unwrap();
    assert_eq!(ua.status.unwrap().phase.map(|p| format!("{p:?}")).as_deref(), Some("AwaitingUser"));
}

/// The write budget of an OAuth2 activation completed through the hosted connect flow, counted by the apiserver's
/// audit log (the connect server writes as the operator's user too). Per activation, from its creation until it is
/// Active with its first Job's outcome, the honest minimum is:
///
/// - 1 status write publishing the connect link (the application reads it from status);
/// - 1 Secret create: the tokens (the connect server), marked with the link's hash; being a create (an apply over
///   the version read when a Secret exists), it is also the compare-and-swap that makes a link or `state`
///   complete once across all replicas: no status write claims the link;
/// - 1 Job create: the first run;
/// - 1 status write making it Active, with the Job shown running, and dropping the spent link (the reconcile that
///   sees the Secret);
/// - 1 status write with the Job's outcome;
/// - 1 finalizer patch, because this connector can revoke (deletion revokes the grant first).
///
/// No Event: awaiting the user and becoming Active on the first consent are the expected steps, and the Ready
/// condition tells both. Four activations at once, so that the watches lag behind the writes as under load.
#[tokio::test]
async fn an_oauth_activation_costs_its_link_its_secret_its_first_job_and_its_status() {
    let s = setup("oauth-writes", |c| c.access_ttl(3600)).await;
    let job = json!({"template": {"spec": {"containers": [{"name": "sync", "image": "busybox", "command": ["sh", "-c", "echo sync"]}]}}});
    create_connection_with(&s, "AuthorizationCode", json!({}), json!({"job": job})).await;
    let bed = support::bed().await;
    let mark = bed.audit_mark();
    let names: Vec<String> = (0..4).map(|i| format!("user{i}")).collect();
    for name in &names {
        create_activation(&s, name, None).await;
    }
    for name in &names {
        connect(&s, name).await;
    }
    for name in &names {
        phase(&s, name, "Active", Duration::from_secs(30)).await;
        wait_for_value("lastRun finished", Duration::from_secs(30), || async {
            let ua = s.activations().get(name).await.map_err(|e| e.to_string())?;
            match ua.status.and_then(|s| s.last_run).and_then(|r| r.succeeded) {
                Some(true) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes = bed.operator_writes_in(s.ns.name(), mark);
    let all = writes.lines();
    for name in &names {
        let secret = format!("{name}-sync-credentials");
        assert_eq!(writes.count("secrets", None, "create", &|n| n == secret), 1, "{name}: its Secret created; all writes: {all:#?}");
        assert_eq!(writes.count("jobs", None, "create", &|n| n.starts_with(&format!("{name}-"))), 1, "{name}: one Job create; {all:#?}");
        assert_eq!(writes.count("useractivations", None, "patch", &|n| n == name), 1, "{name}: the finalizer; {all:#?}");
        assert_eq!(
            writes.count("useractivations", Some("status"), "patch", &|n| n == name),
            3,
            "{name}: the link, Active, then the outcome; {all:#?}"
        );
    }
    // Nothing else for an activation: no Event (`<name>.<suffix>`), no second Secret or Job, no refused write. What
    // is left is the connection's own (its connector's status, the app Secret's label, the coalesced user count).
    for name in &names {
        let mine: Vec<&String> = writes
            .0
            .iter()
            .zip(&all)
            .filter(|(e, _)| {
                let n = e["objectRef"]["name"].as_str().unwrap_or("");
                n == name || n.starts_with(&format!("{name}-")) || n.starts_with(&format!("{name}."))
            })
            .map(|(_, w)| w)
            .collect();
        assert_eq!(mine.len(), 6, "{name}: exactly the set above (no Event): {mine:#?}");
    }
    eprintln!("measured: {} writes by the operator for {} OAuth activations: {all:#?}", all.len(), names.len());
}

/// The replica completing a link dies between its claim (the nonce removed) and the Secret write: the activation is
/// left without a link and without credentials. A new link is published after the grace (30 s), and it works.
#[tokio::test]
async fn a_link_claimed_by_a_request_that_never_stored_anything_is_replaced_after_the_grace() {
    let s = setup("oauth-claimed", |c| c).await;
    create_connection(&s, "AuthorizationCode", json!({})).await;
    create_activation(&s, "acme", None).await;
    let first = connect_url(&s, "acme", None).await;
    // What the connect server's claim writes, with nothing after it.
    let claim = json!({"status": {"connectNonce": null, "connectUrl": null, "connectUrlExpiresAt": null}});
    s.activations().patch_status("acme", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&claim)).await.unwrap();
    let claimed_at = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let st = s.activations().get("acme").await.unwrap().status.unwrap();
    assert!(st.connect_url.is_none(), "no new link while the credentials may still arrive: {st:?}");
    let second = wait_for_value("a new link after the grace", Duration::from_secs(60), || async {
        let st = s.activations().get("acme").await.map_err(|e| e.to_string())?.status.unwrap_or_default();
        st.connect_url.ok_or_else(|| format!("phase {:?}, no link", st.phase))
    })
    .await;
    eprintln!("measured: a new link {:?} after the claim", claimed_at.elapsed());
    assert_ne!(second, first);
    assert_eq!(http().get(&first).send().await.unwrap().status(), 410, "the claimed link stays spent");
    connect(&s, "acme").await;
    phase(&s, "acme", "Active", Duration::from_secs(30)).await;
}

/// The organisation changes its OAuth app's client secret in its Secret: the connect server's next code exchange
/// presents the new one, without a restart (the OAuth client it keeps per connector is rebuilt when the Secret's
/// version changes), and the change back works the same way.
#[tokio::test]
async fn a_changed_app_secret_is_used_by_the_next_callback_without_a_restart() {
    let s = setup("oauth-app-changed", |c| c).await;
    create_connection(&s, "AuthorizationCode", json!({})).await;
    create_activation(&s, "first", None).await;
    connect(&s, "first").await;

    let set_client_secret = |value: &'static str| {
        let secrets = s.secrets();
        async move {
            let patch = json!({"stringData": {"client_secret": value}});
            secrets.patch("oauth-app", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
            // The connect server learns the Secret's new version from its watch: give it a moment.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    };
    // A secret the provider does not know: the exchange presents it and the provider refuses the client.
    set_client_secret("not-the-app-secret").await;
    create_activation(&s, "second", None).await;
    let url = connect_url(&s, "second", None).await;
    let redirect = authorize_without_browser(&url, &s.callback(), &Login::default()).await.expect("consent");
    let res = http().get(redirect.url.to_string()).send().await.unwrap();
    assert_eq!(res.status(), 400, "the provider refused the changed client secret");
    let last = s.server.token_events().await.into_iter().max_by_key(|e| e.seq).expect("a token request");
    assert_eq!((last.grant_type.as_deref(), last.error.as_deref()), (Some("authorization_code"), Some("invalid_client")), "{last:?}");
    assert!(s.secrets().get_opt("second-sync-credentials").await.unwrap().is_none(), "nothing stored");

    // Back to the app's real secret: the next user connects.
    set_client_secret("app-secret").await;
    create_activation(&s, "third", None).await;
    connect(&s, "third").await;
    phase(&s, "third", "Active", Duration::from_secs(30)).await;
}
