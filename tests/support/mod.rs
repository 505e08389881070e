//! Test support shared by the integration tests (`mod support;` in each test file).
//!
//! - [`bed()`]: the real control plane of `scripts/testenv/up.sh` (etcd, kube-apiserver, controller-manager,
//!   scheduler, kwok with one fake Node). The first test that needs it starts it, under a file lock so that
//!   parallel test binaries start only one, and leaves it running for the next runs: `make testenv-down`
//!   stops it. `$LATCHKEY_TESTENV_DIR` picks the folder (default `<repo>/.testenv`).
//! - [`namespace()`]: a fresh namespace per test, deleted when the [`TestNamespace`] is dropped (also when the
//!   test panics) or by [`TestNamespace::cleanup`]. `LATCHKEY_TEST_KEEP_NAMESPACES=1` keeps them for a look.
//! - [`wait_for`] and [`wait_for_value`]: poll until a condition holds, panicking with what was awaited.
//! - [`private_bed()`]: a second bed in a folder of its own, for fault tests that stop parts of it.
//!
//! Pods on the bed: Job pods end `Succeeded`; pods labelled `latchkey.dev/test-outcome=fail` end `Failed`,
//! `=hang` stay `Running`; an annotation `latchkey.dev/test-duration: "3s"` delays the end
//! (`scripts/testenv/kwok-stages.yaml`).
#![allow(dead_code)]

pub mod fixtures;
pub mod oauth_server;
pub mod operator;

use std::fmt::Display;
use std::future::Future;
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fs2::FileExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::OnceCell;

/// The admin user of the bed's kubeconfig (client certificate, group `system:masters`).
pub const ADMIN_USER: &str = "latchkey-admin";
/// A token user without groups or RBAC grants (`DIR/unprivileged-token`).
pub const UNPRIVILEGED_USER: &str = "latchkey-test-user";
/// A token user in `system:masters` for running the operator under a name of its own in the audit log
/// (`DIR/operator.kubeconfig`, `DIR/operator-token`).
pub const OPERATOR_USER: &str = "latchkey-operator";
/// Label on every namespace made by [`namespace()`].
pub const TEST_NAMESPACE_LABEL: &str = "latchkey.dev/test";

/// One running test bed. Cheap to get again: [`bed()`] gives each test its own `Client` (a kube `Client` is
/// bound to the tokio runtime it was made on, and each `#[tokio::test]` has its own runtime).
#[derive(Clone)]
pub struct Bed {
    /// The bed's folder (`$LATCHKEY_TESTENV_DIR` or `<repo>/.testenv`).
    pub dir: PathBuf,
    /// Admin kubeconfig (client certificate, CA and key embedded).
    pub kubeconfig: PathBuf,
    /// JSON lines, one per create/update/patch/delete request (level Metadata, stage ResponseComplete).
    pub audit_log: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub apiserver_url: String,
    config: Config,
    client: Client,
}

#[derive(Clone)]
struct BedInfo {
    dir: PathBuf,
    apiserver_url: String,
    config: Config,
}

static SHARED: OnceCell<Result<BedInfo, String>> = OnceCell::const_new();

/// The shared test bed: reuses a healthy one in the folder, otherwise starts it (and leaves it up).
pub async fn bed() -> Bed {
    let info = SHARED.get_or_init(|| ensure_bed(default_dir(), true)).await;
    let bed = match info {
        Ok(info) => Bed::from_info(info.clone()),
        Err(e) => panic!("{e}"),
    };
    CRDS.get_or_init(|| install_crds(bed.config())).await;
    bed
}

static CRDS: OnceCell<()> = OnceCell::const_new();

/// Server-side applies the CRDs of this build (what `latchkey crds` prints) once per test process, so that the
/// bed always serves the schema the code under test expects, and waits until they are served.
async fn install_crds(config: Config) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    // A client on a runtime of its own: this runs once, and the first test's runtime ends with that test.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        rt.block_on(async move {
            let client = Client::try_from(config).expect("a kube Client");
            let api: Api<CustomResourceDefinition> = Api::all(client.clone());
            let mut changed = false;
            for crd in latchkey::api::crds() {
                let name = crd.metadata.name.clone().expect("a CRD has a name");
                let before = api.get_opt(&name).await.ok().flatten().and_then(|c| c.metadata.resource_version);
                let after = api
                    .patch(&name, &PatchParams::apply("latchkey-tests").force(), &Patch::Apply(&crd))
                    .await
                    .unwrap_or_else(|e| panic!("installing CRD {name}: {e}"));
                changed |= before != after.metadata.resource_version;
            }
            let start = Instant::now();
            loop {
                let served = futures_served(&client).await;
                if served {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(30), "the Latchkey CRDs were not served within 30 s");
                tokio::time::sleep(POLL).await;
            }
            if changed {
                // A changed schema takes effect in the apiserver's handlers shortly after the update.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    })
    .join()
    .expect("installing the CRDs");
}

