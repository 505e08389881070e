//! The operator is SIGKILLed at random moments while tenants activate (API keys) and OAuth tokens refresh, and
//! restarted: every activation converges, no run is doubled, nothing of a deleted activation stays, and no
//! refresh token is lost without the activation saying so.
//!
//! CI runs a short burst; `make faults` sets `LATCHKEY_FAULTS_ACTIVATIONS`, `LATCHKEY_FAULTS_OAUTH` and
//! `LATCHKEY_FAULTS_KILLS` for the long one. Figures go to `target/faults/parts/`.
mod fault_support;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use fault_support::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
use rand::Rng;
use serde_json::json;
use support::oauth_server::{Login, OAuthClient, OAuthServer, OAuthServerConfig, authorize_without_browser, fingerprint};
use support::operator::Operator;
use support::{bed, namespace, wait_for_value};

/// OAuth connection `idp-sync` in `ns` on `server`, with the organisation's app Secret.
async fn oauth_connection(client: &Client, ns: &str, server: &OAuthServer) {
    let app: Secret = serde_json::from_value(
        json!({"metadata": {"name": "oauth-app"}, "stringData": {"client_id": "app", "client_secret": "app-secret"}}),
    )
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &app).await.unwrap();
    let connector: Connector = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": "idp"},
        "spec": {"displayName": "Test Provider", "baseUrl": server.issuer(), "authMethods": [{"name": "oauth", "oauth2": {
            "flow": "AuthorizationCode", "authorizationUrl": server.authorize_url(), "tokenUrl": server.token_url(),
            "revocationUrl": server.revocation_url(), "scopes": ["read"], "clientSecretRef": {"name": "oauth-app"}}}]}
    }))
    .unwrap();
    Api::<Connector>::namespaced(client.clone(), ns).create(&PostParams::default(), &connector).await.unwrap();
    let ec: EmbeddedConnection = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "idp-sync"},
        "spec": {"connectorRef": {"name": "idp"}, "authMethod": "oauth", "allowedReturnUrls": ["https://app.example.com/"]}
    }))
    .unwrap();
    Api::<EmbeddedConnection>::namespaced(client.clone(), ns).create(&PostParams::default(), &ec).await.unwrap();
}

/// Creates an OAuth activation and walks its user through consent and the operator's callback.
async fn connect_oauth(client: &Client, ns: &str, name: &str, callback: &str) {
    let api: Api<UserActivation> = Api::namespaced(client.clone(), ns);
    let ua: UserActivation =
        serde_json::from_value(json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": name},
        "spec": {"connectionRef": {"name": "idp-sync"}, "user": {"id": name}, "returnUrl": "https://app.example.com/done"}}))
        .unwrap();
    api.create(&PostParams::default(), &ua).await.unwrap();
    let url = wait_for_value("status.connectUrl", Duration::from_secs(30), || async {
        api.get(name).await.map_err(|e| e.to_string())?.status.and_then(|s| s.connect_url).ok_or_else(|| "no connectUrl yet".to_string())
    })
    .await;
    let redirect = authorize_without_browser(&url, callback, &Login::default()).await.expect("consent");
    let res = http().get(redirect.url.to_string()).send().await.unwrap();
    assert_eq!(res.status(), 302, "callback for {name}: {}", res.text().await.unwrap_or_default());
}

