//! The OAuth2 client: authorization URLs, code exchange, refresh, client credentials and revocation, with the
//! `oauth2` crate over our one reqwest client (its own `reqwest` feature would pull a second HTTP stack).
//!
//! Errors are classified: `invalid_grant` means the grant is dead (re-authorization), a rejected client or scope
//! is a configuration problem, and network errors, 429 and 5xx are transient. No error carries a token.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet, ErrorResponse, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse,
    TokenUrl,
};

use super::Sensitive;
use crate::api::connector::{ClientAuth, OAuth2Method};

/// Provider calls are bounded: a hung provider must not hold a reconcile or a user's browser for long.
pub const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
pub const REVOKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest provider response read.
const MAX_RESPONSE: usize = 256 * 1024;

/// The client that talks to the provider: the organisation's app (authorization code) or the tenant's own
/// client (client credentials).
#[derive(Clone, Debug)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: Option<Sensitive>,
    pub auth: ClientAuth,
    pub token_url: String,
    pub authorization_url: Option<String>,
    pub revocation_url: Option<String>,
    pub redirect_url: Option<String>,
    pub scopes: Vec<String>,
    pub scope_separator: String,
    /// Non-standard fields of the token response to keep (the connector's `tokenResponseFields`).
    pub token_response_fields: Vec<String>,
    /// Where refresh requests go (the connector's `refreshUrl`); `token_url` when unset.
    pub refresh_url: Option<String>,
    /// Extra form parameters of every token request (the connector's `tokenParams`).
    pub token_params: std::collections::BTreeMap<String, String>,
    /// The connector's `spec.http.timeoutSeconds`: how long each call may take; `None`: [`TOKEN_TIMEOUT`], and
    /// [`REVOKE_TIMEOUT`] for revocation.
    pub timeout: Option<Duration>,
    /// The `oauth2` client for `token_url` (its URLs parsed), built once by [`OAuthClient::prepared`] for a client
    /// that is kept and used for many requests; `None`: built again for each call.
    provider: Option<Arc<ProviderClient>>,
}

/// What a token endpoint answered.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TokenSet {
    pub access_token: Sensitive,
    pub refresh_token: Option<Sensitive>,
    pub expires_in: Option<Duration>,
    pub token_type: Option<String>,
    pub scope: Option<String>,
    /// The non-standard fields the connector asked for that the response carried (strings as they are, other
    /// JSON values as JSON). Sensitive: a provider may put a second token in one (Slack's `authed_user`).
    pub fields: BTreeMap<String, Sensitive>,
}

/// Every non-standard field of a token response, kept by `oauth2`'s extra-fields hook. `Debug` names the
/// fields only, never their values.
#[derive(Clone, serde::Deserialize, serde::Serialize, Default)]
pub struct RawTokenFields {
    #[serde(flatten)]
    pub fields: BTreeMap<String, serde_json::Value>,
}

impl std::fmt::Debug for RawTokenFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.fields.keys()).finish()
    }
}

impl oauth2::ExtraTokenFields for RawTokenFields {}

/// A token response with its non-standard fields.
pub type RawTokenResponse = StandardTokenResponse<RawTokenFields, BasicTokenType>;

/// `oauth2`'s client with [`RawTokenResponse`] in place of the basic token response.
type ProviderClient<HasAuthUrl = EndpointNotSet> = oauth2::Client<
    BasicErrorResponse,
    RawTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    HasAuthUrl,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// The grant is dead (revoked, expired, reused refresh token): the user has to consent again.
    #[error("the provider refused the grant ({code}){}", describe(description))]
    InvalidGrant { code: String, description: Option<String> },
    /// The provider rejected the client, its credentials, the scope or the grant type: fix the configuration.
    #[error("the provider rejected the request ({code}){}", describe(description))]
    Rejected { code: String, description: Option<String> },
    /// Network error, timeout, 429, 5xx, or an answer that could not be read: retry with backoff.
    #[error("the provider is unavailable: {0}")]
    Transient(String),
    /// A URL in the connector that does not parse, or a missing client secret.
    #[error("OAuth2 configuration: {0}")]
    Config(String),
}

fn describe(d: &Option<String>) -> String {
    d.as_deref().map(|d| format!(": {}", d.chars().take(200).collect::<String>())).unwrap_or_default()
}

impl OAuthError {
    pub fn is_transient(&self) -> bool {
        matches!(self, OAuthError::Transient(_))
    }
}

/// Errors of the adapter between `oauth2` and reqwest.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Transport(String),
    #[error("HTTP {0}")]
    Status(u16),
}

