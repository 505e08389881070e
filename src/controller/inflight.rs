//! Token requests out at the provider that no reconcile waits for any more.
//!
//! A provider that rotates refresh tokens invalidates the stored one when it *processes* a refresh, whether or not
//! its answer reaches us: closing the connection does not stop a provider that has already read the request (a
//! stalled server reads it when it resumes). So a refresh whose reconcile stopped waiting (its budget is the stored
//! access token's life) is not dropped: its task keeps the connection open for up to [`HARD_CAP`], and no second
//! refresh of that grant starts meanwhile (a second one would present the token the first may have rotated out:
//! the provider sees reuse and revokes the grant). A late answer goes to [`super::rescued::Rescued`] and the next
//! reconcile writes it.
//!
//! One entry per activation (by uid), with the refresh token it presented; removed when its task ends (answer,
//! error or [`HARD_CAP`]), when the activation is deleted, and when the Secret no longer holds that refresh token.
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::AbortHandle;

use crate::credentials::Sensitive;

/// How long a token request may stay out at all. It must cover a long stall of a provider that has read the
/// request (the fault suite stops the OAuth server for 150 s), and it bounds how long a connection that is never
/// answered delays the next attempt: 300 s is also the longest backoff between attempts (`backoff_for`), so a
/// black-holed request costs at most one maximal backoff. Providers and their load balancers give up on a request
/// long before (idle and backend timeouts of 30–120 s are the usual defaults).
pub const HARD_CAP: Duration = Duration::from_secs(300);

/// What the status says about a request that is out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Out {
    pub sent_at: DateTime<Utc>,
    /// When its task gives up ([`HARD_CAP`] after it was sent).
    pub until: DateTime<Utc>,
}

impl Out {
    /// The request for a status message: deterministic (times, not durations), so that a status holding it does
    /// not change at every reconcile.
    pub fn describe(&self) -> String {
        format!(
            "a token request sent at {} is still awaiting the provider's answer (held open until {}; no other is sent meanwhile)",
            self.sent_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

struct Entry {
    id: u64,
    presented: Option<Sensitive>,
    out: Out,
    task: Option<AbortHandle>,
}

/// Which request an entry is, for its task to end it (and only it).
#[derive(Clone, Debug)]
pub struct Ticket {
    uid: String,
    id: u64,
    out: Out,
}

impl Ticket {
    pub fn out(&self) -> &Out {
        &self.out
    }
}

/// Requests out, by activation uid.
#[derive(Default)]
pub struct InFlight {
    inner: Mutex<HashMap<String, Entry>>,
    next: AtomicU64,
}

impl InFlight {
    /// Records a request for `uid` that presented `presented` (the refresh token; `None` for client credentials).
    /// An entry left for `uid` is replaced (its task aborted): the caller checked [`InFlight::out`] first.
    pub fn begin(&self, uid: &str, presented: Option<Sensitive>, sent_at: DateTime<Utc>) -> Ticket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let out = Out { sent_at, until: sent_at + chrono::Duration::from_std(HARD_CAP).unwrap_or_default() };
        if let Ok(mut m) = self.inner.lock()
            && let Some(old) = m.insert(uid.to_string(), Entry { id, presented, out: out.clone(), task: None })
            && let Some(t) = old.task
        {
            t.abort();
        }
        Ticket { uid: uid.to_string(), id, out }
    }

    /// The task that carries the request, to abort when the entry is dropped before it ends.
    pub fn attach(&self, ticket: &Ticket, task: AbortHandle) {
        if let Ok(mut m) = self.inner.lock()
            && let Some(e) = m.get_mut(&ticket.uid).filter(|e| e.id == ticket.id)
        {
            e.task = Some(task);
        }
    }

    /// The request ended (answered, failed, or given up at [`HARD_CAP`]).
    pub fn end(&self, ticket: &Ticket) {
        if let Ok(mut m) = self.inner.lock()
            && m.get(&ticket.uid).is_some_and(|e| e.id == ticket.id)
        {
            m.remove(&ticket.uid);
        }
    }

    /// The request out for `uid`, whatever it presented (for a status message without reading the Secret).
    pub fn peek(&self, uid: &str) -> Option<Out> {
        let mut m = self.inner.lock().ok()?;
        Self::live(&mut m, uid).map(|e| e.out.clone())
    }

    /// The entry for `uid` unless its task has ended without ending it (a panic): that one is dropped.
    fn live<'a>(m: &'a mut HashMap<String, Entry>, uid: &str) -> Option<&'a Entry> {
        if m.get(uid)?.task.as_ref().is_some_and(AbortHandle::is_finished) {
            m.remove(uid);
            return None;
        }
        m.get(uid)
    }

