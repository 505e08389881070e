//! What the operator keeps of a Job it launched: the metadata and the few status fields its outcome is read from,
//! parsed straight off the watch. The spec, the pod template and the pod counters are never parsed: k8s-openapi's
//! `Job` takes 2.6 KB before a single field is set, a record a few hundred bytes, once per activation in the store.
use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use serde::Deserialize;

use crate::jobs::Outcome;

/// A Job as the store keeps it (`batch/v1`, `jobs`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct JobRecord {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: Option<JobRecordStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecordStatus {
    #[serde(default)]
    pub start_time: Option<Time>,
    #[serde(default)]
    pub completion_time: Option<Time>,
    /// Read from `conditions`: only what they conclude is kept.
    #[serde(rename = "conditions", default, deserialize_with = "outcome_of_conditions")]
    pub outcome: Option<Outcome>,
}

/// A condition as it arrives; only its type and status are read.
#[derive(Deserialize)]
struct Condition {
    #[serde(rename = "type")]
    type_: String,
    status: String,
}

/// `Complete=True` → Succeeded, `Failed=True` → Failed; otherwise none yet (running).
fn outcome_of_conditions<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Outcome>, D::Error> {
    let conditions: Option<Vec<Condition>> = Option::deserialize(d)?;
    let has = |t: &str| conditions.iter().flatten().any(|c| c.type_ == t && c.status == "True");
    Ok(if has("Complete") {
        Some(Outcome::Succeeded)
    } else if has("Failed") {
        Some(Outcome::Failed)
    } else {
        None
    })
}

impl JobRecord {
    pub fn outcome(&self) -> Outcome {
        self.status.as_ref().and_then(|s| s.outcome).unwrap_or(Outcome::Running)
    }
}

impl Resource for JobRecord {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Job".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "batch".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        "batch/v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "jobs".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(status: serde_json::Value) -> JobRecord {
        serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "acme-1", "namespace": "t", "labels": {"latchkey.dev/activation-uid": "u1"}},
            "spec": {"template": {"spec": {"containers": [{"name": "sync", "image": "busybox"}]}}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn the_outcome_is_read_from_the_conditions_that_are_true() {
        assert_eq!(record(json!({"active": 1, "startTime": "2026-11-26T07:53:31Z"})).outcome(), Outcome::Running);
        let done = record(json!({"startTime": "2026-11-26T07:53:31Z", "completionTime": "2026-11-26T07:53:36Z",
            "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True", "message": "m"}]}));
        assert_eq!(done.outcome(), Outcome::Succeeded);
        assert!(done.status.as_ref().and_then(|s| s.completion_time.as_ref()).is_some());
        let failed = record(json!({"conditions": [{"type": "FailureTarget", "status": "True"}, {"type": "Failed", "status": "True"}]}));
        assert_eq!(failed.outcome(), Outcome::Failed);
        assert_eq!(record(json!({"conditions": [{"type": "Complete", "status": "False"}]})).outcome(), Outcome::Running);
        assert_eq!(record(serde_json::Value::Null).outcome(), Outcome::Running);
    }

    #[test]
    fn a_record_is_a_fraction_of_a_job() {
        assert!(std::mem::size_of::<JobRecord>() * 4 < std::mem::size_of::<k8s_openapi::api::batch::v1::Job>());
    }
}
