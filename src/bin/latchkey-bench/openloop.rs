//! The open-loop HTTP/1.1 load generator (`latchkey-bench --load TARGET RATE SECONDS`), lean enough that one core
//! of it outpaces one core of the server: request k is due at `start + k / RATE` whatever the answers do, and its
//! latency runs from that due time (queueing counts, as it would for users). 256 kept-alive connections over raw
//! TCP; request k goes out on connection k mod 256, so a slow answer delays the requests queued behind it on that
//! connection. TARGET is one URL (sent again and again) or `@FILE` with one URL per line (each sent once, in
//! order: single-use links). Requests still unanswered 10 s after the last was due count as failed.
//!
//! One thread does everything: an edge-triggered epoll set (mio) holds the connections and a timerfd armed for the
//! next due request on the kernel's high-resolution timer (the thread's timer slack set to 1 µs). When it fires,
//! every request already due goes out on its connection; answers are read as they come. Nothing crosses a thread,
//! so a request costs the generator its write, its read and a share of one `epoll_wait`.
//!
//! Until the tenth session the schedule was kept by a pacing thread that handed each request to a tokio task per
//! connection over a channel: one cross-thread wake-up per request. On a 2.6 GHz AMD EPYC core that generator ran
//! out at ~40,000 req/s (its core 95 % busy) and was late by 3–6 ms at p99 already at 1,000–5,000 req/s.
//! (Before the seventh session it paced with tokio's 1 ms timer, which sent every request up to 1 ms late and in
//! bursts of one tick's worth.) The generator reports its own lateness (`send_late_*`): due time to the write.
use std::collections::{BTreeMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

const CONNECTIONS: usize = 256;
const GRACE: Duration = Duration::from_secs(10);
const TIMER: Token = Token(usize::MAX);
/// The shortest wait for the timer: requests due closer together than this go out together, up to this late. Each
/// firing costs three system calls (arm, wake, drain); at 20,000 req/s or less every request is timed on its own,
/// and above that, answers arriving wake the loop often enough that most requests go out without a firing.
const TICK: Duration = Duration::from_micros(50);

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

/// What the buffer holds: a whole response (its status and length), not yet one, or something that is not HTTP.
#[derive(Debug, PartialEq)]
enum Parsed {
    Complete { status: u16, len: usize },
    Partial,
    Broken,
}

/// Reads one response off the front of `buf` (content-length or chunked bodies).
fn parse_response(buf: &[u8]) -> Parsed {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else {
        return Parsed::Partial;
    };
    let Ok(head) = std::str::from_utf8(&buf[..head_end]) else { return Parsed::Broken };
    let Some(status) = head.split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()) else { return Parsed::Broken };
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_ascii_lowercase())
        })
    };
    if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        return match buf[head_end..].windows(5).position(|w| w == b"0\r\n\r\n") {
            Some(i) => Parsed::Complete { status, len: head_end + i + 5 },
            None => Parsed::Partial,
        };
    }
    let len = head_end + header("content-length").and_then(|l| l.parse::<usize>().ok()).unwrap_or(0);
    if buf.len() < len { Parsed::Partial } else { Parsed::Complete { status, len } }
}

/// A timerfd on CLOCK_MONOTONIC (the clock of `Instant`), armed for one instant at a time.
struct Timer {
    fd: OwnedFd,
    armed: Option<Instant>,
}

impl Timer {
    fn new() -> Result<Self, String> {
        // SAFETY: timerfd_create takes no pointer; a non-negative result is a new descriptor that we then own.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if fd < 0 {
            return Err(format!("timerfd_create: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) }, armed: None })
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Fires at `at` (at once if it has passed), replacing what was armed.
    fn arm(&mut self, at: Instant) {
        let d = at.saturating_duration_since(Instant::now()).max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as libc::c_long },
        };
        // SAFETY: both pointers are to valid itimerspec values for the duration of the call (the old value may be null).
        unsafe { libc::timerfd_settime(self.raw(), 0, &spec, std::ptr::null_mut()) };
        self.armed = Some(at);
    }

    /// After it fired: drains the expiry count so that the next arming can fire again.
    fn fired(&mut self) {
        let mut n = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a buffer of 8 bytes.
        unsafe { libc::read(self.raw(), n.as_mut_ptr().cast(), n.len()) };
        self.armed = None;
    }
}

/// One kept-alive connection: the requests due on it and not yet sent, the one in flight, and its buffers.
#[derive(Default)]
struct Conn {
    stream: Option<TcpStream>,
    queue: VecDeque<usize>,
    inflight: Option<usize>,
    /// Lateness of the request in flight (ms): its due time to its first write.
    sent_late: f64,
    out: Vec<u8>,
    written: usize,
    buf: Vec<u8>,
}

/// What the requests measured so far.
struct Tally {
    lat: Vec<f64>,
    lateness: Vec<f64>,
    statuses: BTreeMap<u16, u64>,
    ok: u64,
    finished: usize,
}

impl Tally {
    fn answered(&mut self, due: Instant, sent: f64, status: u16) {
        *self.statuses.entry(status).or_insert(0) += 1;
        if status < 500 {
            self.ok += 1;
            self.lat.push(due.elapsed().as_secs_f64() * 1000.0);
            self.lateness.push(sent);
        }
        self.finished += 1;
    }

