use std::collections::{BTreeMap, HashSet};

use serde_json::json;

use super::*;
use crate::api::connector::{HttpMethod, OAuth2Flow, ParameterPart, ParameterSource};

fn https(s: &str) -> bool {
    s.starts_with("https://") && s.len() > "https://".len() && !s.contains(' ')
}

fn spec(v: serde_json::Value) -> ConnectorSpec {
    serde_json::from_value(v).expect("a ConnectorSpec")
}

#[test]
fn the_catalogue_has_the_providers_the_issue_names() {
    assert!(PROVIDERS.len() >= 30, "{} providers", PROVIDERS.len());
    for id in [
        "github",
        "gitlab",
        "google",
        "microsoft",
        "salesforce",
        "slack",
        "hubspot",
        "atlassian",
        "notion",
        "zoom",
        "dropbox",
        "box",
        "asana",
        "linear",
        "airtable",
        "intercom",
        "xero",
        "quickbooks",
        "shopify",
        "zendesk",
        "linkedin",
        "discord",
        "stripe",
        "twilio",
        "sendgrid",
        "datadog",
        "pagerduty",
    ] {
        assert!(find(id).is_some(), "{id} missing");
    }
}

#[test]
fn every_entry_is_well_formed() {
    let mut ids = HashSet::new();
    let mut previous = "";
    for p in PROVIDERS {
        let id = p.id;
        assert!(ids.insert(id), "duplicate id {id}");
        assert!(previous < id, "catalogue not sorted at {id}");
        previous = id;
        assert!(
            !id.is_empty() && id.len() <= 63 && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{id}: id must be [a-z0-9-]"
        );
        assert!(!p.name.is_empty(), "{id}: display name");
        assert!(https(p.docs), "{id}: docs link {}", p.docs);
        assert!(p.oauth2.is_some() || p.api_key.is_some() || p.basic, "{id}: no auth kind");
        // Templates only where the entry says the address is per tenant, and then with the parameter named.
        let urls: Vec<&str> = std::iter::once(p.base_url)
            .chain(p.oauth2.iter().flat_map(|o| [o.authorization_url, o.token_url].into_iter().chain(o.revocation_url)))
            .collect();
        for u in &urls {
            if is_template(u) {
                let t = p.tenant.unwrap_or_else(|| panic!("{id}: template {u} without a tenant note"));
                let param = &u[u.find('{').unwrap() + 1..u.find('}').unwrap()];
                assert!(t.contains(param), "{id}: tenant note does not name {param}");
                let filled = u.replace(&format!("{{{param}}}"), if param.ends_with("_url") { "https://x.example" } else { "x" });
                assert!(https(&filled), "{id}: {u}");
            } else {
                assert!(https(u), "{id}: {u} is not https");
            }
        }
        assert!(!p.base_url.ends_with('/'), "{id}: base URL ends with /");
        // Declared parameters are exactly the ones the templates use, and come with the hosts they may reach.
        if !p.instance_parameters.is_empty() {
            assert!(fills_templates(p), "{id}: a template parameter is not declared, or no allowed hosts");
            for q in p.instance_parameters {
                assert!(urls.iter().any(|u| u.contains(&format!("{{{}}}", q.name))), "{id}: parameter {} is not used", q.name);
                assert_eq!(q.from == ParameterSource::ConnectPage, q.label.is_some(), "{id}: a label exactly for the connect page");
            }
            for h in p.allowed_hosts {
                let bare = h.strip_prefix("*.").unwrap_or(h);
                assert!(!bare.is_empty() && bare.contains('.') && !bare.contains('*') && !h.contains("://"), "{id}: allowed host {h}");
            }
        }
        if let Some(o) = &p.oauth2 {
            assert!(!o.authorization_url.is_empty() && !o.token_url.is_empty(), "{id}: OAuth2 URLs");
            assert!([" ", ",", "+"].contains(&o.scope_separator), "{id}: scope separator {:?}", o.scope_separator);
            for s in o.scopes {
                assert!(!s.is_empty() && !s.contains(o.scope_separator) && !s.contains(' '), "{id}: scope {s:?}");
            }
            let mut keys = HashSet::new();
            for (k, v) in o.authorization_params {
                assert!(keys.insert(k) && !k.is_empty() && !v.is_empty(), "{id}: authorization param {k}");
                assert!(
                    !["client_id", "redirect_uri", "state", "scope", "response_type", "code_challenge"].contains(k),
                    "{id}: {k} is set by the operator"
                );
            }
            let mut keys = HashSet::new();
            for (k, v) in o.token_params {
                assert!(keys.insert(k) && !k.is_empty() && !v.is_empty(), "{id}: token param {k}");
                assert!(
                    !["grant_type", "code", "redirect_uri", "code_verifier", "refresh_token", "client_id", "client_secret", "scope"]
                        .contains(k),
                    "{id}: {k} is set by the token request itself"
                );
            }
            // The Connector schema's rules for tokenResponseFields: at most 16, [A-Za-z0-9_.-]{1,63}, no standard field.
            let mut fields = HashSet::new();
            assert!(o.token_response_fields.len() <= 16, "{id}: too many token-response fields");
            for f in o.token_response_fields {
                assert!(fields.insert(f), "{id}: token-response field {f} twice");
                assert!(
                    (1..=63).contains(&f.len()) && f.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
                    "{id}: token-response field {f:?}"
                );
                assert!(
                    !["access_token", "refresh_token", "expires_in", "token_type", "scope"].contains(f),
                    "{id}: {f} is a standard token-response field, always kept"
                );
            }
        }
        if let Some(k) = &p.api_key {
            assert!(!k.name.is_empty() && !k.name.contains(' '), "{id}: API key name");
            if let Some(prefix) = k.prefix {
                assert!(!prefix.is_empty(), "{id}: empty prefix");
            }
        }
        if let Some(v) = &p.verification {
            assert!(v.path.starts_with('/') && v.path.len() > 1, "{id}: verification path");
        }
        // What a Connector gets from the entry is what the schema would accept.
        let mut s = spec(json!({"provider": id}));
        resolve(&mut s);
        assert_eq!(s.display_name.as_deref(), Some(p.name));
        if !is_template(p.base_url) {
            assert_eq!(s.base_url, p.base_url);
        }
    }
}

