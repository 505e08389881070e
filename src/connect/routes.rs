//! `GET/POST /connect/{token}` and `GET /oauth/callback`.
//!
//! Every handler checks the signed token or sealed `state` in memory first; only a valid one leads to I/O.
//! Opening a link (GET) changes nothing. Completing one (form POST, OAuth callback) needs the nonce in the
//! activation's status to still match; the nonce is then rotated with a compare-and-swap on the activation's
//! resourceVersion, so a link or `state` works once across all replicas. The replica that completes the link
//! writes the owned Secret itself (field manager `latchkey-connect`); the leader's reconcile takes it from there.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::ConnectConfig;
use super::pages::{self, Field};
use super::token::{self, Claims, TokenError};
use crate::api::connector::{AuthKind, AuthMethod, OAuth2Method};
use crate::api::{Connector, EmbeddedConnection, UserActivation};
use crate::credentials::oauth::{self, OAuthError};
use crate::credentials::verify::{self, Verdict};
use crate::credentials::{self, Credential, OAuth2Tokens, Sensitive, keys};
use crate::naming;

/// Largest request body: a form with a few fields.
const MAX_BODY: usize = 16 * 1024;
/// Provider calls (token exchange, verification) in flight at once from this replica.
const PROVIDER_CALLS: usize = 32;
/// How long a `state` stays valid: the user's time at the provider's consent page.
const STATE_TTL: chrono::Duration = chrono::Duration::minutes(15);

#[derive(Clone)]
pub struct ConnectState {
    pub client: Client,
    pub http: reqwest::Client,
    pub config: Arc<ConnectConfig>,
    pub provider_calls: Arc<Semaphore>,
    /// Counts requests by route and status (never by token or activation).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl ConnectState {
    pub fn new(client: Client, http: reqwest::Client, config: Arc<ConnectConfig>) -> Self {
        Self { client, http, config, provider_calls: Arc::new(Semaphore::new(PROVIDER_CALLS)), metrics: None }
    }

    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

/// `latchkey_connect_requests_total{route, status}`.
async fn count(State(state): State<ConnectState>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = match (req.method().as_str(), req.uri().path()) {
        ("GET", p) if p.starts_with("/connect/") => "connect_page",
        ("POST", p) if p.starts_with("/connect/") => "connect_submit",
        (_, "/oauth/callback") => "oauth_callback",
        _ => "other",
    };
    let res = next.run(req).await;
    if let Some(m) = &state.metrics {
        m.connect_requests
            .get_or_create(&crate::metrics::RouteLabel { route: route.into(), status: res.status().as_u16().to_string() })
            .inc();
    }
    res
}

pub fn router(state: ConnectState) -> Router {
    Router::new()
        .route("/connect/{token}", get(show).post(submit))
        .route("/oauth/callback", get(callback))
        .fallback(|| async {
            html(StatusCode::NOT_FOUND, pages::message("Latchkey", "Not found", "There is nothing here.", None, false), None)
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Headers on every answer: never cached, never framed, no referrer (the URL holds a bearer token), no sniffing.
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
        );
    }
    res
}

/// An HTML answer with its CSP: the page's stylesheet by hash; forms post to this server only, and may be
/// redirected on to `form_target` (the application's return URL).
fn html(status: StatusCode, body: String, form_target: Option<&str>) -> Response {
    let target =
        form_target.and_then(|u| url::Url::parse(u).ok()).map(|u| format!(" {}", u.origin().ascii_serialization())).unwrap_or_default();
    let csp = format!(
        "default-src 'none'; style-src {}; form-action 'self'{target}; frame-ancestors 'none'; base-uri 'none'",
        *pages::STYLE_HASH
    );
    let mut res = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        res.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    res
}

fn redirect(status: StatusCode, to: &str) -> Response {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(to) {
        h.insert(header::LOCATION, v);
    }
    (status, h).into_response()
}

/// A refusal: the status and a page saying what happened and what to do.
struct Refusal(StatusCode, &'static str, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        html(self.0, pages::message("Latchkey", self.1, &self.2, None, false), None)
    }
}

