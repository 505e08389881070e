//! The test bed is a real control plane: version, Jobs that complete or fail, RBAC, CEL validation of CRDs,
//! and an audit log of writes. Run with `cargo test --test testbed` (starts the bed when it is not up).

mod support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams};
use serde_json::json;
use support::{ADMIN_USER, UNPRIVILEGED_USER, bed, namespace, wait_for, wait_for_job_finished, wait_for_value};

const JOB_TIMEOUT: Duration = Duration::from_secs(60);

fn busybox_job(name: &str, pod_labels: serde_json::Value) -> Job {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": { "labels": pod_labels },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{ "name": "main", "image": "busybox:1.36", "command": ["sh", "-c", "echo hello"] }]
                }
            }
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn apiserver_reports_v1_34_2() {
    let bed = bed().await;
    let info = bed.client().apiserver_version().await.unwrap();
    assert_eq!(info.git_version, "v1.34.2", "{info:?}");
    assert_eq!((info.major.as_str(), info.minor.as_str()), ("1", "34"));
}

#[tokio::test]
async fn a_job_completes_and_its_creation_is_audited() {
    let bed = bed().await;
    let ns = namespace(&bed, "testbed-job").await;
    let jobs: Api<Job> = ns.api();
    let mark = bed.audit_mark();
    jobs.create(&PostParams::default(), &busybox_job("hello", json!({ "app": "hello" }))).await.unwrap();

    assert_eq!(wait_for_job_finished(&jobs, "hello", JOB_TIMEOUT).await, "Complete");
    let job = jobs.get("hello").await.unwrap();
    assert_eq!(job.status.unwrap().succeeded, Some(1));

    // The audit log has the creation, by the admin user, with the response code.
    let name = ns.name.clone();
    let find = || {
        bed.audit_writes_by(ADMIN_USER, mark).into_iter().find(|e| {
            e["verb"] == "create"
                && e["objectRef"]["resource"] == "jobs"
                && e["objectRef"]["apiGroup"] == "batch"
                && e["objectRef"]["namespace"] == name.as_str()
                && e["objectRef"]["name"] == "hello"
        })
    };
    wait_for("the Job's creation in the audit log", Duration::from_secs(10), || async { find().is_some() }).await;
    let event = find().unwrap();
    assert_eq!(event["responseStatus"]["code"], 201, "{event}");
    assert_eq!(event["stage"], "ResponseComplete", "{event}");
    assert_eq!(event["level"], "Metadata", "{event}");
    // Level Metadata: no bodies.
    assert!(event.get("requestObject").is_none() && event.get("responseObject").is_none(), "{event}");
    // Reads are not audited: the get above left no line.
    assert!(
        bed.audit_events_since(mark).iter().all(|e| e["verb"] != "get" && e["verb"] != "list" && e["verb"] != "watch"),
        "reads in the audit log"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn a_job_with_a_pod_labelled_to_fail_fails() {
    let bed = bed().await;
    let ns = namespace(&bed, "testbed-fail").await;
    let jobs: Api<Job> = ns.api();
    let job = busybox_job("doomed", json!({ "latchkey.dev/test-outcome": "fail" }));
    jobs.create(&PostParams::default(), &job).await.unwrap();

    assert_eq!(wait_for_job_finished(&jobs, "doomed", JOB_TIMEOUT).await, "Failed");
    let job = jobs.get("doomed").await.unwrap();
    let status = job.status.unwrap();
    assert_eq!(status.failed, Some(1));
    assert_eq!(status.succeeded.unwrap_or(0), 0);
    ns.cleanup().await;
}

#[tokio::test]
async fn the_unprivileged_user_is_forbidden_to_list_secrets() {
    let bed = bed().await;
    let ns = namespace(&bed, "testbed-rbac").await;
    // The admin can, so the namespace and the API are there.
    ns.api::<Secret>().list(&ListParams::default()).await.unwrap();

    let secrets: Api<Secret> = Api::namespaced(bed.unprivileged_client(), &ns.name);
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            // Authenticated as that user, not anonymous.
            assert!(status.message.contains(&format!("\"{UNPRIVILEGED_USER}\"")), "{}", status.message);
        }
        other => panic!("expected 403 for {UNPRIVILEGED_USER}, got {other:?}"),
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn a_crd_cel_rule_rejects_invalid_objects_at_create() {
    let bed = bed().await;
    let ns = namespace(&bed, "testbed-cel").await;
    let suffix: String = ns.name.rsplit('-').next().unwrap().chars().filter(|c| c.is_ascii_lowercase()).collect();
    let suffix = if suffix.is_empty() { "x".to_string() } else { suffix };
    let (group, plural, kind) = ("testbed.latchkey.dev", format!("ranges{suffix}"), format!("Range{suffix}"));
    let crd_name = format!("{plural}.{group}");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": { "name": crd_name },
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": { "plural": plural, "singular": format!("range{suffix}"), "kind": kind, "listKind": format!("{kind}List") },
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": { "spec": {
                        "type": "object",
                        "required": ["min", "max"],
                        "properties": { "min": { "type": "integer" }, "max": { "type": "integer" } },
                        "x-kubernetes-validations": [{ "rule": "self.min <= self.max", "message": "min must not exceed max" }]
                    }}
                }}
            }]
        }
    }))
    .unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(bed.client());
    crds.create(&PostParams::default(), &crd).await.unwrap();
    wait_for("the CRD to be Established", Duration::from_secs(30), || async {
        crds.get(&crd_name)
            .await
            .ok()
            .and_then(|c| c.status)
            .and_then(|s| s.conditions)
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
    })
    .await;

    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", &kind), &plural);
    let ranges: Api<DynamicObject> = Api::namespaced_with(bed.client(), &ns.name, &ar);
    let object = |name: &str, min: i64, max: i64| {
        let mut o = DynamicObject::new(name, &ar);
        o.data = json!({ "spec": { "min": min, "max": max } });
        o
    };
    // The served endpoint can lag the Established condition for a moment: retry a 404.
    let rejected = wait_for_value("the invalid object to be answered", Duration::from_secs(15), || async {
        match ranges.create(&PostParams::default(), &object("bad", 5, 1)).await {
            Err(kube::Error::Api(s)) if s.code == 404 => Err(format!("404: {}", s.message)),
            other => Ok(other),
        }
    })
    .await;
    match rejected {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            assert!(s.message.contains("min must not exceed max"), "{}", s.message);
        }
        other => panic!("an object with min > max was not rejected: {other:?}"),
    }
    let created = ranges.create(&PostParams::default(), &object("good", 1, 5)).await.unwrap();
    assert_eq!(created.data["spec"]["max"], 5);
    assert!(ranges.get_opt("bad").await.unwrap().is_none());

    crds.delete(&crd_name, &DeleteParams::default()).await.unwrap();
    ns.cleanup().await;
}
