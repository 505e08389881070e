//! Rotated tokens the provider issued that are not in the Secret yet.
//!
//! A provider that rotates refresh tokens invalidates the stored one the moment it answers a refresh. If the write
//! of the answer then fails (the apiserver is away, a timeout), or the answer arrives after the reconcile stopped
//! waiting for it (see [`super::inflight`]), refreshing again with the stored token would get `invalid_grant` and
//! cost the user's grant. So the answer is kept here, in memory, by activation uid, together
//! with the refresh token it replaced; the next reconcile that finds the Secret still holding that refresh token
//! writes the kept answer instead of asking the provider again. A Secret that changed meanwhile (a new consent,
//! another writer) makes the kept answer moot, and it is dropped.
//!
//! What this cannot cover is the process dying between the provider's answer and the write (SIGKILL, OOM): the
//! answer existed only in this process. A graceful stop (SIGTERM) lets refreshes in flight finish their write first
//! (see `run_controllers`).
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::credentials::{OAuth2Tokens, Sensitive};

/// How long a kept answer waits for its write. Refresh tokens commonly live for days; a day bounds the memory of
/// an activation deleted meanwhile.
pub const KEEP_FOR: Duration = Duration::from_secs(24 * 3600);
/// At most this many kept answers (one per activation; a whole outage's worth at 10,000 activations).
pub const MAX_KEPT: usize = 65_536;

/// A provider's answer not yet written.
#[derive(Clone, Debug)]
pub struct Kept {
    /// The refresh token the answer replaced (what the Secret still holds if nothing else wrote it).
    pub replaced: Option<Sensitive>,
    pub tokens: OAuth2Tokens,
    /// The token lifetime the provider gave, for the refresh timing.
    pub lifetime: Duration,
    /// When the provider answered (the access token's expiry was computed from it).
    pub answered_at: chrono::DateTime<chrono::Utc>,
    since: Instant,
}

/// Kept answers by activation uid.
#[derive(Default)]
pub struct Rescued {
    inner: Mutex<HashMap<String, Kept>>,
}

impl Rescued {
    /// Keeps the answer that replaced `replaced` for the activation `uid`.
    pub fn keep(
        &self,
        uid: &str,
        replaced: Option<Sensitive>,
        tokens: OAuth2Tokens,
        lifetime: Duration,
        answered_at: chrono::DateTime<chrono::Utc>,
    ) {
        let Ok(mut m) = self.inner.lock() else { return };
        if m.len() >= MAX_KEPT && !m.contains_key(uid) {
            m.retain(|_, k| k.since.elapsed() <= KEEP_FOR);
            if m.len() >= MAX_KEPT {
                return;
            }
        }
        m.insert(uid.to_string(), Kept { replaced, tokens, lifetime, answered_at, since: Instant::now() });
    }

    /// The kept answer for `uid` if the Secret still holds the refresh token it replaced (`stored`); a kept answer
    /// that no longer applies (the Secret changed, or it is older than [`KEEP_FOR`]) is dropped. The answer stays
    /// kept until [`Rescued::written`].
    pub fn applicable(&self, uid: &str, stored: Option<&Sensitive>) -> Option<Kept> {
        let Ok(mut m) = self.inner.lock() else { return None };
        let k = m.get(uid)?;
        if k.since.elapsed() > KEEP_FOR || k.replaced.as_ref() != stored {
            m.remove(uid);
            return None;
        }
        Some(k.clone())
    }

    /// Whether an answer is kept for `uid` (the next reconcile writes it without waiting for the refresh time or a
    /// backoff).
    pub fn holds(&self, uid: &str) -> bool {
        self.inner.lock().is_ok_and(|m| m.contains_key(uid))
    }

    /// The kept answer for `uid` is in the Secret now (or moot): forget it.
    pub fn written(&self, uid: &str) {
        if let Ok(mut m) = self.inner.lock() {
            m.remove(uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(access: &str, refresh: &str) -> OAuth2Tokens {
        OAuth2Tokens { access_token: Sensitive::new(access), refresh_token: Some(Sensitive::new(refresh)), ..Default::default() }
    }

    #[test]
    fn a_kept_answer_applies_while_the_secret_holds_the_refresh_token_it_replaced() {
        let r = Rescued::default();
        r.keep("uid-1", Some(Sensitive::new("rt-old")), answer("at-new", "rt-new"), Duration::from_secs(60), chrono::Utc::now());
        let k = r.applicable("uid-1", Some(&Sensitive::new("rt-old"))).expect("applies");
        assert_eq!(k.tokens.refresh_token.as_ref().map(Sensitive::expose), Some("rt-new"));
        // Still kept until written: a second failed write can try again.
        assert!(r.applicable("uid-1", Some(&Sensitive::new("rt-old"))).is_some());
        r.written("uid-1");
        assert!(r.applicable("uid-1", Some(&Sensitive::new("rt-old"))).is_none());
        assert!(r.inner.lock().unwrap().is_empty());
    }

    #[test]
    fn a_secret_written_meanwhile_makes_the_kept_answer_moot() {
        let r = Rescued::default();
        r.keep("uid-1", Some(Sensitive::new("rt-old")), answer("at-new", "rt-new"), Duration::from_secs(60), chrono::Utc::now());
        // A new consent stored another refresh token: the kept answer must not overwrite it.
        assert!(r.applicable("uid-1", Some(&Sensitive::new("rt-from-new-consent"))).is_none());
        assert!(r.inner.lock().unwrap().is_empty(), "dropped once found moot");
        assert!(r.applicable("uid-2", None).is_none());
    }

    #[test]
    fn a_kept_answer_never_shows_its_tokens_in_debug_output() {
        let r = Rescued::default();
        r.keep("u", Some(Sensitive::new("rt-old-4f4f")), answer("at-new-4f4f", "rt-new-4f4f"), Duration::from_secs(1), chrono::Utc::now());
        let k = r.applicable("u", Some(&Sensitive::new("rt-old-4f4f"))).unwrap();
        let shown = format!("{k:?}");
        assert!(!shown.contains("4f4f"), "{shown}");
    }
}
