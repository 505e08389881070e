//! What a verified link points at, from the operator's reflector stores (no apiserver request on the hot path).
//!
//! The activation, its connection and its connector come from the stores the controllers keep (the connector
//! with its catalogue facts already filled in). A store lags the apiserver by a few milliseconds, so where the
//! store's copy disagrees with the link (an activation not yet seen, or an older nonce than the link carries)
//! the activation is read once from the apiserver before the link is refused: a fresh link always works, and
//! only a spent or stale link costs a GET (rate-limited per activation by the routes). Completing a link is a
//! compare-and-swap on the apiserver, never on the store's word. A link this process has just completed is
//! refused at once from memory ([`Lookup::spend`]): its nonce stays in the activation's status until the reconcile
//! that the stored credentials trigger removes it.
//!
//! The organisation's OAuth app credentials (the connector's `clientSecretRef`) are read from the apiserver only
//! when the Secret's resourceVersion in the source-Secret store changed since they were last read. The OAuth
//! client built from them (its URLs parsed) is kept per connector and token URL, and built again when the
//! Connector (uid, resourceVersion, the method resolved for the tenant, its timeout), the Secret's
//! resourceVersion or the redirect URL differs from what it was built from.
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

/// How long a link completed here is remembered as spent: far longer than the reconcile that drops it from status
/// takes. At [`MAX_SPENT`] entries, those older than this are dropped, and all of them if that frees nothing (a
/// forgotten link is still refused, by the Secret's compare-and-swap, only later in the request).
const SPENT_KEEP: std::time::Duration = std::time::Duration::from_secs(600);
const MAX_SPENT: usize = 4096;

/// An activation with what it uses.
pub struct Resolved {
    pub ua: Arc<UserActivation>,
    pub connector: Arc<Connector>,
    pub connection: Arc<EmbeddedConnection>,
    /// The connection's method: its place in the connector's `authMethods` (a reference into the store's object,
    /// not a copy of it on every request).
    method_at: usize,
}

impl Resolved {
    pub fn method(&self) -> &AuthMethod {
        &self.connector.spec.auth_methods[self.method_at]
    }
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
        self.method().oauth2.as_ref()
    }
}

/// Why a link cannot be followed: a status and the page's title and text (borrowed when fixed: a forged link's
/// refusal allocates nothing).
#[derive(Debug, Clone)]
pub struct Refusal(pub StatusCode, pub &'static str, pub std::borrow::Cow<'static, str>);

pub fn used() -> Refusal {
    Refusal(
        StatusCode::GONE,
        "This link was already used",
        "Each connect link works once. Ask the application for a new one if you still need to connect.".into(),
    )
}

pub fn unavailable(what: &str) -> Refusal {
    Refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        "Something went wrong",
        format!("{what} Nothing was saved; please try again in a moment.").into(),
    )
}

fn gone() -> Refusal {
    Refusal(StatusCode::NOT_FOUND, "This connection no longer exists", "The application removed it. Ask it for a new connect link.".into())
}

fn storage() -> Refusal {
    unavailable("The connect service could not reach its storage.")
}

/// (namespace, clientSecretRef name) → (the Secret's resourceVersion, client id, client secret).
type AppCache = HashMap<(String, String), (String, String, Option<Sensitive>)>;

/// An organisation's OAuth client kept across requests, with what it was built from: it is used only while all
/// of that is unchanged.
struct KeptClient {
    connector_version: Option<String>,
    /// The method as resolved for the tenant (a catalogue fact or a per-tenant URL shows here).
    method: OAuth2Method,
    timeout: Option<std::time::Duration>,
    secret_version: String,
    redirect: String,
    client: Arc<OAuthClient>,
}

/// The organisations' OAuth clients, per connector (uid) and token URL as resolved; at most [`MAX_APPS`], past it
/// the cache starts over.
#[derive(Default)]
pub struct ClientCache(Mutex<HashMap<(String, String), KeptClient>>);

fn client_key(connector: &Connector, m: &OAuth2Method) -> (String, String) {
    let id = connector.uid().unwrap_or_else(|| format!("{}/{}", connector.namespace().unwrap_or_default(), connector.name_any()));
    (id, m.token_url.clone())
}

impl ClientCache {
    /// The client kept for `connector` and `m` if it was built from this very Connector version, method, timeout,
    /// app Secret version and redirect URL.
    pub fn get(&self, connector: &Connector, m: &OAuth2Method, secret_version: &str, redirect: &str) -> Option<Arc<OAuthClient>> {
        let clients = self.0.lock().ok()?;
        let k = clients.get(&client_key(connector, m))?;
        let fits = k.connector_version == connector.metadata.resource_version
            && k.secret_version == secret_version
            && k.redirect == redirect
            && k.timeout == connector.timeout()
            && k.method == *m;
        fits.then(|| k.client.clone())
    }

