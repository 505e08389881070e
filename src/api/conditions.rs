//! Conditions as Kubernetes API conventions describe them: a list keyed by `type`, with reasons a person can act
//! on. Setting one keeps its `lastTransitionTime` unless its status flips, so an unchanged state writes nothing.
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of condition, e.g. `Ready`, `CredentialsValid`, `LastRunSucceeded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase word saying why, e.g. `NamespaceNotAllowed`, `NoActiveUsers`.
    pub reason: String,
    /// What happened and what to do about it, for a person.
    #[serde(default)]
    pub message: String,
    /// The `.metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the status last changed.
    pub last_transition_time: DateTime<Utc>,
}

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
