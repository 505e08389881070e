//! The workload: namespaces, the Connector and EmbeddedConnection, source Secrets and UserActivations created at
//! concurrency 32 by a plain kube client (the admin user); the bounds B1 and B2; and a watch that counts Ready.
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::bed::{Bed, anyhow_lite::Result};
use crate::process::{Proc, free_port, wait_http_ok};

pub const CONCURRENCY: usize = 32;
pub const INTEGRATIONS_NS: &str = "bench-integrations";
pub const OPERATOR_NS: &str = "latchkey-system";
pub const TENANT_LABEL: &str = "latchkey.dev/bench-tenant";

pub struct Workload {
    pub n: usize,
    pub namespaces: usize,
}

impl Workload {
    pub fn ns(&self, i: usize) -> String {
        format!("bench-t{:03}", i % self.namespaces)
    }
    pub fn tenant_namespaces(&self) -> Vec<String> {
        (0..self.namespaces).map(|i| format!("bench-t{i:03}")).collect()
    }
}

/// Runs `f(i)` for i in 0..n at concurrency 32; returns the elapsed seconds.
pub async fn at_concurrency<F, Fut>(n: usize, f: F) -> Result<f64>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), kube::Error>>,
{
    let t0 = Instant::now();
    futures::stream::iter(0..n).map(f).buffer_unordered(CONCURRENCY).try_collect::<Vec<()>>().await.map_err(|e| e.to_string())?;
    Ok(t0.elapsed().as_secs_f64())
}

pub fn ua_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("latchkey.dev", "v1alpha1", "UserActivation"), "useractivations")
}

/// The CRDs, the namespaces, a Connector (API key, no verification request) and an EmbeddedConnection with a
/// busybox Job admitting the labelled tenant namespaces.
pub async fn latchkey_fixture(bed: &Bed, w: &Workload, operator: &Path) -> Result<()> {
    latchkey_fixture_with(bed, w, operator, true).await
}

/// [`latchkey_fixture`], with or without the connection's Job (`job: false` isolates the credential path, like
/// for like with a peer that only copies Secrets).
pub async fn latchkey_fixture_with(bed: &Bed, w: &Workload, operator: &Path, job: bool) -> Result<()> {
    let crds = bed.dir.join("latchkey-crds.yaml");
    let out = std::process::Command::new(operator).arg("crds").output()?;
    std::fs::write(&crds, &out.stdout)?;
    bed.apply_file(&crds)?;
    bed.namespaces(&[INTEGRATIONS_NS.to_string(), OPERATOR_NS.to_string()], json!({})).await?;
    bed.namespaces(&w.tenant_namespaces(), json!({ TENANT_LABEL: "true" })).await?;
    let ar_c = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("latchkey.dev", "v1alpha1", "Connector"), "connectors");
    let ar_e =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("latchkey.dev", "v1alpha1", "EmbeddedConnection"), "embeddedconnections");
    let c: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector",
        "metadata": {"name": "bench-api", "namespace": INTEGRATIONS_NS},
        "spec": {"displayName": "Bench API", "baseUrl": "http://127.0.0.1:9",
                 "authMethods": [{"name": "token", "apiKey": {"in": "Header", "name": "Authorization", "prefix": "Bearer "}}]}
    }))?;
    Api::<DynamicObject>::namespaced_with(bed.client.clone(), INTEGRATIONS_NS, &ar_c)
        .create(&PostParams::default(), &c)
        .await
        .map_err(|e| e.to_string())?;
    let mut e = json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection",
        "metadata": {"name": "bench-sync", "namespace": INTEGRATIONS_NS},
        "spec": {"connectorRef": {"name": "bench-api"}, "authMethod": "token",
                 "allowedNamespaces": {"matchLabels": {TENANT_LABEL: "true"}},
                 "job": {"template": {"spec": {"containers": [{"name": "sync", "image": "busybox", "command": ["sh", "-c", "echo sync"]}]}}}}
    });
    if !job {
        e["spec"].as_object_mut().unwrap().remove("job");
    }
    let e: DynamicObject = serde_json::from_value(e)?;
    Api::<DynamicObject>::namespaced_with(bed.client.clone(), INTEGRATIONS_NS, &ar_e)
        .create(&PostParams::default(), &e)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// N source Secrets `key-<i>` (labelled as sources), one per activation.
