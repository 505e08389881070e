//! The connect page in a real browser: Debian's headless Chromium, driven by `tests/browser/connect.mjs`
//! (playwright-core), from `status.connectUrl` to an Active activation: the API-key form (a wrong key first, then
//! a good one), the same form sending the user back to the application, and OAuth2 through the real OAuth
//! server's login form and the operator's callback. Every page is saved as a PNG under `target/screenshots/`.
//! Needs `/usr/bin/chromium` and `tests/browser/node_modules` (`scripts/browser-deps.sh` installs both).
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
use serde_json::{Value, json};
use support::fixtures::{decoded, fixture_with, provider, wait_condition};
use support::oauth_server::{Consent, OAuthClient, OAuthServer, OAuthServerConfig, TEST_PASSWORD};
use support::operator::Operator;
use support::{TestNamespace, bed, wait_for_value};

/// The application the user returns to: a local page that records what it was told (the browser reaches only
/// loopback). Returns its base URL and the paths and queries it was opened with.
async fn application() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let s = s.clone();
        async move {
            if uri.path() != "/favicon.ico" {
                s.lock().unwrap().push(uri.to_string());
            }
            let status = uri.query().unwrap_or_default().to_string();
            axum::response::Html(format!(r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Example App</title></head><body style="font:16px system-ui;padding:40px"><h1>Back in Example App</h1><p role="status">{status}</p></body></html>"#))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// The organisation's logo, served from its own origin (the page's CSP must allow exactly that origin).
async fn logo_server() -> String {
    const SVG: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" width="168" height="40" viewBox="0 0 168 40"><rect x="0" y="4" width="32" height="32" rx="8" fill="#0f766e"/><path d="M9 20h14M16 13v14" stroke="#fff" stroke-width="4" stroke-linecap="round"/><text x="42" y="27" font-family="Helvetica,Arial,sans-serif" font-size="19" font-weight="700" fill="#134e4a">Globex Cloud</text></svg>"##;
    let app = axum::Router::new()
        .route("/logo.svg", axum::routing::get(|| async { ([(axum::http::header::CONTENT_TYPE, "image/svg+xml")], SVG) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/logo.svg", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Fails, never skips, when the browser or the driver's modules are missing, saying how to install them.
fn require_browser() {
    let c = chromium();
    assert!(
        c.exists(),
        "{} is missing: the browser test needs Debian's chromium. Install it with `scripts/browser-deps.sh` (as root: apt-get update && apt-get install -y chromium, ~30-90 s)",
        c.display()
    );
    assert!(
        repo().join("tests/browser/node_modules/playwright-core/package.json").exists(),
        "tests/browser's npm modules are missing: run `scripts/browser-deps.sh` (or `npm ci --prefix tests/browser`)"
    );
}

/// A clean `target/screenshots/<name>`.
fn screenshots(name: &str) -> PathBuf {
    let dir = repo().join("target/screenshots").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("target/screenshots");
    dir
}

/// Runs the browser script and returns its JSON report; panics with the report when it failed.
async fn browse(scenario: &str, url: &str, out: &Path, extra: &[&str]) -> Value {
    require_browser();
    let mut cmd = Command::new("node");
    cmd.arg(repo().join("tests/browser/connect.mjs"))
        .args(["--scenario", scenario, "--url", url, "--out"])
        .arg(out)
        .args(extra)
        .env("CHROMIUM", chromium());
    let started = Instant::now();
    // Blocking wait on another thread: the test's runtime keeps serving the fake provider meanwhile.
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run `node` for the browser test: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("the browser script printed no report (exit {:?}): {stdout}\n{stderr}", output.status.code()));
    eprintln!("browser {scenario}: {:.1} s, {report}", started.elapsed().as_secs_f64());
    assert!(output.status.success() && report["ok"] == true, "the browser run failed: {report}\n{stderr}");
    assert_eq!(report["consoleErrors"], json!([]), "the pages logged errors (a CSP violation?)");
    report
}

fn page<'a>(report: &'a Value, step: &str) -> &'a Value {
    report["pages"].as_array().unwrap().iter().find(|p| p["step"] == step).unwrap_or_else(|| panic!("no {step} page in {report}"))
}

async fn connect_url(api: &Api<UserActivation>, name: &str) -> String {
    wait_for_value("status.connectUrl", Duration::from_secs(30), || async {
        api.get(name).await.map_err(|e| e.to_string())?.status.and_then(|s| s.connect_url).ok_or_else(|| "no link yet".to_string())
    })
    .await
}

async fn activation(ns: &TestNamespace, name: &str, connection: (&str, &str), user: &str, return_url: Option<&str>) {
    let mut spec = json!({"connectionRef": {"name": connection.0, "namespace": connection.1}, "user": {"id": name, "displayName": user}});
    if let Some(u) = return_url {
        spec["returnUrl"] = json!(u);
    }
    let ua: UserActivation = serde_json::from_value(
        json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap();
    ns.api::<UserActivation>().create(&PostParams::default(), &ua).await.unwrap();
}

async fn active(api: &Api<UserActivation>, name: &str) {
    let (reason, _) = wait_condition(api, name, "Ready", "True").await;
    let phase = api.get(name).await.unwrap().status.and_then(|s| s.phase).map(|p| format!("{p:?}"));
    assert_eq!(phase.as_deref(), Some("Active"), "Ready=True ({reason})");
}

#[tokio::test]
async fn a_user_pastes_an_api_key_in_a_real_browser() {
    require_browser();
    let p = provider().await; // accepts `Bearer good-*`
    let (app, app_seen) = application().await;
    let f = fixture_with("browser-key", &p.url, Value::Null, json!({"allowedReturnUrls": [app.as_str()]})).await;
    let tenant = f.tenant("browser-key-tenant", true).await;
    let op = Operator::start(&bed().await, "connect-browser-key", &[f.ns(), tenant.name()], &[]).await;
    let uas = tenant.api::<UserActivation>();
    let secrets = tenant.api::<Secret>();

    // No return URL: a wrong key shows the error, the good one the done page.
    activation(&tenant, "globex", ("acme-sync", f.ns()), "Globex Corporation", None).await;
    let link = connect_url(&uas, "globex").await;
    let key = "good-browser-key-4f1c9e";
    let out = screenshots("api-key");
    let report = browse("api-key", &link, &out, &["--key", key, "--wrong-key", "wrong-key-123"]).await;
    let form = page(&report, "form");
    assert_eq!(
        (form["httpStatus"].as_u64(), form["title"].as_str(), form["heading"].as_str()),
        (Some(200), Some("Connect Acme API"), Some("Acme API")),
        "{form}"
    );
    assert_eq!(form["focused"], "api_key", "the key field has the focus");
    let error = page(&report, "error");
    assert_eq!(error["httpStatus"], 422, "{error}");
    assert!(error["alert"].as_str().unwrap_or_default().contains("did not accept this API key"), "{error}");
    assert_eq!(error["invalid"], json!(["api_key"]), "the field is marked invalid: {error}");
    let done = page(&report, "done");
    assert_eq!(done["httpStatus"], 200, "{done}");
    assert_eq!(done["status"], "Connected", "{done}");
    assert_eq!(report["finalUrl"], link.as_str(), "the done page is served at the link");
    let reopened = page(&report, "reopened");
    assert_eq!(
        (reopened["httpStatus"].as_u64(), reopened["status"].as_str()),
        (Some(410), Some("This link was already used")),
        "{reopened}"
    );
    for p in report["pages"].as_array().unwrap() {
        assert!(Path::new(p["screenshot"].as_str().unwrap()).exists(), "{p}");
    }
    active(&uas, "globex").await;
    let secret = secrets.get("globex-acme-sync-credentials").await.unwrap();
    assert_eq!(decoded(&secret, "api_key").as_deref(), Some(key));

    // With a return URL: the form posts, the connect server answers 303 to the application (allowed by the
    // page's CSP form-action), and the browser lands there with status=success.
    activation(&tenant, "initech", ("acme-sync", f.ns()), "Initech", Some(&format!("{app}integrations/acme"))).await;
    let link = connect_url(&uas, "initech").await;
    let key2 = "good-browser-key-77aa01";
    let report = browse("api-key", &link, &screenshots("api-key-return"), &["--key", key2]).await;
    assert_eq!(report["finalUrl"], format!("{app}integrations/acme?status=success"), "{report}");
    assert_eq!(page(&report, "done")["status"], "status=success");
    assert_eq!(*app_seen.lock().unwrap(), ["/integrations/acme?status=success"], "the application was opened once");
    active(&uas, "initech").await;
    assert_eq!(decoded(&secrets.get("initech-acme-sync-credentials").await.unwrap(), "api_key").as_deref(), Some(key2));
    op.assert_no_leaks("globex", &[key, key2]);
}

#[tokio::test]
async fn a_branded_connect_page_behind_a_path_prefix_in_a_real_browser() {
    require_browser();
    let p = provider().await; // accepts `Bearer good-*`
    let (app, app_seen) = application().await;
    let logo = logo_server().await;
    // The operator's brand from its flags (the chart's values); the connection overrides the primary colour.
    let f = fixture_with(
        "browser-brand",
        &p.url,
        Value::Null,
        json!({"allowedReturnUrls": [app.as_str()], "branding": {"primaryColor": "#7c3aed"}}),
    )
    .await;
    let tenant = f.tenant("browser-brand-tenant", true).await;
    let brand = [
        "--brand-name=Globex Cloud".to_string(),
        format!("--brand-logo-url={logo}"),
        "--brand-primary-color=#0f766e".into(),
        "--brand-background-color=#eef4f3".into(),
        "--brand-support-url=mailto:integrations@globex.example".into(),
    ];
    let brand: Vec<&str> = brand.iter().map(String::as_str).collect();
    let op =
        Operator::start_behind_path(&bed().await, "connect-browser-brand", &[f.ns(), tenant.name()], "/integrations/connect", &brand).await;
    let uas = tenant.api::<UserActivation>();

    activation(&tenant, "hooli", ("acme-sync", f.ns()), "Hooli", Some(&format!("{app}done"))).await;
    let link = connect_url(&uas, "hooli").await;
    assert!(link.starts_with(&format!("{}/connect/", op.connect_base_url)), "the link carries the prefix: {link}");
    assert!(op.connect_base_url.ends_with("/integrations/connect"));
    let key = "good-branded-key-5e21";
    let report = browse("api-key", &link, &screenshots("branded"), &["--key", key, "--wrong-key", "wrong-key-456"]).await;
    let form = page(&report, "form");
    assert_eq!(form["title"], "Connect Acme API · Globex Cloud", "{form}");
    assert_eq!(form["images"], json!([{"src": logo, "alt": "Globex Cloud", "loaded": true}]), "the logo loaded under the page's CSP");
    assert_eq!(form["buttonColor"], "rgb(124, 58, 237)", "the connection's colour wins over the operator's");
    assert_eq!(form["help"], "mailto:integrations@globex.example");
    assert_eq!(form["formAction"], link.as_str(), "the form posts back under the prefix");
    let error = page(&report, "error");
    assert_eq!(error["httpStatus"], 422, "the form's POST reached the handler under the prefix: {error}");
    assert_eq!(error["buttonColor"], "rgb(124, 58, 237)");
    assert_eq!(report["finalUrl"], format!("{app}done?status=success"), "{report}");
    assert_eq!(*app_seen.lock().unwrap(), ["/done?status=success"]);
    let reopened = page(&report, "reopened");
    assert_eq!(reopened["httpStatus"], 410, "{reopened}");
    assert_eq!(reopened["images"][0]["loaded"], true, "error pages carry the operator's brand: {reopened}");
    active(&uas, "hooli").await;
    op.assert_no_leaks("hooli", &[key]);
}

#[tokio::test]
async fn a_user_signs_in_at_the_provider_in_a_real_browser() {
    require_browser();
    let bed = bed().await;
    let ns = support::namespace(&bed, "browser-oauth").await;
    let op = Operator::start(&bed, "connect-browser-oauth", &[ns.name()], &[]).await;
    let callback = format!("{}/oauth/callback", op.connect_base_url);
    let server = OAuthServer::start(
        OAuthServerConfig::default().consent(Consent::Form).client(OAuthClient::confidential("app", "app-secret").redirect_uri(&callback)),
    );
    let app: Secret = serde_json::from_value(
        json!({"metadata": {"name": "oauth-app"}, "stringData": {"client_id": "app", "client_secret": "app-secret"}}),
    )
    .unwrap();
    ns.api::<Secret>().create(&PostParams::default(), &app).await.unwrap();
    let connector: Connector = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": "idp"},
        "spec": {"displayName": "Northwind Drive", "baseUrl": server.issuer(), "authMethods": [{"name": "oauth", "oauth2": {
            "flow": "AuthorizationCode", "authorizationUrl": server.authorize_url(), "tokenUrl": server.token_url(),
            "scopes": ["read", "write"], "clientSecretRef": {"name": "oauth-app"}}}]}
    }))
    .unwrap();
    ns.api::<Connector>().create(&PostParams::default(), &connector).await.unwrap();
    let ec: EmbeddedConnection = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "drive"},
        "spec": {"connectorRef": {"name": "idp"}, "authMethod": "oauth"}
    }))
    .unwrap();
    ns.api::<EmbeddedConnection>().create(&PostParams::default(), &ec).await.unwrap();
    activation(&ns, "acme", ("drive", ns.name()), "Acme Corp", None).await;
    let uas = ns.api::<UserActivation>();
    let link = connect_url(&uas, "acme").await;

    let report = browse("oauth", &link, &screenshots("oauth"), &["--username", "alice", "--password", TEST_PASSWORD]).await;
    let login = page(&report, "provider-login");
    assert!(login["url"].as_str().unwrap().starts_with(server.issuer()), "the link led to the provider: {login}");
    let done = page(&report, "done");
    assert!(done["url"].as_str().unwrap().starts_with(&callback), "back at the operator's callback: {done}");
    assert_eq!(
        (done["httpStatus"].as_u64(), done["status"].as_str(), done["heading"].as_str()),
        (Some(200), Some("Connected"), Some("Northwind Drive")),
        "{done}"
    );

    active(&uas, "acme").await;
    let secret = ns.api::<Secret>().get("acme-drive-credentials").await.unwrap();
    let access = decoded(&secret, "access_token").expect("an access token");
    assert!(decoded(&secret, "refresh_token").is_some(), "a refresh token");
    let me = reqwest::Client::new().get(server.resource_url()).bearer_auth(&access).send().await.unwrap();
    assert_eq!(me.status(), 200, "the stored token works at the provider");
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["sub"], "alice", "the token is for the user who signed in");
    op.assert_no_leaks("acme", &[&access]);
}
