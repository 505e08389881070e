//! OAuth under faults: the provider hangs for a while (SIGSTOP) — refreshes back off within the bound the
//! backoff settings give, conditions stay honest, the activation recovers or says it needs the user; and two
//! replicas with leader election while the leader is SIGKILLed again and again — never two refreshes of one grant
//! at once, never a refresh token presented twice unless a SIGKILL landed between the provider's answer and the
//! Secret write (that grant is then lost loudly, NeedsReauthorization, and counted).
mod fault_support;
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fault_support::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
use rand::Rng;
use serde_json::json;
use support::oauth_server::{Login, OAuthClient, OAuthServer, OAuthServerConfig, authorize_without_browser};
use support::operator::Operator;
use support::{bed, namespace, wait_for_value};

async fn phase(api: &Api<UserActivation>, name: &str) -> (String, Option<(String, String, String)>, UserActivation) {
    let ua = api.get(name).await.unwrap();
    let p = ua.status.as_ref().and_then(|s| s.phase).map(|p| format!("{p:?}")).unwrap_or_default();
    (p, condition(&ua, "Ready"), ua)
}

#[tokio::test]
async fn a_hung_provider_gets_bounded_retries_honest_conditions_and_recovery() {
    let outage = Duration::from_secs(figure("LATCHKEY_FAULTS_OUTAGE_S", 45) as u64);
    let bed = bed().await;
    let client = bed.client();
    ensure_crds(&client).await;
    let ns = namespace(&bed, "faults-outage").await;
    let n = ns.name().to_string();
    let op = Operator::start(&bed, "faults_oauth_outage", &[&n], &[]).await;
    let callback = format!("{}/oauth/callback", op.connect_base_url);
    // 16-second tokens: the refresh is due 8 s after the grant (margin = lifetime / 2).
    let server = OAuthServer::start(
        OAuthServerConfig::default().client(OAuthClient::confidential("app", "app-secret").redirect_uri(&callback)).access_ttl(16),
    );
    let upstream = server.token_url().trim_start_matches("http://").split('/').next().unwrap().to_string();
    let path = &server.token_url()[server.token_url().find(&upstream).unwrap() + upstream.len()..];
    let proxy = counting_proxy(upstream, b"grant_type=refresh_token").await;
    oauth_connection(&client, &n, &server, &format!("http://{}{path}", proxy.addr)).await;
    connect(&client, &n, "acme").await;
    let api: Api<UserActivation> = ns.api();
    wait_for_value("Active", Duration::from_secs(30), || async {
        let (p, _, _) = phase(&api, "acme").await;
        if p == "Active" { Ok(()) } else { Err(p) }
    })
    .await;

    // The provider hangs: connections are accepted and never answered.
    server.suspend();
    let t0 = Instant::now();
    let before = proxy.count.load(std::sync::atomic::Ordering::SeqCst);
    let mut dishonest = Vec::new();
    let mut seen_reasons = BTreeMap::new();
    while t0.elapsed() < outage {
        let (p, ready, ua) = phase(&api, "acme").await;
        let expired = ua.status.as_ref().and_then(|s| s.expires_at).is_some_and(|e| e < chrono::Utc::now() - chrono::Duration::seconds(2));
        if let Some((s, r, _)) = &ready {
            *seen_reasons.entry(format!("{p} Ready={s} {r}")).or_insert(0) += 1;
            if expired && s == "True" {
                dishonest
                    .push(format!("Ready=True {r} with an access token expired at {:?}", ua.status.as_ref().and_then(|s| s.expires_at)));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let during = proxy.count.load(std::sync::atomic::Ordering::SeqCst) - before;
    // The first refresh is due ~8 s into the grant; each later one waits 1 s, 2 s, 4 s... (jitter only adds).
    let bound = backoff_bound(outage, 2);
    server.resume();

    // Recovery: a successful refresh (Active again) — or, if the provider rotated a token for a request the
    // operator had already given up on, a loud NeedsReauthorization with a fresh link. Never silent.
    let recovered = wait_for_value("recovery after the outage", Duration::from_secs(90), || async {
        let (p, ready, ua) = phase(&api, "acme").await;
        let ok = ua.status.as_ref().map(|s| s.consecutive_failures).unwrap_or(99) == 0;
        match p.as_str() {
            "Active" if ok && ready.as_ref().is_some_and(|r| r.0 == "True") => Ok(p),
            "NeedsReauthorization" if ua.status.as_ref().and_then(|s| s.connect_url.as_ref()).is_some() => Ok(p),
            _ => Err(format!("{p} {ready:?}")),
        }
    })
    .await;
    let secrets: Vec<String> = Api::<Secret>::namespaced(client.clone(), &n)
        .get("acme-sync-credentials")
        .await
        .map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| k == "access_token" || k == "refresh_token")
                .map(|(_, v)| String::from_utf8_lossy(&v.0).to_string())
                .collect()
        })
        .unwrap_or_default();
    let leaks = leak_scan(&client, &[&n], &[op.log_path.as_path()], "acme", &[secrets.clone(), vec!["app-secret".into()]].concat()).await;
    register_secrets("faults_oauth_outage", "acme", &secrets);
    let figures = json!({
        "outage_s": outage.as_secs(), "refresh_requests_during_outage": during, "refresh_request_bound": bound,
        "recovered_as": recovered, "lost_refresh_tokens": usize::from(recovered == "NeedsReauthorization"),
        "dishonest_conditions": dishonest.len(), "conditions_seen": seen_reasons, "secret_leaks": leaks.places.len(),
    });
    record("faults_oauth_outage", figures.clone());
    eprintln!("faults_oauth_outage: {figures}");
    assert!(during >= 1 && during <= bound, "{during} refresh requests in a {outage:?} outage, bound {bound}");
    // A refresh never waits past the access token's expiry: Ready is never True on an expired token.
    assert!(dishonest.is_empty(), "{dishonest:?}");
    assert!(leaks.places.is_empty(), "{:?}", leaks.places);
    assert!(recovered == "Active" || recovered == "NeedsReauthorization");
}

