//! The test OAuth2 server itself (no Kubernetes): the flows the operator relies on behave like a real provider's,
//! and the server's records show what happened. Token requests here are plain reqwest.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use support::oauth_server::*;

const CALLBACK: &str = "http://127.0.0.1:18080/oauth/callback";

fn server(config: OAuthServerConfig) -> OAuthServer {
    OAuthServer::start(config.client(OAuthClient::confidential("app", "app-secret").redirect_uri(CALLBACK)))
}

async fn token_request(server: &OAuthServer, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(server.token_url())
        .basic_auth("app", Some("app-secret"))
        .form(form)
        .send()
        .await
        .expect("token request");
    let status = response.status();
    (status, response.json().await.expect("token response is JSON"))
}

/// Runs the code flow with PKCE through the consent and exchanges the code.
async fn authorize(server: &OAuthServer, login: &Login) -> Value {
    let pkce = Pkce::new();
    let url = server.authorization_request("app", CALLBACK, "read write", "state-123", &pkce);
    let redirect = authorize_without_browser(&url, CALLBACK, login).await.expect("consent");
    assert_eq!(redirect.state.as_deref(), Some("state-123"));
    let (status, tokens) = token_request(
        server,
        &[("grant_type", "authorization_code"), ("code", &redirect.code), ("redirect_uri", CALLBACK), ("code_verifier", &pkce.verifier)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    tokens
}

async fn refresh(server: &OAuthServer, refresh_token: &str) -> (StatusCode, Value) {
    token_request(server, &[("grant_type", "refresh_token"), ("refresh_token", refresh_token)]).await
}

fn text<'a>(body: &'a Value, field: &str) -> &'a str {
    body[field].as_str().unwrap_or_else(|| panic!("no {field} in {body}"))
}

#[tokio::test]
async fn code_flow_with_pkce_gives_access_and_refresh_tokens() {
    let server = server(OAuthServerConfig::default().access_ttl(3));

    let tokens = authorize(&server, &Login::default()).await;

    assert!(!text(&tokens, "access_token").is_empty());
    assert!(!text(&tokens, "refresh_token").is_empty());
    assert_eq!(tokens["expires_in"], 3);
    assert_eq!(tokens["token_type"], "Bearer");
    let events = server.events().await;
    let authorization = events.iter().find(|e| e.endpoint == "authorization").expect("authorization event");
    assert_eq!(authorization.code_challenge_method.as_deref(), Some("S256"));
    let exchange = events.iter().find(|e| e.grant_type.as_deref() == Some("authorization_code")).unwrap();
    assert_eq!((exchange.outcome.as_str(), exchange.pkce), ("ok", Some(true)));
    assert_eq!(exchange.account_id.as_deref(), Some(AUTO_APPROVE_USER));
    let issued = exchange.issued.as_ref().unwrap();
    assert_eq!(issued.refresh_token, Some(fingerprint(text(&tokens, "refresh_token"))));
}

#[tokio::test]
async fn login_form_takes_the_test_password() {
    let server = server(OAuthServerConfig::default().consent(Consent::Form));
    let pkce = Pkce::new();
    let url = server.authorization_request("app", CALLBACK, "read", "s", &pkce);

    let wrong = Login { password: "wrong".into(), ..Login::as_user("alice") };
    assert!(matches!(authorize_without_browser(&url, CALLBACK, &wrong).await, Err(ConsentError::LoginRejected)));
    let denied = Login { approve: false, ..Login::as_user("alice") };
    let outcome = authorize_without_browser(&url, CALLBACK, &denied).await;
    assert!(matches!(outcome, Err(ConsentError::Denied { ref error, .. }) if error == "access_denied"), "{outcome:?}");

    authorize(&server, &Login::as_user("alice")).await;
    let exchange = server.token_events().await.pop().unwrap();
    assert_eq!(exchange.account_id.as_deref(), Some("alice"));
}

