//! kube-apiserver and etcd restarted under the running operator (on a private bed: this test stops parts of its
//! control plane with scripts/testenv/restart.sh): the operator recovers without a restart of its own — its
//! watches come back, a change made after the outage converges, nothing converged is written again, no status
//! update is lost.
mod fault_support;
mod support;

use std::time::{Duration, Instant};

use fault_support::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};
use latchkey::api::UserActivation;
use serde_json::json;
use support::operator::Operator;
use support::{namespace, private_bed};

async fn ready_within(client: &Client, ns: &str, name: &str, timeout: Duration) -> Option<Duration> {
    let api: Api<UserActivation> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    let ok = eventually(timeout, || async { api.get(name).await.map(|u| is_ready(&u)).unwrap_or(false) }).await;
    ok.then(|| start.elapsed())
}

/// One Job as the test reads it: whether the bed's Job controller ever started it, and a line for messages.
struct JobState {
    name: String,
    /// Ended by its own status: a `Complete` or `Failed` condition that is True. The bed's controller-manager sets
    /// it; until it does (a Job it never started after the restarts, or one whose pod ended but whose status it
    /// has not updated yet), the Job is running as far as the apiserver knows.
    ended: bool,
    line: String,
}

impl std::fmt::Debug for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.line)
    }
}

/// Each Job of `ns` with its own outcome and its pods' phases: "name: active=1 succeeded=0 [Complete=True] pods [x:Running]".
async fn job_states(client: &Client, ns: &str) -> Vec<JobState> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods = pods.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    let Ok(list) = jobs.list(&ListParams::default()).await else {
        return vec![JobState { name: String::new(), ended: true, line: "(jobs not listed)".into() }];
    };
    list.items
        .iter()
        .map(|j| {
            let name = j.metadata.name.clone().unwrap_or_default();
            let st = j.status.clone().unwrap_or_default();
            let conds: Vec<String> =
                st.conditions.clone().unwrap_or_default().iter().map(|c| format!("{}={}", c.type_, c.status)).collect();
            let mine: Vec<String> = pods
                .iter()
                .filter(|p| p.metadata.labels.as_ref().and_then(|l| l.get("job-name")) == Some(&name))
                .map(|p| {
                    format!(
                        "{}:{}",
                        p.metadata.name.clone().unwrap_or_default(),
                        p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default()
                    )
                })
                .collect();
            let line = format!(
                "{name}: active={} succeeded={} failed={} {conds:?} pods {mine:?}",
                st.active.unwrap_or(0),
                st.succeeded.unwrap_or(0),
                st.failed.unwrap_or(0)
            );
            let ended =
                st.conditions.unwrap_or_default().iter().any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
            JobState { ended, name, line }
        })
        .collect()
}

/// Copies the bed's component logs to `target/test-logs/<to>/` before the bed (and its folder) goes away.
fn keep_bed_logs(bed_dir: &std::path::Path, to: &str) {
    let dest = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-logs").join(to);
    let _ = std::fs::create_dir_all(&dest);
    if let Ok(entries) = std::fs::read_dir(bed_dir.join("logs")) {
        for e in entries.flatten() {
            let _ = std::fs::copy(e.path(), dest.join(e.file_name()));
        }
    }
    let _ = std::fs::copy(bed_dir.join("audit.log"), dest.join("audit.log"));
}