/// Whether this replica holds the Lease now: it said so after its last start.
fn leads(op: &Operator) -> bool {
    let log = op.log();
    match (log.rfind("acquired the Lease"), log.rfind("latchkey starting")) {
        (Some(a), Some(s)) => a > s,
        _ => false,
    }
}

#[tokio::test]
async fn killing_the_leader_again_and_again_never_refreshes_one_token_twice() {
    let kills = figure("LATCHKEY_FAULTS_LEADER_KILLS", 3);
    let n_users = figure("LATCHKEY_FAULTS_LEADER_USERS", 3);
    let bed = bed().await;
    let client = bed.client();
    ensure_crds(&client).await;
    let ns = namespace(&bed, "faults-leader").await;
    let n = ns.name().to_string();
    let args = ["--leader-election=true", "--lease-name=latchkey-faults"];
    let mut ops =
        [Operator::start(&bed, "faults_leader_1", &[&n], &args).await, Operator::start(&bed, "faults_leader_2", &[&n], &args).await];
    let mut config = OAuthServerConfig::default().access_ttl(4);
    let mut app = OAuthClient::confidential("app", "app-secret");
    for op in &ops {
        app = app.redirect_uri(&format!("{}/oauth/callback", op.connect_base_url));
    }
    config = config.client(app);
    let server = OAuthServer::start(config);
    oauth_connection(&client, &n, &server, server.token_url()).await;
    let names: Vec<String> = (0..n_users).map(|i| format!("user-{i}")).collect();
    for name in &names {
        connect(&client, &n, name).await;
    }

    let mut survived = 0;
    let mut performed = 0;
    let mut killed_at_ms: Vec<u64> = Vec::new();
    for _ in 0..kills {
        // Let a few refreshes happen under this leader, then kill it at a random moment.
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(2000..5000))).await;
        // Between a takeover and its log line there may be no visible leader yet: wait for one.
        let mut leader = None;
        for _ in 0..100 {
            leader = (0..2).find(|i| leads(&ops[*i]));
            if leader.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let Some(i) = leader else { continue };
        performed += 1;
        ops[i].kill();
        // After the process is gone (kill waits for it): nothing it sent can arrive later than this.
        killed_at_ms.push(chrono::Utc::now().timestamp_millis() as u64);
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..2000))).await;
        ops[i].restart().await;
        // A replica (the follower, or the restarted one if it wins the race) leads again once the Lease expires.
        let took_over = eventually(Duration::from_secs(40), || async { leads(&ops[0]) || leads(&ops[1]) }).await;
        if took_over {
            survived += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(6)).await;

    // The provider's own records: each refresh token presented once; per grant, no two refreshes overlapping.
    let refreshes: Vec<_> = server.refresh_events().await.into_iter().filter(|e| e.outcome != "injected").collect();
    // A refresh token presented twice is a double refresh unless a SIGKILL explains it: a leader was killed after the
    // provider received the first presentation and less than 2 s after it answered (rotating the token), so the
    // answer died with the process before its Secret write — the window no client can close alone (the grant is then
    // lost loudly, below). The kill may land while the provider is still working on the request, or even before the
    // provider has read it from its socket (under load its `started_ms` can trail the send by a second): no other
    // replica can present anything then, as the Lease outlives a SIGKILLed holder by its whole duration (15 s).
    let mut presented: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for e in &refreshes {
        if let Some(t) = &e.refresh_token {
            presented.entry(t.fingerprint.clone()).or_default().push((e.started_ms.unwrap_or(e.t_ms), e.t_ms));
        }
    }
    let twice: Vec<&Vec<(u64, u64)>> = presented.values().filter(|ts| ts.len() > 1).collect();
    let explained = |ts: &Vec<(u64, u64)>| {
        let (arrived, answered) = ts.iter().min().copied().unwrap_or_default();
        killed_at_ms.iter().any(|k| *k + 1000 >= arrived && *k < answered + 2000)
    };
    let killed_in_window = twice.iter().filter(|ts| explained(ts)).count();
    let double_refreshes = twice.len() - killed_in_window;
    let mut by_account: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for e in &refreshes {
        by_account.entry(e.account_id.clone().unwrap_or_default()).or_default().push((e.started_ms.unwrap_or(e.t_ms), e.t_ms));
    }
    let mut overlapping = 0;
    for spans in by_account.values_mut() {
        spans.sort();
        overlapping += spans.windows(2).filter(|w| w[1].0 < w[0].1).count();
    }
    let api: Api<UserActivation> = ns.api();
    let mut phases = BTreeMap::new();
    for name in &names {
        phases.insert(name.clone(), phase(&api, name).await.0);
    }
    let lost = phases.values().filter(|p| *p == "NeedsReauthorization").count();
    let logs: Vec<&std::path::Path> = ops.iter().map(|o| o.log_path.as_path()).collect();
    let leaks = leak_scan(&client, &[&n], &logs[..1], "latchkey starting", &["app-secret".to_string()]).await;
    let figures = json!({
        "kills": performed, "leader_kills_survived": survived, "activations": n_users, "refreshes": refreshes.len(),
        "converged": phases.values().filter(|p| *p == "Active").count(), "expected_to_converge": n_users,
        "double_refreshes": double_refreshes, "killed_in_rotation_window": killed_in_window,
        "overlapping_refreshes": overlapping, "lost_refresh_tokens": lost,
        "phases": phases, "secret_leaks": leaks.places.len(),
    });
    record("faults_leader", figures.clone());
    eprintln!("faults_leader: {figures}");
    assert!(refreshes.len() >= n_users, "refreshes happened: {}", refreshes.len());
    assert!(performed >= 1, "no leader was ever seen");
    assert_eq!(survived, performed, "a follower took over after each kill");
    assert_eq!(
        double_refreshes, 0,
        "a refresh token was used twice, and no kill explains it; presentations (arrived, answered ms) {twice:?}, kills at {killed_at_ms:?}"
    );
    assert_eq!(overlapping, 0, "two refreshes of one grant at once");
    // Every grant lost is one a SIGKILL in the rotation window explains, and it says so (NeedsReauthorization).
    assert!(lost <= killed_in_window, "{lost} grants lost, {killed_in_window} explained by a kill: {phases:?}");
}