    /// A request that got no answer: counted among the errors.
    fn failed(&mut self) {
        self.finished += 1;
    }
}

/// The generator's state: the schedule, the connections and what they measured.
struct Gen<'a> {
    poll: Poll,
    authority: &'a str,
    paths: &'a [String],
    start: Instant,
    rate: f64,
    conns: Vec<Conn>,
    tally: Tally,
}

impl Gen<'_> {
    fn due(&self, k: usize) -> Instant {
        self.start + Duration::from_secs_f64(k as f64 / self.rate)
    }

    /// Sends connection `i`'s next queued request if none is in flight, connecting first when it has no stream.
    fn send_next(&mut self, i: usize) {
        while self.conns[i].inflight.is_none() {
            let Some(k) = self.conns[i].queue.pop_front() else { return };
            if self.conns[i].stream.is_none() {
                match std::net::TcpStream::connect(self.authority) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        let _ = s.set_nonblocking(true);
                        let mut s = TcpStream::from_std(s);
                        if self.poll.registry().register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE).is_err() {
                            self.tally.failed();
                            continue;
                        }
                        self.conns[i].stream = Some(s);
                        self.conns[i].buf.clear();
                    }
                    Err(_) => {
                        self.tally.failed();
                        continue;
                    }
                }
            }
            let c = &mut self.conns[i];
            c.out.clear();
            let _ = write!(
                c.out,
                "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: latchkey-bench\r\n\r\n",
                self.paths[k % self.paths.len()],
                self.authority
            );
            c.written = 0;
            c.inflight = Some(k);
            self.conns[i].sent_late = self.due(k).elapsed().as_secs_f64() * 1000.0;
            self.flush(i);
        }
    }

    /// Writes what is left of connection `i`'s request; on a broken connection, fails the request.
    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(s) = c.stream.as_mut() else { return };
        while c.written < c.out.len() {
            match s.write(&c.out[c.written..]) {
                Ok(0) => return self.broken(i),
                Ok(n) => c.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.broken(i),
            }
        }
    }

    /// Reads what connection `i` has; a complete answer finishes its request and sends the next. An answer followed
    /// by the server's close still counts; the next request then reconnects.
    fn read(&mut self, i: usize) {
        let mut chunk = [0u8; 16 * 1024];
        let mut closed = false;
        loop {
            let c = &mut self.conns[i];
            let Some(s) = c.stream.as_mut() else { return };
            match s.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => c.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        match parse_response(&self.conns[i].buf) {
            Parsed::Partial if !closed => {}
            Parsed::Partial | Parsed::Broken => self.broken(i),
            Parsed::Complete { status, len } => {
                let c = &mut self.conns[i];
                c.buf.drain(..len);
                let (Some(k), sent_late) = (c.inflight.take(), c.sent_late) else { return self.broken(i) };
                self.tally.answered(self.due(k), sent_late, status);
                if closed { self.broken(i) } else { self.send_next(i) }
            }
        }
    }

    /// Drops connection `i`: its request in flight failed; the next one reconnects.
    fn broken(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.buf.clear();
        if c.inflight.take().is_some() {
            self.tally.failed();
        }
        self.send_next(i);
    }
}