/// Sends one `oauth2` request with reqwest. 429 and 5xx become errors here (transient), so that `oauth2` parses
/// only real OAuth answers; the URL is dropped from errors.
async fn send(
    http: &reqwest::Client,
    req: oauth2::HttpRequest,
    timeout: Duration,
    token_url: &url::Url,
) -> Result<oauth2::HttpResponse, HttpError> {
    let mut request = to_reqwest(req, token_url)?;
    *request.timeout_mut() = Some(timeout);
    let mut response = http.execute(request).await.map_err(|e| match e.is_timeout() {
        true => HttpError::Transport(format!("the token endpoint did not answer within {} ms", timeout.as_millis())),
        false => HttpError::Transport(crate::outbound::describe(e)),
    })?;
    let status = response.status();
    if status.as_u16() == 429 || status.is_server_error() {
        return Err(HttpError::Status(status.as_u16()));
    }
    // Read at most MAX_RESPONSE bytes: a huge answer is refused as it streams in, never held whole.
    if response.content_length().is_some_and(|n| n > MAX_RESPONSE as u64) {
        return Err(HttpError::Transport(format!("response larger than {MAX_RESPONSE} bytes")));
    }
    let headers = std::mem::take(response.headers_mut());
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| HttpError::Transport(e.without_url().to_string()))? {
        if body.len() + chunk.len() > MAX_RESPONSE {
            return Err(HttpError::Transport(format!("response larger than {MAX_RESPONSE} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    let mut out = oauth2::HttpResponse::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

/// reqwest's request for `oauth2`'s. A request to `token_url` (the client's token URL, parsed once with the client)
/// takes that parsed URL: reqwest's own conversion parses the URL again, IDNA included, ~2 % of an OAuth callback's
/// CPU. Any other URL is parsed.
fn to_reqwest(req: oauth2::HttpRequest, token_url: &url::Url) -> Result<reqwest::Request, HttpError> {
    if req.uri() != token_url.as_str() {
        return reqwest::Request::try_from(req).map_err(|e| HttpError::Transport(e.without_url().to_string()));
    }
    let (parts, body) = req.into_parts();
    let mut request = reqwest::Request::new(parts.method, token_url.clone());
    *request.headers_mut() = parts.headers;
    *request.version_mut() = parts.version;
    *request.body_mut() = Some(body.into());
    Ok(request)
}

/// `oauth2`'s async HTTP client over our reqwest client, with a per-request timeout, for requests to a token URL
/// already parsed.
struct Http<'a>(&'a reqwest::Client, Duration, &'a url::Url);

impl<'c> oauth2::AsyncHttpClient<'c> for Http<'_> {
    type Error = HttpError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<oauth2::HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(send(self.0, request, self.1, self.2))
    }
}

fn classify<T: ErrorResponse + 'static>(
    e: RequestTokenError<HttpError, T>,
    code_of: impl Fn(&T) -> (String, Option<String>),
) -> OAuthError {
    match e {
        RequestTokenError::ServerResponse(r) => {
            let (code, description) = code_of(&r);
            match code.as_str() {
                "invalid_grant" => OAuthError::InvalidGrant { code, description },
                "invalid_client"
                | "unauthorized_client"
                | "invalid_scope"
                | "unsupported_grant_type"
                | "invalid_request"
                | "access_denied" => OAuthError::Rejected { code, description },
                _ => OAuthError::Transient(format!("{code}{}", describe(&description))),
            }
        }
        RequestTokenError::Request(HttpError::Status(s)) => OAuthError::Transient(format!("HTTP {s}")),
        RequestTokenError::Request(HttpError::Transport(t)) => OAuthError::Transient(t),
        RequestTokenError::Parse(_, _) => OAuthError::Transient("the token response could not be parsed".into()),
        RequestTokenError::Other(o) => OAuthError::Transient(o.chars().take(200).collect()),
    }
}

fn token_error_code(r: &oauth2::StandardErrorResponse<BasicErrorResponseType>) -> (String, Option<String>) {
    (r.error().as_ref().to_string(), r.error_description().cloned())
}

/// A JSON value as one string: a string as it is, anything else as JSON.
pub fn field_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn into_token_set(r: RawTokenResponse, wanted: &[String]) -> TokenSet {
    let fields = wanted
        .iter()
        .filter_map(|name| {
            r.extra_fields().fields.get(name).filter(|v| !v.is_null()).map(|v| (name.clone(), Sensitive::new(field_text(v))))
        })
        .collect();
    TokenSet {
        fields,
        access_token: Sensitive::new(r.access_token().secret().clone()),
        refresh_token: r.refresh_token().map(|t| Sensitive::new(t.secret().clone())),
        expires_in: r.expires_in(),
        // `Bearer` as RFC 6750 spells it for the Authorization header (the crate lower-cases it).
        token_type: Some(match r.token_type().as_ref() {
            t if t.eq_ignore_ascii_case("bearer") => "Bearer".to_string(),
            t => t.to_string(),
        }),
        scope: r.scopes().map(|s| s.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(" ")),
    }
}

fn cfg<T>(r: Result<T, url::ParseError>, what: &str) -> Result<T, OAuthError> {
    r.map_err(|e| OAuthError::Config(format!("{what} is not a valid URL: {e}")))
}

/// An authorization request: the URL to send the user to, and the PKCE verifier to keep (sealed in `state`).
pub struct AuthorizationRequest {
    pub url: String,
    pub pkce_verifier: Option<Sensitive>,
}

/// Names the authorization request sets itself; `authorizationParams` cannot override them.
const RESERVED_PARAMS: &[&str] =
    &["response_type", "client_id", "redirect_uri", "state", "scope", "code_challenge", "code_challenge_method"];

/// Names a token request sets itself; `tokenParams` cannot override them.
const RESERVED_TOKEN_PARAMS: &[&str] = &[
    "grant_type",
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
    "client_id",
    "client_secret",
    "scope",
    "client_assertion",
    "client_assertion_type",
];

impl OAuthClient {
    /// The organisation's app of an authorization-code method.
    pub fn for_method(m: &OAuth2Method, client_id: String, client_secret: Option<Sensitive>, redirect_url: Option<String>) -> Self {
        OAuthClient {
            client_id,
            client_secret,
            auth: m.client_auth,
            token_url: m.token_url.clone(),
            authorization_url: m.authorization_url.clone(),
            revocation_url: m.revocation_url.clone(),
            redirect_url,
            scopes: m.scopes.clone(),
            scope_separator: m.scope_separator.clone().unwrap_or_else(|| " ".into()),
            token_response_fields: m.token_response_fields.clone(),
            refresh_url: m.refresh_url.clone(),
            token_params: m.token_params.clone(),
            timeout: None,
            provider: None,
        }
    }

    /// The same client with its `oauth2` client for `token_url` built now, for a client kept across requests (the
    /// connect server keeps one per connector): parsing the token and redirect URLs for every code exchange was
    /// ~5 % of an OAuth callback's CPU. Call it after the last change to the fields; a URL that does not parse
    /// leaves nothing built, and each call reports it as before.
    pub fn prepared(mut self) -> Self {
        self.provider = self.base_at(&self.token_url, "tokenUrl").ok().map(Arc::new);
        self
    }

    /// The same client with the connector's timeout (`Connector::timeout`).
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a token request may take: the connector's timeout, else [`TOKEN_TIMEOUT`].
    pub fn token_timeout(&self) -> Duration {
        self.timeout.unwrap_or(TOKEN_TIMEOUT)
    }

    /// How long a revocation may take: the connector's timeout, else [`REVOKE_TIMEOUT`].
    pub fn revoke_timeout(&self) -> Duration {
        self.timeout.unwrap_or(REVOKE_TIMEOUT)
    }

    /// The connector's `tokenParams` without the names a token request sets itself.
    fn extra_token_params(&self) -> impl Iterator<Item = (&String, &String)> {
        self.token_params.iter().filter(|(k, _)| !RESERVED_TOKEN_PARAMS.contains(&k.as_str()))
    }

    fn base(&self) -> Result<std::borrow::Cow<'_, ProviderClient>, OAuthError> {
        match &self.provider {
            Some(p) => Ok(std::borrow::Cow::Borrowed(p.as_ref())),
            None => self.base_at(&self.token_url, "tokenUrl").map(std::borrow::Cow::Owned),
        }
    }

    fn base_at(&self, token_url: &str, what: &str) -> Result<ProviderClient, OAuthError> {
        let mut c = oauth2::Client::<
            BasicErrorResponse,
            RawTokenResponse,
            BasicTokenIntrospectionResponse,
            StandardRevocableToken,
            BasicRevocationErrorResponse,
        >::new(ClientId::new(self.client_id.clone()))
        .set_token_uri(cfg(TokenUrl::new(token_url.to_string()), what)?)
        .set_auth_type(match self.auth {
            ClientAuth::Basic => AuthType::BasicAuth,
            ClientAuth::Body => AuthType::RequestBody,
        });
        if let Some(s) = &self.client_secret {
            c = c.set_client_secret(ClientSecret::new(s.expose().to_string()));
        }
        if let Some(r) = &self.redirect_url {
            c = c.set_redirect_uri(cfg(RedirectUrl::new(r.clone()), "the redirect URL")?);
        }
        Ok(c)
    }

    /// The scopes as one parameter, joined by the connector's separator.
    fn scope(&self) -> Option<Scope> {
        (!self.scopes.is_empty()).then(|| Scope::new(self.scopes.join(&self.scope_separator)))
    }

    /// The provider's authorization URL with scopes, extra parameters, `state` and (when `pkce`) S256 PKCE.
    /// `state` is computed from the PKCE verifier, so the caller seals it there.
    pub fn authorization_url(
        &self,
        pkce: bool,
        params: &std::collections::BTreeMap<String, String>,
        state: impl FnOnce(Option<&Sensitive>) -> String,
    ) -> Result<AuthorizationRequest, OAuthError> {
        let auth_url = self.authorization_url.clone().ok_or_else(|| OAuthError::Config("the method has no authorizationUrl".into()))?;
        let client = self.base()?.into_owned().set_auth_uri(cfg(AuthUrl::new(auth_url), "authorizationUrl")?);
        let (challenge, verifier) = if pkce {
            let (c, v) = PkceCodeChallenge::new_random_sha256();
            (Some(c), Some(Sensitive::new(v.secret().clone())))
        } else {
            (None, None)
        };
        let state = state(verifier.as_ref());
        let mut req = client.authorize_url(move || CsrfToken::new(state));
        if let Some(s) = self.scope() {
            req = req.add_scope(s);
        }
        if let Some(c) = challenge {
            req = req.set_pkce_challenge(c);
        }
        for (k, v) in params {
            if !RESERVED_PARAMS.contains(&k.as_str()) {
                req = req.add_extra_param(k.clone(), v.clone());
            }
        }
        let (url, _) = req.url();
        Ok(AuthorizationRequest { url: url.to_string(), pkce_verifier: verifier })
    }

    /// Exchanges an authorization code (with the PKCE verifier when one was sent).
    pub async fn exchange_code(
        &self,
        http: &reqwest::Client,
        code: &str,
        pkce_verifier: Option<&Sensitive>,
    ) -> Result<TokenSet, OAuthError> {
        let client = self.base()?;
        let mut req = client.exchange_code(AuthorizationCode::new(code.to_string()));
        if let Some(v) = pkce_verifier {
            req = req.set_pkce_verifier(PkceCodeVerifier::new(v.expose().to_string()));
        }
        for (k, v) in self.extra_token_params() {
            req = req.add_extra_param(k.clone(), v.clone());
        }
        let budget = self.token_timeout();
        let call = Http(http, budget, client.token_uri().url());
        bounded(budget, req.request_async(&call))
            .await?
            .map(|r| into_token_set(r, &self.token_response_fields))
            .map_err(|e| classify(e, token_error_code))
    }

    /// Uses a refresh token (at `refreshUrl` when the method has one), within `budget` (at most
    /// [`OAuthClient::token_timeout`]): the refresher passes the stored access token's remaining life, so that a hung provider
    /// cannot hold a reconcile past the token's expiry.
    pub async fn refresh(&self, http: &reqwest::Client, refresh_token: &Sensitive, budget: Duration) -> Result<TokenSet, OAuthError> {
        let client = match &self.refresh_url {
            Some(url) => std::borrow::Cow::Owned(self.base_at(url, "refreshUrl")?),
            None => self.base()?,
        };
        let rt = RefreshToken::new(refresh_token.expose().to_string());
        let mut req = client.exchange_refresh_token(&rt);
        for (k, v) in self.extra_token_params() {
            req = req.add_extra_param(k.clone(), v.clone());
        }
        let budget = budget.min(self.token_timeout());
        let call = Http(http, budget, client.token_uri().url());
        bounded(budget, req.request_async(&call))
            .await?
            .map(|r| into_token_set(r, &self.token_response_fields))
            .map_err(|e| classify(e, token_error_code))
    }

    /// The client-credentials grant (the tenant's own client), bounded by [`OAuthClient::token_timeout`].
    pub async fn client_credentials(&self, http: &reqwest::Client) -> Result<TokenSet, OAuthError> {
        self.client_credentials_within(http, self.token_timeout()).await
    }

    /// The client-credentials grant within `budget` (at most [`OAuthClient::token_timeout`]).
    pub async fn client_credentials_within(&self, http: &reqwest::Client, budget: Duration) -> Result<TokenSet, OAuthError> {
        let client = self.base()?;
        let mut req = client.exchange_client_credentials();
        if let Some(s) = self.scope() {
            req = req.add_scope(s);
        }
        for (k, v) in self.extra_token_params() {
            req = req.add_extra_param(k.clone(), v.clone());
        }
        let budget = budget.min(self.token_timeout());
        let call = Http(http, budget, client.token_uri().url());
        bounded(budget, req.request_async(&call))
            .await?
            .map(|r| into_token_set(r, &self.token_response_fields))
            .map_err(|e| classify(e, token_error_code))
    }

    /// RFC 7009 revocation of the refresh token (which ends the grant) or else the access token. Best effort,
    /// bounded by [`OAuthClient::revoke_timeout`]. `Ok(false)` when the connector has no revocation URL. Sent by hand: the
    /// `oauth2` crate insists on an https revocation URL, which local and test providers do not have.
    pub async fn revoke(
        &self,
        http: &reqwest::Client,
        refresh_token: Option<&Sensitive>,
        access_token: Option<&Sensitive>,
    ) -> Result<bool, OAuthError> {
        let Some(url) = &self.revocation_url else { return Ok(false) };
        let url = cfg(url::Url::parse(url), "revocationUrl")?;
        let (token, hint) = match (refresh_token, access_token) {
            (Some(r), _) => (r, "refresh_token"),
            (None, Some(a)) => (a, "access_token"),
            (None, None) => return Ok(false),
        };
        let mut form: Vec<(&str, &str)> = vec![("token", token.expose()), ("token_type_hint", hint)];
        let limit = self.revoke_timeout();
        let mut req = http.post(url).timeout(limit);
        match (self.auth, &self.client_secret) {
            (ClientAuth::Basic, Some(secret)) => {
                // RFC 6749 2.3.1: form-urlencode the id and secret before basic authentication.
                let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                req = req.basic_auth(enc(&self.client_id), Some(enc(secret.expose())));
            }
            (_, secret) => {
                form.push(("client_id", &self.client_id));
                if let Some(s) = secret {
                    form.push(("client_secret", s.expose()));
                }
            }
        }
        let res = tokio::time::timeout(limit + Duration::from_millis(100), req.form(&form).send())
            .await
            .map_err(|_| OAuthError::Transient(format!("the revocation endpoint did not answer within {} ms", limit.as_millis())))?
            .map_err(|e| match e.is_timeout() {
                true => OAuthError::Transient(format!("the revocation endpoint did not answer within {} ms", limit.as_millis())),
                false => OAuthError::Transient(crate::outbound::describe(e)),
            })?;
        let status = res.status();
        if status.is_success() {
            Ok(true)
        } else if status.as_u16() == 429 || status.is_server_error() {
            Err(OAuthError::Transient(format!("HTTP {status}")))
        } else {
            Err(OAuthError::Rejected { code: format!("HTTP {}", status.as_u16()), description: None })
        }
    }
}

/// Annotation on the owned Secret: when the stored access token expires (RFC 3339), so that a reconcile knows
/// from the metadata store when to refresh, without reading the Secret's data.
pub const EXPIRES_AT_ANNOTATION: &str = "latchkey.dev/expires-at";
/// The credential generation the expires-at annotation belongs to (a new credential from the application's
/// Secret makes an older annotation stale).
pub const EXPIRY_GENERATION_ANNOTATION: &str = "latchkey.dev/expiry-generation";

#[derive(Debug, thiserror::Error)]
pub enum AppClientError {
    #[error("the OAuth2 method has no clientSecretRef (the organisation's OAuth app)")]
    NoRef,
    #[error("Secret {0} (the connector's clientSecretRef) does not exist")]
    NotFound(String),
    #[error("Secret {0} (the connector's clientSecretRef) lacks client_id")]
    NoClientId(String),
    #[error("reading Secret {name} (the connector's clientSecretRef) failed: {source}")]
    Kube { name: String, source: kube::Error },
}

/// The organisation's OAuth app of an authorization-code method: `client_id` and `client_secret` from the
/// connector's `clientSecretRef`, in the connector's namespace.
pub async fn organisation_app(
    client: &kube::Client,
    namespace: &str,
    m: &OAuth2Method,
    redirect_url: Option<String>,
) -> Result<OAuthClient, AppClientError> {
    let name = m.client_secret_ref.as_ref().map(|r| r.name.clone()).ok_or(AppClientError::NoRef)?;
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(client.clone(), namespace);
    let secret = api
        .get_opt(&name)
        .await
        .map_err(|source| AppClientError::Kube { name: format!("{namespace}/{name}"), source })?
        .ok_or_else(|| AppClientError::NotFound(format!("{namespace}/{name}")))?;
    let (client_id, client_secret) = app_credentials(&secret)?;
    Ok(OAuthClient::for_method(m, client_id, client_secret, redirect_url))
}

/// `client_id` and `client_secret` of the organisation's OAuth app, from its Secret.
pub fn app_credentials(secret: &k8s_openapi::api::core::v1::Secret) -> Result<(String, Option<Sensitive>), AppClientError> {
    let empty = Default::default();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let text = |k: &str| data.get(k).and_then(|b| std::str::from_utf8(&b.0).ok()).map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let name = || format!("{}/{}", secret.metadata.namespace.as_deref().unwrap_or(""), secret.metadata.name.as_deref().unwrap_or(""));
    let client_id = text(super::keys::CLIENT_ID).ok_or_else(|| AppClientError::NoClientId(name()))?;
    Ok((client_id, text(super::keys::CLIENT_SECRET).map(Sensitive::new)))
}

/// The tenant's own client of a client-credentials method.
pub fn tenant_client(m: &OAuth2Method, client_id: &str, client_secret: &Sensitive) -> OAuthClient {
    OAuthClient::for_method(m, client_id.to_string(), Some(client_secret.clone()), None)
}

/// When the tokens expire: `expires_in` when the provider sent it, else the connector's `defaultTokenLifetime`
/// (default 1 h): a missing expiry never means "never".
pub fn expiry(m: &OAuth2Method, expires_in: Option<Duration>, now: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    let lifetime = expires_in.unwrap_or_else(|| default_lifetime(m));
    now + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::hours(1))
}

