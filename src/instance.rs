//! Tenant-specific instances (pure): a Connector's `baseUrl`, `authorizationUrl` and `tokenUrl` may hold `{name}`
//! parameters (`https://{shop}.myshopify.com/admin/api`), each filled from the activation's `spec.instance`, a
//! token-response field, or a field the connect page asks for. The resolved URLs must be http(s), carry no user
//! info, and name a host the connector's `allowedHosts` allow: a tenant never points the operator's verification,
//! token or refresh requests at a host of its choosing.
use std::collections::BTreeMap;

use crate::api::Connector;
use crate::api::connector::{AuthMethod, InstanceParameter, ParameterPart, ParameterSource};
use crate::credentials::Sensitive;

/// `Ready=False` reason: the base URL (or an OAuth2 URL) cannot be resolved, or resolves outside `allowedHosts`.
pub const INVALID_BASE_URL: &str = "InvalidBaseUrl";

/// Longest parameter value taken.
const MAX_VALUE: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceError {
    #[error("{what} uses parameter {{{name}}}, which spec.instanceParameters does not declare")]
    Undeclared { what: &'static str, name: String },
    #[error("parameter {name} has no value yet ({})", source_hint(*from, name))]
    Missing { name: String, from: ParameterSource },
    #[error("parameter {name}: {why}")]
    BadValue { name: String, why: String },
    #[error("{what} resolves to {url}, which is not an http(s) URL without user info")]
    BadUrl { what: &'static str, url: String },
    #[error("{what} resolves to host {host}, which the connector's allowedHosts ({allowed}) do not allow; nothing was sent there")]
    NotAllowed { what: &'static str, host: String, allowed: String },
}

fn source_hint(from: ParameterSource, name: &str) -> String {
    match from {
        ParameterSource::Spec => format!("set spec.instance.{name} on the activation"),
        ParameterSource::TokenResponse => "it comes from the provider's token response".into(),
        ParameterSource::ConnectPage => "the user enters it on the connect page".into(),
    }
}

impl InstanceError {
    /// A value that is still to come from the user or the provider (not a mistake to report while waiting).
    pub fn is_pending(&self) -> bool {
        matches!(self, InstanceError::Missing { from: ParameterSource::TokenResponse | ParameterSource::ConnectPage, .. })
    }
}

/// The `{name}` placeholders of a template, in order.
pub fn placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else { break };
        out.push(&after[..end]);
        rest = &after[end + 1..];
    }
    out
}

/// Whether a URL has `{name}` parameters; one without them is used as written.
fn has_parameters(url: &str) -> bool {
    url.contains('{')
}

/// Whether the method's own OAuth2 URLs have parameters.
fn method_has_parameters(method: &AuthMethod) -> bool {
    method.oauth2.as_ref().is_some_and(|o| o.authorization_url.as_deref().is_some_and(has_parameters) || has_parameters(&o.token_url))
}

/// Whether the connector's URLs for this method have parameters at all.
pub fn is_templated(connector: &Connector, method: &AuthMethod) -> bool {
    has_parameters(&connector.spec.base_url) || method_has_parameters(method)
}

/// The parameters the connect page asks the user for.
pub fn connect_page_parameters(connector: &Connector) -> impl Iterator<Item = &InstanceParameter> {
    connector.spec.instance_parameters.iter().filter(|p| p.from == ParameterSource::ConnectPage)
}

/// Parameter values by name from where each parameter's source keeps them: `spec` (the activation's
/// `spec.instance`), `known` (values the connect page or a token response gave before), `page` (the connect
/// page's form, now) and `token_response` (the fields of a fresh token response). Later sources win.
pub fn values(
    connector: &Connector,
    spec: &BTreeMap<String, String>,
    known: &BTreeMap<String, String>,
    page: &BTreeMap<String, String>,
    token_response: &BTreeMap<String, Sensitive>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in &connector.spec.instance_parameters {
        let v = match p.from {
            ParameterSource::Spec => spec.get(&p.name).cloned(),
            ParameterSource::ConnectPage => page.get(&p.name).or_else(|| known.get(&p.name)).cloned(),
            ParameterSource::TokenResponse => token_response
                .get(p.field.as_deref().unwrap_or(&p.name))
                .map(|s| s.expose().to_string())
                .or_else(|| known.get(&p.name).cloned()),
        };
        if let Some(v) = v.map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
            out.insert(p.name.clone(), v);
        }
    }
    out
}

/// The values worth remembering in `status.instanceParameters`: those that do not come from the spec.
pub fn remembered(connector: &Connector, values: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    connector
        .spec
        .instance_parameters
        .iter()
        .filter(|p| p.from != ParameterSource::Spec)
        .filter_map(|p| values.get(&p.name).map(|v| (p.name.clone(), v.clone())))
        .collect()
}

