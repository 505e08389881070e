//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager): with `--leader-election=true` every
//! replica keeps its caches warm and serves the connect page, and only the Lease holder runs the controllers.
//!
//! Losing the Lease ends the process (`run` returns [`crate::run::RunError::LeadershipLost`]): the controllers'
//! in-flight reconciles cannot be recalled one by one, and a restart by the Deployment is the simplest state that is
//! certainly correct. A graceful stop (SIGTERM) releases the Lease, so another replica takes over at once instead of
//! after the Lease's duration.
use std::collections::HashSet;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::controller::relations::Receivers;

/// How long a Lease stays valid after its holder last renewed it: the longest a crashed leader's work waits.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// The holder renews this long before the Lease would expire (also the clock skew tolerated between replicas).
pub const RENEW_GRACE: Duration = Duration::from_secs(5);
/// How long a graceful stop waits for the Lease's release.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "cannot use the leader-election Lease {namespace}/{name}: {source} (the operator needs get, create and patch on leases in its namespace)"
    )]
    Lease { namespace: String, name: String, source: LeaseManagerError },
}

/// This process's part in the election: whether it holds the Lease, as it changes.
pub struct Leadership {
    identity: String,
    state: watch::Receiver<bool>,
    manager: Arc<LeaseManager>,
    /// Competes for and renews the Lease, publishing the holding state to `state`.
    task: JoinHandle<()>,
}

/// This replica's identity in the Lease: the pod's name, else the host's, with the process id (two processes on one
/// machine are two candidates).
pub fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "latchkey".into());
    format!("{host}-{}", std::process::id())
}

impl Leadership {
    /// Joins the election for the Lease `name` in `namespace` (creating the Lease when absent) and keeps competing
    /// in the background.
    pub async fn join(client: Client, namespace: &str, name: &str) -> Result<Leadership, LeaderError> {
        let identity = identity();
        let err = |source| LeaderError::Lease { namespace: namespace.to_string(), name: name.to_string(), source };
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity.clone())
            .with_field_manager(format!("latchkey-leader-{identity}"))
            .with_duration(LEASE_DURATION.as_secs())
            .with_grace(RENEW_GRACE.as_secs())
            .build()
            .await
            .map_err(err)?;
        // Not the crate's `watch()`: its task releases the Lease only once every receiver is gone, and ours live in
        // several tasks. Driving `changed()` here keeps the manager at hand for `release`.
        let manager = Arc::new(manager);
        let (tx, state) = watch::channel(false);
        let task = {
            let manager = manager.clone();
            tokio::spawn(async move {
                loop {
                    match manager.changed().await {
                        Ok(holding) => {
                            if tx.send(holding).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, "leader election: Lease request failed; retrying");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            })
        };
        info!(lease = %format!("{namespace}/{name}"), %identity, duration_s = LEASE_DURATION.as_secs(), "joined the leader election");
        Ok(Leadership { identity, state, manager, task })
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// A receiver of the holding state, for [`gate`].
    pub fn holding(&self) -> watch::Receiver<bool> {
        self.state.clone()
    }

    /// Resolves once this process holds the Lease.
    pub async fn acquired(&mut self) {
        if self.state.wait_for(|leading| *leading).await.is_err() {
            // The manager's task ended (it only does when the channel closes): never leading.
            std::future::pending::<()>().await;
        }
        info!(identity = %self.identity, "acquired the Lease: this replica reconciles");
    }

    /// Gives the Lease up (a graceful stop), so that another replica takes over without waiting for it to expire.
    pub async fn release(self) {
        let Leadership { identity, manager, task, .. } = self;
        task.abort();
        let _ = task.await;
        match tokio::time::timeout(RELEASE_TIMEOUT, manager.release()).await {
            Ok(Ok(())) => info!(%identity, "released the Lease"),
            Ok(Err(e)) => warn!(%identity, error = %e, "releasing the Lease failed; it expires on its own"),
            Err(_) => warn!(%identity, "releasing the Lease timed out; it expires on its own"),
        }
    }
}

/// Resolves when this process no longer holds the Lease (lost to another replica, or the manager stopped); never
/// without leader election (`None`).
pub async fn until_lost(holding: Option<watch::Receiver<bool>>) {
    let Some(mut holding) = holding else { return std::future::pending().await };
    let _ = holding.wait_for(|leading| !*leading).await;
    warn!("lost the Lease: stopping so that only the new holder reconciles");
}

/// Holds back reconcile triggers until `holding` turns true, keeping each object once (so a standby replica's
/// memory is bounded by the number of objects, not by the number of watch events), then passes them all on and
/// forwards the rest as they come.
pub fn gate(receivers: Receivers, holding: watch::Receiver<bool>) -> Receivers {
    Receivers {
        activations: gate_one(receivers.activations, holding.clone()),
        connections: gate_one(receivers.connections, holding.clone()),
        connectors: gate_one(receivers.connectors, holding),
    }
}

fn gate_one<T: Hash + Eq + Send + 'static>(mut rx: UnboundedReceiver<T>, mut holding: watch::Receiver<bool>) -> UnboundedReceiver<T> {
    let (tx, out) = unbounded_channel();
    tokio::spawn(async move {
        let mut held = HashSet::new();
        while !*holding.borrow_and_update() {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(t) => { held.insert(t); }
                    None => return,
                },
                changed = holding.changed() => if changed.is_err() { return },
            }
        }
        for t in held {
            if tx.send(t).is_err() {
                return;
            }
        }
        while let Some(t) = rx.recv().await {
            if tx.send(t).is_err() {
                return;
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gate_holds_each_trigger_once_until_leading_then_forwards() {
        let (tx, rx) = unbounded_channel::<&'static str>();
        let (lead_tx, lead_rx) = watch::channel(false);
        let mut out = gate_one(rx, lead_rx);
        for t in ["a", "b", "a", "a"] {
            tx.send(t).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(out.try_recv().is_err(), "nothing passes before the Lease is held");

        lead_tx.send(true).unwrap();
        let mut first = vec![out.recv().await.unwrap(), out.recv().await.unwrap()];
        first.sort();
        assert_eq!(first, ["a", "b"], "held triggers come once each");
        tx.send("c").unwrap();
        assert_eq!(out.recv().await.unwrap(), "c");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(out.try_recv().is_err());
    }

    #[test]
    fn identities_differ_per_process_and_name_the_pod() {
        let id = identity();
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
    }
}
