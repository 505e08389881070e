//! The activation's side of the connect flow and of the OAuth2 token lifecycle.
//!
//! - While credentials are awaited from the user (or a dead grant needs consent again), `status.connectUrl`
//!   carries a signed link with a fresh nonce; it is renewed when it expires, with a requeue at that time. Stored
//!   credentials drop the link (the connect server's Secret write spent it). A link the connect server has claimed
//!   on the activation (link and nonce removed, no error: completions carrying instance parameters) is not
//!   replaced while its credentials are on their way to the owned Secret, for up to
//!   [`CLAIM_GRACE`](crate::controller::expect::CLAIM_GRACE).
//! - Stored OAuth2 tokens are refreshed at the `latchkey.dev/refresh-at` annotation of the owned Secret (set when
//!   the tokens were written: `expiresAt − min(refreshBefore, lifetime/2) − jitter`), requeued exactly then. The
//!   store holds Secret metadata only: the Secret's data is read at refresh time only. The rotated tokens are
//!   written with the read resourceVersion as precondition, never a forced apply. A refresh is not a credential
//!   change: the generation stays, so no Job starts.
//! - `invalid_grant` re-reads the Secret: a refresh token that changed meanwhile was a race; otherwise the grant
//!   is dead: `NeedsReauthorization`, a fresh link, an event. Network errors, 429 and 5xx back off exponentially
//!   with `consecutiveFailures`; the activation stays Ready while the stored access token is valid.
//! - A token request goes out from a task of its own; the reconcile waits for it up to `refresh_budget`. One it
//!   stops waiting for stays out (up to [`HARD_CAP`]), and no second one for that grant starts meanwhile
//!   ([`crate::controller::inflight`]); its late answer is kept and written by the reconcile it triggers.
//! - Deletion revokes at the provider, best effort and bounded (the finalizer is added only when the connector
//!   has a revocation URL and the Secret is to be deleted).
use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, warn};

use super::{Creds, annotation, decide::Admitted};
use crate::api::UserActivationStatus;
use crate::api::conditions::reasons;
use crate::api::connector::{AuthKind, OAuth2Method};
use crate::api::embedded_connection::{SecretDeletionPolicy, SuspendPolicy};
use crate::api::user_activation::Phase;
use crate::api::{UserActivation, parse_duration};
use crate::connect::token::{Claims, new_nonce};
use crate::controller::inflight::{HARD_CAP, Out};
use crate::controller::{Context, Error, Result, backoff_for};
use crate::credentials::oauth::{
    self, EXPIRES_AT_ANNOTATION, EXPIRY_GENERATION_ANNOTATION, OAuthClient, OAuthError, REFRESH_AT_ANNOTATION,
};
use crate::credentials::{self, Credential, OAuth2Tokens, Sensitive};
use crate::naming;
use crate::secret_record::SecretRecord;

/// The user declined consent at the provider; a new link is published.
pub const CONSENT_DECLINED: &str = "ConsentDeclined";
/// Field manager of the refresher's compare-and-swap writes of rotated tokens.
pub const REFRESH_FIELD_MANAGER: &str = "latchkey-refresh";
/// A connect link is renewed this long before it expires, so that a published link is never about to die.
const LINK_RENEW_BEFORE: chrono::Duration = chrono::Duration::seconds(30);

/// Whether the activation's method is OAuth2.
fn is_oauth(kind: AuthKind) -> bool {
    matches!(kind, AuthKind::OAuth2AuthorizationCode | AuthKind::OAuth2ClientCredentials)
}

/// Whether the credentials step ended in a dead grant (phase `NeedsReauthorization`).
pub(super) fn needs_reauth(creds: &Creds) -> bool {
    matches!(creds, Creds::Awaiting { reason, .. } if *reason == reasons::INVALID_GRANT || *reason == reasons::SCOPES_ADDED)
}

