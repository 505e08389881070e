//! The open-loop HTTP/1.1 load generator (`latchkey-bench --load TARGET RATE SECONDS`), lean enough that one core
//! of it outpaces one core of the server: request k is due at `start + k / RATE` whatever the answers do, and its
//! latency runs from that due time (queueing counts, as it would for users). 256 kept-alive connections over raw
//! TCP; request k goes out on connection k mod 256, so a slow answer delays the requests queued behind it on that
//! connection. TARGET is one URL (sent again and again) or `@FILE` with one URL per line (each sent once, in
//! order: single-use links). Requests still unanswered 10 s after the last was due count as failed.
//!
//! The schedule is kept by a pacing thread of its own that sleeps on the kernel's high-resolution timer (its slack
//! set to 1 µs) and hands each request to its connection's task when due. Tokio's timer ticks in whole
//! milliseconds and rounds a deadline up to the next tick: pacing by it sent every request up to 1 ms late and
//! in bursts of one tick's worth (10 at 10,000 req/s), which the latencies, counted from the due time, then
//! carried as if the server had queued them. The generator reports its own lateness (`send_late_*`): due time to
//! the request's write.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONNECTIONS: usize = 256;
const GRACE: Duration = Duration::from_secs(10);

/// JSON has no NaN: serde_json writes it as null, which reads back as NaN here.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// What one load step measured.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct LoadResult {
    #[serde(default, deserialize_with = "nan_if_null")]
    pub offered_rps: f64,
    #[serde(default, deserialize_with = "nan_if_null")]
    pub achieved_rps: f64,
    /// Answered with a status below 500.
    pub ok: u64,
    /// 5xx, no answer, or still queued at the deadline.
    pub errors: u64,
    #[serde(default, deserialize_with = "nan_if_null")]
    pub p50_ms: f64,
    #[serde(default, deserialize_with = "nan_if_null")]
    pub p99_ms: f64,
    /// Answers by status code.
    #[serde(default)]
    pub statuses: BTreeMap<u16, u64>,
    /// The generator's lateness: from a request's due time to its write (already in the latencies above). It
    /// includes the wait for its connection to finish the request before it, so past saturation it grows with
    /// the server's queue; below it, it is the generator's own.
    #[serde(default, deserialize_with = "nan_if_null")]
    pub send_late_p50_ms: f64,
    #[serde(default, deserialize_with = "nan_if_null")]
    pub send_late_p99_ms: f64,
    /// CPU seconds the generator itself used: near `wall_seconds` means the generator, not the server, was the limit.
    #[serde(default, deserialize_with = "nan_if_null")]
    pub generator_cpu_seconds: f64,
    #[serde(default, deserialize_with = "nan_if_null")]
    pub wall_seconds: f64,
    /// CPU seconds the server used meanwhile (filled in by the figure, which knows the server's pid).
    #[serde(default, deserialize_with = "nan_if_null")]
    pub server_cpu_seconds: f64,
    /// Server CPU per answered request, and the rate one whole core would serve at that cost.
    #[serde(default, deserialize_with = "nan_if_null")]
    pub server_cpu_us_per_request: f64,
    #[serde(default, deserialize_with = "nan_if_null")]
    pub rps_per_server_core: f64,
}

/// This process's CPU seconds (utime + stime).
fn own_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let (u, st): (f64, f64) = (rest.get(11)?.parse().ok()?, rest.get(12)?.parse().ok()?);
            Some((u + st) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// Host, port and request target of each URL.
fn parse(target: &str) -> Result<(String, Vec<String>), String> {
    let urls: Vec<String> = match target.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?.lines().map(str::to_string).collect(),
        None => vec![target.to_string()],
    };
    let mut authority = None;
    let mut paths = Vec::with_capacity(urls.len());
    for u in urls.iter().filter(|u| !u.trim().is_empty()) {
        let u = url::Url::parse(u.trim()).map_err(|e| format!("{u}: {e}"))?;
        let a = format!("{}:{}", u.host_str().unwrap_or("127.0.0.1"), u.port_or_known_default().unwrap_or(80));
        if authority.get_or_insert_with(|| a.clone()) != &a {
            return Err("every URL must name the same host and port".into());
        }
        paths.push(match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        });
    }
    Ok((authority.ok_or("no URL")?, paths))
}

/// Reads one response: its status, or `None` when the connection broke.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_ascii_lowercase())
        })
    };
    if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            if let Some(i) = buf[head_end..].windows(5).position(|w| w == b"0\r\n\r\n") {
                buf.drain(..head_end + i + 5);
                return Some(status);
            }
            let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    let len: usize = header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..head_end + len);
    Some(status)
}

/// The pacing thread's shortest sleep: requests due closer together than this go out together, up to this late.
/// Each wake costs the generator's core a thread switch and a wake-up of the connection tasks (~40 µs here), so
/// at 10,000 req/s or less every request goes out on its own, and above that they go in batches that keep the
/// generator ahead of one core of the server.
const TICK: Duration = Duration::from_micros(100);

