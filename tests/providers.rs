//! The provider catalogue on the real control plane: `provider: github` with only the organisation's OAuth app
//! is accepted, becomes Ready and sends users to github.com with the catalogue's scopes; a misspelt provider is
//! refused at apply with the nearest names; a per-tenant provider is Ready when Latchkey can find the tenant's
//! address (Shopify's connect page asks for the shop) and says what is missing when it cannot (Mailchimp).
mod support;

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
use serde_json::json;
use support::operator::Operator;
use support::wait_for_value;

const T: Duration = Duration::from_secs(30);

fn connector(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": name}, "spec": spec})
}

/// Server-side apply of exactly this JSON (a typed object would also send its defaults).
async fn apply(api: &Api<Connector>, name: &str, obj: &serde_json::Value) -> Result<Connector, kube::Error> {
    api.patch(name, &PatchParams::apply("latchkey-tests"), &Patch::Apply(obj)).await
}

async fn ready(api: &Api<Connector>, name: &str) -> (String, String, String) {
    wait_for_value(&format!("Connector {name} Ready"), T, || async {
        let c = api.get(name).await.map_err(|e| e.to_string())?;
        let st = c.status.unwrap_or_default();
        match st.conditions.iter().find(|c| c.type_ == "Ready") {
            Some(r) if st.observed_generation == c.metadata.generation => {
                Ok((r.status.to_string(), r.reason.to_string(), r.message.clone()))
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

#[tokio::test]
async fn a_github_connector_from_the_catalogue_sends_users_to_github_with_its_scopes() {
    let bed = support::bed().await;
    let ns = support::namespace(&bed, "providers").await;
    let op = Operator::start(&bed, "providers", &[ns.name()], &[]).await;
    let app: Secret = serde_json::from_value(
        json!({"metadata": {"name": "github-app"}, "stringData": {"client_id": "Iv1.abc123", "client_secret": "s3cret"}}),
    )
    .unwrap();
    ns.api::<Secret>().create(&PostParams::default(), &app).await.unwrap();

    let connectors: Api<Connector> = ns.api();
    let obj = connector(
        "github",
        json!({"provider": "github", "authMethods": [{"name": "oauth", "oauth2": {"clientSecretRef": {"name": "github-app"}}}]}),
    );
    let stored = apply(&connectors, "github", &obj).await.expect("a provider Connector with only its OAuth app is accepted");
    // The apiserver keeps what was written: the catalogue fills in the operator, not as schema defaults.
    assert_eq!(stored.spec.base_url, "");
    assert_eq!(stored.spec.auth_methods[0].oauth2.as_ref().unwrap().token_url, "");
    let (status, reason, message) = ready(&connectors, "github").await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Ready"), "{message}");

    let ec: EmbeddedConnection = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "github-sync"},
        "spec": {"connectorRef": {"name": "github"}, "authMethod": "oauth", "allowedReturnUrls": ["https://app.example.com/"]}
    }))
    .unwrap();
    ns.api::<EmbeddedConnection>().create(&PostParams::default(), &ec).await.unwrap();
    let ua: UserActivation = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "acme"},
        "spec": {"connectionRef": {"name": "github-sync"}, "user": {"id": "acme-42"}, "returnUrl": "https://app.example.com/done"}
    }))
    .unwrap();
    let activations: Api<UserActivation> = ns.api();
    activations.create(&PostParams::default(), &ua).await.unwrap();
    let url = wait_for_value("status.connectUrl", T, || async {
        let ua = activations.get("acme").await.map_err(|e| e.to_string())?;
        ua.status.as_ref().and_then(|s| s.connect_url.clone()).ok_or_else(|| format!("{:?}", ua.status))
    })
    .await;

    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(15)).build().unwrap();
    let resp = http.get(&url).send().await.unwrap();
    assert!(resp.status().is_redirection(), "GET the connect link: {}", resp.status());
    let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).expect("a Location header").to_string();
    let to = url::Url::parse(&location).unwrap();
    assert_eq!(
        format!("{}://{}{}", to.scheme(), to.host_str().unwrap(), to.path()),
        "https://github.com/login/oauth/authorize",
        "{location}"
    );
    let q: HashMap<String, String> = to.query_pairs().into_owned().collect();
    assert_eq!(q.get("scope").map(String::as_str), Some("repo read:user"), "the catalogue's scopes, space-separated: {location}");
    assert_eq!(q.get("client_id").map(String::as_str), Some("Iv1.abc123"));
    assert_eq!(q.get("response_type").map(String::as_str), Some("code"));
    assert_eq!(q.get("redirect_uri").cloned(), Some(format!("{}/oauth/callback", op.connect_base_url)));
    assert_eq!(q.get("code_challenge_method").map(String::as_str), Some("S256"), "GitHub takes PKCE: {location}");
    assert!(q.get("state").is_some_and(|s| !s.is_empty()));

    // A per-tenant provider whose address Latchkey can find (Shopify: the connect page asks for the shop) needs
    // nothing more; one whose address it cannot find (Mailchimp's data centre) is accepted but says what to set.
    let obj = connector(
        "shop",
        json!({"provider": "shopify", "authMethods": [{"name": "oauth", "oauth2": {"clientSecretRef": {"name": "github-app"}}}]}),
    );
    apply(&connectors, "shop", &obj).await.unwrap();
    let (status, _, message) = ready(&connectors, "shop").await;
    assert_eq!(status, "True", "{message}");
    let obj = connector(
        "chimp",
        json!({"provider": "mailchimp", "authMethods": [{"name": "oauth", "oauth2": {"clientSecretRef": {"name": "github-app"}}}]}),
    );
    apply(&connectors, "chimp", &obj).await.unwrap();
    let (status, reason, message) = ready(&connectors, "chimp").await;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "IncompleteConnector"), "{message}");
    assert!(message.contains("baseUrl") && message.contains("dc"), "{message}");

    // An API-key provider needs no more than its name.
    apply(&connectors, "stripe", &connector("stripe", json!({"provider": "stripe"}))).await.unwrap();
    let (status, _, message) = ready(&connectors, "stripe").await;
    assert_eq!(status, "True", "{message}");
    let mut op = op;
    op.stop();
}

