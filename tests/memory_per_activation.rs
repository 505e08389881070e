//! Heap per activation, store by store: a counting global allocator around the operator's own
//! deserialise → prune → store path, on objects shaped like the benchmark's converged API-key activations (the
//! activation, its owned Secret, the application's source Secret and a finished Job, as the apiserver serves them,
//! managed fields included). Run on demand; it asserts nothing:
//!
//! `cargo test --release --test memory_per_activation -- --ignored --nocapture`
//!
//! Bytes are the live heap the store holds per object after [`N`] objects, as requested; glibc bytes the chunks
//! glibc's malloc takes for them (the request and an 8-byte header rounded up to 16, at least 32: closer to what
//! the resident set pays); allocations the live allocations per object.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::{reflector, watcher::Event};
use latchkey::api::UserActivation;
use latchkey::controller;
use latchkey::controller::relations::Relations;
use latchkey::controller::watch::{self, Change};
use latchkey::job_record::JobRecord;
use latchkey::secret_record::SecretRecord;
use serde_json::{Value, json};

struct Counting;
static BYTES: AtomicIsize = AtomicIsize::new(0);
static CHUNKS: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicIsize = AtomicIsize::new(0);

/// The size of glibc's malloc chunk for a request of `size` bytes (64-bit).
fn chunk(size: usize) -> isize {
    ((size + 8).div_ceil(16) * 16).max(32) as isize
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size() as isize, Relaxed);
        CHUNKS.fetch_add(chunk(l.size()), Relaxed);
        ALLOCATIONS.fetch_add(1, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        BYTES.fetch_sub(l.size() as isize, Relaxed);
        CHUNKS.fetch_sub(chunk(l.size()), Relaxed);
        ALLOCATIONS.fetch_sub(1, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        BYTES.fetch_add(n as isize - l.size() as isize, Relaxed);
        CHUNKS.fetch_add(chunk(n) - chunk(l.size()), Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Objects per store: the benchmark's small scale.
const N: usize = 1000;
const NAMESPACES: usize = 100;
const CONNECTION_NS: &str = "bench-integrations";

fn ns(i: usize) -> String {
    format!("bench-t{:03}", i % NAMESPACES)
}
fn ua_uid(i: usize) -> String {
    format!("3b92f6c0-bf5c-45b8-a8e4-{i:012}")
}
fn secret_name(i: usize) -> String {
    format!("ua-{i}-bench-sync-credentials")
}
fn job_name(i: usize) -> String {
    format!("ua-{i}-{:010x}", i * 7919)
}

fn managed(manager: &str, operation: &str, subresource: Option<&str>, fields: Value) -> Value {
    let mut m = json!({"manager": manager, "operation": operation, "apiVersion": "v1", "time": "2026-11-26T07:53:31Z",
        "fieldsType": "FieldsV1", "fieldsV1": fields});
    if let Some(s) = subresource {
        m["subresource"] = json!(s);
    }
    m
}

fn owner(i: usize) -> Value {
    json!([{"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "name": format!("ua-{i}"), "uid": ua_uid(i),
        "controller": true, "blockOwnerDeletion": true}])
}

fn labels(i: usize, component: &str) -> Value {
    json!({"app.kubernetes.io/managed-by": "latchkey", "app.kubernetes.io/name": "latchkey",
        "app.kubernetes.io/part-of": "latchkey", "app.kubernetes.io/component": component,
        "latchkey.dev/activation": format!("ua-{i}"), "latchkey.dev/activation-uid": ua_uid(i),
        "latchkey.dev/connection": "bench-sync"})
}

/// A converged API-key activation as the benchmark creates it and the operator leaves it.
fn activation(i: usize) -> Value {
    let (job, secret) = (job_name(i), secret_name(i));
    let condition = |type_: &str, status: &str, reason: &str, message: String| {
        json!({"type": type_, "status": status, "reason": reason, "message": message, "observedGeneration": 1,
            "lastTransitionTime": "2026-11-26T07:53:31.030255209Z"})
    };
    json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation",
        "metadata": {"name": format!("ua-{i}"), "namespace": ns(i), "uid": ua_uid(i), "resourceVersion": format!("{}", 40_000 + i),
            "generation": 1, "creationTimestamp": "2026-11-26T07:53:15Z",
            "managedFields": [
                managed("latchkey-bench", "Update", None, json!({"f:spec": {".": {}, "f:connectionRef": {".": {}, "f:name": {}, "f:namespace": {}},
                    "f:credentialsSecretRef": {".": {}, "f:name": {}}, "f:user": {".": {}, "f:id": {}}, "f:variables": {".": {}, "f:org": {}}}})),
                managed("latchkey", "Apply", Some("status"), json!({"f:status": {"f:conditions": {}, "f:credentialGeneration": {},
                    "f:lastRun": {}, "f:observedGeneration": {}, "f:phase": {}, "f:runGeneration": {}, "f:secretName": {},
                    "f:sourceResourceVersion": {}}})),
            ]},
        "spec": {"connectionRef": {"name": "bench-sync", "namespace": CONNECTION_NS}, "user": {"id": format!("user-{i}")},
            "credentialsSecretRef": {"name": format!("key-{i}")}, "variables": {"org": format!("org-{i}")}, "suspend": false},
        "status": {
            "phase": "Active", "observedGeneration": 1, "credentialGeneration": 1, "runGeneration": 1,
            "secretName": secret, "sourceResourceVersion": format!("{}", 20_000 + i), "baseUrl": "http://127.0.0.1:9",
            "lastRun": {"job": job, "outcome": "Succeeded", "succeeded": true,
                "startTime": "2026-11-26T07:53:31Z", "completionTime": "2026-11-26T07:53:36Z"},
            "conditions": [
                condition("Ready", "True", "Active", format!("credentials stored in Secret {secret}")),
                condition("CredentialsValid", "True", "NoVerificationDeclared", "stored; the connector declares no verification request".into()),
                condition("LastRunSucceeded", "True", "JobSucceeded", format!("Job {job} succeeded")),
            ]
        }
    })
}

/// The owned Secret as the metadata watch serves it.
fn owned_secret(i: usize) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {"name": secret_name(i), "namespace": ns(i), "uid": format!("0c1eb117-b808-40ab-ba00-{i:012}"),
            "resourceVersion": format!("{}", 41_000 + i), "creationTimestamp": "2026-11-26T07:53:31Z",
            "labels": labels(i, "credentials"),
            "annotations": {"latchkey.dev/credential-generation": "1", "latchkey.dev/data-hash": "45c294a0cf23000e1cae5e153f33f00b",
                "latchkey.dev/source-resource-version": format!("{}", 20_000 + i)},
            "ownerReferences": owner(i),
            "managedFields": [managed("latchkey", "Apply", None, json!({"f:data": {"f:api_key": {}}, "f:metadata": {"f:annotations": {},
                "f:labels": {}, "f:ownerReferences": {}}, "f:type": {}}))]}})
}