async fn futures_served(client: &Client) -> bool {
    use kube::api::ListParams;
    use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
    let lp = ListParams::default().limit(1);
    Api::<Connector>::all(client.clone()).list(&lp).await.is_ok()
        && Api::<EmbeddedConnection>::all(client.clone()).list(&lp).await.is_ok()
        && Api::<UserActivation>::all(client.clone()).list(&lp).await.is_ok()
}

/// A bed of its own in `dir` (other ports, other etcd), for tests that stop or restart parts of it. Stop it
/// with [`Bed::down`].
pub async fn private_bed(dir: impl AsRef<Path>) -> Bed {
    match ensure_bed(dir.as_ref().to_path_buf(), false).await {
        Ok(info) => Bed::from_info(info),
        Err(e) => panic!("{e}"),
    }
}

fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn default_dir() -> PathBuf {
    match std::env::var_os("LATCHKEY_TESTENV_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() { d } else { repo_dir().join(d) }
        }
        _ => repo_dir().join(".testenv"),
    }
}

/// Writes straight to the process's stderr, past the test harness's capture: starting a bed takes seconds and
/// leaves processes running, which the person running the tests should hear of.
fn tell(msg: &str) {
    let _ = writeln!(std::io::stderr(), "testenv: {msg}");
}

async fn ensure_bed(dir: PathBuf, shared: bool) -> Result<BedInfo, String> {
    if let Some(info) = try_existing(&dir).await {
        return Ok(info);
    }
    let d = dir.clone();
    let started =
        tokio::task::spawn_blocking(move || start_locked(&d)).await.map_err(|e| format!("starting the test bed panicked: {e}"))??;
    match try_existing(&dir).await {
        Some(info) => {
            if started && shared {
                tell(&format!(
                    "the test bed in {} stays up for later runs; `make testenv-down` (or scripts/testenv/down.sh {}) stops it",
                    dir.display(),
                    dir.display()
                ));
            }
            Ok(info)
        }
        None => Err(format!(
            "scripts/testenv/up.sh {} succeeded but its apiserver does not answer; logs in {}/logs",
            dir.display(),
            dir.display()
        )),
    }
}

/// A bed is usable when up.sh finished (it writes DIR/env last) and its apiserver answers.
async fn try_existing(dir: &Path) -> Option<BedInfo> {
    if !dir.join("env").is_file() || !dir.join("kubeconfig").is_file() {
        return None;
    }
    let config = load_config(&dir.join("kubeconfig")).await.ok()?;
    let client = Client::try_from(config.clone()).ok()?;
    let ok = tokio::time::timeout(Duration::from_secs(5), client.apiserver_version()).await.map(|r| r.is_ok()).unwrap_or(false);
    if !ok {
        return None;
    }
    Some(BedInfo { dir: dir.to_path_buf(), apiserver_url: config.cluster_url.to_string().trim_end_matches('/').to_string(), config })
}

/// Runs up.sh under an exclusive lock on DIR/.bed.lock (so parallel test binaries start one bed); up.sh itself
/// reuses a healthy bed that another binary started while this one waited. Returns whether it started one.
fn start_locked(dir: &Path) -> Result<bool, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock_path = dir.join(".bed.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    lock.lock_exclusive().map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
    let script = repo_dir().join("scripts/testenv/up.sh");
    tell(&format!("starting the test bed: {} {}", script.display(), dir.display()));
    let t0 = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .env("LATCHKEY_TESTENV_DIR", dir)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let _ = FileExt::unlock(&lock);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "the test bed did not come up ({} {} exited with {}):\n{}",
            script.display(),
            dir.display(),
            out.status,
            stderr.trim_end()
        ));
    }
    let started = !stderr.contains("already running");
    if started {
        tell(&format!("test bed up after {:.1}s: {}", t0.elapsed().as_secs_f64(), stderr.trim_end().lines().last().unwrap_or("")));
    }
    Ok(started)
}

async fn load_config(kubeconfig: &Path) -> Result<Config, String> {
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| format!("cannot read {}: {e}", kubeconfig.display()))?;
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("cannot load {}: {e}", kubeconfig.display()))
}

