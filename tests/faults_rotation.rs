//! The rotation window: a provider that rotates refresh tokens invalidates the stored one the moment it answers a
//! refresh, so the answer must reach the credentials Secret or the user's grant is gone. Three ways to lose it are
//! closed here, against the real OAuth server (which rotates) with the test's token front holding its answer back:
//! - a graceful stop (SIGTERM, as in every rolling update) while a refresh is out: the refresh finishes and writes;
//! - the apiserver away when the answer arrives: the answer is kept in memory and written when it is back;
//! - the answer arriving after the reconcile stopped waiting for it (a slow provider): the request stays open, no
//!   second refresh goes out meanwhile, and the late answer is written.
//!
//! All end with a further refresh of the same grant succeeding: the refresh token the Secret holds is the live one.
//! (A SIGKILL in that window cannot be covered by the operator alone; `make faults` counts those losses.)
mod fault_support;
mod support;

use std::time::{Duration, Instant};

use fault_support::*;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use latchkey::api::UserActivation;
use serde_json::json;
use support::oauth_server::{OAuthClient, OAuthServer, OAuthServerConfig, fingerprint};
use support::operator::Operator;
use support::{Bed, bed, namespace, private_bed, wait_for_value};

/// The access tokens live 16 s: a refresh is due 4–8 s after each grant.
const ACCESS_TTL_S: u64 = 16;

/// An activation `acme` of `sync`, consented through the hosted connect flow, Active.
async fn connected(client: &Client, ns: &str) {
    connect(client, ns, "acme").await;
    let api: Api<UserActivation> = Api::namespaced(client.clone(), ns);
    wait_for_value("Active", Duration::from_secs(30), || async {
        let p = phase(&api, "acme").await;
        if p == "Active" { Ok(()) } else { Err(p) }
    })
    .await;
}

/// What both tests start from: an operator on `bed` for a fresh namespace, the real OAuth server with 16-second
/// tokens behind the test's token front (case `case`), and activation `acme` Active. Returns the refresh token
/// of the grant as first stored.
struct Setup {
    ns: support::TestNamespace,
    op: Operator,
    server: OAuthServer,
    front: TokenFront,
    granted: String,
}

async fn setup(bed: &Bed, test: &str, case: &str) -> Setup {
    let client = bed.client();
    ensure_crds(&client).await;
    let ns = namespace(bed, test).await;
    let op = Operator::start(bed, &format!("faults_{}", test.replace('-', "_")), &[ns.name()], &[]).await;
    let callback = format!("{}/oauth/callback", op.connect_base_url);
    let server = OAuthServer::start(
        OAuthServerConfig::default()
            .client(OAuthClient::confidential("app", "app-secret").redirect_uri(&callback))
            .access_ttl(ACCESS_TTL_S),
    );
    let front = token_front(server.token_url()).await;
    oauth_connection(&client, ns.name(), &server, &front.token_url(case)).await;
    connected(&client, ns.name()).await;
    let granted = stored_refresh_token(&client, ns.name()).await;
    Setup { ns, op, server, front, granted }
}

async fn phase(api: &Api<UserActivation>, name: &str) -> String {
    api.get(name).await.ok().and_then(|u| u.status).and_then(|s| s.phase).map(|p| format!("{p:?}")).unwrap_or_default()
}

/// The refresh token the credentials Secret holds.
async fn stored_refresh_token(client: &Client, ns: &str) -> String {
    let s = Api::<Secret>::namespaced(client.clone(), ns).get("acme-sync-credentials").await.unwrap();
    s.data.unwrap_or_default().get("refresh_token").map(|v| String::from_utf8_lossy(&v.0).to_string()).unwrap_or_default()
}

/// Waits until the token front has received one more request for `case` than `before` (a refresh is out).
async fn refresh_out(front: &TokenFront, case: &str, before: usize) {
    let ok = eventually(Duration::from_secs(30), || async { front.requests(case) > before }).await;
    assert!(ok, "no refresh reached the provider within 30 s");
}