    /// Keeps `client`, built from these, replacing what was kept for the connector and token URL.
    pub fn keep(&self, connector: &Connector, m: &OAuth2Method, secret_version: String, redirect: &str, client: Arc<OAuthClient>) {
        let Ok(mut clients) = self.0.lock() else { return };
        if clients.len() >= MAX_APPS {
            clients.clear();
        }
        let kept = KeptClient {
            connector_version: connector.metadata.resource_version.clone(),
            method: m.clone(),
            timeout: connector.timeout(),
            secret_version,
            redirect: redirect.to_string(),
            client,
        };
        clients.insert(client_key(connector, m), kept);
    }
}

/// Reads links' targets from the stores; falls back to the apiserver only as described in the module docs.
#[derive(Clone)]
pub struct Lookup {
    client: kube::Client,
    stores: crate::controller::Stores,
    /// Set once every store has listed; before that every link gets 503 (never a wrong 404).
    ready: Arc<std::sync::atomic::AtomicBool>,
    /// Per clientSecretRef: the Secret's resourceVersion and the credentials read at it.
    apps: Arc<Mutex<AppCache>>,
    /// Per connector and token URL: the OAuth client built from them (see the module docs).
    clients: Arc<ClientCache>,
    /// Links completed by this process: the activation's uid → (the link's nonce, when).
    spent: Arc<Mutex<HashMap<String, (String, std::time::Instant)>>>,
}

/// Whether an activation matches a link's claims: same object (uid), not being deleted, the link's nonce current.
fn matches(ua: &UserActivation, claims: &Claims) -> bool {
    ua.metadata.uid.as_deref() == Some(claims.uid.as_str())
        && ua.metadata.deletion_timestamp.is_none()
        && token::ct_eq(ua.status.as_ref().and_then(|s| s.connect_nonce.as_deref()).unwrap_or(""), &claims.nonce)
}

impl Lookup {
    pub fn new(client: kube::Client, stores: crate::controller::Stores, ready: Arc<std::sync::atomic::AtomicBool>) -> Self {
        Self { client, stores, ready, apps: Default::default(), clients: Default::default(), spent: Default::default() }
    }

    /// Remembers that the link with `nonce` of `ua` was completed here.
    pub fn spend(&self, ua: &UserActivation, nonce: &str) {
        let Ok(mut m) = self.spent.lock() else { return };
        let now = std::time::Instant::now();
        if m.len() >= MAX_SPENT {
            m.retain(|_, (_, at)| now.duration_since(*at) < SPENT_KEEP);
            if m.len() >= MAX_SPENT {
                m.clear();
            }
        }
        m.insert(ua.uid().unwrap_or_default(), (nonce.to_string(), now));
    }