/// The token lifecycle and the connect link, after the credentials step. Takes the step's outcome and returns it,
/// changed where the tokens say otherwise (a dead grant, an expired token that cannot be refreshed now).
#[allow(clippy::too_many_arguments)]
pub(super) async fn lifecycle(
    ctx: &Context,
    ua: &UserActivation,
    adm: &Admitted<'_>,
    kind: AuthKind,
    secret_name: &str,
    owned: Option<&SecretRecord>,
    creds: Creds,
    status: &mut UserActivationStatus,
    requeue: &mut Option<Duration>,
    now: DateTime<Utc>,
) -> Result<Creds> {
    // Suspended with StopRefresh: no token requests until it resumes (the stored refresh token then serves).
    let frozen = ua.spec.suspend && adm.connection.spec.suspend_policy == SuspendPolicy::StopRefresh;
    let creds = match (creds, adm.method.oauth2.as_ref()) {
        (Creds::Stored { generation, verified }, Some(_)) if is_oauth(kind) && frozen => {
            status.next_refresh_time = None;
            Creds::Stored { generation, verified }
        }
        (Creds::Stored { generation, verified }, Some(m)) if is_oauth(kind) => {
            tokens(ctx, ua, adm, m, kind, secret_name, owned, generation, verified, status, requeue, now).await?
        }
        (c, _) => c,
    };
    match &creds {
        Creds::Awaiting { reason, .. }
            if *reason == reasons::AWAITING_USER || *reason == reasons::INVALID_GRANT || *reason == reasons::SCOPES_ADDED =>
        {
            // The user has just completed the link: the Secret write that follows the claim triggers the next
            // reconcile; a new link now would be withdrawn a moment later (two status writes).
            if link_claimed(ctx, ua)
                && let Some(wait) = ctx.expect.claim_wait(ua, std::time::Instant::now())
            {
                *requeue = min(*requeue, wait);
                return Ok(creds);
            }
            ctx.expect.claim_settled(ua);
            if let Some(at) = publish_link(ctx, ua, adm, status, now) {
                *requeue = min(*requeue, until(at, now));
            }
            if *reason == reasons::AWAITING_USER
                && let Some(e) = status.connect_error.clone()
            {
                // The connect server refused an address outside allowedHosts, or the user declined.
                let (reason, e) = match e.strip_prefix(&format!("{}: ", crate::instance::INVALID_BASE_URL)) {
                    Some(rest) => (crate::instance::INVALID_BASE_URL, rest.to_string()),
                    None => (CONSENT_DECLINED, e),
                };
                return Ok(Creds::Awaiting { reason, message: format!("{e}; a new link is in status.connectUrl") });
            }
        }
        Creds::Stored { .. } => {
            ctx.expect.claim_settled(ua);
            status.connect_url = None;
            status.connect_url_expires_at = None;
            status.connect_nonce = None;
            status.connect_error = None;
        }
        _ => {}
    }
    Ok(creds)
}

/// Whether the activation, as read, shows a link the connect server has just claimed: awaiting the user, without a
/// link, a nonce or an error (the claim removes the first two; a failed attempt sets the error; the reconciler never
/// leaves an activation awaiting the user without a link when it can sign one).
fn link_claimed(ctx: &Context, ua: &UserActivation) -> bool {
    ctx.connect.is_some()
        && ua.status.as_ref().is_some_and(|s| {
            matches!(s.phase, Some(Phase::AwaitingUser | Phase::NeedsReauthorization))
                && s.connect_url.is_none()
                && s.connect_nonce.is_none()
                && s.connect_error.is_none()
        })
}

fn min(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn until(t: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (t - now).to_std().unwrap_or(Duration::ZERO) + Duration::from_millis(20)
}

/// Publishes a connect link with a fresh nonce unless the current one is still good. Returns when to renew it.
fn publish_link(
    ctx: &Context,
    ua: &UserActivation,
    adm: &Admitted<'_>,
    status: &mut UserActivationStatus,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let cfg = ctx.connect.as_ref()?;
    let good = status.connect_url.is_some()
        && status.connect_nonce.is_some()
        && status.connect_url_expires_at.is_some_and(|e| e - LINK_RENEW_BEFORE > now);
    if !good {
        let ttl = adm.connection.spec.connect_url_ttl.as_deref().and_then(parse_duration).unwrap_or(Duration::from_secs(24 * 3600));
        let exp = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(24));
        let nonce = new_nonce();
        let claims = Claims {
            namespace: ua.namespace().unwrap_or_default(),
            name: ua.name_any(),
            uid: ua.uid().unwrap_or_default(),
            nonce: nonce.clone(),
            exp: exp.timestamp(),
        };
        match cfg.keys.sign(&claims) {
            Ok(t) => {
                status.connect_url = Some(cfg.connect_url(&t));
                status.connect_url_expires_at = DateTime::from_timestamp(exp.timestamp(), 0);
                status.connect_nonce = Some(nonce);
            }
            Err(e) => {
                warn!(error = %e, "cannot sign a connect link");
                return None;
            }
        }
    }
    status.connect_url_expires_at.map(|e| e - LINK_RENEW_BEFORE)
}

fn time(secret: Option<&SecretRecord>, key: &str) -> Option<DateTime<Utc>> {
    annotation(secret, key).and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
}

/// The token timing an owned Secret's annotations give, if they belong to this generation.
fn timing(secret: Option<&SecretRecord>, generation: u32) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    if annotation(secret, EXPIRY_GENERATION_ANNOTATION).and_then(|g| g.parse::<u32>().ok()) != Some(generation) {
        return None;
    }
    Some((time(secret, EXPIRES_AT_ANNOTATION)?, time(secret, REFRESH_AT_ANNOTATION)?))
}