    /// The request out for `uid` if it presented `stored`, the refresh token the Secret holds now. One that
    /// presented another is moot (new consent, or another writer): it is dropped and its task aborted.
    pub fn out(&self, uid: &str, stored: Option<&Sensitive>) -> Option<Out> {
        let mut m = self.inner.lock().ok()?;
        let e = Self::live(&mut m, uid)?;
        if e.presented.as_ref() == stored {
            return Some(e.out.clone());
        }
        if let Some(t) = m.remove(uid).and_then(|e| e.task) {
            t.abort();
        }
        None
    }

    /// The activation is gone: drop its request and abort its task.
    pub fn forget(&self, uid: &str) {
        if let Ok(mut m) = self.inner.lock()
            && let Some(t) = m.remove(uid).and_then(|e| e.task)
        {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(s: &str) -> Option<Sensitive> {
        Some(Sensitive::new(s))
    }

    #[test]
    fn one_request_per_activation_until_its_task_ends_it() {
        let f = InFlight::default();
        let now = Utc::now();
        let t = f.begin("uid-1", rt("rt-1"), now);
        let out = f.out("uid-1", rt("rt-1").as_ref()).expect("out");
        assert_eq!(out.until - out.sent_at, chrono::Duration::seconds(300));
        assert!(f.out("uid-2", None).is_none());
        f.end(&t);
        assert!(f.out("uid-1", rt("rt-1").as_ref()).is_none());
        assert!(f.inner.lock().unwrap().is_empty());
    }

    #[test]
    fn an_old_ticket_never_ends_a_newer_request() {
        let f = InFlight::default();
        let old = f.begin("uid-1", rt("rt-1"), Utc::now());
        let _new = f.begin("uid-1", rt("rt-1"), Utc::now());
        f.end(&old);
        assert!(f.peek("uid-1").is_some(), "the newer request is still out");
    }

    #[tokio::test]
    async fn a_secret_that_changed_or_a_deleted_activation_drops_the_request_and_aborts_its_task() {
        let f = InFlight::default();
        let t = f.begin("uid-1", rt("rt-1"), Utc::now());
        let task = tokio::spawn(std::future::pending::<()>());
        f.attach(&t, task.abort_handle());
        assert!(f.out("uid-1", rt("rt-from-a-new-consent").as_ref()).is_none());
        assert!(task.await.unwrap_err().is_cancelled());
        assert!(f.inner.lock().unwrap().is_empty());

        let t = f.begin("uid-2", None, Utc::now());
        let task = tokio::spawn(std::future::pending::<()>());
        f.attach(&t, task.abort_handle());
        f.forget("uid-2");
        assert!(task.await.unwrap_err().is_cancelled());
        assert!(f.peek("uid-2").is_none());
    }

    #[test]
    fn the_description_is_deterministic_and_carries_no_token() {
        let f = InFlight::default();
        let at = DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z").unwrap().with_timezone(&Utc);
        let _t = f.begin("u", rt("rt-secret-9c9c"), at);
        let d = f.peek("u").unwrap().describe();
        assert!(d.contains("sent at 2026-11-26T10:00:00Z") && d.contains("until 2026-11-26T10:05:00Z"), "{d}");
        assert!(!d.contains("9c9c"));
    }
}
