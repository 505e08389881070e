//! The connect page for an API-key method: the form, a rejected key shown again with an error and nothing
//! stored, two working keys submitted at once and only one stored, the user sent back, the spent link refused.
mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
use serde_json::json;
use support::oauth_server::{OAuthClient, OAuthServer, OAuthServerConfig};
use support::operator::Operator;
use support::wait_for_value;

#[tokio::test]
async fn a_user_pastes_an_api_key_into_the_connect_page() {
    let bed = support::bed().await;
    let ns = support::namespace(&bed, "connect-page").await;
    let op = Operator::start(&bed, "connect-page", &[ns.name()], &[]).await;
    // The test OAuth server's protected resource stands in for the provider's API: a valid "API key" is an
    // access token it issued.
    let server = OAuthServer::start(
        OAuthServerConfig::default().client(OAuthClient::confidential("k", "k-secret").grant_types(&["client_credentials"])),
    );
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let issue_key =
        || async { server.client_credentials_token(&http, "k", "k-secret").await["access_token"].as_str().unwrap().to_string() };
    let (key, other_key) = (issue_key().await, issue_key().await);
    let resource = url::Url::parse(server.resource_url()).unwrap();

    let connector: Connector = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": "acme-api"},
        "spec": {"displayName": "Acme CRM", "baseUrl": server.issuer(), "authMethods": [{"name": "key", "apiKey": {"in": "Header", "name": "Authorization", "prefix": "Bearer "}}],
                 "verification": {"path": resource.path()}}
    }))
    .unwrap();
    ns.api::<Connector>().create(&PostParams::default(), &connector).await.unwrap();
    let ec: EmbeddedConnection = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "crm"},
        "spec": {"connectorRef": {"name": "acme-api"}, "authMethod": "key", "allowedReturnUrls": ["https://app.example.com/"]}
    }))
    .unwrap();
    ns.api::<EmbeddedConnection>().create(&PostParams::default(), &ec).await.unwrap();
    let ua: UserActivation = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "globex"},
        "spec": {"connectionRef": {"name": "crm"}, "user": {"id": "globex-1", "displayName": "Globex"}, "returnUrl": "https://app.example.com/back"}
    }))
    .unwrap();
    let uas = ns.api::<UserActivation>();
    uas.create(&PostParams::default(), &ua).await.unwrap();
    let link = wait_for_value("status.connectUrl", Duration::from_secs(30), || async {
        uas.get("globex").await.map_err(|e| e.to_string())?.status.and_then(|s| s.connect_url).ok_or_else(|| "no link yet".to_string())
    })
    .await;

    // The form: the connector's name, the user, one password field; strict headers.
    let page = http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let html = page.text().await.unwrap();
    assert!(html.contains("Acme CRM") && html.contains("Globex") && html.contains(r#"type="password""#), "{html}");

    // A wrong key: the form again, with an error, nothing stored.
    let wrong = http.post(&link).form(&[("api_key", "not-a-key")]).send().await.unwrap();
    assert_eq!(wrong.status(), 422);
    let html = wrong.text().await.unwrap();
    assert!(html.contains("did not accept") && !html.contains("not-a-key"), "the error is shown, the key is not echoed");
    let secrets = ns.api::<Secret>();
    assert!(secrets.get_opt("globex-crm-credentials").await.unwrap().is_none());

    // Two working keys submitted at once (a double click, two tabs): the link stores one of them, once. That one
    // is stored, its user sent back, the activation Active; the other is told the link was used.
    let (a, b) = tokio::join!(
        http.post(&link).form(&[("api_key", key.as_str())]).send(),
        http.post(&link).form(&[("api_key", other_key.as_str())]).send()
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [303, 410], "one submission stores, the other is refused");
    let (ok, stored) = if a.status() == 303 { (a, &key) } else { (b, &other_key) };
    assert_eq!(ok.headers()["location"], "https://app.example.com/back?status=success");
    let secret = secrets.get("globex-crm-credentials").await.unwrap();
    assert_eq!(secret.data.clone().unwrap()["api_key"].0, stored.as_bytes(), "the stored key is the accepted submission's");
    assert_eq!(secret.metadata.annotations.unwrap()["latchkey.dev/credential-generation"], "1", "stored once");
    wait_for_value("phase Active", Duration::from_secs(30), || async {
        let p = uas.get("globex").await.map_err(|e| e.to_string())?.status.and_then(|s| s.phase);
        if format!("{p:?}") == "Some(Active)" { Ok(()) } else { Err(format!("{p:?}")) }
    })
    .await;

    // The link is spent.
    let again = http.post(&link).form(&[("api_key", key.as_str())]).send().await.unwrap();
    assert_eq!(again.status(), 410);
    op.assert_no_leaks("globex", &[&key, &other_key]);
}