/// Refreshes when due; otherwise reports the timing in status and requeues at the refresh time.
#[allow(clippy::too_many_arguments)]
async fn tokens(
    ctx: &Context,
    ua: &UserActivation,
    adm: &Admitted<'_>,
    m: &OAuth2Method,
    kind: AuthKind,
    secret_name: &str,
    owned: Option<&SecretRecord>,
    generation: u32,
    verified: Option<bool>,
    status: &mut UserActivationStatus,
    requeue: &mut Option<Duration>,
    now: DateTime<Utc>,
) -> Result<Creds> {
    let stored = Creds::Stored { generation, verified };
    // The connector asks for scopes this user's grant lacks: consent again; never run with less than asked.
    if kind == AuthKind::OAuth2AuthorizationCode
        && let Some(granted) = annotation(owned, oauth::GRANTED_SCOPE_ANNOTATION)
    {
        let missing = oauth::missing_scopes(m, granted);
        if !missing.is_empty() {
            status.next_refresh_time = None;
            return Ok(Creds::Awaiting {
                reason: reasons::SCOPES_ADDED,
                message: format!(
                    "the connector now asks for scope(s) {} that this user's grant lacks: the user has to connect again through status.connectUrl",
                    missing.join(", ")
                ),
            });
        }
    }
    // A grant already found dead stays dead until new credentials arrive (a new generation).
    let dead = crate::api::conditions::find(&status.conditions, crate::api::conditions::types::READY)
        .is_some_and(|c| c.reason == reasons::INVALID_GRANT);
    if status.phase == Some(Phase::NeedsReauthorization) && status.credential_generation == generation && dead {
        return Ok(dead_grant(status));
    }
    let uid = ua.uid().unwrap_or_default();
    // An answer is kept (its write failed, or it came after the reconcile stopped waiting): write it now, whatever
    // the refresh time or the backoff say.
    let kept = ctx.rescued.holds(&uid);
    // Backing off after a failed refresh: a watch event (our own status write among them) does not retry early.
    if !kept
        && status.consecutive_failures > 0
        && let Some(next) = status.next_refresh_time.filter(|t| *t > now)
    {
        *requeue = min(*requeue, until(next, now));
        let expires_at = timing(owned, generation).map(|(e, _)| e).or(status.expires_at);
        return Ok(hold(status, requeue, expires_at, now, ctx.inflight.peek(&uid).as_ref(), stored));
    }
    // A refresh asked for with the refresh-now annotation (a new value): due now, once.
    // Handled is recorded in status and on the owned Secret (whose store copy is fresh after a refresh wrote it).
    let handled_on_secret = annotation(owned, naming::REFRESH_NOW_ANNOTATION);
    let forced = ua
        .annotations()
        .get(naming::REFRESH_NOW_ANNOTATION)
        .filter(|v| status.refresh_now_handled.as_ref() != Some(*v) && handled_on_secret != Some(v.as_str()))
        .cloned();
    if let (Some(v), None) = (handled_on_secret, &forced)
        && ua.annotations().get(naming::REFRESH_NOW_ANNOTATION).map(String::as_str) == Some(v)
    {
        status.refresh_now_handled = Some(v.to_string());
    }
    if let Some(v) = &forced {
        status.refresh_now_handled = Some(v.clone());
        info!(activation = %ua.name_any(), namespace = %ua.namespace().unwrap_or_default(), "refresh requested by annotation");
    }
    // Not due (unless asked for): the timing a Secret's annotations give, reported with a requeue at its refresh time.
    let not_due =
        |secret: Option<&SecretRecord>| timing(secret, generation).filter(|(_, refresh_at)| forced.is_none() && *refresh_at > now);
    let wait = |status: &mut UserActivationStatus, requeue: &mut Option<Duration>, (expires_at, refresh_at)| {
        report(status, expires_at, refresh_at);
        *requeue = min(*requeue, until(refresh_at, now));
    };
    // Not due by the store's metadata: nothing to read.
    if !kept && let Some(t) = not_due(owned) {
        wait(status, requeue, t);
        return Ok(stored);
    }
    // Due (or timing unknown): read the Secret itself, which also guards against a stale store.
    let ns = ua.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(secret) = api.get_opt(secret_name).await.map_err(Error::kube("reading the credentials Secret for a refresh"))? else {
        return Ok(stored);
    };
    if !kept && let Some(t) = not_due(Some(&SecretRecord::owned(&secret.metadata))) {
        wait(status, requeue, t);
        return Ok(stored);
    }
    let data = secret.data.clone().unwrap_or_default();
    let current = match Credential::from_secret_data(kind, &data) {
        Ok(Credential::OAuth2(t)) => t,
        _ => {
            return Ok(Creds::Unusable {
                reason: reasons::SOURCE_SECRET_INVALID,
                message: format!("Secret {secret_name} holds no usable OAuth2 tokens"),
                rejected: false,
            });
        }
    };
    let to_write = Write { api: &api, secret, m, generation, forced: forced.as_deref() };
    // A refresh of this grant got the provider's answer earlier but could not write it (or got it late), and the
    // Secret still holds the refresh token that answer replaced: write the kept answer; asking again with a
    // rotated-out refresh token would cost the grant.
    if let Some(kept) = ctx.rescued.applicable(&uid, current.refresh_token.as_ref()) {
        info!(activation = %ua.name_any(), namespace = %ns, "writing the tokens an earlier refresh got before its write failed or after its reconcile stopped waiting");
        let answer = Answer { replaced: kept.replaced, tokens: kept.tokens, lifetime: kept.lifetime, answered_at: kept.answered_at };
        return answered(ctx, ua, adm, to_write, answer, true, status, requeue, stored).await;
    }
    // The kept answer was moot (the Secret changed meanwhile): back to the Secret's own timing.
    if let Some(t) = not_due(Some(&SecretRecord::owned(&to_write.secret.metadata))) {
        wait(status, requeue, t);
        return Ok(stored);
    }
    // The expiry the status reports (the Secret's annotation, to the millisecond; the data's copy has seconds).
    let expires_at = timing(Some(&SecretRecord::owned(&to_write.secret.metadata)), generation).map(|(e, _)| e).or(current.expires_at);
    // A request for this grant is still out: never a second one, which would present the refresh token the first
    // may have rotated out already (the provider would see reuse and revoke the grant). Its answer reconciles.
    if let Some(out) = ctx.inflight.out(&uid, current.refresh_token.as_ref()) {
        *requeue = min(*requeue, until(out.until, now));
        return Ok(hold(status, requeue, expires_at, now, Some(&out), stored));
    }
    let client = match refresh_client(ctx, adm, m, kind, &current).await {
        Ok(c) => c,
        Err(message) => {
            return Ok(failure(ctx, ua, status, requeue, &current, expires_at, now, reasons::CLIENT_SECRET_INVALID, message, stored));
        }
    };
    let Some(client) = client else {
        // Nothing to refresh with: the access token serves until it expires, then consent is needed.
        return match current.expires_at {
            Some(e) if e > now => {
                report(status, e, e);
                *requeue = min(*requeue, until(e, now));
                Ok(stored)
            }
            _ => Ok(declare_dead(ctx, ua, status, "the access token expired and there is no refresh token").await),
        };
    };
    let used = current.refresh_token.clone();
    let budget = refresh_budget(expires_at, status, Utc::now(), client.token_timeout());
    let result = match send(ctx, ua, m, kind, client, &current, budget).await {
        Sent::Answered(r) => r,
        Sent::StillOut(out) => {
            // The request may have taken its whole budget: judge the stored token by the time now.
            let now = Utc::now();
            *requeue = min(*requeue, until(out.until, now));
            let message = format!("refreshing the tokens failed: the token endpoint did not answer within {} ms", budget.as_millis());
            return Ok(failure(ctx, ua, status, requeue, &current, expires_at, now, reasons::PROVIDER_UNAVAILABLE, message, stored));
        }
    };
    let now = Utc::now();
    match result {
        Ok(answer) => {
            refreshed(ctx, "ok");
            answered(ctx, ua, adm, to_write, answer, false, status, requeue, stored).await
        }
        Err(OAuthError::InvalidGrant { .. }) => {
            refreshed(ctx, "invalid_grant");
            // Re-read: a refresh token that changed meanwhile means another writer won a race, not a dead grant.
            let again = api.get_opt(secret_name).await.map_err(Error::kube("re-reading the credentials Secret after invalid_grant"))?;
            let now_rt = again.and_then(|s| Credential::from_secret_data(kind, &s.data.unwrap_or_default()).ok()).and_then(|c| match c {
                Credential::OAuth2(t) => t.refresh_token,
                _ => None,
            });
            if now_rt != used {
                info!(activation = %ua.name_any(), namespace = %ns, "invalid_grant after a concurrent rotation; retrying with the stored token");
                *requeue = min(*requeue, Duration::from_millis(200));
                return Ok(stored);
            }
            Ok(declare_dead(ctx, ua, status, "the provider refused the refresh token (invalid_grant)").await)
        }
        Err(OAuthError::Rejected { code, .. }) if kind == AuthKind::OAuth2ClientCredentials => Ok(Creds::Unusable {
            reason: reasons::CREDENTIALS_REJECTED,
            message: format!("the provider rejected the client ID and secret ({code})"),
            rejected: true,
        }),
        Err(e) => {
            let reason = if e.is_transient() { reasons::PROVIDER_UNAVAILABLE } else { reasons::CLIENT_SECRET_INVALID };
            Ok(failure(ctx, ua, status, requeue, &current, expires_at, now, reason, format!("refreshing the tokens failed: {e}"), stored))
        }
    }
}

