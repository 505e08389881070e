//! The one HTTP client for provider calls (verification, token, revocation): redirects off, bounded, the standard
//! proxy variables honoured (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`, read by reqwest from the environment), and
//! the organisation's CA bundle trusted besides the built-in roots, for providers behind a private CA.
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("cannot read the CA bundle {path}: {source}")]
    ReadBundle { path: String, source: std::io::Error },
    #[error("the CA bundle {path} holds no PEM certificate ({why})")]
    BadBundle { path: String, why: String },
    #[error("building the HTTP client failed: {0}")]
    Build(String),
}

/// The client, trusting the PEM certificates in `ca_bundle` as well as the built-in roots.
pub fn http_client(ca_bundle: Option<&Path>) -> Result<reqwest::Client, OutboundError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15));
    if let Some(path) = ca_bundle {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| OutboundError::ReadBundle { path: shown.clone(), source })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| OutboundError::BadBundle { path: shown.clone(), why: e.to_string() })?;
        if certs.is_empty() {
            return Err(OutboundError::BadBundle { path: shown, why: "empty".into() });
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| OutboundError::Build(e.to_string()))
}

/// An HTTP error with its causes (`error sending request: ... invalid peer certificate: UnknownIssuer`), so that
/// a TLS or proxy failure says what it is. The URL (which may carry a query-parameter key) is left out.
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
