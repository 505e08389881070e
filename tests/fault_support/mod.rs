//! Helpers of the fault, bad-input and isolation suites (`mod support; mod fault_support;` in each file):
//! an API-key connection on a fake provider, activations, a leak scan with a positive control, and the figures
//! each test leaves in `target/faults/parts/<test>.json` for `make faults` (scripts/faults.sh) to add up.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
use serde_json::{Value, json};

use crate::support::oauth_server::{Login, OAuthServer, authorize_without_browser};

/// How many of a thing a test makes: `$NAME` when set (make faults sets the long figures), else `default`.
pub fn figure(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn faults_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/faults")
}

/// Leaves a test's figures for scripts/faults.sh: `target/faults/parts/<test>.json`.
pub fn record(test: &str, figures: Value) {
    let dir = faults_dir().join("parts");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{test}.json")), serde_json::to_string_pretty(&figures).unwrap_or_default());
}

/// Registers the secret values a test created and a marker that must appear in the logs, for the suite-wide
/// scan of scripts/faults.sh (`target/faults/secrets/<test>.json`: test values only).
pub fn register_secrets(test: &str, marker: &str, secrets: &[String]) {
    let dir = faults_dir().join("secrets");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{test}.json")), json!({"marker": marker, "secrets": secrets}).to_string());
}

#[allow(unused_imports)]
pub use crate::support::fixtures::{FakeProvider, TENANT_OF, busybox_job, condition, provider};

/// Connector `acme-api` and EmbeddedConnection `acme-sync` in `ns` (see [`crate::support::fixtures::api_key_connection`]),
/// with a busybox Job when `job`, and `https://app.example.com/` as allowed return URL.
pub async fn api_key_connection(client: &Client, ns: &str, provider_url: &str, job: bool) {
    let job = if job { busybox_job() } else { Value::Null };
    crate::support::fixtures::api_key_connection(client, ns, provider_url, job, json!({"allowedReturnUrls": ["https://app.example.com/"]}))
        .await;
}

/// Labels namespace `tenant` so that the connection in `integrations` admits it.
pub async fn admit(client: &Client, tenant: &str, integrations: &str) {
    let patch = json!({"metadata": {"labels": {TENANT_OF: integrations}}});
    Api::<Namespace>::all(client.clone()).patch(tenant, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

/// The application writes a tenant's API key into its own Secret (in any bed).
pub async fn put_source(client: &Client, ns: &str, name: &str, key: &str) {
    crate::support::fixtures::write_source(&Api::namespaced(client.clone(), ns), name, key).await;
}

/// An activation of `conn_ns/acme-sync` for `user`, with the API key in Secret `<name>-key`.
pub async fn activate(client: &Client, ns: &str, name: &str, user: &str, conn_ns: &str, key: &str) {
    put_source(client, ns, &format!("{name}-key"), key).await;
    let ua: UserActivation = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "connectionRef": {"name": "acme-sync", "namespace": conn_ns},
            "user": {"id": user},
            "credentialsSecretRef": {"name": format!("{name}-key")},
        }
    }))
    .unwrap();
    Api::<UserActivation>::namespaced(client.clone(), ns).create(&PostParams::default(), &ua).await.unwrap();
}

pub fn is_ready(ua: &UserActivation) -> bool {
    condition(ua, "Ready").is_some_and(|c| c.0 == "True")
}

/// Jobs per activation uid and run key in `ns`.
pub async fn jobs_by_run(client: &Client, ns: &str) -> BTreeMap<(String, String), usize> {
    let jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=latchkey"))
        .await
        .unwrap()
        .items;
    let mut out = BTreeMap::new();
    for j in jobs {
        let uid = j.labels().get("latchkey.dev/activation-uid").cloned().unwrap_or_default();
        let key = j.annotations().get("latchkey.dev/run-key").cloned().unwrap_or_default();
        *out.entry((uid, key)).or_insert(0) += 1;
    }
    out
}

/// Where secret values were found: one line per place (never the value).
#[derive(Debug, Default)]
pub struct Leaks {
    pub places: Vec<String>,
    /// What the positive controls saw, so an empty scan is not an empty capture.
    pub scanned: BTreeMap<&'static str, usize>,
}