/// A provider's answer to a token request: fresh, or kept from a request whose write failed or whose reconcile had
/// stopped waiting.
struct Answer {
    /// The refresh token the request presented (what the Secret holds until the answer is written).
    replaced: Option<Sensitive>,
    tokens: OAuth2Tokens,
    /// The token lifetime the provider gave, for the refresh timing.
    lifetime: Duration,
    /// When the provider answered (the access token's expiry was computed from it).
    answered_at: DateTime<Utc>,
}

impl Answer {
    fn new(set: oauth::TokenSet, m: &OAuth2Method, current: &OAuth2Tokens, answered_at: DateTime<Utc>) -> Self {
        let lifetime = set.expires_in.unwrap_or_else(|| oauth::default_lifetime(m));
        let expires_at = oauth::expiry(m, set.expires_in, answered_at);
        Answer {
            replaced: current.refresh_token.clone(),
            tokens: oauth::tokens_from(set, expires_at, Some(current)),
            lifetime,
            answered_at,
        }
    }
}

/// Where an answer goes: the Secret as read (its resourceVersion is the write's precondition).
struct Write<'a> {
    api: &'a Api<Secret>,
    secret: Secret,
    m: &'a OAuth2Method,
    generation: u32,
    forced: Option<&'a str>,
}

/// The end of every refresh that got an answer: writes it (compare-and-swap), then reports it (failures reset,
/// `lastRefreshTime`, the new timing, an Event when it ends a run of failures). A fresh answer whose write fails is
/// kept for the next try; a kept one stays kept until written.
#[allow(clippy::too_many_arguments)]
async fn answered(
    ctx: &Context,
    ua: &UserActivation,
    adm: &Admitted<'_>,
    to: Write<'_>,
    answer: Answer,
    kept: bool,
    status: &mut UserActivationStatus,
    requeue: &mut Option<Duration>,
    stored: Creds,
) -> Result<Creds> {
    let uid = ua.uid().unwrap_or_default();
    remember_instance(adm, ua, status, &answer.tokens);
    let refresh_at = match write_rotated(to.api, to.secret, &answer.tokens, to.m, answer.lifetime, to.generation, to.forced).await {
        Ok(t) => t,
        Err(e) if kept => return Err(e),
        Err(e) => {
            // The provider may have rotated the refresh token already: keep its answer for the next try.
            warn!(activation = %ua.name_any(), namespace = %ua.namespace().unwrap_or_default(), error = %e, "the refreshed tokens could not be written; kept in memory for the next try");
            ctx.rescued.keep(&uid, answer.replaced, answer.tokens, answer.lifetime, answer.answered_at);
            return Err(e);
        }
    };
    if kept {
        ctx.rescued.written(&uid);
        refreshed(ctx, "rescued");
    }
    let recovered = status.consecutive_failures > 0;
    status.consecutive_failures = 0;
    status.last_refresh_time = Some(answer.answered_at);
    report(status, answer.tokens.expires_at.unwrap_or(answer.answered_at), refresh_at);
    *requeue = min(*requeue, until(refresh_at, Utc::now()));
    if recovered {
        event(ctx, ua, EventType::Normal, "TokenRefreshRecovered", "the provider answered again; tokens refreshed").await;
    }
    Ok(stored)
}