pub fn default_lifetime(m: &OAuth2Method) -> Duration {
    m.default_token_lifetime.as_deref().and_then(crate::api::parse_duration).unwrap_or(Duration::from_secs(3600))
}

/// The OAuth2 credential of a fresh token response (the client of a client-credentials method kept with it).
pub fn tokens_from(
    set: TokenSet,
    expires_at: chrono::DateTime<chrono::Utc>,
    previous: Option<&super::OAuth2Tokens>,
) -> super::OAuth2Tokens {
    super::OAuth2Tokens {
        access_token: set.access_token,
        // A refresh answer without a refresh token keeps the old one.
        refresh_token: set.refresh_token.or_else(|| previous.and_then(|p| p.refresh_token.clone())),
        expires_at: Some(expires_at),
        token_type: set.token_type,
        scope: set.scope.or_else(|| previous.and_then(|p| p.scope.clone())),
        client_id: previous.and_then(|p| p.client_id.clone()),
        client_secret: previous.and_then(|p| p.client_secret.clone()),
        // Fields the previous answer brought stay unless this one brings new values.
        fields: {
            let mut f = previous.map(|p| p.fields.clone()).unwrap_or_default();
            f.extend(set.fields);
            f
        },
    }
}

/// Annotation on the owned Secret: the scopes the stored grant holds (the token response's `scope`, or the scopes
/// requested when the provider did not say), so that a reconcile sees from the metadata store when the connector
/// asks for more.
pub const GRANTED_SCOPE_ANNOTATION: &str = "latchkey.dev/granted-scope";

