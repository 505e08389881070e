//! The peer side by side: External Secrets Operator v0.16.2 (scripts/bench/eso-build.sh builds it from the Go
//! module proxy) syncing N ExternalSecrets with its `kubernetes` provider from source Secrets into the same
//! namespaces, started over existing objects like Latchkey's `converge` run, with `--concurrent` equal to
//! Latchkey's concurrency, as its own token user so that the audit log counts its writes.
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::json;

use crate::Opts;
use crate::bed::{Bed, OPERATOR_USER, anyhow_lite::Result, breakdown};
use crate::figures::keep_timeline;
use crate::load::{self, ReadyWatch, Workload};
use crate::process::{Proc, free_port};
use crate::results::Results;

const SOURCE_NS: &str = "bench-source";

fn eso_dir(o: &Opts) -> PathBuf {
    o.eso.clone().unwrap_or_else(|| {
        let cache = std::env::var_os("LATCHKEY_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/latchkey"));
        cache.join("eso-v0.16.2")
    })
}

struct Run {
    converge_s: f64,
    timeline: Vec<(f64, usize)>,
    peak_rss: f64,
    cpu_s: f64,
    writes: f64,
}

pub async fn figure(o: &Opts, res: &mut Results) -> Result<()> {
    let dir = eso_dir(o);
    let bin = dir.join("external-secrets");
    if !bin.is_file() {
        let note = format!("ESO not built: run scripts/bench/eso-build.sh (expected {})", bin.display());
        for k in ["eso_converge_seconds_10k", "eso_peak_rss_mib_10k", "eso_writes_per_secret", "eso_cpu_seconds_10k"] {
            res.missing(k, &note);
        }
        return Err(note.into());
    }
    let mut runs = Vec::new();
    for run in 0..o.runs {
        runs.push(one(o, &dir, run + 1).await?);
    }
    res.runs("eso_converge_seconds_10k", &runs.iter().map(|r| r.converge_s).collect::<Vec<_>>());
    res.runs("eso_peak_rss_mib_10k", &runs.iter().map(|r| r.peak_rss).collect::<Vec<_>>());
    res.runs("eso_cpu_seconds_10k", &runs.iter().map(|r| r.cpu_s).collect::<Vec<_>>());
    res.runs("eso_writes_per_secret", &runs.iter().map(|r| r.writes).collect::<Vec<_>>());
    keep_timeline(res, "eso", &runs.iter().map(|r| (r.converge_s, r.timeline.clone())).collect::<Vec<_>>());
    Ok(())
}

async fn one(o: &Opts, dir: &std::path::Path, run: usize) -> Result<Run> {
    let n = o.big;
    let bed = Bed::up(&o.bed_dir()).await?;
    bed.apply_file(&dir.join("bundle.yaml"))?;
    let w = Workload { n, namespaces: o.namespaces };
    bed.namespaces(&[SOURCE_NS.to_string()], json!({})).await?;
    bed.namespaces(&w.tenant_namespaces(), json!({})).await?;
    let secrets: Api<Secret> = Api::namespaced(bed.client.clone(), SOURCE_NS);
    let token: Secret =
        serde_json::from_value(json!({"metadata": {"name": "eso-reader-token"}, "stringData": {"token": bed.token("admin-token")}}))?;
    secrets.create(&PostParams::default(), &token).await.map_err(|e| e.to_string())?;
    load::at_concurrency(n, |i| {
        let api = secrets.clone();
        async move {
            let s: Secret = serde_json::from_value(json!({"metadata": {"name": format!("key-{i}")}, "stringData": {"api_key": format!("bench-key-{i:06}-{}", "x".repeat(24))}})).unwrap();
            api.create(&PostParams::default(), &s).await.map(|_| ())
        }
    })
    .await?;
    let store_ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("external-secrets.io", "v1", "ClusterSecretStore"), "clustersecretstores");
    let es_ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("external-secrets.io", "v1", "ExternalSecret"), "externalsecrets");
    let ca = base64::engine::general_purpose::STANDARD.encode(bed.ca_pem());
    let store: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "external-secrets.io/v1", "kind": "ClusterSecretStore", "metadata": {"name": "bench"},
        "spec": {"provider": {"kubernetes": {
            "remoteNamespace": SOURCE_NS,
            "server": {"url": bed.apiserver_url, "caBundle": ca},
            "auth": {"token": {"bearerToken": {"name": "eso-reader-token", "key": "token", "namespace": SOURCE_NS}}}}}}
    }))?;
    Api::<DynamicObject>::all_with(bed.client.clone(), &store_ar)
        .create(&PostParams::default(), &store)
        .await
        .map_err(|e| e.to_string())?;
    let mut watch = ReadyWatch::start(&bed.client, &es_ar).await;
    load::at_concurrency(n, |i| {
        let api: Api<DynamicObject> = Api::namespaced_with(bed.client.clone(), &w.ns(i), &es_ar);
        async move {
            let es: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret", "metadata": {"name": format!("es-{i}")},
                "spec": {"refreshInterval": "1h", "secretStoreRef": {"kind": "ClusterSecretStore", "name": "bench"},
                         "target": {"name": format!("es-{i}-credentials")},
                         "data": [{"secretKey": "api_key", "remoteRef": {"key": format!("key-{i}"), "property": "api_key"}}]}
            }))
            .unwrap();
            api.create(&PostParams::default(), &es).await.map(|_| ())
        }
    })
    .await?;
    let mark = bed.audit_mark();
    let metrics = free_port();
    let args: Vec<String> = vec![
        format!("--concurrent={}", o.concurrency),
        format!("--metrics-addr=127.0.0.1:{metrics}"),
        "--enable-leader-election=false".into(),
        "--loglevel=info".into(),
    ];
    let env = [("KUBECONFIG", bed.dir.join("operator.kubeconfig").display().to_string())];
    let p = Proc::spawn(&format!("eso-{run}"), &dir.join("external-secrets"), &args, &env, &o.logs(), None)?;
    let t0 = p.started;
    let timeout = Duration::from_secs(300 + n as u64 / 5);
    let (timeline, done) = watch.wait(n, t0, timeout).await;
    let cpu_s = p.cpu_seconds();
    let Some(converge_s) = done else {
        return Err(format!(
            "ESO: {} of {n} ExternalSecrets Ready after {}s; log {}",
            timeline.last().map(|x| x.1).unwrap_or(0),
            timeout.as_secs(),
            p.log.display()
        )
        .into());
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ev = bed.audit_since(mark);
    let writes = ev.iter().filter(|e| e.user == OPERATOR_USER && e.is_write()).count() as f64 / n as f64;
    let peak_rss = p.peak_rss_mib();
    eprintln!(
        "bench: eso run {run}: {n} Ready after {converge_s:.2}s, {cpu_s:.1} CPU-s, peak {peak_rss:.1} MiB, {writes:.2} writes/secret {}",
        json!(breakdown(&ev, OPERATOR_USER))
    );
    drop(p);
    bed.down();
    Ok(Run { converge_s, timeline, peak_rss, cpu_s, writes })
}