#[tokio::test]
async fn the_operator_recovers_from_apiserver_and_etcd_restarts_without_its_own() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/faults/bed-{}", std::process::id()));
    let bed = private_bed(&dir).await;
    let bed = PrivateBed(bed);
    let client = bed.0.client();
    ensure_crds(&client).await;
    let p = provider().await;
    let ns = namespace(&bed.0, "faults-cp").await;
    let n = ns.name().to_string();
    api_key_connection(&client, &n, &p.url, true).await;
    activate(&client, &n, "before", "user-before", &n, "good-key-before-7a7a").await;
    let mut op = Operator::start(&bed.0, "faults_control_plane", &[&n], &[]).await;
    assert!(ready_within(&client, &n, "before", Duration::from_secs(30)).await.is_some(), "converges before the faults");
    // Converged includes its first run's outcome (kwok ends the Job's pod), so no later write is the run's.
    let uas: Api<UserActivation> = Api::namespaced(client.clone(), &n);
    let run_done = eventually(Duration::from_secs(60), || async {
        uas.get("before").await.ok().and_then(|u| condition(&u, "LastRunSucceeded")).is_some_and(|c| c.0 == "True")
    })
    .await;
    assert!(run_done, "the first run of the converged activation ends before the faults");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut figures = serde_json::Map::new();
    let mut failures = Vec::new();
    for (i, (component, down)) in [("kube-apiserver", 3u64), ("etcd", 3), ("kube-apiserver", 0)].into_iter().enumerate() {
        let mark = bed.0.audit_mark();
        restart_component(&bed.0, component, down);
        // The operator must notice by itself: an activation created after the restart converges.
        let client = bed.0.client();
        let name = format!("after-{i}");
        activate(&client, &n, &name, &format!("user-{name}"), &n, &format!("good-key-{name}-7a7a")).await;
        let took = ready_within(&client, &n, &name, Duration::from_secs(90)).await;
        let alive = op.log().lines().filter(|l| l.contains("latchkey starting")).count() == 1;
        figures.insert(format!("{component}#{i}_recovered_s"), json!(took.map(|d| d.as_secs_f64())));
        if took.is_none() {
            failures.push(format!("{name} not Ready 90 s after the {component} restart"));
        }
        if !alive {
            failures.push(format!("the operator restarted itself after the {component} restart"));
        }
        // The activations converged before the outage are not written again (resync costs no writes).
        let rewrites: Vec<String> = bed
            .0
            .audit_writes_by(support::OPERATOR_USER, mark)
            .iter()
            .filter(|e| e["objectRef"]["name"].as_str().is_some_and(|s| s.starts_with("before")))
            .map(|e| {
                let o = &e["objectRef"];
                format!(
                    "{} {}/{}{} -> {}",
                    e["verb"],
                    o["resource"],
                    o["name"],
                    o["subresource"].as_str().map(|s| format!("/{s}")).unwrap_or_default(),
                    e["responseStatus"]["code"]
                )
            })
            .collect();
        // A resync costs zero writes: the converged activation (its first run's outcome already in status) is not
        // written again.
        // No storm: what the operator wrote after the restart, all objects (the new activation's own writes included).
        figures.insert(format!("{component}#{i}_operator_writes"), json!(bed.0.audit_writes_by(support::OPERATOR_USER, mark).len()));
        figures.insert(format!("{component}#{i}_rewrites_of_converged"), json!(rewrites.len()));
        if !rewrites.is_empty() {
            figures.insert(format!("{component}#{i}_rewrites"), json!(rewrites));
        }
        if !rewrites.is_empty() {
            failures.push(format!("converged objects written again after the {component} restart: {rewrites:?}"));
        }
    }
    // No lost update: every activation ends Ready with its run's outcome in status, the ones whose Jobs ended
    // while the control plane was away included.
    let client = bed.0.client();
    let uas: Api<UserActivation> = Api::namespaced(client.clone(), &n);
    let stale_now = std::cell::RefCell::new(Vec::new());
    let settled = eventually(Duration::from_secs(60), || async {
        let mut stale = Vec::new();
        for name in ["before", "after-0", "after-1", "after-2"] {
            let ua = uas.get(name).await.ok();
            let ok = ua.as_ref().is_some_and(|u| is_ready(u) && condition(u, "LastRunSucceeded").is_some_and(|c| c.0 == "True"));
            if !ok {
                stale.push(format!("{name}: {:?}", ua.as_ref().and_then(|u| condition(u, "LastRunSucceeded"))));
            }
        }
        let done = stale.is_empty();
        *stale_now.borrow_mut() = stale;
        done
    })
    .await;
    if !settled {
        // Whose update is missing: the Job's own status (did it end?) and its pods, beside the activation's.
        let jobs = job_states(&client, &n).await;
        // A Job that the bed's controller-manager has not ended has no outcome to report: the activation's "running"
        // is then the truth, not a lost update. Seen in CI: a Job never started after the restarts (no pods, no
        // status), and a Job whose pod had Succeeded while its status still said active=1 a minute later.
        let not_ended = |ua: &str| jobs.iter().any(|j| j.name.starts_with(&format!("{ua}-")) && !j.ended);
        let stale = stale_now.borrow().clone();
        let lost: Vec<&String> =
            stale.iter().filter(|s| !(s.contains("JobRunning") && not_ended(s.split(':').next().unwrap_or_default()))).collect();
        if lost.is_empty() {
            figures.insert("jobs_not_ended_by_the_controller_manager".into(), json!(stale));
        } else {
            failures.push(format!("status not up to date after the restarts: {lost:?}; jobs: {jobs:?}"));
        }
    }
    if !failures.is_empty() {
        keep_bed_logs(&bed.0.dir, "faults_control_plane-bed");
    }
    let panics = op.log().lines().filter(|l| l.contains("panicked")).count();
    let leaks = leak_scan(&client, &[&n], &[op.log_path.as_path()], "before", &["good-key-before-7a7a".to_string()]).await;
    figures.insert("control_plane_restarts".into(), json!(3));
    figures.insert("operator_restarts_needed".into(), json!(failures.iter().filter(|f| f.contains("restarted itself")).count()));
    figures.insert("failures".into(), json!(failures));
    figures.insert("secret_leaks".into(), json!(leaks.places.len()));
    record("faults_control_plane", serde_json::Value::Object(figures.clone()));
    eprintln!("faults_control_plane: {}", serde_json::Value::Object(figures));
    op.stop();
    ns.cleanup().await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(panics, 0);
    assert!(leaks.places.is_empty(), "{:?}", leaks.places);
}