#[tokio::test]
async fn a_misspelt_provider_is_refused_at_apply_with_the_nearest_names() {
    let bed = support::bed().await;
    let ns = support::namespace(&bed, "providers-typo").await;
    let connectors: Api<Connector> = ns.api();
    let obj = connector(
        "github",
        json!({"provider": "githbu", "authMethods": [{"name": "oauth", "oauth2": {"clientSecretRef": {"name": "github-app"}}}]}),
    );
    let err = apply(&connectors, "github", &obj).await.expect_err("githbu is not a provider");
    let msg = err.to_string();
    assert!(
        msg.contains("unknown provider \"githbu\"") && msg.contains("did you mean github, gitlab?") && msg.contains("latchkey providers"),
        "{msg}"
    );

    // Without a provider the fields it would fill stay required, with their messages.
    let err = apply(&connectors, "bare", &connector("bare", json!({"authMethods": [{"name": "k", "apiKey": {}}]})))
        .await
        .expect_err("no baseUrl");
    let msg = err.to_string();
    assert!(
        msg.contains("baseUrl is required (or set provider)") && msg.contains("an apiKey method needs in and name (or set provider)"),
        "{msg}"
    );
    let err = apply(&connectors, "bare", &connector("bare", json!({"baseUrl": "https://x.example", "authMethods": [{"name": "o", "oauth2": {"flow": "AuthorizationCode", "tokenUrl": "https://x.example/token"}}]})))
        .await
        .expect_err("no OAuth app");
    assert!(
        err.to_string().contains("the AuthorizationCode flow needs authorizationUrl and clientSecretRef (the organisation's OAuth app)"),
        "{err}"
    );
    // A provider does not excuse the OAuth app.
    let err = apply(&connectors, "gh", &connector("gh", json!({"provider": "github", "authMethods": [{"name": "o", "oauth2": {}}]})))
        .await
        .expect_err("no OAuth app");
    assert!(err.to_string().contains("needs authorizationUrl and clientSecretRef"), "{err}");
}