/// The pacing thread: hands request k to connection k mod 256 when due, sleeping on the kernel's high-resolution
/// timer in between (at least [`TICK`]); requests already due go out at once, so falling behind never lowers the
/// rate. A connection past its deadline has dropped its receiver; its share is counted as failed by that task.
fn pace(start: Instant, rate: f64, total: usize, to: Vec<tokio::sync::mpsc::UnboundedSender<usize>>) {
    // SAFETY: prctl(PR_SET_TIMERSLACK) changes only this thread's timer slack; it takes no pointer.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong);
    }
    let due = |k: usize| start + Duration::from_secs_f64(k as f64 / rate);
    let mut k = 0;
    while k < total {
        let now = Instant::now();
        while k < total && due(k) <= now {
            let _ = to[k % to.len()].send(k);
            k += 1;
        }
        if k < total {
            std::thread::sleep(due(k).max(now + TICK).saturating_duration_since(Instant::now()));
        }
    }
}

/// One connection's share of the schedule: (latency ms, status or 0 for failed, lateness ms) per request.
async fn worker(
    authority: String,
    paths: std::sync::Arc<Vec<String>>,
    i: usize,
    total: usize,
    rate: f64,
    start: Instant,
    mut due: tokio::sync::mpsc::UnboundedReceiver<usize>,
) -> Vec<(f64, u16, f64)> {
    let deadline = start + Duration::from_secs_f64(total as f64 / rate) + GRACE;
    let mut out = Vec::with_capacity(total / CONNECTIONS + 1);
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(8 * 1024);
    let mut next = i;
    while next < total {
        let k = match tokio::time::timeout_at(deadline.into(), due.recv()).await {
            Ok(Some(k)) => k,
            _ => break,
        };
        let at = start + Duration::from_secs_f64(k as f64 / rate);
        let late = at.elapsed().as_secs_f64() * 1000.0;
        let path = &paths[k % paths.len()];
        let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: latchkey-bench\r\n\r\n");
        let attempt = async {
            if conn.is_none() {
                let s = TcpStream::connect(&authority).await.ok()?;
                let _ = s.set_nodelay(true);
                conn = Some(s);
                buf.clear();
            }
            let s = conn.as_mut()?;
            s.write_all(req.as_bytes()).await.ok()?;
            read_response(s, &mut buf).await
        };
        let status = match tokio::time::timeout_at(deadline.into(), attempt).await {
            Ok(Some(st)) => st,
            Ok(None) => {
                conn = None;
                0
            }
            Err(_) => break,
        };
        out.push((at.elapsed().as_secs_f64() * 1000.0, status, late));
        next = k + CONNECTIONS;
    }
    // Past the deadline: this and every later request of this connection failed.
    out.extend((next..total).step_by(CONNECTIONS).map(|_| (f64::NAN, 0, f64::NAN)));
    out
}

/// Runs the schedule and returns what it measured.
pub async fn run(target: &str, rate: f64, secs: f64) -> Result<LoadResult, String> {
    let (authority, paths) = parse(target)?;
    let total = if target.starts_with('@') { paths.len().min((rate * secs) as usize) } else { (rate * secs) as usize };
    let paths = std::sync::Arc::new(paths);
    let cpu0 = own_cpu_seconds();
    let start = Instant::now() + Duration::from_millis(50);
    let (senders, tasks): (Vec<_>, Vec<_>) = (0..CONNECTIONS.min(total))
        .map(|i| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (tx, tokio::spawn(worker(authority.clone(), paths.clone(), i, total, rate, start, rx)))
        })
        .unzip();
    let pacer =
        std::thread::Builder::new().name("pacer".into()).spawn(move || pace(start, rate, total, senders)).map_err(|e| e.to_string())?;
    let mut lat = Vec::with_capacity(total);
    let mut lateness = Vec::with_capacity(total);
    let mut statuses = BTreeMap::new();
    let mut ok = 0u64;
    for t in tasks {
        for (ms, status, late) in t.await.map_err(|e| e.to_string())? {
            if status != 0 {
                *statuses.entry(status).or_insert(0) += 1;
            }
            if status != 0 && status < 500 {
                ok += 1;
                lat.push(ms);
                lateness.push(late);
            }
        }
    }
    let _ = pacer.join();
    let wall_seconds = start.elapsed().as_secs_f64();
    let elapsed = start.elapsed().as_secs_f64().min(secs + GRACE.as_secs_f64());
    lat.sort_by(|a, b| a.total_cmp(b));
    lateness.sort_by(|a, b| a.total_cmp(b));
    let pct_of = crate::results::percentile;
    let pct = |p: f64| pct_of(&lat, p);
    Ok(LoadResult {
        offered_rps: rate,
        achieved_rps: ok as f64 / elapsed.max(total as f64 / rate),
        ok,
        errors: total as u64 - ok,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        statuses,
        send_late_p50_ms: pct_of(&lateness, 0.50),
        send_late_p99_ms: pct_of(&lateness, 0.99),
        generator_cpu_seconds: own_cpu_seconds() - cpu0,
        wall_seconds,
        server_cpu_seconds: f64::NAN,
        server_cpu_us_per_request: f64::NAN,
        rps_per_server_core: f64::NAN,
    })
}