pub async fn source_secrets(client: &Client, w: &Workload) -> Result<f64> {
    at_concurrency(w.n, |i| {
        let api: Api<Secret> = Api::namespaced(client.clone(), &w.ns(i));
        async move {
            let s: Secret = serde_json::from_value(json!({
                "metadata": {"name": format!("key-{i}"), "labels": {"latchkey.dev/source": "true"}},
                "stringData": {"api_key": format!("bench-key-{i:06}-{}", "x".repeat(24))}
            }))
            .unwrap();
            api.create(&PostParams::default(), &s).await.map(|_| ())
        }
    })
    .await
}

/// N UserActivations `ua-<i>` referencing `key-<i>`.
pub async fn activations(client: &Client, w: &Workload) -> Result<f64> {
    let ar = ua_resource();
    at_concurrency(w.n, |i| {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &w.ns(i), &ar);
        async move {
            let o: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation",
                "metadata": {"name": format!("ua-{i}")},
                "spec": {"connectionRef": {"name": "bench-sync", "namespace": INTEGRATIONS_NS},
                         "user": {"id": format!("user-{i}")}, "credentialsSecretRef": {"name": format!("key-{i}")},
                         "variables": {"org": format!("org-{i}")}}
            }))
            .unwrap();
            api.create(&PostParams::default(), &o).await.map(|_| ())
        }
    })
    .await
}

/// B1: N Secrets across the namespaces, plain creates.
pub async fn bound_b1(client: &Client, w: &Workload) -> Result<f64> {
    at_concurrency(w.n, |i| {
        let api: Api<Secret> = Api::namespaced(client.clone(), &w.ns(i));
        async move {
            let s: Secret = serde_json::from_value(
                json!({"metadata": {"name": format!("b1-{i}")}, "stringData": {"api_key": format!("bench-key-{i:06}")}}),
            )
            .unwrap();
            api.create(&PostParams::default(), &s).await.map(|_| ())
        }
    })
    .await
}

/// B2: per activation exactly the operator's write set, built by the operator's own code so that the objects are
/// the ones it writes (labels, annotations, owner reference, the Job's env and volumes, the first status with its
/// conditions): the owned Secret (server-side apply), its first Job (create), the first status (server-side apply
/// of the status subresource). The activations exist already and are read before the clock starts. The Job is
/// written when the bed's connection has one, as the operator would: on the fixture without a Job this is the
/// write set of `converge_nojob`, its like-for-like bound.
pub async fn bound_b2(client: &Client, w: &Workload) -> Result<f64> {
    use latchkey::api::{EmbeddedConnection, UserActivation};
    let uas: Vec<UserActivation> = Api::<UserActivation>::all(client.clone()).list(&Default::default()).await?.items;
    let mut by_name: std::collections::HashMap<(String, String), UserActivation> = uas
        .into_iter()
        .map(|u| ((u.metadata.namespace.clone().unwrap_or_default(), u.metadata.name.clone().unwrap_or_default()), u))
        .collect();
    let conn = Api::<EmbeddedConnection>::namespaced(client.clone(), INTEGRATIONS_NS).get("bench-sync").await?;
    let job_spec = conn.spec.job.clone();
    let template = match &job_spec {
        Some(j) => Some(latchkey::jobs::template(j).map_err(|e| format!("the bench's job template: {e}"))?),
        None => None,
    };
    let prepared: Vec<Option<UserActivation>> = (0..w.n).map(|i| by_name.remove(&(w.ns(i), format!("ua-{i}")))).collect();
    let prepared = std::sync::Arc::new(prepared);
    at_concurrency(w.n, |i| {
        let ns = w.ns(i);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        let typed: Api<UserActivation> = Api::namespaced(client.clone(), &ns);
        let prepared = prepared.clone();
        let (job_spec, template) = (job_spec.clone(), template.clone());
        async move {
            let name = format!("ua-{i}-bench-sync-credentials");
            let Some(ua) = prepared[i].as_ref() else { return Err(kube::Error::Service(format!("activation ua-{i} not found").into())) };
            let mut data = std::collections::BTreeMap::new();
            data.insert("api_key".to_string(), k8s_openapi::ByteString(format!("bench-key-{i:06}-{}", "x".repeat(24)).into_bytes()));
            let mut annotations = std::collections::BTreeMap::new();
            annotations.insert("latchkey.dev/credential-generation".to_string(), "1".to_string());
            annotations.insert("latchkey.dev/data-hash".to_string(), format!("{:032x}", i as u128 * 0x9e37_79b9_7f4a_7c15));
            annotations.insert("latchkey.dev/source-resource-version".to_string(), "552".to_string());
            let secret = latchkey::controller::user_activation::owned_secret_object(ua, &name, data, annotations);
            secrets.patch(&name, &PatchParams::apply("b2").force(), &Patch::Apply(&secret)).await?;
            let mut job_name = None;
            if let (Some(spec), Some(template)) = (job_spec.as_ref(), template) {
                let variables = ua.spec.variables.to_map();
                let input = latchkey::jobs::RunInput {
                    ua,
                    job: spec,
                    kind: latchkey::api::connector::AuthKind::ApiKey,
                    secret_name: &name,
                    run_key: "cred-1",
                    base_url: "http://127.0.0.1:9",
                    token_response_fields: &[],
                    variables: &variables,
                    extra: &[],
                };
                let job = latchkey::jobs::build(&input, template);
                job_name = job.metadata.name.clone();
                jobs.create(&PostParams { field_manager: Some("b2".into()), ..Default::default() }, &job).await?;
            }
            let now = chrono::Utc::now().to_rfc3339();
            let mut status = json!({"baseUrl": "http://127.0.0.1:9", "credentialGeneration": 1, "observedGeneration": 1, "phase": "Active",
                "secretName": name, "sourceResourceVersion": "552",
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "Active", "message": format!("credentials stored in Secret {name}"), "lastTransitionTime": now, "observedGeneration": 1},
                    {"type": "CredentialsValid", "status": "True", "reason": "NoVerificationDeclared", "message": "stored; the connector declares no verification request", "lastTransitionTime": now, "observedGeneration": 1}]});
            if let Some(j) = job_name {
                status["runGeneration"] = json!(1);
                status["lastRun"] = json!({"job": j, "outcome": "Running"});
            }
            let body = json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "status": status});
            typed.patch_status(&format!("ua-{i}"), &PatchParams::apply("b2").force(), &Patch::Apply(&body)).await.map(|_| ())
        }
    })
    .await
}