impl Bed {
    fn from_info(info: BedInfo) -> Bed {
        let client = Client::try_from(info.config.clone()).expect("a kube Client from the bed's kubeconfig");
        Bed {
            kubeconfig: info.dir.join("kubeconfig"),
            audit_log: info.dir.join("audit.log"),
            dir: info.dir,
            apiserver_url: info.apiserver_url,
            config: info.config,
            client,
        }
    }

    /// The admin client ([`ADMIN_USER`], `system:masters`).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The admin client's configuration, e.g. to change timeouts.
    pub fn config(&self) -> Config {
        self.config.clone()
    }

    /// A client that authenticates with a bearer token: a static token of the bed or a ServiceAccount token
    /// from the TokenRequest API.
    pub fn client_with_token(&self, token: &str) -> Client {
        let mut config = self.config.clone();
        config.auth_info = AuthInfo { token: Some(token.to_owned().into()), ..AuthInfo::default() };
        Client::try_from(config).expect("a kube Client with a bearer token")
    }

    /// The token of [`UNPRIVILEGED_USER`].
    pub fn unprivileged_token(&self) -> String {
        self.read_token("unprivileged-token")
    }

    /// A client for [`UNPRIVILEGED_USER`]: authenticated, but no RBAC grants until a test binds some.
    pub fn unprivileged_client(&self) -> Client {
        self.client_with_token(&self.unprivileged_token())
    }

    /// The token of [`OPERATOR_USER`] (`system:masters`).
    pub fn operator_token(&self) -> String {
        self.read_token("operator-token")
    }

    /// Kubeconfig of [`OPERATOR_USER`], to hand to an operator subprocess (`KUBECONFIG=...`).
    pub fn operator_kubeconfig(&self) -> PathBuf {
        self.dir.join("operator.kubeconfig")
    }

    /// The PEM of the bed's CA (signs the apiserver's serving certificate).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("pki/ca.crt")).expect("the bed's pki/ca.crt")
    }

    fn read_token(&self, file: &str) -> String {
        let p = self.dir.join(file);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display())).trim().to_owned()
    }

    /// A mark in the audit log: pass it to [`Bed::audit_events_since`] to see only later requests.
    pub fn audit_mark(&self) -> u64 {
        std::fs::metadata(&self.audit_log).map(|m| m.len()).unwrap_or(0)
    }

    /// Every audit event (one per write request) in the log.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        self.audit_events_since(0)
    }

    /// The audit events written after `mark` (from [`Bed::audit_mark`]). A line still being written is left out.
    pub fn audit_events_since(&self, mark: u64) -> Vec<serde_json::Value> {
        let Ok(mut f) = std::fs::File::open(&self.audit_log) else { return Vec::new() };
        if f.seek(SeekFrom::Start(mark)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        buf.as_slice().lines().map_while(Result::ok).filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok()).collect()
    }

    /// Audit events of write requests by `user` (`.user.username`) after `mark`.
    pub fn audit_writes_by(&self, user: &str, mark: u64) -> Vec<serde_json::Value> {
        self.audit_events_since(mark).into_iter().filter(|e| e["user"]["username"].as_str() == Some(user)).collect()
    }

    /// The operator's writes in namespace `ns` after `mark`, from the audit log.
    pub fn operator_writes_in(&self, ns: &str, mark: u64) -> Writes {
        Writes(self.audit_writes_by(OPERATOR_USER, mark).into_iter().filter(|e| e["objectRef"]["namespace"].as_str() == Some(ns)).collect())
    }

    /// Stops this bed (scripts/testenv/down.sh) and removes its state: for [`private_bed()`]s.
    pub fn down(&self) {
        let script = repo_dir().join("scripts/testenv/down.sh");
        let status = Command::new("bash").arg(&script).arg(&self.dir).status().expect("run down.sh");
        assert!(status.success(), "{} {} failed", script.display(), self.dir.display());
    }
}

/// Write requests from the audit log, to count what a test's activations cost.
pub struct Writes(pub Vec<serde_json::Value>);

