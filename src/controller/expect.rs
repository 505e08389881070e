//! What this process just wrote for an activation and its stores have not shown yet.
//!
//! A reflector store lags behind the operator's own writes: the watch events of the status patch, the owned
//! Secret and the first Job arrive one by one, and each triggers a reconcile. A reconcile that ran on a store
//! still missing one of them would plan the same work again (a second status patch, a 409 on the Job). So each
//! write is remembered with the resourceVersion it produced, and a reconcile waits until the stores show every
//! one of them (the watch event that brings the last one triggers the reconcile). A Secret or Job that the store
//! does not show although its watch has read past the version written was changed or deleted by someone else
//! meanwhile: the store is current, and the reconcile proceeds. [`GIVE_UP`] bounds the wait for a watch that
//! fell far behind (an apiserver under heavy load delivers events seconds late: 10,000 activations converging on
//! two cores showed lags above 5 s, and every expectation dropped early cost a second status write).
//! The connect server of the same process records its writes here too (the claim of a link, the owned Secret).
//!
//! A link completed with instance parameters is claimed on the activation before its credentials are stored (the
//! claim puts the parameters in status): a reconcile that sees the claim and no credentials yet waits for them up
//! to [`CLAIM_GRACE`] (remembered here from the first such reconcile) before it publishes a new link, instead of
//! publishing one that the arriving credentials would withdraw a moment later.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::secret_record::SecretRecord;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use crate::api::UserActivation;
use crate::controller::Stores;

/// How long a reconcile waits at most for the stores to show the operator's own writes.
pub const GIVE_UP: Duration = Duration::from_secs(30);

/// How long a claimed link waits for its credentials before a new link is published (the completing request
/// failed or its replica died between the claim and the Secret write).
pub const CLAIM_GRACE: Duration = Duration::from_secs(30);

/// One write the stores must show.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Item {
    /// The activation itself at this resourceVersion or later (its status was written).
    Activation { resource_version: String },
    /// The owned Secret at this resourceVersion or later.
    Secret { name: String, resource_version: String },
    /// A Job the reconcile created, at the resourceVersion of its creation.
    Job { name: String, resource_version: Option<String> },
}

#[derive(Debug)]
struct Pending {
    since: Instant,
    items: Vec<Item>,
}

/// Per activation (namespace/name): the writes not yet seen in the stores.
#[derive(Default)]
pub struct Expectations {
    inner: Mutex<HashMap<(String, String), Pending>>,
    added: std::sync::atomic::AtomicUsize,
    /// Activations seen with a claimed link and no credentials yet: since when.
    claimed: Mutex<HashMap<(String, String), Instant>>,
}

fn key(ua: &UserActivation) -> (String, String) {
    (ua.namespace().unwrap_or_default(), ua.name_any())
}

/// Whether `seen` is `expected` or newer. resourceVersions are opaque strings; the apiserver's are etcd revisions,
/// so a numeric comparison is used where both parse, equality otherwise.
fn at_least(seen: Option<&str>, expected: &str) -> bool {
    match (seen.and_then(|s| s.parse::<u64>().ok()), expected.parse::<u64>().ok()) {
        (Some(s), Some(e)) => s >= e,
        _ => seen == Some(expected),
    }
}

impl Expectations {
    fn add(&self, ua: &UserActivation, item: Item) {
        if let Ok(mut m) = self.inner.lock() {
            // Now and then, drop what nobody waits for any more (activations deleted meanwhile).
            if self.added.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 4096 == 4095 {
                m.retain(|_, p| p.since.elapsed() <= GIVE_UP);
            }
            let p = m.entry(key(ua)).or_insert_with(|| Pending { since: Instant::now(), items: Vec::new() });
            p.since = Instant::now();
            p.items.retain(|i| std::mem::discriminant(i) != std::mem::discriminant(&item));
            p.items.push(item);
        }
    }

    pub fn status_written(&self, ua: &UserActivation, resource_version: Option<String>) {
        if let Some(resource_version) = resource_version {
            self.add(ua, Item::Activation { resource_version });
        }
    }

    pub fn secret_written(&self, ua: &UserActivation, name: &str, resource_version: Option<String>) {
        if let Some(resource_version) = resource_version {
            self.add(ua, Item::Secret { name: name.to_string(), resource_version });
        }
    }

    pub fn job_created(&self, ua: &UserActivation, name: &str, resource_version: Option<String>) {
        self.add(ua, Item::Job { name: name.to_string(), resource_version });
    }

    /// Forgets an activation (deleted).
    pub fn forget(&self, ua: &UserActivation) {
        if let Ok(mut m) = self.inner.lock() {
            m.remove(&key(ua));
        }
        self.claim_settled(ua);
    }

