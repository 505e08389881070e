//! `Connector`: a third-party system, its base URL and the ways to authenticate to it.
use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{Condition, DURATION_PATTERN, LocalObjectRef};

/// A third-party API and how to authenticate to it. Holds no end-user credentials: only the organisation's OAuth
/// app (by reference to a Secret) when an OAuth2 method needs one.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "latchkey.dev",
    version = "v1alpha1",
    kind = "Connector",
    namespaced,
    status = "ConnectorStatus",
    shortname = "lkconn",
    category = "latchkey",
    printcolumn = r#"{"name":"Display Name","type":"string","jsonPath":".spec.displayName"}"#,
    printcolumn = r#"{"name":"Base URL","type":"string","jsonPath":".spec.baseUrl"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.provider) || has(self.baseUrl)").message("baseUrl is required (or set provider)").field_path(".baseUrl"))]
#[x_kube(validation = Rule::new("has(self.provider) || (has(self.authMethods) && size(self.authMethods) > 0)").message("authMethods needs at least one method (or set provider)").field_path(".authMethods"))]
#[x_kube(validation = Rule::new("has(self.provider) || !has(self.authMethods) || self.authMethods.all(m, !has(m.oauth2) || (has(m.oauth2.flow) && has(m.oauth2.tokenUrl)))").message("an oauth2 method needs flow and tokenUrl (or set provider)"))]
#[x_kube(validation = Rule::new("has(self.provider) || !has(self.authMethods) || self.authMethods.all(m, !has(m.apiKey) || (has(m.apiKey.__in__) && has(m.apiKey.name)))").message("an apiKey method needs in and name (or set provider)"))]
#[x_kube(validation = Rule::new("!has(self.authMethods) || self.authMethods.all(m, !has(m.oauth2) || (has(m.oauth2.flow) && m.oauth2.flow != 'AuthorizationCode') || ((has(self.provider) || has(m.oauth2.authorizationUrl)) && has(m.oauth2.clientSecretRef)))").message("the AuthorizationCode flow needs authorizationUrl and clientSecretRef (the organisation's OAuth app)"))]
#[x_kube(validation = Rule::new("!has(self.baseUrl) || !self.baseUrl.contains('{') || (has(self.allowedHosts) && size(self.allowedHosts) > 0)").message("a baseUrl with {parameters} needs allowedHosts (the hosts a tenant's address may point at)").field_path(".allowedHosts"))]
#[x_kube(validation = Rule::new("!has(self.authMethods) || self.authMethods.all(m, !has(m.oauth2) || ((!has(m.oauth2.tokenUrl) || !m.oauth2.tokenUrl.contains('{')) && (!has(m.oauth2.authorizationUrl) || !m.oauth2.authorizationUrl.contains('{')))) || (has(self.allowedHosts) && size(self.allowedHosts) > 0)").message("OAuth2 URLs with {parameters} need allowedHosts").field_path(".allowedHosts"))]
#[serde(rename_all = "camelCase")]
pub struct ConnectorSpec {
    /// A provider from the catalogue compiled into the operator (`latchkey providers` lists them), e.g. `github`.
    /// It fills every field this Connector leaves out: base URL, display name, OAuth2 endpoints, scopes, PKCE,
    /// client authentication and authorization parameters, API-key placement, the verification request. Fields
    /// set here win. Without `authMethods`, the provider's API-key and basic methods are offered (named
    /// `api-key` and `basic`); an OAuth2 method always needs its `clientSecretRef` here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::providers::provider_schema")]
    pub provider: Option<String>,
    /// Name shown to end users on the connect page, e.g. `GitHub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub display_name: Option<String>,
    /// Base URL of the API, e.g. `https://api.github.com`. Jobs receive it as `LATCHKEY_BASE_URL`; the
    /// verification request is sent relative to it.
    /// May be a template with `{name}` parameters for per-tenant addresses (`https://{shop}.myshopify.com/admin/api`,
    /// `{instance_url}/services/data/v62.0`), each declared in `instanceParameters`; then `allowedHosts` is required.
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://') || self.startsWith('{')").message("baseUrl must be an http:// or https:// URL (or start with a {parameter} that gives one)"))]
    /// Filled from `provider` when left out.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(min = 8, max = 2048), transform = no_default)]
    pub base_url: String,
    /// Where each `{parameter}` of `baseUrl`, `authorizationUrl` and `tokenUrl` comes from (tenant-specific instances).
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q.name == p.name))").message("instanceParameters names must be unique"))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub instance_parameters: Vec<InstanceParameter>,
    /// Hosts a URL with parameters may resolve to: `api.example.com`, or `*.myshopify.com` (one or more labels in
    /// front of the domain). Without a scheme only https is allowed; `http://host` allows plain http to that host.
    /// Required when a URL has parameters: a tenant must never point requests at a host of its choosing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253), regex(pattern = r"^(https?://)?(\*\.)?[A-Za-z0-9.-]+$")))]
    pub allowed_hosts: Vec<String>,
    /// The ways to authenticate, each with a unique name that an EmbeddedConnection chooses by.
    #[x_kube(validation = Rule::new("self.all(m, self.exists_one(n, n.name == m.name))").message("authMethods names must be unique"))]
    /// At least one unless `provider` is set.
    #[serde(default)]
    #[schemars(length(max = 16), transform = no_default)]
    pub auth_methods: Vec<AuthMethod>,
    /// How to check that a credential works: a request to `baseUrl` + `path` with the credential applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// How the operator's calls to this provider behave (token exchange, refresh, verification, revocation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<ConnectorHttp>,
}

