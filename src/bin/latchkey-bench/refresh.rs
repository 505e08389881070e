//! OAuth: M activations connected through the operator's own connect links and callback against the test OAuth2
//! server (tests/oauth-server, oidc-provider, auto-approve), then their tokens refreshed for a while.
//!
//! - Callbacks end to end: the consent is driven without a browser (redirects followed with a cookie jar); the
//!   operator's `GET /oauth/callback` is timed (state check, code exchange at the provider, Secret write, link
//!   claimed), 16 users at a time. This is closed-loop and against a real provider, not an instant token endpoint.
//! - Writes per OAuth activation to converge: operator writes (its connect server writes as the same user) from
//!   the activations' creation until all are Ready.
//! - Refresh: from the server's records, per refresh token presented: how many token calls (1 = no duplicate,
//!   no race), `invalid_grant`s, and the lag after the planned time (issue + lifetime − min(refreshBefore,
//!   lifetime/2)); a checker lists the owned Secrets every second and counts tokens it found expired.
use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use serde_json::{Value, json};

use crate::Opts;
use crate::bed::{Bed, OPERATOR_USER, anyhow_lite::Result, breakdown};
use crate::load::{self, INTEGRATIONS_NS, OPERATOR_NS, ReadyWatch, Workload};
use crate::results::Results;

const RETURN_URL: &str = "https://app.example.com/done";