/// Searches operator logs, Events, the Latchkey objects (status, conditions) and the Jobs (spec included) in
/// `namespaces` for every value in `secrets`. Positive control: each log must contain `marker`, and the scan must
/// see at least one activation; it panics when a control fails (a scan that saw nothing proves nothing).
pub async fn leak_scan(client: &Client, namespaces: &[&str], logs: &[&Path], marker: &str, secrets: &[String]) -> Leaks {
    let mut leaks = Leaks::default();
    let secrets: Vec<&String> = secrets.iter().filter(|s| s.len() >= 6).collect();
    let check = |place: String, text: &str, leaks: &mut Leaks| {
        for (i, s) in secrets.iter().enumerate() {
            if text.contains(s.as_str()) {
                leaks.places.push(format!("{place} (secret #{i})"));
            }
        }
    };
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(text.contains(marker), "leak scan positive control: {marker:?} not in {}", log.display());
        *leaks.scanned.entry("log lines").or_default() += text.lines().count();
        check(format!("log {}", log.display()), &text, &mut leaks);
        for line in text.lines().filter(|l| l.contains("panicked")) {
            leaks.places.push(format!("panic in {}: {}", log.display(), line.chars().take(200).collect::<String>()));
        }
    }
    for ns in namespaces {
        for e in Api::<Event>::namespaced(client.clone(), ns).list(&ListParams::default()).await.unwrap().items {
            *leaks.scanned.entry("events").or_default() += 1;
            check(format!("event {ns}/{}", e.name_any()), &serde_json::to_string(&e).unwrap(), &mut leaks);
        }
        for ua in Api::<UserActivation>::namespaced(client.clone(), ns).list(&ListParams::default()).await.unwrap().items {
            *leaks.scanned.entry("activations").or_default() += 1;
            check(format!("UserActivation {ns}/{}", ua.name_any()), &serde_json::to_string(&ua).unwrap(), &mut leaks);
        }
        for ec in Api::<EmbeddedConnection>::namespaced(client.clone(), ns).list(&ListParams::default()).await.unwrap().items {
            check(format!("EmbeddedConnection {ns}/{}", ec.name_any()), &serde_json::to_string(&ec).unwrap(), &mut leaks);
        }
        for c in Api::<Connector>::namespaced(client.clone(), ns).list(&ListParams::default()).await.unwrap().items {
            check(format!("Connector {ns}/{}", c.name_any()), &serde_json::to_string(&c).unwrap(), &mut leaks);
        }
        for j in Api::<Job>::namespaced(client.clone(), ns).list(&ListParams::default()).await.unwrap().items {
            *leaks.scanned.entry("jobs").or_default() += 1;
            check(format!("Job {ns}/{}", j.name_any()), &serde_json::to_string(&j).unwrap(), &mut leaks);
        }
    }
    assert!(leaks.scanned.get("activations").copied().unwrap_or(0) > 0, "leak scan positive control: no activation seen in {namespaces:?}");
    leaks
}

/// Waits (bounded) until `f` holds, polling every 250 ms; returns whether it did.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if f().await {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The most attempts a per-object backoff of 1 s doubling to 300 s (jitter only lengthens it: see
/// `backoff_for` in src/controller/mod.rs) allows in `window`, counting the first, plus `slack`.
pub fn backoff_bound(window: Duration, slack: usize) -> usize {
    let mut t = 0.0;
    let mut n = 1;
    loop {
        let next = 2f64.powi(n as i32 - 1).min(300.0);
        if t + next > window.as_secs_f64() {
            return n + slack;
        }
        t += next;
        n += 1;
    }
}

#[test]
fn the_backoff_bound_counts_doublings() {
    assert_eq!(backoff_bound(Duration::from_secs(0), 0), 1);
    assert_eq!(backoff_bound(Duration::from_secs(1), 0), 2);
    assert_eq!(backoff_bound(Duration::from_secs(60), 0), 6);
}

/// A TCP proxy on loopback in front of `upstream` (`host:port`) that counts the requests whose body carries
/// `needle` (e.g. `grant_type=refresh_token`), client to server. Counts what the operator sent, whether or not the
/// upstream ever answered (a suspended server records nothing).
pub struct CountingProxy {
    pub addr: String,
    pub count: Arc<AtomicUsize>,
}

pub async fn counting_proxy(upstream: String, needle: &'static [u8]) -> CountingProxy {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let (c, upstream) = (c.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else { return };
                let (mut ri, mut wi) = inbound.split();
                let (mut ro, mut wo) = outbound.split();
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut tail: Vec<u8> = Vec::new();
                    loop {
                        let n = match ri.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        tail.extend_from_slice(&buf[..n]);
                        let found = tail.windows(needle.len()).filter(|w| *w == needle).count();
                        c.fetch_add(found, Ordering::SeqCst);
                        let keep = tail.len().min(needle.len().saturating_sub(1));
                        // Keep a needle's length minus one, so a match split across reads is still seen once.
                        if found > 0 {
                            tail.clear();
                        } else {
                            tail.drain(..tail.len() - keep);
                        }
                        if wo.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = wo.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut ro, &mut wi).await;
                    let _ = wi.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    CountingProxy { addr, count }
}