/// How a token request ended for the reconcile that sent it.
#[allow(clippy::large_enum_variant)] // one value per refresh, moved once: boxing the answer would buy nothing
enum Sent {
    Answered(std::result::Result<Answer, OAuthError>),
    /// The budget ran out first: the request is still out, carried by its task for up to [`HARD_CAP`].
    StillOut(Out),
}

/// Sends the token request (a refresh, or the client-credentials grant) from a task of its own and waits for it up
/// to `budget`. A request the reconcile stops waiting for is not dropped: the provider may have read it, and a
/// provider that rotates refresh tokens rotates when it processes it. Its task keeps the connection open for up to
/// [`HARD_CAP`], keeps a late answer in [`crate::controller::rescued::Rescued`] and reconciles the activation then;
/// until it ends, [`InFlight`](crate::controller::inflight::InFlight) stops a second request for the grant.
async fn send(
    ctx: &Context,
    ua: &UserActivation,
    m: &OAuth2Method,
    kind: AuthKind,
    client: OAuthClient,
    current: &OAuth2Tokens,
    budget: Duration,
) -> Sent {
    let uid = ua.uid().unwrap_or_default();
    let ticket = ctx.inflight.begin(&uid, current.refresh_token.clone(), Utc::now());
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    // The task's bound is the hard cap; the connector's timeout bounds how long the reconcile waits (`budget`).
    let client = client.with_timeout(Some(HARD_CAP));
    let (http, m, current) = (ctx.http.clone(), m.clone(), current.clone());
    let (inflight, rescued, triggers, activations) =
        (ctx.inflight.clone(), ctx.rescued.clone(), ctx.triggers.clone(), ctx.stores.activations.clone());
    let who = ObjectRef::from_obj(ua);
    let mine = ticket.clone();
    let task = tokio::spawn(async move {
        let result = match (kind, &current.refresh_token) {
            (AuthKind::OAuth2ClientCredentials, _) => client.client_credentials_within(&http, HARD_CAP).await,
            (_, Some(rt)) => client.refresh(&http, rt, HARD_CAP).await,
            (_, None) => unreachable_refresh(),
        };
        let result = result.map(|set| Answer::new(set, &m, &current, Utc::now()));
        let Err(late) = tx.send(result) else {
            inflight.end(&mine);
            return;
        };
        // The reconcile stopped waiting: a late answer is kept (before the entry ends, so that no reconcile in
        // between sends a second request), and the activation is reconciled to write it.
        let ns = who.namespace.clone().unwrap_or_default();
        match late {
            Ok(answer) if activations.get(&who).is_some_and(|a| a.uid().as_deref() == Some(uid.as_str())) => {
                info!(activation = %who.name, namespace = %ns, "a token request was answered after its reconcile stopped waiting; kept for the next reconcile");
                rescued.keep(&uid, answer.replaced, answer.tokens, answer.lifetime, answer.answered_at);
            }
            Ok(_) => info!(activation = %who.name, namespace = %ns, "a late token answer for a deleted activation was dropped"),
            Err(e) => {
                warn!(activation = %who.name, namespace = %ns, error = %e, "a token request its reconcile stopped waiting for failed")
            }
        }
        inflight.end(&mine);
        triggers.activation(who);
    });
    ctx.inflight.attach(&ticket, task.abort_handle());
    let answered = match tokio::time::timeout(budget, &mut rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(OAuthError::Transient("the token request ended without an answer".into())),
        Err(_) => {
            // Closed first: an answer sent before is read here; one sent after goes the task's late way.
            rx.close();
            match rx.try_recv() {
                Ok(r) => r,
                Err(_) => return Sent::StillOut(ticket.out().clone()),
            }
        }
    };
    ctx.inflight.end(&ticket);
    Sent::Answered(answered)
}