impl Writes {
    /// One line per write: `verb resource[/subresource] name -> code`, for assertion messages.
    pub fn lines(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|e| {
                let sub = e["objectRef"]["subresource"].as_str().map(|s| format!("/{s}")).unwrap_or_default();
                format!("{} {}{} {} -> {}", e["verb"], e["objectRef"]["resource"], sub, e["objectRef"]["name"], e["responseStatus"]["code"])
            })
            .collect()
    }

    /// How many writes `verb` hit `resource` (`subresource` or none) on an object whose name `object` accepts.
    pub fn count(&self, resource: &str, subresource: Option<&str>, verb: &str, object: &dyn Fn(&str) -> bool) -> usize {
        self.0
            .iter()
            .filter(|e| {
                e["objectRef"]["resource"] == resource
                    && e["objectRef"]["subresource"].as_str() == subresource
                    && e["verb"] == verb
                    && object(e["objectRef"]["name"].as_str().unwrap_or(""))
            })
            .count()
    }
}

/// A namespace for one test, labelled `latchkey.dev/test=true`; deleted on drop (even when the test panics)
/// or by [`TestNamespace::cleanup`].
pub struct TestNamespace {
    pub name: String,
    client: Client,
    config: Config,
    deleted: bool,
}

/// Creates a namespace named `<prefix>-<random>` (the prefix is made DNS-safe and short enough).
pub async fn namespace(bed: &Bed, prefix: &str) -> TestNamespace {
    let mut p: String = prefix.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    p.truncate(40);
    let p = p.trim_matches('-');
    let p = if p.is_empty() { "test" } else { p };
    let suffix: String = {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..8).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect()
    };
    let name = format!("{p}-{suffix}");
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { TEST_NAMESPACE_LABEL: "true" } }
    }))
    .unwrap();
    let client = bed.client();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    TestNamespace { name, client, config: bed.config(), deleted: false }
}

impl TestNamespace {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An `Api` of a namespaced kind in this namespace (admin client).
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Deletes the namespace now (without waiting for it to be gone).
    pub async fn cleanup(mut self) {
        self.deleted = true;
        if keep_namespaces() {
            return;
        }
        delete_namespace(self.client.clone(), &self.name).await;
    }
}

fn keep_namespaces() -> bool {
    std::env::var("LATCHKEY_TEST_KEEP_NAMESPACES").is_ok_and(|v| !v.is_empty() && v != "0")
}

async fn delete_namespace(client: Client, name: &str) {
    match Api::<Namespace>::all(client).delete(name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => tell(&format!("could not delete namespace {name}: {e}")),
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        if keep_namespaces() {
            tell(&format!("keeping namespace {} (LATCHKEY_TEST_KEEP_NAMESPACES)", self.name));
            return;
        }
        // Drop cannot await, and the test's own runtime may be single-threaded and busy running this drop:
        // delete from a thread with a runtime (and a client) of its own.
        let name = self.name.clone();
        let config = self.config.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
            rt.block_on(async move {
                match Client::try_from(config) {
                    Ok(client) => {
                        let _ = tokio::time::timeout(Duration::from_secs(10), delete_namespace(client, &name)).await;
                    }
                    Err(e) => tell(&format!("could not delete namespace {name}: {e}")),
                }
            });
        })
        .join();
    }
}

const POLL: Duration = Duration::from_millis(100);

/// Polls `condition` every 100 ms until it is true; panics after `timeout` naming `what` was awaited.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {:.1}s waiting for {what}", timeout.as_secs_f64());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `probe` every 100 ms until it returns `Ok(value)`; panics after `timeout` naming `what` was awaited
/// and the last `Err` seen (say what state was found instead).
pub async fn wait_for_value<T, E, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    loop {
        let last = match probe().await {
            Ok(v) => return v,
            Err(e) => e.to_string(),
        };
        if start.elapsed() >= timeout {
            panic!("timed out after {:.1}s waiting for {what}; last seen: {last}", timeout.as_secs_f64());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the Job has a `Complete` or `Failed` condition that is `True`, and returns that type.
pub async fn wait_for_job_finished(jobs: &Api<Job>, name: &str, timeout: Duration) -> String {
    wait_for_value(&format!("Job {name} to finish (Complete or Failed)"), timeout, || async {
        let job = jobs.get(name).await.map_err(|e| e.to_string())?;
        let status = job.status.unwrap_or_default();
        let conditions = status.conditions.unwrap_or_default();
        if let Some(c) = conditions.iter().find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True") {
            return Ok(c.type_.clone());
        }
        Err(format!(
            "active={:?} succeeded={:?} failed={:?} conditions={:?}",
            status.active,
            status.succeeded,
            status.failed,
            conditions.iter().map(|c| format!("{}={}", c.type_, c.status)).collect::<Vec<_>>()
        ))
    })
    .await
}