/// Connector `idp-{case}` (token requests to `token_url`) and EmbeddedConnection `sync-{case}` with a Job, in `ns`
/// (the organisation's app Secret `oauth-app` must exist).
async fn oauth_case_connection(client: &Client, ns: &str, server: &OAuthServer, case: &str, token_url: &str) {
    let connector: Connector = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": format!("idp-{case}")},
        "spec": {"baseUrl": server.issuer(), "authMethods": [{"name": "oauth", "oauth2": {
            "flow": "AuthorizationCode", "authorizationUrl": server.authorize_url(), "tokenUrl": token_url,
            "scopes": ["read"], "clientSecretRef": {"name": "oauth-app"}}}]}
    }))
    .unwrap();
    Api::<Connector>::namespaced(client.clone(), ns).create(&PostParams::default(), &connector).await.unwrap();
    let ec: EmbeddedConnection = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": format!("sync-{case}")},
        "spec": {"connectorRef": {"name": format!("idp-{case}")}, "authMethod": "oauth", "job": busybox_job()}
    }))
    .unwrap();
    Api::<EmbeddedConnection>::namespaced(client.clone(), ns).create(&PostParams::default(), &ec).await.unwrap();
}

/// Creates activation `name` of `conn` and consents for its user through the operator's callback.
async fn connect_to(client: &Client, ns: &str, name: &str, conn: &str) {
    let api: Api<UserActivation> = Api::namespaced(client.clone(), ns);
    let ua: UserActivation =
        serde_json::from_value(json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": name},
        "spec": {"connectionRef": {"name": conn}, "user": {"id": name}}}))
        .unwrap();
    api.create(&PostParams::default(), &ua).await.unwrap();
    let url = wait_for_value("status.connectUrl", Duration::from_secs(40), || async {
        api.get(name).await.map_err(|e| e.to_string())?.status.and_then(|s| s.connect_url).ok_or_else(|| "no link yet".to_string())
    })
    .await;
    let callback = format!("{}/oauth/callback", &url[..url.find("/connect/").unwrap()]);
    let redirect = authorize_without_browser(&url, &callback, &Login::default()).await.expect("consent");
    let res = http().get(redirect.url.to_string()).send().await.unwrap();
    assert!(res.status() == 302 || res.status() == 200, "callback for {name}: {}", res.status());
}