/// Says where the stored token stands while no request may go out (a backoff after a failure, or a request still
/// `out`): Ready while it is valid, with a look at its expiry, so that Ready turns False then.
fn hold(
    status: &UserActivationStatus,
    requeue: &mut Option<Duration>,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    out: Option<&Out>,
    stored: Creds,
) -> Creds {
    let retry = |what: &str| match out {
        Some(o) => o.describe(),
        None => format!("{what} is retried with backoff ({} failures so far)", status.consecutive_failures),
    };
    match expires_at {
        Some(e) if e > now => {
            *requeue = min(*requeue, until(e, now));
            stored
        }
        // Never had a token: keep saying what the provider answered last time.
        None => {
            let last = crate::api::conditions::find(&status.conditions, crate::api::conditions::types::READY)
                .filter(|c| c.message.starts_with("no access token yet"));
            let (reason, message) = last
                .map(|c| (reasons_of(&c.reason), c.message.clone()))
                .unwrap_or_else(|| (reasons::PROVIDER_UNAVAILABLE, format!("no access token yet; {}", retry("fetching"))));
            Creds::Unusable { reason, message, rejected: false }
        }
        _ => Creds::Unusable {
            reason: reasons::TOKEN_EXPIRED,
            message: format!("the access token expired; {}: check that the connector's tokenUrl answers", retry("refreshing")),
            rejected: false,
        },
    }
}

/// A refresh may bring a new instance address (Salesforce's instance_url): remembered in status, checked by the next
/// reconcile.
fn remember_instance(adm: &Admitted<'_>, ua: &UserActivation, status: &mut UserActivationStatus, tokens: &OAuth2Tokens) {
    if !adm.connector.spec.instance_parameters.is_empty() {
        let known = status.instance_parameters.clone();
        let values = crate::instance::values(adm.connector, &ua.spec.instance, &known, &BTreeMap::new(), &tokens.fields);
        status.instance_parameters = crate::instance::remembered(adm.connector, &values);
    }
}

/// A refresh after an access token has expired while status still says Ready gets this long: Ready must not stay
/// True for a whole token timeout past the expiry. The next attempt, after Ready has turned False, gets the full one.
const EXPIRED_BUDGET: Duration = Duration::from_secs(1);

/// How long a refresh may take: the stored access token's remaining life, at most `timeout` (the connector's
/// `spec.http.timeoutSeconds`, else [`oauth::TOKEN_TIMEOUT`]), so that a hung token endpoint cannot hold a
/// reconcile (and a Ready=True status) past the token's expiry.
fn refresh_budget(expires_at: Option<DateTime<Utc>>, status: &UserActivationStatus, now: DateTime<Utc>, timeout: Duration) -> Duration {
    let ready = crate::api::conditions::find(&status.conditions, crate::api::conditions::types::READY).is_some_and(|c| c.status == "True");
    match expires_at.map(|e| (e - now).to_std()) {
        Some(Ok(left)) => left.min(timeout),
        Some(Err(_)) if ready => EXPIRED_BUDGET.min(timeout),
        _ => timeout,
    }
}

fn unreachable_refresh() -> std::result::Result<oauth::TokenSet, OAuthError> {
    Err(OAuthError::Config("no refresh token".into()))
}

/// The client that refreshes: the organisation's app (authorization code, when there is a refresh token) or the
/// tenant's own client (client credentials). `Ok(None)`: nothing to refresh with.
async fn refresh_client(
    ctx: &Context,
    adm: &Admitted<'_>,
    m: &OAuth2Method,
    kind: AuthKind,
    t: &OAuth2Tokens,
) -> std::result::Result<Option<OAuthClient>, String> {
    if kind == AuthKind::OAuth2ClientCredentials {
        return match (&t.client_id, &t.client_secret) {
            (Some(id), Some(secret)) => Ok(Some(oauth::tenant_client(m, id, secret).with_timeout(adm.connector.timeout()))),
            _ => Ok(None),
        };
    }
    if t.refresh_token.is_none() {
        return Ok(None);
    }
    let redirect = ctx.connect.as_ref().map(|c| c.redirect_uri());
    oauth::organisation_app(&ctx.client, &adm.connector.namespace().unwrap_or_default(), m, redirect)
        .await
        .map(|c| Some(c.with_timeout(adm.connector.timeout())))
        .map_err(|e| e.to_string())
}