/// Installs (server-side apply) the Latchkey CRDs from src/api and waits until they are served: a fresh or
/// private bed has none.
pub async fn ensure_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in latchkey::api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        if api.get_opt(&name).await.ok().flatten().is_some() {
            continue;
        }
        api.patch(&name, &PatchParams::apply("latchkey-tests").force(), &Patch::Apply(&crd)).await.unwrap();
    }
    let ok = eventually(Duration::from_secs(30), || async {
        Api::<UserActivation>::all(client.clone()).list(&ListParams::default().limit(1)).await.is_ok()
            && Api::<Connector>::all(client.clone()).list(&ListParams::default().limit(1)).await.is_ok()
            && Api::<EmbeddedConnection>::all(client.clone()).list(&ListParams::default().limit(1)).await.is_ok()
    })
    .await;
    assert!(ok, "the Latchkey CRDs are not served");
}

/// An HTTP client that does not follow redirects (a callback's 302 is the answer looked at).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(15)).build().unwrap()
}

/// Connector `idp` (token requests to `token_url`) and EmbeddedConnection `sync` in `ns`, with the organisation's
/// OAuth app (`app` / `app-secret`) in Secret `oauth-app`.
pub async fn oauth_connection(client: &Client, ns: &str, server: &OAuthServer, token_url: &str) {
    let app: Secret = serde_json::from_value(
        json!({"metadata": {"name": "oauth-app"}, "stringData": {"client_id": "app", "client_secret": "app-secret"}}),
    )
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &app).await.unwrap();
    let connector: Connector = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": "idp"},
        "spec": {"baseUrl": server.issuer(), "authMethods": [{"name": "oauth", "oauth2": {
            "flow": "AuthorizationCode", "authorizationUrl": server.authorize_url(), "tokenUrl": token_url,
            "scopes": ["read"], "clientSecretRef": {"name": "oauth-app"}}}]}
    }))
    .unwrap();
    Api::<Connector>::namespaced(client.clone(), ns).create(&PostParams::default(), &connector).await.unwrap();
    let ec: EmbeddedConnection = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "sync"},
        "spec": {"connectorRef": {"name": "idp"}, "authMethod": "oauth"}
    }))
    .unwrap();
    Api::<EmbeddedConnection>::namespaced(client.clone(), ns).create(&PostParams::default(), &ec).await.unwrap();
}

/// Creates an activation of `sync` and consents for its user; the callback goes to the replica that made the link.
pub async fn connect(client: &Client, ns: &str, name: &str) {
    let api: Api<UserActivation> = Api::namespaced(client.clone(), ns);
    let ua: UserActivation =
        serde_json::from_value(json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": name},
        "spec": {"connectionRef": {"name": "sync"}, "user": {"id": name}}}))
        .unwrap();
    api.create(&PostParams::default(), &ua).await.unwrap();
    let url = crate::support::wait_for_value("status.connectUrl", Duration::from_secs(40), || async {
        api.get(name).await.map_err(|e| e.to_string())?.status.and_then(|s| s.connect_url).ok_or_else(|| "no link yet".to_string())
    })
    .await;
    let base = &url[..url.find("/connect/").unwrap()];
    let callback = format!("{base}/oauth/callback");
    let redirect = authorize_without_browser(&url, &callback, &Login::default()).await.expect("consent");
    let res = http().get(redirect.url.to_string()).send().await.unwrap();
    assert!(res.status() == 302 || res.status() == 200, "callback for {name}: {}", res.status());
}

/// A private bed (its own control plane, for tests that stop parts of it), stopped also when the test fails.
pub struct PrivateBed(pub crate::support::Bed);

impl Drop for PrivateBed {
    fn drop(&mut self) {
        self.0.down();
    }
}

/// Restarts one component of `bed` with its own command line after `down` seconds of absence
/// (scripts/testenv/restart.sh; blocks until it is healthy again).
pub fn restart_component(bed: &crate::support::Bed, component: &str, down: u64) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/testenv/restart.sh");
    let out =
        std::process::Command::new("bash").arg(script).arg(&bed.dir).arg(component).arg(down.to_string()).output().expect("run restart.sh");
    assert!(out.status.success(), "restart.sh {component} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// How a [`TokenFront`] answers one case's token requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenMode {
    /// Forwarded to the real OAuth server.
    Pass,
    /// Forwarded to the real OAuth server at once (which rotates the refresh token then), its answer held back for
    /// this many milliseconds: the window between a provider's rotation and the operator's write.
    SlowAnswer(u64),
    /// Accepted and not answered while the case hangs; once the case is set to another mode, a held request is
    /// answered as that mode says (a stalled provider answers what it had read when it resumes).
    Hang,
    /// `200` with truncated JSON.
    Malformed,
    /// `200` JSON without `access_token`.
    Missing,
    /// `200` JSON whose `access_token` is a number.
    WrongType,
    /// `200` with an HTML maintenance page.
    Html,
    /// `200` JSON of 8 MiB.
    Huge,
    /// `307` to another host (127.0.0.2), which must never be asked.
    Redirect,
}

