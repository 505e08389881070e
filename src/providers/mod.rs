//! The provider catalogue: `spec.provider: github` on a Connector fills the fields the Connector leaves out
//! (base URL, display name, OAuth2 endpoints, scopes, PKCE, client authentication, authorization and token-request
//! parameters, token-response fields, API-key placement, verification request) from facts compiled into the binary.
//! Fields set on the Connector win (parameter maps merge key by key).
//!
//! Resolution runs where Connectors enter the operator (the reflector's prune step, and the connect server's
//! read), so every consumer sees the resolved spec. Two defaults cannot be told apart from an explicit value
//! once deserialized: `pkce` (default true) and `clientAuth` (default Basic); for those the catalogue's value
//! applies unless the Connector sets the non-default one (`pkce: false`, `clientAuth: Body`). Likewise an
//! `apiKey` without `name` takes name, placement and prefix from the catalogue (an explicit `in: Query` stays).
pub mod catalogue;

use std::collections::BTreeMap;

use crate::api::ConnectorSpec;
use crate::api::connector::{
    ApiKeyLocation, ApiKeyMethod, AuthMethod, BasicMethod, ClientAuth, InstanceParameter, OAuth2Flow, ParameterSource, Verification,
};
pub use catalogue::{PROVIDERS, Provider};

/// `Ready=False` reason: `spec.provider` names no catalogue entry.
pub const UNKNOWN_PROVIDER: &str = "UnknownProvider";
/// `Ready=False` reason: a field the catalogue cannot fill (a per-tenant address, a kind it lacks) is missing.
pub const INCOMPLETE: &str = "IncompleteConnector";

/// Names of the methods a provider Connector without `authMethods` gets (OAuth2 always needs the
/// organisation's app, so it is never added by itself).
pub const API_KEY_METHOD: &str = "api-key";
pub const BASIC_METHOD: &str = "basic";

/// The entry with this id.
pub fn find(id: &str) -> Option<&'static Provider> {
    PROVIDERS.iter().find(|p| p.id == id)
}

/// A value with a `{param}` placeholder: a per-tenant address, never copied into a Connector.
pub fn is_template(s: &str) -> bool {
    s.contains('{')
}

fn concrete(s: &str) -> Option<String> {
    (!s.is_empty() && !is_template(s)).then(|| s.to_string())
}

/// Whether the entry says where every `{parameter}` of its URLs comes from (and which hosts they may reach), so
/// its templates can go into a Connector.
pub fn fills_templates(p: &Provider) -> bool {
    let urls = std::iter::once(p.base_url).chain(p.oauth2.iter().flat_map(|o| [o.authorization_url, o.token_url]));
    !p.allowed_hosts.is_empty()
        && urls.flat_map(crate::instance::placeholders).all(|name| p.instance_parameters.iter().any(|q| q.name == name))
}

/// The entry's value for a field the Connector left out: a template only when the entry can fill it.
fn usable(s: &str, templates: bool, took_template: &mut bool) -> Option<String> {
    if s.is_empty() || (is_template(s) && !templates) {
        return None;
    }
    *took_template |= is_template(s);
    Some(s.to_string())
}