#[tokio::test]
async fn operator_killed_at_random_moments_loses_and_doubles_nothing() {
    let n_keys = figure("LATCHKEY_FAULTS_ACTIVATIONS", 24);
    let n_oauth = figure("LATCHKEY_FAULTS_OAUTH", 3);
    let kills = figure("LATCHKEY_FAULTS_KILLS", 4);
    let bed = bed().await;
    let client = bed.client();
    ensure_crds(&client).await;
    let p = provider().await;
    let integrations = namespace(&bed, "faults-kill").await;
    let tenants = [namespace(&bed, "faults-kill-a").await, namespace(&bed, "faults-kill-b").await, namespace(&bed, "faults-kill-c").await];
    api_key_connection(&client, integrations.name(), &p.url, true).await;
    for t in &tenants {
        admit(&client, t.name(), integrations.name()).await;
    }
    let mut watched = vec![integrations.name()];
    watched.extend(tenants.iter().map(|t| t.name()));
    let mut op = Operator::start(&bed, "faults_operator_kill", &watched, &[]).await;

    // OAuth users connect first (their consent needs the connect server up); 4-second tokens then refresh about
    // every 2 s, so the kills below land during refreshes.
    let callback = format!("{}/oauth/callback", op.connect_base_url);
    let server = OAuthServer::start(
        OAuthServerConfig::default().client(OAuthClient::confidential("app", "app-secret").redirect_uri(&callback)).access_ttl(4),
    );
    oauth_connection(&client, integrations.name(), &server).await;
    let oauth_names: Vec<String> = (0..n_oauth).map(|i| format!("oauth-{i}")).collect();
    for name in &oauth_names {
        connect_oauth(&client, integrations.name(), name, &callback).await;
    }

    // The burst: API-key activations spread over the tenants, created while the killer works.
    let keys: Vec<(String, String, String)> = (0..n_keys)
        .map(|i| {
            (
                tenants[i % tenants.len()].name().to_string(),
                format!("act-{i}"),
                format!("good-key-{i:04}-{:08x}", rand::rng().random::<u32>()),
            )
        })
        .collect();
    let burst = {
        let (client, keys, conn_ns) = (client.clone(), keys.clone(), integrations.name().to_string());
        tokio::spawn(async move {
            futures::stream::iter(keys)
                .for_each_concurrent(8, |(ns, name, key)| {
                    let (client, conn_ns) = (client.clone(), conn_ns.clone());
                    async move { activate(&client, &ns, &name, &format!("user-{name}"), &conn_ns, &key).await }
                })
                .await
        })
    };
    // Every fifth activation is deleted halfway through the kills, and one OAuth activation too.
    let deleted: Vec<(String, String)> = keys
        .iter()
        .step_by(5)
        .map(|(ns, n, _)| (ns.clone(), n.clone()))
        .chain(oauth_names.first().map(|n| (integrations.name().to_string(), n.clone())))
        .collect();
    let mut deletion = None;
    let t0 = Instant::now();
    for k in 0..kills {
        let pause = rand::rng().random_range(300..2500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        op.kill();
        if k == kills / 2 {
            let (client, deleted) = (client.clone(), deleted.clone());
            let created = deletion.take();
            assert!(created.is_none());
            deletion = Some(tokio::spawn(async move {
                for (ns, name) in deleted {
                    let api: Api<UserActivation> = Api::namespaced(client.clone(), &ns);
                    // The burst may not have created it yet.
                    for _ in 0..100 {
                        match api.delete(&name, &DeleteParams::default()).await {
                            Ok(_) => break,
                            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                        }
                    }
                }
            }));
        }
        let down = rand::rng().random_range(0..1000);
        tokio::time::sleep(Duration::from_millis(down)).await;
        op.restart().await;
    }
    burst.await.unwrap();
    if let Some(d) = deletion {
        d.await.unwrap();
    }
    let kill_phase = t0.elapsed();

    // Convergence: every remaining API-key activation Ready; every remaining OAuth one Active or, when a kill
    // fell between the provider's rotation and the Secret write, loudly NeedsReauthorization.
    let gone: BTreeSet<(String, String)> = deleted.iter().cloned().collect();
    let expected: Vec<(String, String)> = keys.iter().map(|(ns, n, _)| (ns.clone(), n.clone())).filter(|k| !gone.contains(k)).collect();
    let timeout = Duration::from_secs(60 + n_keys as u64 / 2);
    let mut converged;
    let start = Instant::now();
    let mut not_ready = Vec::new();
    loop {
        converged = 0;
        not_ready.clear();
        // One list per tenant namespace (a thousand GETs a round would load the bed more than the operator does).
        let mut listed: BTreeMap<(String, String), UserActivation> = BTreeMap::new();
        for t in &tenants {
            for ua in Api::<UserActivation>::namespaced(client.clone(), t.name()).list(&ListParams::default()).await.unwrap().items {
                listed.insert((t.name().to_string(), ua.name_any()), ua);
            }
        }
        for key in &expected {
            match listed.get(key) {
                Some(ua) if is_ready(ua) => converged += 1,
                Some(ua) => not_ready.push(format!("{}/{}: {:?}", key.0, key.1, condition(ua, "Ready"))),
                None => not_ready.push(format!("{}/{}: missing", key.0, key.1)),
            }
        }
        if not_ready.is_empty() || start.elapsed() > timeout {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let oauth_api: Api<UserActivation> = Api::namespaced(client.clone(), integrations.name());
    let mut oauth_phase = BTreeMap::new();
    let live_oauth: Vec<&String> = oauth_names.iter().skip(1).collect();
    let start = Instant::now();
    loop {
        oauth_phase.clear();
        for name in &live_oauth {
            let ua = oauth_api.get(name).await.unwrap();
            oauth_phase.insert(name.to_string(), ua.status.and_then(|s| s.phase).map(|p| format!("{p:?}")).unwrap_or_default());
        }
        if oauth_phase.values().all(|p| p == "Active" || p == "NeedsReauthorization") || start.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut loud_losses = oauth_phase.values().filter(|p| *p == "NeedsReauthorization").count();
    let mut oauth_converged = oauth_phase.values().filter(|p| *p == "Active").count();

    // Silent losses: an Active activation whose stored refresh token the provider has already consumed or revoked.
    let tokens = server.tokens_json().await;
    let mut silent_losses = Vec::new();
    for (name, phase) in &oauth_phase {
        if phase != "Active" {
            continue;
        }
        let secret =
            Api::<Secret>::namespaced(client.clone(), integrations.name()).get(&format!("{name}-idp-sync-credentials")).await.unwrap();
        let rt = secret
            .data
            .as_ref()
            .and_then(|d| d.get("refresh_token"))
            .map(|b| String::from_utf8_lossy(&b.0).to_string())
            .unwrap_or_default();
        let t = &tokens[fingerprint(&rt)];
        // A rotation in flight consumes it a moment before the Secret is rewritten, and a loss the operator has
        // just detected shows a moment later: watch for a while (several refresh periods of the 4-second tokens).
        if t.is_null() || !t["consumed_at"].is_null() || !t["revoked_at"].is_null() {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), integrations.name());
            let mut verdict = "silent";
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                let again = secrets.get(&format!("{name}-idp-sync-credentials")).await.unwrap();
                let rt2 = again.data.as_ref().and_then(|d| d.get("refresh_token")).map(|b| String::from_utf8_lossy(&b.0).to_string());
                if rt2.as_deref() != Some(rt.as_str()) {
                    verdict = "rotated";
                    break;
                }
                let p = oauth_api.get(name).await.unwrap().status.and_then(|s| s.phase).map(|p| format!("{p:?}")).unwrap_or_default();
                if p == "NeedsReauthorization" {
                    verdict = "loud";
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            match verdict {
                "silent" => silent_losses.push(name.clone()),
                "loud" => {
                    loud_losses += 1;
                    oauth_converged -= 1;
                }
                _ => {}
            }
        }
    }
    // Double refreshes: a refresh token presented twice (outside injected faults). Each loud loss explains one, and
    // so may the OAuth activation deleted during the kills (its loss is not looked for).
    let refreshes = server.refresh_events().await;
    let mut presented: BTreeMap<String, usize> = BTreeMap::new();
    for e in refreshes.iter().filter(|e| e.outcome != "injected") {
        if let Some(t) = &e.refresh_token {
            *presented.entry(t.fingerprint.clone()).or_default() += 1;
        }
    }
    let presented_twice = presented.values().filter(|n| **n > 1).count();

    // Jobs: one per activation and run key, one run key per activation (its credentials never changed).
    let mut duplicate_jobs = 0;
    let mut runs_per_activation: BTreeMap<String, usize> = BTreeMap::new();
    for t in &tenants {
        for ((uid, _key), n) in jobs_by_run(&client, t.name()).await {
            duplicate_jobs += n.saturating_sub(1);
            *runs_per_activation.entry(uid).or_default() += 1;
        }
    }
    duplicate_jobs += runs_per_activation.values().map(|n| n.saturating_sub(1)).sum::<usize>();

    // Orphans: Secrets the operator wrote for activations that no longer exist (garbage collection given 30 s).
    let mut orphaned = Vec::new();
    let start = Instant::now();
    loop {
        orphaned.clear();
        for ns in watched.iter() {
            let live: BTreeSet<String> = Api::<UserActivation>::namespaced(client.clone(), ns)
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .filter_map(|u| u.uid())
                .collect();
            for s in Api::<Secret>::namespaced(client.clone(), ns)
                .list(&ListParams::default().labels("app.kubernetes.io/managed-by=latchkey"))
                .await
                .unwrap()
                .items
            {
                let uid = s.labels().get("latchkey.dev/activation-uid").cloned().unwrap_or_default();
                if !live.contains(&uid) {
                    orphaned.push(format!("{ns}/{}", s.name_any()));
                }
            }
        }
        if orphaned.is_empty() || start.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut secrets: Vec<String> = keys.iter().map(|k| k.2.clone()).collect();
    secrets.push("app-secret".into());
    for name in &live_oauth {
        if let Ok(s) = Api::<Secret>::namespaced(client.clone(), integrations.name()).get(&format!("{name}-idp-sync-credentials")).await {
            for (k, v) in s.data.unwrap_or_default() {
                if k == "access_token" || k == "refresh_token" {
                    secrets.push(String::from_utf8_lossy(&v.0).to_string());
                }
            }
        }
    }
    secrets.retain(|s| s.len() >= 12 && s != "Bearer");
    let leaks = leak_scan(&client, &watched, &[op.log_path.as_path()], "act-1", &secrets).await;
    register_secrets("faults_operator_kill", "act-1", &secrets);
    let panics = op.log().lines().filter(|l| l.contains("panicked")).count();

    let figures = json!({
        "kills": kills,
        "kill_phase_s": kill_phase.as_secs(),
        "activations": n_keys + n_oauth,
        "converged": converged + oauth_converged,
        "expected_to_converge": expected.len() + live_oauth.len(),
        "duplicate_jobs": duplicate_jobs,
        "lost_refresh_tokens": loud_losses + silent_losses.len(),
        "lost_refresh_tokens_silent": silent_losses.len(),
        "refresh_tokens_presented_twice": presented_twice,
        "refreshes": refreshes.len(),
        "orphaned_secrets": orphaned.len(),
        "secret_leaks": leaks.places.len(),
        "panics": panics,
    });
    record("faults_operator_kill", figures.clone());
    eprintln!("faults_operator_kill: {figures}");
    assert!(not_ready.is_empty(), "not converged after the kills: {not_ready:?}");
    assert_eq!(duplicate_jobs, 0, "duplicate Jobs: {runs_per_activation:?}");
    assert!(orphaned.is_empty(), "Secrets left for deleted activations: {orphaned:?}");
    assert!(silent_losses.is_empty(), "Active with a consumed refresh token (a silent loss): {silent_losses:?}");
    let deleted_oauth = usize::from(n_oauth > 0);
    assert!(
        presented_twice <= loud_losses + deleted_oauth,
        "a refresh token was used twice {presented_twice} times, {loud_losses} activations say so ({deleted_oauth} deleted)"
    );
    assert!(leaks.places.is_empty(), "secret values found: {:?}", leaks.places);
    assert_eq!(panics, 0, "the operator panicked: {}", op.log_path.display());
}
