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
/// a TLS or proxy failure says what it is. The URL (which may carry a query-parameter key) is left out, and so is
/// any proxy's `user:password@`.
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut chain = e.to_string();
    let mut tunnel = None;
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if text.starts_with("tunnel error") {
            tunnel = Some(text.clone());
        }
        if !chain.contains(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        source = s.source();
    }
    let out = match tunnel.as_deref() {
        None => chain,
        Some(t) if t.contains("authorization required") => {
            format!("the HTTPS proxy asks for credentials (407); give them in its URL, http://user:password@host:port ({chain})")
        }
        Some(t) if t.contains("unsuccessful") => format!("the HTTPS proxy refused to connect to the provider ({chain})"),
        Some(_) => format!("the HTTPS proxy failed ({chain})"),
    };
    redact(&out)
}

/// `text` with the user information of every URL in it (`http://user:password@proxy:3128`) replaced by `***`:
/// proxy URLs carry credentials, and errors from the HTTP and Kubernetes clients may quote them.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '>' | ')') || c.is_whitespace()).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The Kubernetes client's configuration (kubeconfig, else in-cluster), with the proxy variables applied the
/// standard way: kube reads `HTTPS_PROXY` for a kubeconfig's cluster (never in-cluster) but checks `NO_PROXY`
/// against the proxy's own address rather than the apiserver's. Here the matcher that reqwest applies to provider
/// calls decides for the apiserver too, so that one `NO_PROXY` means the same for both. A `proxy-url` written in
/// the kubeconfig is kept as it is.
pub async fn kube_config() -> Result<kube::Config, kube::config::InferConfigError> {
    let mut config = kube::Config::infer().await?;
    let env = ["HTTPS_PROXY", "https_proxy"].iter().find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()));
    apiserver_proxy(&mut config, env.as_deref(), &hyper_util::client::proxy::matcher::Matcher::from_env());
    Ok(config)
}

/// Drops the apiserver's proxy when it came from the environment (`env_proxy`) and `matcher` (`NO_PROXY`) exempts
/// the apiserver's host.
fn apiserver_proxy(config: &mut kube::Config, env_proxy: Option<&str>, matcher: &hyper_util::client::proxy::matcher::Matcher) {
    let from_env = match (&config.proxy_url, env_proxy) {
        (Some(proxy), Some(env)) => env.trim().parse::<http::Uri>().is_ok_and(|e| &e == proxy),
        _ => false,
    };
    if from_env && matcher.intercept(&config.cluster_url).is_none() {
        config.proxy_url = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::client::proxy::matcher::Matcher;

    #[test]
    fn redact_hides_the_user_information_of_urls() {
        assert_eq!(
            redact("configured proxy http://ops:s3cr%40t@proxy.corp:3128 requires the feature"),
            "configured proxy http://***@proxy.corp:3128 requires the feature"
        );
        assert_eq!(redact("proxy \"https://u@p:1/x\" and http://h:2/"), "proxy \"https://***@p:1/x\" and http://h:2/");
        assert_eq!(redact("no url here"), "no url here");
        assert_eq!(redact("http://host/path?next=a@b"), "http://host/path?next=a@b");
    }

    fn config(cluster: &str, proxy: Option<&str>) -> kube::Config {
        let mut c = kube::Config::new(cluster.parse().unwrap());
        c.proxy_url = proxy.map(|p| p.parse().unwrap());
        c
    }

    #[test]
    fn no_proxy_exempts_the_apiserver_not_the_proxy() {
        let proxy = "http://u:p@proxy.corp:3128";
        let m = Matcher::builder().https(proxy).no("10.0.0.0/8, .cluster.local").build();
        let mut c = config("https://10.1.2.3:6443", Some(proxy));
        apiserver_proxy(&mut c, Some(proxy), &m);
        assert_eq!(c.proxy_url, None, "the apiserver is in NO_PROXY");

        let mut c = config("https://api.example.com", Some(proxy));
        apiserver_proxy(&mut c, Some(proxy), &m);
        assert_eq!(c.proxy_url.map(|u| u.to_string()).as_deref(), Some("http://u:p@proxy.corp:3128/"));

        // A proxy-url the kubeconfig names is the kubeconfig's choice.
        let mut c = config("https://10.1.2.3:6443", Some("http://other:3128"));
        apiserver_proxy(&mut c, Some(proxy), &m);
        assert!(c.proxy_url.is_some());
    }
}