/// Writes rotated tokens with the read resourceVersion as precondition (a replace, never a forced apply). The
/// generation stays: a refresh is not a credential change. Returns the new refresh time.
#[allow(clippy::too_many_arguments)]
async fn write_rotated(
    api: &Api<Secret>,
    mut secret: Secret,
    tokens: &OAuth2Tokens,
    m: &OAuth2Method,
    lifetime: Duration,
    generation: u32,
    forced: Option<&str>,
) -> Result<DateTime<Utc>> {
    let data = Credential::OAuth2(tokens.clone()).to_secret_data();
    let expires_at = tokens.expires_at.unwrap_or_else(Utc::now);
    let mut annotations: BTreeMap<String, String> = secret.metadata.annotations.clone().unwrap_or_default();
    annotations.insert(naming::DATA_HASH_ANNOTATION.into(), credentials::data_hash(&data));
    let timing = oauth::timing_annotations(m, expires_at, lifetime, generation);
    let refresh_at = timing
        .iter()
        .find(|(k, _)| k == REFRESH_AT_ANNOTATION)
        .and_then(|(_, v)| DateTime::parse_from_rfc3339(v).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(expires_at);
    annotations.extend(timing);
    // The grant's scopes: what the provider answered, else what was recorded before, else what was asked.
    let granted = tokens.scope.clone().or_else(|| annotations.get(oauth::GRANTED_SCOPE_ANNOTATION).cloned());
    annotations.insert(oauth::GRANTED_SCOPE_ANNOTATION.into(), oauth::granted_scope(m, granted.as_deref()));
    if let Some(v) = forced {
        annotations.insert(naming::REFRESH_NOW_ANNOTATION.into(), v.into());
    }
    secret.metadata.annotations = Some(annotations);
    secret.metadata.managed_fields = None;
    secret.data = Some(data);
    let name = secret.name_any();
    // `replace` sends the read resourceVersion: a concurrent writer makes this fail with 409, never overwritten.
    api.replace(&name, &PostParams { field_manager: Some(REFRESH_FIELD_MANAGER.into()), ..Default::default() }, &secret)
        .await
        .map_err(Error::kube("writing the refreshed tokens"))?;
    Ok(refresh_at)
}

/// Status timing of the stored tokens: deterministic (from the Secret's annotations), so resyncs write nothing.
fn report(status: &mut UserActivationStatus, expires_at: DateTime<Utc>, refresh_at: DateTime<Utc>) {
    status.expires_at = Some(expires_at);
    status.next_refresh_time = Some(refresh_at);
}

/// Counts a refresh by its outcome.
fn refreshed(ctx: &Context, outcome: &str) {
    ctx.metrics.refreshes.get_or_create(&crate::metrics::OutcomeLabel { outcome: outcome.into() }).inc();
}

/// A failed refresh that may pass: exponential backoff by `consecutiveFailures`; Ready while the token (expiring
/// at `expires_at`) is valid, with a requeue at its expiry. When the request is still out (the reconcile stopped
/// waiting), the messages say so: no retry goes out until it ends.
#[allow(clippy::too_many_arguments)]
fn failure(
    ctx: &Context,
    ua: &UserActivation,
    status: &mut UserActivationStatus,
    requeue: &mut Option<Duration>,
    t: &OAuth2Tokens,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    reason: &'static str,
    message: String,
    stored: Creds,
) -> Creds {
    refreshed(ctx, "error");
    let out = ctx.inflight.peek(&ua.uid().unwrap_or_default());
    status.consecutive_failures = status.consecutive_failures.saturating_add(1);
    let delay = backoff_for(status.consecutive_failures);
    warn!(activation = %ua.name_any(), namespace = %ua.namespace().unwrap_or_default(), failures = status.consecutive_failures, retry_in = ?delay, error = %message, still_out = ?out.as_ref().map(Out::describe), "token refresh failed");
    *requeue = min(*requeue, delay);
    status.next_refresh_time = Some(now + chrono::Duration::from_std(delay).unwrap_or_default());
    let retry = match &out {
        Some(o) => o.describe(),
        None => format!("retried with backoff ({} failures so far)", status.consecutive_failures),
    };
    match expires_at {
        Some(e) if e > now => {
            status.expires_at = Some(e);
            // Ready turns False when the token expires, if no retry has succeeded by then.
            *requeue = min(*requeue, until(e, now));
            stored
        }
        // Never had a token (client credentials fetched for the first time): say what the provider answered.
        _ if t.access_token.is_empty() => {
            let message = match &out {
                Some(o) => format!("no access token yet: {message}; {}", o.describe()),
                None => format!("no access token yet: {message}"),
            };
            Creds::Unusable { reason, message, rejected: false }
        }
        _ => Creds::Unusable {
            reason: if reason == reasons::PROVIDER_UNAVAILABLE { reasons::TOKEN_EXPIRED } else { reason },
            message: format!("the access token expired and {message}; {retry}: check that the connector's tokenUrl answers"),
            rejected: false,
        },
    }
}

fn reasons_of(r: &str) -> &'static str {
    [reasons::CLIENT_SECRET_INVALID, reasons::PROVIDER_UNAVAILABLE].into_iter().find(|x| *x == r).unwrap_or(reasons::PROVIDER_UNAVAILABLE)
}

