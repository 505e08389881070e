//! Pure decisions for an activation: may it use its connection, which run is due, and its phase and conditions.
use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use crate::api::UserActivationStatus;
use crate::api::conditions::{self, reasons, types};
use crate::api::connector::AuthMethod;
use crate::api::embedded_connection::{ConcurrencyPolicy, JobSpec};
use crate::api::user_activation::Phase;
use crate::api::{Connector, EmbeddedConnection, UserActivation};
use crate::job_record::JobRecord;
use crate::jobs::Outcome;

/// Why an activation cannot use its connection: a reason constant and a message naming what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    pub reason: &'static str,
    pub message: String,
}

fn gate(reason: &'static str, message: impl Into<String>) -> Gate {
    Gate { reason, message: message.into() }
}

/// The resolved references of an activation that may proceed.
pub struct Admitted<'a> {
    pub connection: &'a EmbeddedConnection,
    pub connector: &'a Connector,
    pub method: &'a AuthMethod,
}

/// Checks references, the namespace, the return URL and uniqueness of the user id. `namespace_labels` is `None`
/// when the activation's namespace is unknown; `older_same_user` names an older activation of the same user.
pub fn admit<'a>(
    ua: &UserActivation,
    connection: Option<&'a EmbeddedConnection>,
    connector: Option<&'a Connector>,
    namespace_labels: Option<&std::collections::BTreeMap<String, String>>,
    older_same_user: Option<String>,
) -> Result<Admitted<'a>, Gate> {
    let conn_ns = ua.connection_namespace().unwrap_or_default();
    let Some(connection) = connection else {
        return Err(gate(
            reasons::CONNECTION_NOT_FOUND,
            format!("EmbeddedConnection {conn_ns}/{} does not exist", ua.spec.connection_ref.name),
        ));
    };
    let own_ns = ua.namespace().unwrap_or_default();
    if own_ns != conn_ns {
        let allowed = match (&connection.spec.allowed_namespaces, namespace_labels) {
            (Some(sel), Some(labels)) => selector_matches(sel, labels),
            _ => false,
        };
        if !allowed {
            return Err(gate(
                reasons::NAMESPACE_NOT_ALLOWED,
                format!(
                    "EmbeddedConnection {conn_ns}/{} does not allow activations from namespace {own_ns} (see its spec.allowedNamespaces)",
                    connection.name_any()
                ),
            ));
        }
    }
    if let Some(url) = &ua.spec.return_url
        && !connection.spec.allowed_return_urls.iter().any(|p| url.starts_with(p.as_str()))
    {
        return Err(gate(
            reasons::RETURN_URL_NOT_ALLOWED,
            format!("returnUrl {url} does not start with any of the connection's allowedReturnUrls"),
        ));
    }
    let Some(connector) = connector else {
        return Err(gate(
            reasons::CONNECTOR_NOT_FOUND,
            format!("Connector {conn_ns}/{} does not exist", connection.spec.connector_ref.name),
        ));
    };
    let Some(method) = connector.auth_method(&connection.spec.auth_method) else {
        return Err(gate(
            reasons::AUTH_METHOD_NOT_FOUND,
            format!("Connector {} has no auth method {:?}", connector.name_any(), connection.spec.auth_method),
        ));
    };
    if let Some(other) = older_same_user {
        return Err(gate(reasons::DUPLICATE_USER, format!("user {:?} already has activation {other} of this connection", ua.spec.user.id)));
    }
    Ok(Admitted { connection, connector, method })
}

