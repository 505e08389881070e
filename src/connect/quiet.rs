//! Log lines that a flood would repeat, made cheap: at most one line per key (a connector) per interval, and that
//! line says how many were held back since the one before. A refused authorization code was logged as one JSON
//! line each (~4.5 % of the callback's CPU under load, and a flood of identical lines for the operator to read);
//! the first refusal still shows at once with its error, a continuing flood as one line every interval with its
//! count, and `latchkey_connect_requests_total{route="oauth_callback",status}` counts every one of them.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys tracked; past it the map starts over (at worst one extra line per key).
const MAX_KEYS: usize = 1024;

struct Tally {
    /// When the last line for the key was written.
    written: Instant,
    /// Lines held back since.
    held: u64,
}

pub struct Quiet {
    every: Duration,
    keys: Mutex<HashMap<String, Tally>>,
}

impl Quiet {
    pub fn new(every: Duration) -> Self {
        Self { every, keys: Mutex::new(HashMap::new()) }
    }

    /// `Some(held back)` when the line for `key` is to be written now (the first for the key, or the first after
    /// `every` since the last written), `None` when it is held back and counted.
    pub fn admit(&self, key: &str, now: Instant) -> Option<u64> {
        let Ok(mut keys) = self.keys.lock() else { return Some(0) };
        match keys.get_mut(key) {
            Some(t) if now.saturating_duration_since(t.written) < self.every => {
                t.held += 1;
                None
            }
            Some(t) => {
                let held = std::mem::take(&mut t.held);
                t.written = now;
                Some(held)
            }
            None => {
                if keys.len() >= MAX_KEYS {
                    keys.clear();
                }
                keys.insert(key.to_string(), Tally { written: now, held: 0 });
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_writes_one_line_per_interval_with_the_count_held_back() {
        let q = Quiet::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(q.admit("ns/github", t0), Some(0), "the first refusal shows at once");
        for i in 1..=500 {
            assert_eq!(q.admit("ns/github", t0 + Duration::from_millis(i * 10)), None);
        }
        assert_eq!(q.admit("ns/slack", t0 + Duration::from_secs(1)), Some(0), "each connector has its own line");
        assert_eq!(q.admit("ns/github", t0 + Duration::from_secs(10)), Some(500), "the next line counts what was held back");
        assert_eq!(q.admit("ns/github", t0 + Duration::from_secs(11)), None);
        assert_eq!(q.admit("ns/github", t0 + Duration::from_secs(25)), Some(1));
    }
}