/// After the fault: a further refresh of the same grant succeeds (the Secret holds the live refresh token), the
/// activation stays Active, and the provider never saw a refresh token presented twice or refused one.
async fn the_grant_lives_on(client: &Client, ns: &str, server: &OAuthServer, front: &TokenFront, case: &str) -> Vec<String> {
    let api: Api<UserActivation> = Api::namespaced(client.clone(), ns);
    let before = front.requests(case);
    let t0 = chrono::Utc::now();
    let refreshed_again = wait_for_value("a further refresh", Duration::from_secs(60), || async {
        let ua = api.get("acme").await.map_err(|e| e.to_string())?;
        let st = ua.status.clone().unwrap_or_default();
        let p = st.phase.map(|p| format!("{p:?}")).unwrap_or_default();
        if p == "NeedsReauthorization" {
            return Ok(false);
        }
        match st.last_refresh_time {
            Some(t) if t > t0 && front.requests(case) > before && p == "Active" => Ok(true),
            _ => Err(format!("{p}, last refresh {:?}", st.last_refresh_time)),
        }
    })
    .await;
    let mut problems = Vec::new();
    if !refreshed_again {
        problems.push(format!("the grant was lost: {}", phase(&api, "acme").await));
    }
    let refreshes = server.refresh_events().await;
    let mut presented = std::collections::BTreeMap::<String, usize>::new();
    for e in &refreshes {
        if let Some(t) = &e.refresh_token {
            *presented.entry(t.fingerprint.clone()).or_default() += 1;
        }
        if e.status != 200 {
            problems.push(format!("the provider refused a refresh: {} {:?} {:?}", e.status, e.error, e.error_detail));
        }
    }
    if presented.values().any(|n| *n > 1) {
        problems.push("a refresh token was presented twice".into());
    }
    problems
}

// Multi-threaded: the token front keeps answering while the test thread waits for the operator to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_during_a_refresh_writes_the_rotated_tokens_before_exiting() {
    let bed = bed().await;
    let client = bed.client();
    let Setup { ns, mut op, server, front, granted } = setup(&bed, "rotation-stop", "stop").await;
    let n = ns.name().to_string();

    // The next refresh reaches the provider, which rotates; its answer is 3 s on the way when SIGTERM arrives.
    front.set("stop", TokenMode::SlowAnswer(3000));
    refresh_out(&front, "stop", front.requests("stop")).await;
    let stopped_at = Instant::now();
    let exit = op.stop();
    let took = stopped_at.elapsed();
    let log = op.log();
    assert!(exit.is_some_and(|s| s.success()), "the operator did not stop cleanly within 10 s: {exit:?}");
    assert!(log.contains("reconciles in flight finished"), "no graceful drain in the log");
    let stored = stored_refresh_token(&client, &n).await;
    assert!(stored != granted, "the rotated refresh token was not written before the exit (stopped in {took:?})");

    // A new process carries on with the grant.
    front.set("stop", TokenMode::Pass);
    let op2 = Operator::start(&bed, "faults_rotation_stop_2", &[&n], &[]).await;
    let problems = the_grant_lives_on(&client, &n, &server, &front, "stop").await;
    let secrets = vec![stored_refresh_token(&client, &n).await, granted, stored, "app-secret".into()];
    let leaks = leak_scan(&client, &[&n], &[op.log_path.as_path(), op2.log_path.as_path()], &n, &secrets).await;
    record("faults_rotation_stop", json!({"lost_refresh_tokens": usize::from(!problems.is_empty()), "secret_leaks": leaks.places.len()}));
    assert!(problems.is_empty(), "{problems:?}");
    assert!(leaks.places.is_empty(), "{:?}", leaks.places);
    drop(op2);
    ns.cleanup().await;
}