/// The scopes a grant holds: the token response's `scope` when the provider sent one, else those requested.
pub fn granted_scope(m: &OAuth2Method, response_scope: Option<&str>) -> String {
    match response_scope {
        Some(s) => s.to_string(),
        None => m.scopes.join(" "),
    }
}

/// The connector's scopes that `granted` lacks (scopes split on spaces, commas and the connector's separator).
pub fn missing_scopes(m: &OAuth2Method, granted: &str) -> Vec<String> {
    let sep = m.scope_separator.clone().unwrap_or_else(|| " ".into());
    let have: std::collections::BTreeSet<&str> =
        granted.split(|c: char| c.is_whitespace() || c == ',' || sep.contains(c)).filter(|s| !s.is_empty()).collect();
    m.scopes.iter().filter(|s| !have.contains(s.as_str())).cloned().collect()
}

/// Annotation: when the reconcile refreshes (RFC 3339): `expiresAt − margin − jitter`, fixed when the tokens are
/// written, so that every reconcile computes the same time and status never churns.
pub const REFRESH_AT_ANNOTATION: &str = "latchkey.dev/refresh-at";

/// The margin before expiry: `min(refreshBefore (default 5 m), lifetime / 2)`.
pub fn margin(m: &OAuth2Method, lifetime: Duration) -> Duration {
    let before = m.refresh_before.as_deref().and_then(crate::api::parse_duration).unwrap_or(Duration::from_secs(300));
    before.min(lifetime / 2)
}