fn token_refusal(e: TokenError) -> Refusal {
    match e {
        TokenError::Expired => Refusal(StatusCode::GONE, "This link has expired", "Ask the application for a new connect link.".into()),
        TokenError::NoKey => {
            Refusal(StatusCode::SERVICE_UNAVAILABLE, "Not ready", "The connect service is starting; try again in a moment.".into())
        }
        _ => Refusal(
            StatusCode::BAD_REQUEST,
            "This link is not valid",
            "Check that you copied the whole link, or ask the application for a new one.".into(),
        ),
    }
}

fn used() -> Refusal {
    Refusal(
        StatusCode::GONE,
        "This link was already used",
        "Each connect link works once. Ask the application for a new one if you still need to connect.".into(),
    )
}

fn unavailable(what: &str) -> Refusal {
    Refusal(StatusCode::SERVICE_UNAVAILABLE, "Something went wrong", format!("{what} Nothing was saved; please try again in a moment."))
}

/// An activation with what it uses, read from the apiserver (any replica; no cache needed).
struct Resolved {
    ua: UserActivation,
    connector: Connector,
    connection: EmbeddedConnection,
    method: AuthMethod,
}

impl Resolved {
    fn display_name(&self) -> String {
        self.connector.spec.display_name.clone().unwrap_or_else(|| self.connector.name_any())
    }
    fn user(&self) -> String {
        self.ua.spec.user.display_name.clone().unwrap_or_else(|| self.ua.spec.user.id.clone())
    }
    /// The return URL, only when the connection allows it (no open redirect), with `status` added.
    fn return_url(&self, status: &str) -> Option<String> {
        let url = self.ua.spec.return_url.as_ref()?;
        if !self.connection.spec.allowed_return_urls.iter().any(|p| url.starts_with(p.as_str())) {
            return None;
        }
        let mut u = url::Url::parse(url).ok()?;
        u.query_pairs_mut().append_pair("status", status);
        Some(u.to_string())
    }
    fn oauth2(&self) -> Option<&OAuth2Method> {
        self.method.oauth2.as_ref()
    }
}

/// Reads the activation a verified token names and checks that the link is still the current one.
/// Verifies a connect token (before any I/O) and resolves what it points at; the answer to send when either fails.
async fn verify_and_resolve(st: &ConnectState, tok: &str) -> Result<(Claims, Resolved), Response> {
    let claims = st.config.keys.verify(tok, Utc::now()).map_err(|e| token_refusal(e).into_response())?;
    let r = resolve(st, &claims).await.map_err(IntoResponse::into_response)?;
    Ok((claims, r))
}

async fn resolve(st: &ConnectState, claims: &Claims) -> Result<Resolved, Refusal> {
    let api: Api<UserActivation> = Api::namespaced(st.client.clone(), &claims.namespace);
    let ua = api.get_opt(&claims.name).await.map_err(|e| {
        warn!(error = %e, "reading an activation for a connect link failed");
        unavailable("The connect service could not reach its storage.")
    })?;
    let Some(ua) = ua.filter(|u| u.uid().as_deref() == Some(claims.uid.as_str()) && u.metadata.deletion_timestamp.is_none()) else {
        return Err(Refusal(
            StatusCode::NOT_FOUND,
            "This connection no longer exists",
            "The application removed it. Ask it for a new connect link.".into(),
        ));
    };
    let current = ua.status.as_ref().and_then(|s| s.connect_nonce.as_deref()).unwrap_or("");
    if !token::ct_eq(current, &claims.nonce) {
        return Err(used());
    }
    let conn_ns = ua.connection_namespace().unwrap_or_default();
    let fail = |what: &str| {
        Refusal(
            StatusCode::NOT_FOUND,
            "This connection is not available",
            format!("{what}. Ask the application to check its configuration."),
        )
    };
    let connection = Api::<EmbeddedConnection>::namespaced(st.client.clone(), &conn_ns)
        .get_opt(&ua.spec.connection_ref.name)
        .await
        .map_err(|_| unavailable("The connect service could not reach its storage."))?
        .ok_or_else(|| fail("The connection was removed"))?;
    let connector = Api::<Connector>::namespaced(st.client.clone(), &conn_ns)
        .get_opt(&connection.spec.connector_ref.name)
        .await
        .map_err(|_| unavailable("The connect service could not reach its storage."))?
        .ok_or_else(|| fail("The connector was removed"))
        .map(|mut c| {
            crate::providers::resolve(&mut c.spec);
            c
        })?;
    let method = connector
        .auth_method(&connection.spec.auth_method)
        .cloned()
        .ok_or_else(|| fail("The connection's sign-in method does not exist"))?;
    Ok(Resolved { ua, connector, connection, method })
}

