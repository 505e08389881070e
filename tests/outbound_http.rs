//! Outbound HTTP the way enterprises need it: a provider behind a private CA (the operator's `--ca-bundle`) and
//! provider calls through the organisation's HTTPS proxy (`HTTPS_PROXY`, `NO_PROXY`), on the real control plane
//! with the operator binary.
mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use kube::api::PostParams;
use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
use serde_json::json;
use support::fixtures::*;
use support::operator::Operator;
use support::{bed, namespace};

/// A private CA and a server certificate for 127.0.0.1 and localhost signed by it, made with openssl in `dir`.
fn private_ca(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Test Private CA",
    ]);
    run(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

/// An HTTPS API on 127.0.0.1 with the private CA's certificate: `/me` answers 200 to `Bearer good-*`, and counts
/// the requests that completed a TLS handshake.
async fn https_api(dir: &Path) -> (String, Arc<AtomicUsize>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("server.pem")).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let mut tls = tls;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                let ok = head.lines().any(|l| l.starts_with("authorization: bearer good-"));
                let status = if ok { "200 OK" } else { "401 Unauthorized" };
                let _ = tls.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (url, served)
}

async fn connection(ns: &support::TestNamespace, base_url: &str) {
    named_connection(ns, "acme", base_url).await
}

/// A connector at `base_url` verified with `GET /me`, its connection and an activation `name` with a good key.
async fn named_connection(ns: &support::TestNamespace, name: &str, base_url: &str) {
    let connector: Connector = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": name},
        "spec": {"baseUrl": base_url, "authMethods": [{"name": "token", "apiKey": {"in": "Header", "name": "Authorization", "prefix": "Bearer "}}],
                 "verification": {"path": "/me"}}
    }))
    .unwrap();
    ns.api::<Connector>().create(&PostParams::default(), &connector).await.unwrap();
    let ec: EmbeddedConnection = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": name},
        "spec": {"connectorRef": {"name": name}, "authMethod": "token"}
    }))
    .unwrap();
    ns.api::<EmbeddedConnection>().create(&PostParams::default(), &ec).await.unwrap();
    let key = format!("{name}-key");
    put_source(ns, &key, "good-private-key-1").await;
    let ua: UserActivation = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": name},
        "spec": {"connectionRef": {"name": name}, "user": {"id": name}, "credentialsSecretRef": {"name": key}}
    }))
    .unwrap();
    ns.api::<UserActivation>().create(&PostParams::default(), &ua).await.unwrap();
}

#[tokio::test]
async fn a_provider_behind_a_private_ca_verifies_with_the_ca_bundle_and_fails_clearly_without_it() {
    let dir = tempfile::tempdir().unwrap();
    private_ca(dir.path());
    let (url, served) = https_api(dir.path()).await;
    let bed = bed().await;

    // Without the bundle: the handshake fails, and the condition says it is the certificate.
    let without = namespace(&bed, "no-ca").await;
    let op = Operator::start(&bed, "no_ca_bundle", &[without.name()], &[]).await;
    connection(&without, &url).await;
    let (reason, message) = wait_condition(&without.api::<UserActivation>(), "acme", "CredentialsValid", "Unknown").await;
    assert_eq!(reason, "VerificationUnavailable", "{message}");
    assert!(message.to_lowercase().contains("certificate"), "the message names the certificate problem: {message}");
    assert_eq!(served.load(Ordering::SeqCst), 0, "no request got through");
    drop(op);

    // With the organisation's CA bundle: verified.
    let with = namespace(&bed, "with-ca").await;
    let ca = dir.path().join("ca.pem");
    let _op = Operator::start(&bed, "with_ca_bundle", &[with.name()], &[&format!("--ca-bundle={}", ca.display())]).await;
    connection(&with, &url).await;
    let (reason, _) = wait_condition(&with.api::<UserActivation>(), "acme", "Ready", "True").await;
    assert_eq!(reason, "Active");
    let ua = with.api::<UserActivation>().get("acme").await.unwrap();
    assert_eq!(condition(&ua, "CredentialsValid").map(|c| c.1).as_deref(), Some("Verified"));
    assert!(served.load(Ordering::SeqCst) >= 1);
}

