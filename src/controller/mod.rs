//! The controllers: their shared context, the stores they read, the relations that trigger reconciles, and the
//! error policy.
pub mod connector;
pub mod embedded_connection;
pub mod expect;
pub mod inflight;
pub mod relations;
pub mod rescued;
pub mod status;
pub mod user_activation;
pub mod watch;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::job_record::JobRecord;
use crate::secret_record::SecretRecord;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, ReconcileRequest};
use kube::runtime::events::{Recorder, Reporter};
#[allow(deprecated)]
use kube::runtime::metadata_watcher;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use rand::Rng;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::api::{Connector, EmbeddedConnection, UserActivation};
use crate::naming;
use relations::Relations;
pub use relations::Triggers;
use watch::{Change, Watch, prune_meta, reflect};

/// Everything a reconcile reads or writes through.
pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub http: reqwest::Client,
    pub recorder: Recorder,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub connect: Option<Arc<crate::connect::ConnectConfig>>,
    /// Consecutive failures per object, for per-object exponential backoff (kube has none built in).
    pub failures: Mutex<HashMap<String, u32>>,
    /// When each failing object may try again: a watch event before then does not repeat the failed request.
    pub not_before: Mutex<HashMap<String, std::time::Instant>>,
    /// Per activation: the writes of its last reconcile (and of this process's connect server) that the stores do
    /// not show yet (a reconcile waits for them).
    pub expect: Arc<expect::Expectations>,
    /// Rotated tokens a refresh got whose write failed (or that came after the reconcile stopped waiting):
    /// written by the next reconcile instead of refreshing again.
    pub rescued: Arc<rescued::Rescued>,
    /// Token requests out at the provider that no reconcile waits for: at most one per activation.
    pub inflight: Arc<inflight::InFlight>,
    /// Queues reconciles: a late answer to a token request reconciles its activation at once.
    pub triggers: Triggers,
}

/// What the reflectors keep: pruned objects, Secrets and the namespaces' metadata only.
#[derive(Clone)]
pub struct Stores {
    pub connectors: Store<Connector>,
    pub connections: Store<EmbeddedConnection>,
    pub activations: Store<UserActivation>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Secrets the operator owns (label selector): what the reconcile reads of their metadata.
    pub owned_secrets: Store<SecretRecord>,
    /// Application-written Secrets labelled `latchkey.dev/source=true`: name and resourceVersion.
    pub source_secrets: Store<SecretRecord>,
    /// Jobs the operator created, without their spec.
    pub jobs: Store<JobRecord>,
    /// Indexes from referenced objects to referrers (and Jobs by activation), so a reconcile never scans a store.
    pub relations: Arc<Relations>,
    /// How far the owned-Secret and Job watches have read (whether the stores show the operator's own writes).
    pub owned_secrets_read: Arc<watch::Progress>,
    pub jobs_read: Arc<watch::Progress>,
}

/// Errors of a reconcile: each names the step that failed. Transient ones are retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API request failed while {step}: {source}")]
    Kube { step: &'static str, source: kube::Error },
    #[error("{0}")]
    Verification(#[from] crate::credentials::verify::VerifyError),
    #[error("OAuth2 provider: {0}")]
    OAuth(String),
    #[error("the object has no namespace")]
    NoNamespace,
}

impl Error {
    pub fn kube(step: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube { step, source }
    }
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Verification(_) => "verification",
            Error::OAuth(_) => "oauth",
            Error::NoNamespace => "invalid",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Context {
    fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
        format!("{}/{}/{}", K::kind(&()), obj.meta().namespace.as_deref().unwrap_or(""), obj.meta().name.as_deref().unwrap_or(""))
    }

    /// Forgets an object's failures after a successful reconcile.
    pub fn succeeded<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(&Self::key(obj));
        }
        if let Ok(mut f) = self.not_before.lock() {
            f.remove(&Self::key(obj));
        }
    }

    /// The backoff after one more failure: 1 s doubling to 5 min, with up to 10 % jitter.
    pub fn backoff<K: Resource<DynamicType = ()>>(&self, obj: &K) -> Duration {
        let n = self.failures.lock().map(|mut f| {
            let e = f.entry(Self::key(obj)).or_insert(0);
            *e = e.saturating_add(1);
            *e
        });
        let delay = backoff_for(n.unwrap_or(1));
        if let Ok(mut f) = self.not_before.lock() {
            f.insert(Self::key(obj), std::time::Instant::now() + delay);
        }
        delay
    }

    /// How long a failing object must still wait before its failed request is tried again.
    pub fn wait_remaining<K: Resource<DynamicType = ()>>(&self, obj: &K) -> Option<Duration> {
        let at = *self.not_before.lock().ok()?.get(&Self::key(obj))?;
        at.checked_duration_since(std::time::Instant::now()).filter(|d| !d.is_zero())
    }
}