fn fields(kind: AuthKind) -> &'static [Field] {
    const API_KEY: &[Field] = &[Field { name: keys::API_KEY, label: "API key", secret: true, autocomplete: "off" }];
    const BASIC: &[Field] = &[
        Field { name: keys::USERNAME, label: "Username", secret: false, autocomplete: "username" },
        Field { name: keys::PASSWORD, label: "Password", secret: true, autocomplete: "current-password" },
    ];
    const CLIENT: &[Field] = &[
        Field { name: keys::CLIENT_ID, label: "Client ID", secret: false, autocomplete: "off" },
        Field { name: keys::CLIENT_SECRET, label: "Client secret", secret: true, autocomplete: "off" },
    ];
    match kind {
        AuthKind::ApiKey => API_KEY,
        AuthKind::Basic => BASIC,
        AuthKind::OAuth2ClientCredentials => CLIENT,
        AuthKind::OAuth2AuthorizationCode | AuthKind::None => &[],
    }
}

/// `GET /connect/{token}`: the form, or the redirect to the provider's consent page. Changes nothing.
async fn show(State(st): State<ConnectState>, Path(tok): Path<String>) -> Response {
    let (claims, r) = match verify_and_resolve(&st, &tok).await {
        Ok(v) => v,
        Err(refused) => return refused,
    };
    let kind = r.method.kind();
    if kind != AuthKind::OAuth2AuthorizationCode {
        let action = format!("/connect/{tok}");
        return html(
            StatusCode::OK,
            pages::form(&r.display_name(), &r.user(), &action, fields(kind), &[], None),
            r.ua.spec.return_url.as_deref(),
        );
    }
    let Some(m) = r.oauth2() else { return unavailable("The connector is misconfigured.").into_response() };
    let app =
        match oauth::organisation_app(&st.client, &r.connector.namespace().unwrap_or_default(), m, Some(st.config.redirect_uri())).await {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, connector = %r.connector.name_any(), "cannot start an authorization");
                return unavailable("The connector's OAuth app is not configured.").into_response();
            }
        };
    let state_claims = Claims { exp: claims.exp.min((Utc::now() + STATE_TTL).timestamp()), ..claims };
    let keys = st.config.keys.clone();
    let mut sealed = Err(TokenError::NoKey);
    let req = app.authorization_url(m.pkce, &m.authorization_params, |verifier| {
        sealed = keys.seal_state(&state_claims, verifier);
        sealed.clone().unwrap_or_default()
    });
    match (req, sealed) {
        (Ok(req), Ok(_)) => redirect(StatusCode::FOUND, &req.url),
        (Err(e), _) => {
            warn!(error = %e, connector = %r.connector.name_any(), "cannot build the authorization URL");
            unavailable("The connector's OAuth settings are invalid.").into_response()
        }
        (_, Err(e)) => token_refusal(e).into_response(),
    }
}