/// Runs the schedule and returns what it measured.
pub fn run(target: &str, rate: f64, secs: f64) -> Result<LoadResult, String> {
    let (authority, paths) = parse(target)?;
    let total = if target.starts_with('@') { paths.len().min((rate * secs) as usize) } else { (rate * secs) as usize };
    // SAFETY: prctl(PR_SET_TIMERSLACK) changes only this thread's timer slack; it takes no pointer.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong, 0 as libc::c_ulong);
    }
    let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
    let mut timer = Timer::new()?;
    poll.registry().register(&mut SourceFd(&timer.raw()), TIMER, Interest::READABLE).map_err(|e| format!("epoll: {e}"))?;
    let n = CONNECTIONS.min(total.max(1));
    let cpu0 = own_cpu_seconds();
    let start = Instant::now() + Duration::from_millis(50);
    let mut g = Gen {
        poll,
        authority: &authority,
        paths: &paths,
        start,
        rate,
        conns: (0..n).map(|_| Conn::default()).collect(),
        tally: Tally { lat: Vec::with_capacity(total), lateness: Vec::with_capacity(total), statuses: BTreeMap::new(), ok: 0, finished: 0 },
    };
    let deadline = start + Duration::from_secs_f64(total as f64 / rate) + GRACE;
    let mut events = Events::with_capacity(1024);
    let mut next = 0;
    while g.tally.finished < total {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        while next < total && g.due(next) <= now {
            g.conns[next % n].queue.push_back(next);
            g.send_next(next % n);
            next += 1;
        }
        let wake = if next < total { g.due(next).max(now + TICK) } else { deadline };
        if timer.armed.is_none_or(|a| a > wake) {
            timer.arm(wake);
        }
        if g.poll.poll(&mut events, None).is_err() {
            continue;
        }
        for ev in events.iter() {
            match ev.token() {
                TIMER => timer.fired(),
                Token(i) => {
                    if ev.is_writable() {
                        g.flush(i);
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        g.read(i);
                    }
                }
            }
        }
    }
    let wall_seconds = start.elapsed().as_secs_f64();
    let elapsed = wall_seconds.min(secs + GRACE.as_secs_f64());
    let Tally { mut lat, mut lateness, statuses, ok, .. } = g.tally;
    lat.sort_by(|a, b| a.total_cmp(b));
    lateness.sort_by(|a, b| a.total_cmp(b));
    let pct_of = crate::results::percentile;
    Ok(LoadResult {
        offered_rps: rate,
        achieved_rps: ok as f64 / elapsed.max(total as f64 / rate),
        ok,
        errors: total as u64 - ok,
        p50_ms: pct_of(&lat, 0.50),
        p99_ms: pct_of(&lat, 0.99),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_complete_only_with_its_whole_body() {
        let r = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response(&r[..r.len() - 1]), Parsed::Partial);
        assert_eq!(parse_response(r), Parsed::Complete { status: 400, len: r.len() });
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Len"), Parsed::Partial);
    }

    #[test]
    fn a_chunked_response_ends_at_its_last_chunk() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(parse_response(&r[..r.len() - 2]), Parsed::Partial);
        assert_eq!(parse_response(r), Parsed::Complete { status: 200, len: r.len() });
    }

    /// A server on a thread per connection: answers `ok` to every request on the first connections, and closes
    /// the others at once without an answer.
    fn server(answering: usize) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for (n, s) in l.incoming().enumerate() {
                let Ok(mut s) = s else { continue };
                if n >= answering {
                    continue; // dropped: closed without an answer
                }
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while let Ok(k) = s.read(&mut chunk) {
                        if k == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..k]);
                        while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..i + 4);
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                        }
                    }
                });
            }
        });
        format!("http://{addr}/connect/x")
    }

    #[test]
    fn every_request_of_the_schedule_is_sent_and_answered() {
        let r = run(&server(usize::MAX), 2000.0, 0.5).unwrap();
        assert_eq!((r.ok, r.errors), (1000, 0));
        assert_eq!(r.statuses, BTreeMap::from([(200, 1000)]));
        assert!(r.achieved_rps > 1500.0 && r.achieved_rps <= 2000.0, "{r:?}");
        assert!(r.p99_ms.is_finite() && r.send_late_p99_ms <= r.p99_ms, "{r:?}");
    }

    #[test]
    fn requests_on_connections_closed_without_an_answer_count_as_errors() {
        // 200 requests over 200 connections: the server answers on the first 100 it accepts and drops the rest.
        let r = run(&server(100), 1000.0, 0.2).unwrap();
        assert_eq!(r.ok + r.errors, 200, "{r:?}");
        assert!(r.ok >= 100 && r.errors > 0, "{r:?}");
    }

    #[test]
    fn garbage_is_not_a_response() {
        assert_eq!(parse_response(b"hello there\r\n\r\n"), Parsed::Broken);
    }
}
