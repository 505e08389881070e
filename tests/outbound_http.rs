//! Outbound HTTP the way enterprises need it: a provider behind a private CA (the operator's `--ca-bundle`), on the
//! real control plane with the operator binary.
mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kube::api::PostParams;
use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
use serde_json::json;
use support::fixtures::*;
use support::operator::Operator;
use support::{bed, namespace};

/// A private CA and a server certificate for 127.0.0.1 signed by it, made with openssl in `dir`.
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
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
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
    let connector: Connector = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": "private"},
        "spec": {"baseUrl": base_url, "authMethods": [{"name": "token", "apiKey": {"in": "Header", "name": "Authorization", "prefix": "Bearer "}}],
                 "verification": {"path": "/me"}}
    }))
    .unwrap();
    ns.api::<Connector>().create(&PostParams::default(), &connector).await.unwrap();
    let ec: EmbeddedConnection = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "sync"},
        "spec": {"connectorRef": {"name": "private"}, "authMethod": "token"}
    }))
    .unwrap();
    ns.api::<EmbeddedConnection>().create(&PostParams::default(), &ec).await.unwrap();
    put_source(ns, "key", "good-private-key-1").await;
    let ua: UserActivation = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "acme"},
        "spec": {"connectionRef": {"name": "sync"}, "user": {"id": "acme"}, "credentialsSecretRef": {"name": "key"}}
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
