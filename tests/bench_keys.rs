//! `make bench` cannot rot unnoticed: the benchmark runs at `BENCH_SCALE=tiny` (a few dozen objects, one run per
//! figure, private beds under target/bench-tiny) and every key the benchmark issue lists must be in its results
//! file as a number — or null with a note under `missing` saying why it is not measured. Timings are never
//! asserted here.
use std::path::PathBuf;
use std::process::Command;

/// The keys every results file must hold, as the benchmark itself lists them (`latchkey-bench --keys`).
fn required_keys() -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey-bench")).arg("--keys").output().expect("run latchkey-bench --keys");
    assert!(out.status.success(), "latchkey-bench --keys failed");
    let keys: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).filter(|l| !l.is_empty()).collect();
    assert!(keys.len() >= 20, "latchkey-bench --keys listed {} keys", keys.len());
    keys
}

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
        "bounds,converge,converge_nojob,startup,eso,connect,connect_e2e,refresh"
    } else {
        "bounds,converge,converge_nojob,startup,connect,connect_e2e,refresh"
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
    // Beyond the keys: converge_nojob's ratio to the B2 without the Job that the same figure measures.
    let mut keys = required_keys();
    keys.extend(["bound_b2_nojob_seconds_10k", "converge_nojob_seconds_10k", "converge_ratio_nojob_10k"].map(String::from));
    for k in &keys {
        let k = k.as_str();
        match v.get(k) {
            Some(x) if x.is_number() => {}
            Some(serde_json::Value::Null) if v["missing"][k].is_string() => {}
            Some(serde_json::Value::Null) if k.starts_with("eso_") && figures.find("eso").is_none() => {}
            other => problems.push(format!("{k}: {other:?}")),
        }
    }
    assert!(problems.is_empty(), "keys missing or not numeric in {}: {problems:?}", out.display());
}