#[tokio::test]
async fn code_flow_without_pkce_is_refused() {
    let server = server(OAuthServerConfig::default());
    let url = format!(
        "{}?response_type=code&client_id=app&redirect_uri={}&scope=read&state=s",
        server.authorize_url(),
        url::form_urlencoded::byte_serialize(CALLBACK.as_bytes()).collect::<String>()
    );
    let outcome = authorize_without_browser(&url, CALLBACK, &Login::default()).await;
    assert!(matches!(outcome, Err(ConsentError::Denied { ref error, .. }) if error == "invalid_request"), "{outcome:?}");
}

#[tokio::test]
async fn refresh_rotates_and_the_old_refresh_token_gets_invalid_grant() {
    let server = server(OAuthServerConfig::default());
    let first = authorize(&server, &Login::default()).await;
    let old = text(&first, "refresh_token");

    let (status, second) = refresh(&server, old).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let new = text(&second, "refresh_token");
    assert_ne!(new, old, "the refresh token rotates");
    assert!(second["expires_in"].as_u64().is_some());

    let (status, reuse) = refresh(&server, old).await;
    assert_eq!((status, text(&reuse, "error")), (StatusCode::BAD_REQUEST, "invalid_grant"));
    // Reuse detection revokes the whole grant: the newest refresh token is dead too.
    let (status, after) = refresh(&server, new).await;
    assert_eq!((status, text(&after, "error")), (StatusCode::BAD_REQUEST, "invalid_grant"));

    let refreshes = server.refresh_events().await;
    assert_eq!(refreshes.len(), 3);
    let presented: Vec<_> = refreshes.iter().map(|e| e.refresh_token.clone().unwrap()).collect();
    assert_eq!(presented[0].fingerprint, fingerprint(old));
    assert_eq!((presented[0].prior_uses, refreshes[0].rotated), (0, Some(true)));
    assert!(refreshes[1].reused_refresh_token() && presented[1].consumed);
    assert_eq!(refreshes[1].error_detail.as_deref(), Some("refresh token already used"));
    assert!(!refreshes[2].reused_refresh_token() && presented[2].prior_uses == 0);
}

