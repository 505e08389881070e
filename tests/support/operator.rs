//! The operator as a subprocess: the built `latchkey` binary, watching only the test's namespaces, on free
//! loopback ports, with its log captured to `target/test-logs/<name>.log`.
use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Bed;

pub struct Operator {
    child: Option<Child>,
    pub log_path: PathBuf,
    pub connect_base_url: String,
    pub metrics_url: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    kubeconfig: PathBuf,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

impl Operator {
    /// Starts `latchkey run` as the bed's operator user (its own name in the audit log), watching `namespaces`,
    /// and waits until its caches have synced (`/readyz`).
    pub async fn start(bed: &Bed, name: &str, namespaces: &[&str], extra: &[&str]) -> Operator {
        Self::start_as(bed, &bed.operator_kubeconfig(), name, namespaces, extra).await
    }

    pub async fn start_as(bed: &Bed, kubeconfig: &std::path::Path, name: &str, namespaces: &[&str], extra: &[&str]) -> Operator {
        Self::start_inner(bed, kubeconfig, name, namespaces, "", extra, &[]).await
    }

    /// [`Operator::start`] with environment variables set for the operator process only (the proxy variables,
    /// for example, which would otherwise reach every test in the binary).
    pub async fn start_with_env(bed: &Bed, name: &str, namespaces: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Operator {
        Self::start_inner(bed, &bed.operator_kubeconfig(), name, namespaces, "", extra, env).await
    }

    /// [`Operator::start`] with the connect server's public URL ending in `path` (`/prefix`): its links, forms
    /// and OAuth callback live under it.
    pub async fn start_behind_path(bed: &Bed, name: &str, namespaces: &[&str], path: &str, extra: &[&str]) -> Operator {
        Self::start_inner(bed, &bed.operator_kubeconfig(), name, namespaces, path, extra, &[]).await
    }

    async fn start_inner(
        bed: &Bed,
        kubeconfig: &std::path::Path,
        name: &str,
        namespaces: &[&str],
        path: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Operator {
        let _ = bed;
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-logs");
        std::fs::create_dir_all(&dir).expect("target/test-logs");
        let log_path = dir.join(format!("{name}.log"));
        // A port found free can be taken before the operator binds it: by another test's listener, or as the source
        // port of any outgoing connection on the machine. Then the operator exits at once; it starts again on other
        // ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let connect_port = free_port();
            let metrics_port = free_port();
            let connect_base_url = format!("http://127.0.0.1:{connect_port}{path}");
            let mut args: Vec<String> = vec![
                "run".into(),
                "--log-format=json".into(),
                format!("--namespaces={}", namespaces.join(",")),
                format!("--connect-bind=127.0.0.1:{connect_port}"),
                format!("--connect-base-url={connect_base_url}"),
                format!("--metrics-bind=127.0.0.1:{metrics_port}"),
                format!("--operator-namespace={}", namespaces.first().copied().unwrap_or("default")),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let mut op = Operator {
                child: None,
                log_path: log_path.clone(),
                connect_base_url,
                metrics_url: format!("http://127.0.0.1:{metrics_port}"),
                args,
                env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                kubeconfig: kubeconfig.to_path_buf(),
            };
            let _ = std::fs::remove_file(&op.log_path);
            op.spawn();
            match op.ready().await {
                Ok(()) => return op,
                Err(why) if attempt < 3 && why.contains("Address already in use") => op.kill(),
                Err(why) => panic!("{why}"),
            }
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).expect("operator log file");
        let child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
            .args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info,latchkey=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start the latchkey binary");
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) {
        if let Err(why) = self.ready().await {
            panic!("{why}");
        }
    }

    /// Waits until `/readyz` answers; why not, with the operator's log, when it exited or took over 30 s.
    async fn ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", self.metrics_url)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("the operator exited with {status} while starting; its log:\n{}", self.log()));
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!("the operator was not ready after 30 s; its log:\n{}", self.log()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the operator printed so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// SIGKILL: the harshest stop.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// Starts the same operator again (same ports and log file).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready().await;
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.metrics_url)).await.expect("metrics").text().await.unwrap_or_default()
    }

    /// Asserts that none of `secrets` appears in the operator's log, after a positive control: `marker` (for
    /// example an activation name) must appear, so the capture worked.
    pub fn assert_no_leaks(&self, marker: &str, secrets: &[&str]) {
        let log = self.log();
        assert!(log.contains(marker), "positive control failed: {marker:?} not found in the operator log {}", self.log_path.display());
        for s in secrets {
            assert!(!log.contains(s), "a secret value leaked into the operator log {}", self.log_path.display());
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}