/// One parameter's value as it goes into a URL.
fn part(p: &InstanceParameter, raw: &str) -> Result<String, InstanceError> {
    let bad = |why: &str| InstanceError::BadValue { name: p.name.clone(), why: why.into() };
    if raw.len() > MAX_VALUE {
        return Err(bad("the value is too long"));
    }
    match p.part {
        ParameterPart::Value => {
            let ok = raw.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) && !raw.starts_with('.');
            if ok { Ok(raw.to_string()) } else { Err(bad("only letters, digits, '-', '.' and '_' are allowed")) }
        }
        ParameterPart::Url => {
            let u = url::Url::parse(raw).map_err(|_| bad("the value is not a URL"))?;
            if !matches!(u.scheme(), "http" | "https") || !u.username().is_empty() || u.password().is_some() || u.host_str().is_none() {
                return Err(bad("the value is not an http(s) URL without user info"));
            }
            if u.query().is_some() || u.fragment().is_some() {
                return Err(bad("the URL must not carry a query or fragment"));
            }
            Ok(u.as_str().trim_end_matches('/').to_string())
        }
        ParameterPart::Host => {
            let host = match url::Url::parse(raw) {
                Ok(u) if u.host_str().is_some() => u.host_str().unwrap_or_default().to_string(),
                _ => raw.to_string(),
            };
            let ok = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
            if ok { Ok(host.to_ascii_lowercase()) } else { Err(bad("the value is not a host name")) }
        }
    }
}

/// Fills a template's parameters.
fn fill(what: &'static str, template: &str, connector: &Connector, values: &BTreeMap<String, String>) -> Result<String, InstanceError> {
    let mut out = template.to_string();
    for name in placeholders(template) {
        let p = connector
            .spec
            .instance_parameters
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| InstanceError::Undeclared { what, name: name.to_string() })?;
        let raw = values.get(name).ok_or_else(|| InstanceError::Missing { name: name.to_string(), from: p.from })?;
        out = out.replace(&format!("{{{name}}}"), &part(p, raw)?);
    }
    Ok(out)
}

/// Whether `host` matches one of `patterns`: an exact host, or `*.` followed by a domain, which matches one or
/// more labels in front of it (`*.myshopify.com` matches `acme.myshopify.com`, not `myshopify.com`). A pattern may
/// carry a scheme (`http://127.0.0.1`); without one only https is allowed. Ports are not restricted.
pub fn host_allowed(url: &url::Url, patterns: &[String]) -> bool {
    let Some(host) = url.host_str().map(|h| h.trim_end_matches('.').to_ascii_lowercase()) else { return false };
    patterns.iter().any(|p| {
        let (scheme, pat) = match p.split_once("://") {
            Some((s, rest)) => (s.to_ascii_lowercase(), rest),
            None => ("https".to_string(), p.as_str()),
        };
        let pat = pat.trim_end_matches('/').to_ascii_lowercase();
        if url.scheme() != scheme {
            return false;
        }
        match pat.strip_prefix("*.") {
            Some(domain) => host.len() > domain.len() + 1 && host.ends_with(&format!(".{domain}")),
            None => host == pat,
        }
    })
}

/// Resolves one URL and checks it: a URL without parameters is taken as written (the organisation wrote it).
fn checked(what: &'static str, template: &str, connector: &Connector, values: &BTreeMap<String, String>) -> Result<String, InstanceError> {
    if !has_parameters(template) {
        return Ok(template.to_string());
    }
    let filled = fill(what, template, connector, values)?;
    let url = url::Url::parse(&filled).map_err(|_| InstanceError::BadUrl { what, url: filled.clone() })?;
    if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() || url.password().is_some() {
        return Err(InstanceError::BadUrl { what, url: filled });
    }
    if !host_allowed(&url, &connector.spec.allowed_hosts) {
        return Err(InstanceError::NotAllowed {
            what,
            host: url.host_str().unwrap_or_default().to_string(),
            allowed: connector.spec.allowed_hosts.join(", "),
        });
    }
    Ok(filled)
}

/// The method with its OAuth2 URLs resolved for one tenant (the connector itself is not copied: the callback's
/// path needs only the method). A method whose URLs have no parameters is the one written, borrowed, not copied.
pub fn resolve_method<'m>(
    connector: &Connector,
    method: &'m AuthMethod,
    values: &BTreeMap<String, String>,
) -> Result<std::borrow::Cow<'m, AuthMethod>, InstanceError> {
    if !method_has_parameters(method) {
        return Ok(std::borrow::Cow::Borrowed(method));
    }
    let mut m = method.clone();
    if let Some(o) = m.oauth2.as_mut() {
        if let Some(a) = &o.authorization_url {
            o.authorization_url = Some(checked("authorizationUrl", a, connector, values)?);
        }
        o.token_url = checked("tokenUrl", &o.token_url, connector, values)?;
    }
    Ok(std::borrow::Cow::Owned(m))
}