#[tokio::test]
async fn rotated_tokens_that_arrive_while_the_apiserver_is_away_are_written_when_it_returns() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/faults/bed-rotation-{}", std::process::id()));
    let bed = PrivateBed(private_bed(&dir).await);
    let Setup { ns, op, server, front, granted } = setup(&bed.0, "rotation-away", "away").await;
    let n = ns.name().to_string();

    // The provider rotates at once; its answer arrives 4 s later, while kube-apiserver is down for 8 s.
    front.set("away", TokenMode::SlowAnswer(4000));
    refresh_out(&front, "away", front.requests("away")).await;
    let b = bed.0.clone();
    tokio::task::spawn_blocking(move || restart_component(&b, "kube-apiserver", 8)).await.unwrap();
    front.set("away", TokenMode::Pass);
    let client = bed.0.client();

    // The kept answer is written once the apiserver is back, without asking the provider again.
    let written = eventually(Duration::from_secs(60), || async {
        Api::<Secret>::namespaced(client.clone(), &n).get("acme-sync-credentials").await.is_ok_and(|s| {
            s.data.unwrap_or_default().get("refresh_token").is_some_and(|v| String::from_utf8_lossy(&v.0) != granted.as_str())
        })
    })
    .await;
    let log = op.log();
    let failed_write = log.contains("the refreshed tokens could not be written");
    let rescued = log.contains("writing the tokens an earlier refresh got before its write failed");
    let problems = the_grant_lives_on(&client, &n, &server, &front, "away").await;
    let secrets = vec![stored_refresh_token(&client, &n).await, granted, "app-secret".into()];
    let leaks = leak_scan(&client, &[&n], &[op.log_path.as_path()], "acme", &secrets).await;
    record(
        "faults_rotation_away",
        json!({"lost_refresh_tokens": usize::from(!problems.is_empty()), "secret_leaks": leaks.places.len(),
               "write_failed_while_away": failed_write, "kept_answer_written": rescued}),
    );
    // The fault really hit the window: the write failed while the apiserver was away.
    assert!(failed_write, "the refresh's write did not fail: the apiserver was not away when the answer arrived");
    assert!(written && rescued, "the kept answer was not written after the apiserver returned (written {written}, log {rescued})");
    assert!(problems.is_empty(), "{problems:?}");
    assert!(leaks.places.is_empty(), "{:?}", leaks.places);
    drop(op);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_late_answer_to_a_refresh_the_operator_stopped_waiting_for_is_written_and_the_grant_lives_on() {
    let bed = bed().await;
    let client = bed.client();
    let Setup { ns, op, server, front, granted } = setup(&bed, "rotation-late", "late").await;
    let n = ns.name().to_string();

    // The connector gives token requests 2 s; the provider rotates at once and its answer takes 5 s to arrive.
    let patch = json!({"spec": {"http": {"timeoutSeconds": 2}}});
    Api::<latchkey::api::Connector>::namespaced(client.clone(), &n)
        .patch("idp", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    front.set("late", TokenMode::SlowAnswer(5000));
    refresh_out(&front, "late", front.requests("late")).await;
    // The refresh token that request presented: the Secret holds it until the answer is written.
    let presented = stored_refresh_token(&client, &n).await;
    let rotated = eventually(Duration::from_secs(40), || async { stored_refresh_token(&client, &n).await != presented }).await;
    front.set("late", TokenMode::Pass);
    let log = op.log();
    // The fault hit the window: the reconcile stopped waiting before the answer came.
    let gave_up = log.contains("did not answer within 2000 ms");
    let presentations = server
        .refresh_events()
        .await
        .iter()
        .filter(|e| e.refresh_token.as_ref().is_some_and(|t| t.fingerprint == fingerprint(&presented)))
        .count();
    let problems = the_grant_lives_on(&client, &n, &server, &front, "late").await;
    let secrets = vec![stored_refresh_token(&client, &n).await, granted, presented, "app-secret".into()];
    let leaks = leak_scan(&client, &[&n], &[op.log_path.as_path()], "acme", &secrets).await;
    record(
        "faults_rotation_late",
        json!({"lost_refresh_tokens": usize::from(!problems.is_empty()), "secret_leaks": leaks.places.len(),
               "reconcile_stopped_waiting": gave_up, "presentations_of_the_rotated_out_token": presentations}),
    );
    assert!(rotated, "the late answer's refresh token was never written");
    assert_eq!(presentations, 1, "the refresh token the slow request presented was presented {presentations} times");
    assert!(problems.is_empty(), "{problems:?}");
    assert!(gave_up, "the answer came within the reconcile's budget: the fault missed the window");
    assert!(leaks.places.is_empty(), "{:?}", leaks.places);
    drop(op);
    ns.cleanup().await;
}
