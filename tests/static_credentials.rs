//! Tenants activate an embedded connection with credentials their application supplies (API keys), on the real
//! control plane, with the operator running as a subprocess. Each test reads like what a user checks with kubectl.
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
use serde_json::json;
use support::fixtures::*;
use support::operator::Operator;
use support::{bed, namespace, wait_for, wait_for_value};

#[tokio::test]
async fn three_tenants_activate_one_connection_with_their_own_keys() {
    let p = provider().await;
    let f = fixture("three-tenants", &p.url, busybox_job()).await;
    let tenants = [f.tenant("tenant-a", true).await, f.tenant("tenant-b", true).await, f.tenant("tenant-c", true).await];
    let outsider = f.tenant("outsider", false).await;
    let mut watched: Vec<&str> = vec![f.ns()];
    watched.extend(tenants.iter().map(|t| t.name()));
    watched.push(outsider.name());
    let op = Operator::start(&bed().await, "three_tenants", &watched, &[]).await;

    let keys = ["good-key-aaaa-1111", "good-key-bbbb-2222", "good-key-cccc-3333"];
    for (i, t) in tenants.iter().enumerate() {
        f.activate(t, "acme", &format!("user-{i}"), keys[i]).await;
    }
    f.activate(&outsider, "acme", "user-outsider", "good-key-dddd-4444").await;

    for (i, t) in tenants.iter().enumerate() {
        let api = t.api::<UserActivation>();
        let (reason, _) = wait_condition(&api, "acme", "Ready", "True").await;
        assert_eq!(reason, "Active");
        let ua = api.get("acme").await.unwrap();
        let st = ua.status.clone().unwrap();
        let secret_name = st.secret_name.clone().expect("status.secretName");
        let secret = t.api::<Secret>().get(&secret_name).await.unwrap();
        assert_eq!(decoded(&secret, "api_key").as_deref(), Some(keys[i]), "each tenant's Secret holds its own key");
        assert_eq!(secret.owner_references()[0].uid, ua.uid().unwrap(), "owned by the activation");
        assert_eq!(secret.labels().get("app.kubernetes.io/managed-by").map(String::as_str), Some("latchkey"));
        assert_eq!(condition(&ua, "CredentialsValid").map(|c| c.1).as_deref(), Some("Verified"));
        // Its Job references only its own Secret.
        let jobs = wait_for_value("the tenant's first Job", T, || async {
            let j = jobs_of(t, "acme").await;
            if j.len() == 1 { Ok(j) } else { Err(format!("{} jobs", j.len())) }
        })
        .await;
        let pod = jobs[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let mut secrets: Vec<String> = pod.volumes.iter().flatten().filter_map(|v| v.secret.as_ref()?.secret_name.clone()).collect();
        for c in &pod.containers {
            secrets.extend(c.env.iter().flatten().filter_map(|e| Some(e.value_from.as_ref()?.secret_key_ref.as_ref()?.name.clone())));
        }
        assert!(!secrets.is_empty() && secrets.iter().all(|s| *s == secret_name), "Job mounts only {secret_name}: {secrets:?}");
        let env: Vec<_> = pod.containers[0].env.iter().flatten().map(|e| e.name.clone()).collect();
        for var in ["LATCHKEY_API_KEY", "LATCHKEY_BASE_URL", "LATCHKEY_USER_ID", "LATCHKEY_VAR_ORG", "LATCHKEY_VAR_LIMIT"] {
            assert!(env.contains(&var.to_string()), "{var} in {env:?}");
        }
        assert_eq!(pod.automount_service_account_token, Some(false));
        // The run completes on the bed and shows in status.lastRun.
        wait_for_value("lastRun Succeeded", T, || async {
            let ua = api.get("acme").await.map_err(|e| e.to_string())?;
            match ua.status.and_then(|s| s.last_run) {
                Some(r) if r.succeeded == Some(true) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    // The outsider's namespace is not allowed: clear reason, nothing written there.
    let (reason, message) = wait_condition(&outsider.api::<UserActivation>(), "acme", "Ready", "False").await;
    assert_eq!(reason, "NamespaceNotAllowed");
    assert!(message.contains("allowedNamespaces"), "{message}");
    assert!(outsider.api::<Secret>().get_opt("acme-acme-sync-credentials").await.unwrap().is_none());

    // The connection counts 3 active users of 4 and is Ready.
    let ecs: Api<EmbeddedConnection> = Api::namespaced(f.client.clone(), f.ns());
    wait_for("the connection to show 3 active users and Ready", T, || async {
        let ec = ecs.get("acme-sync").await.unwrap();
        let st = ec.status.unwrap_or_default();
        st.active_users == 3 && st.total_users == 4 && st.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
    })
    .await;
    op.assert_no_leaks("acme", &keys);
}

#[tokio::test]
async fn a_connection_without_active_users_is_not_ready() {
    let p = provider().await;
    let f = fixture("no-users", &p.url, serde_json::Value::Null).await;
    let _op = Operator::start(&bed().await, "no_users", &[f.ns()], &[]).await;
    let ecs: Api<EmbeddedConnection> = Api::namespaced(f.client.clone(), f.ns());
    wait_for("Ready=False NoActiveUsers", T, || async {
        let ec = ecs.get("acme-sync").await.unwrap();
        ec.status.unwrap_or_default().conditions.iter().any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "NoActiveUsers")
    })
    .await;
}

#[tokio::test]
async fn a_wrong_key_fails_verification_and_stores_nothing() {
    let p = provider().await;
    let f = fixture("wrong-key", &p.url, busybox_job()).await;
    let t = f.tenant("tenant", true).await;
    let op = Operator::start(&bed().await, "wrong_key", &[f.ns(), t.name()], &[]).await;
    f.activate(&t, "acme", "u1", "bad-key-zzzz-9999").await;
    let api = t.api::<UserActivation>();
    let (reason, message) = wait_condition(&api, "acme", "CredentialsValid", "False").await;
    assert_eq!(reason, "CredentialsRejected");
    assert!(message.contains("401"), "{message}");
    let (reason, _) = wait_condition(&api, "acme", "Ready", "False").await;
    assert_eq!(reason, "CredentialsRejected");
    assert!(t.api::<Secret>().get_opt("acme-acme-sync-credentials").await.unwrap().is_none(), "nothing stored");
    assert!(jobs_of(&t, "acme").await.is_empty(), "no Job");
    // The rejected version is not verified again in a loop.
    let before = p.requests.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(p.requests.load(Ordering::SeqCst), before, "no retry of a rejected credential without a change");
    // Fixing the key makes it Active.
    put_source(&t, "acme-key", "good-key-fixed-0000").await;
    wait_condition(&api, "acme", "Ready", "True").await;
    op.assert_no_leaks("acme", &["bad-key-zzzz-9999", "good-key-fixed-0000"]);
}

#[tokio::test]
async fn a_rotated_key_reaches_the_secret_and_starts_one_job() {
    let p = provider().await;
    let f = fixture("rotation", &p.url, busybox_job()).await;
    let t = f.tenant("tenant", true).await;
    let op = Operator::start(&bed().await, "rotation", &[f.ns(), t.name()], &[]).await;
    f.activate(&t, "acme", "u1", "good-key-first-1111").await;
    let api = t.api::<UserActivation>();
    wait_condition(&api, "acme", "Ready", "True").await;
    wait_for("the first Job", T, || async { jobs_of(&t, "acme").await.len() == 1 }).await;

    put_source(&t, "acme-key", "good-key-second-2222").await;
    let secrets = t.api::<Secret>();
    wait_for("the rotated key in the owned Secret", Duration::from_secs(10), || async {
        secrets.get("acme-acme-sync-credentials").await.ok().and_then(|s| decoded(&s, "api_key")).as_deref() == Some("good-key-second-2222")
    })
    .await;
    wait_for("a second Job", T, || async { jobs_of(&t, "acme").await.len() == 2 }).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(jobs_of(&t, "acme").await.len(), 2, "exactly one new Job per rotation");
    let ua = api.get("acme").await.unwrap();
    assert_eq!(ua.status.unwrap().credential_generation, 2);
    op.assert_no_leaks("acme", &["good-key-first-1111", "good-key-second-2222"]);
}

#[tokio::test]
async fn a_foreign_secret_with_the_target_name_is_left_untouched() {
    let p = provider().await;
    let f = fixture("foreign", &p.url, busybox_job()).await;
    let t = f.tenant("tenant", true).await;
    let foreign: Secret =
        serde_json::from_value(json!({"metadata": {"name": "acme-acme-sync-credentials"}, "stringData": {"mine": "do-not-touch"}}))
            .unwrap();
    t.api::<Secret>().create(&PostParams::default(), &foreign).await.unwrap();
    let _op = Operator::start(&bed().await, "foreign", &[f.ns(), t.name()], &[]).await;
    f.activate(&t, "acme", "u1", "good-key-foreign-1").await;
    let (reason, message) = wait_condition(&t.api::<UserActivation>(), "acme", "Ready", "False").await;
    assert_eq!(reason, "SecretConflict");
    assert!(message.contains("not owned"), "{message}");
    let s = t.api::<Secret>().get("acme-acme-sync-credentials").await.unwrap();
    assert_eq!(decoded(&s, "mine").as_deref(), Some("do-not-touch"));
    assert!(decoded(&s, "api_key").is_none());
    assert!(s.owner_references().is_empty());
    assert!(jobs_of(&t, "acme").await.is_empty());
}

#[tokio::test]
async fn deleting_an_activation_removes_its_secret_and_jobs_and_the_count_drops() {
    let p = provider().await;
    let f = fixture("deletion", &p.url, busybox_job()).await;
    let t = f.tenant("tenant", true).await;
    let _op = Operator::start(&bed().await, "deletion", &[f.ns(), t.name()], &[]).await;
    f.activate(&t, "acme", "u1", "good-key-delete-1").await;
    f.activate(&t, "globex", "u2", "good-key-delete-2").await;
    let api = t.api::<UserActivation>();
    wait_condition(&api, "acme", "Ready", "True").await;
    wait_condition(&api, "globex", "Ready", "True").await;
    wait_for("a Job for acme", T, || async { !jobs_of(&t, "acme").await.is_empty() }).await;
    let ecs: Api<EmbeddedConnection> = Api::namespaced(f.client.clone(), f.ns());
    wait_for("2 active users", T, || async { ecs.get("acme-sync").await.unwrap().status.unwrap_or_default().active_users == 2 }).await;

    api.delete("acme", &DeleteParams::default()).await.unwrap();
    wait_for("acme's Secret and Jobs to be gone", T, || async {
        t.api::<Secret>().get_opt("acme-acme-sync-credentials").await.unwrap().is_none() && jobs_of(&t, "acme").await.is_empty()
    })
    .await;
    assert!(t.api::<Secret>().get_opt("globex-acme-sync-credentials").await.unwrap().is_some(), "the other tenant keeps its Secret");
    wait_for("1 active user", T, || async {
        let st = ecs.get("acme-sync").await.unwrap().status.unwrap_or_default();
        st.active_users == 1 && st.total_users == 1
    })
    .await;
}

#[tokio::test]
async fn deleting_a_connector_in_use_shows_on_the_dependants() {
    let p = provider().await;
    let f = fixture("connector-gone", &p.url, busybox_job()).await;
    let t = f.tenant("tenant", true).await;
    let op = Operator::start(&bed().await, "connector_gone", &[f.ns(), t.name()], &[]).await;
    f.activate(&t, "acme", "u1", "good-key-gone-1").await;
    let api = t.api::<UserActivation>();
    wait_condition(&api, "acme", "Ready", "True").await;
    f.integrations.api::<Connector>().delete("acme-api", &DeleteParams::default()).await.unwrap();
    let (reason, message) = wait_condition(&api, "acme", "Ready", "False").await;
    assert_eq!(reason, "ConnectorNotFound");
    assert!(message.contains("acme-api"), "{message}");
    let ecs: Api<EmbeddedConnection> = Api::namespaced(f.client.clone(), f.ns());
    wait_for("the connection to say ConnectorNotFound", T, || async {
        ecs.get("acme-sync").await.unwrap().status.unwrap_or_default().conditions.iter().any(|c| c.reason == "ConnectorNotFound")
    })
    .await;
    assert!(t.api::<Secret>().get_opt("acme-acme-sync-credentials").await.unwrap().is_some(), "credentials kept until the activation goes");
    assert!(op.log().contains("acme"));
}

#[tokio::test]
async fn a_second_activation_of_the_same_user_is_a_duplicate() {
    let p = provider().await;
    let f = fixture("duplicate", &p.url, serde_json::Value::Null).await;
    let t = f.tenant("tenant", true).await;
    let _op = Operator::start(&bed().await, "duplicate", &[f.ns(), t.name()], &[]).await;
    f.activate(&t, "first", "same-user", "good-key-dup-1").await;
    wait_condition(&t.api::<UserActivation>(), "first", "Ready", "True").await;
    f.activate(&t, "second", "same-user", "good-key-dup-2").await;
    let (reason, message) = wait_condition(&t.api::<UserActivation>(), "second", "Ready", "False").await;
    assert_eq!(reason, "DuplicateUser");
    assert!(message.contains("first"), "{message}");
    wait_condition(&t.api::<UserActivation>(), "first", "Ready", "True").await;
}

#[tokio::test]
async fn a_job_template_naming_a_missing_configmap_says_so() {
    let p = provider().await;
    let job = json!({"template": {"spec": {
        "volumes": [{"name": "cfg", "configMap": {"name": "sync-settings"}}],
        "containers": [{"name": "sync", "image": "busybox"}]}}});
    let f = fixture("missing-cm", &p.url, job).await;
    let t = f.tenant("tenant", true).await;
    let _op = Operator::start(&bed().await, "missing_cm", &[f.ns(), t.name()], &[]).await;
    f.activate(&t, "acme", "u1", "good-key-cm-1").await;
    let api = t.api::<UserActivation>();
    let (reason, message) = wait_condition(&api, "acme", "LastRunSucceeded", "False").await;
    assert_eq!(reason, "JobTemplateInvalid");
    assert!(message.contains("ConfigMap sync-settings"), "{message}");
    wait_condition(&api, "acme", "Ready", "True").await;
    assert!(jobs_of(&t, "acme").await.is_empty());
}

#[tokio::test]
async fn a_restart_with_nothing_to_do_writes_nothing() {
    let bed = bed().await;
    let p = provider().await;
    let f = fixture("resync", &p.url, busybox_job()).await;
    let t = f.tenant("tenant", true).await;
    let mut op = Operator::start(&bed, "resync", &[f.ns(), t.name()], &[]).await;
    for i in 0..5 {
        f.activate(&t, &format!("user{i}"), &format!("u{i}"), &format!("good-key-resync-{i}")).await;
    }
    let api = t.api::<UserActivation>();
    for i in 0..5 {
        wait_condition(&api, &format!("user{i}"), "Ready", "True").await;
        let name = format!("user{i}");
        wait_for_value("lastRun finished", T, || async {
            match api.get(&name).await.map_err(|e| e.to_string())?.status.and_then(|s| s.last_run).and_then(|r| r.succeeded) {
                Some(true) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    let ecs: Api<EmbeddedConnection> = Api::namespaced(f.client.clone(), f.ns());
    wait_for("5 active users", T, || async { ecs.get("acme-sync").await.unwrap().status.unwrap_or_default().active_users == 5 }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let verifications = p.requests.load(Ordering::SeqCst);
    let mark = bed.audit_mark();
    op.restart().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let writes: Vec<String> = bed
        .audit_writes_by(support::OPERATOR_USER, mark)
        .iter()
        .filter(|e| {
            let ns = e["objectRef"]["namespace"].as_str().unwrap_or("");
            ns == f.ns() || ns == t.name()
        })
        .map(|e| format!("{} {} {}", e["verb"], e["objectRef"]["resource"], e["objectRef"]["name"]))
        .collect();
    assert!(writes.is_empty(), "a restart with nothing to do wrote: {writes:?}");
    assert_eq!(p.requests.load(Ordering::SeqCst), verifications, "no verification request on restart");
    let log = op.log();
    assert!(log.contains("caches synced"));
}

#[tokio::test]
async fn an_api_key_activation_costs_its_secret_its_first_job_and_its_status() {
    // The write budget, counted by the apiserver's audit log: per activation one Secret write, one Job create
    // (never a second, refused one), one status write that makes it Ready with the Job shown running, and one more
    // when the Job's outcome is known. Eight activations at once, so that the operator's watches lag behind its
    // writes as they do under load.
    let bed = bed().await;
    let p = provider().await;
    let f = fixture("budget", &p.url, busybox_job()).await;
    let t = f.tenant("tenant", true).await;
    let _op = Operator::start(&bed, "budget", &[f.ns(), t.name()], &[]).await;
    let mark = bed.audit_mark();
    let names: Vec<String> = (0..8).map(|i| format!("user{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        f.activate(&t, name, &format!("u{i}"), &format!("good-key-budget-{i}")).await;
    }
    let api = t.api::<UserActivation>();
    for name in &names {
        wait_condition(&api, name, "Ready", "True").await;
        wait_for_value("lastRun finished", T, || async {
            match api.get(name).await.map_err(|e| e.to_string())?.status.and_then(|s| s.last_run).and_then(|r| r.succeeded) {
                Some(true) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes = bed.operator_writes_in(t.name(), mark);
    let all = writes.lines();
    for name in &names {
        let secret = format!("{name}-acme-sync-credentials");
        assert_eq!(writes.count("secrets", None, "patch", &|n| n == secret), 1, "{name}: one write of its Secret; all writes: {all:#?}");
        assert_eq!(writes.count("jobs", None, "create", &|n| n.starts_with(&format!("{name}-"))), 1, "{name}: one Job create; {all:#?}");
        assert_eq!(
            writes.count("useractivations", Some("status"), "patch", &|n| n == name),
            2,
            "{name}: Ready, then the outcome; {all:#?}"
        );
    }
    let others: Vec<&String> =
        all.iter().filter(|w| !w.contains("secrets") && !w.contains("jobs") && !w.contains("useractivations")).collect();
    assert!(others.is_empty(), "no other writes (no event for an activation that is Active at once): {others:?}");
}

#[tokio::test]
async fn invalid_manifests_are_rejected_at_apply_with_the_rule_message() {
    let bed = bed().await;
    let ns = namespace(&bed, "invalid").await;
    let api = ns.api::<Connector>();
    let cases = [
        (
            json!([{"name": "m", "apiKey": {"in": "Header", "name": "X"}, "basic": {}}]),
            "https://x.example",
            "set exactly one of oauth2, apiKey, basic",
        ),
        (json!([{"name": "m", "basic": {}}, {"name": "m", "basic": {}}]), "https://x.example", "authMethods names must be unique"),
        (json!([{"name": "m", "basic": {}}]), "ftp://x.example", "baseUrl must be an http:// or https:// URL"),
        (
            json!([{"name": "m", "oauth2": {"flow": "AuthorizationCode", "tokenUrl": "https://t.example/token"}}]),
            "https://x.example",
            "the AuthorizationCode flow needs authorizationUrl and clientSecretRef",
        ),
        (json!([{"name": "Bad_Name", "basic": {}}]), "https://x.example", "spec.authMethods[0].name"),
    ];
    for (i, (methods, base, expected)) in cases.iter().enumerate() {
        let c = json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": format!("c{i}")},
                       "spec": {"baseUrl": base, "authMethods": methods}});
        let obj: Connector = serde_json::from_value(c).unwrap();
        let err = api.create(&PostParams::default(), &obj).await.expect_err("the apiserver must reject it");
        assert!(err.to_string().contains(expected), "case {i}: expected {expected:?} in {err}");
    }
    let ecs = ns.api::<EmbeddedConnection>();
    let ec = json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "e"},
                    "spec": {"connectorRef": {"name": "c"}, "authMethod": "m", "job": {"schedule": "every tuesday", "template": {}}}});
    let err = ecs.create(&PostParams::default(), &serde_json::from_value(ec).unwrap()).await.expect_err("bad schedule rejected");
    assert!(err.to_string().contains("spec.job.schedule"), "{err}");
    let _ = BTreeMap::<String, String>::new();
}

#[tokio::test]
async fn a_provider_outage_during_verification_is_retried_with_backoff_then_recovers() {
    let p = provider().await;
    p.down.store(true, Ordering::SeqCst);
    let f = fixture("outage", &p.url, serde_json::Value::Null).await;
    let t = f.tenant("tenant", true).await;
    let _op = Operator::start(&bed().await, "outage", &[f.ns(), t.name()], &[]).await;
    f.activate(&t, "acme", "u1", "good-key-outage-1").await;
    let api = t.api::<UserActivation>();
    let (reason, message) = wait_condition(&api, "acme", "CredentialsValid", "Unknown").await;
    assert_eq!(reason, "VerificationUnavailable");
    assert!(message.contains("503"), "{message}");
    // Backoff 1 s, 2 s, 4 s, 8 s (+10 % jitter): in 10 s at most 5 attempts, never a tight loop.
    let start = p.requests.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let attempts = p.requests.load(Ordering::SeqCst) - start;
    assert!(attempts <= 5, "{attempts} verification attempts in 10 s: backoff is not working");
    assert!(attempts >= 1, "no retry at all during the outage");
    let ua = api.get("acme").await.unwrap();
    assert!(ua.status.unwrap().consecutive_failures >= 2);
    p.down.store(false, Ordering::SeqCst);
    wait_for_value("recovery to Ready", Duration::from_secs(40), || async {
        let ua = api.get("acme").await.map_err(|e| e.to_string())?;
        match condition(&ua, "Ready") {
            Some((s, _, _)) if s == "True" => Ok(ua),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let ua = api.get("acme").await.unwrap();
    assert_eq!(ua.status.as_ref().unwrap().consecutive_failures, 0);
    assert_eq!(condition(&ua, "CredentialsValid").map(|c| c.1).as_deref(), Some("Verified"));
}

#[tokio::test]
async fn a_suspended_activation_starts_no_job_until_resumed() {
    let p = provider().await;
    let f = fixture("suspend", &p.url, busybox_job()).await;
    let t = f.tenant("tenant", true).await;
    let _op = Operator::start(&bed().await, "suspend", &[f.ns(), t.name()], &[]).await;
    put_source(&t, "acme-key", "good-key-suspend-1").await;
    let ua: UserActivation = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "acme"},
        "spec": {"connectionRef": {"name": "acme-sync", "namespace": f.ns()}, "user": {"id": "u1"},
                 "credentialsSecretRef": {"name": "acme-key"}, "suspend": true}
    }))
    .unwrap();
    let api = t.api::<UserActivation>();
    api.create(&PostParams::default(), &ua).await.unwrap();
    wait_for("phase Suspended with Ready=True", T, || async {
        let ua = api.get("acme").await.unwrap();
        ua.status.as_ref().and_then(|s| s.phase) == Some(latchkey::api::user_activation::Phase::Suspended)
            && condition(&ua, "Ready").map(|c| c.0).as_deref() == Some("True")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(jobs_of(&t, "acme").await.is_empty(), "no Job while suspended");
    api.patch("acme", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"suspend": false}}))).await.unwrap();
    wait_for("the first Job after resuming", T, || async { jobs_of(&t, "acme").await.len() == 1 }).await;
}

#[tokio::test]
async fn retain_keeps_the_tenant_secret_after_deletion() {
    let p = provider().await;
    let f = fixture_with("retain", &p.url, serde_json::Value::Null, json!({"secretDeletionPolicy": "Retain"})).await;
    let t = f.tenant("tenant", true).await;
    let _op = Operator::start(&bed().await, "retain", &[f.ns(), t.name()], &[]).await;
    f.activate(&t, "acme", "u1", "good-key-retain-1").await;
    let api = t.api::<UserActivation>();
    wait_condition(&api, "acme", "Ready", "True").await;
    assert!(api.get("acme").await.unwrap().finalizers().contains(&"latchkey.dev/cleanup".to_string()));
    api.delete("acme", &DeleteParams::default()).await.unwrap();
    wait_for("the activation to be gone", T, || async { api.get_opt("acme").await.unwrap().is_none() }).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = t.api::<Secret>().get("acme-acme-sync-credentials").await.expect("the Secret is retained");
    assert_eq!(decoded(&s, "api_key").as_deref(), Some("good-key-retain-1"));
    assert!(s.owner_references().is_empty(), "released from its owner so the garbage collector keeps it");
}

#[tokio::test]
async fn sigterm_stops_the_operator_gracefully() {
    let p = provider().await;
    let f = fixture("sigterm", &p.url, serde_json::Value::Null).await;
    let mut op = Operator::start(&bed().await, "sigterm", &[f.ns()], &[]).await;
    let status = op.stop().expect("the operator was running");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(op.log().contains("latchkey stopped"));
}

#[tokio::test]
async fn no_secret_reaches_events_status_or_job_specs() {
    let p = provider().await;
    let f = fixture("leaks", &p.url, busybox_job()).await;
    let t = f.tenant("tenant", true).await;
    let op = Operator::start(&bed().await, "leaks", &[f.ns(), t.name()], &[]).await;
    let keys = ["good-key-leak-aaaa", "bad-key-leak-bbbb"];
    f.activate(&t, "acme", "u1", keys[0]).await;
    f.activate(&t, "globex", "u2", keys[1]).await;
    let api = t.api::<UserActivation>();
    wait_condition(&api, "acme", "Ready", "True").await;
    wait_condition(&api, "globex", "CredentialsValid", "False").await;
    wait_for("acme's Job", T, || async { !jobs_of(&t, "acme").await.is_empty() }).await;
    // Everything Latchkey wrote that people read: activations (status), events, Jobs.
    let mut haystack = String::new();
    for ua in api.list(&ListParams::default()).await.unwrap() {
        haystack.push_str(&serde_json::to_string(&ua).unwrap());
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(f.client.clone(), t.name());
    let evs = events.list(&ListParams::default()).await.unwrap();
    assert!(!evs.items.is_empty(), "positive control: Latchkey published events");
    haystack.push_str(&serde_json::to_string(&evs).unwrap());
    haystack.push_str(&serde_json::to_string(&jobs_of(&t, "acme").await).unwrap());
    assert!(haystack.contains("acme"), "positive control: the activation's name is in what was collected");
    for k in keys {
        assert!(!haystack.contains(k), "a secret value reached an event, a status or a Job spec");
    }
    op.assert_no_leaks("globex", &keys);
}