/// The organisation's HTTPS proxy: answers CONNECT with a tunnel when the request carries `Proxy-Authorization`
/// for `user:password`, 407 without it, and 403 for hosts ending in `.blocked.test`. Records every CONNECT
/// target (`host:port`), so a test can see which provider calls went through it.
async fn connect_proxy(bind: &str, user: &str, password: &str) -> (String, Arc<Mutex<Vec<String>>>) {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(format!("{bind}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let expected = format!("basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))).to_ascii_lowercase();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { return };
            let (record, expected) = (record.clone(), expected.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
                    match client.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let mut words = head.split_whitespace();
                let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
                    let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n").await;
                    return;
                };
                record.lock().unwrap().push(target.to_string());
                let authorized = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .any(|(k, v)| k.eq_ignore_ascii_case("proxy-authorization") && v.trim().to_ascii_lowercase() == expected);
                let refusal = match () {
                    _ if !authorized => Some("407 Proxy Authentication Required\r\nproxy-authenticate: Basic realm=\"corp\""),
                    _ if target.split(':').next().is_some_and(|h| h.ends_with(".blocked.test")) => Some("403 Forbidden"),
                    _ => None,
                };
                if let Some(status) = refusal {
                    let _ = client.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes()).await;
                    return;
                }
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await;
                    return;
                };
                if client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn provider_calls_go_through_the_https_proxy_except_for_no_proxy_hosts() {
    let dir = tempfile::tempdir().unwrap();
    private_ca(dir.path());
    let (url, served) = https_api(dir.path()).await;
    let port = url.rsplit(':').next().unwrap().to_string();
    // The proxy listens on another loopback address than the apiserver and the providers, so that NO_PROXY can
    // name those without naming the proxy.
    let password = "proxy-pass-7f3c9";
    let (proxy, seen) = connect_proxy("127.0.0.2", "ops", password).await;
    let bed = bed().await;
    let ns = namespace(&bed, "proxy").await;
    let ca = format!("--ca-bundle={}", dir.path().join("ca.pem").display());
    let proxy_url = format!("http://ops:{password}@{proxy}");
    // Upper-case HTTPS_PROXY and lower-case no_proxy: both spellings are read.
    let op = Operator::start_with_env(&bed, "https_proxy", &[ns.name()], &[&ca], &[("HTTPS_PROXY", &proxy_url), ("no_proxy", "127.0.0.1")])
        .await;

    // A provider the proxy reaches (`localhost` is not in NO_PROXY), one NO_PROXY exempts (127.0.0.1), and one
    // the proxy refuses.
    named_connection(&ns, "via-proxy", &format!("https://localhost:{port}")).await;
    named_connection(&ns, "direct", &url).await;
    named_connection(&ns, "refused", "https://api.blocked.test").await;
    let uas = ns.api::<UserActivation>();

    let (reason, _) = wait_condition(&uas, "via-proxy", "Ready", "True").await;
    assert_eq!(reason, "Active");
    let ua = uas.get("via-proxy").await.unwrap();
    assert_eq!(condition(&ua, "CredentialsValid").map(|c| c.1).as_deref(), Some("Verified"));
    let (reason, _) = wait_condition(&uas, "direct", "Ready", "True").await;
    assert_eq!(reason, "Active");
    let (reason, message) = wait_condition(&uas, "refused", "CredentialsValid", "Unknown").await;
    assert_eq!(reason, "VerificationUnavailable", "{message}");
    assert!(message.contains("the HTTPS proxy refused to connect to the provider"), "the message says the proxy refused: {message}");

    let targets = seen.lock().unwrap().clone();
    assert!(targets.contains(&format!("localhost:{port}")), "the verification of via-proxy went through the proxy: {targets:?}");
    assert!(targets.contains(&"api.blocked.test:443".to_string()), "{targets:?}");
    assert!(!targets.contains(&format!("127.0.0.1:{port}")), "NO_PROXY exempts 127.0.0.1: {targets:?}");
    let apiserver = bed.apiserver_url.trim_start_matches("https://").to_string();
    assert!(!targets.contains(&apiserver), "NO_PROXY exempts the apiserver too: {targets:?}");
    assert!(served.load(Ordering::SeqCst) >= 2);

    // The proxy's password is in no status and no log line.
    for ua in uas.list(&Default::default()).await.unwrap() {
        let status = serde_json::to_string(&ua.status).unwrap();
        assert!(!status.contains(password), "the proxy password leaked into a status");
    }
    op.assert_no_leaks("via-proxy", &[password]);
    drop(op);

    // Wrong proxy credentials: the condition says the proxy wants them, and the wrong password shows nowhere.
    let wrong = namespace(&bed, "proxy-auth").await;
    let bad_password = "not-the-pass-51d2";
    let bad_url = format!("http://ops:{bad_password}@{proxy}");
    let op =
        Operator::start_with_env(&bed, "https_proxy_407", &[wrong.name()], &[&ca], &[("https_proxy", &bad_url), ("NO_PROXY", "127.0.0.1")])
            .await;
    named_connection(&wrong, "via-proxy", &format!("https://localhost:{port}")).await;
    let (reason, message) = wait_condition(&wrong.api::<UserActivation>(), "via-proxy", "CredentialsValid", "Unknown").await;
    assert_eq!(reason, "VerificationUnavailable", "{message}");
    assert!(message.contains("the HTTPS proxy asks for credentials"), "{message}");
    assert!(!message.contains(bad_password));
    op.assert_no_leaks("via-proxy", &[bad_password]);
}

