//! A real OAuth2 authorization server for tests: `tests/oauth-server/server.js` (npm `oidc-provider`) run as a
//! child process on a free loopback port, plus a driver for its consent step that needs no browser.
//!
//! ```ignore
//! let server = OAuthServer::start(
//!     OAuthServerConfig::default()
//!         .client(OAuthClient::confidential("app", "app-secret").redirect_uri(callback))
//!         .access_ttl(3),
//! );
//! let pkce = Pkce::new();
//! let url = server.authorization_request("app", callback, "read", "some-state", &pkce);
//! let redirect = authorize_without_browser(&url, callback, &Login::default()).await.unwrap();
//! // POST server.token_url() with redirect.code and pkce.verifier ...
//! let events = server.events().await;
//! ```
//!
//! The server's own records (`/_test/events`, `/_test/revocations`) name tokens by [`fingerprint`], never by
//! value. Needs Node.js 20+ and `npm ci --prefix tests/oauth-server`.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

mod config;
mod consent;
mod records;

#[allow(unused_imports)] // each test binary uses a part
pub use config::{ClientAuth, Consent, OAuthClient, OAuthServerConfig};
#[allow(unused_imports)]
pub use consent::{AuthorizationRedirect, ConsentError, Login, Pkce, authorize_without_browser};
#[allow(unused_imports)]
pub use records::{Event, Issued, PresentedToken, fingerprint};

/// The password the login form accepts unless [`OAuthServerConfig::password`] sets another.
pub const TEST_PASSWORD: &str = "test-password";
/// The account an auto-approved authorization is for when the request carries no `login_hint`.
pub const AUTO_APPROVE_USER: &str = "test-user";

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The JSON line the server prints when it listens.
#[derive(Clone, Debug, Deserialize)]
pub struct ServerInfo {
    pub issuer: String,
    pub port: u16,
    pub pid: u32,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub revocation_endpoint: String,
    pub introspection_endpoint: String,
    pub resource_endpoint: String,
}

/// A running server; the process is killed when this is dropped.
pub struct OAuthServer {
    child: Child,
    info: ServerInfo,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

fn server_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oauth-server")
}

impl OAuthServer {
    /// Starts `node tests/oauth-server/server.js` on a free loopback port and waits until it listens.
    /// Panics with one clear line when node or its modules are missing or the server does not come up.
    pub fn start(config: OAuthServerConfig) -> OAuthServer {
        // A start that prints no ready line within READY_TIMEOUT is retried once (seen once in CI: node alive, no
        // output for 30 s, while the next start took under a second); a server that exits or prints garbage is not.
        match Self::try_start(&config) {
            Ok(server) => server,
            Err(first_log) => {
                eprintln!("the test OAuth server printed no ready line within {READY_TIMEOUT:?}; starting it again. Its log:\n{first_log}");
                Self::try_start(&config)
                    .unwrap_or_else(|log| panic!("the test OAuth server did not start twice (Timeout); its log:\n{log}"))
            }
        }
    }

