//! Tenants are isolated: an activation uses only a Secret of its own namespace, a connection admits only the
//! namespaces it allows, a tenant's Job mounts only its tenant's Secret, and a user who is admin of tenant A
//! cannot reach tenant B's credentials through anything Latchkey creates (Secrets, Jobs, activation status,
//! Events, connect links). No secret value shows in logs, events, conditions or status.
mod fault_support;
mod support;

use std::time::Duration;

use fault_support::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Secret};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
use serde_json::json;
use support::operator::Operator;
use support::{bed, namespace, wait_for_value};

const T: Duration = Duration::from_secs(30);

async fn ready(client: &Client, ns: &str, name: &str) -> UserActivation {
    let api: Api<UserActivation> = Api::namespaced(client.clone(), ns);
    wait_for_value(&format!("{ns}/{name} Ready"), T, || async {
        let ua = api.get(name).await.map_err(|e| e.to_string())?;
        if is_ready(&ua) { Ok(ua) } else { Err(format!("{:?}", condition(&ua, "Ready"))) }
    })
    .await
}

async fn reason(client: &Client, ns: &str, name: &str, want: &str) -> String {
    let api: Api<UserActivation> = Api::namespaced(client.clone(), ns);
    wait_for_value(&format!("{ns}/{name} Ready=False {want}"), T, || async {
        let ua = api.get(name).await.map_err(|e| e.to_string())?;
        match condition(&ua, "Ready") {
            Some((s, r, m)) if s == "False" && r == want => Ok(m),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// Whether a request was refused by RBAC (403).
fn forbidden<T>(r: Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(e)) if e.code == 403)
}

#[tokio::test]
async fn a_tenant_admin_cannot_reach_another_tenants_credentials_through_latchkey() {
    let bed = bed().await;
    let client = bed.client();
    ensure_crds(&client).await;
    let p = provider().await;
    let integrations = namespace(&bed, "iso-integrations").await;
    let (a, b, outsider) =
        (namespace(&bed, "iso-tenant-a").await, namespace(&bed, "iso-tenant-b").await, namespace(&bed, "iso-outsider").await);
    let i = integrations.name();
    api_key_connection(&client, i, &p.url, true).await;
    admit(&client, a.name(), i).await;
    admit(&client, b.name(), i).await;
    let op = Operator::start(&bed, "isolation", &[i, a.name(), b.name(), outsider.name()], &[]).await;

    let (key_a, key_b, key_out) = ("good-key-tenant-a-7c1f9e", "good-key-tenant-b-52d0aa", "good-key-outsider-e91b37");
    activate(&client, a.name(), "acme", "tenant-a", i, key_a).await;
    activate(&client, b.name(), "acme", "tenant-b", i, key_b).await;
    activate(&client, outsider.name(), "acme", "outsider", i, key_out).await;
    // B also waits for a user: its status holds a connect link (a bearer link).
    let waiting: UserActivation =
        serde_json::from_value(json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "waiting"},
        "spec": {"connectionRef": {"name": "acme-sync", "namespace": i}, "user": {"id": "tenant-b-2"}}}))
        .unwrap();
    b.api::<UserActivation>().create(&PostParams::default(), &waiting).await.unwrap();
    // B keeps a Secret that A's activation names: A must not get it.
    put_source(&client, b.name(), "b-only-key", "good-key-b-only-0f3a11").await;
    let steal: UserActivation = serde_json::from_value(json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "steal"},
        "spec": {"connectionRef": {"name": "acme-sync", "namespace": i}, "user": {"id": "tenant-a-steal"}, "credentialsSecretRef": {"name": "b-only-key"}}}))
    .unwrap();
    a.api::<UserActivation>().create(&PostParams::default(), &steal).await.unwrap();

    let ua_a = ready(&client, a.name(), "acme").await;
    let ua_b = ready(&client, b.name(), "acme").await;
    let secret_a = ua_a.status.as_ref().and_then(|s| s.secret_name.clone()).unwrap();
    let secret_b = ua_b.status.as_ref().and_then(|s| s.secret_name.clone()).unwrap();
    let link_b = wait_for_value("B's connect link", T, || async {
        b.api::<UserActivation>()
            .get("waiting")
            .await
            .map_err(|e| e.to_string())?
            .status
            .and_then(|s| s.connect_url)
            .ok_or_else(|| "none yet".to_string())
    })
    .await;
    let token_b = link_b.rsplit('/').next().unwrap().to_string();

    // Only the namespaces the connection allows; only a Secret of the activation's own namespace.
    let m = reason(&client, outsider.name(), "acme", "NamespaceNotAllowed").await;
    assert!(m.contains("allowedNamespaces"), "{m}");
    let m = reason(&client, a.name(), "steal", "SourceSecretNotFound").await;
    assert!(m.contains(&format!("{}/b-only-key", a.name())), "the message names A's namespace: {m}");
    let managed = ListParams::default().labels("app.kubernetes.io/managed-by=latchkey");
    assert!(outsider.api::<Secret>().list(&managed).await.unwrap().items.is_empty(), "nothing written for a namespace not allowed");
    assert!(a.api::<Secret>().get_opt("steal-acme-sync-credentials").await.unwrap().is_none());

    // Each tenant's Job mounts its own Secret and nothing else.
    for (t, own) in [(&a, &secret_a), (&b, &secret_b)] {
        let jobs = wait_for_value("the tenant's Job", T, || async {
            let j =
                t.api::<Job>().list(&ListParams::default().labels("latchkey.dev/activation=acme")).await.map_err(|e| e.to_string())?.items;
            if j.is_empty() { Err("no Job yet".to_string()) } else { Ok(j) }
        })
        .await;
        for job in jobs {
            let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
            let mut names: Vec<String> = pod.volumes.iter().flatten().filter_map(|v| v.secret.as_ref()?.secret_name.clone()).collect();
            for c in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
                names.extend(c.env.iter().flatten().filter_map(|e| Some(e.value_from.as_ref()?.secret_key_ref.as_ref()?.name.clone())));
                names.extend(c.env_from.iter().flatten().filter_map(|e| Some(e.secret_ref.as_ref()?.name.clone())));
            }
            assert!(!names.is_empty() && names.iter().all(|n| n == own), "Job {} mounts {names:?}, only {own} allowed", job.name_any());
            let text = serde_json::to_string(&job).unwrap();
            assert!(!text.contains(key_a) && !text.contains(key_b), "a key value inside Job {}", job.name_any());
            assert_eq!(pod.automount_service_account_token, Some(false));
        }
    }

    // A pre-squatted Secret under the name the operator would use is never overwritten.
    let squat: Secret = serde_json::from_value(json!({"metadata": {"name": "squat-acme-sync-credentials", "labels": {"app.kubernetes.io/managed-by": "latchkey"}}, "stringData": {"api_key": "attacker-chosen-value"}})).unwrap();
    a.api::<Secret>().create(&PostParams::default(), &squat).await.unwrap();
    activate(&client, a.name(), "squat", "tenant-a-squat", i, "good-key-squat-5a5a5a").await;
    reason(&client, a.name(), "squat", "SecretConflict").await;
    let after = a.api::<Secret>().get("squat-acme-sync-credentials").await.unwrap();
    assert_eq!(after.data.unwrap()["api_key"].0, b"attacker-chosen-value", "a Secret the activation does not own is left as it was");

    // The unprivileged user becomes admin of tenant A (ClusterRole admin bound in A only).
    let rb: RoleBinding = serde_json::from_value(json!({"metadata": {"name": "tenant-a-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": support::UNPRIVILEGED_USER}]}))
    .unwrap();
    a.api::<RoleBinding>().create(&PostParams::default(), &rb).await.unwrap();
    let user = bed.unprivileged_client();
    let ua_api = |ns: &str| Api::<UserActivation>::namespaced(user.clone(), ns);
    // Positive control: the rights work in A (RBAC caches need a moment).
    wait_for_value("tenant A's admin can read A's Secrets", T, || async {
        Api::<Secret>::namespaced(user.clone(), a.name()).get(&secret_a).await.map_err(|e| e.to_string())
    })
    .await;

    let lp = ListParams::default();
    let mut reached: Vec<&str> = Vec::new();
    let mut check = |what: &'static str, refused: bool| {
        if !refused {
            reached.push(what);
        }
    };
    check("get B's owned Secret", forbidden(Api::<Secret>::namespaced(user.clone(), b.name()).get(&secret_b).await));
    check("get B's source Secret", forbidden(Api::<Secret>::namespaced(user.clone(), b.name()).get("acme-key").await));
    check("list B's Secrets", forbidden(Api::<Secret>::namespaced(user.clone(), b.name()).list(&lp).await));
    check("list Secrets cluster-wide", forbidden(Api::<Secret>::all(user.clone()).list(&lp).await));
    check("get B's activation (status, connect link)", forbidden(ua_api(b.name()).get("waiting").await));
    check("list activations cluster-wide", forbidden(Api::<UserActivation>::all(user.clone()).list(&lp).await));
    check("list B's Jobs (env, volumes)", forbidden(Api::<Job>::namespaced(user.clone(), b.name()).list(&lp).await));
    check("list Jobs cluster-wide", forbidden(Api::<Job>::all(user.clone()).list(&lp).await));
    check("list B's Pods", forbidden(Api::<Pod>::namespaced(user.clone(), b.name()).list(&lp).await));
    check("list B's Events", forbidden(Api::<Event>::namespaced(user.clone(), b.name()).list(&lp).await));
    check("list Events cluster-wide", forbidden(Api::<Event>::all(user.clone()).list(&lp).await));
    check("get the connection", forbidden(Api::<EmbeddedConnection>::namespaced(user.clone(), i).get("acme-sync").await));
    check("get the connector", forbidden(Api::<Connector>::namespaced(user.clone(), i).get("acme-api").await));
    check("get the operator's signing key", forbidden(Api::<Secret>::namespaced(user.clone(), i).get("latchkey-signing-key").await));
    // Everything A's admin can read in A: no B key, no B link, no signing key.
    let mut texts = Vec::new();
    for s in Api::<Secret>::namespaced(user.clone(), a.name()).list(&lp).await.unwrap().items {
        texts.push((format!("Secret {}", s.name_any()), serde_json::to_string(&s).unwrap()));
    }
    // ClusterRole admin grants nothing on latchkey.dev unless the chart aggregates its roles into it: read A's
    // activations when the user can, as the admin client otherwise (what an aggregated role would show).
    let a_activations = match ua_api(a.name()).list(&lp).await {
        Ok(l) => l.items,
        Err(_) => a.api::<UserActivation>().list(&lp).await.unwrap().items,
    };
    for u in a_activations {
        texts.push((format!("UserActivation {}", u.name_any()), serde_json::to_string(&u).unwrap()));
    }
    for j in Api::<Job>::namespaced(user.clone(), a.name()).list(&lp).await.unwrap().items {
        texts.push((format!("Job {}", j.name_any()), serde_json::to_string(&j).unwrap()));
    }
    for e in Api::<Event>::namespaced(user.clone(), a.name()).list(&lp).await.unwrap().items {
        texts.push((format!("Event {}", e.name_any()), serde_json::to_string(&e).unwrap()));
    }
    for c in Api::<ConfigMap>::namespaced(user.clone(), a.name()).list(&lp).await.unwrap().items {
        texts.push((format!("ConfigMap {}", c.name_any()), serde_json::to_string(&c).unwrap()));
    }
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for (what, text) in &texts {
        for needle in [key_b.to_string(), b64(key_b), "good-key-b-only-0f3a11".into(), b64("good-key-b-only-0f3a11"), token_b.clone()] {
            if text.contains(&needle) {
                reached.push(Box::leak(format!("tenant B's credential or link in A's {what}").into_boxed_str()));
            }
        }
    }
    assert!(texts.iter().any(|(_, t)| t.contains(&b64(key_a))), "positive control: A's admin sees A's own key");

    let secrets: Vec<String> = [key_a, key_b, key_out, "good-key-b-only-0f3a11", "good-key-squat-5a5a5a", "attacker-chosen-value"]
        .iter()
        .map(|s| s.to_string())
        .chain([token_b.clone()])
        .collect();
    let scanned = [i, a.name(), b.name(), outsider.name()];
    // The connect link is meant for B's status: leave that one place out of the scan for it.
    let mut leaks = leak_scan(&client, &scanned, &[op.log_path.as_path()], "acme", &secrets[..secrets.len() - 1]).await;
    let log = op.log();
    if log.contains(&token_b) {
        leaks.places.push("B's connect link in the operator log".into());
    }
    register_secrets("isolation", "acme", &secrets[..secrets.len() - 1]);
    record(
        "isolation",
        json!({"isolation_checks": 14 + texts.len(), "isolation_breaches": reached.len(), "breaches": reached, "secret_leaks": leaks.places.len()}),
    );
    assert!(reached.is_empty(), "tenant A's admin reached: {reached:?}");
    assert!(leaks.places.is_empty(), "{:?}", leaks.places);
}
