//! `make bench` cannot rot unnoticed: the benchmark runs at `BENCH_SCALE=tiny` (a few dozen objects, one run per
//! figure, private beds under target/bench-tiny) and every key the benchmark issue lists must be in its results
//! file as a number — or null with a note under `missing` saying why it is not measured. Timings are never
//! asserted here.
use std::path::PathBuf;
use std::process::Command;

const REQUIRED_KEYS: &[&str] = &[
    "bound_b1_seconds_10k",
    "bound_b2_seconds_10k",
    "converge_seconds_10k",
    "converge_ratio_10k",
    "converge_ratio_live_10k",
    "writes_per_activation_apikey",
    "writes_per_activation_oauth",
    "restart_writes",
    "restart_secret_gets",
    "steady_rss_mib_10k",
    "peak_rss_mib_10k",
    "rss_kib_per_activation",
    "startup_seconds_1k",
    "startup_seconds_10k",
    "idle_cpu_percent_10k",
    "expired_tokens_served",
    "refresh_lag_p99_seconds",
    "token_calls_per_refresh",
    "callback_rps",
    "callback_p99_ms",
    "callback_e2e_rps",
    "callback_e2e_p99_ms",
    "eso_converge_seconds_10k",
    "eso_peak_rss_mib_10k",
    "eso_writes_per_secret",
    "eso_cpu_seconds_10k",
    "cpu_seconds_10k",
];

#[test]
fn tiny_bench_writes_every_key() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = repo.join("target/bench-tiny");
    let out = work.join("results.json");
    let _ = std::fs::remove_file(&out);
    let cache = std::env::var_os("LATCHKEY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/latchkey"));
    let eso = cache.join("eso-v0.16.2");
    // ESO is built by scripts/bench/eso-build.sh (minutes, cold); without it its keys are null and say so.
    let figures = if eso.join("external-secrets").is_file() {
        "bounds,converge,startup,eso,connect,refresh"
    } else {
        "bounds,converge,startup,connect,refresh"
    };
    let status = Command::new(env!("CARGO_BIN_EXE_latchkey-bench"))
        .args(["--scale", "tiny", "--figures", figures, "--out"])
        .arg(&out)
        .args(["--operator", env!("CARGO_BIN_EXE_latchkey"), "--eso"])
        .arg(&eso)
        .status()
        .expect("run latchkey-bench");
    let _ = Command::new("bash").arg(repo.join("scripts/testenv/down.sh")).arg(work.join("bed")).status();
    assert!(status.success(), "latchkey-bench --scale tiny failed (logs in {})", work.join("logs").display());
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).expect("results.json")).expect("results.json is JSON");
    assert_eq!(v["scale"], "tiny");
    let mut problems = Vec::new();
    for k in REQUIRED_KEYS {
        match v.get(*k) {
            Some(x) if x.is_number() => {}
            Some(serde_json::Value::Null) if v["missing"][*k].is_string() => {}
            Some(serde_json::Value::Null) if k.starts_with("eso_") && figures.find("eso").is_none() => {}
            other => problems.push(format!("{k}: {other:?}")),
        }
    }
    assert!(problems.is_empty(), "keys missing or not numeric in {}: {problems:?}", out.display());
}