fn is_ready(o: &DynamicObject) -> bool {
    o.data
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Counts objects of `ar` with `Ready=True` through a cluster-wide watch. Call `start` before anything is
/// created; `wait` returns the (seconds since `t0`, ready count) timeline once `n` are Ready, or on `timeout`.
pub struct ReadyWatch {
    rx: tokio::sync::mpsc::UnboundedReceiver<(Instant, usize)>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyWatch {
    pub async fn start(client: &Client, ar: &ApiResource) -> ReadyWatch {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready: HashSet<String> = HashSet::new();
            let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
            let mut synced = Some(synced_tx);
            while let Some(ev) = stream.next().await {
                let Ok(ev) = ev else { continue };
                match ev {
                    watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                        let key =
                            format!("{}/{}", o.metadata.namespace.clone().unwrap_or_default(), o.metadata.name.clone().unwrap_or_default());
                        let changed = if is_ready(&o) { ready.insert(key) } else { ready.remove(&key) };
                        if changed {
                            let _ = tx.send((Instant::now(), ready.len()));
                        }
                    }
                    watcher::Event::Delete(o) => {
                        let key =
                            format!("{}/{}", o.metadata.namespace.clone().unwrap_or_default(), o.metadata.name.clone().unwrap_or_default());
                        if ready.remove(&key) {
                            let _ = tx.send((Instant::now(), ready.len()));
                        }
                    }
                    watcher::Event::InitDone => {
                        if let Some(s) = synced.take() {
                            let _ = s.send(());
                        }
                    }
                    watcher::Event::Init => {}
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(30), synced_rx).await;
        ReadyWatch { rx, task }
    }

    /// Waits until `n` are Ready. Returns the timeline relative to `t0` and whether all got Ready.
    pub async fn wait(&mut self, n: usize, t0: Instant, timeout: Duration) -> (Vec<(f64, usize)>, Option<f64>) {
        let mut timeline = vec![(0.0, 0)];
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((at, count))) => {
                    let t = at.saturating_duration_since(t0).as_secs_f64();
                    timeline.push((t, count));
                    if count >= n {
                        return (timeline, Some(t));
                    }
                }
                _ => return (timeline, None),
            }
        }
    }
}

