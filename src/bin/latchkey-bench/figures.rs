//! The figures on Latchkey itself: the bounds B1 and B2, convergence (operator started over existing
//! activations, and live), writes, restart cost, memory, CPU, startup; and the table.
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Opts;
use crate::bed::{AuditEvent, Bed, OPERATOR_USER, anyhow_lite::Result, breakdown};
use crate::load::{self, OPERATOR_NS, ReadyWatch, Workload};
use crate::results::{Results, median};

pub async fn bounds(o: &Opts, res: &mut Results) -> Result<()> {
    let (mut b1, mut b2) = (Vec::new(), Vec::new());
    let w = Workload { n: o.big, namespaces: o.namespaces };
    for run in 0..o.runs {
        let bed = bed_with_activations(o, &w, true).await?;
        let t1 = load::bound_b1(&bed.client, &w).await?;
        let t2 = load::bound_b2(&bed.client, &w).await?;
        bed.down();
        eprintln!("bench: bounds run {}: B1 {t1:.2}s, B2 {t2:.2}s (N={})", run + 1, o.big);
        b1.push(t1);
        b2.push(t2);
    }
    res.runs("bound_b1_seconds_10k", &b1);
    res.runs("bound_b2_seconds_10k", &b2);
    Ok(())
}

/// A fresh bed with the fixture (with or without the connection's Job) and the N activations B2 writes for.
async fn bed_with_activations(o: &Opts, w: &Workload, job: bool) -> Result<Bed> {
    let bed = Bed::up(&o.bed_dir()).await?;
    load::latchkey_fixture_with(&bed, w, &o.operator, job).await?;
    load::activations(&bed.client, w).await?;
    Ok(bed)
}

/// What one run of the operator over N activations measured.
#[derive(Default)]
struct Measured {
    converge_s: f64,
    timeline: Vec<(f64, usize)>,
    cpu_s: f64,
    startup_s: f64,
    cache_sync_s: f64,
    writes_converge: f64,
    writes_settled: f64,
    breakdown_converge: Value,
    breakdown_settled: Value,
    settle_s: f64,
    /// Every Job had finished when the settle ended: the idle and restart figures that follow are valid.
    jobs_finished: bool,
    steady_rss: f64,
    peak_rss: f64,
    idle_cpu_pct: f64,
    idle_writes_per_hour: f64,
    restart_writes: f64,
    restart_secret_gets: f64,
    restart_other_gets: f64,
    restart_breakdown: Value,
    restart_cache_sync_s: f64,
}

fn operator_writes(events: &[AuditEvent]) -> usize {
    events.iter().filter(|e| e.user == OPERATOR_USER && e.is_write() && e.namespace != OPERATOR_NS).count()
}