/// The connector and method with their URLs resolved for one tenant. `base_url_too: false` leaves a base URL
/// that still waits for values (e.g. from the token response) as it is, for the steps before the token exchange.
pub fn resolve(
    connector: &Connector,
    method: &AuthMethod,
    values: &BTreeMap<String, String>,
    base_url_too: bool,
) -> Result<(Connector, AuthMethod), InstanceError> {
    let m = resolve_method(connector, method, values)?.into_owned();
    let mut c = connector.clone();
    if base_url_too {
        c.spec.base_url = checked("baseUrl", &connector.spec.base_url, connector, values)?;
    }
    if let Some(i) = c.spec.auth_methods.iter_mut().position(|x| x.name == m.name) {
        c.spec.auth_methods[i] = m.clone();
    }
    Ok((c, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn connector(spec: serde_json::Value) -> Connector {
        serde_json::from_value(json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": "c"}, "spec": spec}))
            .unwrap()
    }

    fn shopify() -> Connector {
        connector(json!({
            "baseUrl": "https://{shop}.myshopify.com/admin/api",
            "allowedHosts": ["*.myshopify.com"],
            "instanceParameters": [{"name": "shop", "from": "ConnectPage", "label": "Shop"}],
            "authMethods": [{"name": "oauth", "oauth2": {"flow": "AuthorizationCode",
                "authorizationUrl": "https://{shop}.myshopify.com/admin/oauth/authorize",
                "tokenUrl": "https://{shop}.myshopify.com/admin/oauth/access_token", "clientSecretRef": {"name": "app"}}}]
        }))
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_shop_from_the_connect_page_fills_every_url() {
        let c = shopify();
        let m = c.spec.auth_methods[0].clone();
        let v = values(&c, &BTreeMap::new(), &BTreeMap::new(), &map(&[("shop", "acme")]), &BTreeMap::new());
        let (rc, rm) = resolve(&c, &m, &v, true).unwrap();
        assert_eq!(rc.spec.base_url, "https://acme.myshopify.com/admin/api");
        assert_eq!(rm.oauth2.as_ref().unwrap().token_url, "https://acme.myshopify.com/admin/oauth/access_token");
        assert_eq!(rc.spec.auth_methods[0], rm);
    }

    #[test]
    fn values_that_would_leave_the_allowed_hosts_are_refused() {
        let c = shopify();
        let m = c.spec.auth_methods[0].clone();
        for evil in ["evil.com/", "evil.com#", "a@evil.com", "evil.com?x=", ".myshopify.com"] {
            let e = resolve(&c, &m, &map(&[("shop", evil)]), true).unwrap_err();
            assert!(matches!(e, InstanceError::BadValue { .. }), "{evil}: {e}");
        }
        assert!(resolve(&c, &m, &BTreeMap::new(), true).unwrap_err().is_pending());
        let sf = connector(json!({
            "baseUrl": "{instance_url}/services/data/v62.0", "allowedHosts": ["*.my.salesforce.com"],
            "instanceParameters": [{"name": "instance_url", "from": "TokenResponse", "part": "Url"}],
            "authMethods": [{"name": "k", "apiKey": {"in": "Header", "name": "X"}}]
        }));
        let m = sf.spec.auth_methods[0].clone();
        let ok = resolve(&sf, &m, &map(&[("instance_url", "https://acme.my.salesforce.com/")]), true).unwrap();
        assert_eq!(ok.0.spec.base_url, "https://acme.my.salesforce.com/services/data/v62.0");
        let e = resolve(&sf, &m, &map(&[("instance_url", "https://evil.example")]), true).unwrap_err();
        assert!(matches!(e, InstanceError::NotAllowed { ref host, .. } if host == "evil.example"), "{e}");
        assert!(e.to_string().contains("nothing was sent"));
        let e = resolve(&sf, &m, &map(&[("instance_url", "http://acme.my.salesforce.com")]), true).unwrap_err();
        assert!(matches!(e, InstanceError::NotAllowed { .. }), "http needs a pattern with http://: {e}");
        let e = resolve(&sf, &m, &map(&[("instance_url", "https://u:p@acme.my.salesforce.com")]), true).unwrap_err();
        assert!(matches!(e, InstanceError::BadValue { .. }), "{e}");
    }

    #[test]
    fn host_patterns_match_subdomains_and_exact_hosts_only() {
        let p = vec!["*.myshopify.com".to_string(), "http://127.0.0.1".to_string()];
        let ok = |u: &str| host_allowed(&url::Url::parse(u).unwrap(), &p);
        assert!(ok("https://acme.myshopify.com/x") && ok("https://a.b.myshopify.com"));
        assert!(!ok("https://myshopify.com") && !ok("https://evilmyshopify.com") && !ok("https://acme.myshopify.com.evil.io"));
        assert!(ok("http://127.0.0.1:8080/") && !ok("https://127.0.0.1") && !ok("http://127.0.0.2"));
    }

    #[test]
    fn an_undeclared_placeholder_is_named() {
        let c = connector(json!({"baseUrl": "https://{org}.example.com", "allowedHosts": ["*.example.com"],
            "authMethods": [{"name": "k", "apiKey": {"in": "Header", "name": "X"}}]}));
        let e = resolve(&c, &c.spec.auth_methods[0], &BTreeMap::new(), true).unwrap_err();
        assert_eq!(e, InstanceError::Undeclared { what: "baseUrl", name: "org".into() });
        assert_eq!(placeholders("https://{a}.x/{b}/c"), vec!["a", "b"]);
    }
}