/// Fills what `spec` leaves out from its provider's entry. An unknown or absent provider changes nothing.
pub fn resolve(spec: &mut ConnectorSpec) {
    let Some(p) = spec.provider.as_deref().and_then(find) else { return };
    if spec.display_name.is_none() {
        spec.display_name = Some(p.name.to_string());
    }
    let templates = fills_templates(p);
    let mut took_template = false;
    if spec.base_url.is_empty() {
        spec.base_url = usable(p.base_url, templates, &mut took_template).unwrap_or_default();
    }
    if spec.auth_methods.is_empty() {
        if let Some(k) = p.api_key {
            spec.auth_methods.push(AuthMethod {
                name: API_KEY_METHOD.into(),
                oauth2: None,
                api_key: Some(ApiKeyMethod { in_: k.location, name: k.name.into(), prefix: k.prefix.map(String::from) }),
                basic: None,
                none: None,
            });
        }
        if p.basic {
            spec.auth_methods.push(AuthMethod {
                name: BASIC_METHOD.into(),
                oauth2: None,
                api_key: None,
                basic: Some(BasicMethod {}),
                none: None,
            });
        }
    }
    for m in &mut spec.auth_methods {
        if let (Some(o), Some(f)) = (m.oauth2.as_mut(), p.oauth2.as_ref()) {
            if o.authorization_url.is_none() {
                o.authorization_url = usable(f.authorization_url, templates, &mut took_template);
            }
            if o.token_url.is_empty() {
                o.token_url = usable(f.token_url, templates, &mut took_template).unwrap_or_default();
            }
            if o.revocation_url.is_none() {
                o.revocation_url = f.revocation_url.and_then(concrete);
            }
            if o.scopes.is_empty() {
                o.scopes = f.scopes.iter().map(|s| s.to_string()).collect();
            }
            if o.scope_separator.is_none() {
                o.scope_separator = Some(f.scope_separator.to_string());
            }
            o.pkce = o.pkce && f.pkce;
            if o.client_auth == ClientAuth::Basic {
                o.client_auth = f.client_auth;
            }
            if o.token_response_fields.is_empty() {
                o.token_response_fields = f.token_response_fields.iter().map(|s| s.to_string()).collect();
            }
            for (k, v) in f.authorization_params {
                o.authorization_params.entry(k.to_string()).or_insert_with(|| v.to_string());
            }
            for (k, v) in f.token_params {
                o.token_params.entry(k.to_string()).or_insert_with(|| v.to_string());
            }
        }
        if let (Some(a), Some(f)) = (m.api_key.as_mut(), p.api_key.as_ref())
            && a.name.is_empty()
        {
            a.name = f.name.to_string();
            if a.in_ == ApiKeyLocation::Header {
                a.in_ = f.location;
            }
            if a.prefix.is_none() {
                a.prefix = f.prefix.map(String::from);
            }
        }
    }
    if spec.verification.is_none() {
        spec.verification = p.verification.map(|v| Verification { method: v.method, path: v.path.to_string(), expect_status: vec![200] });
    }
    if took_template {
        if spec.instance_parameters.is_empty() {
            spec.instance_parameters = p
                .instance_parameters
                .iter()
                .map(|q| InstanceParameter {
                    name: q.name.to_string(),
                    from: q.from,
                    field: None,
                    part: q.part,
                    label: q.label.map(String::from),
                })
                .collect();
        }
        if spec.allowed_hosts.is_empty() {
            spec.allowed_hosts = p.allowed_hosts.iter().map(|h| h.to_string()).collect();
        }
        // A parameter from the token response is only there if the response field is kept.
        let fields: Vec<String> = spec
            .instance_parameters
            .iter()
            .filter(|q| q.from == ParameterSource::TokenResponse)
            .map(|q| q.field.clone().unwrap_or_else(|| q.name.clone()))
            .collect();
        for o in spec.auth_methods.iter_mut().filter_map(|m| m.oauth2.as_mut()) {
            for f in &fields {
                if !o.token_response_fields.contains(f) {
                    o.token_response_fields.push(f.clone());
                }
            }
        }
    }
}

/// Why a Connector is not usable after resolution: `(reason, message)`, or `None`.
pub fn problem(spec: &ConnectorSpec) -> Option<(&'static str, String)> {
    let id = spec.provider.as_deref()?;
    let Some(p) = find(id) else {
        let near = nearest(id, 3);
        let hint = if near.is_empty() { String::new() } else { format!("; did you mean {}?", near.join(", ")) };
        return Some((UNKNOWN_PROVIDER, format!("provider {id:?} is not in the catalogue{hint} (`latchkey providers` lists them)")));
    };
    let tenant = |what: &str| match p.tenant {
        Some(t) => format!(
            "{what}: provider {id} serves each tenant at its own address ({t}), which Latchkey cannot find by itself; set it on the Connector (a template with instanceParameters and allowedHosts works)"
        ),
        None => format!("{what}: provider {id} has no value for it in the catalogue; set it on the Connector"),
    };
    if spec.base_url.is_empty() {
        return Some((INCOMPLETE, tenant("baseUrl")));
    }
    if spec.auth_methods.is_empty() {
        return Some((
            INCOMPLETE,
            format!("provider {id} offers OAuth2 only: add an authMethod with oauth2.clientSecretRef (the organisation's OAuth app)"),
        ));
    }
    for m in &spec.auth_methods {
        if let Some(o) = &m.oauth2 {
            if p.oauth2.is_none() && (o.token_url.is_empty() || (o.flow == OAuth2Flow::AuthorizationCode && o.authorization_url.is_none()))
            {
                return Some((
                    INCOMPLETE,
                    format!("authMethods {}: provider {id} has no OAuth2 in the catalogue; set tokenUrl (and authorizationUrl)", m.name),
                ));
            }
            if o.token_url.is_empty() {
                return Some((INCOMPLETE, tenant(&format!("authMethods {}: tokenUrl", m.name))));
            }
            if o.flow == OAuth2Flow::AuthorizationCode && o.authorization_url.is_none() {
                return Some((INCOMPLETE, tenant(&format!("authMethods {}: authorizationUrl", m.name))));
            }
        }
        if let Some(a) = &m.api_key
            && a.name.is_empty()
        {
            return Some((INCOMPLETE, format!("authMethods {}: provider {id} takes no API key in the catalogue; set apiKey.name", m.name)));
        }
    }
    None
}

