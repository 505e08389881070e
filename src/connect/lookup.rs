//! What a verified link points at, from the operator's reflector stores (no apiserver request on the hot path).
//!
//! The activation, its connection and its connector come from the stores the controllers keep (the connector
//! with its catalogue facts already filled in). A store lags the apiserver by a few milliseconds, so where the
//! store's copy disagrees with the link (an activation not yet seen, or an older nonce than the link carries)
//! the activation is read once from the apiserver before the link is refused: a fresh link always works, and
//! only a spent or stale link costs a GET (rate-limited per activation by the routes). Completing a link is a
//! compare-and-swap on the apiserver, never on the store's word.
//!
//! The organisation's OAuth app credentials (the connector's `clientSecretRef`) are read from the apiserver only
//! when the Secret's resourceVersion in the source-Secret store changed since they were last read.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::warn;

use super::token::{self, Claims};
use crate::api::connector::{AuthMethod, OAuth2Method};
use crate::api::{Connector, EmbeddedConnection, UserActivation};
use crate::credentials::Sensitive;
use crate::credentials::oauth::{self, AppClientError, OAuthClient};

/// Most OAuth apps whose credentials are kept (one per connector in practice); past it the cache starts over.
const MAX_APPS: usize = 1024;

/// An activation with what it uses.
pub struct Resolved {
    pub ua: Arc<UserActivation>,
    pub connector: Arc<Connector>,
    pub connection: Arc<EmbeddedConnection>,
    pub method: AuthMethod,
}

impl Resolved {
    pub fn display_name(&self) -> String {
        self.connector.spec.display_name.clone().unwrap_or_else(|| self.connector.name_any())
    }
    pub fn user(&self) -> String {
        self.ua.spec.user.display_name.clone().unwrap_or_else(|| self.ua.spec.user.id.clone())
    }
    /// The return URL, only when the connection allows it (no open redirect), with `status` added.
    pub fn return_url(&self, status: &str) -> Option<String> {
        let url = self.ua.spec.return_url.as_ref()?;
        if !self.connection.spec.allowed_return_urls.iter().any(|p| url.starts_with(p.as_str())) {
            return None;
        }
        let mut u = url::Url::parse(url).ok()?;
        u.query_pairs_mut().append_pair("status", status);
        Some(u.to_string())
    }
    pub fn oauth2(&self) -> Option<&OAuth2Method> {
        self.method.oauth2.as_ref()
    }
}

