//! The server's own records as Rust types: what `/_test/events` and `/_test/revocations` answer.

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// One recorded request. Which fields are set depends on `endpoint`.
#[derive(Clone, Debug, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// When the answer was sent (ms since the epoch); `started_ms` when the request arrived.
    pub t_ms: u64,
    pub started_ms: Option<u64>,
    /// `token`, `revocation`, `introspection`, `authorization`, `authorization_resume` or `resource`.
    pub endpoint: String,
    /// Token endpoint: the address the request was sent to (`/token`, or `/refresh` for the alias).
    pub path: Option<String>,
    /// Token endpoint: form parameters beyond the standard ones (e.g. `audience`), as sent.
    pub extra_params: Option<std::collections::BTreeMap<String, String>>,
    pub grant_type: Option<String>,
    pub client_id: Option<String>,
    /// The method the request used: `client_secret_basic`, `client_secret_post` or `none`.
    pub client_auth: Option<String>,
    pub account_id: Option<String>,
    pub status: u16,
    /// `ok`, `error`, or `injected` (answered by a [`Fault`]).
    pub outcome: String,
    pub error: Option<String>,
    pub error_description: Option<String>,
    /// The provider's reason behind an error, e.g. `refresh token already used`.
    pub error_detail: Option<String>,
    /// Authorization-code grant: whether a `code_verifier` was sent.
    pub pkce: Option<bool>,
    /// Refresh grant: the refresh token presented, as it was when the request arrived.
    pub refresh_token: Option<PresentedToken>,
    /// Revocation / introspection: the token presented.
    pub token: Option<PresentedToken>,
    /// Resource: the access token presented.
    pub access_token: Option<PresentedToken>,
    /// Refresh grant: a new refresh token was issued in place of the presented one.
    pub rotated: Option<bool>,
    /// Token endpoint success: what was issued (fingerprints).
    pub issued: Option<Issued>,
    pub scope: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_challenge_method: Option<String>,
    pub token_type_hint: Option<String>,
    /// Introspection: the answer's `active`.
    pub active: Option<bool>,
}

/// A token presented to an endpoint, as the server knew it when the request arrived.
#[derive(Clone, Debug, Deserialize)]
pub struct PresentedToken {
    pub fingerprint: String,
    /// Issued by this server (false for a made-up or foreign value).
    pub known: bool,
    /// `access_token`, `refresh_token` or `authorization_code`.
    pub kind: Option<String>,
    #[serde(default)]
    pub expired: bool,
    #[serde(default)]
    pub revoked: bool,
    /// A rotated refresh token (already exchanged).
    #[serde(default)]
    pub consumed: bool,
    /// How often it had been presented before (token endpoint and resource; injected faults do not count).
    #[serde(default)]
    pub prior_uses: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Issued {
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub expires_in: Option<u64>,
    pub token_type: Option<String>,
    pub scope: Option<String>,
}

impl Event {
    pub fn is_refresh(&self) -> bool {
        self.endpoint == "token" && self.grant_type.as_deref() == Some("refresh_token")
    }

    /// A refresh request that presented a refresh token already presented before.
    pub fn reused_refresh_token(&self) -> bool {
        self.is_refresh() && self.outcome != "injected" && self.refresh_token.as_ref().is_some_and(|t| t.prior_uses > 0)
    }

    /// A resource request with an access token that had expired when it arrived.
    pub fn used_expired_access_token(&self) -> bool {
        self.endpoint == "resource" && self.access_token.as_ref().is_some_and(|t| t.expired)
    }
}

/// How the server names a token in its records: the first 16 hex digits of SHA-256 of the value.
pub fn fingerprint(token: &str) -> String {
    Sha256::digest(token.as_bytes())[..8].iter().map(|b| format!("{b:02x}")).collect()
}