/// `POST /connect/{token}`: checks and stores the credential the user typed, then sends them back.
async fn submit(State(st): State<ConnectState>, Path(tok): Path<String>, Form(form): Form<HashMap<String, String>>) -> Response {
    let (claims, r) = match verify_and_resolve(&st, &tok).await {
        Ok(v) => v,
        Err(refused) => return refused,
    };
    let kind = r.method.kind();
    if kind == AuthKind::OAuth2AuthorizationCode {
        return Refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "Use the sign-in page",
            "This connection signs in at the provider; open the link again.".into(),
        )
        .into_response();
    }
    let value = |k: &str| form.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let again = |error: &str, status: StatusCode| {
        let kept: Vec<(&str, String)> =
            fields(kind).iter().filter(|f| !f.secret).filter_map(|f| value(f.name).map(|v| (f.name, v))).collect();
        html(
            status,
            pages::form(&r.display_name(), &r.user(), &format!("/connect/{tok}"), fields(kind), &kept, Some(error)),
            r.ua.spec.return_url.as_deref(),
        )
    };
    let missing: Vec<&str> = fields(kind).iter().filter(|f| value(f.name).is_none()).map(|f| f.label).collect();
    if !missing.is_empty() {
        return again(&format!("Please fill in: {}.", missing.join(", ")), StatusCode::UNPROCESSABLE_ENTITY);
    }
    let _permit = st.provider_calls.acquire().await;
    let now = Utc::now();
    let mut lifetime = None;
    let credential = match kind {
        AuthKind::ApiKey => Credential::ApiKey { key: Sensitive::new(value(keys::API_KEY).unwrap_or_default()) },
        AuthKind::Basic => Credential::Basic {
            username: value(keys::USERNAME).unwrap_or_default(),
            password: Sensitive::new(value(keys::PASSWORD).unwrap_or_default()),
        },
        _ => {
            // Client credentials: fetching a token is the check.
            let Some(m) = r.oauth2() else { return unavailable("The connector is misconfigured.").into_response() };
            let (id, secret) = (value(keys::CLIENT_ID).unwrap_or_default(), Sensitive::new(value(keys::CLIENT_SECRET).unwrap_or_default()));
            match oauth::tenant_client(m, &id, &secret).client_credentials(&st.http).await {
                Ok(set) => {
                    let prev = OAuth2Tokens { client_id: Some(id), client_secret: Some(secret), ..Default::default() };
                    lifetime = Some(set.expires_in.unwrap_or_else(|| oauth::default_lifetime(m)));
                    let exp = oauth::expiry(m, set.expires_in, now);
                    Credential::OAuth2(oauth::tokens_from(set, exp, Some(&prev)))
                }
                Err(OAuthError::Rejected { .. } | OAuthError::InvalidGrant { .. }) => {
                    return again(
                        &format!("{} did not accept this client ID and secret. Check them and try again.", r.display_name()),
                        StatusCode::UNPROCESSABLE_ENTITY,
                    );
                }
                Err(e) => {
                    warn!(error = %e, connector = %r.connector.name_any(), "client-credentials check failed");
                    return unavailable(&format!("{} could not be reached.", r.display_name())).into_response();
                }
            }
        }
    };
    if matches!(credential, Credential::ApiKey { .. } | Credential::Basic { .. }) {
        match verify::verify(&st.http, &r.connector, &r.method, &credential, &r.connector.spec.base_url).await {
            Ok(None | Some(Verdict::Valid)) => {}
            Ok(Some(Verdict::Rejected { status })) => {
                info!(activation = %r.ua.name_any(), namespace = %claims.namespace, status, "connect form: the provider rejected the credential");
                let what = if kind == AuthKind::ApiKey { "this API key" } else { "this username and password" };
                return again(
                    &format!("{} did not accept {what}. Check it and try again.", r.display_name()),
                    StatusCode::UNPROCESSABLE_ENTITY,
                );
            }
            Err(e) => {
                warn!(error = %e, connector = %r.connector.name_any(), "connect form: verification failed");
                return unavailable(&format!("{} could not be reached to check your credentials.", r.display_name())).into_response();
            }
        }
    }
    complete(&st, &r, &credential, lifetime, StatusCode::SEE_OTHER).await
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /oauth/callback?code&state`: exchanges the code and stores the tokens.
async fn callback(State(st): State<ConnectState>, Query(q): Query<CallbackQuery>) -> Response {
    let Some(state) = q.state.as_deref() else {
        return Refusal(
            StatusCode::BAD_REQUEST,
            "This sign-in is not valid",
            "The provider's answer lacks its state. Start again from the application.".into(),
        )
        .into_response();
    };
    let opened = match st.config.keys.open_state(state, Utc::now()) {
        Ok(s) => s,
        Err(TokenError::Expired) => {
            return Refusal(StatusCode::GONE, "This sign-in took too long", "Start again from the application.".into()).into_response();
        }
        Err(e) => return token_refusal(e).into_response(),
    };
    let r = match resolve(&st, &opened.claims).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let name = r.display_name();
    if let Some(error) = q.error.as_deref() {
        let (title, text, note) = if error == "access_denied" {
            (
                "You did not allow access",
                format!("{name} was not connected because access was declined. You can start again from the application."),
                "the user declined consent at the provider (access_denied)".to_string(),
            )
        } else {
            (
                "The sign-in failed",
                format!("{name} answered with an error. You can start again from the application."),
                format!("the provider answered the authorization with error {}", short_code(error)),
            )
        };
        // The link is spent either way; the reconcile publishes a fresh one and shows why.
        match claim_link(&st, &r.ua, Some(&note)).await {
            Ok(true) => {
                info!(activation = %r.ua.name_any(), namespace = %opened.claims.namespace, error = %short_code(error), "authorization refused at the provider")
            }
            Ok(false) => return used().into_response(),
            Err(e) => return e.into_response(),
        }
        let back = r.return_url("error");
        return html(StatusCode::OK, pages::message(&name, title, &text, back.as_deref(), false), None);
    }
    let Some(code) = q.code.as_deref().filter(|c| !c.is_empty() && c.len() <= 2048) else {
        return Refusal(
            StatusCode::BAD_REQUEST,
            "This sign-in is not valid",
            "The provider's answer lacks a code. Start again from the application.".into(),
        )
        .into_response();
    };
    let Some(m) = r.oauth2() else { return unavailable("The connector is misconfigured.").into_response() };
    let app =
        match oauth::organisation_app(&st.client, &r.connector.namespace().unwrap_or_default(), m, Some(st.config.redirect_uri())).await {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "cannot exchange an authorization code");
                return unavailable("The connector's OAuth app is not configured.").into_response();
            }
        };
    let _permit = st.provider_calls.acquire().await;
    let now = Utc::now();
    let set = match app.exchange_code(&st.http, code, opened.pkce_verifier.as_ref()).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, activation = %r.ua.name_any(), namespace = %opened.claims.namespace, "exchanging the authorization code failed");
            let status = if e.is_transient() { StatusCode::BAD_GATEWAY } else { StatusCode::BAD_REQUEST };
            return Refusal(
                status,
                "The sign-in could not be completed",
                format!("{name} did not accept the sign-in. Nothing was saved; start again from the application."),
            )
            .into_response();
        }
    };
    let lifetime = set.expires_in.unwrap_or_else(|| oauth::default_lifetime(m));
    let exp = oauth::expiry(m, set.expires_in, now);
    let credential = Credential::OAuth2(oauth::tokens_from(set, exp, None));
    complete(&st, &r, &credential, Some(lifetime), StatusCode::FOUND).await
}

fn short_code(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect()
}

/// Claims the link (nonce compare-and-swap), stores the credential, and sends the user back.
async fn complete(
    st: &ConnectState,
    r: &Resolved,
    credential: &Credential,
    lifetime: Option<std::time::Duration>,
    redirect_status: StatusCode,
) -> Response {
    match claim_link(st, &r.ua, None).await {
        Ok(true) => {}
        Ok(false) => return used().into_response(),
        Err(e) => return e.into_response(),
    }
    let timing = r.oauth2().zip(lifetime);
    let generation = match store(st, &r.ua, credential, timing).await {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    info!(activation = %r.ua.name_any(), namespace = %r.ua.namespace().unwrap_or_default(), generation, "credentials stored from the connect flow");
    match r.return_url("success") {
        Some(url) => redirect(redirect_status, &url),
        None => html(
            StatusCode::OK,
            pages::message(
                &r.display_name(),
                "Connected",
                &format!("Your {} account is connected. You can close this page.", r.display_name()),
                None,
                true,
            ),
            None,
        ),
    }
}

/// Rotates the activation's connect nonce if it is still the one read (resourceVersion precondition), dropping
/// the spent link. `Ok(false)`: another request completed the link first.
async fn claim_link(st: &ConnectState, ua: &UserActivation, connect_error: Option<&str>) -> Result<bool, Refusal> {
    let api: Api<UserActivation> = Api::namespaced(st.client.clone(), &ua.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": ua.resource_version() },
        "status": { "connectNonce": token::new_nonce(), "connectUrl": null, "connectUrlExpiresAt": null, "connectError": connect_error },
    });
    match api
        .patch_status(
            &ua.name_any(),
            &PatchParams { field_manager: Some(naming::CONNECT_FIELD_MANAGER.into()), ..Default::default() },
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            Err(Refusal(StatusCode::NOT_FOUND, "This connection no longer exists", "The application removed it.".into()))
        }
        Err(e) => {
            warn!(error = %e, "claiming a connect link failed");
            Err(unavailable("The connect service could not reach its storage."))
        }
    }
}

/// Writes the credential into the activation's owned Secret (server-side apply, `latchkey-connect`) as the next
/// credential generation. Never touches a Secret of that name that the activation does not own.
async fn store(
    st: &ConnectState,
    ua: &UserActivation,
    credential: &Credential,
    timing: Option<(&OAuth2Method, std::time::Duration)>,
) -> Result<u32, Refusal> {
    let ns = ua.namespace().unwrap_or_default();
    let name = naming::credentials_secret_name(ua);
    let api: Api<Secret> = Api::namespaced(st.client.clone(), &ns);
    let existing = api.get_metadata_opt(&name).await.map_err(|_| unavailable("The connect service could not reach its storage."))?;
    let uid = ua.uid().unwrap_or_default();
    if let Some(m) = &existing {
        if !naming::owned_by(m.metadata.owner_references.as_ref(), &uid) {
            warn!(secret = %name, namespace = %ns, "a Secret of the credentials' name exists and is not owned by the activation; not written");
            return Err(Refusal(
                StatusCode::CONFLICT,
                "This connection cannot be saved",
                "A conflicting item exists on the application's side. Ask it to check its configuration.".into(),
            ));
        }
    }
    let prev: u32 = existing
        .as_ref()
        .and_then(|m| m.metadata.annotations.as_ref())
        .and_then(|a| a.get(naming::GENERATION_ANNOTATION))
        .and_then(|g| g.parse().ok())
        .unwrap_or(0);
    let generation = prev + 1;
    let secret = owned_secret(ua, &name, credential, generation, timing);
    api.patch(&name, &PatchParams::apply(naming::CONNECT_FIELD_MANAGER).force(), &Patch::Apply(&secret)).await.map_err(|e| {
        warn!(error = %e, secret = %name, namespace = %ns, "writing the credentials Secret failed");
        unavailable("Your credentials could not be saved.")
    })?;
    Ok(generation)
}

/// The owned Secret for a credential: the labels, owner reference and annotations the reconciler's writes carry,
/// plus the token expiry for OAuth2.
pub fn owned_secret(
    ua: &UserActivation,
    name: &str,
    credential: &Credential,
    generation: u32,
    timing: Option<(&OAuth2Method, std::time::Duration)>,
) -> Secret {
    let data = credential.to_secret_data();
    let mut annotations = BTreeMap::from([
        (naming::DATA_HASH_ANNOTATION.to_string(), credentials::data_hash(&data)),
        (naming::GENERATION_ANNOTATION.to_string(), generation.to_string()),
    ]);
    if let (Credential::OAuth2(OAuth2Tokens { expires_at: Some(e), .. }), Some((m, lifetime))) = (credential, timing) {
        annotations.extend(oauth::timing_annotations(m, *e, lifetime, generation));
    }
    crate::controller::user_activation::owned_secret_object(ua, name, data, annotations)
}

/// Serves the connect server until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ConnectState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