/// A token endpoint that hangs or answers garbage while the access token runs out: each refresh is bounded by the
/// token's remaining life, Ready turns False with reason TokenExpired within a second of the expiry (never True on
/// an expired token), no Job starts meanwhile (not even one asked for with run-now), no redirect is followed, and
/// the activation recovers with its refresh token intact once the endpoint answers again.
#[tokio::test]
async fn a_token_endpoint_that_hangs_or_answers_garbage_never_leaves_an_expired_token_ready() {
    let cases: [(&str, TokenMode); 7] = [
        ("hang", TokenMode::Hang),
        ("malformed", TokenMode::Malformed),
        ("missing", TokenMode::Missing),
        ("wrong-type", TokenMode::WrongType),
        ("html", TokenMode::Html),
        ("huge", TokenMode::Huge),
        ("redirect", TokenMode::Redirect),
    ];
    let bed = bed().await;
    let client = bed.client();
    ensure_crds(&client).await;
    let ns = namespace(&bed, "faults-expiry").await;
    let n = ns.name().to_string();
    let op = Operator::start(&bed, "faults_oauth_expiry", &[&n], &[]).await;
    let callback = format!("{}/oauth/callback", op.connect_base_url);
    // 12-second tokens: a refresh is due 6 s into each (margin = lifetime / 2), the token is dead 6 s later.
    let server = OAuthServer::start(
        OAuthServerConfig::default().client(OAuthClient::confidential("app", "app-secret").redirect_uri(&callback)).access_ttl(12),
    );
    let front = token_front(server.token_url()).await;
    let app: Secret = serde_json::from_value(
        json!({"metadata": {"name": "oauth-app"}, "stringData": {"client_id": "app", "client_secret": "app-secret"}}),
    )
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &n).create(&PostParams::default(), &app).await.unwrap();
    for (case, _) in &cases {
        oauth_case_connection(&client, &n, &server, case, &front.token_url(case)).await;
        connect_to(&client, &n, case, &format!("sync-{case}")).await;
    }
    let api: Api<UserActivation> = ns.api();
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = ns.api();
    let jobs_of = |name: &'static str| {
        let jobs = jobs.clone();
        async move {
            jobs.list(&kube::api::ListParams::default()).await.unwrap().items.iter().filter(|j| j.name_any().starts_with(name)).count()
        }
    };
    for (case, _) in &cases {
        wait_for_value("Active with its first run", Duration::from_secs(40), || async {
            let (p, _, _) = phase(&api, case).await;
            let runs = jobs_of(case).await;
            if p == "Active" && runs == 1 { Ok(()) } else { Err(format!("{case}: {p}, {runs} Jobs")) }
        })
        .await;
    }

    // The endpoint goes bad for every case at once.
    let before: BTreeMap<&str, usize> = cases.iter().map(|(c, _)| (*c, front.requests(c))).collect();
    for (case, mode) in &cases {
        front.set(case, *mode);
    }
    let t0 = Instant::now();
    let mut dishonest = Vec::new();
    let mut went_false: BTreeMap<&str, (String, String, f64)> = BTreeMap::new();
    let mut jobs_while_expired = Vec::new();
    while went_false.len() < cases.len() && t0.elapsed() < Duration::from_secs(45) {
        for (case, _) in &cases {
            let (_, ready, ua) = phase(&api, case).await;
            let expires_at = ua.status.as_ref().and_then(|s| s.expires_at);
            let late = expires_at.map(|e| (chrono::Utc::now() - e).num_milliseconds()).unwrap_or(0);
            match &ready {
                Some((s, r, m)) if s == "True" && late > 1500 => {
                    dishonest.push(format!("{case}: Ready=True {r} {late} ms after the token expired ({m})"))
                }
                // Once False for a dead token, it stays False until the endpoint answers again (no flapping).
                Some((s, r, _)) if s == "True" && went_false.contains_key(case) => {
                    dishonest.push(format!("{case}: Ready=True {r} again after it had turned False, {late} ms after the expiry"))
                }
                Some((s, r, m)) if s == "False" && !went_false.contains_key(case) => {
                    went_false.insert(case, (r.clone(), m.clone(), late as f64 / 1000.0));
                    // Ask for a run now: it must wait for a valid token.
                    let patch = json!({"metadata": {"annotations": {"latchkey.dev/run-now": "while-expired"}}});
                    api.patch(case, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A few seconds more of the outage: no Job appears for an activation whose token is dead.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (case, _) in &cases {
        let runs = jobs_of(case).await;
        if runs != 1 {
            jobs_while_expired.push(format!("{case}: {runs} Jobs"));
        }
    }
    let window = t0.elapsed();
    let requests: BTreeMap<&str, usize> = cases.iter().map(|(c, _)| (*c, front.requests(c) - before[c])).collect();
    // The first refresh is due within 6 s; each later one waits 1 s, 2 s, 4 s... (a hung one at most 10 s more).
    let bound = backoff_bound(window, 2);

    // Back to the real server: every case recovers with the refresh token it had, then runs the Job asked for.
    for (case, _) in &cases {
        front.set(case, TokenMode::Pass);
    }
    let mut recovered = BTreeMap::new();
    for (case, _) in &cases {
        let r = wait_for_value("recovery", Duration::from_secs(90), || async {
            let (p, ready, ua) = phase(&api, case).await;
            let failures = ua.status.as_ref().map(|s| s.consecutive_failures).unwrap_or(99);
            let runs = jobs_of(case).await;
            match ready {
                Some((s, _, _)) if s == "True" && p == "Active" && failures == 0 && runs == 2 => Ok(p),
                _ if p == "NeedsReauthorization" => Ok(p),
                r => Err(format!("{case}: {p} {r:?}, {failures} failures, {runs} Jobs")),
            }
        })
        .await;
        recovered.insert(*case, r);
    }
    let hits = front.elsewhere_hits.load(std::sync::atomic::Ordering::SeqCst);
    let mut secrets = vec!["app-secret".to_string()];
    for (case, _) in &cases {
        if let Ok(s) = Api::<Secret>::namespaced(client.clone(), &n).get(&format!("{case}-sync-{case}-credentials")).await {
            for (k, v) in s.data.unwrap_or_default() {
                if k == "access_token" || k == "refresh_token" {
                    secrets.push(String::from_utf8_lossy(&v.0).to_string());
                }
            }
        }
    }
    assert!(secrets.len() > cases.len(), "the credentials Secrets were read: {} values", secrets.len());
    let leaks = leak_scan(&client, &[&n], &[op.log_path.as_path()], "malformed", &secrets).await;
    register_secrets("faults_oauth_expiry", "malformed", &secrets);
    let panics = op.log().lines().filter(|l| l.contains("panicked")).count();

    let mut mishandled = Vec::new();
    for (case, _) in &cases {
        match went_false.get(case) {
            Some((r, m, late)) if r == "TokenExpired" && m.contains("tokenUrl") && *late <= 1.5 => {}
            other => mishandled.push(format!("{case}: Ready did not turn False with TokenExpired within 1.5 s of the expiry: {other:?}")),
        }
        if requests[case] < 1 || requests[case] > bound {
            mishandled.push(format!("{case}: {} token requests in {window:?}, bound {bound}", requests[case]));
        }
        if recovered[case] != "Active" {
            mishandled.push(format!("{case}: recovered as {}", recovered[case]));
        }
    }
    mishandled.extend(dishonest.iter().cloned());
    mishandled.extend(jobs_while_expired.iter().cloned());
    if hits > 0 {
        mishandled.push(format!("a redirect was followed to another host ({hits} requests)"));
    }
    if panics > 0 {
        mishandled.push(format!("{panics} panic(s) in {}", op.log_path.display()));
    }
    let figures = json!({
        "bad_inputs_tried": cases.len(), "bad_inputs_mishandled": mishandled.len(), "mishandled": mishandled,
        "ready_false_after_expiry_s": went_false.iter().map(|(c, v)| (c.to_string(), v.2)).collect::<BTreeMap<_, _>>(),
        "token_requests": requests, "token_request_bound": bound, "recovered_as": recovered,
        "lost_refresh_tokens": recovered.values().filter(|p| *p == "NeedsReauthorization").count(),
        "secret_leaks": leaks.places.len(),
    });
    record("faults_oauth_expiry", figures.clone());
    eprintln!("faults_oauth_expiry: {figures}");
    assert!(mishandled.is_empty(), "{mishandled:#?}");
    assert!(leaks.places.is_empty(), "{:?}", leaks.places);
}
