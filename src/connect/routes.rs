//! `GET/POST /connect/{token}` and `GET /oauth/callback`.
//!
//! Every handler checks the signed token or sealed `state` in memory first; only a valid one leads to I/O.
//! Opening a link (GET) changes nothing. Completing one (form POST, OAuth callback) needs the nonce in the
//! activation's status to still match. The replica that completes the link writes the owned Secret itself (field
//! manager `latchkey-connect`), and that write is the link's compare-and-swap: it carries a hash of the link's
//! nonce, and it is a create when no Secret was read or an apply over the resourceVersion read, so a link or
//! `state` stores credentials once across all replicas; a later attempt finds its hash on the Secret and is
//! refused. The leader's reconcile takes it from there and drops the spent link from status in the status write
//! it makes anyway. A first connection is one request to the apiserver, the Secret's create; a reconnection finds
//! the Secret there (409), reads its metadata and applies over it. Refusals that spend a link without credentials
//! (consent declined, an address outside allowedHosts) and links whose instance parameters go to status remove the
//! nonce from status instead, a compare-and-swap on the activation's resourceVersion ([`claim_link`]).
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::{Api, ResourceExt};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::ConnectConfig;
use super::limit::{Limiter, RateLimit};
use super::lookup::{Lookup, Refusal, Resolved, unavailable, used};
use super::pages::{Field, Look};
use super::quiet::Quiet;
use super::refusals::RefusalPages;
use super::token::{self, Claims, TokenError};
use crate::api::UserActivation;
use crate::api::connector::{AuthKind, OAuth2Method};
use crate::api::embedded_connection::Branding;
use crate::credentials::oauth::{self, OAuthError};
use crate::credentials::verify::{self, Verdict};
use crate::credentials::{self, Credential, OAuth2Tokens, Sensitive, keys};
use crate::instance;
use crate::naming;

/// Largest request body: a form with a few fields.
const MAX_BODY: usize = 16 * 1024;
/// Provider calls (token exchange, verification) in flight at once from this replica.
const PROVIDER_CALLS: usize = 32;
/// How long a `state` stays valid: the user's time at the provider's consent page.
const STATE_TTL: chrono::Duration = chrono::Duration::minutes(15);
/// At most one log line per connector this often about refused authorization codes (see [`super::quiet`]).
const REFUSED_CODE_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// What every handler and middleware reads, behind one `Arc`: axum clones the state for each layer and the handler
/// of every request, and a field-wise clone (the kube client's buffer, every reflector store, the HTTP client) cost
/// a fifth of the CPU of a refused request.
#[derive(Clone)]
pub struct ConnectState(Arc<Shared>);

#[derive(Clone)]
pub struct Shared {
    /// The activations, connections, connectors and OAuth apps links point at.
    pub lookup: Lookup,
    pub http: reqwest::Client,
    pub config: Arc<ConnectConfig>,
    pub provider_calls: Arc<Semaphore>,
    /// Requests per activation (after its link verified).
    pub limiter: Arc<Limiter>,
    /// The operator-wide brand; a connection's `spec.branding` wins field by field.
    pub brand: Arc<Branding>,
    /// The path the routes are served under: `""` or `/a[/b...]`.
    pub prefix: Arc<str>,
    /// Counts requests by route and status (never by token or activation).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The writes completing a link, told to this process's reconciler so that it waits until its stores show them.
    pub expect: Arc<crate::controller::expect::Expectations>,
    /// Refusal pages in the operator's brand, rendered once.
    pub refusals: Arc<RefusalPages>,
    /// Refused authorization codes, logged at most once per connector per [`REFUSED_CODE_LOG_EVERY`].
    pub refused_codes: Arc<Quiet>,
}

