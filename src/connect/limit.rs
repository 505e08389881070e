//! A per-activation rate limit for the connect server: one small token bucket per activation, kept in a bounded
//! map. Only requests whose token or `state` verified are counted (a forged link names no activation), so the map
//! holds at most the activations that were opened recently; past its bound, buckets that have refilled (and so
//! hold nothing a fresh bucket would not) are dropped first.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most activations tracked at once (about 100 bytes each).
const MAX_TRACKED: usize = 16_384;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Requests per minute an activation's link may take in the long run; 0 turns the limit off.
    pub per_minute: u32,
    /// Requests it may take at once.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { per_minute: 60, burst: 20 }
    }
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets, keyed by activation uid.
pub struct Limiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
    max_tracked: usize,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Self {
        Self::with_capacity(limit, MAX_TRACKED)
    }

    pub fn with_capacity(limit: RateLimit, max_tracked: usize) -> Self {
        Self { limit, buckets: Mutex::new(HashMap::new()), max_tracked: max_tracked.max(1) }
    }

    fn per_second(&self) -> f64 {
        f64::from(self.limit.per_minute) / 60.0
    }

    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.per_second()).min(f64::from(self.limit.burst.max(1)))
    }

    /// Takes one request for `key` at `now`: `Ok` when allowed, else how long until the next one would be.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.limit.per_minute == 0 {
            return Ok(());
        }
        let Ok(mut buckets) = self.buckets.lock() else { return Ok(()) };
        let full = f64::from(self.limit.burst.max(1));
        let tokens = match buckets.get(key) {
            Some(b) => self.refilled(*b, now),
            None => {
                if buckets.len() >= self.max_tracked {
                    buckets.retain(|_, b| self.refilled(*b, now) < full);
                    if buckets.len() >= self.max_tracked {
                        // Every tracked activation is busy: start over rather than grow (the bound wins).
                        buckets.clear();
                    }
                }
                full
            }
        };
        if tokens >= 1.0 {
            match buckets.get_mut(key) {
                Some(b) => *b = Bucket { tokens: tokens - 1.0, at: now },
                None => {
                    buckets.insert(key.to_string(), Bucket { tokens: tokens - 1.0, at: now });
                }
            }
            Ok(())
        } else {
            buckets.insert(key.to_string(), Bucket { tokens, at: now });
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second()))
        }
    }

    /// How many activations are tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let l = Limiter::new(RateLimit { per_minute: 60, burst: 3 });
        let t = Instant::now();
        for _ in 0..3 {
            assert!(l.check("a", t).is_ok());
        }
        let wait = l.check("a", t).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(l.check("b", t).is_ok(), "another activation has its own bucket");
        assert!(l.check("a", t + Duration::from_secs(1)).is_ok(), "one more after a second");
        assert!(l.check("a", t + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn memory_stays_bounded_and_idle_buckets_go_first() {
        let l = Limiter::with_capacity(RateLimit { per_minute: 60, burst: 2 }, 3);
        let t = Instant::now();
        l.check("idle-1", t).unwrap();
        l.check("idle-2", t).unwrap();
        let later = t + Duration::from_secs(5);
        l.check("busy", later).unwrap();
        l.check("busy", later).unwrap();
        // The map is full: the refilled buckets make room, the busy one keeps its count.
        l.check("new", later).unwrap();
        assert_eq!(l.tracked(), 2);
        assert!(l.check("busy", later).is_err(), "the busy activation is still limited");
        for i in 0..1000 {
            let _ = l.check(&format!("k{i}"), later);
            assert!(l.tracked() <= 3);
        }
    }

    #[test]
    fn zero_turns_it_off() {
        let l = Limiter::new(RateLimit { per_minute: 0, burst: 0 });
        let t = Instant::now();
        assert!((0..1000).all(|_| l.check("a", t).is_ok()));
        assert_eq!(l.tracked(), 0);
    }
}