/// 1 s, 2 s, 4 s ... capped at 300 s, plus up to 10 % jitter.
pub fn backoff_for(failures: u32) -> Duration {
    let base = 2f64.powi(failures.saturating_sub(1).min(20) as i32).min(300.0);
    let jitter = rand::rng().random_range(0.0..=0.1);
    Duration::from_secs_f64(base * (1.0 + jitter))
}

fn error_policy<K: Resource<DynamicType = ()>>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff(obj.as_ref());
    warn!(kind = %K::kind(&()), name = obj.meta().name.as_deref().unwrap_or(""), namespace = obj.meta().namespace.as_deref().unwrap_or(""), error = %err, retry_in = ?delay, "reconcile failed");
    ctx.metrics.reconcile_error(&K::kind(&()), err.metric_label());
    Action::requeue(delay)
}

fn apis<K>(client: &Client, namespaces: &[Option<String>]) -> Vec<(Option<String>, Api<K>)>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    namespaces
        .iter()
        .map(|ns| {
            (
                ns.clone(),
                match ns {
                    Some(n) => Api::namespaced(client.clone(), n),
                    None => Api::all(client.clone()),
                },
            )
        })
        .collect()
}

fn full_watches<K>(client: &Client, namespaces: &[Option<String>], wc: &watcher::Config) -> Vec<Watch<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    apis::<K>(client, namespaces).into_iter().map(|(ns, api)| Watch::new(ns, watcher(api, wc.clone()).default_backoff())).collect()
}

#[allow(deprecated)]
fn meta_watches<K>(client: &Client, namespaces: &[Option<String>], wc: &watcher::Config) -> Vec<Watch<PartialObjectMeta<K>>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    apis::<K>(client, namespaces).into_iter().map(|(ns, api)| Watch::new(ns, metadata_watcher(api, wc.clone()).default_backoff())).collect()
}

