//! `latchkey run`: the controllers, the connect server and the admin endpoints in one process.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info};

use crate::config::RunConfig;
use crate::controller::{self, Context};
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The message is redacted: a proxy URL in it may carry credentials.
    #[error("no Kubernetes configuration: {0} (set KUBECONFIG or run in a cluster; `make run` starts a local control plane)")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("the Latchkey CRDs are not installed or not reachable: {0} (apply crds/ or install the Helm chart)")]
    Crds(String),
    #[error("building the HTTP client failed: {0}")]
    Http(String),
    #[error("{0}")]
    Leader(#[from] crate::leader::LeaderError),
    #[error("lost the leader-election Lease to another replica; exiting so that the restarted process rejoins as a follower")]
    LeadershipLost,
    #[error("{0}")]
    SigningKey(#[from] crate::connect::KeyError),
    #[error("the connect page's brand is invalid: {0}")]
    Brand(String),
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

pub async fn run(cfg: RunConfig) -> Result<(), RunError> {
    let config = crate::outbound::kube_config().await.map_err(|e| RunError::Config(crate::outbound::redact(&e.to_string())))?;
    let client = kube::Client::try_from(config).map_err(|e| RunError::Config(crate::outbound::redact(&e.to_string())))?;
    check_crds(&client).await?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));

    let admin_listener =
        tokio::net::TcpListener::bind(cfg.metrics_bind).await.map_err(|source| RunError::Bind { addr: cfg.metrics_bind, source })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let admin = crate::admin::router(crate::admin::AdminState { metrics: metrics.clone(), ready: ready.clone() });
    let mut admin_stop = stop_rx.clone();
    let admin_task = tokio::spawn(async move {
        let _ = axum::serve(admin_listener, admin)
            .with_graceful_shutdown(async move {
                let _ = admin_stop.changed().await;
            })
            .await;
    });
    info!(metrics = %cfg.metrics_bind, namespaces = ?cfg.watched_namespaces(), concurrency = cfg.concurrency, "latchkey starting");

    let http = crate::outbound::http_client(cfg.ca_bundle.as_deref()).map_err(|e| RunError::Http(e.to_string()))?;
    let namespaces = cfg.watched_namespaces();
    let (stores, triggers, receivers) = controller::start_watches(&client, &namespaces);
    let lookup = crate::connect::lookup::Lookup::new(client.clone(), stores.clone(), ready.clone());
    let expect = Arc::new(controller::expect::Expectations::default());
    let connect = start_connect_server(&cfg, &client, lookup, expect.clone(), &http, metrics.clone(), stop_rx.clone()).await?;
    let ctx = Arc::new(Context {
        client: client.clone(),
        stores: stores.clone(),
        http,
        recorder: controller::recorder(&client),
        metrics: metrics.clone(),
        connect: Some(connect),
        failures: Default::default(),
        not_before: Default::default(),
        expect,
        rescued: Default::default(),
        inflight: Default::default(),
        triggers,
    });
    let started = std::time::Instant::now();
    tokio::select! {
        _ = stores.wait_until_ready() => {}
        _ = shutdown_signal() => { let _ = stop_tx.send(true); return Ok(()); }
    }
    info!(elapsed_ms = started.elapsed().as_millis() as u64, "caches synced");
    // The initial listings are in the stores now; what they were read through goes back to the system.
    let trim = tokio::spawn(crate::memory::trim_periodically());
    ready.store(true, Ordering::Release);

    // Leader election: every replica stays ready (caches warm, connect page served); only the holder reconciles.
    let (receivers, leadership) = if cfg.leader_election {
        let mut l = crate::leader::Leadership::join(client.clone(), &cfg.operator_namespace(), &cfg.lease_name).await?;
        let gated = crate::leader::gate(receivers, l.holding());
        tokio::select! {
            _ = l.acquired() => {}
            _ = shutdown_signal() => { l.release().await; let _ = stop_tx.send(true); return Ok(()); }
        }
        (gated, Some(l))
    } else {
        (receivers, None)
    };
    let lost = Arc::new(AtomicBool::new(false));
    let stop = {
        let (lost, holding) = (lost.clone(), leadership.as_ref().map(|l| l.holding()));
        async move {
            tokio::select! {
                _ = shutdown_signal() => controller::Stop::Graceful,
                _ = crate::leader::until_lost(holding) => {
                    lost.store(true, Ordering::Relaxed);
                    controller::Stop::Now
                }
            }
        }
    };
    controller::run_controllers(ctx, receivers, cfg.concurrency, stop).await;
    trim.abort();
    let _ = stop_tx.send(true);
    if lost.load(Ordering::Relaxed) {
        return Err(RunError::LeadershipLost);
    }
    if let Some(l) = leadership {
        l.release().await;
    }
    if tokio::time::timeout(Duration::from_secs(5), admin_task).await.is_err() {
        error!("admin server did not stop in time");
    }
    info!("latchkey stopped");
    Ok(())
}

/// Loads (or creates) the signing keys and serves the connect server on every replica.
/// Until the stores have listed, links get 503 (the connect page is served from them).
async fn start_connect_server(
    cfg: &RunConfig,
    client: &kube::Client,
    lookup: crate::connect::lookup::Lookup,
    expect: Arc<controller::expect::Expectations>,
    http: &reqwest::Client,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<Arc<crate::connect::ConnectConfig>, RunError> {
    let ns = cfg.operator_namespace();
    let keys = crate::connect::load_or_create_keys(client, &ns, &cfg.signing_key_secret).await?;
    let keyring = crate::connect::Keyring::new(keys);
    crate::connect::spawn_key_reloader(client.clone(), ns, cfg.signing_key_secret.clone(), keyring.clone());
    let connect = Arc::new(crate::connect::ConnectConfig::new(&cfg.connect_base_url, keyring));
    let listener =
        tokio::net::TcpListener::bind(cfg.connect_bind).await.map_err(|source| RunError::Bind { addr: cfg.connect_bind, source })?;
    let brand = cfg.brand();
    let problems = crate::connect::pages::problems(&brand);
    if !problems.is_empty() {
        return Err(RunError::Brand(problems.join("; ")));
    }
    let limit = crate::connect::limit::RateLimit { per_minute: cfg.connect_rate_limit, burst: cfg.connect_rate_burst };
    let prefix = cfg.connect_path_prefix();
    let state = crate::connect::routes::ConnectState::new(lookup, http.clone(), connect.clone())
        .with_metrics(metrics)
        .with_expectations(expect)
        .with_rate_limit(limit)
        .with_brand(brand)
        .with_prefix(&prefix);
    tokio::spawn(async move {
        if let Err(e) = crate::connect::routes::serve(listener, state, async move {
            let _ = stop.changed().await;
        })
        .await
        {
            error!(error = %e, "the connect server stopped");
        }
    });
    info!(connect = %cfg.connect_bind, base_url = %connect.base_url, path_prefix = %prefix, "connect server listening");
    Ok(connect)
}

async fn check_crds(client: &kube::Client) -> Result<(), RunError> {
    use kube::discovery::ApiGroup;
    let groups = client.list_api_groups().await.map_err(|e| RunError::Crds(e.to_string()))?;
    if !groups.groups.iter().any(|g| g.name == crate::api::GROUP) {
        return Err(RunError::Crds(format!("API group {} not found", crate::api::GROUP)));
    }
    let _ = std::marker::PhantomData::<ApiGroup>;
    Ok(())
}