/// Creates the object `v` of kind `K` in `ns`.
async fn create<K>(ns: &support::TestNamespace, v: serde_json::Value)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + serde::de::DeserializeOwned
        + serde::Serialize
        + Clone
        + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    let obj: K = serde_json::from_value(v).unwrap();
    ns.api::<K>().create(&PostParams::default(), &obj).await.unwrap();
}

/// A provider that accepts connections and never answers. Returns its `http://` URL.
async fn hanging_provider() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    url
}

#[tokio::test]
async fn a_connector_timeout_bounds_its_provider_calls_and_the_condition_names_it() {
    let slow = hanging_provider().await;
    let bed = bed().await;
    let ns = namespace(&bed, "timeouts").await;
    let _op = Operator::start(&bed, "connector_timeouts", &[ns.name()], &[]).await;
    // An API key verified at a provider that never answers, with a 2-second timeout.
    create::<Connector>(
        &ns,
        json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": "slow-api"},
        "spec": {"baseUrl": slow, "http": {"timeoutSeconds": 2},
                 "authMethods": [{"name": "token", "apiKey": {"in": "Header", "name": "Authorization", "prefix": "Bearer "}}],
                 "verification": {"path": "/me"}}}),
    )
    .await;
    create::<EmbeddedConnection>(
        &ns,
        json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "slow-api"},
        "spec": {"connectorRef": {"name": "slow-api"}, "authMethod": "token"}}),
    )
    .await;
    put_source(&ns, "slow-api-key", "good-key-1").await;
    create::<UserActivation>(
        &ns,
        json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "slow-api"},
        "spec": {"connectionRef": {"name": "slow-api"}, "user": {"id": "slow-api"}, "credentialsSecretRef": {"name": "slow-api-key"}}}),
    )
    .await;

    // A client-credentials token endpoint that never answers, with a 3-second timeout.
    create::<Connector>(
        &ns,
        json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": "slow-idp"},
        "spec": {"baseUrl": slow, "http": {"timeoutSeconds": 3},
                 "authMethods": [{"name": "cc", "oauth2": {"flow": "ClientCredentials", "tokenUrl": format!("{slow}/token")}}]}}),
    )
    .await;
    create::<EmbeddedConnection>(
        &ns,
        json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "slow-idp"},
        "spec": {"connectorRef": {"name": "slow-idp"}, "authMethod": "cc"}}),
    )
    .await;
    create::<k8s_openapi::api::core::v1::Secret>(
        &ns,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "slow-idp-client", "labels": {"latchkey.dev/source": "true"}},
        "stringData": {"client_id": "tenant", "client_secret": "tenant-secret-4b1e"}}),
    )
    .await;
    create::<UserActivation>(
        &ns,
        json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "slow-idp"},
        "spec": {"connectionRef": {"name": "slow-idp"}, "user": {"id": "slow-idp"}, "credentialsSecretRef": {"name": "slow-idp-client"}}}),
    )
    .await;

    let uas = ns.api::<UserActivation>();
    let (reason, message) = wait_condition(&uas, "slow-api", "CredentialsValid", "Unknown").await;
    assert_eq!(reason, "VerificationUnavailable", "{message}");
    assert!(message.contains("did not answer the verification request within 2 s"), "{message}");
    let (reason, message) = wait_condition(&uas, "slow-idp", "Ready", "False").await;
    assert_eq!(reason, "ProviderUnavailable", "{message}");
    assert!(message.contains("did not answer within 3000 ms"), "{message}");

    // The schema bounds the field: 0 and 121 are refused at the door.
    for bad in [0, 121] {
        let c: Connector = serde_json::from_value(json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector",
            "metadata": {"name": format!("bad-{bad}")},
            "spec": {"baseUrl": slow, "http": {"timeoutSeconds": bad},
                     "authMethods": [{"name": "token", "apiKey": {"in": "Header", "name": "Authorization"}}]}}))
        .unwrap();
        let err = ns.api::<Connector>().create(&PostParams::default(), &c).await.expect_err("refused by the schema");
        assert!(err.to_string().contains("timeoutSeconds"), "{err}");
    }
}