fn dead_grant(status: &UserActivationStatus) -> Creds {
    let _ = status;
    Creds::Awaiting {
        reason: reasons::INVALID_GRANT,
        message: "the provider no longer accepts this grant: the user has to connect again through status.connectUrl".into(),
    }
}

async fn declare_dead(ctx: &Context, ua: &UserActivation, status: &mut UserActivationStatus, why: &str) -> Creds {
    warn!(activation = %ua.name_any(), namespace = %ua.namespace().unwrap_or_default(), reason = why, "grant is dead; reauthorization needed");
    status.next_refresh_time = None;
    status.connect_url = None; // a fresh link with a fresh nonce
    event(ctx, ua, EventType::Warning, reasons::INVALID_GRANT, &format!("{why}: the user has to connect again through status.connectUrl"))
        .await;
    dead_grant(status)
}

async fn event(ctx: &Context, ua: &UserActivation, type_: EventType, reason: &str, note: &str) {
    let _ = ctx
        .recorder
        .publish(
            &Event { type_, reason: reason.into(), note: Some(note.into()), action: "RefreshTokens".into(), secondary: None },
            &ua.object_ref(&()),
        )
        .await;
}

/// Whether deleting the activation has something to revoke first.
pub(super) fn revocable(adm: &Admitted<'_>) -> bool {
    adm.connection.spec.secret_deletion_policy == SecretDeletionPolicy::Delete
        && adm.method.oauth2.as_ref().is_some_and(|m| m.revocation_url.is_some())
}

/// Revokes the activation's grant at the provider: best effort, bounded, never failing the deletion. A missing
/// Secret (e.g. its namespace is going away) means nothing to revoke.
pub(super) async fn revoke_on_delete(ctx: &Context, ua: &UserActivation) {
    let ns = ua.namespace().unwrap_or_default();
    let conn_ns = ua.connection_namespace().unwrap_or_default();
    let connection = ctx.stores.connections.get(&kube::runtime::reflector::ObjectRef::new(&ua.spec.connection_ref.name).within(&conn_ns));
    let connector = connection.as_ref().and_then(|connection| {
        ctx.stores.connectors.get(&kube::runtime::reflector::ObjectRef::new(&connection.spec.connector_ref.name).within(&conn_ns))
    });
    // The revocation's own bound (the connector's timeout, else 5 s) and a second for reading the Secrets.
    let limit = connector.as_ref().and_then(|c| c.timeout()).unwrap_or(oauth::REVOKE_TIMEOUT) + Duration::from_secs(1);
    let work = async {
        let (connection, connector) = (connection?, connector?);
        let method = connector.auth_method(&connection.spec.auth_method)?.clone();
        let m = method.oauth2.as_ref()?;
        m.revocation_url.as_ref()?;
        let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns).get_opt(&naming::credentials_secret_name(ua)).await.ok()??;
        if !naming::owned_by(secret.metadata.owner_references.as_ref(), &ua.uid().unwrap_or_default()) {
            return None;
        }
        let Ok(Credential::OAuth2(t)) = Credential::from_secret_data(method.kind(), &secret.data.unwrap_or_default()) else { return None };
        let client = match method.kind() {
            AuthKind::OAuth2ClientCredentials => oauth::tenant_client(m, t.client_id.as_deref()?, t.client_secret.as_ref()?),
            _ => oauth::organisation_app(&ctx.client, &conn_ns, m, None).await.ok()?,
        }
        .with_timeout(connector.timeout());
        let access = (!t.access_token.is_empty()).then_some(&t.access_token);
        Some(client.revoke(&ctx.http, t.refresh_token.as_ref(), access).await)
    };
    match tokio::time::timeout(limit, work).await {
        Ok(Some(Ok(true))) => info!(activation = %ua.name_any(), namespace = %ns, "revoked the grant at the provider"),
        Ok(Some(Ok(false))) | Ok(None) => {}
        Ok(Some(Err(e))) => warn!(activation = %ua.name_any(), namespace = %ns, error = %e, "revocation failed; deleting anyway"),
        Err(_) => warn!(activation = %ua.name_any(), namespace = %ns, "revocation timed out; deleting anyway"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_waits_for_the_connector_timeout_but_never_past_the_token_expiry() {
        let now = Utc::now();
        let status = UserActivationStatus::default();
        let three = Duration::from_secs(3);
        let in_secs = |s: i64| Some(now + chrono::Duration::seconds(s));
        assert_eq!(refresh_budget(in_secs(3600), &status, now, three), three, "the connector's timeout");
        assert_eq!(refresh_budget(in_secs(3600), &status, now, Duration::from_secs(120)), Duration::from_secs(120));
        assert_eq!(
            refresh_budget(in_secs(2), &status, now, Duration::from_secs(120)),
            Duration::from_secs(2),
            "capped at the token's life"
        );
        assert_eq!(refresh_budget(None, &status, now, three), three);
    }
}