/// Starts the reflectors with their relations. Returns the stores, the triggers (for reconciles that no watch
/// event starts) and the trigger receivers.
#[allow(deprecated)]
pub fn start_watches(client: &Client, namespaces: &[Option<String>]) -> (Stores, Triggers, relations::Receivers) {
    let (triggers, receivers) = Triggers::new();
    let relations = Arc::new(Relations::default());
    let any = watcher::Config::default();
    let managed = watcher::Config::default().labels(naming::MANAGED_SELECTOR);

    let activations = {
        let (t, r) = (triggers.clone(), relations.clone());
        reflect("UserActivation", full_watches::<UserActivation>(client, namespaces, &any), prune_meta, move |ua, change| {
            r.activation_changed(ua, change);
            t.activation_changed(ua);
            // The same user's other activations may run Jobs that need this one.
            for other in r.activations_of_tenant_user(&ua.namespace().unwrap_or_default(), &ua.spec.user.id) {
                if other.name != ua.name_any() {
                    t.activation(other);
                }
            }
        })
    };
    let connections = {
        let (t, r) = (triggers.clone(), relations.clone());
        reflect("EmbeddedConnection", full_watches::<EmbeddedConnection>(client, namespaces, &any), prune_meta, move |ec, change| {
            t.connection(ObjectRef::from_obj(ec));
            for ua in r.activations_of_connection(ec) {
                t.activation(ua);
            }
            let _ = change;
        })
    };
    let connectors = {
        let (t, r) = (triggers.clone(), relations.clone());
        let conns = connections.clone();
        // Stored resolved: every consumer sees the catalogue's facts for `spec.provider` filled in.
        let resolve = |c: &mut Connector| {
            prune_meta(c);
            crate::providers::resolve(&mut c.spec);
        };
        reflect("Connector", full_watches::<Connector>(client, namespaces, &any), resolve, move |c, _| {
            t.connector(ObjectRef::from_obj(c));
            for ec in conns.state().iter().filter(|ec| {
                ec.metadata.namespace == c.metadata.namespace && ec.spec.connector_ref.name == c.metadata.name.clone().unwrap_or_default()
            }) {
                t.connection(ObjectRef::from_obj(ec.as_ref()));
                for ua in r.activations_of_connection(ec) {
                    t.activation(ua);
                }
            }
        })
    };
    // Namespaces: cluster-scoped metadata, for allowedNamespaces selectors.
    let namespaces_store = {
        let (t, r) = (triggers.clone(), relations.clone());
        let api: Api<Namespace> = Api::all(client.clone());
        let events = metadata_watcher(api, any.clone()).default_backoff();
        reflect("Namespace", vec![Watch::new(None, events)], prune_meta, move |ns, change| {
            if change == Change::Applied {
                for ua in r.activations_in_namespace(ns.metadata.name.as_deref().unwrap_or("")) {
                    t.activation(ua);
                }
            }
        })
    };
    let (owned_secrets, owned_secrets_read) = {
        let t = triggers.clone();
        let watches = meta_watches::<Secret>(client, namespaces, &managed).into_iter().map(|w| w.map(owned_secret_record)).collect();
        watch::reflect_tracked(
            "Secret",
            watches,
            |_| {},
            move |s: &SecretRecord, _| {
                for name in s.controllers() {
                    t.activation(ObjectRef::new(name).within(s.namespace()));
                }
            },
        )
    };
    let source_secrets = {
        let (t, r) = (triggers.clone(), relations.clone());
        let cs = connectors.clone();
        let sources = watcher::Config::default().labels(naming::SOURCE_SELECTOR);
        let watches = meta_watches::<Secret>(client, namespaces, &sources).into_iter().map(|w| w.map(source_secret_record)).collect();
        reflect(
            "Secret",
            watches,
            |_| {},
            move |s: &SecretRecord, _| {
                let (ns, name) = (s.namespace(), s.name());
                for ua in r.activations_using_secret(ns, name) {
                    t.activation(ua);
                }
                for c in cs
                    .state()
                    .iter()
                    .filter(|c| c.metadata.namespace.as_deref() == Some(ns) && connector::client_secret_name(c) == Some(name))
                {
                    t.connector(ObjectRef::from_obj(c.as_ref()));
                }
            },
        )
    };
    let (jobs, jobs_read) = {
        let (t, r) = (triggers.clone(), relations.clone());
        watch::reflect_tracked("Job", full_watches::<JobRecord>(client, namespaces, &managed), watch::prune_job, move |j, change| {
            r.job_changed(&j.metadata, change);
            t.owner_of(&j.metadata)
        })
    };
    let stores = Stores {
        connectors,
        connections,
        activations,
        namespaces: namespaces_store,
        owned_secrets,
        source_secrets,
        jobs,
        relations,
        owned_secrets_read,
        jobs_read,
    };
    (stores, triggers, receivers)
}

/// What the owned-Secret store keeps of a Secret the metadata watch serves.
pub fn owned_secret_record(s: PartialObjectMeta<Secret>) -> SecretRecord {
    SecretRecord::owned(&s.metadata)
}

/// What the source-Secret store keeps of a Secret the metadata watch serves.
pub fn source_secret_record(s: PartialObjectMeta<Secret>) -> SecretRecord {
    SecretRecord::source(&s.metadata)
}

impl Stores {
    /// Stores that no watch feeds: they stay empty and never become ready (for tests of code that only reads them).
    pub fn unfed() -> Self {
        fn empty<K>() -> Store<K>
        where
            K: kube::runtime::reflector::Lookup + Clone + 'static,
            K::DynamicType: Default + Eq + std::hash::Hash + Clone,
        {
            kube::runtime::reflector::store::<K>().0
        }
        Stores {
            connectors: empty(),
            connections: empty(),
            activations: empty(),
            namespaces: empty(),
            owned_secrets: empty(),
            source_secrets: empty(),
            jobs: empty(),
            relations: Default::default(),
            owned_secrets_read: Default::default(),
            jobs_read: Default::default(),
        }
    }