    /// Starts the server once; `Err(log)` when it printed no ready line within [`READY_TIMEOUT`].
    fn try_start(config: &OAuthServerConfig) -> Result<OAuthServer, String> {
        let dir = server_dir();
        if !dir.join("node_modules/oidc-provider/package.json").exists() {
            panic!("the test OAuth server's modules are missing: run `npm ci --prefix tests/oauth-server`");
        }
        let tmp = tempfile::Builder::new().prefix("latchkey-oauth-server").tempdir().expect("temp dir");
        let log_path = tmp.path().join("server.log");
        let log = File::create(&log_path).expect("create the OAuth server log");

        let mut child = Command::new("node")
            .arg("server.js")
            .current_dir(&dir)
            .envs(config.environment())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log.try_clone().expect("log handle")))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` for the test OAuth server (Node.js 20+ on PATH?): {e}"));

        // The first stdout line is the ready line; later lines go to the log so the pipe never fills.
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = ready_tx.send(lines.next());
            let mut log = log;
            for line in lines.map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
            }
        });

        let line = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                if matches!(outcome, Err(mpsc::RecvTimeoutError::Timeout)) {
                    return Err(log);
                }
                panic!("the test OAuth server did not start ({outcome:?}); its log:\n{log}");
            }
        };
        let info: ServerInfo =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("the test OAuth server printed {line:?} instead of its ready line: {e}"));

        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("reqwest client");
        Ok(OAuthServer { child, info, log_path, _dir: tmp, http })
    }

    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    pub fn issuer(&self) -> &str {
        &self.info.issuer
    }

    pub fn authorize_url(&self) -> &str {
        &self.info.authorization_endpoint
    }

    pub fn token_url(&self) -> &str {
        &self.info.token_endpoint
    }

    pub fn revocation_url(&self) -> &str {
        &self.info.revocation_endpoint
    }

    pub fn introspection_url(&self) -> &str {
        &self.info.introspection_endpoint
    }

    /// A protected resource: `GET` with `Authorization: Bearer <access token>` answers 200 with
    /// `{"sub","client_id","scope"}` while the token is valid, else 401; every request is recorded.
    pub fn resource_url(&self) -> &str {
        &self.info.resource_endpoint
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's stderr and late stdout (oidc-provider's notices, errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// An authorization URL for the code flow with PKCE (S256).
    pub fn authorization_request(&self, client_id: &str, redirect_uri: &str, scope: &str, state: &str, pkce: &Pkce) -> String {
        let mut url = Url::parse(self.authorize_url()).expect("authorization endpoint URL");
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", scope)
            .append_pair("state", state)
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256");
        url.into()
    }

    /// Stops the process (SIGSTOP): connections are accepted by the kernel but never answered, the way a hung
    /// provider looks. All grants survive, unlike a restart.
    pub fn suspend(&self) {
        signal(self.child.id(), "STOP");
    }

    /// Lets a [`suspend`](Self::suspend)ed server run again (SIGCONT).
    pub fn resume(&self) {
        signal(self.child.id(), "CONT");
    }

    /// The token response of a client-credentials grant for a confidential client (HTTP basic); panics unless the
    /// server issues one.
    pub async fn client_credentials_token(&self, http: &reqwest::Client, client_id: &str, secret: &str) -> Value {
        let res = http
            .post(self.token_url())
            .basic_auth(client_id, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .expect("token request");
        assert!(res.status().is_success(), "client credentials for {client_id}: {}", res.status());
        res.json().await.expect("token response JSON")
    }

    // ---- the server's own records ---------------------------------------------------------------------------

    /// Every recorded request, oldest first: token endpoint (each grant type), revocation, introspection,
    /// authorization, resource.
    pub async fn events(&self) -> Vec<Event> {
        serde_json::from_value(self.get_json("/_test/events").await).expect("parse /_test/events")
    }

    /// Token-endpoint requests only.
    pub async fn token_events(&self) -> Vec<Event> {
        self.events().await.into_iter().filter(|e| e.endpoint == "token").collect()
    }

    /// Refresh-token grant requests only (including those answered by an injected fault).
    pub async fn refresh_events(&self) -> Vec<Event> {
        self.token_events().await.into_iter().filter(|e| e.grant_type.as_deref() == Some("refresh_token")).collect()
    }

    /// Requests to the revocation endpoint.
    pub async fn revocations(&self) -> Vec<Event> {
        serde_json::from_value(self.get_json("/_test/revocations").await).expect("parse /_test/revocations")
    }

    /// The raw events, with fields the [`Event`] type does not name.
    pub async fn events_json(&self) -> Value {
        self.get_json("/_test/events").await
    }

    /// Every token the server stored, by fingerprint: kind, client, account, expiry, uses, consumed, revoked.
    pub async fn tokens_json(&self) -> Value {
        self.get_json("/_test/tokens").await
    }

    /// Forgets the events, revocations and armed faults (grants and tokens stay).
    pub async fn reset_records(&self) {
        self.post_json("/_test/reset", &json!({})).await;
    }

    /// Answers the next `fault.count` matching requests with `fault.status` / `fault.error` without handling
    /// them; recorded with outcome `injected` (a refresh token presented then does not count as used).
    pub async fn inject_fault(&self, fault: Fault) {
        self.post_json("/_test/faults", &fault.to_json()).await;
    }

    pub async fn clear_faults(&self) {
        let response = self.http.delete(self.test_url("/_test/faults")).send().await.expect("DELETE /_test/faults");
        assert!(response.status().is_success(), "DELETE /_test/faults: {}", response.status());
    }

    /// Replaces the non-standard fields added to successful token responses (`{issuer}` becomes the issuer URL).
    pub async fn set_extra_token_fields(&self, fields: Value) {
        self.post_json("/_test/quirks", &json!({ "extra_token_fields": fields })).await;
    }

    /// Registers another client while the server runs (a new client_id only).
    pub async fn add_client(&self, client: &OAuthClient) {
        self.post_json("/_test/clients", &client.metadata()).await;
    }

    /// Revokes, server-side, every grant of an account (as a user removing the app at the provider would):
    /// its refresh tokens then get `invalid_grant`. Returns how many grants were revoked.
    pub async fn revoke_grants_of(&self, account_id: &str) -> u64 {
        let out = self.post_json("/_test/revoke-grants", &json!({ "account_id": account_id })).await;
        out["revoked"].as_u64().unwrap_or(0)
    }

    fn test_url(&self, path: &str) -> String {
        format!("{}{}", self.info.issuer, path)
    }

    async fn get_json(&self, path: &str) -> Value {
        let response = self.http.get(self.test_url(path)).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert!(response.status().is_success(), "GET {path}: {}", response.status());
        response.json().await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    async fn post_json(&self, path: &str, body: &Value) -> Value {
        let response = self.http.post(self.test_url(path)).json(body).send().await.unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "POST {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// A fault to inject: `endpoint` is `token`, `revocation`, `introspection` or `resource`.
#[derive(Clone, Debug)]
pub struct Fault {
    pub endpoint: String,
    pub grant_type: Option<String>,
    pub status: u16,
    pub error: String,
    pub count: u32,
    pub delay_ms: u64,
}

impl Fault {
    /// `count` token-endpoint requests answered with `status` (`temporarily_unavailable`).
    pub fn token(status: u16, count: u32) -> Fault {
        Fault { endpoint: "token".into(), grant_type: None, status, error: "temporarily_unavailable".into(), count, delay_ms: 0 }
    }

    pub fn grant_type(mut self, grant_type: &str) -> Fault {
        self.grant_type = Some(grant_type.into());
        self
    }

    pub fn error(mut self, error: &str) -> Fault {
        self.error = error.into();
        self
    }

    pub fn delay(mut self, delay: Duration) -> Fault {
        self.delay_ms = delay.as_millis() as u64;
        self
    }

    fn to_json(&self) -> Value {
        json!({
            "endpoint": self.endpoint,
            "grant_type": self.grant_type,
            "status": self.status,
            "error": self.error,
            "count": self.count,
            "delay_ms": self.delay_ms,
        })
    }
}