struct OAuthServer {
    child: std::process::Child,
    info: Value,
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_oauth_server(o: &Opts, redirect_uri: &str, ttl: u64) -> Result<OAuthServer> {
    let repo = crate::bed::repo();
    let clients = json!([{"client_id": "bench", "client_secret": "bench-secret", "redirect_uris": [redirect_uri],
                          "token_endpoint_auth_method": "client_secret_basic", "grant_types": ["authorization_code", "refresh_token"]}]);
    let log = std::fs::File::create(o.logs().join("oauth-server.log"))?;
    let mut child = Command::new("node")
        .arg(repo.join("tests/oauth-server/server.js"))
        .env("PORT", "0")
        .env("OAUTH_AUTO_APPROVE", "1")
        .env("OAUTH_ACCESS_TTL", ttl.to_string())
        .env("OAUTH_CLIENTS", clients.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()?;
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    let info: Value = serde_json::from_str(line.trim()).map_err(|e| format!("the OAuth server's ready line {line:?}: {e}"))?;
    Ok(OAuthServer { child, info })
}

/// Follows the consent from a connect link to the operator's callback URL (not requested).
async fn consent(http: &reqwest::Client, start: &str, callback_prefix: &str) -> Result<String> {
    let mut jar: BTreeMap<String, String> = BTreeMap::new();
    let mut url = url::Url::parse(start)?;
    for _ in 0..20 {
        if url.as_str().starts_with(callback_prefix) {
            return Ok(url.to_string());
        }
        let mut req = http.get(url.clone());
        if !jar.is_empty() {
            req = req.header("cookie", jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; "));
        }
        let r = req.send().await?;
        for c in r.headers().get_all("set-cookie") {
            if let Some((k, v)) = c.to_str().unwrap_or("").split(';').next().and_then(|kv| kv.split_once('=')) {
                jar.insert(k.trim().to_string(), v.to_string());
            }
        }
        let loc = r.headers().get("location").and_then(|l| l.to_str().ok()).map(|s| s.to_string());
        match loc {
            Some(l) if r.status().is_redirection() => url = url.join(&l)?,
            _ => return Err(format!("consent stopped at {url}: {}", r.status()).into()),
        }
    }
    Err("consent: too many redirects".into())
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    crate::results::percentile(v, p)
}

pub async fn figure(o: &Opts, res: &mut Results) -> Result<()> {
    let (m, ttl, secs) = match o.scale.as_str() {
        "full" => (1000, 60, 600.0),
        "small" => (100, 60, 180.0),
        _ => (5, 20, 30.0),
    };
    res.set("refresh_activations", json!(m));
    res.set("refresh_token_lifetime_seconds", json!(ttl));
    res.set("refresh_duration_seconds", json!(secs));
    let bed = Bed::up(&o.bed_dir()).await?;
    let w = Workload { n: m, namespaces: o.namespaces.min(m) };
    load::latchkey_fixture(&bed, &w, &o.operator).await?;
    let op = load::start_operator(&bed, &o.operator, "refresh", o.concurrency, &o.logs()).await?;
    let callback = format!("{}/oauth/callback", op.connect_url);
    std::fs::create_dir_all(o.logs())?;
    let server = start_oauth_server(o, &callback, ttl)?;
    let s = |k: &str| server.info[k].as_str().unwrap_or_default().to_string();
    let app: Secret = serde_json::from_value(
        json!({"metadata": {"name": "oauth-app"}, "stringData": {"client_id": "bench", "client_secret": "bench-secret"}}),
    )?;
    Api::<Secret>::namespaced(bed.client.clone(), INTEGRATIONS_NS).create(&PostParams::default(), &app).await.map_err(|e| e.to_string())?;
    let gvk = |k: &str| GroupVersionKind::gvk("latchkey.dev", "v1alpha1", k);
    let conn_api: Api<DynamicObject> =
        Api::namespaced_with(bed.client.clone(), INTEGRATIONS_NS, &ApiResource::from_gvk_with_plural(&gvk("Connector"), "connectors"));
    let c: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": "idp"},
        "spec": {"displayName": "Bench IdP", "baseUrl": s("issuer"), "authMethods": [{"name": "oauth", "oauth2": {
            "flow": "AuthorizationCode", "authorizationUrl": s("authorization_endpoint"), "tokenUrl": s("token_endpoint"),
            "scopes": ["read", "write"], "clientSecretRef": {"name": "oauth-app"}, "pkce": true, "clientAuth": "Basic", "refreshBefore": "5m"}}]}
    }))?;
    conn_api.create(&PostParams::default(), &c).await.map_err(|e| e.to_string())?;
    let ec_api: Api<DynamicObject> = Api::namespaced_with(
        bed.client.clone(),
        INTEGRATIONS_NS,
        &ApiResource::from_gvk_with_plural(&gvk("EmbeddedConnection"), "embeddedconnections"),
    );
    let ec: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "idp-sync"},
        "spec": {"connectorRef": {"name": "idp"}, "authMethod": "oauth", "allowedNamespaces": {"matchLabels": {load::TENANT_LABEL: "true"}}, "allowedReturnUrls": [RETURN_URL]}
    }))?;
    ec_api.create(&PostParams::default(), &ec).await.map_err(|e| e.to_string())?;

    let mut watch = ReadyWatch::start(&bed.client, &load::ua_resource()).await;
    let mark = bed.audit_mark();
    let ar = load::ua_resource();
    load::at_concurrency(m, |i| {
        let api: Api<DynamicObject> = Api::namespaced_with(bed.client.clone(), &w.ns(i), &ar);
        async move {
            let o: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": format!("oauth-{i}")},
                "spec": {"connectionRef": {"name": "idp-sync", "namespace": INTEGRATIONS_NS}, "user": {"id": format!("oauth-user-{i}")}, "returnUrl": RETURN_URL}
            }))
            .unwrap();
            api.create(&PostParams::default(), &o).await.map(|_| ())
        }
    })
    .await?;
    // The connect links, as the application would read them.
    let all: Api<DynamicObject> = Api::all_with(bed.client.clone(), &ar);
    let t = Instant::now();
    let links: Vec<String> = loop {
        let l = all.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let links: Vec<String> =
            l.items.iter().filter_map(|u| u.data.pointer("/status/connectUrl").and_then(|x| x.as_str()).map(|s| s.to_string())).collect();
        if links.len() >= m {
            break links;
        }
        if t.elapsed() > Duration::from_secs(120) {
            return Err(format!("{} of {m} connect links after 120 s", links.len()).into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Consent and callbacks, 16 users at a time.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(30)).build()?;
    let t_cb = Instant::now();
    let results: Vec<std::result::Result<f64, String>> = futures::stream::iter(links)
        .map(|link| {
            let (http, callback) = (http.clone(), callback.clone());
            async move {
                let cb = consent(&http, &link, &callback).await.map_err(|e| e.to_string())?;
                let t = Instant::now();
                let r = http.get(&cb).send().await.map_err(|e| e.to_string())?;
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                if r.status().is_redirection()
                    && r.headers().get("location").and_then(|l| l.to_str().ok()).is_some_and(|l| l.starts_with(RETURN_URL))
                {
                    Ok(ms)
                } else {
                    Err(format!("callback answered {}", r.status()))
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let cb_elapsed = t_cb.elapsed().as_secs_f64();
    let mut lat: Vec<f64> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if !failed.is_empty() {
        eprintln!("bench: {} of {m} consents failed, first: {}", failed.len(), failed[0]);
    }
    let ok = lat.len();
    res.runs("consent_e2e_rps", &[ok as f64 / cb_elapsed]);
    res.runs("consent_e2e_callback_p99_ms", &[pct(&mut lat, 0.99)]);
    res.set("consent_e2e_note", json!("closed loop, 16 users at a time, each doing the whole consent at the test OAuth server (oidc-provider on Node) before its timed callback; the rate is of whole consents, the p99 of the callback request alone"));
    let (_, done) = watch.wait(ok, Instant::now(), Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ev = bed.audit_since(mark);
    let writes = ev.iter().filter(|e| e.user == OPERATOR_USER && e.is_write() && e.namespace != OPERATOR_NS).count() as f64 / m as f64;
    res.runs("writes_per_activation_oauth", &[writes]);
    res.set("writes_breakdown_oauth", json!(breakdown(&ev, OPERATOR_USER)));
    eprintln!(
        "bench: oauth: {ok} of {m} connected in {cb_elapsed:.1}s (all Ready: {}), {writes:.2} writes/activation {}",
        done.is_some(),
        json!(breakdown(&ev, OPERATOR_USER))
    );

    // Refresh: a checker reads the owned Secrets every second while the tokens rotate.
    let secrets: Api<Secret> = Api::all(bed.client.clone());
    let (mut reads, mut expired) = (0u64, 0u64);
    let t_ref = Instant::now();
    let t_ref_wall = chrono::Utc::now();
    while t_ref.elapsed().as_secs_f64() < secs {
        if let Ok(l) = secrets.list(&ListParams::default().labels("app.kubernetes.io/managed-by=latchkey")).await {
            let now = chrono::Utc::now();
            for s in l.items {
                let Some(exp) = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get("expires_at"))
                    .and_then(|b| String::from_utf8(b.0.clone()).ok())
                    .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
                else {
                    continue;
                };
                reads += 1;
                if exp <= now {
                    expired += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let events: Vec<Value> =
        reqwest::get(s("issuer") + "/_test/events").await?.json::<Value>().await?.as_array().cloned().unwrap_or_default();
    // Issued refresh tokens: fingerprint -> (issued at, lifetime).
    let mut issued: HashMap<String, (f64, f64)> = HashMap::new();
    let mut presented: HashMap<String, u64> = HashMap::new();
    let (mut refresh_calls, mut invalid_grants) = (0u64, 0u64);
    let mut lags = Vec::new();
    let mut per_second: BTreeMap<i64, u64> = BTreeMap::new();
    let start_ms = t_ref_wall.timestamp_millis() as f64;
    for e in &events {
        if e["endpoint"] != "token" {
            continue;
        }
        let t = e["t_ms"].as_f64().unwrap_or(0.0);
        if e["grant_type"] == "refresh_token" {
            let started = e["started_ms"].as_f64().unwrap_or(t);
            if started >= start_ms {
                refresh_calls += 1;
                *per_second.entry(((started - start_ms) / 1000.0) as i64).or_insert(0) += 1;
                if e["error"] == "invalid_grant" {
                    invalid_grants += 1;
                }
                if let Some(fp) = e.pointer("/refresh_token/fingerprint").and_then(|x| x.as_str()) {
                    *presented.entry(fp.to_string()).or_insert(0) += 1;
                    if let Some((at, life)) = issued.get(fp) {
                        let planned = at + (life - (300.0f64).min(life / 2.0)) * 1000.0;
                        lags.push((started - planned) / 1000.0);
                    }
                }
            }
        }
        if let (Some(fp), Some(life)) =
            (e.pointer("/issued/refresh_token").and_then(|x| x.as_str()), e.pointer("/issued/expires_in").and_then(|x| x.as_f64()))
        {
            issued.insert(fp.to_string(), (t, life));
        }
    }
    let calls_per_refresh = if presented.is_empty() { f64::NAN } else { refresh_calls as f64 / presented.len() as f64 };
    let max_per_s = per_second.values().copied().max().unwrap_or(0);
    let mean_per_s = refresh_calls as f64 / secs;
    res.runs("expired_tokens_served", &[expired as f64]);
    res.runs("refresh_lag_p99_seconds", &[pct(&mut lags.clone(), 0.99)]);
    res.runs("refresh_lag_p50_seconds", &[pct(&mut lags, 0.50)]);
    res.runs("token_calls_per_refresh", &[calls_per_refresh]);
    res.runs("refresh_invalid_grants", &[invalid_grants as f64]);
    res.runs("refresh_calls", &[refresh_calls as f64]);
    res.runs("refresh_secret_reads_checked", &[reads as f64]);
    res.runs("refresh_rate_peak_to_mean", &[max_per_s as f64 / mean_per_s.max(1e-9)]);
    res.set("refresh_note", json!("lag = refresh request arrival minus (issue time + lifetime - min(refreshBefore, lifetime/2)); jitter moves refreshes up to 50 % of the margin earlier, so negative lags are on plan"));
    eprintln!(
        "bench: refresh over {secs}s: {refresh_calls} refresh calls for {} tokens, {invalid_grants} invalid_grant, {expired} expired of {reads} Secret reads, peak {max_per_s}/s vs mean {mean_per_s:.1}/s",
        presented.len()
    );
    drop(server);
    drop(op);
    bed.down();
    Ok(())
}