impl std::ops::Deref for ConnectState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl ConnectState {
    pub fn new(lookup: Lookup, http: reqwest::Client, config: Arc<ConnectConfig>) -> Self {
        Self(Arc::new(Shared {
            lookup,
            http,
            config,
            provider_calls: Arc::new(Semaphore::new(PROVIDER_CALLS)),
            limiter: Arc::new(Limiter::new(RateLimit::default())),
            brand: Arc::new(Branding::default()),
            prefix: Arc::from(""),
            metrics: None,
            expect: Default::default(),
            refusals: Arc::new(RefusalPages::new(&Branding::default())),
            refused_codes: Arc::new(Quiet::new(REFUSED_CODE_LOG_EVERY)),
        }))
    }

    /// The settings, to change before serving (a copy if the state is already shared).
    fn settings(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.0)
    }

    /// Shares the reconciler's expectations (see [`Shared::expect`]).
    pub fn with_expectations(mut self, expect: Arc<crate::controller::expect::Expectations>) -> Self {
        self.settings().expect = expect;
        self
    }

    /// Pages in this brand (see [`ConnectState::with_brand`]).
    pub fn with_brand(mut self, brand: Branding) -> Self {
        self.settings().refusals = Arc::new(RefusalPages::new(&brand));
        self.settings().brand = Arc::new(brand);
        self
    }

    /// Serves the routes under `prefix` (`""` or `/a[/b...]`) and nothing outside it.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.settings().prefix = Arc::from(prefix.trim_end_matches('/'));
        self
    }

    /// The look of a page: the connection's brand over the operator's.
    fn look(&self, r: Option<&Resolved>) -> Look {
        match r.and_then(|r| r.connection.spec.branding.as_ref()) {
            Some(b) => Look::new(&b.over(&self.brand)),
            None => Look::new(&self.brand),
        }
    }

    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.settings().limiter = Arc::new(Limiter::new(limit));
        self
    }

    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.settings().metrics = Some(metrics);
        self
    }
}

/// What every answer goes through, in one middleware (each axum middleware layer costs a boxed future and a clone
/// of the state per request): a refusal rendered in the operator's brand, the security headers, and
/// `latchkey_connect_requests_total{route, status}`.
async fn finish(State(state): State<ConnectState>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let path = req.uri().path();
    let route = match (req.method().as_str(), path.strip_prefix(&*state.prefix).unwrap_or(path)) {
        ("GET", p) if p.starts_with("/connect/") => "connect_page",
        ("POST", p) if p.starts_with("/connect/") => "connect_submit",
        (_, "/oauth/callback") => "oauth_callback",
        _ => "other",
    };
    let mut res = next.run(req).await;
    if let Some(refusal) = res.extensions_mut().remove::<Refusal>() {
        res = render_refusal(&state, refusal, res);
    }
    security_headers(res.headers_mut());
    if let Some(m) = &state.metrics {
        m.connect_requests.get_or_create(&crate::metrics::RouteLabel { route, status: res.status().as_u16() }).inc();
    }
    res
}

pub fn router(state: ConnectState) -> Router {
    let routes = Router::new().route("/connect/{token}", get(show).post(submit)).route("/oauth/callback", get(callback));
    let app = if state.prefix.is_empty() { routes } else { Router::new().nest(&state.prefix, routes) };
    app.fallback(|| async { Refusal(StatusCode::NOT_FOUND, "Not found", "There is nothing here.".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), finish))
        .with_state(state)
}

/// Headers on every answer: never cached, never framed, no referrer (the URL holds a bearer token), no sniffing.
fn security_headers(h: &mut HeaderMap) {
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
}

/// An HTML answer with its CSP: the page's stylesheets by hash, its logo's origin; forms post to this server only,
/// and may be redirected on to `form_target` (the application's return URL).
fn html(status: StatusCode, look: &Look, body: String, form_target: Option<&str>) -> Response {
    html_with_csp(status, body.into(), HeaderValue::from_str(&look.csp(form_target)).ok())
}

/// An HTML answer with a Content-Security-Policy already made (see [`html`]).
fn html_with_csp(status: StatusCode, body: axum::body::Body, csp: Option<HeaderValue>) -> Response {
    let mut res = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    if let Some(v) = csp {
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

/// A refusal is rendered by [`render_refusal`], which knows the brand: here it only carries itself along.
impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut res = self.0.into_response();
        res.extensions_mut().insert(self);
        res
    }
}