/// The application's source Secret as the metadata watch serves it (labelled by the bench, and by the operator).
fn source_secret(i: usize) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {"name": format!("key-{i}"), "namespace": ns(i), "uid": format!("8fe2259a-b17a-4380-b90d-{i:012}"),
            "resourceVersion": format!("{}", 20_000 + i), "creationTimestamp": "2026-11-26T07:53:15Z",
            "labels": {"latchkey.dev/source": "true"},
            "managedFields": [managed("latchkey-bench", "Update", None, json!({"f:data": {".": {}, "f:api_key": {}},
                "f:metadata": {"f:labels": {".": {}, "f:latchkey.dev/source": {}}}, "f:type": {}}))]}})
}

/// A finished Job the operator started, as the Job watch serves it.
fn job(i: usize) -> Value {
    let (name, secret, uid) = (job_name(i), secret_name(i), format!("51b7f4a2-300b-4fe5-bd1c-{i:012}"));
    let mut pod_labels = labels(i, "job");
    pod_labels["batch.kubernetes.io/controller-uid"] = json!(uid);
    pod_labels["batch.kubernetes.io/job-name"] = json!(name);
    let done = |type_: &str| {
        json!({"type": type_, "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods",
            "lastProbeTime": "2026-11-26T07:53:36Z", "lastTransitionTime": "2026-11-26T07:53:36Z"})
    };
    json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": ns(i), "uid": uid, "resourceVersion": format!("{}", 42_000 + i), "generation": 1,
            "creationTimestamp": "2026-11-26T07:53:31Z", "labels": labels(i, "job"), "annotations": {"latchkey.dev/run-key": "cred-1"},
            "ownerReferences": owner(i),
            "managedFields": [managed("latchkey", "Update", None, json!({"f:spec": {}})),
                managed("kube-controller-manager", "Update", Some("status"), json!({"f:status": {}}))]},
        "spec": {"backoffLimit": 2, "completions": 1, "parallelism": 1, "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}},
            "template": {"metadata": {"labels": pod_labels, "annotations": {"latchkey.dev/variables": format!("{{\"org\":\"org-{i}\"}}")}},
                "spec": {"restartPolicy": "Never", "automountServiceAccountToken": false,
                    "containers": [{"name": "sync", "image": "busybox", "command": ["sh", "-c", "echo sync"],
                        "env": [{"name": "LATCHKEY_USER_ID", "value": format!("user-{i}")}, {"name": "LATCHKEY_ACTIVATION", "value": format!("ua-{i}")},
                            {"name": "LATCHKEY_API_KEY", "valueFrom": {"secretKeyRef": {"name": secret, "key": "api_key"}}}],
                        "volumeMounts": [{"name": "latchkey-credentials", "mountPath": "/var/run/latchkey/credentials", "readOnly": true}]}],
                    "volumes": [{"name": "latchkey-credentials", "secret": {"secretName": secret}}]}}},
        "status": {"startTime": "2026-11-26T07:53:31Z", "completionTime": "2026-11-26T07:53:36Z", "succeeded": 1, "ready": 0,
            "terminating": 0, "uncountedTerminatedPods": {}, "conditions": [done("SuccessCriteriaMet"), done("Complete")]}})
}

