//! Credentials: a type that never prints its secrets, how each auth method's credential is read from a Secret,
//! and the keys the owned Secret holds.
pub mod oauth;
pub mod verify;

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use k8s_openapi::ByteString;

use crate::api::connector::AuthKind;

/// A secret value. `Debug` and `Display` print `[redacted]`; only `expose()` gives the value.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Sensitive(String);

impl Sensitive {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Keys of the owned Secret (and of application-written source Secrets).
pub mod keys {
    pub const API_KEY: &str = "api_key";
    pub const USERNAME: &str = "username";
    pub const PASSWORD: &str = "password";
    pub const ACCESS_TOKEN: &str = "access_token";
    pub const REFRESH_TOKEN: &str = "refresh_token";
    pub const EXPIRES_AT: &str = "expires_at";
    pub const TOKEN_TYPE: &str = "token_type";
    pub const SCOPE: &str = "scope";
    pub const CLIENT_ID: &str = "client_id";
    pub const CLIENT_SECRET: &str = "client_secret";
    /// Prefix of the token-response fields a connector keeps (`tokenResponseFields`): `token_response.instance_url`.
    pub const TOKEN_RESPONSE_PREFIX: &str = "token_response.";
}

/// One user's credential for one auth method.
#[derive(Clone, Debug, PartialEq)]
pub enum Credential {
    ApiKey { key: Sensitive },
    Basic { username: String, password: Sensitive },
    OAuth2(OAuth2Tokens),
}

/// Tokens of an OAuth2 grant, plus the tenant's own client for the client-credentials flow.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct OAuth2Tokens {
    pub access_token: Sensitive,
    pub refresh_token: Option<Sensitive>,
    pub expires_at: Option<DateTime<Utc>>,
    pub token_type: Option<String>,
    pub scope: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<Sensitive>,
    /// Non-standard token-response fields the connector keeps (`tokenResponseFields`), by field name; stored
    /// under `token_response.<field>`.
    pub fields: BTreeMap<String, Sensitive>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("the Secret lacks key(s) {0}: {1}")]
    Missing(String, &'static str),
    #[error("key {0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("key expires_at is not an RFC 3339 time")]
    BadExpiry,
    #[error("the auth method takes no credentials")]
    NoCredentials,
}

fn text(data: &BTreeMap<String, ByteString>, key: &'static str) -> Result<Option<String>, ParseError> {
    match data.get(key) {
        None => Ok(None),
        Some(b) => {
            String::from_utf8(b.0.clone()).map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string())).map_err(|_| ParseError::NotUtf8(key))
        }
    }
    .map(|o| o.filter(|s| !s.is_empty()))
}

impl Credential {
    /// Reads the credential an auth method of `kind` takes from a Secret's data.
    pub fn from_secret_data(kind: AuthKind, data: &BTreeMap<String, ByteString>) -> Result<Self, ParseError> {
        use keys::*;
        match kind {
            AuthKind::None => Err(ParseError::NoCredentials),
            AuthKind::ApiKey => {
                let key = text(data, API_KEY)?.ok_or(ParseError::Missing(API_KEY.into(), "an API-key method needs api_key"))?;
                Ok(Credential::ApiKey { key: Sensitive(key) })
            }
            AuthKind::Basic => match (text(data, USERNAME)?, text(data, PASSWORD)?) {
                (Some(u), Some(p)) => Ok(Credential::Basic { username: u, password: Sensitive(p) }),
                _ => Err(ParseError::Missing("username, password".into(), "a basic method needs username and password")),
            },
            AuthKind::OAuth2AuthorizationCode | AuthKind::OAuth2ClientCredentials => {
                let client_id = text(data, CLIENT_ID)?;
                let client_secret = text(data, CLIENT_SECRET)?.map(Sensitive);
                let access = text(data, ACCESS_TOKEN)?;
                if access.is_none() && !(kind == AuthKind::OAuth2ClientCredentials && client_id.is_some() && client_secret.is_some()) {
                    let hint = if kind == AuthKind::OAuth2ClientCredentials {
                        "a client-credentials method needs client_id and client_secret (or an imported access_token)"
                    } else {
                        "an imported OAuth2 grant needs access_token (refresh_token and expires_at optional)"
                    };
                    return Err(ParseError::Missing(
                        if kind == AuthKind::OAuth2ClientCredentials { "client_id, client_secret" } else { ACCESS_TOKEN }.into(),
                        hint,
                    ));
                }
                let expires_at = match text(data, EXPIRES_AT)? {
                    None => None,
                    Some(s) => Some(DateTime::parse_from_rfc3339(&s).map_err(|_| ParseError::BadExpiry)?.with_timezone(&Utc)),
                };
                Ok(Credential::OAuth2(OAuth2Tokens {
                    access_token: Sensitive(access.unwrap_or_default()),
                    refresh_token: text(data, REFRESH_TOKEN)?.map(Sensitive),
                    expires_at,
                    token_type: text(data, TOKEN_TYPE)?,
                    scope: text(data, SCOPE)?,
                    client_id,
                    client_secret,
                    fields: token_response_fields(data)?,
                }))
            }
        }
    }

