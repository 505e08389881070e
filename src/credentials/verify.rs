//! The connector's verification request: does a credential work?
use std::time::Duration;

use crate::api::connector::{ApiKeyLocation, AuthMethod, Connector, HttpMethod};

use super::Credential;

/// How long the verification request may take unless the connector sets `spec.http.timeoutSeconds`.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the provider said of a credential.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// An expected status.
    Valid,
    /// 401, 403 or another 4xx: the credential does not work; retrying will not help.
    Rejected { status: u16 },
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the provider answered {status} to the verification request; will retry")]
    Status { status: u16 },
    #[error("the verification request failed: {0}; will retry")]
    Transport(String),
    #[error("the provider did not answer the verification request within {} s (the connector's spec.http.timeoutSeconds); will retry", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("the verification request cannot be built: {0}")]
    BadUrl(String),
}

/// RFC 6265 `cookie-octet`: what a cookie value may hold unquoted.
fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

/// Sends the connector's verification request with the credential applied. `Ok(None)` when none is declared.
pub async fn verify(
    http: &reqwest::Client,
    connector: &Connector,
    method: &AuthMethod,
    cred: &Credential,
    base_url: &str,
) -> Result<Option<Verdict>, VerifyError> {
    let Some(v) = &connector.spec.verification else { return Ok(None) };
    let url = format!("{}{}", base_url.trim_end_matches('/'), v.path);
    let mut url = url::Url::parse(&url).map_err(|e| VerifyError::BadUrl(e.to_string()))?;
    let mut headers = reqwest::header::HeaderMap::new();
    match cred {
        Credential::ApiKey { key } => {
            let api = method.api_key.as_ref();
            let (loc, name, prefix) = api.map(|a| (a.in_, a.name.as_str(), a.prefix.clone().unwrap_or_default())).unwrap_or((
                ApiKeyLocation::Header,
                "Authorization",
                "Bearer ".into(),
            ));
            let value = format!("{prefix}{}", key.expose());
            match loc {
                ApiKeyLocation::Header => {
                    let n = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| VerifyError::BadUrl(format!("invalid header name {name}")))?;
                    let mut hv = reqwest::header::HeaderValue::from_str(&value)
                        .map_err(|_| VerifyError::BadUrl("the API key is not a valid header value".into()))?;
                    hv.set_sensitive(true);
                    headers.insert(n, hv);
                }
                ApiKeyLocation::Query => {
                    url.query_pairs_mut().append_pair(name, &value);
                }
                ApiKeyLocation::Cookie => {
                    // A value with `;`, `,`, quotes, spaces or control characters would end the cookie or add
                    // another: refuse it rather than send something else than the key.
                    if !value.bytes().all(is_cookie_octet) {
                        return Err(VerifyError::BadUrl(
                            "the API key cannot be sent in a cookie (it holds characters a cookie value cannot)".into(),
                        ));
                    }
                    let mut hv = reqwest::header::HeaderValue::from_str(&format!("{name}={value}"))
                        .map_err(|_| VerifyError::BadUrl(format!("invalid cookie name {name}")))?;
                    hv.set_sensitive(true);
                    headers.insert(reqwest::header::COOKIE, hv);
                }
            }
        }
        Credential::Basic { username, password } => {
            use base64::Engine;
            let b = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose()));
            let mut hv = reqwest::header::HeaderValue::from_str(&format!("Basic {b}"))
                .map_err(|_| VerifyError::BadUrl("invalid basic credentials".into()))?;
            hv.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, hv);
        }
        Credential::OAuth2(t) => {
            let mut hv = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", t.access_token.expose()))
                .map_err(|_| VerifyError::BadUrl("invalid access token".into()))?;
            hv.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, hv);
        }
    }
    let m = match v.method {
        HttpMethod::GET => reqwest::Method::GET,
        HttpMethod::POST => reqwest::Method::POST,
        HttpMethod::HEAD => reqwest::Method::HEAD,
    };
    let limit = connector.timeout().unwrap_or(VERIFY_TIMEOUT);
    let resp = tokio::time::timeout(limit + Duration::from_millis(100), http.request(m, url).headers(headers).timeout(limit).send())
        .await
        .map_err(|_| VerifyError::Timeout(limit))?
        // reqwest errors carry the URL, which for a query-parameter key holds the key: drop it.
        .map_err(|e| match e.is_timeout() {
            true => VerifyError::Timeout(limit),
            false => VerifyError::Transport(crate::outbound::describe(e)),
        })?;
    let status = resp.status().as_u16();
    if v.expect_status.contains(&status) {
        Ok(Some(Verdict::Valid))
    } else if status == 429 || status >= 500 {
        Err(VerifyError::Status { status })
    } else {
        Ok(Some(Verdict::Rejected { status }))
    }
}
