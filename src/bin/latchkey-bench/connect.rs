//! The connect server under open-loop load: the operator pinned to one core, the load generator (this binary,
//! `--load`, see [`crate::openloop`]) and a local token endpoint (`--token-stub`) pinned to the other, requests sent
//! at a fixed rate whatever the answers do, and each latency counted from the request's scheduled time.
//!
//! Paths: a valid connect link of an API-key activation (`GET /connect/<token>`: HMAC verify, rate-limit check,
//! the activation, connection and connector from the operator's stores, the form); forged links (refused after
//! the HMAC check); the OAuth callback up to and including the provider call (`GET /oauth/callback` with a valid
//! `state`, whose code the local token endpoint refuses at once: nothing is written); and callbacks end to end
//! (each a fresh `state` of its own activation, a token endpoint that answers at once, and the Secret write, the
//! link's compare-and-swap, included; the figure `connect_e2e`). The operator runs with a per-activation rate
//! limit too high to refuse, so its check is on the measured path without refusing the load.
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::Opts;
use crate::bed::{Bed, anyhow_lite::Result};
use crate::load::{self, INTEGRATIONS_NS, OPERATOR_NS, Workload};
use crate::openloop::LoadResult;
use crate::process::{Proc, free_port, wait_http_ok};
use crate::results::Results;
use latchkey::naming;

/// `latchkey-bench --load TARGET RATE SECONDS`: prints one JSON line (see [`crate::openloop`]).
pub fn load_main(target: &str, rate: f64, secs: f64) {
    match crate::openloop::run(target, rate, secs) {
        Ok(r) => println!("{}", serde_json::to_string(&r).unwrap_or_default()),
        Err(e) => {
            eprintln!("load: {e}");
            std::process::exit(2);
        }
    }
}

/// `latchkey-bench --token-stub PORT`: a token endpoint that answers at once. `POST /ok` issues tokens (a new
/// pair each time); `POST /refuse` answers `invalid_grant`.
pub async fn token_stub_main(port: u16) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let app = axum::Router::new()
        .route(
            "/ok",
            axum::routing::post(|| async {
                let n = N.fetch_add(1, Ordering::Relaxed);
                axum::Json(json!({"access_token": format!("bench-at-{n}"), "refresh_token": format!("bench-rt-{n}"), "token_type": "Bearer", "expires_in": 3600}))
            }),
        )
        .route(
            "/refuse",
            // A body written once: the stub shares its core with the load generator, so its own cost is kept small.
            axum::routing::post(|| async {
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    r#"{"error":"invalid_grant","error_description":"bench: refused at once"}"#,
                )
            }),
        );
    let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await else {
        eprintln!("token stub: cannot bind {port}");
        std::process::exit(2);
    };
    let _ = axum::serve(listener, app).await;
}

/// Runs the generator pinned to CPU 0 for `secs` at `rate`, and counts the CPU the server used meanwhile.
fn run_load(server: &Proc, target: &str, rate: f64, secs: f64) -> Result<LoadResult> {
    let me = std::env::current_exe()?;
    let cpu0 = server.cpu_seconds();
    let out = std::process::Command::new("taskset")
        .args(["-c", "0"])
        .arg(me)
        .args(["--load", target, &rate.to_string(), &secs.to_string()])
        .output()?;
    let line = String::from_utf8_lossy(&out.stdout);
    let mut r: LoadResult =
        serde_json::from_str(line.trim()).map_err(|e| format!("load generator: {e}: {}", String::from_utf8_lossy(&out.stderr)))?;
    r.server_cpu_seconds = server.cpu_seconds() - cpu0;
    r.server_cpu_us_per_request = r.server_cpu_seconds * 1e6 / (r.ok.max(1) as f64);
    r.rps_per_server_core = 1e6 / r.server_cpu_us_per_request;
    Ok(r)
}

/// Server CPU per request and the rate one core would serve, from the load step that served the most.
fn per_core(res: &mut Results, key: &str, steps: &[LoadResult]) {
    if let Some(r) = steps.iter().max_by(|a, b| a.ok.cmp(&b.ok)) {
        res.runs(&format!("{key}_cpu_us_per_request"), &[r.server_cpu_us_per_request]);
        res.runs(&format!("{key}_rps_per_core"), &[r.rps_per_server_core]);
    }
}