/// The widest jitter, as a share of the margin. Tokens minted in the same few seconds (a batch of consents, an
/// operator that was down) would otherwise refresh in the same few seconds at every cycle: at half the margin the
/// first cycle spreads them over that window and each later refresh (jittered again) spreads them further. It costs
/// at most a quarter of a token's lifetime (the margin is at most half of it), usually far less (5 min of 1 h).
pub const JITTER_SHARE: f64 = 0.5;

/// When to refresh tokens that expire at `expires_at` after `lifetime`: `expires_at − margin`, moved earlier by
/// `jitter` (0..1) × [`JITTER_SHARE`] of the margin, never later; so a burst of tokens minted together spreads out.
pub fn refresh_at(
    m: &OAuth2Method,
    expires_at: chrono::DateTime<chrono::Utc>,
    lifetime: Duration,
    jitter: f64,
) -> chrono::DateTime<chrono::Utc> {
    let margin = margin(m, lifetime);
    let extra = margin.mul_f64(JITTER_SHARE * jitter.clamp(0.0, 1.0));
    expires_at - chrono::Duration::from_std(margin + extra).unwrap_or_default()
}

/// The annotations that carry the token's timing on the owned Secret.
pub fn timing_annotations(
    m: &OAuth2Method,
    expires_at: chrono::DateTime<chrono::Utc>,
    lifetime: Duration,
    generation: u32,
) -> Vec<(String, String)> {
    use rand::Rng as _;
    let at = refresh_at(m, expires_at, lifetime, rand::rng().random_range(0.0..=1.0));
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    vec![
        (EXPIRES_AT_ANNOTATION.into(), fmt(expires_at)),
        (REFRESH_AT_ANNOTATION.into(), fmt(at)),
        (EXPIRY_GENERATION_ANNOTATION.into(), generation.to_string()),
    ]
}

