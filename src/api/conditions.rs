//! Conditions as Kubernetes API conventions describe them: a list keyed by `type`, with reasons a person can act
//! on. Setting one keeps its `lastTransitionTime` unless its status flips, so an unchanged state writes nothing.
use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of condition, e.g. `Ready`, `CredentialsValid`, `LastRunSucceeded`.
    #[serde(rename = "type")]
    #[schemars(with = "String")]
    pub type_: Word,
    /// `True`, `False` or `Unknown`.
    #[schemars(with = "String")]
    pub status: Word,
    /// A CamelCase word saying why, e.g. `NamespaceNotAllowed`, `NoActiveUsers`.
    #[schemars(with = "String")]
    pub reason: Word,
    /// What happened and what to do about it, for a person.
    #[serde(default)]
    pub message: String,
    /// The `.metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the status last changed.
    pub last_transition_time: DateTime<Utc>,
}

/// A condition's type, status or reason. Nearly always one of the constants below, and then it points at the
/// constant instead of taking an allocation: an activation's status holds nine of them, once per activation in the
/// store. Reads, writes, compares and prints as the string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Word(Cow<'static, str>);

impl Word {
    pub fn new(s: &str) -> Self {
        match KNOWN_WORDS.iter().find(|w| **w == s) {
            Some(w) => Word(Cow::Borrowed(w)),
            None => Word(Cow::Owned(s.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Word {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Word {
    fn from(s: &str) -> Self {
        Word::new(s)
    }
}

impl From<Word> for String {
    fn from(w: Word) -> Self {
        w.0.into_owned()
    }
}

impl PartialEq<str> for Word {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Word {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for Word {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Word {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Cow::<'de, str>::deserialize(d).map(|s| Word::new(&s))
    }
}

/// The words [`Word`] keeps without an allocation: the statuses, types and reasons the operator writes (one
/// missing here only costs its allocation).
const KNOWN_WORDS: &[&str] = &[
    TRUE,
    FALSE,
    UNKNOWN,
    types::READY,
    types::CREDENTIALS_VALID,
    types::LAST_RUN_SUCCEEDED,
    types::CONNECTIONS_READY,
    reasons::READY,
    reasons::ACTIVE,
    reasons::CONNECTOR_NOT_FOUND,
    reasons::CONNECTION_NOT_FOUND,
    reasons::AUTH_METHOD_NOT_FOUND,
    reasons::CLIENT_SECRET_NOT_FOUND,
    reasons::CLIENT_SECRET_INVALID,
    reasons::NO_ACTIVE_USERS,
    reasons::NAMESPACE_NOT_ALLOWED,
    reasons::RETURN_URL_NOT_ALLOWED,
    reasons::DUPLICATE_USER,
    reasons::AWAITING_USER,
    reasons::SOURCE_SECRET_NOT_FOUND,
    reasons::SOURCE_SECRET_INVALID,
    reasons::SECRET_CONFLICT,
    reasons::VERIFIED,
    reasons::NOT_VERIFIED,
    reasons::NO_CREDENTIALS_NEEDED,
    reasons::CREDENTIALS_REJECTED,
    reasons::VERIFICATION_UNAVAILABLE,
    reasons::SUSPENDED,
    reasons::JOB_TEMPLATE_INVALID,
    reasons::JOB_SUCCEEDED,
    reasons::JOB_FAILED,
    reasons::JOB_RUNNING,
    reasons::INVALID_GRANT,
    reasons::SCOPES_ADDED,
    reasons::TOKEN_EXPIRED,
    reasons::PROVIDER_UNAVAILABLE,
    reasons::INVALID_VARIABLES,
    reasons::WAITING_FOR_CONNECTIONS,
    reasons::UNSUPPORTED_AUTH_METHOD,
];

pub const TRUE: &str = "True";
pub const FALSE: &str = "False";
pub const UNKNOWN: &str = "Unknown";

/// Condition types.
pub mod types {
    pub const READY: &str = "Ready";
    pub const CREDENTIALS_VALID: &str = "CredentialsValid";
    pub const LAST_RUN_SUCCEEDED: &str = "LastRunSucceeded";
    pub const CONNECTIONS_READY: &str = "ConnectionsReady";
}

/// Reasons, named so that a person knows what to fix.
pub mod reasons {
    pub const READY: &str = "Ready";
    pub const ACTIVE: &str = "Active";
    pub const CONNECTOR_NOT_FOUND: &str = "ConnectorNotFound";
    pub const CONNECTION_NOT_FOUND: &str = "ConnectionNotFound";
    pub const AUTH_METHOD_NOT_FOUND: &str = "AuthMethodNotFound";
    pub const CLIENT_SECRET_NOT_FOUND: &str = "ClientSecretNotFound";
    pub const CLIENT_SECRET_INVALID: &str = "ClientSecretInvalid";
    pub const NO_ACTIVE_USERS: &str = "NoActiveUsers";
    pub const NAMESPACE_NOT_ALLOWED: &str = "NamespaceNotAllowed";
    pub const RETURN_URL_NOT_ALLOWED: &str = "ReturnUrlNotAllowed";
    pub const DUPLICATE_USER: &str = "DuplicateUser";
    pub const AWAITING_USER: &str = "AwaitingUser";
    pub const SOURCE_SECRET_NOT_FOUND: &str = "SourceSecretNotFound";
    pub const SOURCE_SECRET_INVALID: &str = "SourceSecretInvalid";
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    pub const VERIFIED: &str = "Verified";
    pub const NOT_VERIFIED: &str = "NoVerificationDeclared";
    pub const NO_CREDENTIALS_NEEDED: &str = "NoCredentialsNeeded";
    pub const CREDENTIALS_REJECTED: &str = "CredentialsRejected";
    pub const VERIFICATION_UNAVAILABLE: &str = "VerificationUnavailable";
    pub const SUSPENDED: &str = "Suspended";
    pub const JOB_TEMPLATE_INVALID: &str = "JobTemplateInvalid";
    pub const JOB_SUCCEEDED: &str = "JobSucceeded";
    pub const JOB_FAILED: &str = "JobFailed";
    pub const JOB_RUNNING: &str = "JobRunning";
    pub const INVALID_GRANT: &str = "InvalidGrant";
    /// The connector asks for scopes the user's grant lacks: the user consents again.
    pub const SCOPES_ADDED: &str = "ScopesAdded";
    pub const TOKEN_EXPIRED: &str = "TokenExpired";
    pub const PROVIDER_UNAVAILABLE: &str = "ProviderUnavailable";
    pub const INVALID_VARIABLES: &str = "InvalidVariables";
    pub const WAITING_FOR_CONNECTIONS: &str = "WaitingForConnections";
    pub const UNSUPPORTED_AUTH_METHOD: &str = "UnsupportedAuthMethod";
}

impl Condition {
    pub fn new(type_: &str, status: &str, reason: &str, message: impl Into<String>, generation: Option<i64>, now: DateTime<Utc>) -> Self {
        Self {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: now,
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == TRUE
    }
}

/// Puts `new` into `conditions`, replacing the one of the same type. The old `lastTransitionTime` is kept when
/// the status did not change, so that setting the same condition twice yields an equal list.
pub fn set(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time;
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// Builds a condition list from `desired`, keeping transition times from `previous` where status is unchanged.
pub fn merge(previous: &[Condition], desired: Vec<Condition>) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous.iter().filter(|c| desired.iter().any(|d| d.type_ == c.type_)).cloned().collect();
    for d in desired {
        set(&mut out, d);
    }
    out.sort_by(|a, b| order(&a.type_).cmp(&order(&b.type_)).then_with(|| a.type_.cmp(&b.type_)));
    out
}

fn order(t: &str) -> u8 {
    match t {
        types::READY => 0,
        types::CREDENTIALS_VALID => 1,
        _ => 2,
    }
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(Condition::is_true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(s, 0).unwrap()
    }

    #[test]
    fn a_word_reads_writes_and_compares_as_its_string_and_known_ones_take_no_allocation() {
        let c: Condition = serde_json::from_value(serde_json::json!({"type": "Ready", "status": "True", "reason": "SomethingNew",
            "message": "m", "lastTransitionTime": "2026-11-26T07:53:31Z"}))
        .unwrap();
        assert!(matches!(c.type_.0, Cow::Borrowed(_)) && matches!(c.status.0, Cow::Borrowed(_)));
        assert!(matches!(c.reason.0, Cow::Owned(_)), "an unknown word is kept as it came");
        assert!(c.type_ == types::READY && c.is_true() && c.reason == "SomethingNew");
        assert_eq!(serde_json::to_value(&c).unwrap()["reason"], "SomethingNew");
        assert_eq!(format!("{:?} {}", c.type_, c.reason), r#""Ready" SomethingNew"#);
        assert_eq!(String::from(c.reason.clone()), "SomethingNew");
    }

    #[test]
    fn same_status_keeps_transition_time() {
        let prev = vec![Condition::new(types::READY, TRUE, reasons::ACTIVE, "ok", Some(1), at(10))];
        let next = merge(&prev, vec![Condition::new(types::READY, TRUE, reasons::ACTIVE, "ok", Some(1), at(99))]);
        assert_eq!(next, prev);
    }

    #[test]
    fn flipped_status_moves_transition_time() {
        let prev = vec![Condition::new(types::READY, TRUE, reasons::ACTIVE, "ok", Some(1), at(10))];
        let next = merge(&prev, vec![Condition::new(types::READY, FALSE, reasons::DUPLICATE_USER, "dup", Some(2), at(99))]);
        assert_eq!(next[0].last_transition_time, at(99));
        assert_eq!(next[0].reason, reasons::DUPLICATE_USER);
    }

    #[test]
    fn conditions_sorted_ready_first_and_stale_types_dropped() {
        let prev = vec![Condition::new("Old", TRUE, "X", "", None, at(1))];
        let next = merge(
            &prev,
            vec![
                Condition::new(types::LAST_RUN_SUCCEEDED, TRUE, reasons::JOB_SUCCEEDED, "", None, at(2)),
                Condition::new(types::READY, TRUE, reasons::ACTIVE, "", None, at(2)),
            ],
        );
        let types: Vec<_> = next.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, vec![types::READY, types::LAST_RUN_SUCCEEDED]);
    }
}