/// Live bytes and allocations `add` leaves behind per object, over `N` objects whose JSON text is made first.
fn per_object(what: &str, json: impl Fn(usize) -> Value, mut add: impl FnMut(&str)) -> [isize; 3] {
    let texts: Vec<String> = (0..N).map(|i| json(i).to_string()).collect();
    let counters = [&BYTES, &CHUNKS, &ALLOCATIONS];
    let before = counters.map(|c| c.load(Relaxed));
    for t in &texts {
        add(t);
    }
    let mut per = [0; 3];
    for (i, c) in counters.iter().enumerate() {
        per[i] = (c.load(Relaxed) - before[i]) / N as isize;
    }
    print_row(what, per);
    per
}

fn print_row(what: &str, [bytes, chunks, allocations]: [isize; 3]) {
    println!("{what:<28} {bytes:>6} B {chunks:>6} glibc B {allocations:>4} allocations");
}

fn store<K>(prune: impl Fn(&mut K)) -> (reflector::Store<K>, impl FnMut(&str))
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (reader, mut writer) = reflector::store::<K>();
    let add = move |text: &str| {
        let mut obj: K = serde_json::from_str(text).expect("the harness's own JSON parses");
        prune(&mut obj);
        writer.apply_watcher_event(&Event::Apply(obj));
    };
    (reader, add)
}

/// A store of records made from what the watch serves, as [`latchkey::controller::watch::Watch::map`] makes them.
fn records<K: serde::de::DeserializeOwned>(record: fn(K) -> SecretRecord) -> (reflector::Store<SecretRecord>, impl FnMut(&str)) {
    let (reader, mut writer) = reflector::store::<SecretRecord>();
    let add = move |text: &str| {
        let obj: K = serde_json::from_str(text).expect("the harness's own JSON parses");
        writer.apply_watcher_event(&Event::Apply(record(obj)));
    };
    (reader, add)
}

#[test]
#[ignore = "a measurement, run on demand with --ignored --nocapture"]
fn heap_per_activation_by_store() {
    println!("per activation, {N} activations:");
    let mut total = [0; 3];
    let mut sum = |per: [isize; 3]| {
        for (t, p) in total.iter_mut().zip(per) {
            *t += p;
        }
    };
    let (activations, add) = store::<UserActivation>(watch::prune_meta);
    sum(per_object("activation", activation, add));
    let (owned, add) = records::<PartialObjectMeta<Secret>>(controller::owned_secret_record);
    sum(per_object("owned Secret", owned_secret, add));
    let (source, add) = records::<PartialObjectMeta<Secret>>(controller::source_secret_record);
    sum(per_object("source Secret", source_secret, add));
    let (jobs, add) = store::<JobRecord>(watch::prune_job);
    sum(per_object("Job record", job, add));

    let relations = Relations::default();
    let uas: Vec<UserActivation> = (0..N).map(|i| serde_json::from_value(activation(i)).expect("parses")).collect();
    let records: Vec<JobRecord> = (0..N).map(|i| serde_json::from_value(job(i)).expect("parses")).collect();
    let mut k = 0;
    sum(per_object(
        "relations (activation)",
        |_| Value::Null,
        |_| {
            relations.activation_changed(&uas[k], Change::Applied);
            k += 1;
        },
    ));
    let mut k = 0;
    sum(per_object(
        "relations (Job)",
        |_| Value::Null,
        |_| {
            relations.job_changed(&records[k].metadata, Change::Applied);
            k += 1;
        },
    ));
    print_row("total", total);
    assert_eq!(activations.state().len() + owned.state().len() + source.state().len() + jobs.state().len(), 4 * N);
}