/// Bounds a token request by `budget` (plus a little, so the HTTP client's own timeout, which says more, fires
/// first), whatever the HTTP client does.
async fn bounded<T, E>(budget: Duration, f: impl std::future::Future<Output = Result<T, E>>) -> Result<Result<T, E>, OAuthError> {
    tokio::time::timeout(budget + Duration::from_millis(100), f)
        .await
        .map_err(|_| OAuthError::Transient(format!("the token endpoint did not answer within {} ms", budget.as_millis())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> OAuthClient {
        OAuthClient {
            client_id: "app".into(),
            client_secret: Some(Sensitive::new("app-secret")),
            auth: ClientAuth::Basic,
            token_url: "https://idp.example/token".into(),
            authorization_url: Some("https://idp.example/authorize?tenant=x".into()),
            revocation_url: None,
            redirect_url: Some("https://connect.example/oauth/callback".into()),
            scopes: vec!["repo".into(), "read:user".into()],
            scope_separator: ",".into(),
            token_response_fields: vec![],
            refresh_url: None,
            token_params: Default::default(),
            timeout: None,
            provider: None,
        }
    }

    #[test]
    fn a_token_request_keeps_its_method_headers_and_body_on_the_parsed_token_url() {
        let token_url = url::Url::parse("https://idp.example/token").unwrap();
        let req = oauth2::http::Request::builder()
            .method("POST")
            .uri("https://idp.example/token")
            .header("authorization", "Basic YXBwOmFwcC1zZWNyZXQ=")
            .body(b"grant_type=authorization_code&code=c".to_vec())
            .unwrap();
        let r = to_reqwest(req, &token_url).unwrap();
        assert_eq!((r.method().as_str(), r.url()), ("POST", &token_url));
        assert_eq!(r.headers()["authorization"], "Basic YXBwOmFwcC1zZWNyZXQ=");
        assert_eq!(r.body().and_then(|b| b.as_bytes()), Some(&b"grant_type=authorization_code&code=c"[..]));
        // Elsewhere (a refresh URL of its own): that URL, parsed.
        let other = oauth2::http::Request::builder().method("POST").uri("https://idp.example/refresh?v=2").body(Vec::new()).unwrap();
        assert_eq!(to_reqwest(other, &token_url).unwrap().url().as_str(), "https://idp.example/refresh?v=2");
    }

    #[test]
    fn authorization_url_carries_scopes_state_pkce_and_params() {
        let params =
            std::collections::BTreeMap::from([("prompt".to_string(), "consent".to_string()), ("state".to_string(), "evil".to_string())]);
        let mut seen = None;
        let req = client()
            .authorization_url(true, &params, |v| {
                seen = v.cloned();
                "STATE".into()
            })
            .unwrap();
        let url = url::Url::parse(&req.url).unwrap();
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["scope"], "repo,read:user");
        assert_eq!(q["state"], "STATE");
        assert_eq!(q["prompt"], "consent");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["redirect_uri"], "https://connect.example/oauth/callback");
        assert_eq!(q["tenant"], "x");
        assert_eq!(q["response_type"], "code");
        assert!(seen.is_some() && seen == req.pkce_verifier);
        assert!(!req.url.contains("app-secret"));
    }

    #[test]
    fn a_prepared_client_builds_the_same_requests_and_still_reports_a_bad_url() {
        let params = std::collections::BTreeMap::new();
        let url = |c: &OAuthClient| c.authorization_url(false, &params, |_| "S".into()).unwrap().url;
        let prepared = client().prepared();
        assert!(prepared.provider.is_some());
        assert!(matches!(prepared.base(), Ok(std::borrow::Cow::Borrowed(_))), "no URL parsed again");
        assert_eq!(url(&prepared), url(&client()));
        assert!(!format!("{prepared:?}").contains("app-secret"), "the built client redacts the secret");
        let bad = OAuthClient { token_url: "not a url".into(), ..client() }.prepared();
        assert!(bad.provider.is_none());
        assert!(matches!(bad.base(), Err(OAuthError::Config(_))));
    }

    fn method(refresh_before: Option<&str>) -> OAuth2Method {
        serde_json::from_value(
            serde_json::json!({"flow": "AuthorizationCode", "tokenUrl": "https://x/token", "refreshBefore": refresh_before}),
        )
        .unwrap()
    }

    #[test]
    fn refresh_margin_is_the_smaller_of_refresh_before_and_half_the_lifetime() {
        let m = method(None);
        assert_eq!(margin(&m, Duration::from_secs(3600)), Duration::from_secs(300));
        assert_eq!(margin(&m, Duration::from_secs(3)), Duration::from_millis(1500));
        assert_eq!(margin(&method(Some("10m")), Duration::from_secs(7200)), Duration::from_secs(600));
    }

    #[test]
    fn jitter_only_moves_a_refresh_earlier_and_by_at_most_half_the_margin() {
        let m = method(None);
        let exp = chrono::Utc::now() + chrono::Duration::hours(1);
        let base = refresh_at(&m, exp, Duration::from_secs(3600), 0.0);
        assert_eq!(base, exp - chrono::Duration::minutes(5));
        for j in [0.1, 0.5, 1.0, 7.0] {
            let at = refresh_at(&m, exp, Duration::from_secs(3600), j);
            assert!(at <= base && at >= base - chrono::Duration::seconds(150), "{at} vs {base}");
        }
        assert_eq!(refresh_at(&m, exp, Duration::from_secs(3600), 1.0), base - chrono::Duration::seconds(150));
    }

    #[test]
    fn tokens_minted_together_are_spread_over_half_the_margin() {
        // 100 tokens of 60 s minted in the same second: their refresh times cover most of the 15 s window
        // (margin 30 s), not the 3 s a tenth of the margin would give.
        use rand::Rng as _;
        let m = method(None);
        let exp = chrono::Utc::now() + chrono::Duration::seconds(60);
        let times: Vec<_> = (0..100).map(|_| refresh_at(&m, exp, Duration::from_secs(60), rand::rng().random_range(0.0..=1.0))).collect();
        let (lo, hi) = (times.iter().min().unwrap(), times.iter().max().unwrap());
        assert!(*hi <= exp - chrono::Duration::seconds(30));
        assert!(*hi - *lo >= chrono::Duration::seconds(10), "spread {}", *hi - *lo);
    }

    #[test]
    fn scopes_the_grant_lacks_are_found_whatever_the_separator() {
        let mut m = method(None);
        m.scopes = vec!["read".into(), "write".into(), "admin:org".into()];
        assert_eq!(missing_scopes(&m, "read write admin:org"), Vec::<String>::new());
        assert_eq!(missing_scopes(&m, "read,admin:org"), vec!["write".to_string()]);
        assert_eq!(missing_scopes(&m, "read"), vec!["write".to_string(), "admin:org".to_string()]);
        assert_eq!(granted_scope(&m, None), "read write admin:org");
        assert_eq!(granted_scope(&m, Some("read")), "read");
    }

    #[test]
    fn a_missing_expiry_uses_the_default_lifetime() {
        let now = chrono::Utc::now();
        assert_eq!(expiry(&method(None), None, now), now + chrono::Duration::hours(1));
        let mut m = method(None);
        m.default_token_lifetime = Some("2s".into());
        assert_eq!(expiry(&m, None, now), now + chrono::Duration::seconds(2));
        assert_eq!(expiry(&m, Some(Duration::from_secs(5)), now), now + chrono::Duration::seconds(5));
    }

    #[test]
    fn a_refresh_without_a_refresh_token_keeps_the_old_one() {
        let prev = crate::credentials::OAuth2Tokens {
            refresh_token: Some(Sensitive::new("r1")),
            client_id: Some("c".into()),
            ..Default::default()
        };
        let set = TokenSet { access_token: Sensitive::new("a2"), ..Default::default() };
        let t = tokens_from(set, chrono::Utc::now(), Some(&prev));
        assert_eq!(t.refresh_token, Some(Sensitive::new("r1")));
        assert_eq!(t.client_id.as_deref(), Some("c"));
    }

    #[test]
    fn the_token_response_fields_asked_for_are_kept_and_survive_a_refresh_that_omits_them() {
        let body = serde_json::json!({
            "access_token": "a1", "token_type": "Bearer", "expires_in": 60,
            "instance_url": "https://acme.my.salesforce.com", "team": {"id": "T1", "name": "Acme"}, "other": "dropped", "id": null
        });
        let r: RawTokenResponse = serde_json::from_value(body).unwrap();
        assert!(!format!("{r:?}").contains("acme.my"), "Debug names the fields only");
        let wanted = vec!["instance_url".to_string(), "team".to_string(), "id".to_string(), "missing".to_string()];
        let set = into_token_set(r, &wanted);
        assert_eq!(set.fields.len(), 2, "{:?}", set.fields.keys());
        assert_eq!(set.fields["instance_url"].expose(), "https://acme.my.salesforce.com");
        assert_eq!(set.fields["team"].expose(), r#"{"id":"T1","name":"Acme"}"#);
        assert_eq!(set.access_token.expose(), "a1");

        let first = tokens_from(set, chrono::Utc::now(), None);
        let refreshed = TokenSet {
            access_token: Sensitive::new("a2"),
            fields: BTreeMap::from([("team".to_string(), Sensitive::new("T2"))]),
            ..Default::default()
        };
        let second = tokens_from(refreshed, chrono::Utc::now(), Some(&first));
        assert_eq!(second.fields["instance_url"].expose(), "https://acme.my.salesforce.com", "kept when not sent again");
        assert_eq!(second.fields["team"].expose(), "T2", "replaced when sent again");
    }

    #[test]
    fn errors_are_classified() {
        let grant = oauth2::StandardErrorResponse::new(BasicErrorResponseType::InvalidGrant, Some("used".into()), None);
        assert!(matches!(classify(RequestTokenError::ServerResponse(grant), token_error_code), OAuthError::InvalidGrant { .. }));
        let client = oauth2::StandardErrorResponse::new(BasicErrorResponseType::InvalidClient, None, None);
        assert!(matches!(classify(RequestTokenError::ServerResponse(client), token_error_code), OAuthError::Rejected { .. }));
        let busy = oauth2::StandardErrorResponse::new(BasicErrorResponseType::Extension("temporarily_unavailable".into()), None, None);
        assert!(classify(RequestTokenError::ServerResponse(busy), token_error_code).is_transient());
        let e: RequestTokenError<HttpError, oauth2::StandardErrorResponse<BasicErrorResponseType>> =
            RequestTokenError::Request(HttpError::Status(503));
        assert!(classify(e, token_error_code).is_transient());
    }
}
