//! The connect server's own defences, on a loopback port (no control plane needed: its stores are never fed, so a
//! link that passes every check in front of them is answered 503 "not ready"): the security headers on every
//! answer, nothing served outside its own paths (also behind a path prefix), and the per-activation rate limit
//! with `Retry-After`, which forged links cannot fill.
use std::sync::Arc;

use chrono::Utc;
use latchkey::connect::limit::RateLimit;
use latchkey::connect::lookup::Lookup;
use latchkey::connect::token::{Claims, Keyring};
use latchkey::connect::{ConnectConfig, routes};
use reqwest::StatusCode;

fn keyring() -> Keyring {
    Keyring::new(vec![vec![9u8; 32]])
}

fn claims(uid: &str) -> Claims {
    Claims { namespace: "tenant".into(), name: uid.into(), uid: uid.into(), nonce: "n".into(), exp: Utc::now().timestamp() + 600 }
}

/// The connect router on a loopback port; returns its base URL (with the prefix).
async fn serve(prefix: &str, limit: RateLimit) -> String {
    let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
    let lookup = Lookup::new(client, latchkey::controller::Stores::unfed(), Default::default());
    let config = Arc::new(ConnectConfig::new("http://127.0.0.1", keyring()));
    let state = routes::ConnectState::new(lookup, reqwest::Client::new(), config).with_rate_limit(limit).with_prefix(prefix);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}{prefix}", listener.local_addr().unwrap());
    tokio::spawn(routes::serve(listener, state, std::future::pending()));
    base
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn link(base: &str, uid: &str) -> String {
    format!("{base}/connect/{}", keyring().sign(&claims(uid)).unwrap())
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let base = serve("", RateLimit { per_minute: 60, burst: 1 }).await;
    let h = http();
    let valid = link(&base, "u-headers");
    let answers = [
        (h.get(&valid), StatusCode::SERVICE_UNAVAILABLE),
        (h.get(&valid), StatusCode::TOO_MANY_REQUESTS),
        (h.get(format!("{base}/connect/forged.token")), StatusCode::BAD_REQUEST),
        (h.get(format!("{base}/oauth/callback?state=s1.AAAA&code=x")), StatusCode::BAD_REQUEST),
        (h.get(format!("{base}/admin")), StatusCode::NOT_FOUND),
        (h.post(format!("{base}/connect/x")).form(&[("api_key", "k")]), StatusCode::BAD_REQUEST),
    ];
    for (req, want) in answers {
        let res = req.send().await.unwrap();
        let url = res.url().to_string();
        assert_eq!(res.status(), want, "{url}");
        let header = |n: &str| res.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let csp = header("content-security-policy");
        assert!(
            csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'") && csp.contains("base-uri 'none'"),
            "{url}: {csp}"
        );
        assert_eq!(header("x-frame-options"), "DENY", "{url}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{url}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{url}");
        assert_eq!(header("cache-control"), "no-store", "{url}");
        assert!(header("content-type").starts_with("text/html"), "{url}: a page a person can read");
        let body = res.text().await.unwrap();
        assert!(body.contains("<h1>") && !body.contains("forged.token"), "{url}: {body}");
    }
}

#[tokio::test]
async fn only_its_own_paths_are_served() {
    let base = serve("", RateLimit::default()).await;
    let h = http();
    for path in
        ["/", "/metrics", "/healthz", "/connect", "/connect/", "/oauth", "/oauth/callback/x", "/connect/a/b", "/.env", "/static/x.js"]
    {
        let res = h.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
    }
    for (method, path) in [("PUT", "/connect/x"), ("DELETE", "/connect/x"), ("POST", "/oauth/callback")] {
        let res = h.request(method.parse().unwrap(), format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
    }
}

#[tokio::test]
async fn behind_a_path_prefix_only_the_prefixed_paths_are_served() {
    let base = serve("/latchkey", RateLimit::default()).await;
    let root = base.trim_end_matches("/latchkey").to_string();
    let h = http();
    // The prefixed link reaches the handler (past its checks: 503, the stores are not fed); the bare one does not.
    assert_eq!(h.get(link(&base, "u-prefix")).send().await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.get(link(&root, "u-prefix")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(h.get(format!("{base}/oauth/callback?state=s1.AAAA")).send().await.unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(h.get(format!("{root}/oauth/callback?state=s1.AAAA")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    for path in ["/latchkey", "/latchkey/", "/latchkey/x", "/latchkeyx/connect/a", "/other/connect/a"] {
        assert_eq!(h.get(format!("{root}{path}")).send().await.unwrap().status(), StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn each_activation_is_rate_limited_on_its_own() {
    let base = serve("", RateLimit { per_minute: 60, burst: 5 }).await;
    let h = http();
    let (a, b) = (link(&base, "u-a"), link(&base, "u-b"));
    // Forged links name no activation: a flood of them uses up nobody's share.
    for i in 0..200 {
        let forged = format!("{}x{i}", &a[..a.len() - 4]);
        assert_eq!(h.get(&forged).send().await.unwrap().status(), StatusCode::BAD_REQUEST);
    }
    for _ in 0..5 {
        assert_eq!(h.get(&a).send().await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let limited = h.get(&a).send().await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry, 1, "at one request a second the next comes after 1 s");
    assert!(limited.text().await.unwrap().contains("Too many attempts"));
    // The form's POST and the OAuth callback of the same activation share its bucket.
    assert_eq!(h.post(&a).form(&[("api_key", "k")]).send().await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    let state = keyring().seal_state(&claims("u-a"), None).unwrap();
    let mut url = url::Url::parse(&format!("{base}/oauth/callback")).unwrap();
    url.query_pairs_mut().append_pair("state", &state).append_pair("code", "c");
    let callback = h.get(url).send().await.unwrap();
    assert_eq!(callback.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another activation is not affected.
    assert_eq!(h.get(&b).send().await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    // After the advertised wait, one more request goes through.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(h.get(&a).send().await.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.get(&a).send().await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
}