/// The operator's calls to the provider.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorHttp {
    /// Seconds each call to the provider may take before it counts as failed (and is retried with backoff):
    /// token exchange, refresh, verification, revocation. Default 10 (revocation 5). A refresh never waits past
    /// the stored access token's expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 120))]
    pub timeout_seconds: Option<u32>,
}

/// One `{parameter}` of the connector's URLs and where its value comes from.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceParameter {
    /// The name in braces, e.g. `shop` for `{shop}`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub name: String,
    /// `Spec`: the activation's `spec.instance.<name>`; `TokenResponse`: a field of the OAuth2 token response
    /// (`field`, default the name); `ConnectPage`: the connect page asks the user (before the OAuth2 redirect).
    pub from: ParameterSource,
    /// `TokenResponse`: the response field, when it differs from `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub field: Option<String>,
    /// How the value goes into the URL: `Value` (default; letters, digits, `-`, `.`, `_`), `Url` (the value is an
    /// http(s) URL, used whole, e.g. Salesforce's `instance_url`), `Host` (the host of a URL or host value).
    #[serde(default)]
    pub part: ParameterPart,
    /// `ConnectPage`: the field's label, e.g. `Shop name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub label: Option<String>,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParameterSource {
    Spec,
    TokenResponse,
    ConnectPage,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ParameterPart {
    #[default]
    Value,
    Url,
    Host,
}

/// One way to authenticate. Exactly one of `oauth2`, `apiKey`, `basic` or `none` is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.oauth2), has(self.apiKey), has(self.basic), has(self.none)].filter(x, x).size() == 1").message("set exactly one of oauth2, apiKey, basic or none"))]
#[serde(rename_all = "camelCase")]
pub struct AuthMethod {
    /// Name of the method, chosen by EmbeddedConnections' `authMethod`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// OAuth2: authorization code (each user consents) or client credentials (each user's own client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Method>,
    /// An API key each user supplies, sent in a header or a query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyMethod>,
    /// HTTP basic authentication with each user's username and password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicMethod>,
    /// No credentials: the API needs none. An activation is Active at once, holds no Secret, and its Jobs get
    /// the non-secret `LATCHKEY_*` environment only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub none: Option<NoneMethod>,
}

/// Without a Connector `provider`, `flow`, `tokenUrl` and (for AuthorizationCode) `authorizationUrl` are
/// required; with one, what is left out comes from the catalogue. `clientSecretRef` is always needed for
/// AuthorizationCode.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2Method {
    /// `AuthorizationCode` (each end user consents on the provider's page) or `ClientCredentials` (each end user
    /// supplies their own client id and secret). Default AuthorizationCode when `provider` is set.
    #[serde(default)]
    #[schemars(transform = no_default)]
    pub flow: OAuth2Flow,
    /// The provider's authorization endpoint (AuthorizationCode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("authorizationUrl must be an http(s) URL"))]
    pub authorization_url: Option<String>,
    /// The provider's token endpoint.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 2048), transform = no_default)]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("tokenUrl must be an http(s) URL"))]
    pub token_url: String,
    /// Where refresh-token requests go, when the provider takes them elsewhere than `tokenUrl`. Default `tokenUrl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("refreshUrl must be an http(s) URL"))]
    pub refresh_url: Option<String>,
    /// Extra form parameters sent with every token request (code exchange, refresh, client credentials), e.g.
    /// `audience: api.example.com`. Not secret: do not put credentials here. Names the request sets itself
    /// (`grant_type`, `code`, `redirect_uri`, `code_verifier`, `refresh_token`, `client_id`, `client_secret`,
    /// `scope`) are ignored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub token_params: BTreeMap<String, String>,
    /// The provider's revocation endpoint (RFC 7009); called best-effort when an activation is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_url: Option<String>,
    /// Scopes to request.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// How scopes are joined in the request (default: one space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_separator: Option<String>,
    /// Use PKCE (S256) in the authorization-code flow. Default true.
    #[serde(default = "default_true")]
    pub pkce: bool,
    /// How the client authenticates to the token endpoint: `Basic` (HTTP basic) or `Body` (form fields).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Extra query parameters for the authorization request, e.g. `prompt: consent`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub authorization_params: BTreeMap<String, String>,
    /// Secret in the Connector's namespace with keys `client_id` and `client_secret`: the organisation's OAuth
    /// app. Required for AuthorizationCode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<LocalObjectRef>,
    /// Token lifetime assumed when the provider omits `expires_in` (a missing expiry never means "never"). Default 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub default_token_lifetime: Option<String>,
    /// Refresh this long before expiry (at most half the token's lifetime). Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub refresh_before: Option<String>,
    /// Non-standard fields of the provider's token response to keep, e.g. Salesforce's `instance_url` or Slack's
    /// `team`. Each is stored in the activation's Secret as `token_response.<field>` (a string as it is, other
    /// JSON as JSON), kept across refreshes unless a response brings a new value, and given to Jobs as
    /// `LATCHKEY_TOKEN_RESPONSE_<FIELD>` and `/var/run/latchkey/token-response/<field>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(regex(pattern = r"^[A-Za-z0-9_.-]{1,63}$")))]
    #[x_kube(validation = Rule::new("self.all(f, !(f in ['access_token', 'refresh_token', 'expires_in', 'token_type', 'scope']))").message("tokenResponseFields lists non-standard fields only (the standard ones are always kept)"))]
    pub token_response_fields: Vec<String>,
}