/// Why a link cannot be followed: a status and the page's title and text.
#[derive(Debug, Clone)]
pub struct Refusal(pub StatusCode, pub &'static str, pub String);

pub fn used() -> Refusal {
    Refusal(
        StatusCode::GONE,
        "This link was already used",
        "Each connect link works once. Ask the application for a new one if you still need to connect.".into(),
    )
}

pub fn unavailable(what: &str) -> Refusal {
    Refusal(StatusCode::SERVICE_UNAVAILABLE, "Something went wrong", format!("{what} Nothing was saved; please try again in a moment."))
}

fn gone() -> Refusal {
    Refusal(StatusCode::NOT_FOUND, "This connection no longer exists", "The application removed it. Ask it for a new connect link.".into())
}

fn storage() -> Refusal {
    unavailable("The connect service could not reach its storage.")
}

/// Reads links' targets from the stores; falls back to the apiserver only as described in the module docs.
/// (namespace, clientSecretRef name) → (the Secret's resourceVersion, client id, client secret).
type AppCache = HashMap<(String, String), (String, String, Option<Sensitive>)>;

#[derive(Clone)]
pub struct Lookup {
    client: kube::Client,
    stores: crate::controller::Stores,
    /// Set once every store has listed; before that every link gets 503 (never a wrong 404).
    ready: Arc<std::sync::atomic::AtomicBool>,
    /// Per clientSecretRef: the Secret's resourceVersion and the credentials read at it.
    apps: Arc<Mutex<AppCache>>,
}

/// Whether an activation matches a link's claims: same object (uid), not being deleted, the link's nonce current.
fn matches(ua: &UserActivation, claims: &Claims) -> bool {
    ua.metadata.uid.as_deref() == Some(claims.uid.as_str())
        && ua.metadata.deletion_timestamp.is_none()
        && token::ct_eq(ua.status.as_ref().and_then(|s| s.connect_nonce.as_deref()).unwrap_or(""), &claims.nonce)
}

impl Lookup {
    pub fn new(client: kube::Client, stores: crate::controller::Stores, ready: Arc<std::sync::atomic::AtomicBool>) -> Self {
        Self { client, stores, ready, apps: Default::default() }
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The activation a verified link names, with its connection, connector and auth method, if the link is still
    /// the current one.
    pub async fn resolve(&self, claims: &Claims) -> Result<Resolved, Refusal> {
        if !self.ready.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "Not ready",
                "The connect service is starting; try again in a moment.".into(),
            ));
        }
        let cached = self.stores.activations.get(&ObjectRef::new(&claims.name).within(&claims.namespace));
        let ua = match cached {
            Some(ua) if matches(&ua, claims) => ua,
            _ => self.read_activation(claims).await?,
        };
        let conn_ns = ua.connection_namespace().unwrap_or_default();
        let fail = |what: &str| {
            Refusal(
                StatusCode::NOT_FOUND,
                "This connection is not available",
                format!("{what}. Ask the application to check its configuration."),
            )
        };
        let connection = self
            .stores
            .connections
            .get(&ObjectRef::new(&ua.spec.connection_ref.name).within(&conn_ns))
            .ok_or_else(|| fail("The connection was removed"))?;
        let connector = self
            .stores
            .connectors
            .get(&ObjectRef::new(&connection.spec.connector_ref.name).within(&conn_ns))
            .ok_or_else(|| fail("The connector was removed"))?;
        let method = connector
            .auth_method(&connection.spec.auth_method)
            .cloned()
            .ok_or_else(|| fail("The connection's sign-in method does not exist"))?;
        Ok(Resolved { ua, connector, connection, method })
    }

    /// The activation from the apiserver: when the store has not caught up with the link yet, and before a
    /// compare-and-swap that a lagging store's resourceVersion lost.
    pub async fn read_activation(&self, claims: &Claims) -> Result<Arc<UserActivation>, Refusal> {
        let api: Api<UserActivation> = Api::namespaced(self.client.clone(), &claims.namespace);
        let ua = api.get_opt(&claims.name).await.map_err(|e| {
            warn!(error = %e, "reading an activation for a connect link failed");
            storage()
        })?;
        let ua =
            ua.filter(|u| u.uid().as_deref() == Some(claims.uid.as_str()) && u.metadata.deletion_timestamp.is_none()).ok_or_else(gone)?;
        if !matches(&ua, claims) {
            return Err(used());
        }
        Ok(Arc::new(ua))
    }

    /// The organisation's OAuth app of an authorization-code method, its credentials read again only when their
    /// Secret changed.
    pub async fn organisation_app(&self, connector: &Connector, m: &OAuth2Method, redirect: String) -> Result<OAuthClient, AppClientError> {
        let ns = connector.namespace().unwrap_or_default();
        let name = m.client_secret_ref.as_ref().map(|r| r.name.clone()).ok_or(AppClientError::NoRef)?;
        let seen = self.stores.source_secrets.get(&ObjectRef::new(&name).within(&ns)).and_then(|s| s.version().map(String::from));
        let key = (ns.clone(), name.clone());
        if let Some(rv) = &seen
            && let Some((at, id, secret)) = self.apps.lock().ok().and_then(|a| a.get(&key).cloned())
            && &at == rv
        {
            return Ok(OAuthClient::for_method(m, id, secret, Some(redirect)));
        }
        let secret = Api::<Secret>::namespaced(self.client.clone(), &ns)
            .get_opt(&name)
            .await
            .map_err(|source| AppClientError::Kube { name: format!("{ns}/{name}"), source })?
            .ok_or_else(|| AppClientError::NotFound(format!("{ns}/{name}")))?;
        let (id, client_secret) = oauth::app_credentials(&secret)?;
        if let (Some(rv), Ok(mut apps)) = (secret.metadata.resource_version.clone(), self.apps.lock()) {
            if apps.len() >= MAX_APPS {
                apps.clear();
            }
            apps.insert(key, (rv, id.clone(), client_secret.clone()));
        }
        Ok(OAuthClient::for_method(m, id, client_secret, Some(redirect)))
    }
}