/// Label selector semantics (matchLabels and matchExpressions).
pub fn selector_matches(sel: &LabelSelector, labels: &std::collections::BTreeMap<String, String>) -> bool {
    let labels_ok = sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let val = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or(&[]);
        match e.operator.as_str() {
            "In" => val.is_some_and(|v| values.contains(v)),
            "NotIn" => val.is_none_or(|v| !values.contains(v)),
            "Exists" => val.is_some(),
            "DoesNotExist" => val.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// A run that should start now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Run {
    /// The first run, or the run after a credential change: key `cred-<generation>`.
    Credentials(u32),
    /// A schedule tick: key `tick-<unix seconds>`.
    Tick(DateTime<Utc>),
    /// Asked for with the `latchkey.dev/run-now` annotation: key `manual-<hash of its value>`.
    Manual(String),
}

impl Run {
    pub fn key(&self) -> String {
        match self {
            Run::Credentials(g) => format!("cred-{g}"),
            Run::Tick(t) => format!("tick-{}", t.timestamp()),
            Run::Manual(h) => format!("manual-{h}"),
        }
    }
}

/// What the scheduler decided: the run to start, the schedule bookkeeping and when to look again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunPlan {
    pub run: Option<Run>,
    /// New `status.lastScheduleTime` (ticks handled, run or skipped).
    pub last_schedule_time: Option<DateTime<Utc>>,
    /// The next tick, to requeue at.
    pub next_tick: Option<DateTime<Utc>>,
    /// A tick skipped because a run was active (Forbid).
    pub skipped_tick: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("job.schedule {0:?} is not a valid cron expression: {1}")]
    Cron(String, String),
    #[error("job.timeZone {0:?} is not a known IANA time zone")]
    TimeZone(String),
}

/// Which run is due. `generation` is the credential generation in the owned Secret; `run_generation` the one the
/// last credential run was for; `active` whether a run of this activation is still going.
pub fn plan_run(
    spec: &JobSpec,
    generation: u32,
    run_generation: u32,
    last_schedule_time: Option<DateTime<Utc>>,
    active: bool,
    now: DateTime<Utc>,
) -> Result<RunPlan, ScheduleError> {
    let forbid = spec.concurrency_policy == ConcurrencyPolicy::Forbid;
    let Some(expr) = &spec.schedule else {
        // No schedule: one run per credential generation; postponed (not skipped) while a run is active.
        let due = generation > run_generation && generation > 0;
        return Ok(RunPlan { run: (due && !(forbid && active)).then_some(Run::Credentials(generation)), ..Default::default() });
    };
    let tz_name = spec.time_zone.clone().unwrap_or_else(|| "Etc/UTC".into());
    let tz: chrono_tz::Tz = tz_name.parse().map_err(|_| ScheduleError::TimeZone(tz_name.clone()))?;
    let cron = <croner::Cron as std::str::FromStr>::from_str(expr).map_err(|e| ScheduleError::Cron(expr.clone(), e.to_string()))?;
    let local_now = now.with_timezone(&tz);
    let next_tick = cron.find_next_occurrence(&local_now, false).ok().map(|t| t.with_timezone(&Utc));
    let last_tick = cron.find_previous_occurrence(&local_now, true).ok().map(|t| t.with_timezone(&Utc));
    let mut plan = RunPlan { next_tick, last_schedule_time, ..Default::default() };

    // First activation: one run unless runOnActivation is false; the ticks before it are not "missed".
    if run_generation == 0 && generation > 0 {
        plan.last_schedule_time = last_tick.or(last_schedule_time);
        if spec.run_on_activation {
            plan.run = (!(forbid && active)).then_some(Run::Credentials(generation));
        }
        return Ok(plan);
    }
    // A tick passed since the last handled one: run it (at most one catch-up run however many were missed).
    if let Some(tick) = last_tick
        && last_schedule_time.is_none_or(|l| tick > l)
    {
        plan.last_schedule_time = Some(tick);
        if forbid && active {
            plan.skipped_tick = true;
        } else {
            plan.run = Some(Run::Tick(tick));
        }
    }
    Ok(plan)
}

/// The newest Job of the activation, for `status.lastRun`.
pub fn newest(jobs: &[std::sync::Arc<JobRecord>]) -> Option<&JobRecord> {
    jobs.iter().map(|j| j.as_ref()).max_by(|a, b| {
        a.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    })
}

pub fn any_active(jobs: &[std::sync::Arc<JobRecord>]) -> bool {
    jobs.iter().any(|j| j.outcome() == Outcome::Running)
}