    pub async fn wait_until_ready(&self) {
        let _ = tokio::join!(
            self.connectors.wait_until_ready(),
            self.connections.wait_until_ready(),
            self.activations.wait_until_ready(),
            self.namespaces.wait_until_ready(),
            self.owned_secrets.wait_until_ready(),
            self.source_secrets.wait_until_ready(),
            self.jobs.wait_until_ready(),
        );
    }
}

fn queue<K: Resource<DynamicType = ()> + 'static>(
    rx: mpsc::UnboundedReceiver<ObjectRef<K>>,
) -> impl futures::Stream<Item = Result<ReconcileRequest<K>, Infallible>> {
    tokio_stream_unbounded(rx).map(|r| Ok(ReconcileRequest::from(r)))
}

fn tokio_stream_unbounded<T>(mut rx: mpsc::UnboundedReceiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// How long a graceful stop waits for the reconciles in flight: a refresh's provider call (at most
/// [`crate::credentials::oauth::TOKEN_TIMEOUT`]) and the Secret write after it, inside Kubernetes' default
/// termination grace period of 30 s.
pub const STOP_GRACE: Duration = Duration::from_secs(20);

/// How the controllers stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: no new reconcile starts; those in flight finish (a refresh whose provider call is out writes its
    /// answer, since a provider that rotates refresh tokens has already invalidated the stored one), for at most
    /// [`STOP_GRACE`].
    Graceful,
    /// Leadership lost: another replica may be reconciling already, so nothing more of this one runs.
    Now,
}

/// Runs the three controllers until `stop` resolves.
pub async fn run_controllers(
    ctx: Arc<Context>,
    receivers: relations::Receivers,
    concurrency: u16,
    stop: impl std::future::Future<Output = Stop> + Send + 'static,
) {
    let cfg = controller::Config::default().concurrency(concurrency);
    let s = ctx.stores.clone();
    // Closing the queues is the graceful stop: each applier then finishes its reconciles in flight and ends.
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let stopping = move || {
        let mut rx = stopping_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let ua = controller::applier(
        |obj, ctx| Box::pin(user_activation::reconcile(obj, ctx)),
        error_policy::<UserActivation>,
        ctx.clone(),
        s.activations.clone(),
        queue(receivers.activations).take_until(stopping()),
        cfg.clone(),
    );
    let ec = controller::applier(
        |obj, ctx| Box::pin(embedded_connection::reconcile(obj, ctx)),
        error_policy::<EmbeddedConnection>,
        ctx.clone(),
        s.connections.clone(),
        queue(receivers.connections).take_until(stopping()),
        cfg.clone().debounce(Duration::from_secs(1)),
    );
    let cn = controller::applier(
        |obj, ctx| Box::pin(connector::reconcile(obj, ctx)),
        error_policy::<Connector>,
        ctx.clone(),
        s.connectors.clone(),
        queue(receivers.connectors).take_until(stopping()),
        cfg,
    );
    info!("controllers running");
    let mut all = Box::pin(futures::future::join3(drain("UserActivation", ua), drain("EmbeddedConnection", ec), drain("Connector", cn)));
    let how = tokio::select! {
        _ = &mut all => return,
        how = stop => how,
    };
    match how {
        Stop::Now => info!("controllers stopping now"),
        Stop::Graceful => {
            info!(grace_s = STOP_GRACE.as_secs(), "controllers stopping: no new reconciles; those in flight finish");
            let _ = stopping_tx.send(true);
            match tokio::time::timeout(STOP_GRACE, all).await {
                Ok(_) => info!("reconciles in flight finished"),
                Err(_) => {
                    tracing::warn!(grace_s = STOP_GRACE.as_secs(), "reconciles still running after the grace period; stopping without them")
                }
            }
        }
    }
}

/// Polls a controller's stream; failures were already logged by the error policy.
async fn drain<K: Resource<DynamicType = ()>, E: std::fmt::Display>(
    name: &'static str,
    s: impl futures::Stream<Item = Result<(ObjectRef<K>, Action), E>>,
) {
    s.for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(controller = name, error = %e, "controller event");
        }
    })
    .await
}

pub fn recorder(client: &Client) -> Recorder {
    Recorder::new(client.clone(), Reporter { controller: "latchkey".into(), instance: std::env::var("POD_NAME").ok() })
}