/// A refusal as a page in the operator's brand (kept in [`RefusalPages`]), with the headers the refusal's answer
/// carries (`Retry-After`).
fn render_refusal(st: &ConnectState, Refusal(status, title, text): Refusal, res: Response) -> Response {
    let mut page = html_with_csp(status, st.refusals.page(title, &text).into(), st.refusals.csp().cloned());
    for (k, v) in res.headers() {
        page.headers_mut().insert(k.clone(), v.clone());
    }
    page
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

/// 429 with `Retry-After` when the activation a verified link names has used its share of requests.
fn limited(st: &ConnectState, claims: &Claims) -> Result<(), Box<Response>> {
    let Err(wait) = st.limiter.check(&claims.uid, std::time::Instant::now()) else { return Ok(()) };
    let secs = (wait.as_secs_f64().ceil() as u64).max(1);
    let mut res = Refusal(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many attempts",
        format!("This link was opened too often in a short time. Wait {secs} seconds and try again.").into(),
    )
    .into_response();
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    Err(Box::new(res))
}

/// Verifies a connect token (before any I/O) and resolves what it points at; the answer to send when either fails.
async fn verify_and_resolve(st: &ConnectState, tok: &str) -> Result<(Claims, Resolved), Response> {
    let claims = st.config.keys.verify(tok, Utc::now()).map_err(|e| token_refusal(e).into_response())?;
    limited(st, &claims).map_err(|res| *res)?;
    let r = st.lookup.resolve(&claims).await.map_err(IntoResponse::into_response)?;
    Ok((claims, r))
}

fn fields(kind: AuthKind) -> &'static [Field<'static>] {
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

/// Form names and labels of the instance parameters the connect page asks for (`instance.<name>`).
fn instance_fields(c: &crate::api::Connector) -> Vec<(String, String)> {
    instance::connect_page_parameters(c)
        .map(|p| (format!("instance.{}", p.name), p.label.clone().unwrap_or_else(|| p.name.clone())))
        .collect()
}

/// The instance fields first, then the credential's.
fn all_fields(instance: &[(String, String)], kind: AuthKind) -> Vec<Field<'_>> {
    instance
        .iter()
        .map(|(n, l)| Field { name: n, label: l, secret: false, autocomplete: "off" })
        .chain(fields(kind).iter().map(|f| Field { name: f.name, label: f.label, secret: f.secret, autocomplete: f.autocomplete }))
        .collect()
}

/// `GET /connect/{token}`: the form (credentials and the instance fields), or the redirect to the provider's
/// consent page. Changes nothing.
async fn show(State(st): State<ConnectState>, Path(tok): Path<String>) -> Response {
    let (claims, r) = match verify_and_resolve(&st, &tok).await {
        Ok(v) => v,
        Err(refused) => return refused,
    };
    let kind = r.method().kind();
    let inst = instance_fields(&r.connector);
    if kind != AuthKind::OAuth2AuthorizationCode || !inst.is_empty() {
        let look = st.look(Some(&r));
        let page = look.form(&r.display_name(), &r.user(), &all_fields(&inst, kind), &[], None);
        return html(StatusCode::OK, &look, page, r.ua.spec.return_url.as_deref());
    }
    authorize(&st, &r, claims, &BTreeMap::new(), StatusCode::FOUND).await.unwrap_or_else(|e| e.into_response())
}

/// The parameter values the activation's spec and status give, plus `page` (entered now) and a token response's
/// fields.
fn instance_values(
    r: &Resolved,
    page: &BTreeMap<String, String>,
    token_response: &BTreeMap<String, Sensitive>,
) -> BTreeMap<String, String> {
    let known = r.ua.status.as_ref().map(|s| s.instance_parameters.clone()).unwrap_or_default();
    instance::values(&r.connector, &r.ua.spec.instance, &known, page, token_response)
}

