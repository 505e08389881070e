//! A private test bed for one measurement: `scripts/testenv/up.sh DIR` with the benchmark's audit policy (writes
//! plus Secret GETs), stopped by `down.sh` when dropped. The operator and the peer run against it as token users
//! so that the audit log tells their requests apart.
use std::collections::BTreeMap;
use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

pub const OPERATOR_USER: &str = "latchkey-operator";

pub struct Bed {
    pub dir: PathBuf,
    pub repo: PathBuf,
    pub client: Client,
    pub apiserver_url: String,
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Bed {
    /// Starts a fresh bed in `dir` (a bed left there is stopped first).
    pub async fn up(dir: &Path) -> anyhow_lite::Result<Bed> {
        let repo = repo();
        let _ =
            Command::new("bash").arg(repo.join("scripts/testenv/down.sh")).arg(dir).stdout(Stdio::null()).stderr(Stdio::null()).status();
        std::fs::create_dir_all(dir)?;
        let t0 = Instant::now();
        let out = Command::new("bash")
            .arg(repo.join("scripts/testenv/up.sh"))
            .arg(dir)
            .env("LATCHKEY_TESTENV_AUDIT_POLICY", repo.join("scripts/bench/audit-policy.yaml"))
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(format!("scripts/testenv/up.sh {} failed:\n{}", dir.display(), String::from_utf8_lossy(&out.stderr)).into());
        }
        let dir = dir.canonicalize()?;
        let kc = Kubeconfig::read_from(dir.join("kubeconfig")).map_err(|e| e.to_string())?;
        let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| e.to_string())?;
        config.read_timeout = Some(Duration::from_secs(120));
        let apiserver_url = config.cluster_url.to_string().trim_end_matches('/').to_string();
        let client = Client::try_from(config).map_err(|e| e.to_string())?;
        eprintln!("bench: bed up in {:.1}s ({})", t0.elapsed().as_secs_f64(), dir.display());
        Ok(Bed { dir, repo, client, apiserver_url })
    }

    pub fn kubectl(&self) -> PathBuf {
        let cache = std::env::var_os("LATCHKEY_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/latchkey"));
        cache.join("bin/kubectl")
    }

    /// `kubectl apply --server-side -f FILE` as admin, then waits for the CRDs to be established.
    pub fn apply_file(&self, file: &Path) -> anyhow_lite::Result<()> {
        let st = Command::new(self.kubectl())
            .args(["--kubeconfig"])
            .arg(self.dir.join("kubeconfig"))
            .args(["apply", "--server-side", "--force-conflicts", "-f"])
            .arg(file)
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            return Err(format!("kubectl apply -f {} failed", file.display()).into());
        }
        let st = Command::new(self.kubectl())
            .args(["--kubeconfig"])
            .arg(self.dir.join("kubeconfig"))
            .args(["wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"])
            .stdout(Stdio::null())
            .status()?;
        if !st.success() {
            return Err("CRDs not established".into());
        }
        Ok(())
    }

    pub fn token(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default().trim().to_string()
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("pki/ca.crt")).unwrap_or_default()
    }

    /// Namespaces with labels, at concurrency 32.
    pub async fn namespaces(&self, names: &[String], labels: serde_json::Value) -> anyhow_lite::Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        futures::stream::iter(names.iter().cloned())
            .map(|n| {
                let api = api.clone();
                let labels = labels.clone();
                async move {
                    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": n, "labels": labels}})).unwrap();
                    api.create(&PostParams::default(), &ns).await.map(|_| ())
                }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    pub fn audit_mark(&self) -> u64 {
        std::fs::metadata(self.dir.join("audit.log")).map(|m| m.len()).unwrap_or(0)
    }

    /// Audit events after `mark`.
    pub fn audit_since(&self, mark: u64) -> Vec<AuditEvent> {
        self.audit_tail(mark).next_events()
    }

    /// The audit log read on from `mark`, a little at a time (a poll that re-read everything since `mark` took
    /// 40 % of a core once 100,000 events had accumulated).
    pub fn audit_tail(&self, mark: u64) -> AuditTail {
        AuditTail { path: self.dir.join("audit.log"), pos: mark, partial: Vec::new() }
    }

    pub fn down(&self) {
        let _ = Command::new("bash")
            .arg(self.repo.join("scripts/testenv/down.sh"))
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The audit log from a position on: each [`AuditTail::next_events`] returns the events written since the call
/// before (a line still being written waits for the next call).
pub struct AuditTail {
    path: PathBuf,
    pos: u64,
    partial: Vec<u8>,
}

impl AuditTail {
    pub fn next_events(&mut self) -> Vec<AuditEvent> {
        let Ok(mut f) = std::fs::File::open(&self.path) else { return Vec::new() };
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return Vec::new();
        }
        let mut buf = std::mem::take(&mut self.partial);
        let before = buf.len();
        let _ = f.read_to_end(&mut buf);
        self.pos += (buf.len() - before) as u64;
        let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.partial = buf.split_off(complete);
        buf.as_slice().lines().map_while(Result::ok).filter_map(|l| AuditEvent::parse(&l)).collect()
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.down();
    }
}

#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    /// The response's HTTP status.
    #[allow(dead_code)]
    pub code: i64,
    /// When the apiserver received the request.
    pub received: chrono::DateTime<chrono::Utc>,
}

impl AuditEvent {
    fn parse(line: &str) -> Option<AuditEvent> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let s = |p: &str| v.pointer(p).and_then(|x| x.as_str()).unwrap_or("").to_string();
        Some(AuditEvent {
            user: s("/user/username"),
            verb: s("/verb"),
            resource: s("/objectRef/resource"),
            subresource: s("/objectRef/subresource"),
            namespace: s("/objectRef/namespace"),
            code: v.pointer("/responseStatus/code").and_then(|c| c.as_i64()).unwrap_or(0),
            received: s("/requestReceivedTimestamp").parse().ok()?,
        })
    }

    pub fn is_write(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete")
    }

    /// `secrets`, `useractivations/status`, ...
    pub fn what(&self) -> String {
        if self.subresource.is_empty() {
            format!("{} {}", self.verb, self.resource)
        } else {
            format!("{} {}/{}", self.verb, self.resource, self.subresource)
        }
    }
}

/// Writes by `user` grouped by verb and resource.
pub fn breakdown(events: &[AuditEvent], user: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for e in events.iter().filter(|e| e.user == user && e.is_write()) {
        *m.entry(e.what()).or_insert(0) += 1;
    }
    m
}

/// A tiny error type: the bench reports and exits, it does not recover.
pub mod anyhow_lite {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
}
