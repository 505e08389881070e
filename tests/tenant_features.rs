//! What multi-tenant integrations need beyond one credential: variables checked against a schema, and Jobs that
//! use several of one user's connections.
mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use latchkey::api::{EmbeddedConnection, UserActivation};
use serde_json::json;
use support::fixtures::*;
use support::operator::Operator;
use support::{bed, wait_for, wait_for_value};

fn env_of(job: &k8s_openapi::api::batch::v1::Job) -> Vec<k8s_openapi::api::core::v1::EnvVar> {
    job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].env.clone().unwrap_or_default()
}

#[tokio::test]
async fn variables_are_checked_against_the_schema_and_defaults_reach_the_job() {
    let p = provider().await;
    let schema = json!({"type": "object", "required": ["org"], "properties": {
        "org": {"type": "string"}, "limit": {"type": "integer", "maximum": 100, "default": 25}}});
    let f = fixture_with("variables", &p.url, busybox_job(), json!({"variablesSchema": schema})).await;
    let t = f.tenant("tenant", true).await;
    let _op = Operator::start(&bed().await, "variables", &[f.ns(), t.name()], &[]).await;
    put_source(&t, "acme-key", "good-key-vars-1").await;
    let ua: UserActivation = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "acme"},
        "spec": {"connectionRef": {"name": "acme-sync", "namespace": f.ns()}, "user": {"id": "u1"},
                 "credentialsSecretRef": {"name": "acme-key"}, "variables": {"org": "acme", "limit": 500}}
    }))
    .unwrap();
    let api = t.api::<UserActivation>();
    api.create(&PostParams::default(), &ua).await.unwrap();
    let (reason, message) = wait_condition(&api, "acme", "Ready", "False").await;
    assert_eq!(reason, "InvalidVariables");
    assert!(message.contains("/limit"), "the message names the path: {message}");
    assert!(jobs_of(&t, "acme").await.is_empty(), "no Job with invalid variables");

    // Fix the variables (drop limit): Ready, and the Job gets the schema's default.
    let patch = json!({"spec": {"variables": {"org": "acme", "limit": null}}});
    api.patch("acme", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_condition(&api, "acme", "Ready", "True").await;
    let jobs = wait_for_value("the first Job", T, || async {
        let j = jobs_of(&t, "acme").await;
        if j.is_empty() { Err("no Job yet".to_string()) } else { Ok(j) }
    })
    .await;
    let env = env_of(&jobs[0]);
    let limit = env.iter().find(|e| e.name == "LATCHKEY_VAR_LIMIT").and_then(|e| e.value.clone());
    assert_eq!(limit.as_deref(), Some("25"));
    let org = env.iter().find(|e| e.name == "LATCHKEY_VAR_ORG").and_then(|e| e.value.clone());
    assert_eq!(org.as_deref(), Some("acme"));
}

#[tokio::test]
async fn a_job_that_needs_two_connections_waits_for_both_and_gets_both() {
    let p = provider().await;
    let job = json!({
        "template": {"spec": {"containers": [{"name": "sync", "image": "busybox"}]}},
        "connections": [{"connectionRef": {"name": "crm-sync"}, "as": "CRM"}]
    });
    let f = fixture("two-connections", &p.url, job).await;
    // A second connection of the same connector, without a Job of its own.
    let crm: EmbeddedConnection = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection",
        "metadata": {"name": "crm-sync", "namespace": f.ns()},
        "spec": {"connectorRef": {"name": "acme-api"}, "authMethod": "token",
                 "allowedNamespaces": {"matchLabels": {f.tenant_label.0.clone(): f.tenant_label.1.clone()}}}
    }))
    .unwrap();
    f.integrations.api::<EmbeddedConnection>().create(&PostParams::default(), &crm).await.unwrap();
    let t = f.tenant("tenant", true).await;
    let other = f.tenant("other", true).await;
    let _op = Operator::start(&bed().await, "two_connections", &[f.ns(), t.name(), other.name()], &[]).await;

    f.activate(&t, "acme", "user-1", "good-key-main-1").await;
    let api = t.api::<UserActivation>();
    let (reason, message) = wait_condition(&api, "acme", "ConnectionsReady", "False").await;
    assert_eq!(reason, "WaitingForConnections");
    assert!(message.contains("crm-sync"), "{message}");
    assert!(jobs_of(&t, "acme").await.is_empty(), "no Job until every connection is active");

    // Another tenant activates the CRM connection (user ids are unique per connection, across namespaces).
    put_source(&other, "crm-key", "good-key-other-crm").await;
    let other_crm: UserActivation = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "crm"},
        "spec": {"connectionRef": {"name": "crm-sync", "namespace": f.ns()}, "user": {"id": "user-2"}, "credentialsSecretRef": {"name": "crm-key"}}
    }))
    .unwrap();
    other.api::<UserActivation>().create(&PostParams::default(), &other_crm).await.unwrap();
    wait_condition(&other.api::<UserActivation>(), "crm", "Ready", "True").await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(jobs_of(&t, "acme").await.is_empty(), "another user's activation must not satisfy this user");

    // The same user activates the CRM connection in its own namespace: the Job runs with both.
    put_source(&t, "crm-key", "good-key-crm-1").await;
    let crm_ua: UserActivation = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "crm"},
        "spec": {"connectionRef": {"name": "crm-sync", "namespace": f.ns()}, "user": {"id": "user-1"}, "credentialsSecretRef": {"name": "crm-key"}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &crm_ua).await.unwrap();
    wait_condition(&api, "acme", "ConnectionsReady", "True").await;
    let jobs = wait_for_value("the Job with both connections", T, || async {
        let j = jobs_of(&t, "acme").await;
        if j.is_empty() { Err("no Job yet".to_string()) } else { Ok(j) }
    })
    .await;
    let env = env_of(&jobs[0]);
    let crm_ref = env
        .iter()
        .find(|e| e.name == "LATCHKEY_CRM_API_KEY")
        .and_then(|e| e.value_from.as_ref()?.secret_key_ref.clone())
        .expect("LATCHKEY_CRM_API_KEY");
    let own_ref = env
        .iter()
        .find(|e| e.name == "LATCHKEY_API_KEY")
        .and_then(|e| e.value_from.as_ref()?.secret_key_ref.clone())
        .expect("LATCHKEY_API_KEY");
    assert_eq!(own_ref.name, "acme-acme-sync-credentials");
    assert_eq!(crm_ref.name, "crm-crm-sync-credentials");
    let crm_secret = t.api::<Secret>().get(&crm_ref.name).await.unwrap();
    assert_eq!(decoded(&crm_secret, "api_key").as_deref(), Some("good-key-crm-1"), "the user's own CRM key, not the other tenant's");
    let pod = jobs[0].spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert!(pod.containers[0].volume_mounts.iter().flatten().any(|m| m.mount_path == "/var/run/latchkey/crm"));
    wait_for("nothing else was created for the other tenant", T, || async { jobs_of(&other, "acme").await.is_empty() }).await;
    let _ = Api::<Secret>::namespaced(f.client.clone(), other.name());
}