#[test]
fn github_fills_an_oauth_method_from_a_client_secret_only() {
    let mut s =
        spec(json!({"provider": "github", "authMethods": [{"name": "oauth", "oauth2": {"clientSecretRef": {"name": "github-app"}}}]}));
    resolve(&mut s);
    assert_eq!(s.base_url, "https://api.github.com");
    assert_eq!(s.display_name.as_deref(), Some("GitHub"));
    let o = s.auth_methods[0].oauth2.as_ref().unwrap();
    assert_eq!(o.flow, OAuth2Flow::AuthorizationCode);
    assert_eq!(o.authorization_url.as_deref(), Some("https://github.com/login/oauth/authorize"));
    assert_eq!(o.token_url, "https://github.com/login/oauth/access_token");
    assert_eq!(o.scopes, vec!["repo", "read:user"]);
    assert_eq!(o.scope_separator.as_deref(), Some(" "));
    assert_eq!(o.client_auth, ClientAuth::Body);
    assert!(o.pkce);
    assert_eq!(o.client_secret_ref.as_ref().unwrap().name, "github-app");
    let v = s.verification.as_ref().unwrap();
    assert_eq!((v.method, v.path.as_str(), v.expect_status.clone()), (HttpMethod::GET, "/user", vec![200]));
    assert_eq!(problem(&s), None);
}