fn report(what: &str, r: &LoadResult) {
    eprintln!(
        "bench: {what} offered {} req/s: achieved {:.0}, p50 {:.2} ms, p99 {:.2} ms, {} errors, statuses {:?}; server {:.0} us CPU per request ({:.0} req/s per core); generator CPU {:.1} s of {:.1} s, its lateness p99 {:.2} ms",
        r.offered_rps,
        r.achieved_rps,
        r.p50_ms,
        r.p99_ms,
        r.errors,
        r.statuses,
        r.server_cpu_us_per_request,
        r.rps_per_server_core,
        r.generator_cpu_seconds,
        r.wall_seconds,
        r.send_late_p99_ms
    );
}

fn dynamic(v: serde_json::Value) -> Result<DynamicObject> {
    Ok(serde_json::from_value(v)?)
}

fn resource(kind: &str, plural: &str) -> kube::api::ApiResource {
    kube::api::ApiResource::from_gvk_with_plural(&kube::api::GroupVersionKind::gvk("latchkey.dev", "v1alpha1", kind), plural)
}

/// Two OAuth2 connectors whose token endpoint is the local stub (`/ok` answers with tokens, `/refuse` refuses),
/// the organisation's app Secret, and a connection of each without a Job.
async fn oauth_fixture(bed: &Bed, stub: u16) -> Result<()> {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(bed.client.clone(), INTEGRATIONS_NS);
    let app = serde_json::from_value(
        json!({"metadata": {"name": "bench-oauth-app"}, "stringData": {"client_id": "bench", "client_secret": "bench-secret"}}),
    )?;
    secrets.create(&PostParams::default(), &app).await.map_err(|e| e.to_string())?;
    let connectors: Api<DynamicObject> = Api::namespaced_with(bed.client.clone(), INTEGRATIONS_NS, &resource("Connector", "connectors"));
    let connections: Api<DynamicObject> =
        Api::namespaced_with(bed.client.clone(), INTEGRATIONS_NS, &resource("EmbeddedConnection", "embeddedconnections"));
    for mode in ["ok", "refuse"] {
        let c = dynamic(json!({
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": format!("bench-oauth-{mode}")},
            "spec": {"displayName": "Bench OAuth", "baseUrl": "http://127.0.0.1:9",
                     "authMethods": [{"name": "oauth", "oauth2": {"flow": "AuthorizationCode", "authorizationUrl": "http://127.0.0.1:9/authorize",
                        "tokenUrl": format!("http://127.0.0.1:{stub}/{mode}"), "scopes": ["read"], "pkce": true, "clientSecretRef": {"name": "bench-oauth-app"}}}]}
        }))?;
        connectors.create(&PostParams::default(), &c).await.map_err(|e| e.to_string())?;
        let e = dynamic(json!({
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": format!("bench-oauth-{mode}")},
            "spec": {"connectorRef": {"name": format!("bench-oauth-{mode}")}, "authMethod": "oauth",
                     "allowedNamespaces": {"matchLabels": {load::TENANT_LABEL: "true"}}}
        }))?;
        connections.create(&PostParams::default(), &e).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Creates activations `<prefix>-<i>` of `connection` and waits until each has published its connect link.
async fn links(bed: &Bed, ns: &str, connection: &str, prefix: &str, n: usize) -> Result<Vec<String>> {
    let api: Api<DynamicObject> = Api::namespaced_with(bed.client.clone(), ns, &load::ua_resource());
    load::at_concurrency(n, |i| {
        let api = api.clone();
        async move {
            let ua = serde_json::from_value::<DynamicObject>(json!({
                "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": format!("{prefix}-{i}")},
                "spec": {"connectionRef": {"name": connection, "namespace": INTEGRATIONS_NS}, "user": {"id": format!("{prefix}-user-{i}")}}
            }))
            .map_err(|e| kube::Error::Service(e.into()))?;
            api.create(&PostParams::default(), &ua).await.map(|_| ())
        }
    })
    .await?;
    let t = Instant::now();
    loop {
        let list = api.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let mut found: Vec<(usize, String)> = list
            .items
            .iter()
            .filter_map(|o| {
                let i: usize = o.metadata.name.as_deref()?.strip_prefix(&format!("{prefix}-"))?.parse().ok()?;
                Some((i, o.data.pointer("/status/connectUrl")?.as_str()?.to_string()))
            })
            .collect();
        if found.len() >= n {
            found.sort();
            return Ok(found.into_iter().map(|(_, u)| u).collect());
        }
        if t.elapsed() > Duration::from_secs(120 + n as u64 / 10) {
            return Err(format!("only {} of {n} {prefix} activations published a connect link", found.len()).into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Opens each link as a browser would (no redirects followed) and returns the callback URL the provider would
/// send the user to: this server's `/oauth/callback` with the sealed `state` of that link.
async fn callback_urls(links: &[String], base: &str) -> Result<Vec<String>> {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let mut out = Vec::with_capacity(links.len());
    for (i, l) in links.iter().enumerate() {
        let res = http.get(l).send().await?;
        let to =
            res.headers().get("location").and_then(|v| v.to_str().ok()).ok_or_else(|| format!("{l}: no redirect ({})", res.status()))?;
        let u = url::Url::parse(to).map_err(|e| e.to_string())?;
        let state = u.query_pairs().find(|(k, _)| k == "state").map(|(_, v)| v.to_string()).ok_or("no state in the authorization URL")?;
        let mut cb = url::Url::parse(&format!("{base}/oauth/callback")).map_err(|e| e.to_string())?;
        cb.query_pairs_mut().append_pair("code", &format!("bench-code-{i}")).append_pair("state", &state);
        out.push(cb.to_string());
    }
    Ok(out)
}

/// What one call of [`figure`] measures: the connect server's paths (figure `connect`), or the callbacks end to
/// end and their bound (figure `connect_e2e`). Each on a bed and operator of its own.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Paths,
    EndToEnd,
}

pub async fn figure(o: &Opts, res: &mut Results, part: Part) -> Result<()> {
    let bed = Bed::up(&o.bed_dir()).await?;
    let w = Workload { n: 1, namespaces: 1 };
    load::latchkey_fixture(&bed, &w, &o.operator).await?;
    let stub = free_port();
    let me = std::env::current_exe()?;
    let _stub = Proc::spawn("token-stub", &me, &["--token-stub".into(), stub.to_string()], &[], &o.logs(), Some("0"))?;
    oauth_fixture(&bed, stub).await?;
    let (connect, metrics) = (free_port(), free_port());
    let base = format!("http://127.0.0.1:{connect}");
    let args: Vec<String> = vec![
        "run".into(),
        "--log-format=json".into(),
        format!("--metrics-bind=127.0.0.1:{metrics}"),
        format!("--connect-bind=127.0.0.1:{connect}"),
        format!("--connect-base-url={base}"),
        format!("--operator-namespace={OPERATOR_NS}"),
        // The rate-limit check stays on the path; its limit is out of the load's reach.
        "--connect-rate-limit=1000000000".into(),
        "--connect-rate-burst=1000000000".into(),
    ];
    let env = [("KUBECONFIG", bed.dir.join("operator.kubeconfig").display().to_string()), ("RUST_LOG", "warn".to_string())];
    let mut p = Proc::spawn("connect", &o.operator, &args, &env, &o.logs(), Some("1"))?;
    if !wait_http_ok(&mut p, &format!("http://127.0.0.1:{metrics}/readyz"), Duration::from_secs(60)).await {
        return Err("the operator did not become ready".into());
    }
    let ns = w.ns(0);
    if part == Part::EndToEnd {
        end_to_end(o, &bed, &p, &ns, &base, res).await?;
        drop(p);
        let steps = e2e_steps(o);
        e2e_bound(&bed, &ns, steps, res).await?;
        bed.down();
        return Ok(());
    }
    let link = links(&bed, &ns, "bench-sync", "connect-me", 1).await?.remove(0);
    let token = link.rsplit('/').next().unwrap_or_default().to_string();
    let valid = format!("{base}/connect/{token}");
    let mut forged_tok = token.clone().into_bytes();
    let k = forged_tok.len() - 3;
    forged_tok[k] = if forged_tok[k] == b'A' { b'B' } else { b'A' };
    let forged = format!("{base}/connect/{}", String::from_utf8_lossy(&forged_tok));
    if std::env::var_os("BENCH_CONNECT_HOLD").is_some() {
        // A profiling aid: the server stays up, its targets in <work>/connect-hold.txt, until this process is killed.
        let refuse_link = links(&bed, &ns, "bench-oauth-refuse", "refuse", 1).await?;
        let refuse_cb = callback_urls(&refuse_link, &base).await?.remove(0);
        let ok_links = links(&bed, &ns, "bench-oauth-ok", "e2e", 2000).await?;
        std::fs::write(o.work.join("connect-hold-e2e.txt"), callback_urls(&ok_links, &base).await?.join("\n"))?;
        let file = o.work.join("connect-hold.txt");
        std::fs::write(&file, format!("pid {}\nvalid {valid}\nforged {forged}\ncallback {refuse_cb}\n", p.pid))?;
        eprintln!("bench: holding the connect server (pid {}); targets in {}", p.pid, file.display());
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
    let step = match o.scale.as_str() {
        "full" => 10.0,
        "small" => 5.0,
        _ => 1.0,
    };
    // Valid links: a ladder of offered rates; the throughput is the best achieved rate, the latency the p99
    // at 10,000 req/s offered.
    let page = ladder(&p, &valid, step, "connect page (valid link)")?;
    per_core(res, "callback", &page);
    let best = page.iter().map(|r| r.achieved_rps).fold(0.0, f64::max);
    res.runs("callback_rps", &[best]);
    res.runs("callback_p99_ms", &[p99_at_10k(&page)]);
    res.set("callback_path", json!("GET /connect/<valid token> of an API-key activation (verify, rate-limit check, activation+connection+connector from the operator's stores, render the form)"));
    res.set("callback_ladder", serde_json::to_value(&page)?);

    // The OAuth callback up to the provider call: a valid state, the code refused at once by the local endpoint.
    let refuse_link = links(&bed, &ns, "bench-oauth-refuse", "refuse", 1).await?;
    let refuse_cb = callback_urls(&refuse_link, &base).await?.remove(0);
    let cb_ladder = ladder(&p, &refuse_cb, step, "oauth callback (to the provider, refused)")?;
    per_core(res, "oauth_callback", &cb_ladder);
    res.runs("oauth_callback_rps", &[cb_ladder.iter().map(|r| r.achieved_rps).fold(0.0, f64::max)]);
    res.runs("oauth_callback_p99_ms", &[p99_at_10k(&cb_ladder)]);
    res.set("oauth_callback_path", json!("GET /oauth/callback with a valid state: open the sealed state, rate-limit check, stores, the OAuth app from its cache, the token request to a local endpoint that refuses at once (400 page, nothing written)"));
    res.set("oauth_callback_ladder", serde_json::to_value(&cb_ladder)?);

    // Forged links: a flood; memory before and after.
    let flood_secs = match o.scale.as_str() {
        "full" => 300.0,
        "small" => 30.0,
        _ => 3.0,
    };
    let rss0 = p.rss_mib();
    let r = run_load(&p, &forged, 50_000.0, flood_secs)?;
    per_core(res, "forged", std::slice::from_ref(&r));
    report(&format!("forged links for {flood_secs}s"), &r);
    let rss1 = p.rss_mib();
    res.runs("forged_rps", &[r.achieved_rps]);
    res.runs("forged_p99_ms", &[r.p99_ms]);
    res.runs("forged_flood_rss_growth_mib", &[rss1 - rss0]);
    res.set("forged_flood_seconds", json!(flood_secs));
    drop(p);
    bed.down();
    Ok(())
}

/// The offered rates of the callbacks end to end and how long each is offered (seconds). The target's rate,
/// 200/s, is offered for 10 s: its p99 is the 20th-slowest of 2,000 callbacks. (Until the tenth session it was 3 s,
/// and the 6th-slowest of 600 moved between 46 and 174 ms in three runs of one build, the bound's alike.)
fn e2e_steps(o: &Opts) -> &'static [(f64, f64)] {
    match o.scale.as_str() {
        "tiny" => &[(20.0, 2.0)],
        _ => &[(25.0, 4.0), (50.0, 4.0), (100.0, 3.0), (200.0, 10.0), (400.0, 2.0)],
    }
}

/// The callbacks end to end on the operator `p`: a ladder of open-loop rates, each callback of its own activation
/// with a fresh `state`, tokens issued at once by the local endpoint, the Secret's write (the link's
/// compare-and-swap) included.
async fn end_to_end(o: &Opts, bed: &Bed, p: &Proc, ns: &str, base: &str, res: &mut Results) -> Result<()> {
    let steps = e2e_steps(o);
    let n: usize = steps.iter().map(|(r, s)| (r * s) as usize).sum();
    let ok_links = links(bed, ns, "bench-oauth-ok", "e2e", n).await?;
    let urls = callback_urls(&ok_links, base).await?;
    let mut e2e = Vec::new();
    let mut used = 0;
    for (rate, secs) in steps {
        let m = (rate * secs) as usize;
        let file = o.work.join(format!("callbacks-{rate}.txt"));
        std::fs::write(&file, urls[used..used + m].join("\n"))?;
        used += m;
        let r = run_load(p, &format!("@{}", file.display()), *rate, *secs)?;
        report("oauth callbacks end to end", &r);
        // Completed: the "Connected" page (no return URL); anything else is not a completed callback.
        let done = r.statuses.get(&200).copied().unwrap_or(0) as f64;
        let completed_rps = r.achieved_rps * done / (r.ok.max(1) as f64);
        e2e.push(json!({"offered_rps": rate, "completed": done, "completed_rps": completed_rps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
                        "statuses": r.statuses, "server_cpu_us_per_request": r.server_cpu_us_per_request}));
        if done < 0.9 * rate * secs {
            break;
        }
    }
    record_ladder(
        res,
        "callback_e2e",
        &e2e,
        "open loop; each request the callback of its own activation with a fresh state; a local token endpoint answering at once; the Secret's write (the link's compare-and-swap) included; completed = the Connected page",
    );
    Ok(())
}

/// The bound of the callbacks end to end, measured on the same bed with the operator stopped: a plain client
/// makes the apiserver requests of one completed callback, in the callback's order, open loop at the same rates
/// as the operator's ladder. Until the page would be answered: the Secret's create (the connect server's own
/// object from its own code, with the link's hash: the link's compare-and-swap); after it, untimed as for the
/// user, the reconciler's Ready status (server-side apply, which drops the spent link). The activations wait with
/// a connect link in status, as the reconciler leaves them.
/// What is left between this and the operator's ladder is the operator's part: its stores, the token request to a
/// local endpoint, its pages, and its reconciler running beside the connect server.
async fn e2e_bound(bed: &Bed, ns: &str, steps: &[(f64, f64)], res: &mut Results) -> Result<()> {
    use latchkey::api::{Connector, UserActivation};
    use latchkey::credentials::{Credential, OAuth2Tokens, Sensitive};
    let client = bed.client.clone();
    let n: usize = steps.iter().map(|(r, s)| (r * s) as usize).sum();
    let dynamic_uas: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &load::ua_resource());
    let link_expires = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    load::at_concurrency(n, |i| {
        let api = dynamic_uas.clone();
        let link_expires = link_expires.clone();
        async move {
            let name = format!("bound-{i}");
            let ua = serde_json::from_value::<DynamicObject>(json!({
                "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": name},
                "spec": {"connectionRef": {"name": "bench-oauth-ok", "namespace": INTEGRATIONS_NS}, "user": {"id": format!("bound-user-{i}")}}
            }))
            .map_err(kube::Error::SerdeError)?;
            api.create(&PostParams::default(), &ua).await?;
            let nonce = format!("{:043}", i);
            let status = json!({"status": {"phase": "AwaitingUser", "observedGeneration": 1, "connectNonce": nonce,
                "connectUrl": format!("http://127.0.0.1:9/connect/{}", "x".repeat(360)), "connectUrlExpiresAt": link_expires,
                "conditions": [{"type": "Ready", "status": "False", "reason": "AwaitingUser", "message": "waiting for the user to connect through the link in status.connectUrl",
                    "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}});
            api.patch_status(&name, &PatchParams::apply(naming::FIELD_MANAGER).force(), &Patch::Apply(&json!({
                "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "status": status["status"]}))).await.map(|_| ())
        }
    })
    .await?;
    let uas: Api<UserActivation> = Api::namespaced(client.clone(), ns);
    let mut by_index: Vec<(usize, UserActivation)> = uas
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?
        .items
        .into_iter()
        .filter_map(|u| Some((u.metadata.name.as_deref()?.strip_prefix("bound-")?.parse().ok()?, u)))
        .collect();
    by_index.sort_by_key(|(i, _)| *i);
    if by_index.len() < n {
        return Err(format!("the bound's activations: {} of {n} listed", by_index.len()).into());
    }
    let connector = Api::<Connector>::namespaced(client.clone(), INTEGRATIONS_NS).get("bench-oauth-ok").await.map_err(|e| e.to_string())?;
    let method = connector.spec.auth_methods.first().and_then(|m| m.oauth2.clone()).ok_or("the bench connector has no OAuth2 method")?;
    let method = std::sync::Arc::new(method);
    let mut ladder = Vec::new();
    let mut used = 0;
    for (rate, secs) in steps {
        let m = (rate * secs) as usize;
        let batch: Vec<UserActivation> = by_index[used..used + m].iter().map(|(_, u)| u.clone()).collect();
        used += m;
        let t0 = tokio::time::Instant::now() + Duration::from_millis(50);
        let tasks: Vec<_> = batch
            .into_iter()
            .enumerate()
            .map(|(k, ua)| {
                let (client, method) = (client.clone(), method.clone());
                let due = t0 + Duration::from_secs_f64(k as f64 / rate);
                tokio::spawn(async move {
                    tokio::time::sleep_until(due).await;
                    let uas: Api<UserActivation> = Api::namespaced(client.clone(), &ua.metadata.namespace.clone().unwrap_or_default());
                    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
                        Api::namespaced(client, &ua.metadata.namespace.clone().unwrap_or_default());
                    let name = ua.metadata.name.clone().unwrap_or_default();
                    let secret_name = naming::credentials_secret_name(&ua);
                    let now = chrono::Utc::now();
                    let tokens = OAuth2Tokens {
                        access_token: Sensitive::new(format!("bench-at-bound-{k}")),
                        refresh_token: Some(Sensitive::new(format!("bench-rt-bound-{k}"))),
                        expires_at: Some(now + chrono::Duration::hours(1)),
                        token_type: Some("Bearer".into()),
                        ..Default::default()
                    };
                    let nonce = ua.status.as_ref().and_then(|s| s.connect_nonce.as_deref()).unwrap_or_default();
                    let secret = latchkey::connect::routes::owned_secret(
                        &ua,
                        &secret_name,
                        &Credential::OAuth2(tokens),
                        1,
                        Some((&method, Duration::from_secs(3600))),
                        &naming::link_hash(nonce),
                    );
                    let pp = PostParams { field_manager: Some(naming::CONNECT_FIELD_MANAGER.into()), ..Default::default() };
                    secrets.create(&pp, &secret).await.ok()?;
                    let ms = due.elapsed().as_secs_f64() * 1000.0;
                    // The reconciler's write once the Secret is there: not in the user's wait, but on the apiserver.
                    let ready = json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "status": {
                        "phase": "Active", "observedGeneration": 1, "credentialGeneration": 1, "secretName": secret_name, "baseUrl": "http://127.0.0.1:9",
                        "expiresAt": (now + chrono::Duration::hours(1)).to_rfc3339(), "nextRefreshTime": (now + chrono::Duration::minutes(54)).to_rfc3339(),
                        "conditions": [
                            {"type": "Ready", "status": "True", "reason": "Active", "message": format!("credentials stored in Secret {secret_name}"), "lastTransitionTime": now.to_rfc3339(), "observedGeneration": 1},
                            {"type": "CredentialsValid", "status": "True", "reason": "NoVerificationDeclared", "message": "stored; the connector declares no verification request", "lastTransitionTime": now.to_rfc3339(), "observedGeneration": 1}]}});
                    uas.patch_status(&name, &PatchParams::apply(naming::FIELD_MANAGER).force(), &Patch::Apply(&ready)).await.ok()?;
                    Some(ms)
                })
            })
            .collect();
        let mut lat = Vec::with_capacity(m);
        for t in tasks {
            if let Ok(Some(ms)) = t.await {
                lat.push(ms);
            }
        }
        let elapsed = t0.elapsed().as_secs_f64().max(*secs);
        lat.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| crate::results::percentile(&lat, p);
        let done = lat.len() as f64;
        eprintln!(
            "bench: the callbacks' bound (a plain client, operator stopped) offered {rate}/s: {done} of {m} done, {:.0}/s, p50 {:.1} ms, p99 {:.1} ms",
            done / elapsed,
            pct(0.5),
            pct(0.99)
        );
        ladder.push(
            json!({"offered_rps": rate, "completed": done, "completed_rps": done / elapsed, "p50_ms": pct(0.5), "p99_ms": pct(0.99)}),
        );
        if done < 0.9 * (m as f64) {
            break;
        }
    }
    record_ladder(
        res,
        "callback_e2e_bound",
        &ladder,
        "the apiserver requests of the callbacks end to end by a plain client, operator stopped, same bed, same open-loop rates: the Secret's create (the link's compare-and-swap); the reconciler's Ready status (server-side apply, dropping the link) after, untimed",
    );
    Ok(())
}

/// `<key>_rps` (the best completed rate), `<key>_p99_ms` (see [`best_and_p99`]), the ladder and its note.
fn record_ladder(res: &mut Results, key: &str, ladder: &[serde_json::Value], note: &str) {
    let (best, p99) = best_and_p99(ladder);
    res.runs(&format!("{key}_rps"), &[best]);
    res.runs(&format!("{key}_p99_ms"), &[p99]);
    res.set(&format!("{key}_ladder"), json!(ladder));
    res.set(&format!("{key}_note"), json!(note));
}

/// The rate at which the end-to-end p99 is judged: the issue's target is a p99 while 200 callbacks/s complete.
const E2E_P99_RATE: f64 = 200.0;

/// The best completed rate of a ladder, and the p99 at the highest rate up to [`E2E_P99_RATE`] that completed
/// (nearly) everything offered (else at the first rate). Steps beyond it are past the target's load: their p99
/// is in the ladder, not in the key.
fn best_and_p99(ladder: &[serde_json::Value]) -> (f64, f64) {
    let best = ladder.iter().filter_map(|r| r["completed_rps"].as_f64()).fold(0.0, f64::max);
    let offered = |r: &serde_json::Value| r["offered_rps"].as_f64().unwrap_or(f64::MAX);
    let p99 = ladder
        .iter()
        .rfind(|r| offered(r) <= E2E_P99_RATE && r["completed_rps"].as_f64().unwrap_or(0.0) >= 0.9 * offered(r))
        .or(ladder.first())
        .and_then(|r| r["p99_ms"].as_f64())
        .unwrap_or(f64::NAN);
    (best, p99)
}

/// Offered 1k, 2k, 5k, 10k, 20k, 40k req/s for `step` seconds each, stopping at saturation.
fn ladder(server: &Proc, url: &str, step: f64, what: &str) -> Result<Vec<LoadResult>> {
    let mut out = Vec::new();
    for rate in [1_000.0, 2_000.0, 5_000.0, 10_000.0, 20_000.0, 40_000.0] {
        let r = run_load(server, url, rate, step)?;
        report(what, &r);
        let saturated = r.achieved_rps < 0.8 * rate;
        out.push(r);
        if saturated {
            break;
        }
    }
    Ok(out)
}

/// The p99 at 10,000 req/s offered; when the ladder stopped below it (saturated), at the last rate offered.
fn p99_at_10k(ladder: &[LoadResult]) -> f64 {
    ladder.iter().find(|r| r.offered_rps == 10_000.0).or(ladder.last()).map(|r| r.p99_ms).unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(offered: f64, completed: f64, p99: f64) -> serde_json::Value {
        json!({"offered_rps": offered, "completed_rps": completed, "p99_ms": p99})
    }

    #[test]
    fn the_end_to_end_p99_is_read_at_200_per_second_even_when_more_was_served() {
        let ladder = [step(100.0, 100.0, 15.0), step(200.0, 199.0, 130.0), step(400.0, 368.0, 650.0)];
        assert_eq!(best_and_p99(&ladder), (368.0, 130.0));
    }

    #[test]
    fn a_ladder_that_fell_behind_at_200_per_second_is_read_where_it_kept_up() {
        let ladder = [step(100.0, 100.0, 46.0), step(200.0, 173.0, 742.0), step(400.0, 172.0, 1800.0)];
        assert_eq!(best_and_p99(&ladder), (173.0, 46.0));
    }
}