    /// Whether the link of `claims` was completed here (see [`Lookup::spend`]).
    fn spent(&self, claims: &Claims) -> bool {
        let Ok(m) = self.spent.lock() else { return false };
        if m.is_empty() {
            return false;
        }
        m.get(claims.uid.as_str()).is_some_and(|(nonce, at)| at.elapsed() < SPENT_KEEP && token::ct_eq(nonce, &claims.nonce))
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
        if self.spent(claims) {
            return Err(used());
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
                format!("{what}. Ask the application to check its configuration.").into(),
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
        let method_at = connector
            .spec
            .auth_methods
            .iter()
            .position(|m| m.name == connection.spec.auth_method)
            .ok_or_else(|| fail("The connection's sign-in method does not exist"))?;
        Ok(Resolved { ua, connector, connection, method_at })
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

    /// The organisation's OAuth app of an authorization-code method (`m` as resolved for the tenant), with the
    /// connector's timeout: the kept client while the Connector, the app's Secret and `redirect` are unchanged, else
    /// one built now (its credentials read again only when their Secret changed).
    pub async fn organisation_app(
        &self,
        connector: &Connector,
        m: &OAuth2Method,
        redirect: &str,
    ) -> Result<Arc<OAuthClient>, AppClientError> {
        let ns = connector.namespace().unwrap_or_default();
        let name = m.client_secret_ref.as_ref().map(|r| r.name.clone()).ok_or(AppClientError::NoRef)?;
        let seen = self.stores.source_secrets.get(&ObjectRef::new(&name).within(&ns)).and_then(|s| s.version().map(String::from));
        if let Some(kept) = seen.as_deref().and_then(|rv| self.clients.get(connector, m, rv, redirect)) {
            return Ok(kept);
        }
        let (version, id, secret) = self.app_credentials(&ns, &name, seen).await?;
        let client =
            Arc::new(OAuthClient::for_method(m, id, secret, Some(redirect.to_string())).with_timeout(connector.timeout()).prepared());
        if let Some(v) = version {
            self.clients.keep(connector, m, v, redirect, client.clone());
        }
        Ok(client)
    }

    /// The app's client id and secret with the Secret's resourceVersion they were read at: from the cache when the
    /// store's resourceVersion (`seen`) is the one they were read at, else from the apiserver.
    async fn app_credentials(
        &self,
        ns: &str,
        name: &str,
        seen: Option<String>,
    ) -> Result<(Option<String>, String, Option<Sensitive>), AppClientError> {
        let key = (ns.to_string(), name.to_string());
        if let Some(rv) = seen
            && let Some((at, id, secret)) = self.apps.lock().ok().and_then(|a| a.get(&key).cloned())
            && at == rv
        {
            return Ok((Some(rv), id, secret));
        }
        let secret = Api::<Secret>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|source| AppClientError::Kube { name: format!("{ns}/{name}"), source })?
            .ok_or_else(|| AppClientError::NotFound(format!("{ns}/{name}")))?;
        let (id, client_secret) = oauth::app_credentials(&secret)?;
        let version = secret.metadata.resource_version.clone();
        if let (Some(rv), Ok(mut apps)) = (version.clone(), self.apps.lock()) {
            if apps.len() >= MAX_APPS {
                apps.clear();
            }
            apps.insert(key, (rv, id.clone(), client_secret.clone()));
        }
        Ok((version, id, client_secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(rv: &str, timeout: u32) -> Connector {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector",
            "metadata": {"name": "c", "namespace": "ns", "uid": "u-1", "resourceVersion": rv},
            "spec": {"baseUrl": "https://api.example", "http": {"timeoutSeconds": timeout},
                "authMethods": [{"name": "oauth", "oauth2": {"flow": "AuthorizationCode",
                    "authorizationUrl": "https://idp.example/authorize", "tokenUrl": "https://idp.example/token",
                    "clientSecretRef": {"name": "app"}}}]}
        }))
        .unwrap()
    }

    fn method(c: &Connector) -> OAuth2Method {
        c.spec.auth_methods[0].oauth2.clone().unwrap()
    }

    fn build(c: &Connector, m: &OAuth2Method, id: &str) -> Arc<OAuthClient> {
        Arc::new(
            OAuthClient::for_method(m, id.into(), None, Some("https://c.example/oauth/callback".into()))
                .with_timeout(c.timeout())
                .prepared(),
        )
    }

    const REDIRECT: &str = "https://c.example/oauth/callback";

    #[test]
    fn a_kept_client_serves_until_the_connector_or_its_app_secret_changes() {
        let cache = ClientCache::default();
        let c = connector("10", 5);
        let m = method(&c);
        assert!(cache.get(&c, &m, "7", REDIRECT).is_none(), "nothing kept yet");
        let built = build(&c, &m, "app-1");
        cache.keep(&c, &m, "7".into(), REDIRECT, built.clone());
        let kept = cache.get(&c, &m, "7", REDIRECT).expect("the same connector and Secret");
        assert!(Arc::ptr_eq(&kept, &built));

        // The Connector was edited: a new resourceVersion (here with a new timeout), or the same version but a
        // method that differs (e.g. resolved for another tenant, or a catalogue fact filled in differently).
        assert!(cache.get(&connector("11", 5), &m, "7", REDIRECT).is_none(), "a new Connector version");
        assert!(cache.get(&connector("10", 9), &m, "7", REDIRECT).is_none(), "another timeout");
        let other = OAuth2Method { scopes: vec!["repo".into()], ..m.clone() };
        assert!(cache.get(&c, &other, "7", REDIRECT).is_none(), "another method");
        // The organisation-app Secret changed, or the server's redirect URL.
        assert!(cache.get(&c, &m, "8", REDIRECT).is_none(), "a new app Secret version");
        assert!(cache.get(&c, &m, "7", "https://other.example/oauth/callback").is_none(), "another redirect URL");
        // The same name recreated: another uid.
        let mut recreated = connector("10", 5);
        recreated.metadata.uid = Some("u-2".into());
        assert!(cache.get(&recreated, &m, "7", REDIRECT).is_none(), "another object of the same name");

        // What is built for the new version replaces the old one.
        let c2 = connector("11", 5);
        let rebuilt = build(&c2, &m, "app-2");
        cache.keep(&c2, &m, "8".into(), REDIRECT, rebuilt.clone());
        assert!(Arc::ptr_eq(&cache.get(&c2, &m, "8", REDIRECT).unwrap(), &rebuilt));
        assert!(cache.get(&c, &m, "7", REDIRECT).is_none(), "the old version is gone");
        assert_eq!(rebuilt.client_id, "app-2");
    }

    #[test]
    fn clients_per_tenant_token_url_are_kept_apart() {
        let cache = ClientCache::default();
        let c = connector("10", 5);
        let a = OAuth2Method { token_url: "https://a.idp.example/token".into(), ..method(&c) };
        let b = OAuth2Method { token_url: "https://b.idp.example/token".into(), ..method(&c) };
        cache.keep(&c, &a, "7".into(), REDIRECT, build(&c, &a, "app"));
        cache.keep(&c, &b, "7".into(), REDIRECT, build(&c, &b, "app"));
        assert_eq!(cache.get(&c, &a, "7", REDIRECT).unwrap().token_url, "https://a.idp.example/token");
        assert_eq!(cache.get(&c, &b, "7", REDIRECT).unwrap().token_url, "https://b.idp.example/token");
    }
}
