//! What a test server is started with: its clients, lifetimes and consent behaviour.

use serde_json::{Value, json};

/// How the client authenticates at the token endpoint. The server insists on the registered method (unless
/// [`OAuthServerConfig::strict_client_auth`] is off): a basic client that posts its secret gets `invalid_client`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    Basic,
    Post,
}

impl ClientAuth {
    fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Basic => "client_secret_basic",
            ClientAuth::Post => "client_secret_post",
        }
    }
}

/// A registered client.
#[derive(Clone, Debug)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uris: Vec<String>,
    pub auth: ClientAuth,
    pub grant_types: Vec<String>,
}

impl OAuthClient {
    /// A confidential client for the authorization-code flow with refresh tokens and client credentials,
    /// authenticating with HTTP basic.
    pub fn confidential(client_id: &str, client_secret: &str) -> Self {
        OAuthClient {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            redirect_uris: Vec::new(),
            auth: ClientAuth::Basic,
            grant_types: ["authorization_code", "refresh_token", "client_credentials"].map(String::from).into(),
        }
    }

    pub fn redirect_uri(mut self, uri: &str) -> Self {
        self.redirect_uris.push(uri.into());
        self
    }

    pub fn auth(mut self, auth: ClientAuth) -> Self {
        self.auth = auth;
        self
    }

    pub fn grant_types(mut self, grant_types: &[&str]) -> Self {
        self.grant_types = grant_types.iter().map(|g| g.to_string()).collect();
        self
    }

    pub(super) fn metadata(&self) -> Value {
        json!({
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": self.redirect_uris,
            "token_endpoint_auth_method": self.auth.as_str(),
            "grant_types": self.grant_types,
        })
    }
}

/// What the consent step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consent {
    /// Approve at once, no form (`OAUTH_AUTO_APPROVE=1`); the account is the `login_hint` or `test-user`.
    AutoApprove,
    /// Refuse at once: the client gets `error=access_denied` (`OAUTH_AUTO_APPROVE=deny`).
    AutoDeny,
    /// Show a login + consent form; [`authorize_without_browser`](super::authorize_without_browser) fills it in.
    Form,
}

/// Settings of one server. Lifetimes in seconds; `None` keeps the server's default (access 3600, refresh
/// 86400, client credentials = access, code 60).
#[derive(Clone, Debug)]
pub struct OAuthServerConfig {
    pub clients: Vec<OAuthClient>,
    pub access_ttl: Option<u64>,
    pub refresh_ttl: Option<u64>,
    pub client_credentials_ttl: Option<u64>,
    pub consent: Consent,
    pub password: Option<String>,
    pub rotate_refresh_tokens: bool,
    pub pkce_required: bool,
    pub strict_client_auth: bool,
    pub scopes: Option<Vec<String>>,
    /// Token responses without `expires_in`.
    pub omit_expires_in: bool,
    /// Refresh responses without `refresh_token` (pair with `rotate_refresh_tokens: false`).
    pub refresh_omits_refresh_token: bool,
    /// Non-standard fields added to every successful token response; `{issuer}` in a string becomes the
    /// server's issuer URL.
    pub extra_token_fields: Option<Value>,
    /// Further environment for the node process.
    pub env: Vec<(String, String)>,
}

impl Default for OAuthServerConfig {
    fn default() -> Self {
        OAuthServerConfig {
            clients: Vec::new(),
            access_ttl: None,
            refresh_ttl: None,
            client_credentials_ttl: None,
            consent: Consent::AutoApprove,
            password: None,
            rotate_refresh_tokens: true,
            pkce_required: true,
            strict_client_auth: true,
            scopes: None,
            omit_expires_in: false,
            refresh_omits_refresh_token: false,
            extra_token_fields: None,
            env: Vec::new(),
        }
    }
}

impl OAuthServerConfig {
    pub fn client(mut self, client: OAuthClient) -> Self {
        self.clients.push(client);
        self
    }

    pub fn access_ttl(mut self, seconds: u64) -> Self {
        self.access_ttl = Some(seconds);
        self
    }

    pub fn refresh_ttl(mut self, seconds: u64) -> Self {
        self.refresh_ttl = Some(seconds);
        self
    }

    /// Adds these non-standard fields to every successful token response.
    pub fn extra_token_fields(mut self, fields: Value) -> Self {
        self.extra_token_fields = Some(fields);
        self
    }

    pub fn consent(mut self, consent: Consent) -> Self {
        self.consent = consent;
        self
    }

    pub(super) fn environment(&self) -> Vec<(String, String)> {
        let flag = |on: bool| if on { "1" } else { "0" }.to_string();
        let mut env = vec![
            ("PORT".into(), "0".into()),
            ("OAUTH_CLIENTS".into(), Value::from_iter(self.clients.iter().map(OAuthClient::metadata)).to_string()),
            (
                "OAUTH_AUTO_APPROVE".into(),
                match self.consent {
                    Consent::AutoApprove => "1",
                    Consent::AutoDeny => "deny",
                    Consent::Form => "0",
                }
                .into(),
            ),
            ("OAUTH_ROTATE_REFRESH_TOKEN".into(), flag(self.rotate_refresh_tokens)),
            ("OAUTH_PKCE_REQUIRED".into(), flag(self.pkce_required)),
            ("OAUTH_STRICT_CLIENT_AUTH".into(), flag(self.strict_client_auth)),
            ("OAUTH_OMIT_EXPIRES_IN".into(), flag(self.omit_expires_in)),
            ("OAUTH_REFRESH_OMITS_REFRESH_TOKEN".into(), flag(self.refresh_omits_refresh_token)),
        ];
        let mut set = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                env.push((name.into(), value));
            }
        };
        set("OAUTH_ACCESS_TTL", self.access_ttl.map(|s| s.to_string()));
        set("OAUTH_REFRESH_TTL", self.refresh_ttl.map(|s| s.to_string()));
        set("OAUTH_CLIENT_CREDENTIALS_TTL", self.client_credentials_ttl.map(|s| s.to_string()));
        set("OAUTH_PASSWORD", self.password.clone());
        set("OAUTH_SCOPES", self.scopes.as_ref().map(|s| s.join(" ")));
        set("OAUTH_EXTRA_TOKEN_FIELDS", self.extra_token_fields.as_ref().map(|v| v.to_string()));
        env.extend(self.env.iter().cloned());
        env
    }
}
