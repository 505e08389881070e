//! The connect server under open-loop load: the operator pinned to one core, the load generator (this binary,
//! `--load`) pinned to the other, requests sent at a fixed rate whatever the answers do, and each latency
//! counted from the request's scheduled time (so queueing shows, as it would for users).
//!
//! Paths: a valid connect link of an API-key activation (`GET /connect/<token>`: HMAC verify, then the activation,
//! connection and connector read from the apiserver, then the form) and forged links (`GET /connect/<forged>`:
//! refused after the HMAC check, before any I/O). The OAuth callback end to end needs a fresh `state` per
//! request from a completed consent; it is not measured yet.
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, PostParams};
use serde_json::json;

use crate::Opts;
use crate::bed::{Bed, anyhow_lite::Result};
use crate::load::{self, INTEGRATIONS_NS, OPERATOR_NS, Workload};
use crate::process::{Proc, free_port, wait_http_ok};
use crate::results::{Results, median};

/// What one load step measured.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct LoadResult {
    pub offered_rps: f64,
    pub achieved_rps: f64,
    pub ok: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// `latchkey-bench --load URL RATE SECONDS`: the open-loop generator; prints one JSON line. A producer schedules
/// one request every 1/RATE s; 256 workers on kept-alive connections take them in order. A request waits in the
/// queue when every worker is busy, and its latency runs from its scheduled time, so queueing is counted.
pub async fn load_main(url: &str, rate: f64, secs: f64) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(512).timeout(Duration::from_secs(10)).build().unwrap();
    let total = (rate * secs) as usize;
    let (work_tx, work_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let work_rx = std::sync::Arc::new(tokio::sync::Mutex::new(work_rx));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(bool, f64)>();
    for _ in 0..256 {
        let (c, u, tx, work) = (client.clone(), url.to_string(), tx.clone(), work_rx.clone());
        tokio::spawn(async move {
            loop {
                let Some(at) = work.lock().await.recv().await else { return };
                let ok = match c.get(&u).send().await {
                    Ok(r) => {
                        let s = r.status();
                        let _ = r.bytes().await;
                        s.is_success() || s.is_client_error()
                    }
                    Err(_) => false,
                };
                let _ = tx.send((ok, at.elapsed().as_secs_f64() * 1000.0));
            }
        });
    }
    drop(tx);
    let start = Instant::now();
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        if at > Instant::now() {
            tokio::time::sleep_until(at.into()).await;
        }
        let _ = work_tx.send(at);
    }
    drop(work_tx);
    let mut lat = Vec::with_capacity(total);
    let mut ok = 0u64;
    // Requests still queued 10 s after the last was due count as failed (the server could not keep up).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some((good, ms))) = tokio::time::timeout_at(deadline, rx.recv()).await {
        if good {
            ok += 1;
            lat.push(ms);
        }
    }
    let elapsed = start.elapsed().as_secs_f64().min(secs + 10.0);
    let errors = total as u64 - ok;
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| if lat.is_empty() { f64::NAN } else { lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] };
    let r = LoadResult { offered_rps: rate, achieved_rps: ok as f64 / elapsed, ok, errors, p50_ms: pct(0.50), p99_ms: pct(0.99) };
    println!("{}", serde_json::to_string(&r).unwrap());
}

/// Runs the generator pinned to CPU 0 for `secs` at `rate`.
fn run_load(url: &str, rate: f64, secs: f64) -> Result<LoadResult> {
    let me = std::env::current_exe()?;
    let out = std::process::Command::new("taskset")
        .args(["-c", "0"])
        .arg(me)
        .args(["--load", url, &rate.to_string(), &secs.to_string()])
        .output()?;
    let line = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(line.trim())?)
}