/// Waits until every Job the operator created has finished and the operator has then made no write for `quiet`
/// (each finished Job makes one status write), at most `cap`. On a loaded machine the controller-manager, the
/// scheduler and kwok can finish the Jobs long after the activations are Ready: the idle and restart windows must
/// not include their outcomes. Without `wait_for_jobs`: until no write for `quiet` (or `cap`). Returns the seconds
/// it took and whether every Job had finished (always true without `wait_for_jobs`).
///
/// What it watches costs the bed little: the Jobs through one watch (a list of 10,000 Jobs every few seconds
/// took the apiserver's CPU from the Jobs it was finishing), the audit log read on from where the last poll ended.
async fn settle(bed: &Bed, mark: u64, quiet: Duration, cap: Duration, wait_for_jobs: bool) -> (f64, bool) {
    let t0 = Instant::now();
    let jobs = wait_for_jobs.then(|| load::JobWatch::start(&bed.client));
    let mut tail = bed.audit_tail(mark);
    let (mut writes, mut last, mut since) = (0, usize::MAX, Instant::now());
    let mut jobs_done = !wait_for_jobs;
    while t0.elapsed() < cap {
        if let Some(j) = &jobs {
            jobs_done = j.all_finished();
        }
        writes += operator_writes(&tail.next_events());
        if writes != last {
            last = writes;
            since = Instant::now();
        } else if jobs_done && since.elapsed() >= quiet {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (t0.elapsed().as_secs_f64(), jobs_done)
}

/// One measurement over `n` activations. `started`: the activations exist before the operator starts (the
/// startup, restart and idle figures are taken then); otherwise they are created while it runs.
async fn run_operator(o: &Opts, n: usize, started: bool, extras: bool, name: &str) -> Result<Measured> {
    run_operator_with(o, n, started, extras, name, true).await
}

async fn run_operator_with(o: &Opts, n: usize, started: bool, extras: bool, name: &str, job: bool) -> Result<Measured> {
    let bed = Bed::up(&o.bed_dir()).await?;
    let w = Workload { n, namespaces: o.namespaces };
    load::latchkey_fixture_with(&bed, &w, &o.operator, job).await?;
    load::source_secrets(&bed.client, &w).await?;
    let mut watch = ReadyWatch::start(&bed.client, &load::ua_resource()).await;
    let timeout = Duration::from_secs(120 + n as u64 / 10);
    let mut m = Measured::default();
    let (op, mark, t0) = if started {
        load::activations(&bed.client, &w).await?;
        let mark = bed.audit_mark();
        let op = load::start_operator(&bed, &o.operator, name, o.concurrency, &o.logs()).await?;
        let t0 = op.proc.started;
        (op, mark, t0)
    } else {
        let op = load::start_operator(&bed, &o.operator, name, o.concurrency, &o.logs()).await?;
        let mark = bed.audit_mark();
        let t0 = Instant::now();
        load::activations(&bed.client, &w).await?;
        (op, mark, t0)
    };
    let (timeline, done) = watch.wait(n, t0, timeout).await;
    m.cpu_s = op.proc.cpu_seconds();
    let Some(converge_s) = done else {
        return Err(format!(
            "{} of {n} activations Ready after {}s; operator log {}",
            timeline.last().map(|x| x.1).unwrap_or(0),
            timeout.as_secs(),
            op.proc.log.display()
        )
        .into());
    };
    m.converge_s = converge_s;
    m.timeline = timeline;
    m.cache_sync_s = load::caches_synced_ms(&op.proc).unwrap_or(f64::NAN) / 1000.0;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let events = bed.audit_since(mark);
    m.writes_converge = operator_writes(&events) as f64 / n as f64;
    m.breakdown_converge = json!(breakdown(&events, OPERATOR_USER));
    if started {
        let wall0: chrono::DateTime<chrono::Utc> = op.proc.started_wall.into();
        m.startup_s = events
            .iter()
            .filter(|e| e.user == OPERATOR_USER && e.is_write() && e.namespace.starts_with("bench-t"))
            .map(|e| (e.received - wall0).num_microseconds().unwrap_or(0) as f64 / 1e6)
            .fold(f64::INFINITY, f64::min);
    }
    eprintln!("bench: {name}: {n} Ready after {converge_s:.2}s, {:.1} CPU-s, {:.2} writes/activation so far", m.cpu_s, m.writes_converge);
    // Only the idle and restart windows that follow (`extras`) need every Job finished. At 10,000 the bed's
    // controller-manager, scheduler and kwok took 470 s on a quiet machine and more than 1,120 s beside a build, so
    // they get a longer cap. A live run with Jobs reports its convergence only and stops here: each finished Job
    // makes the operator write its outcome, so "no write for a while" would wait for every Job (the started run of
    // the same figure measures the settled writes); a run without Jobs settles until its writes stop.
    let (quiet, cap) = match (o.scale.as_str(), extras, job) {
        (_, false, true) => (0, 0),
        ("tiny", _, _) => (3, 120),
        (_, true, _) => (5, 120 + n as u64 / 5),
        (_, false, false) => (5, 120 + n as u64 / 10),
    };
    (m.settle_s, m.jobs_finished) = settle(&bed, mark, Duration::from_secs(quiet), Duration::from_secs(cap), extras).await;
    let events = bed.audit_since(mark);
    m.writes_settled = operator_writes(&events) as f64 / n as f64;
    m.breakdown_settled = json!(breakdown(&events, OPERATOR_USER));
    let mut op = op;
    if extras {
        // Idle: converged, nothing changes; CPU and writes over the window, RSS averaged over it.
        let window = o.idle_window();
        let (cpu0, mark_idle) = (op.proc.cpu_seconds(), bed.audit_mark());
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(window)).await;
        let dt = t.elapsed().as_secs_f64();
        m.idle_cpu_pct = (op.proc.cpu_seconds() - cpu0) / dt * 100.0;
        m.idle_writes_per_hour = operator_writes(&bed.audit_since(mark_idle)) as f64 * 3600.0 / dt;
        m.steady_rss = op.proc.mean_rss_mib_last(window);
        m.peak_rss = op.proc.peak_rss_mib();
        // Restart with nothing changed: every activation reconciled once, no writes, no Secret reads.
        op.proc.kill();
        let mark_r = bed.audit_mark();
        let op2 = load::start_operator(&bed, &o.operator, &format!("{name}-restart"), o.concurrency, &o.logs()).await?;
        let t = Instant::now();
        while op2.reconciles("UserActivation").await < n as f64 && t.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let ev = bed.audit_since(mark_r);
        m.restart_writes = operator_writes(&ev) as f64;
        m.restart_secret_gets = ev
            .iter()
            .filter(|e| e.user == OPERATOR_USER && e.verb == "get" && e.resource == "secrets" && e.namespace != OPERATOR_NS)
            .count() as f64;
        m.restart_other_gets = ev
            .iter()
            .filter(|e| e.user == OPERATOR_USER && e.verb == "get" && e.resource == "secrets" && e.namespace == OPERATOR_NS)
            .count() as f64;
        m.restart_breakdown = json!(breakdown(&ev, OPERATOR_USER));
        m.restart_cache_sync_s = load::caches_synced_ms(&op2.proc).unwrap_or(f64::NAN) / 1000.0;
    } else {
        tokio::time::sleep(Duration::from_secs(5)).await;
        m.steady_rss = op.proc.mean_rss_mib_last(5.0);
        m.peak_rss = op.proc.peak_rss_mib();
    }
    let after = match (extras, m.jobs_finished) {
        (false, _) => "idle and restart not measured in this mode".to_string(),
        (true, finished) => format!(
            "idle {:.2}% CPU, restart {} writes {} tenant Secret GETs{}",
            m.idle_cpu_pct,
            m.restart_writes,
            m.restart_secret_gets,
            if finished { "" } else { " (void: Jobs still running at the cap, their outcomes fall in these windows)" }
        ),
    };
    eprintln!(
        "bench: {name}: settled after {:.0}s more, {:.2} writes/activation {}, RSS steady {:.1} MiB peak {:.1} MiB, {after}",
        m.settle_s, m.writes_settled, m.breakdown_settled, m.steady_rss, m.peak_rss,
    );
    drop(op);
    bed.down();
    Ok(m)
}

fn col<T>(ms: &[Measured], f: impl Fn(&Measured) -> T) -> Vec<T> {
    ms.iter().map(f).collect()
}

/// Keeps the timeline of the run whose convergence time is the median, thinned to at most 400 points.
pub fn keep_timeline(res: &mut Results, name: &str, runs: &[(f64, Vec<(f64, usize)>)]) {
    let times: Vec<f64> = runs.iter().map(|r| r.0).collect();
    let med = median(&times);
    let Some(r) = runs.iter().min_by(|a, b| (a.0 - med).abs().partial_cmp(&(b.0 - med).abs()).unwrap()) else { return };
    let step = (r.1.len() / 400).max(1);
    let mut pts: Vec<Value> = r.1.iter().step_by(step).map(|(t, n)| json!([(t * 1000.0).round() / 1000.0, n])).collect();
    if let Some((t, n)) = r.1.last() {
        pts.push(json!([t, n]));
    }
    let e = res.v.entry("timelines").or_insert_with(|| json!({}));
    if let Some(m) = e.as_object_mut() {
        m.insert(name.into(), Value::Array(pts));
    }
}

pub async fn converge(o: &Opts, res: &mut Results) -> Result<()> {
    let mut started = Vec::new();
    let mut live = Vec::new();
    for run in 0..o.runs {
        started.push(run_operator(o, o.big, true, true, &format!("converge-started-{}", run + 1)).await?);
        live.push(run_operator(o, o.big, false, false, &format!("converge-live-{}", run + 1)).await?);
    }
    res.runs("converge_seconds_10k", &col(&started, |m| m.converge_s));
    res.runs("converge_live_seconds_10k", &col(&live, |m| m.converge_s));
    res.runs("cpu_seconds_10k", &col(&started, |m| m.cpu_s));
    res.runs("startup_seconds_10k", &col(&started, |m| m.startup_s));
    res.runs("cache_sync_seconds_10k", &col(&started, |m| m.cache_sync_s));
    let mut wc = col(&started, |m| m.writes_converge);
    wc.extend(col(&live, |m| m.writes_converge));
    res.runs("writes_per_activation_apikey", &wc);
    // Settled with every Job's outcome: the started runs (the live ones do not wait for the Jobs).
    res.runs("writes_per_activation_apikey_settled", &col(&started, |m| m.writes_settled));
    res.set("writes_breakdown_converge", started.first().map(|m| m.breakdown_converge.clone()).unwrap_or_default());
    res.set("writes_breakdown_live_converge", live.first().map(|m| m.breakdown_converge.clone()).unwrap_or_default());
    res.set("writes_breakdown_settled", started.first().map(|m| m.breakdown_settled.clone()).unwrap_or_default());
    res.runs("steady_rss_mib_10k", &col(&started, |m| m.steady_rss));
    // Peak of each run: the higher of its two modes.
    let peaks: Vec<f64> = started.iter().zip(&live).map(|(a, b)| a.peak_rss.max(b.peak_rss)).collect();
    res.runs("peak_rss_mib_10k", &peaks);
    // Idle and restart only from runs whose Jobs had all finished: otherwise their outcomes (one status write each)
    // fall in those windows and the figures say nothing about the operator. None such: null, and `missing` says why.
    let settled: Vec<&Measured> = started.iter().filter(|m| m.jobs_finished).collect();
    type Figure = fn(&Measured) -> f64;
    let idle_restart: [(&str, Figure); 6] = [
        ("idle_cpu_percent_10k", |m| m.idle_cpu_pct),
        ("idle_writes_per_hour_10k", |m| m.idle_writes_per_hour),
        ("restart_writes", |m| m.restart_writes),
        ("restart_secret_gets", |m| m.restart_secret_gets),
        ("restart_signing_key_gets", |m| m.restart_other_gets),
        ("restart_cache_sync_seconds_10k", |m| m.restart_cache_sync_s),
    ];
    for (key, figure) in idle_restart {
        if settled.is_empty() {
            res.missing(key, "void: in every started run Jobs were still running when the settle cap was reached, so their outcomes fell in the idle and restart windows");
        } else {
            res.runs(key, &settled.iter().map(|m| figure(m)).collect::<Vec<_>>());
        }
    }
    res.set("restart_breakdown", settled.first().map(|m| m.restart_breakdown.clone()).unwrap_or_default());
    keep_timeline(res, "latchkey", &started.iter().map(|m| (m.converge_s, m.timeline.clone())).collect::<Vec<_>>());
    keep_timeline(res, "latchkey_live", &live.iter().map(|m| (m.converge_s, m.timeline.clone())).collect::<Vec<_>>());
    Ok(())
}

/// Like `converge` (started over existing activations), with a connection that has no Job: the credential path
/// alone, like for like with the peer, which only copies Secrets.
pub async fn converge_nojob(o: &Opts, res: &mut Results) -> Result<()> {
    let w = Workload { n: o.big, namespaces: o.namespaces };
    let (mut ms, mut b2) = (Vec::new(), Vec::new());
    for run in 0..o.runs {
        // Its bound in the same run: B2 without the Job, on a bed of its own.
        let bed = bed_with_activations(o, &w, false).await?;
        let t = load::bound_b2(&bed.client, &w).await?;
        bed.down();
        eprintln!("bench: converge_nojob run {}: B2 without the Job {t:.2}s (N={})", run + 1, o.big);
        b2.push(t);
        ms.push(run_operator_with(o, o.big, true, false, &format!("converge-nojob-{}", run + 1), false).await?);
    }
    res.runs("bound_b2_nojob_seconds_10k", &b2);
    res.runs("converge_nojob_seconds_10k", &col(&ms, |m| m.converge_s));
    res.runs("cpu_nojob_seconds_10k", &col(&ms, |m| m.cpu_s));
    res.runs("writes_per_activation_apikey_nojob", &col(&ms, |m| m.writes_settled));
    res.runs("peak_rss_nojob_mib_10k", &col(&ms, |m| m.peak_rss));
    res.set("writes_breakdown_nojob", ms.first().map(|m| m.breakdown_settled.clone()).unwrap_or_default());
    keep_timeline(res, "latchkey_nojob", &ms.iter().map(|m| (m.converge_s, m.timeline.clone())).collect::<Vec<_>>());
    Ok(())
}

/// Startup and memory at the smaller size (1,000 at full scale): process start to the first write of a
/// reconcile over existing activations, and the steady RSS that the per-activation growth is computed from.
pub async fn startup(o: &Opts, res: &mut Results) -> Result<()> {
    let mut ms = Vec::new();
    for run in 0..o.runs {
        ms.push(run_operator(o, o.small, true, true, &format!("startup-{}", run + 1)).await?);
    }
    res.runs("startup_seconds_1k", &col(&ms, |m| m.startup_s));
    res.runs("cache_sync_seconds_1k", &col(&ms, |m| m.cache_sync_s));
    res.runs("steady_rss_mib_1k", &col(&ms, |m| m.steady_rss));
    res.runs("converge_seconds_1k", &col(&ms, |m| m.converge_s));
    Ok(())
}

/// The table: key, value, spread, target.
pub fn table(v: &Value) -> String {
    let rows: &[(&str, &str)] = &[
        ("bound_b1_seconds_10k", ""),
        ("bound_b2_seconds_10k", ""),
        ("converge_seconds_10k", ""),
        ("converge_ratio_10k", "<= 1.3"),
        ("converge_live_seconds_10k", ""),
        ("converge_ratio_live_10k", "<= 1.5"),
        ("writes_per_activation_apikey", "<= 3.15"),
        ("writes_per_activation_apikey_settled", ""),
        ("writes_per_activation_oauth", "<= 4.2"),
        ("restart_writes", "0"),
        ("restart_secret_gets", "0"),
        ("steady_rss_mib_1k", ""),
        ("steady_rss_mib_10k", "<= 100"),
        ("peak_rss_mib_10k", "<= 160"),
        ("rss_kib_per_activation", "<= 8"),
        ("cpu_seconds_10k", ""),
        ("startup_seconds_1k", "<= 1"),
        ("startup_seconds_10k", "<= 3"),
        ("idle_cpu_percent_10k", "<= 2"),
        ("idle_writes_per_hour_10k", "0"),
        ("expired_tokens_served", "0"),
        ("refresh_lag_p99_seconds", "<= 1"),
        ("token_calls_per_refresh", "1"),
        ("callback_rps", ">= 20000"),
        ("callback_p99_ms", "<= 5"),
        ("oauth_callback_rps", ">= 20000"),
        ("oauth_callback_p99_ms", "<= 5"),
        ("forged_rps", ">= 50000"),
        ("callback_e2e_rps", ">= 200"),
        ("callback_e2e_p99_ms", "<= 100"),
        ("callback_e2e_bound_rps", ""),
        ("callback_e2e_bound_p99_ms", ""),
        ("consent_e2e_rps", ""),
        ("bound_b2_nojob_seconds_10k", ""),
        ("converge_nojob_seconds_10k", ""),
        ("converge_ratio_nojob_10k", ""),
        ("writes_per_activation_apikey_nojob", ""),
        ("eso_converge_seconds_10k", ""),
        ("eso_converge_speedup", ">= 5"),
        ("eso_converge_speedup_nojob", ""),
        ("eso_peak_rss_mib_10k", ""),
        ("peak_rss_ratio_to_eso", "<= 0.5"),
        ("eso_cpu_seconds_10k", ""),
        ("eso_writes_per_secret", ""),
        ("writes_ratio_to_eso", "< 1"),
    ];
    let n = v.get("n_10k").and_then(|x| x.as_u64()).unwrap_or(0);
    let n1 = v.get("n_1k").and_then(|x| x.as_u64()).unwrap_or(0);
    let mut s = format!(
        "\nLatchkey benchmark — scale {} (the _10k keys hold N={n}, the _1k keys N={n1})\n{:<38} {:>12} {:>22} {:>10}\n",
        v.get("scale").and_then(|x| x.as_str()).unwrap_or("?"),
        "key",
        "median",
        "spread (min..max)",
        "target"
    );
    for (k, target) in rows {
        let val = match v.get(*k) {
            Some(Value::Number(x)) => x.to_string(),
            Some(Value::Null) | None => {
                if v.pointer(&format!("/missing/{k}")).is_some() {
                    "missing".into()
                } else {
                    "-".into()
                }
            }
            Some(other) => other.to_string(),
        };
        let spread =
            v.pointer(&format!("/spread/{k}")).and_then(|x| x.as_array()).map(|a| format!("{}..{}", a[0], a[1])).unwrap_or_default();
        s += &format!("{k:<38} {val:>12} {spread:>22} {target:>10}\n");
    }
    s
}