#[test]
fn fields_set_on_the_connector_win() {
    let mut s = spec(json!({
        "provider": "google",
        "displayName": "Drive",
        "baseUrl": "https://www.googleapis.com/drive/v3",
        "authMethods": [{"name": "oauth", "oauth2": {
            "flow": "AuthorizationCode",
            "tokenUrl": "https://proxy.example/token",
            "scopes": ["https://www.googleapis.com/auth/drive.readonly"],
            "scopeSeparator": "+",
            "pkce": false,
            "authorizationParams": {"prompt": "select_account"},
            "clientSecretRef": {"name": "g"}
        }}],
        "verification": {"path": "/about?fields=user"}
    }));
    resolve(&mut s);
    assert_eq!(s.display_name.as_deref(), Some("Drive"));
    assert_eq!(s.base_url, "https://www.googleapis.com/drive/v3");
    let o = s.auth_methods[0].oauth2.as_ref().unwrap();
    assert_eq!(o.token_url, "https://proxy.example/token");
    assert_eq!(o.authorization_url.as_deref(), Some("https://accounts.google.com/o/oauth2/v2/auth"), "a left-out field is still filled");
    assert_eq!(o.scopes, vec!["https://www.googleapis.com/auth/drive.readonly"]);
    assert_eq!(o.scope_separator.as_deref(), Some("+"));
    assert!(!o.pkce);
    assert_eq!(o.authorization_params.get("prompt").map(String::as_str), Some("select_account"));
    assert_eq!(
        o.authorization_params.get("access_type").map(String::as_str),
        Some("offline"),
        "the catalogue's other parameters still apply"
    );
    assert_eq!(s.verification.as_ref().unwrap().path, "/about?fields=user");
}

#[test]
fn non_default_client_auth_and_pkce_of_the_connector_win_and_the_catalogue_turns_pkce_off_where_unsupported() {
    // Slack: Basic, no PKCE in the catalogue.
    let mut s = spec(
        json!({"provider": "slack", "authMethods": [{"name": "o", "oauth2": {"clientAuth": "Body", "clientSecretRef": {"name": "s"}}}]}),
    );
    resolve(&mut s);
    let o = s.auth_methods[0].oauth2.as_ref().unwrap();
    assert_eq!(o.client_auth, ClientAuth::Body);
    assert!(!o.pkce);
    assert_eq!(o.scope_separator.as_deref(), Some(","));
    // Notion takes Basic; the default Basic stays.
    let mut s = spec(json!({"provider": "notion", "authMethods": [{"name": "o", "oauth2": {"clientSecretRef": {"name": "s"}}}]}));
    resolve(&mut s);
    assert_eq!(s.auth_methods[0].oauth2.as_ref().unwrap().client_auth, ClientAuth::Basic);
    assert_eq!(s.auth_methods[0].oauth2.as_ref().unwrap().authorization_params.get("owner").map(String::as_str), Some("user"));
}

#[test]
fn api_key_methods_come_from_the_catalogue_unless_named() {
    let mut s = spec(json!({"provider": "stripe"}));
    resolve(&mut s);
    let names: Vec<_> = s.auth_methods.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, vec![API_KEY_METHOD, BASIC_METHOD]);
    let k = s.auth_methods[0].api_key.as_ref().unwrap();
    assert_eq!((k.in_, k.name.as_str(), k.prefix.as_deref()), (ApiKeyLocation::Header, "Authorization", Some("Bearer ")));
    assert_eq!(problem(&s), None);

    let mut s = spec(json!({"provider": "pipedrive", "authMethods": [{"name": "key", "apiKey": {}}]}));
    resolve(&mut s);
    let k = s.auth_methods[0].api_key.as_ref().unwrap();
    assert_eq!((k.in_, k.name.as_str()), (ApiKeyLocation::Query, "api_token"));

    let mut s = spec(json!({"provider": "pagerduty", "authMethods": [{"name": "key", "apiKey": {"in": "Header", "name": "X-Key"}}]}));
    resolve(&mut s);
    let k = s.auth_methods[0].api_key.as_ref().unwrap();
    assert_eq!((k.name.as_str(), k.prefix.as_deref()), ("X-Key", None), "a named key keeps its own placement and prefix");
}