    /// The owned Secret's data for this credential.
    pub fn to_secret_data(&self) -> BTreeMap<String, ByteString> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            m.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
        };
        match self {
            Credential::ApiKey { key } => put(keys::API_KEY, key.expose()),
            Credential::Basic { username, password } => {
                put(keys::USERNAME, username);
                put(keys::PASSWORD, password.expose());
            }
            Credential::OAuth2(t) => {
                if !t.access_token.is_empty() {
                    put(keys::ACCESS_TOKEN, t.access_token.expose());
                }
                if let Some(r) = &t.refresh_token {
                    put(keys::REFRESH_TOKEN, r.expose());
                }
                if let Some(e) = t.expires_at {
                    put(keys::EXPIRES_AT, &e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                }
                if let Some(v) = &t.token_type {
                    put(keys::TOKEN_TYPE, v);
                }
                if let Some(v) = &t.scope {
                    put(keys::SCOPE, v);
                }
                if let Some(v) = &t.client_id {
                    put(keys::CLIENT_ID, v);
                }
                if let Some(v) = &t.client_secret {
                    put(keys::CLIENT_SECRET, v.expose());
                }
                for (field, v) in &t.fields {
                    put(&format!("{}{field}", keys::TOKEN_RESPONSE_PREFIX), v.expose());
                }
            }
        }
        m
    }

    /// Every secret value in it (for tests that search logs for leaks, and for the redaction of errors).
    pub fn secret_values(&self) -> Vec<&str> {
        match self {
            Credential::ApiKey { key } => vec![key.expose()],
            Credential::Basic { password, .. } => vec![password.expose()],
            Credential::OAuth2(t) => {
                let mut v = vec![t.access_token.expose()];
                v.extend(t.refresh_token.as_ref().map(Sensitive::expose));
                v.extend(t.client_secret.as_ref().map(Sensitive::expose));
                v.extend(t.fields.values().map(Sensitive::expose));
                v
            }
        }
    }
}

/// The `token_response.<field>` keys of a Secret's data, by field name.
fn token_response_fields(data: &BTreeMap<String, ByteString>) -> Result<BTreeMap<String, Sensitive>, ParseError> {
    let mut out = BTreeMap::new();
    for (k, v) in data {
        if let Some(field) = k.strip_prefix(keys::TOKEN_RESPONSE_PREFIX).filter(|f| !f.is_empty()) {
            let text = String::from_utf8(v.0.clone()).map_err(|_| ParseError::NotUtf8("token_response.*"))?;
            out.insert(field.to_string(), Sensitive(text));
        }
    }
    Ok(out)
}

/// The env var a token-response field becomes: `LATCHKEY_TOKEN_RESPONSE_INSTANCE_URL` for `instance_url`.
pub fn token_response_env(field: &str) -> String {
    let upper: String = field.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("LATCHKEY_TOKEN_RESPONSE_{upper}")
}

/// Hash of a Secret's data, recorded in the data-hash annotation so that a write happens only on change.
pub fn data_hash(data: &BTreeMap<String, ByteString>) -> String {
    let mut parts: Vec<&[u8]> = Vec::new();
    for (k, v) in data {
        parts.push(k.as_bytes());
        parts.push(&v.0);
    }
    crate::naming::hash_hex(&parts)[..32].to_string()
}

/// Keys a Job may see, with the env var each becomes. Never the refresh token or a client secret: a Job must not
/// be able to break the rotation chain.
pub const JOB_KEYS: &[(&str, &str)] = &[
    (keys::API_KEY, "LATCHKEY_API_KEY"),
    (keys::USERNAME, "LATCHKEY_USERNAME"),
    (keys::PASSWORD, "LATCHKEY_PASSWORD"),
    (keys::ACCESS_TOKEN, "LATCHKEY_ACCESS_TOKEN"),
    (keys::TOKEN_TYPE, "LATCHKEY_TOKEN_TYPE"),
    (keys::EXPIRES_AT, "LATCHKEY_EXPIRES_AT"),
];