    /// The activation shows a claimed link and no credentials yet: how much longer to wait for them, counted from
    /// the first call; `None` once [`CLAIM_GRACE`] has passed (then a new link is due).
    pub fn claim_wait(&self, ua: &UserActivation, now: Instant) -> Option<Duration> {
        let Ok(mut m) = self.claimed.lock() else { return None };
        if m.len() >= 4096 {
            m.retain(|_, since| now.saturating_duration_since(*since) <= CLAIM_GRACE);
        }
        let since = *m.entry(key(ua)).or_insert(now);
        let left = CLAIM_GRACE.checked_sub(now.saturating_duration_since(since)).filter(|d| !d.is_zero());
        if left.is_none() {
            m.remove(&key(ua));
        }
        left
    }

    /// The activation no longer waits on a claimed link (its credentials arrived, or a new link is out).
    pub fn claim_settled(&self, ua: &UserActivation) {
        if let Ok(mut m) = self.claimed.lock()
            && !m.is_empty()
        {
            m.remove(&key(ua));
        }
    }

    /// Whether the stores still lag behind a write this process made for `ua` (the copy handed to the reconcile
    /// comes from the activation store). Forgets what the stores show, and everything after [`GIVE_UP`].
    pub fn pending(&self, ua: &UserActivation, stores: &Stores) -> bool {
        let Ok(mut m) = self.inner.lock() else { return false };
        let k = key(ua);
        let Some(p) = m.get_mut(&k) else { return false };
        if p.since.elapsed() > GIVE_UP {
            m.remove(&k);
            return false;
        }
        let ns = &k.0;
        p.items.retain(|item| match item {
            Item::Activation { resource_version } => !at_least(ua.meta().resource_version.as_deref(), resource_version),
            Item::Secret { name, resource_version } => {
                let seen = stores.owned_secrets.get(&ObjectRef::new(name).within(ns));
                !at_least(seen.as_deref().and_then(SecretRecord::version), resource_version)
                    && !stores.owned_secrets_read.reached(ns, resource_version)
            }
            Item::Job { name, resource_version } => {
                stores.jobs.get(&ObjectRef::new(name).within(ns)).is_none()
                    && !resource_version.as_deref().is_some_and(|v| stores.jobs_read.reached(ns, v))
            }
        });
        if p.items.is_empty() {
            m.remove(&k);
            return false;
        }
        true
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activation(name: &str) -> UserActivation {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": name, "namespace": "t"},
            "spec": {"connectionRef": {"name": "c"}, "user": {"id": name}}
        }))
        .unwrap()
    }

    #[test]
    fn a_claimed_link_waits_for_its_credentials_for_the_grace_then_not() {
        let e = Expectations::default();
        let (a, b) = (activation("a"), activation("b"));
        let t0 = Instant::now();
        assert_eq!(e.claim_wait(&a, t0), Some(CLAIM_GRACE));
        assert_eq!(e.claim_wait(&a, t0 + Duration::from_secs(10)), Some(CLAIM_GRACE - Duration::from_secs(10)));
        assert_eq!(e.claim_wait(&b, t0 + Duration::from_secs(10)), Some(CLAIM_GRACE), "counted per activation");
        assert_eq!(e.claim_wait(&a, t0 + CLAIM_GRACE), None, "then a new link is due");
        assert_eq!(e.claim_wait(&a, t0 + CLAIM_GRACE), Some(CLAIM_GRACE), "a later claim waits afresh");
        e.claim_settled(&b);
        assert_eq!(e.claim_wait(&b, t0 + CLAIM_GRACE), Some(CLAIM_GRACE), "settled: forgotten");
    }

    #[test]
    fn a_job_removed_before_the_store_showed_it_holds_the_reconcile_only_until_the_watch_read_past_it() {
        use crate::controller::watch::Progress;
        use std::sync::Arc;
        let e = Expectations::default();
        let ua = activation("a");
        let mut stores = Stores::unfed();
        let jobs_read = Arc::new(Progress::new(&[None]));
        stores.jobs_read = jobs_read.clone();
        e.job_created(&ua, "a-run-1", Some("100".into()));
        assert!(e.pending(&ua, &stores), "the store has not shown the Job yet");
        jobs_read.advance(0, 99);
        assert!(e.pending(&ua, &stores), "the watch has not read the creation yet");
        jobs_read.advance(0, 100);
        assert!(!e.pending(&ua, &stores), "read past the creation and not in the store: deleted meanwhile; proceed");
        assert!(e.is_empty());
        // A Secret write likewise.
        let secrets_read = Arc::new(Progress::new(&[None]));
        stores.owned_secrets_read = secrets_read.clone();
        e.secret_written(&ua, "a-credentials", Some("200".into()));
        assert!(e.pending(&ua, &stores));
        secrets_read.advance(0, 250);
        assert!(!e.pending(&ua, &stores));
    }

    #[test]
    fn resource_versions_compare_as_numbers_where_they_are_numbers() {
        assert!(at_least(Some("120"), "99"));
        assert!(at_least(Some("99"), "99"));
        assert!(!at_least(Some("98"), "99"));
        assert!(!at_least(None, "99"));
        assert!(at_least(Some("abc"), "abc"));
        assert!(!at_least(Some("abd"), "abc"));
    }
}