#[test]
fn a_connector_without_provider_is_left_alone() {
    let v = json!({"baseUrl": "https://x.example", "authMethods": [{"name": "m", "apiKey": {"in": "Header", "name": "X"}}]});
    let mut s = spec(v.clone());
    resolve(&mut s);
    assert_eq!(s, spec(v));
    assert_eq!(problem(&s), None);
    // and serializes as before: no empty fields appear.
    let out = serde_json::to_value(&s).unwrap();
    assert!(out.get("provider").is_none() && out["baseUrl"] == "https://x.example");
}

#[test]
fn token_response_fields_come_from_the_catalogue_unless_listed() {
    // Pipedrive answers every token request with the company's own API host, which its OAuth calls must use.
    let mut s = spec(json!({"provider": "pipedrive", "authMethods": [{"name": "o", "oauth2": {"clientSecretRef": {"name": "s"}}}]}));
    resolve(&mut s);
    assert_eq!(s.auth_methods[0].oauth2.as_ref().unwrap().token_response_fields, vec!["api_domain"]);
    let mut s = spec(json!({"provider": "salesforce", "authMethods": [{"name": "o", "oauth2": {"clientSecretRef": {"name": "s"}}}]}));
    resolve(&mut s);
    assert_eq!(s.auth_methods[0].oauth2.as_ref().unwrap().token_response_fields, vec!["instance_url"]);
    // A list on the Connector replaces the catalogue's.
    let mut s = spec(json!({"provider": "slack", "authMethods": [{"name": "o", "oauth2": {
        "tokenResponseFields": ["bot_user_id"], "clientSecretRef": {"name": "s"}}}]}));
    resolve(&mut s);
    assert_eq!(s.auth_methods[0].oauth2.as_ref().unwrap().token_response_fields, vec!["bot_user_id"]);
    // A provider without such fields adds none.
    let mut s = spec(json!({"provider": "github", "authMethods": [{"name": "o", "oauth2": {"clientSecretRef": {"name": "s"}}}]}));
    resolve(&mut s);
    assert!(s.auth_methods[0].oauth2.as_ref().unwrap().token_response_fields.is_empty());
}

#[test]
fn token_params_come_from_the_catalogue_and_the_connector_overrides_them_by_name() {
    // Shopify gives expiring offline tokens (with a refresh token) only when the token request asks for them.
    let mut s = spec(json!({"provider": "shopify", "authMethods": [{"name": "o", "oauth2": {"clientSecretRef": {"name": "s"}}}]}));
    resolve(&mut s);
    let o = s.auth_methods[0].oauth2.as_ref().unwrap();
    assert_eq!(o.token_params.get("expiring").map(String::as_str), Some("1"));
    // A custom app that wants the old non-expiring token says so; its other parameters stay.
    let mut s = spec(json!({"provider": "shopify", "authMethods": [{"name": "o", "oauth2": {
        "tokenParams": {"expiring": "0", "x": "y"}, "clientSecretRef": {"name": "s"}}}]}));
    resolve(&mut s);
    let o = s.auth_methods[0].oauth2.as_ref().unwrap();
    assert_eq!(o.token_params.get("expiring").map(String::as_str), Some("0"));
    assert_eq!(o.token_params.get("x").map(String::as_str), Some("y"));
    let mut s = spec(json!({"provider": "github", "authMethods": [{"name": "o", "oauth2": {"clientSecretRef": {"name": "s"}}}]}));
    resolve(&mut s);
    assert!(s.auth_methods[0].oauth2.as_ref().unwrap().token_params.is_empty());
}

/// The Connector a spec becomes, for `instance::resolve` (the operator's own resolution of per-tenant URLs).
fn connector_of(s: &ConnectorSpec) -> crate::api::Connector {
    crate::api::Connector::new("c", s.clone())
}

