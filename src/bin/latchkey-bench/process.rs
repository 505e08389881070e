//! The measured process (the operator or the peer): started as a subprocess with its log in target/bench/logs,
//! its RSS sampled from /proc/PID/status every 100 ms and its CPU time read from /proc/PID/stat.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub struct Proc {
    #[allow(dead_code)]
    pub name: String,
    child: Option<Child>,
    pub pid: u32,
    pub started: Instant,
    pub started_wall: SystemTime,
    pub log: PathBuf,
    samples: Arc<Mutex<Vec<(f64, u64)>>>,
    sampler: Option<tokio::task::JoinHandle<()>>,
}

fn clk_tck() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| s.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok());
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// User + system CPU seconds of a process.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) ... utime is field 14 of the whole line, i.e. index 11 here; stime 12.
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / clk_tck())
}

impl Proc {
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        log_dir: &Path,
        cpu: Option<&str>,
    ) -> std::io::Result<Proc> {
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{name}.log"));
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut cmd = match cpu {
            Some(c) => {
                let mut c2 = Command::new("taskset");
                c2.arg("-c").arg(c).arg(program);
                c2
            }
            None => Command::new(program),
        };
        cmd.args(args).stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let started_wall = SystemTime::now();
        let started = Instant::now();
        let child = cmd.spawn()?;
        let pid = child.id();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let s2 = samples.clone();
        let sampler = tokio::spawn(async move {
            loop {
                match rss_kib(pid) {
                    Some((rss, _)) => s2.lock().unwrap().push((started.elapsed().as_secs_f64(), rss)),
                    None => return,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(Proc { name: name.into(), child: Some(child), pid, started, started_wall, log, samples, sampler: Some(sampler) })
    }

    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid).unwrap_or(f64::NAN)
    }

    /// Current RSS, MiB.
    pub fn rss_mib(&self) -> f64 {
        rss_kib(self.pid).map(|r| r.0 as f64 / 1024.0).unwrap_or(f64::NAN)
    }

    /// Peak RSS (VmHWM), MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        rss_kib(self.pid).map(|r| r.1 as f64 / 1024.0).unwrap_or(f64::NAN)
    }

    /// Mean RSS (MiB) over the samples taken in the last `window` seconds.
    pub fn mean_rss_mib_last(&self, window: f64) -> f64 {
        let s = self.samples.lock().unwrap();
        let end = s.last().map(|x| x.0).unwrap_or(0.0);
        let xs: Vec<f64> = s.iter().filter(|x| x.0 >= end - window).map(|x| x.1 as f64 / 1024.0).collect();
        if xs.is_empty() { f64::NAN } else { xs.iter().sum::<f64>() / xs.len() as f64 }
    }

    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(s) = self.sampler.take() {
            s.abort();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Polls `url` until it answers 2xx; false after `timeout` or when the process exited.
pub async fn wait_http_ok(p: &mut Proc, url: &str, timeout: Duration) -> bool {
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if let Ok(r) = http.get(url).timeout(Duration::from_secs(2)).send().await
            && r.status().is_success()
        {
            return true;
        }
        if !p.alive() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}