impl Drop for ReadyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Jobs the operator created (by its `managed-by` label), through one cluster-wide watch: whether every one
/// that exists has finished (`Complete` or `Failed`).
pub struct JobWatch {
    state: tokio::sync::watch::Receiver<(bool, usize)>,
    task: tokio::task::JoinHandle<()>,
}

impl JobWatch {
    pub fn start(client: &Client) -> JobWatch {
        let api: Api<Job> = Api::all(client.clone());
        let config = watcher::Config::default().labels("app.kubernetes.io/managed-by=latchkey");
        let (tx, state) = tokio::sync::watch::channel((false, 0));
        let task = tokio::spawn(async move {
            let finished = |j: &Job| {
                j.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"))
            };
            let key = |j: &Job| j.metadata.uid.clone().unwrap_or_default();
            // `listing`: between a (re)list's Init and InitDone the set is partial and is not published.
            let (mut unfinished, mut listing) = (HashSet::new(), true);
            let mut stream = watcher(api, config).default_backoff().boxed();
            while let Some(ev) = stream.next().await {
                let Ok(ev) = ev else { continue };
                match ev {
                    watcher::Event::Init => {
                        unfinished.clear();
                        listing = true;
                    }
                    watcher::Event::Apply(j) | watcher::Event::InitApply(j) => {
                        if finished(&j) {
                            unfinished.remove(&key(&j));
                        } else {
                            unfinished.insert(key(&j));
                        }
                    }
                    watcher::Event::Delete(j) => {
                        unfinished.remove(&key(&j));
                    }
                    watcher::Event::InitDone => listing = false,
                }
                if !listing {
                    let _ = tx.send((true, unfinished.len()));
                }
            }
        });
        JobWatch { state, task }
    }

    /// The watch has listed the Jobs and none of them is still running.
    pub fn all_finished(&self) -> bool {
        let (synced, unfinished) = *self.state.borrow();
        synced && unfinished == 0
    }
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The operator process and its endpoints.
pub struct Operator {
    pub proc: Proc,
    pub metrics_url: String,
    #[allow(dead_code)]
    pub connect_url: String,
}

impl Operator {
    /// `latchkey_reconciles_total` of a kind, from `/metrics`.
    pub async fn reconciles(&self, kind: &str) -> f64 {
        let Ok(r) = reqwest::get(format!("{}/metrics", self.metrics_url)).await else { return 0.0 };
        let text = r.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with("latchkey_reconciles_total") && l.contains(&format!("\"{kind}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Starts `latchkey run` cluster-wide as the bed's operator user and waits for `/readyz` (caches synced).
pub async fn start_operator(bed: &Bed, operator: &Path, name: &str, concurrency: u16, log_dir: &Path) -> Result<Operator> {
    let (connect, metrics) = (free_port(), free_port());
    let args: Vec<String> = vec![
        "run".into(),
        "--log-format=json".into(),
        format!("--concurrency={concurrency}"),
        format!("--metrics-bind=127.0.0.1:{metrics}"),
        format!("--connect-bind=127.0.0.1:{connect}"),
        format!("--connect-base-url=http://127.0.0.1:{connect}"),
        format!("--operator-namespace={OPERATOR_NS}"),
    ];
    let env = [("KUBECONFIG", bed.dir.join("operator.kubeconfig").display().to_string()), ("RUST_LOG", "info".to_string())];
    let mut p = Proc::spawn(name, operator, &args, &env, log_dir, None)?;
    if !wait_http_ok(&mut p, &format!("http://127.0.0.1:{metrics}/readyz"), Duration::from_secs(120)).await {
        return Err(format!("the operator did not become ready; log {}", p.log.display()).into());
    }
    Ok(Operator { proc: p, metrics_url: format!("http://127.0.0.1:{metrics}"), connect_url: format!("http://127.0.0.1:{connect}") })
}

/// The `elapsed_ms` of the operator's "caches synced" log line (process start is earlier by the client setup).
pub fn caches_synced_ms(p: &Proc) -> Option<f64> {
    p.log_text()
        .lines()
        .find(|l| l.contains("caches synced"))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v.get("elapsed_ms").or_else(|| v.pointer("/fields/elapsed_ms")).and_then(|x| x.as_f64()))
}