/// Keeps a serde default out of the schema, so the apiserver stores only what was written (the catalogue, not
/// a schema default, fills a provider Connector's gaps).
fn no_default(s: &mut schemars::Schema) {
    s.remove("default");
}

fn default_true() -> bool {
    true
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OAuth2Flow {
    #[default]
    AuthorizationCode,
    ClientCredentials,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClientAuth {
    #[default]
    Basic,
    Body,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyMethod {
    /// Where the key goes: `Header`, `Query` or `Cookie` (sent as `Cookie: <name>=<prefix><key>`). With `provider` and no `name`, from the catalogue.
    #[serde(rename = "in", default)]
    #[schemars(transform = no_default)]
    pub in_: ApiKeyLocation,
    /// Header, query parameter or cookie name, e.g. `Authorization`, `api_key` or `session`. Left out with `provider`, the
    /// catalogue's name, placement and prefix apply.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(min = 1, max = 256), transform = no_default)]
    pub name: String,
    /// Prepended to the key, e.g. `Bearer `.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ApiKeyLocation {
    #[default]
    Header,
    Query,
    Cookie,
}

/// HTTP basic authentication; no settings.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct BasicMethod {}

/// An API that needs no credentials; no settings.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct NoneMethod {}

/// A request that succeeds only with a working credential.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// HTTP method. Default GET.
    #[serde(default = "default_get")]
    pub method: HttpMethod,
    /// Path relative to `baseUrl`, e.g. `/user`.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^/"))]
    pub path: String,
    /// Status codes that mean the credential works. Default [200].
    #[serde(default = "default_expect")]
    pub expect_status: Vec<u16>,
}

fn default_get() -> HttpMethod {
    HttpMethod::GET
}
fn default_expect() -> Vec<u16> {
    vec![200]
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms)]
pub enum HttpMethod {
    GET,
    POST,
    HEAD,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorStatus {
    /// `Ready` says whether the connector's references resolve.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Connector {
    pub fn auth_method(&self, name: &str) -> Option<&AuthMethod> {
        self.spec.auth_methods.iter().find(|m| m.name == name)
    }

    /// `spec.http.timeoutSeconds` (kept within 1..=120 like the schema); `None`: the built-in defaults.
    pub fn timeout(&self) -> Option<std::time::Duration> {
        let secs = self.spec.http.as_ref()?.timeout_seconds?;
        Some(std::time::Duration::from_secs(u64::from(secs.clamp(1, 120))))
    }
}

impl AuthMethod {
    pub fn kind(&self) -> AuthKind {
        match (&self.oauth2, &self.api_key, &self.none) {
            (Some(o), _, _) if o.flow == OAuth2Flow::AuthorizationCode => AuthKind::OAuth2AuthorizationCode,
            (Some(_), _, _) => AuthKind::OAuth2ClientCredentials,
            (None, Some(_), _) => AuthKind::ApiKey,
            (None, None, Some(_)) => AuthKind::None,
            (None, None, None) => AuthKind::Basic,
        }
    }
}

/// What kind of credential an auth method takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthKind {
    ApiKey,
    Basic,
    OAuth2AuthorizationCode,
    OAuth2ClientCredentials,
    /// No credentials at all.
    None,
}