#[tokio::test]
async fn the_run_now_annotation_starts_one_run() {
    let p = provider().await;
    let f = fixture("run-now", &p.url, busybox_job()).await;
    let t = f.tenant("tenant", true).await;
    let _op = Operator::start(&bed().await, "run_now", &[f.ns(), t.name()], &[]).await;
    f.activate(&t, "acme", "u1", "good-key-run-now").await;
    let api = t.api::<UserActivation>();
    wait_condition(&api, "acme", "Ready", "True").await;
    wait_for_value("the first run to finish", T, || async {
        match api.get("acme").await.map_err(|e| e.to_string())?.status.and_then(|s| s.last_run).and_then(|r| r.succeeded) {
            Some(true) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let patch = json!({"metadata": {"annotations": {"latchkey.dev/run-now": "2026-11-26T02:30"}}});
    api.patch("acme", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_for("a second Job", T, || async { jobs_of(&t, "acme").await.len() == 2 }).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(jobs_of(&t, "acme").await.len(), 2, "one run per annotation value");
    let manual = jobs_of(&t, "acme")
        .await
        .into_iter()
        .filter(|j| j.annotations().get("latchkey.dev/run-key").is_some_and(|k| k.starts_with("manual-")))
        .count();
    assert_eq!(manual, 1);
}

#[tokio::test]
async fn latchkey_users_lists_every_user_of_a_connection_also_as_a_kubectl_plugin() {
    let bed = bed().await;
    let p = provider().await;
    let f = fixture("users-cli", &p.url, serde_json::Value::Null).await;
    let t = f.tenant("tenant", true).await;
    let _op = Operator::start(&bed, "users_cli", &[f.ns(), t.name()], &[]).await;
    f.activate(&t, "acme", "acme-42", "good-key-users-1").await;
    let waiting: UserActivation = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "globex"},
        "spec": {"connectionRef": {"name": "acme-sync", "namespace": f.ns()}, "user": {"id": "globex-7"}}
    }))
    .unwrap();
    let api = t.api::<UserActivation>();
    api.create(&PostParams::default(), &waiting).await.unwrap();
    wait_condition(&api, "acme", "Ready", "True").await;
    let link = wait_for_value("globex's connect link", T, || async {
        api.get("globex").await.map_err(|e| e.to_string())?.status.and_then(|s| s.connect_url).ok_or_else(|| "no link yet".to_string())
    })
    .await;
    // As a kubectl plugin: `kubectl latchkey users` runs `kubectl-latchkey users` from PATH.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_latchkey"), dir.path().join("kubectl-latchkey")).unwrap();
    let cache_bin = std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/latchkey/bin");
    let path = format!("{}:{}:{}", dir.path().display(), cache_bin.display(), std::env::var("PATH").unwrap_or_default());
    for cmd in [vec!["kubectl-latchkey"], vec!["kubectl", "latchkey"]] {
        let out = std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .args(["users", "--connection", "acme-sync", "-n", f.ns()])
            .env("PATH", &path)
            .env("KUBECONFIG", &bed.kubeconfig)
            .output()
            .expect("run the users command");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        let acme = text.lines().find(|l| l.contains("acme-42")).unwrap_or_else(|| panic!("acme-42 missing from:\n{text}"));
        assert!(acme.contains("Active") && !acme.contains("http"), "{acme}");
        let globex = text.lines().find(|l| l.contains("globex-7")).unwrap_or_else(|| panic!("globex-7 missing from:\n{text}"));
        assert!(globex.contains("AwaitingUser") && globex.ends_with(&link), "{globex}");
    }
}