#[tokio::test]
async fn client_credentials_gives_a_token_and_the_registered_auth_method_is_enforced() {
    let server = OAuthServer::start(
        OAuthServerConfig::default()
            .client(OAuthClient::confidential("svc", "svc-secret").grant_types(&["client_credentials"]).auth(ClientAuth::Post)),
    );
    let http = reqwest::Client::new();
    let form = [("grant_type", "client_credentials"), ("client_id", "svc"), ("client_secret", "svc-secret")];

    let response = http.post(server.token_url()).form(&form).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert!(!text(&body, "access_token").is_empty());
    assert!(body["expires_in"].as_u64().is_some());
    assert!(body.get("refresh_token").is_none());

    let basic = http
        .post(server.token_url())
        .basic_auth("svc", Some("svc-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED, "a post client may not use basic");

    let events = server.token_events().await;
    let outcomes: Vec<_> = events.iter().map(|e| (e.client_auth.as_deref().unwrap(), e.status)).collect();
    assert_eq!(outcomes, [("client_secret_post", 200), ("client_secret_basic", 401)]);
}

#[tokio::test]
async fn revocation_is_recorded_and_ends_the_refresh_token() {
    let server = server(OAuthServerConfig::default());
    let tokens = authorize(&server, &Login::default()).await;
    let refresh_token = text(&tokens, "refresh_token");

    let response = reqwest::Client::new()
        .post(server.revocation_url())
        .basic_auth("app", Some("app-secret"))
        .form(&[("token", refresh_token), ("token_type_hint", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let revocations = server.revocations().await;
    assert_eq!(revocations.len(), 1);
    let revoked = revocations[0].token.as_ref().unwrap();
    assert_eq!((revoked.fingerprint.as_str(), revoked.kind.as_deref()), (fingerprint(refresh_token).as_str(), Some("refresh_token")));
    assert_eq!(revocations[0].client_id.as_deref(), Some("app"));
    let (status, body) = refresh(&server, refresh_token).await;
    assert_eq!((status, text(&body, "error")), (StatusCode::BAD_REQUEST, "invalid_grant"));
}

#[tokio::test]
async fn access_tokens_expire_after_their_ttl_and_the_resource_records_it() {
    // 4 s: long enough that a loaded machine still uses the token before it expires, short enough to wait out.
    let server = server(OAuthServerConfig::default().access_ttl(4));
    let tokens = authorize(&server, &Login::default()).await;
    let access = text(&tokens, "access_token");
    let me = |token: String| {
        let url = server.resource_url().to_string();
        async move { reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap().status() }
    };

    assert_eq!(me(access.into()).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(4200)).await;
    assert_eq!(me(access.into()).await, StatusCode::UNAUTHORIZED);

    let uses: Vec<_> = server.events().await.into_iter().filter(|e| e.endpoint == "resource").collect();
    assert_eq!(uses.iter().map(Event::used_expired_access_token).collect::<Vec<_>>(), [false, true]);
}

#[tokio::test]
async fn events_count_every_token_request_and_injected_faults() {
    let server = server(OAuthServerConfig::default());
    let tokens = authorize(&server, &Login::default()).await;
    server.inject_fault(Fault::token(503, 1).grant_type("refresh_token")).await;

    let (status, _) = refresh(&server, text(&tokens, "refresh_token")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, refreshed) = refresh(&server, text(&tokens, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK, "a refused attempt does not use the refresh token up");
    let (status, _) = refresh(&server, text(&refreshed, "refresh_token")).await;
    assert_eq!(status, StatusCode::OK);

    let events = server.token_events().await;
    let summary: Vec<_> = events.iter().map(|e| (e.grant_type.as_deref().unwrap(), e.outcome.as_str())).collect();
    assert_eq!(summary, [("authorization_code", "ok"), ("refresh_token", "injected"), ("refresh_token", "ok"), ("refresh_token", "ok")]);
    assert!(events.iter().all(|e| !e.reused_refresh_token()), "each refresh token used once");

    server.reset_records().await;
    assert!(server.events().await.is_empty());
}

#[tokio::test]
async fn storage_holds_thousands_of_live_tokens() {
    // oidc-provider's own memory adapter is an LRU of 1,000 entries (two generations: an entry is gone at the
    // latest after 2,000 newer ones); the test server's store is unbounded.
    let server = server(OAuthServerConfig::default());
    let http = reqwest::Client::new();
    let mut first = None;
    for _ in 0..2100 {
        let body = server.client_credentials_token(&http, "app", "app-secret").await;
        first.get_or_insert_with(|| text(&body, "access_token").to_string());
    }
    let introspection: Value = http
        .post(server.introspection_url())
        .basic_auth("app", Some("app-secret"))
        .form(&[("token", first.unwrap().as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(introspection["active"], true, "the first of 2,100 tokens is still there");
}

#[tokio::test]
async fn a_grant_revoked_at_the_provider_ends_its_refresh_token() {
    let server = server(OAuthServerConfig::default());
    let pkce = Pkce::new();
    let url = server.authorization_request("app", CALLBACK, "read", "s", &pkce) + "&login_hint=bob";
    let redirect = authorize_without_browser(&url, CALLBACK, &Login::default()).await.expect("consent");
    let (_, tokens) = token_request(
        &server,
        &[("grant_type", "authorization_code"), ("code", &redirect.code), ("redirect_uri", CALLBACK), ("code_verifier", &pkce.verifier)],
    )
    .await;

    assert_eq!(server.revoke_grants_of("bob").await, 1);

    let (status, body) = refresh(&server, text(&tokens, "refresh_token")).await;
    assert_eq!((status, text(&body, "error")), (StatusCode::BAD_REQUEST, "invalid_grant"));
}