/// The catalogue ids nearest to `id` by edit distance (adjacent transpositions count one), at most `n`, nearest
/// first; only those within a distance that still looks like a typo.
pub fn nearest(id: &str, n: usize) -> Vec<&'static str> {
    let id = id.to_ascii_lowercase();
    let limit = (id.chars().count() / 2).clamp(2, 4);
    let mut scored: Vec<(usize, &'static str)> = PROVIDERS
        .iter()
        .map(|p| {
            let d = distance(&id, p.id);
            // A prefix ("micro" for "microsoft") is as good as a near miss.
            let d = if p.id.starts_with(id.as_str()) && !id.is_empty() { d.min(1) } else { d };
            (d, p.id)
        })
        .filter(|(d, _)| *d <= limit)
        .collect();
    scored.sort();
    scored.into_iter().take(n).map(|(_, id)| id).collect()
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions and adjacent transpositions.
pub fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// The schema of `spec.provider`: a string the apiserver checks against the catalogue (CEL `self in [...]`),
/// refusing a typo with the ids that share its first letters.
pub fn provider_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let ids: Vec<&str> = PROVIDERS.iter().map(|p| p.id).collect();
    let list = format!("[{}]", ids.iter().map(|i| format!("'{i}'")).collect::<Vec<_>>().join(", "));
    // CEL's cost estimate refuses list comprehensions here, so the suggestion is a chain of prefix tests
    // computed from the catalogue: ids sharing the first two letters, else the first letter.
    let mut groups: Vec<(String, Vec<&str>)> = Vec::new();
    for k in [2, 1] {
        let mut prefixes: Vec<&str> = ids.iter().filter(|i| i.len() >= k).map(|i| &i[..k]).collect();
        prefixes.dedup();
        for pre in prefixes {
            let members: Vec<&str> = ids.iter().copied().filter(|i| i.starts_with(pre)).collect();
            groups.push((pre.to_string(), members));
        }
    }
    let mut suggestion = String::from("''");
    for (pre, members) in groups.iter().rev() {
        suggestion = format!("self.startsWith('{pre}') ? '; did you mean {}?' : ({suggestion})", members.join(", "));
    }
    let message_expression = format!("'unknown provider \"' + self + '\"' + ({suggestion}) + ' (`latchkey providers` lists them)'");
    schemars::json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": 63,
        "x-kubernetes-validations": [{
            "rule": format!("self in {list}"),
            "message": "unknown provider (`latchkey providers` lists them)",
            "messageExpression": message_expression,
        }],
    })
}

/// The rows `latchkey providers` prints.
pub fn table() -> String {
    let rows: Vec<[String; 5]> = PROVIDERS
        .iter()
        .map(|p| {
            let mut kinds = Vec::new();
            if p.oauth2.is_some() {
                kinds.push("oauth2");
            }
            if p.api_key.is_some() {
                kinds.push("apiKey");
            }
            if p.basic {
                kinds.push("basic");
            }
            [
                p.id.to_string(),
                p.name.to_string(),
                kinds.join(","),
                if p.tenant.is_some() { "per-tenant".into() } else { "-".into() },
                p.docs.to_string(),
            ]
        })
        .collect();
    let header = ["ID", "NAME", "AUTH", "ADDRESS", "DOCS"].map(String::from);
    let mut widths = [0usize; 5];
    for r in std::iter::once(&header).chain(rows.iter()) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> =
            r.iter().zip(widths).enumerate().map(|(i, (c, w))| if i == 4 { c.clone() } else { format!("{c:<w$}") }).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The authorization parameters of an entry, as a map (for tests and docs).
pub fn authorization_params(p: &Provider) -> BTreeMap<String, String> {
    p.oauth2.iter().flat_map(|o| o.authorization_params.iter()).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[cfg(test)]
mod tests;
