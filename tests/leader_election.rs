//! Two replicas, one Lease: only the holder reconciles; when it dies (SIGKILL) the other takes over within the
//! Lease's duration and converges what changed meanwhile; when it stops gracefully (SIGTERM) it releases the Lease.
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
use latchkey::leader::LEASE_DURATION;
use serde_json::json;
use support::operator::Operator;
use support::{TestNamespace, bed, namespace, wait_for, wait_for_value};

const T: Duration = Duration::from_secs(30);

/// An API-key Connector and EmbeddedConnection (no verification, no Job) in `ns`.
async fn connection(ns: &TestNamespace) {
    let c: Connector = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": "acme-api"},
        "spec": {"baseUrl": "https://api.acme.example", "authMethods": [{"name": "token", "apiKey": {"in": "Header", "name": "X-Api-Key"}}]}
    }))
    .unwrap();
    ns.api::<Connector>().create(&PostParams::default(), &c).await.unwrap();
    let ec: EmbeddedConnection = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "acme-sync"},
        "spec": {"connectorRef": {"name": "acme-api"}, "authMethod": "token"}
    }))
    .unwrap();
    ns.api::<EmbeddedConnection>().create(&PostParams::default(), &ec).await.unwrap();
}

/// The application supplies a key and activates the connection for `user` (in the connection's own namespace).
async fn activate(ns: &TestNamespace, name: &str) {
    let s: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{name}-key")}, "stringData": {"api_key": format!("key-of-{name}")}
    }))
    .unwrap();
    ns.api::<Secret>().create(&PostParams::default(), &s).await.unwrap();
    let ua: UserActivation = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": name},
        "spec": {"connectionRef": {"name": "acme-sync"}, "user": {"id": name}, "credentialsSecretRef": {"name": format!("{name}-key")}}
    }))
    .unwrap();
    ns.api::<UserActivation>().create(&PostParams::default(), &ua).await.unwrap();
}

async fn wait_ready(ns: &TestNamespace, name: &str, timeout: Duration) {
    let api = ns.api::<UserActivation>();
    wait_for_value(&format!("{name} Ready=True"), timeout, || async {
        let ua = api.get(name).await.map_err(|e| e.to_string())?;
        let st = ua.status.unwrap_or_default();
        match st.conditions.iter().find(|c| c.type_ == "Ready") {
            Some(c) if c.status == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// Whether this replica's log shows it reconciling the activation `name` (its phase changes are logged).
fn reconciled(op: &Operator, name: &str) -> bool {
    op.log().lines().any(|l| l.contains("phase changed") && l.contains(&format!("\"activation\":\"{name}\"")))
}

fn leads(op: &Operator) -> bool {
    op.log().contains("acquired the Lease")
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases.get_opt(name).await.ok().flatten().and_then(|l| l.spec?.holder_identity)
}

async fn two_replicas(ns: &TestNamespace, test: &str, lease: &str) -> (Operator, Operator) {
    let bed = bed().await;
    let args = ["--leader-election=true", &format!("--lease-name={lease}")];
    let first = Operator::start(&bed, &format!("{test}_first"), &[ns.name()], &args).await;
    wait_for("the first replica to take the Lease", T, || async { leads(&first) }).await;
    let second = Operator::start(&bed, &format!("{test}_second"), &[ns.name()], &args).await;
    (first, second)
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_a_follower_takes_over_when_it_dies() {
    let ns = namespace(&bed().await, "leader-kill").await;
    connection(&ns).await;
    let (mut first, second) = two_replicas(&ns, "leader_kill", "latchkey-kill").await;

    // Both replicas are ready (they serve the connect page); only the holder reconciles.
    activate(&ns, "before").await;
    wait_ready(&ns, "before", T).await;
    assert!(reconciled(&first, "before"), "the leader did not reconcile; its log:\n{}", first.log());
    assert!(!reconciled(&second, "before") && !leads(&second), "the follower reconciled; its log:\n{}", second.log());
    assert!(!second.log().contains("controllers running"), "the follower started its controllers:\n{}", second.log());
    let leases: Api<Lease> = ns.api();
    let first_holder = holder(&leases, "latchkey-kill").await.expect("a Lease holder");

    // The leader dies without a word; a tenant activates meanwhile.
    first.kill();
    let killed = Instant::now();
    activate(&ns, "after").await;
    wait_for("the follower to take the Lease", LEASE_DURATION + Duration::from_secs(10), || async { leads(&second) }).await;
    let took = killed.elapsed();
    assert!(took <= LEASE_DURATION + Duration::from_secs(5), "took over after {took:?}, the Lease lasts {LEASE_DURATION:?}");
    wait_ready(&ns, "after", T).await;
    assert!(reconciled(&second, "after"), "the new leader did not reconcile; its log:\n{}", second.log());
    let new_holder = holder(&leases, "latchkey-kill").await.expect("a Lease holder");
    assert_ne!(new_holder, first_holder);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_leader_stopped_gracefully_releases_the_lease() {
    let ns = namespace(&bed().await, "leader-term").await;
    connection(&ns).await;
    let (mut first, second) = two_replicas(&ns, "leader_term", "latchkey-term").await;
    assert!(!leads(&second));
    let leases: Api<Lease> = ns.api();

    let status = first.stop().expect("the leader was running");
    assert!(status.success(), "SIGTERM should end the leader cleanly: {status:?}\n{}", first.log());
    assert!(first.log().contains("released the Lease"), "{}", first.log());
    // Released, not merely abandoned: the Lease names no holder (until the follower, which sleeps until the
    // expiry it last saw, takes it within the Lease's duration).
    let after_stop = holder(&leases, "latchkey-term").await;
    assert!(after_stop.is_none() || leads(&second), "still held by {after_stop:?} after a graceful stop");
    wait_for("the follower to take the released Lease", LEASE_DURATION + Duration::from_secs(5), || async { leads(&second) }).await;

    activate(&ns, "later").await;
    wait_ready(&ns, "later", T).await;
    assert!(reconciled(&second, "later"));
    ns.cleanup().await;
}