/// The keys of `kind`'s credential that a Job gets.
pub fn job_keys(kind: AuthKind) -> Vec<(&'static str, &'static str)> {
    let wanted: &[&str] = match kind {
        AuthKind::None => &[],
        AuthKind::ApiKey => &[keys::API_KEY],
        AuthKind::Basic => &[keys::USERNAME, keys::PASSWORD],
        AuthKind::OAuth2AuthorizationCode | AuthKind::OAuth2ClientCredentials => &[keys::ACCESS_TOKEN, keys::TOKEN_TYPE, keys::EXPIRES_AT],
    };
    JOB_KEYS.iter().copied().filter(|(k, _)| wanted.contains(k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect()
    }

    #[test]
    fn sensitive_never_prints() {
        let c = Credential::ApiKey { key: Sensitive::new("sk-live-123") };
        assert!(!format!("{c:?}").contains("sk-live-123"));
        assert!(!format!("{}", Sensitive::new("x1")).contains("x1"));
    }

    #[test]
    fn api_key_read_and_written() {
        let c = Credential::from_secret_data(AuthKind::ApiKey, &data(&[("api_key", "k1\n")])).unwrap();
        assert_eq!(c, Credential::ApiKey { key: Sensitive::new("k1") });
        assert_eq!(c.to_secret_data(), data(&[("api_key", "k1")]));
    }

    #[test]
    fn missing_keys_named() {
        let e = Credential::from_secret_data(AuthKind::Basic, &data(&[("username", "u")])).unwrap_err();
        assert!(e.to_string().contains("username, password"), "{e}");
        let e = Credential::from_secret_data(AuthKind::ApiKey, &data(&[("token", "u")])).unwrap_err();
        assert!(e.to_string().contains("api_key"));
    }

    #[test]
    fn imported_oauth_grant() {
        let c = Credential::from_secret_data(
            AuthKind::OAuth2AuthorizationCode,
            &data(&[("access_token", "a"), ("refresh_token", "r"), ("expires_at", "2026-01-01T00:00:00Z")]),
        )
        .unwrap();
        let Credential::OAuth2(t) = &c else { panic!() };
        assert_eq!(t.refresh_token, Some(Sensitive::new("r")));
        assert_eq!(c.to_secret_data().get("expires_at").unwrap().0, b"2026-01-01T00:00:00Z");
        assert!(Credential::from_secret_data(AuthKind::OAuth2AuthorizationCode, &data(&[("expires_at", "x")])).is_err());
    }

    #[test]
    fn jobs_never_get_refresh_tokens_or_client_secrets() {
        for kind in [AuthKind::OAuth2AuthorizationCode, AuthKind::OAuth2ClientCredentials, AuthKind::ApiKey, AuthKind::Basic] {
            let ks: Vec<_> = job_keys(kind).into_iter().map(|(k, _)| k).collect();
            assert!(!ks.contains(&keys::REFRESH_TOKEN) && !ks.contains(&keys::CLIENT_SECRET));
        }
    }

    #[test]
    fn token_response_fields_round_trip_under_their_prefix() {
        let c = Credential::from_secret_data(
            AuthKind::OAuth2AuthorizationCode,
            &data(&[("access_token", "a"), ("token_response.instance_url", "https://acme.my.salesforce.com")]),
        )
        .unwrap();
        let Credential::OAuth2(t) = &c else { panic!() };
        assert_eq!(t.fields["instance_url"].expose(), "https://acme.my.salesforce.com");
        assert_eq!(c.to_secret_data().get("token_response.instance_url").unwrap().0, b"https://acme.my.salesforce.com");
        assert_eq!(token_response_env("instance_url"), "LATCHKEY_TOKEN_RESPONSE_INSTANCE_URL");
        assert_eq!(token_response_env("authed-user.id"), "LATCHKEY_TOKEN_RESPONSE_AUTHED_USER_ID");
    }

    #[test]
    fn data_hash_changes_with_content() {
        assert_ne!(data_hash(&data(&[("api_key", "a")])), data_hash(&data(&[("api_key", "b")])));
        assert_eq!(data_hash(&data(&[("api_key", "a")])), data_hash(&data(&[("api_key", "a")])));
    }
}