/// A token endpoint of our own in front of the real OAuth server's, for the answers a real server does not give on
/// demand: `POST {url}/{case}/token` is forwarded or misanswered by the case's [`TokenMode`] (default `Pass`).
/// Counts the requests per case and what reached the other host.
pub struct TokenFront {
    pub url: String,
    modes: Arc<std::sync::Mutex<BTreeMap<String, TokenMode>>>,
    requests: Arc<std::sync::Mutex<BTreeMap<String, usize>>>,
    pub elsewhere_hits: Arc<AtomicUsize>,
}

impl TokenFront {
    pub fn token_url(&self, case: &str) -> String {
        format!("{}/{case}/token", self.url)
    }
    pub fn set(&self, case: &str, mode: TokenMode) {
        self.modes.lock().unwrap().insert(case.to_string(), mode);
    }
    pub fn requests(&self, case: &str) -> usize {
        self.requests.lock().unwrap().get(case).copied().unwrap_or(0)
    }
}

pub async fn token_front(upstream_token_url: &str) -> TokenFront {
    use axum::body::Bytes;
    use axum::extract::Path as UrlPath;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    let elsewhere_hits = Arc::new(AtomicUsize::new(0));
    let hits = elsewhere_hits.clone();
    let elsewhere = axum::Router::new().fallback(move || {
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], r#"{"access_token":"stolen","token_type":"Bearer"}"#)
        }
    });
    let l2 = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let other = format!("http://{}/token", l2.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l2, elsewhere).await });

    let modes: Arc<std::sync::Mutex<BTreeMap<String, TokenMode>>> = Default::default();
    let requests: Arc<std::sync::Mutex<BTreeMap<String, usize>>> = Default::default();
    let (m, r, upstream) = (modes.clone(), requests.clone(), upstream_token_url.to_string());
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let json = |body: String| -> Response { (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response() };
    let app = axum::Router::new().route(
        "/{case}/token",
        axum::routing::post(move |UrlPath(case): UrlPath<String>, headers: HeaderMap, body: Bytes| {
            let (m, r, upstream, other, http) = (m.clone(), r.clone(), upstream.clone(), other.clone(), http.clone());
            async move {
                *r.lock().unwrap().entry(case.clone()).or_default() += 1;
                let mode_now = || m.lock().unwrap().get(&case).copied().unwrap_or(TokenMode::Pass);
                let (mut mode, held) = (mode_now(), std::time::Instant::now());
                while mode == TokenMode::Hang && held.elapsed() < Duration::from_secs(3600) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    mode = mode_now();
                }
                match mode {
                    TokenMode::Pass | TokenMode::SlowAnswer(_) => {
                        let mut req = http.post(&upstream).body(body);
                        for h in [header::CONTENT_TYPE, header::AUTHORIZATION, header::ACCEPT] {
                            if let Some(v) = headers.get(&h) {
                                req = req.header(h, v);
                            }
                        }
                        match req.send().await {
                            Ok(res) => {
                                let status = res.status();
                                let ct = res.headers().get(header::CONTENT_TYPE).cloned();
                                let body = res.bytes().await.unwrap_or_default();
                                if let TokenMode::SlowAnswer(ms) = mode {
                                    tokio::time::sleep(Duration::from_millis(ms)).await;
                                }
                                let mut out = (status, body).into_response();
                                if let Some(ct) = ct {
                                    out.headers_mut().insert(header::CONTENT_TYPE, ct);
                                }
                                out
                            }
                            Err(_) => StatusCode::BAD_GATEWAY.into_response(),
                        }
                    }
                    TokenMode::Hang => StatusCode::GATEWAY_TIMEOUT.into_response(),
                    TokenMode::Malformed => json(r#"{"access_token": "abc", "#.into()),
                    TokenMode::Missing => json(r#"{"token_type":"Bearer","expires_in":3600}"#.into()),
                    TokenMode::WrongType => json(r#"{"access_token":12345,"token_type":"Bearer"}"#.into()),
                    TokenMode::Html => (StatusCode::OK, [(header::CONTENT_TYPE, "text/html")], "<html>maintenance</html>").into_response(),
                    TokenMode::Huge => json(format!(r#"{{"access_token":"{}","token_type":"Bearer"}}"#, "h".repeat(8 << 20))),
                    TokenMode::Redirect => (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, other)]).into_response(),
                }
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    TokenFront { url, modes, requests, elsewhere_hits }
}