/// What the user is told when their instance values cannot be used.
fn instance_problem(r: &Resolved, e: &instance::InstanceError) -> String {
    format!("{} cannot be connected at that address: {e}.", r.display_name())
}

/// Redirects to the provider's consent page with a sealed `state` (the claims, the PKCE verifier and the
/// connect-page parameters), at the authorization URL resolved for this tenant.
async fn authorize(
    st: &ConnectState,
    r: &Resolved,
    claims: Claims,
    page: &BTreeMap<String, String>,
    status: StatusCode,
) -> Result<Response, Refusal> {
    if r.oauth2().is_none() {
        return Err(unavailable("The connector is misconfigured."));
    }
    let values = instance_values(r, page, &BTreeMap::new());
    let (connector, method) = instance::resolve(&r.connector, r.method(), &values, false)
        .map_err(|e| Refusal(StatusCode::UNPROCESSABLE_ENTITY, "This address cannot be used", instance_problem(r, &e).into()))?;
    let Some(m) = method.oauth2.as_ref() else { return Err(unavailable("The connector is misconfigured.")) };
    let app = match st.lookup.organisation_app(&connector, m, &st.config.redirect_uri()).await {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, connector = %r.connector.name_any(), "cannot start an authorization");
            return Err(unavailable("The connector's OAuth app is not configured."));
        }
    };
    let state_claims = Claims { exp: claims.exp.min((Utc::now() + STATE_TTL).timestamp()), ..claims };
    let keys = st.config.keys.clone();
    let params = instance::remembered(&r.connector, page);
    let mut sealed = Err(TokenError::NoKey);
    let req = app.authorization_url(m.pkce, &m.authorization_params, |verifier| {
        sealed = keys.seal_state_with(&state_claims, verifier, &params);
        sealed.clone().unwrap_or_default()
    });
    match (req, sealed) {
        (Ok(req), Ok(_)) => Ok(redirect(status, &req.url)),
        (Err(e), _) => {
            warn!(error = %e, connector = %r.connector.name_any(), "cannot build the authorization URL");
            Err(unavailable("The connector's OAuth settings are invalid."))
        }
        (_, Err(e)) => Err(token_refusal(e)),
    }
}

