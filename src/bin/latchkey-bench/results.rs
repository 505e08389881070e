//! `target/bench/results.json`: one number per key (the median of the runs), the runs and their spread, notes
//! for figures not measured, and the timelines for the plot. Each figure merges its keys as it finishes.
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

/// The keys the issue asks for, in table order. `make test` checks that each is present and numeric (or null
/// with a note under `missing`).
pub const REQUIRED_KEYS: &[&str] = &[
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

pub struct Results {
    pub path: PathBuf,
    pub v: Map<String, Value>,
}

/// The value at fraction `p` of an ascending slice (NaN when empty): the one percentile rule of every figure.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() { f64::NAN } else { sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)] }
}

pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

fn round(x: f64) -> Value {
    if !x.is_finite() {
        return Value::Null;
    }
    let digits = if x.abs() >= 100.0 {
        1
    } else if x.abs() >= 1.0 {
        3
    } else {
        5
    };
    let f = 10f64.powi(digits);
    json!((x * f).round() / f)
}

impl Results {
    /// Loads the file when it holds the same scale; otherwise starts a new one.
    pub fn load(path: &Path, scale: &str, meta: Value) -> Results {
        let old: Option<Map<String, Value>> = std::fs::read_to_string(path).ok().and_then(|s| serde_json::from_str(&s).ok());
        let mut v = match old {
            Some(m) if m.get("scale").and_then(|s| s.as_str()) == Some(scale) => m,
            _ => Map::new(),
        };
        v.insert("scale".into(), json!(scale));
        if let Value::Object(m) = meta {
            for (k, x) in m {
                v.insert(k, x);
            }
        }
        for k in REQUIRED_KEYS {
            v.entry(k.to_string()).or_insert(Value::Null);
        }
        Results { path: path.to_path_buf(), v }
    }

    fn obj(&mut self, name: &str) -> &mut Map<String, Value> {
        let e = self.v.entry(name.to_string()).or_insert_with(|| json!({}));
        if !e.is_object() {
            *e = json!({});
        }
        e.as_object_mut().unwrap()
    }

    /// The median of `runs` under `key`, the runs and the spread (min, max) beside it.
    pub fn runs(&mut self, key: &str, runs: &[f64]) {
        let m = median(runs);
        self.v.insert(key.into(), round(m));
        let rs: Vec<Value> = runs.iter().map(|x| round(*x)).collect();
        self.obj("runs").insert(key.into(), Value::Array(rs));
        let finite: Vec<f64> = runs.iter().copied().filter(|x| x.is_finite()).collect();
        if !finite.is_empty() {
            let (lo, hi) = (finite.iter().copied().fold(f64::INFINITY, f64::min), finite.iter().copied().fold(f64::NEG_INFINITY, f64::max));
            self.obj("spread").insert(key.into(), json!([round(lo), round(hi)]));
        }
        self.obj("missing").remove(key);
    }

    /// A results object of one run of a figure that measures one run per call (not saved anywhere).
    pub fn scratch() -> Results {
        Results { path: PathBuf::new(), v: Map::new() }
    }

    /// Merges runs of such a figure: each key with runs holds the median over them all, with the runs and the
    /// spread; every other key keeps the last run's value.
    pub fn absorb(&mut self, each: &[Results]) {
        let mut keys: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
        for r in each {
            if let Some(Value::Object(rs)) = r.v.get("runs") {
                for (k, xs) in rs {
                    let xs =
                        xs.as_array().map(|a| a.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect::<Vec<_>>()).unwrap_or_default();
                    keys.entry(k.clone()).or_default().extend(xs);
                }
            }
        }
        if let Some(last) = each.last() {
            for (k, v) in &last.v {
                if !matches!(k.as_str(), "runs" | "spread" | "missing") && !keys.contains_key(k) {
                    self.v.insert(k.clone(), v.clone());
                }
            }
            if let Some(Value::Object(m)) = last.v.get("missing") {
                for (k, note) in m {
                    self.missing(k, note.as_str().unwrap_or_default());
                }
            }
        }
        for (k, xs) in keys {
            self.runs(&k, &xs);
        }
    }

    pub fn set(&mut self, key: &str, v: Value) {
        self.v.insert(key.into(), v);
    }

    pub fn missing(&mut self, key: &str, note: &str) {
        self.v.insert(key.into(), Value::Null);
        self.obj("missing").insert(key.into(), json!(note));
    }

    pub fn num(&self, key: &str) -> Option<f64> {
        self.v.get(key).and_then(|x| x.as_f64())
    }

    /// Ratios between figures measured in this results file.
    pub fn derive(&mut self) {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => round(a / b),
            _ => Value::Null,
        };
        let b2 = self.num("bound_b2_seconds_10k");
        let r = ratio(self.num("converge_seconds_10k"), b2);
        self.set("converge_ratio_10k", r);
        let r = ratio(self.num("converge_live_seconds_10k"), b2);
        self.set("converge_ratio_live_10k", r);
        let r = ratio(self.num("converge_nojob_seconds_10k"), self.num("bound_b2_nojob_seconds_10k"));
        self.set("converge_ratio_nojob_10k", r);
        let (s_big, s_small, n_big, n_small) =
            (self.num("steady_rss_mib_10k"), self.num("steady_rss_mib_1k"), self.num("n_10k"), self.num("n_1k"));
        if let (Some(a), Some(b), Some(na), Some(nb)) = (s_big, s_small, n_big, n_small) {
            self.set("rss_kib_per_activation", round((a - b) * 1024.0 / (na - nb)));
        }
        let r = ratio(self.num("eso_converge_seconds_10k"), self.num("converge_seconds_10k"));
        self.set("eso_converge_speedup", r);
        let r = ratio(self.num("eso_converge_seconds_10k"), self.num("converge_nojob_seconds_10k"));
        self.set("eso_converge_speedup_nojob", r);
        let r = ratio(self.num("peak_rss_mib_10k"), self.num("eso_peak_rss_mib_10k"));
        self.set("peak_rss_ratio_to_eso", r);
        let r = ratio(self.num("writes_per_activation_apikey"), self.num("eso_writes_per_secret"));
        self.set("writes_ratio_to_eso", r);
        let r = ratio(self.num("cpu_seconds_10k"), self.num("eso_cpu_seconds_10k"));
        self.set("cpu_ratio_to_eso", r);
    }

    pub fn save(&mut self) {
        self.derive();
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = self.path.with_extension("json.tmp");
        if std::fs::write(&tmp, serde_json::to_string_pretty(&Value::Object(self.v.clone())).unwrap()).is_ok() {
            let _ = std::fs::rename(&tmp, &self.path);
        }
    }
}
