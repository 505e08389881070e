//! `latchkey-bench`: the benchmark behind `make bench` (scripts/bench.sh builds and runs it). Every figure starts
//! fresh private test beds under target/bench/, drives them with a plain kube client, measures the operator (or
//! the peer, External Secrets Operator) from outside — the apiserver's audit log for writes and Secret GETs,
//! /proc for RSS and CPU — and merges its numbers into target/bench/results.json as it finishes.
//!
//!   latchkey-bench [--figures bounds,converge,converge_nojob,startup,eso,connect,connect_e2e,refresh] [--scale tiny|small|full] [--runs N]
//!                  [--operator target/release/latchkey] [--eso DIR] [--out target/bench/results.json]
//!                  [--concurrency 32 (BENCH_CONCURRENCY)]
//!   latchkey-bench --table                  prints the table of the results file
//!   latchkey-bench --keys                   prints the keys every results file must hold, one a line
mod bed;
mod connect;
mod eso;
mod figures;
mod load;
mod openloop;
mod process;
mod refresh;
mod results;

use std::path::PathBuf;

use serde_json::json;

pub struct Opts {
    pub scale: String,
    /// N for the `_10k` keys (10,000 at full scale).
    pub big: usize,
    /// N for the `_1k` keys.
    pub small: usize,
    pub namespaces: usize,
    pub runs: usize,
    pub operator: PathBuf,
    pub eso: Option<PathBuf>,
    pub work: PathBuf,
    pub concurrency: u16,
}

impl Opts {
    pub fn logs(&self) -> PathBuf {
        self.work.join("logs")
    }
    pub fn bed_dir(&self) -> PathBuf {
        self.work.join("bed")
    }
    /// Seconds to measure idle CPU over.
    pub fn idle_window(&self) -> f64 {
        match self.scale.as_str() {
            "full" => 60.0,
            "small" => 30.0,
            _ => 5.0,
        }
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let repo = bed::repo();
    let out = arg(&args, "--out").map(PathBuf::from).unwrap_or_else(|| repo.join("target/bench/results.json"));
    if let Some(i) = args.iter().position(|a| a == "--load") {
        let url = args.get(i + 1).cloned().unwrap_or_default();
        let rate: f64 = args.get(i + 2).and_then(|x| x.parse().ok()).unwrap_or(1000.0);
        let secs: f64 = args.get(i + 3).and_then(|x| x.parse().ok()).unwrap_or(5.0);
        connect::load_main(&url, rate, secs);
        return;
    }
    if args.iter().any(|a| a == "--keys") {
        for k in results::REQUIRED_KEYS {
            println!("{k}");
        }
        return;
    }
    if let Some(port) = arg(&args, "--token-stub").and_then(|p| p.parse().ok()) {
        connect::token_stub_main(port).await;
        return;
    }
    if args.iter().any(|a| a == "--table") {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap_or_default()).unwrap_or_default();
        print!("{}", figures::table(&v));
        return;
    }
    let scale =
        arg(&args, "--scale").or_else(|| std::env::var("BENCH_SCALE").ok()).filter(|s| !s.is_empty()).unwrap_or_else(|| "small".into());
    let (big, small, namespaces, runs) = match scale.as_str() {
        "full" => (10_000, 1_000, 100, 3),
        "small" => (1_000, 100, 100, 3),
        "tiny" => (40, 10, 10, 1),
        other => {
            eprintln!("bench: unknown scale {other} (tiny, small, full)");
            std::process::exit(2);
        }
    };
    let runs = arg(&args, "--runs").or_else(|| std::env::var("BENCH_RUNS").ok()).and_then(|r| r.parse().ok()).unwrap_or(runs);
    let figures: Vec<String> = arg(&args, "--figures")
        .or_else(|| std::env::var("FIGURES").ok())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "bounds,converge,converge_nojob,eso,startup,refresh,connect,connect_e2e".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let opts = Opts {
        scale: scale.clone(),
        big,
        small,
        namespaces,
        runs,
        operator: arg(&args, "--operator").map(PathBuf::from).unwrap_or_else(|| repo.join("target/release/latchkey")),
        eso: arg(&args, "--eso").map(PathBuf::from),
        work: out.parent().map(|p| p.to_path_buf()).unwrap_or_else(|| repo.join("target/bench")),
        // The operator's (and ESO's) concurrency: B1's and B2's 32 by default, so that the bound and the operator
        // keep the same number of requests in flight (the operator's own default is 16).
        concurrency: arg(&args, "--concurrency")
            .or_else(|| std::env::var("BENCH_CONCURRENCY").ok())
            .and_then(|c| c.parse().ok())
            .unwrap_or(load::CONCURRENCY as u16),
    };
    let meta = json!({
        "n_10k": big, "n_1k": small, "namespaces": namespaces, "runs_per_figure": runs, "concurrency": opts.concurrency,
        "machine": machine(),
    });
    let mut res = results::Results::load(&out, &scale, meta);
    res.save();
    eprintln!(
        "bench: scale {scale} (N={big}, {small} for the _1k keys, {namespaces} namespaces), {runs} run(s) per figure: {}",
        figures.join(",")
    );
    let mut failed = Vec::new();
    for f in &figures {
        let t0 = std::time::Instant::now();
        eprintln!("bench: figure {f}");
        let r = match f.as_str() {
            "bounds" => figures::bounds(&opts, &mut res).await,
            "converge" => figures::converge(&opts, &mut res).await,
            "converge_nojob" => figures::converge_nojob(&opts, &mut res).await,
            "startup" => figures::startup(&opts, &mut res).await,
            "eso" => eso::figure(&opts, &mut res).await,
            // These measure one run per call: called once per run, merged into medians.
            "connect" | "connect_e2e" | "refresh" => {
                let mut each = Vec::new();
                let mut r = Ok(());
                for run in 0..opts.runs {
                    if opts.runs > 1 {
                        eprintln!("bench: figure {f}, run {} of {}", run + 1, opts.runs);
                    }
                    let mut one = results::Results::scratch();
                    r = match f.as_str() {
                        "connect" => connect::figure(&opts, &mut one, connect::Part::Paths).await,
                        "connect_e2e" => connect::figure(&opts, &mut one, connect::Part::EndToEnd).await,
                        _ => refresh::figure(&opts, &mut one).await,
                    };
                    if r.is_err() {
                        break;
                    }
                    each.push(one);
                }
                res.absorb(&each);
                r
            }
            other => Err(format!("unknown figure {other}").into()),
        };
        res.save();
        match r {
            Ok(()) => eprintln!("bench: figure {f} done in {:.0}s", t0.elapsed().as_secs_f64()),
            Err(e) => {
                eprintln!("bench: figure {f} FAILED after {:.0}s: {e}", t0.elapsed().as_secs_f64());
                failed.push(f.clone());
            }
        }
    }
    print!("{}", figures::table(&serde_json::Value::Object(res.v.clone())));
    eprintln!("bench: results in {}", out.display());
    if !failed.is_empty() {
        eprintln!("bench: failed figures: {}", failed.join(", "));
        std::process::exit(1);
    }
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()));
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<f64>().ok()))
        .map(|k| (k / 1048576.0).round());
    let load = std::fs::read_to_string("/proc/loadavg").ok().map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    json!({"cpu": cpu, "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), "mem_gib": mem, "loadavg_at_start": load,
           "date": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()})
}