/// Finished Jobs beyond the history limits, oldest first.
pub fn beyond_history(jobs: &[std::sync::Arc<JobRecord>], spec: &JobSpec) -> Vec<String> {
    let mut out = Vec::new();
    for (outcome, limit) in [(Outcome::Succeeded, spec.successful_jobs_history_limit), (Outcome::Failed, spec.failed_jobs_history_limit)] {
        let mut done: Vec<&JobRecord> = jobs.iter().map(|j| j.as_ref()).filter(|j| j.outcome() == outcome).collect();
        done.sort_by_key(|j| std::cmp::Reverse(j.metadata.creation_timestamp.as_ref().map(|t| t.0)));
        out.extend(done.into_iter().skip(limit.max(0) as usize).map(|j| j.name_any()));
    }
    out
}

/// The phase shown to people.
pub fn phase(ready: bool, suspended: bool, awaiting_user: bool, needs_reauth: bool) -> Phase {
    if needs_reauth {
        Phase::NeedsReauthorization
    } else if awaiting_user {
        Phase::AwaitingUser
    } else if !ready {
        Phase::Failing
    } else if suspended {
        Phase::Suspended
    } else {
        Phase::Active
    }
}

/// Whether a phase change is one of the expected first steps of an activation: from nothing to Active or to
/// awaiting the user's connect link, and from awaiting the user to Active with the first credentials ever stored.
/// A change after that (a failure, a dead grant, a re-consent, a suspension) gets an Event.
pub fn first_steps(prev: &UserActivationStatus, status: &UserActivationStatus) -> bool {
    let awaiting_link = |s: &UserActivationStatus| {
        s.phase == Some(Phase::AwaitingUser)
            && conditions::find(&s.conditions, types::READY).is_some_and(|c| c.reason == reasons::AWAITING_USER)
    };
    match (prev.phase, status.phase) {
        (None, Some(Phase::Active)) => true,
        (None, Some(Phase::AwaitingUser)) => awaiting_link(status),
        (Some(Phase::AwaitingUser), Some(Phase::Active)) => prev.credential_generation == 0 && awaiting_link(prev),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> JobSpec {
        let mut base = json!({"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}});
        base.as_object_mut().unwrap().extend(v.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }
    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, h, m, 0).unwrap()
    }

    fn st(phase: Option<Phase>, ready_reason: &str, credential_generation: u32) -> UserActivationStatus {
        let ready = conditions::Condition::new(types::READY, "False", ready_reason, "", None, t(1, 0));
        UserActivationStatus { phase, credential_generation, conditions: vec![ready], ..Default::default() }
    }

    #[test]
    fn the_expected_first_steps_are_quiet_and_later_changes_are_not() {
        let none = UserActivationStatus::default();
        let awaiting = st(Some(Phase::AwaitingUser), reasons::AWAITING_USER, 0);
        let active = st(Some(Phase::Active), reasons::ACTIVE, 1);
        assert!(first_steps(&none, &active), "Active at once");
        assert!(first_steps(&none, &awaiting), "a link for the user");
        assert!(first_steps(&awaiting, &active), "the first consent");
        let missing_source = st(Some(Phase::AwaitingUser), reasons::SOURCE_SECRET_NOT_FOUND, 0);
        assert!(!first_steps(&none, &missing_source), "a Secret to fix is news");
        let reconsent = st(Some(Phase::AwaitingUser), reasons::AWAITING_USER, 1);
        assert!(!first_steps(&reconsent, &active), "credentials again after earlier ones");
        let declined = st(Some(Phase::AwaitingUser), "ConsentDeclined", 0);
        assert!(!first_steps(&declined, &active));
        assert!(!first_steps(&active, &st(Some(Phase::NeedsReauthorization), reasons::INVALID_GRANT, 1)));
        assert!(!first_steps(&none, &st(Some(Phase::Failing), reasons::CONNECTION_NOT_FOUND, 0)));
    }

    #[test]
    fn without_schedule_one_run_per_generation() {
        let s = spec(json!({}));
        assert_eq!(plan_run(&s, 1, 0, None, false, t(1, 0)).unwrap().run, Some(Run::Credentials(1)));
        assert_eq!(plan_run(&s, 1, 1, None, false, t(1, 0)).unwrap().run, None, "a refresh (same generation) starts nothing");
        assert_eq!(plan_run(&s, 2, 1, None, false, t(1, 0)).unwrap().run, Some(Run::Credentials(2)));
        assert_eq!(plan_run(&s, 2, 1, None, true, t(1, 0)).unwrap().run, None, "Forbid postpones while a run is active");
        let allow = spec(json!({"concurrencyPolicy": "Allow"}));
        assert_eq!(plan_run(&allow, 2, 1, None, true, t(1, 0)).unwrap().run, Some(Run::Credentials(2)));
        assert_eq!(plan_run(&s, 0, 0, None, false, t(1, 0)).unwrap().run, None);
    }

    #[test]
    fn schedule_runs_on_activation_then_each_tick_with_one_catch_up() {
        let s = spec(json!({"schedule": "*/30 * * * *"}));
        let p = plan_run(&s, 1, 0, None, false, t(1, 10)).unwrap();
        assert_eq!(p.run, Some(Run::Credentials(1)));
        assert_eq!(p.last_schedule_time, Some(t(1, 0)));
        assert_eq!(p.next_tick, Some(t(1, 30)));
        // Nothing new before the next tick.
        assert_eq!(plan_run(&s, 1, 1, Some(t(1, 0)), false, t(1, 20)).unwrap().run, None);
        // At 01:30 the tick runs.
        let p = plan_run(&s, 1, 1, Some(t(1, 0)), false, t(1, 30)).unwrap();
        assert_eq!(p.run, Some(Run::Tick(t(1, 30))));
        // Down for hours: one catch-up run, for the latest tick.
        let p = plan_run(&s, 1, 1, Some(t(1, 0)), false, t(5, 10)).unwrap();
        assert_eq!(p.run, Some(Run::Tick(t(5, 0))));
        assert_eq!(p.last_schedule_time, Some(t(5, 0)));
        // A credential change with a schedule starts nothing by itself.
        assert_eq!(plan_run(&s, 2, 1, Some(t(1, 0)), false, t(1, 20)).unwrap().run, None);
    }

    #[test]
    fn schedule_forbid_skips_tick_and_run_on_activation_false() {
        let s = spec(json!({"schedule": "0 * * * *"}));
        let p = plan_run(&s, 1, 1, Some(t(1, 0)), true, t(2, 1)).unwrap();
        assert!(p.skipped_tick && p.run.is_none());
        assert_eq!(p.last_schedule_time, Some(t(2, 0)));
        let s = spec(json!({"schedule": "0 * * * *", "runOnActivation": false}));
        assert_eq!(plan_run(&s, 1, 0, None, false, t(2, 1)).unwrap().run, None);
    }

    #[test]
    fn time_zones_and_bad_expressions() {
        let s = spec(json!({"schedule": "0 9 * * *", "timeZone": "Europe/Paris"}));
        let p = plan_run(&s, 1, 1, Some(t(0, 0)), false, t(7, 30)).unwrap();
        assert_eq!(p.next_tick, Some(t(8, 0)), "09:00 in Paris is 08:00 UTC in November");
        let bad = spec(json!({"schedule": "61 * * * *"}));
        assert!(matches!(plan_run(&bad, 1, 1, None, false, t(1, 0)), Err(ScheduleError::Cron(..))));
        let tz = spec(json!({"schedule": "0 * * * *", "timeZone": "Mars/Olympus"}));
        assert!(matches!(plan_run(&tz, 1, 1, None, false, t(1, 0)), Err(ScheduleError::TimeZone(_))));
    }

    #[test]
    fn selectors() {
        let sel: LabelSelector = serde_json::from_value(
            json!({"matchLabels": {"tenant": "true"}, "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["blocked"]}]}),
        )
        .unwrap();
        let l = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(selector_matches(&sel, &l(&[("tenant", "true")])));
        assert!(!selector_matches(&sel, &l(&[("tenant", "true"), ("tier", "blocked")])));
        assert!(!selector_matches(&sel, &l(&[])));
    }
}