/// `POST /connect/{token}`: checks and stores the credential the user typed, then sends them back; for OAuth2
/// with instance fields, takes those and redirects to the provider.
async fn submit(State(st): State<ConnectState>, Path(tok): Path<String>, Form(form): Form<HashMap<String, String>>) -> Response {
    let (claims, r) = match verify_and_resolve(&st, &tok).await {
        Ok(v) => v,
        Err(refused) => return refused,
    };
    let kind = r.method().kind();
    let inst = instance_fields(&r.connector);
    if kind == AuthKind::OAuth2AuthorizationCode && inst.is_empty() {
        return Refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "Use the sign-in page",
            "This connection signs in at the provider; open the link again.".into(),
        )
        .into_response();
    }
    let shown = all_fields(&inst, kind);
    let value = |k: &str| form.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let again = |error: &str, status: StatusCode| {
        let kept: Vec<(&str, String)> = shown.iter().filter(|f| !f.secret).filter_map(|f| value(f.name).map(|v| (f.name, v))).collect();
        let look = st.look(Some(&r));
        let page = look.form(&r.display_name(), &r.user(), &shown, &kept, Some(error));
        html(status, &look, page, r.ua.spec.return_url.as_deref())
    };
    let missing: Vec<&str> = shown.iter().filter(|f| value(f.name).is_none()).map(|f| f.label).collect();
    if !missing.is_empty() {
        return again(&format!("Please fill in: {}.", missing.join(", ")), StatusCode::UNPROCESSABLE_ENTITY);
    }
    let page: BTreeMap<String, String> = instance::connect_page_parameters(&r.connector)
        .filter_map(|p| value(&format!("instance.{}", p.name)).map(|v| (p.name.clone(), v)))
        .collect();
    if kind == AuthKind::OAuth2AuthorizationCode {
        return match authorize(&st, &r, claims, &page, StatusCode::SEE_OTHER).await {
            Ok(res) => res,
            Err(Refusal(StatusCode::UNPROCESSABLE_ENTITY, _, text)) => again(&text, StatusCode::UNPROCESSABLE_ENTITY),
            Err(e) => e.into_response(),
        };
    }
    // The tenant's address, checked against allowedHosts before anything is sent (the token response of a
    // client-credentials method may still fill the base URL).
    let mut values = instance_values(&r, &page, &BTreeMap::new());
    let (connector, method) = match instance::resolve(&r.connector, r.method(), &values, kind != AuthKind::OAuth2ClientCredentials) {
        Ok(x) => x,
        Err(e) => {
            info!(activation = %r.ua.name_any(), namespace = %claims.namespace, error = %e, "connect form: instance address refused");
            return again(&instance_problem(&r, &e), StatusCode::UNPROCESSABLE_ENTITY);
        }
    };
    // Bounds the calls to the provider only: the apiserver writes that complete the link run without it.
    let permit = st.provider_calls.acquire().await;
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
            let Some(m) = method.oauth2.as_ref() else { return unavailable("The connector is misconfigured.").into_response() };
            let (id, secret) = (value(keys::CLIENT_ID).unwrap_or_default(), Sensitive::new(value(keys::CLIENT_SECRET).unwrap_or_default()));
            match oauth::tenant_client(m, &id, &secret).with_timeout(connector.timeout()).client_credentials(&st.http).await {
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
    if let Credential::OAuth2(t) = &credential {
        values = instance_values(&r, &page, &t.fields);
        if let Err(e) = instance::resolve(&r.connector, r.method(), &values, true) {
            return again(&instance_problem(&r, &e), StatusCode::UNPROCESSABLE_ENTITY);
        }
    }
    if matches!(credential, Credential::ApiKey { .. } | Credential::Basic { .. }) {
        match verify::verify(&st.http, &connector, &method, &credential, &connector.spec.base_url).await {
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
    drop(permit);
    let remembered = instance::remembered(&r.connector, &values);
    complete(&st, &r, &credential, lifetime, &remembered, StatusCode::SEE_OTHER).await
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
    if let Err(res) = limited(&st, &opened.claims) {
        return *res;
    }
    let r = match st.lookup.resolve(&opened.claims).await {
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
        match claim_link(&st, &r.ua, Some(&note), None).await {
            Ok(true) => {
                info!(activation = %r.ua.name_any(), namespace = %opened.claims.namespace, error = %short_code(error), "authorization refused at the provider")
            }
            Ok(false) => return used().into_response(),
            Err(e) => return e.into_response(),
        }
        let back = r.return_url("error");
        let look = st.look(Some(&r));
        return html(StatusCode::OK, &look, look.message(&name, title, &text, back.as_deref(), false), None);
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
    // The token URL for this tenant (from the parameters sealed in `state`), within allowedHosts.
    let method = match instance::resolve_method(&r.connector, r.method(), &instance_values(&r, &opened.params, &BTreeMap::new())) {
        Ok(x) => x,
        Err(e) => {
            return Refusal(StatusCode::UNPROCESSABLE_ENTITY, "This address cannot be used", instance_problem(&r, &e).into())
                .into_response();
        }
    };
    let m = method.oauth2.as_ref().unwrap_or(m);
    let app = match st.lookup.organisation_app(&r.connector, m, &st.config.redirect_uri()).await {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "cannot exchange an authorization code");
            return unavailable("The connector's OAuth app is not configured.").into_response();
        }
    };
    // Bounds the calls to the provider only: held across the apiserver writes below, it capped completed callbacks
    // at PROVIDER_CALLS per apiserver round trip (27/s measured).
    let permit = st.provider_calls.acquire().await;
    let now = Utc::now();
    let exchanged = app.exchange_code(&st.http, code, opened.pkce_verifier.as_ref()).await;
    drop(permit);
    let set = match exchanged {
        Ok(s) => s,
        Err(e) => {
            // One line per connector per REFUSED_CODE_LOG_EVERY with the count held back since (see `quiet`).
            let connector = format!("{}/{}", r.connector.namespace().unwrap_or_default(), r.connector.name_any());
            if let Some(held_back) = st.refused_codes.admit(&connector, std::time::Instant::now()) {
                warn!(error = %e, %connector, activation = %r.ua.name_any(), namespace = %opened.claims.namespace, held_back, "exchanging the authorization code failed");
            }
            let status = if e.is_transient() { StatusCode::BAD_GATEWAY } else { StatusCode::BAD_REQUEST };
            return Refusal(
                status,
                "The sign-in could not be completed",
                format!("{name} did not accept the sign-in. Nothing was saved; start again from the application.").into(),
            )
            .into_response();
        }
    };
    // The tenant's base URL may come from the token response: outside allowedHosts, nothing is stored.
    let values = instance_values(&r, &opened.params, &set.fields);
    if let Err(e) = instance::resolve(&r.connector, r.method(), &values, true) {
        warn!(activation = %r.ua.name_any(), namespace = %opened.claims.namespace, error = %e, "the token response gives an address outside allowedHosts; nothing stored");
        let note = format!("{}: {e}", instance::INVALID_BASE_URL);
        return match claim_link(&st, &r.ua, Some(&note), None).await {
            Ok(true) => {
                let look = st.look(Some(&r));
                let page = look.message(
                    &name,
                    "This account cannot be connected",
                    &instance_problem(&r, &e),
                    r.return_url("error").as_deref(),
                    false,
                );
                html(StatusCode::UNPROCESSABLE_ENTITY, &look, page, None)
            }
            Ok(false) => used().into_response(),
            Err(e) => e.into_response(),
        };
    }
    let lifetime = set.expires_in.unwrap_or_else(|| oauth::default_lifetime(m));
    let exp = oauth::expiry(m, set.expires_in, now);
    let credential = Credential::OAuth2(oauth::tokens_from(set, exp, None));
    complete(&st, &r, &credential, Some(lifetime), &instance::remembered(&r.connector, &values), StatusCode::FOUND).await
}

fn short_code(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect()
}

/// Stores the credential, which completes the link (see [`store`]), and sends the user back. Where the user's
/// instance parameters must reach status first (the reconcile that the Secret triggers resolves the tenant's
/// address from them), the link is claimed on the activation before, together with the read of what holds the
/// Secret's name (the read changes nothing; its answer is used only once the claim has succeeded).
async fn complete(
    st: &ConnectState,
    r: &Resolved,
    credential: &Credential,
    lifetime: Option<std::time::Duration>,
    instance: &BTreeMap<String, String>,
    redirect_status: StatusCode,
) -> Response {
    let nonce = r.ua.status.as_ref().and_then(|s| s.connect_nonce.clone()).unwrap_or_default();
    let existing = if instance.is_empty() {
        // Not read first: a first connection (no Secret yet) is then one request; a Secret that exists turns the
        // create into a conflict, and `store` reads it then.
        Ok(None)
    } else {
        let (claimed, existing) = tokio::join!(claim_link(st, &r.ua, None, Some(instance)), secret_holding_the_name(st, &r.ua));
        match claimed {
            Ok(true) => {}
            Ok(false) => return used().into_response(),
            Err(e) => return e.into_response(),
        }
        existing
    };
    let timing = r.oauth2().zip(lifetime);
    let generation = match async { store(st, &r.ua, existing?, credential, timing, &nonce).await }.await {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    st.lookup.spend(&r.ua, &nonce);
    info!(activation = %r.ua.name_any(), namespace = %r.ua.namespace().unwrap_or_default(), generation, "credentials stored from the connect flow");
    match r.return_url("success") {
        Some(url) => redirect(redirect_status, &url),
        None => {
            let look = st.look(Some(r));
            let text = format!("Your {} account is connected. You can close this page.", r.display_name());
            html(StatusCode::OK, &look, look.message(&r.display_name(), "Connected", &text, None, true), None)
        }
    }
}

/// Removes the activation's connect nonce if it is still the one the link carries, dropping the spent link: a
/// merge patch with the read resourceVersion as precondition. Removed, not replaced: a field this writer set would
/// stay after the reconciler's server-side apply of status leaves it out, and no link is valid until the reconciler
/// publishes a new one. The copy read may come from a store that lags; when
/// the precondition fails the activation is read again and, if the nonce still matches, the swap is retried on
/// the fresh version. `Ok(false)`: another request completed the link first.
/// `instance`: the instance parameters the user entered or the token response gave, kept in status.
async fn claim_link(
    st: &ConnectState,
    ua: &UserActivation,
    connect_error: Option<&str>,
    instance: Option<&BTreeMap<String, String>>,
) -> Result<bool, Refusal> {
    let api: Api<UserActivation> = Api::namespaced(st.lookup.client().clone(), &ua.namespace().unwrap_or_default());
    let nonce = ua.status.as_ref().and_then(|s| s.connect_nonce.clone()).unwrap_or_default();
    let mut rv = ua.resource_version();
    for _ in 0..3 {
        let mut patch = serde_json::json!({
            "metadata": { "resourceVersion": rv },
            "status": { "connectNonce": null, "connectUrl": null, "connectUrlExpiresAt": null, "connectError": connect_error },
        });
        if let Some(i) = instance {
            patch["status"]["instanceParameters"] = serde_json::json!(i);
        }
        let pp = PatchParams { field_manager: Some(naming::CONNECT_FIELD_MANAGER.into()), ..Default::default() };
        match api.patch_status(&ua.name_any(), &pp, &Patch::Merge(&patch)).await {
            Ok(claimed) => {
                st.expect.status_written(ua, claimed.metadata.resource_version);
                return Ok(true);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {
                return Err(Refusal(StatusCode::NOT_FOUND, "This connection no longer exists", "The application removed it.".into()));
            }
            Err(e) => {
                warn!(error = %e, "claiming a connect link failed");
                return Err(unavailable("The connect service could not reach its storage."));
            }
        }
        let fresh = api.get_opt(&ua.name_any()).await.map_err(|e| {
            warn!(error = %e, "re-reading an activation to claim its link failed");
            unavailable("The connect service could not reach its storage.")
        })?;
        match fresh {
            Some(f)
                if f.metadata.uid == ua.metadata.uid
                    && f.metadata.deletion_timestamp.is_none()
                    && token::ct_eq(f.status.as_ref().and_then(|s| s.connect_nonce.as_deref()).unwrap_or(""), &nonce) =>
            {
                rv = f.resource_version();
            }
            _ => return Ok(false),
        }
    }
    Ok(false)
}

/// The metadata of the Secret holding the activation's credentials' name, if any (read from the apiserver: a store
/// may not show a foreign Secret created just now).
async fn secret_holding_the_name(st: &ConnectState, ua: &UserActivation) -> Result<Option<PartialObjectMeta<Secret>>, Refusal> {
    let api: Api<Secret> = Api::namespaced(st.lookup.client().clone(), &ua.namespace().unwrap_or_default());
    api.get_metadata_opt(&naming::credentials_secret_name(ua))
        .await
        .map_err(|_| unavailable("The connect service could not reach its storage."))
}

/// Writes the credential into the activation's owned Secret as the next credential generation after `existing`
/// (the Secret's metadata if read before; `None` when none was read or none exists), marked with the link's hash
/// ([`naming::CONNECT_LINK_ANNOTATION`]). The write is the link's compare-and-swap: a create when no Secret was
/// read, else a server-side apply (`latchkey-connect`) over the resourceVersion read. When the Secret exists or
/// another write came first (409), the Secret is read: if it carries this link's hash the link was used (`410`),
/// else the write is retried over the version read.
/// Never touches a Secret of that name that the activation does not own.
async fn store(
    st: &ConnectState,
    ua: &UserActivation,
    existing: Option<PartialObjectMeta<Secret>>,
    credential: &Credential,
    timing: Option<(&OAuth2Method, std::time::Duration)>,
    nonce: &str,
) -> Result<u32, Refusal> {
    let ns = ua.namespace().unwrap_or_default();
    let name = naming::credentials_secret_name(ua);
    let api: Api<Secret> = Api::namespaced(st.lookup.client().clone(), &ns);
    let uid = ua.uid().unwrap_or_default();
    let link = naming::link_hash(nonce);
    let mut existing = existing;
    for _ in 0..3 {
        let annotation = |key: &str| existing.as_ref().and_then(|m| m.metadata.annotations.as_ref()?.get(key).cloned());
        if annotation(naming::CONNECT_LINK_ANNOTATION).as_deref() == Some(link.as_str()) {
            return Err(used());
        }
        if let Some(m) = &existing
            && !naming::owned_by(m.metadata.owner_references.as_ref(), &uid)
        {
            warn!(secret = %name, namespace = %ns, "a Secret of the credentials' name exists and is not owned by the activation; not written");
            return Err(Refusal(
                StatusCode::CONFLICT,
                "This connection cannot be saved",
                "A conflicting item exists on the application's side. Ask it to check its configuration.".into(),
            ));
        }
        let prev: u32 = annotation(naming::GENERATION_ANNOTATION).and_then(|g| g.parse().ok()).unwrap_or(0);
        let generation = prev + 1;
        let mut secret = owned_secret(ua, &name, credential, generation, timing, &link);
        let written = match &existing {
            None => {
                let pp = PostParams { field_manager: Some(naming::CONNECT_FIELD_MANAGER.into()), ..Default::default() };
                api.create(&pp, &secret).await
            }
            Some(m) => {
                secret.metadata.resource_version = m.metadata.resource_version.clone();
                api.patch(&name, &PatchParams::apply(naming::CONNECT_FIELD_MANAGER).force(), &Patch::Apply(&secret)).await
            }
        };
        match written {
            Ok(w) => {
                st.expect.secret_written(ua, &name, w.metadata.resource_version);
                return Ok(generation);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                warn!(error = %e, secret = %name, namespace = %ns, "writing the credentials Secret failed");
                return Err(unavailable("Your credentials could not be saved."));
            }
        }
        existing = secret_holding_the_name(st, ua).await?;
    }
    warn!(secret = %name, namespace = %ns, "the credentials Secret kept changing under the write; not written");
    Err(unavailable("Your credentials could not be saved."))
}

/// The owned Secret for a credential stored through the link whose [`naming::link_hash`] is `link`: the labels,
/// owner reference and annotations the reconciler's writes carry, the link's hash, plus the token expiry for
/// OAuth2.
pub fn owned_secret(
    ua: &UserActivation,
    name: &str,
    credential: &Credential,
    generation: u32,
    timing: Option<(&OAuth2Method, std::time::Duration)>,
    link: &str,
) -> Secret {
    let data = credential.to_secret_data();
    let mut annotations = BTreeMap::from([
        (naming::DATA_HASH_ANNOTATION.to_string(), credentials::data_hash(&data)),
        (naming::GENERATION_ANNOTATION.to_string(), generation.to_string()),
        (naming::CONNECT_LINK_ANNOTATION.to_string(), link.to_string()),
    ]);
    if let (Credential::OAuth2(OAuth2Tokens { expires_at: Some(e), .. }), Some((m, lifetime))) = (credential, timing) {
        annotations.extend(oauth::timing_annotations(m, *e, lifetime, generation));
    }
    if let (Credential::OAuth2(t), Some((m, _))) = (credential, timing) {
        annotations.insert(oauth::GRANTED_SCOPE_ANNOTATION.to_string(), oauth::granted_scope(m, t.scope.as_deref()));
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