pub async fn figure(o: &Opts, res: &mut Results) -> Result<()> {
    let bed = Bed::up(&o.bed_dir()).await?;
    let w = Workload { n: 1, namespaces: 1 };
    load::latchkey_fixture(&bed, &w, &o.operator).await?;
    // An activation without credentials: it waits for its user and publishes a connect link.
    let ua: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "connect-me"},
        "spec": {"connectionRef": {"name": "bench-sync", "namespace": INTEGRATIONS_NS}, "user": {"id": "connect-user"}}
    }))?;
    let api: Api<DynamicObject> = Api::namespaced_with(bed.client.clone(), &w.ns(0), &load::ua_resource());
    api.create(&PostParams::default(), &ua).await.map_err(|e| e.to_string())?;
    let (connect, metrics) = (free_port(), free_port());
    let args: Vec<String> = vec![
        "run".into(),
        "--log-format=json".into(),
        format!("--metrics-bind=127.0.0.1:{metrics}"),
        format!("--connect-bind=127.0.0.1:{connect}"),
        format!("--connect-base-url=http://127.0.0.1:{connect}"),
        format!("--operator-namespace={OPERATOR_NS}"),
    ];
    let env = [("KUBECONFIG", bed.dir.join("operator.kubeconfig").display().to_string()), ("RUST_LOG", "warn".to_string())];
    let mut p = Proc::spawn("connect", &o.operator, &args, &env, &o.logs(), Some("1"))?;
    if !wait_http_ok(&mut p, &format!("http://127.0.0.1:{metrics}/readyz"), Duration::from_secs(60)).await {
        return Err("the operator did not become ready".into());
    }
    let t = Instant::now();
    let link = loop {
        let o2 = api.get("connect-me").await.map_err(|e| e.to_string())?;
        if let Some(u) = o2.data.pointer("/status/connectUrl").and_then(|x| x.as_str()) {
            break u.to_string();
        }
        if t.elapsed() > Duration::from_secs(30) {
            return Err("no status.connectUrl after 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let token = link.rsplit('/').next().unwrap_or_default().to_string();
    let valid = format!("http://127.0.0.1:{connect}/connect/{token}");
    let mut forged_tok = token.clone().into_bytes();
    let k = forged_tok.len() - 3;
    forged_tok[k] = if forged_tok[k] == b'A' { b'B' } else { b'A' };
    let forged = format!("http://127.0.0.1:{connect}/connect/{}", String::from_utf8_lossy(&forged_tok));
    let step = match o.scale.as_str() {
        "full" => 10.0,
        "small" => 5.0,
        _ => 1.0,
    };
    // Valid links: a ladder of offered rates; the throughput is the best achieved rate, the latency the p99
    // at 10,000 req/s offered.
    let mut ladder = Vec::new();
    for rate in [1_000.0, 2_000.0, 5_000.0, 10_000.0, 20_000.0] {
        let r = run_load(&valid, rate, step)?;
        eprintln!(
            "bench: connect page (valid link) offered {rate} req/s: achieved {:.0}, p50 {:.2} ms, p99 {:.2} ms, {} errors",
            r.achieved_rps, r.p50_ms, r.p99_ms, r.errors
        );
        let saturated = r.achieved_rps < 0.5 * rate;
        ladder.push(r);
        if saturated {
            break;
        }
    }
    let best = ladder.iter().map(|r| r.achieved_rps).fold(0.0, f64::max);
    res.runs("callback_rps", &[best]);
    // p99 at 10,000 req/s offered; when the ladder stopped below it (saturated), at the last rate offered.
    let at10k = ladder.iter().find(|r| r.offered_rps == 10_000.0).or(ladder.last()).map(|r| r.p99_ms).unwrap_or(f64::NAN);
    res.runs("callback_p99_ms", &[at10k]);
    res.set("callback_path", json!("GET /connect/<valid token> of an API-key activation (verify, read activation+connection+connector from the apiserver, render the form)"));
    res.set("callback_ladder", serde_json::to_value(&ladder)?);
    // Forged links: a flood; memory before and after.
    let flood_secs = match o.scale.as_str() {
        "full" => 300.0,
        "small" => 30.0,
        _ => 3.0,
    };
    let rss0 = p.rss_mib();
    let rate = 50_000.0;
    let r = run_load(&forged, rate, flood_secs)?;
    eprintln!(
        "bench: forged links offered {rate} req/s for {flood_secs}s: achieved {:.0}, p99 {:.2} ms, {} errors",
        r.achieved_rps, r.p99_ms, r.errors
    );
    let forged_runs = [r];
    let rss1 = p.rss_mib();
    res.runs("forged_rps", &[median(&forged_runs.iter().map(|r| r.achieved_rps).collect::<Vec<_>>())]);
    res.runs("forged_p99_ms", &[forged_runs[0].p99_ms]);
    res.runs("forged_flood_rss_growth_mib", &[rss1 - rss0]);
    res.set("forged_flood_seconds", json!(flood_secs));
    drop(p);
    bed.down();
    Ok(())
}