fn values(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn a_per_tenant_provider_gives_its_templates_with_their_parameters_and_allowed_hosts() {
    // Shopify: the connect page asks for the shop; every URL is the shop's own.
    let mut s = spec(json!({"provider": "shopify", "authMethods": [{"name": "o", "oauth2": {"clientSecretRef": {"name": "s"}}}]}));
    resolve(&mut s);
    assert_eq!(s.base_url, "https://{shop}.myshopify.com/admin/api/2026-07");
    assert_eq!(s.allowed_hosts, vec!["*.myshopify.com"]);
    let shop = &s.instance_parameters[0];
    assert_eq!((shop.name.as_str(), shop.from), ("shop", ParameterSource::ConnectPage));
    assert!(shop.label.as_deref().is_some_and(|l| l.contains("myshopify.com")));
    assert_eq!(problem(&s), None);
    let c = connector_of(&s);
    let (resolved, m) = crate::instance::resolve(&c, &s.auth_methods[0], &values(&[("shop", "acme")]), true).expect("acme resolves");
    assert_eq!(resolved.spec.base_url, "https://acme.myshopify.com/admin/api/2026-07");
    let o = m.oauth2.as_ref().unwrap();
    assert_eq!(o.authorization_url.as_deref(), Some("https://acme.myshopify.com/admin/oauth/authorize"));
    assert_eq!(o.token_url, "https://acme.myshopify.com/admin/oauth/access_token");
    // A shop name that tries to leave myshopify.com is refused before anything is sent.
    assert!(crate::instance::resolve(&c, &s.auth_methods[0], &values(&[("shop", "evil.example/x")]), true).is_err());

    // Salesforce: the base URL is the token response's instance_url, which must be a My Domain; the response field is kept.
    let mut s = spec(json!({"provider": "salesforce", "authMethods": [{"name": "o", "oauth2": {"clientSecretRef": {"name": "s"}}}]}));
    resolve(&mut s);
    assert_eq!(s.base_url, "{instance_url}/services/data/v62.0");
    assert_eq!(s.instance_parameters[0].from, ParameterSource::TokenResponse);
    assert_eq!(s.instance_parameters[0].part, ParameterPart::Url);
    let o = s.auth_methods[0].oauth2.as_ref().unwrap();
    assert_eq!(o.token_url, "https://login.salesforce.com/services/oauth2/token", "the login URLs are not per org");
    assert!(o.token_response_fields.contains(&"instance_url".to_string()));
    let c = connector_of(&s);
    let (resolved, _) =
        crate::instance::resolve(&c, &s.auth_methods[0], &values(&[("instance_url", "https://acme.my.salesforce.com")]), true).unwrap();
    assert_eq!(resolved.spec.base_url, "https://acme.my.salesforce.com/services/data/v62.0");
    let err = crate::instance::resolve(&c, &s.auth_methods[0], &values(&[("instance_url", "https://evil.example")]), true).unwrap_err();
    assert!(err.to_string().contains("evil.example"), "{err}");
    // A Connector listing its own token-response fields still keeps the one its base URL needs.
    let mut s = spec(json!({"provider": "salesforce", "authMethods": [{"name": "o", "oauth2": {
        "tokenResponseFields": ["id"], "clientSecretRef": {"name": "s"}}}]}));
    resolve(&mut s);
    assert_eq!(s.auth_methods[0].oauth2.as_ref().unwrap().token_response_fields, vec!["id", "instance_url"]);
}

#[test]
fn addresses_set_on_the_connector_win_and_a_template_latchkey_cannot_fill_is_never_copied() {
    // One shop: the Connector sets the addresses, the rest still comes from the catalogue, and no parameter is asked.
    let mut s = spec(
        json!({"provider": "shopify", "baseUrl": "https://acme.myshopify.com/admin/api/2026-07", "authMethods": [{"name": "o", "oauth2": {
        "authorizationUrl": "https://acme.myshopify.com/admin/oauth/authorize", "tokenUrl": "https://acme.myshopify.com/admin/oauth/access_token", "clientSecretRef": {"name": "s"}}}]}),
    );
    resolve(&mut s);
    assert_eq!(problem(&s), None);
    assert!(s.instance_parameters.is_empty() && s.allowed_hosts.is_empty());
    assert_eq!(s.auth_methods[0].oauth2.as_ref().unwrap().scopes, vec!["read_products", "read_orders"]);
    assert_eq!(s.verification.as_ref().unwrap().path, "/shop.json");
    // Mailchimp's data centre is found only after consent: its template stays out, and the condition says so.
    let mut s = spec(json!({"provider": "mailchimp", "authMethods": [{"name": "o", "oauth2": {"clientSecretRef": {"name": "s"}}}]}));
    resolve(&mut s);
    assert_eq!(s.base_url, "");
    let (reason, msg) = problem(&s).unwrap();
    assert_eq!(reason, INCOMPLETE);
    assert!(msg.contains("baseUrl") && msg.contains("dc") && msg.contains("allowedHosts"), "{msg}");
}

#[test]
fn a_kind_the_provider_lacks_is_reported() {
    let mut s = spec(json!({"provider": "twilio", "authMethods": [{"name": "o", "oauth2": {"clientSecretRef": {"name": "s"}}}]}));
    resolve(&mut s);
    let (reason, msg) = problem(&s).unwrap();
    assert_eq!(reason, INCOMPLETE);
    assert!(msg.contains("no OAuth2"), "{msg}");
    let mut s = spec(json!({"provider": "google"}));
    resolve(&mut s);
    let (_, msg) = problem(&s).unwrap();
    assert!(msg.contains("OAuth2 only"), "{msg}");
}

#[test]
fn unknown_providers_get_the_nearest_names() {
    assert_eq!(nearest("githbu", 3)[0], "github");
    assert_eq!(nearest("gitlba", 3)[0], "gitlab");
    assert_eq!(nearest("hubspto", 3), vec!["hubspot"]);
    assert_eq!(nearest("micro", 3), vec!["microsoft"]);
    assert_eq!(nearest("slakc", 3)[0], "slack");
    assert!(nearest("completely-different", 3).is_empty());
    let s = spec(json!({"provider": "githbu", "authMethods": [{"name": "o", "oauth2": {"clientSecretRef": {"name": "s"}}}]}));
    let (reason, msg) = problem(&s).unwrap();
    assert_eq!(reason, UNKNOWN_PROVIDER);
    assert!(msg.contains("\"githbu\"") && msg.contains("github") && msg.contains("latchkey providers"), "{msg}");
}

#[test]
fn distance_counts_transpositions_once() {
    assert_eq!(distance("github", "github"), 0);
    assert_eq!(distance("githbu", "github"), 1);
    assert_eq!(distance("gthub", "github"), 1);
    assert_eq!(distance("", "box"), 3);
    assert_eq!(distance("kitten", "sitting"), 3);
}

#[test]
fn the_schema_refuses_unknown_names_with_a_rule_naming_every_id() {
    let crd = serde_json::to_value(<crate::api::Connector as kube::CustomResourceExt>::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let provider = &spec["properties"]["provider"];
    let rule = provider["x-kubernetes-validations"][0]["rule"].as_str().unwrap();
    for p in PROVIDERS {
        assert!(rule.contains(&format!("'{}'", p.id)), "{} not in the rule", p.id);
    }
    assert!(provider["x-kubernetes-validations"][0]["messageExpression"].as_str().unwrap().contains("latchkey providers"));
    let required: Vec<&str> = spec["required"].as_array().map(|r| r.iter().filter_map(|v| v.as_str()).collect()).unwrap_or_default();
    assert!(!required.contains(&"baseUrl") && !required.contains(&"authMethods"), "{required:?}");
    assert!(spec["properties"]["baseUrl"].get("default").is_none());
    let oauth2 = &spec["properties"]["authMethods"]["items"]["properties"]["oauth2"];
    assert!(oauth2.get("required").is_none_or(|r| r.as_array().unwrap().is_empty()), "{}", oauth2["required"]);
    assert!(oauth2["properties"]["flow"].get("default").is_none());
}

#[test]
fn the_table_lists_every_provider() {
    let t = table();
    assert!(t.starts_with("ID"));
    assert_eq!(t.lines().count(), PROVIDERS.len() + 1);
    let gh = t.lines().find(|l| l.starts_with("github ")).unwrap();
    assert!(gh.contains("GitHub") && gh.contains("oauth2,apiKey") && gh.contains("https://docs.github.com/"), "{gh}");
}
