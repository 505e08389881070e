//! Hostile and malformed input: manifests (rejected at apply with the apiserver's message, or shown as a
//! condition with a reason while a healthy activation beside them keeps working), requests to the connect server
//! (4xx, nothing written, no panic), and providers that answer badly (bounded, refused, no panic).
mod fault_support;
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fault_support::*;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Client, Resource};
use latchkey::api::{Connector, EmbeddedConnection, UserActivation};
use serde_json::{Value, json};
use support::operator::Operator;
use support::{bed, namespace, wait_for_value};

/// What a bad manifest must lead to.
enum Expect {
    /// The apiserver refuses the last object; its message contains this.
    Rejected(&'static str),
    /// Accepted; activation `name` shows condition `type_`=`status` with one of `reasons` (Ready of the healthy
    /// activation is checked separately).
    Condition { ua: &'static str, type_: &'static str, status: &'static str, reasons: &'static [&'static str] },
}

struct Case {
    name: &'static str,
    objects: Vec<Value>,
    expect: Expect,
}

fn connector(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "Connector", "metadata": {"name": name}, "spec": spec})
}
fn api_key_method() -> Value {
    json!({"name": "token", "apiKey": {"in": "Header", "name": "Authorization", "prefix": "Bearer "}})
}
fn connection(name: &str, extra: Value) -> Value {
    let mut spec = json!({"connectorRef": {"name": "acme-api"}, "authMethod": "token", "allowedReturnUrls": ["https://app.example.com/"]});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        spec[k] = v;
    }
    json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": name}, "spec": spec})
}
fn job(template_spec: Value, extra: Value) -> Value {
    let mut j = json!({"template": {"spec": template_spec}});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        j[k] = v;
    }
    j
}
fn container() -> Value {
    json!({"name": "sync", "image": "busybox", "command": ["true"]})
}
fn activation(name: &str, conn: &str, extra: Value) -> Value {
    let mut spec = json!({"connectionRef": {"name": conn}, "user": {"id": format!("user-{name}")}, "credentialsSecretRef": {"name": format!("{name}-key")}});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        spec[k] = v;
    }
    json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": name}, "spec": spec})
}
fn source(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "labels": {"latchkey.dev/source": "true"}}, "stringData": data})
}
/// An activation of `conn` with a working key.
fn keyed(name: &'static str, conn: &str, extra: Value) -> Vec<Value> {
    vec![source(&format!("{name}-key"), json!({"api_key": format!("good-key-{name}")})), activation(name, conn, extra)]
}

fn cases(other_ns: &str) -> Vec<Case> {
    use Expect::*;
    let privileged = json!({"containers": [{"name": "sync", "image": "busybox", "securityContext": {"privileged": true}}]});
    let host_path = json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}], "containers": [container()]});
    let host_network = json!({"hostNetwork": true, "containers": [container()]});
    let missing_cm = json!({"containers": [{"name": "sync", "image": "busybox", "envFrom": [{"configMapRef": {"name": "not-there"}}]}]});
    let cond = |ua: &'static str, type_: &'static str, status: &'static str, reasons: &'static [&'static str]| Condition {
        ua,
        type_,
        status,
        reasons,
    };
    let template_invalid: &'static [&'static str] = &["JobTemplateInvalid"];
    vec![
        // Rejected at apply by the CRDs' schema and CEL rules.
        Case { name: "connector-ftp-base-url", objects: vec![connector("c-ftp", json!({"baseUrl": "ftp://files.example.com", "authMethods": [api_key_method()]}))], expect: Rejected("baseUrl must be an http:// or https:// URL") },
        Case { name: "connector-base-url-not-a-string", objects: vec![connector("c-num", json!({"baseUrl": 42, "authMethods": [api_key_method()]}))], expect: Rejected("expected string") },
        Case { name: "connector-method-of-two-kinds", objects: vec![connector("c-two", json!({"baseUrl": "https://x.example", "authMethods": [{"name": "m", "apiKey": {"in": "Header", "name": "X"}, "basic": {}}]}))], expect: Rejected("set exactly one of oauth2, apiKey, basic") },
        Case { name: "connector-duplicate-methods", objects: vec![connector("c-dup", json!({"baseUrl": "https://x.example", "authMethods": [api_key_method(), api_key_method()]}))], expect: Rejected("authMethods names must be unique") },
        Case { name: "connector-no-methods", objects: vec![connector("c-none", json!({"baseUrl": "https://x.example", "authMethods": []}))], expect: Rejected("authMethods needs at least one method") },
        Case { name: "connector-unknown-key-location", objects: vec![connector("c-body", json!({"baseUrl": "https://x.example", "authMethods": [{"name": "t", "apiKey": {"in": "Body", "name": "k"}}]}))], expect: Rejected("Unsupported value") },
        Case { name: "connector-relative-verification-path", objects: vec![connector("c-path", json!({"baseUrl": "https://x.example", "authMethods": [api_key_method()], "verification": {"path": "me"}}))], expect: Rejected("spec.verification.path") },
        Case { name: "connector-oauth-without-app", objects: vec![connector("c-oauth", json!({"baseUrl": "https://x.example", "authMethods": [{"name": "o", "oauth2": {"flow": "AuthorizationCode", "tokenUrl": "https://x.example/token"}}]}))], expect: Rejected("needs authorizationUrl and clientSecretRef") },
        Case { name: "connector-oauth-flow-unknown", objects: vec![connector("c-flow", json!({"baseUrl": "https://x.example", "authMethods": [{"name": "o", "oauth2": {"flow": "Implicit", "tokenUrl": "https://x.example/token"}}]}))], expect: Rejected("Unsupported value") },
        Case { name: "connection-cron-not-cron", objects: vec![connection("ec-cron-words", json!({"job": job(json!({"containers": [container()]}), json!({"schedule": "every minute"}))}))], expect: Rejected("spec.job.schedule") },
        Case { name: "connection-return-url-javascript", objects: vec![connection("ec-js", json!({"allowedReturnUrls": ["javascript:alert(1)"]}))], expect: Rejected("allowedReturnUrls must be http(s) URLs") },
        Case { name: "connection-ttl-forever", objects: vec![connection("ec-ttl", json!({"connectUrlTtl": "forever"}))], expect: Rejected("spec.connectUrlTtl") },
        Case { name: "connection-backoff-limit-huge", objects: vec![connection("ec-backoff", json!({"job": job(json!({"containers": [container()]}), json!({"backoffLimit": 1000}))}))], expect: Rejected("spec.job.backoffLimit") },
        Case { name: "connection-template-a-string", objects: vec![connection("ec-tstr", json!({"job": {"template": "run me"}}))], expect: Rejected("spec.job.template") },
        Case { name: "connection-unknown-deletion-policy", objects: vec![connection("ec-policy", json!({"secretDeletionPolicy": "Shred"}))], expect: Rejected("Unsupported value") },
        Case { name: "activation-without-connection-ref", objects: vec![json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "no-ref"}, "spec": {"user": {"id": "x"}}})], expect: Rejected("spec.connectionRef: Required value") },
        Case { name: "activation-user-id-a-number", objects: vec![json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "num-id"}, "spec": {"connectionRef": {"name": "acme-sync"}, "user": {"id": 42}}})], expect: Rejected("expected string") },
        Case { name: "activation-user-id-huge", objects: vec![activation("huge-id", "acme-sync", json!({"user": {"id": "x".repeat(10_000)}}))], expect: Rejected("spec.user.id") },
        Case { name: "activation-return-url-huge", objects: vec![activation("huge-url", "acme-sync", json!({"returnUrl": format!("https://app.example.com/{}", "a".repeat(5000))}))], expect: Rejected("spec.returnUrl") },
        Case { name: "activation-suspend-a-string", objects: vec![activation("susp-str", "acme-sync", json!({"suspend": "yes"}))], expect: Rejected("expected boolean") },
        Case { name: "activation-secret-in-another-namespace-strict", objects: vec![activation("other-ns-strict", "acme-sync", json!({"credentialsSecretRef": {"name": "foreign-key", "namespace": other_ns}}))], expect: Rejected("field not declared in schema") },
        Case { name: "activation-variables-4mib", objects: vec![activation("huge-vars", "acme-sync", json!({"variables": {"blob": "v".repeat(4 << 20)}}))], expect: Rejected("too large") },
        Case { name: "activation-name-not-dns", objects: vec![activation("Bad_Name", "acme-sync", json!({}))], expect: Rejected("RFC 1123") },
        // Accepted, then shown as a condition with a reason that names what to fix.
        Case { name: "activation-of-missing-connection", objects: keyed("no-conn", "not-there", json!({})), expect: cond("no-conn", "Ready", "False", &["ConnectionNotFound"]) },
        Case { name: "connection-of-missing-connector", objects: [vec![json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": "ec-no-connector"}, "spec": {"connectorRef": {"name": "not-there"}, "authMethod": "token"}})], keyed("no-connector", "ec-no-connector", json!({}))].concat(), expect: cond("no-connector", "Ready", "False", &["ConnectorNotFound"]) },
        Case { name: "connection-unknown-auth-method", objects: [vec![connection("ec-no-method", json!({"authMethod": "carrier-pigeon"}))], keyed("no-method", "ec-no-method", json!({}))].concat(), expect: cond("no-method", "Ready", "False", &["AuthMethodNotFound"]) },
        Case { name: "activation-missing-source-secret", objects: vec![activation("no-source", "acme-sync", json!({}))], expect: cond("no-source", "Ready", "False", &["SourceSecretNotFound"]) },
        Case { name: "activation-secret-in-another-namespace", objects: vec![activation("other-ns", "acme-sync", json!({"credentialsSecretRef": {"name": "foreign-key", "namespace": other_ns}}))], expect: cond("other-ns", "Ready", "False", &["SourceSecretNotFound"]) },
        Case { name: "source-secret-without-api-key", objects: vec![source("wrong-keys-key", json!({"token": "good-key-wrong-keys"})), activation("wrong-keys", "acme-sync", json!({}))], expect: cond("wrong-keys", "Ready", "False", &["SourceSecretInvalid"]) },
        Case { name: "source-secret-key-with-newline", objects: vec![source("newline-key", json!({"api_key": "good-key\r\nX-Injected: 1"})), activation("newline", "acme-sync", json!({}))], expect: cond("newline", "Ready", "False", &["SourceSecretInvalid", "CredentialsRejected"]) },
        Case { name: "source-secret-rejected-key", objects: vec![source("rejected-key", json!({"api_key": "bad-key-rejected"})), activation("rejected", "acme-sync", json!({}))], expect: cond("rejected", "Ready", "False", &["CredentialsRejected"]) },
        Case { name: "return-url-not-allowed", objects: keyed("evil-return", "acme-sync", json!({"returnUrl": "https://evil.example.com/steal"})), expect: cond("evil-return", "Ready", "False", &["ReturnUrlNotAllowed"]) },
        Case { name: "return-url-prefix-trick", objects: keyed("trick-return", "acme-sync", json!({"returnUrl": "https://app.example.com.evil.example/x"})), expect: cond("trick-return", "Ready", "False", &["ReturnUrlNotAllowed"]) },
        Case { name: "duplicate-user-id", objects: keyed("dup-user", "acme-sync", json!({"user": {"id": "user-healthy"}})), expect: cond("dup-user", "Ready", "False", &["DuplicateUser"]) },
        Case { name: "privileged-template", objects: [vec![connection("ec-priv", json!({"job": job(privileged, json!({}))}))], keyed("priv", "ec-priv", json!({}))].concat(), expect: cond("priv", "LastRunSucceeded", "False", template_invalid) },
        Case { name: "host-path-template", objects: [vec![connection("ec-hostpath", json!({"job": job(host_path, json!({}))}))], keyed("hostpath", "ec-hostpath", json!({}))].concat(), expect: cond("hostpath", "LastRunSucceeded", "False", template_invalid) },
        Case { name: "host-network-template", objects: [vec![connection("ec-hostnet", json!({"job": job(host_network, json!({}))}))], keyed("hostnet", "ec-hostnet", json!({}))].concat(), expect: cond("hostnet", "LastRunSucceeded", "False", template_invalid) },
        Case { name: "cron-out-of-range", objects: [vec![connection("ec-cron61", json!({"job": job(json!({"containers": [container()]}), json!({"schedule": "61 * * * *"}))}))], keyed("cron61", "ec-cron61", json!({}))].concat(), expect: cond("cron61", "LastRunSucceeded", "False", template_invalid) },
        Case { name: "invalid-time-zone", objects: [vec![connection("ec-mars", json!({"job": job(json!({"containers": [container()]}), json!({"schedule": "*/5 * * * *", "timeZone": "Mars/Olympus_Mons"}))}))], keyed("mars", "ec-mars", json!({}))].concat(), expect: cond("mars", "LastRunSucceeded", "False", template_invalid) },
        Case { name: "template-names-missing-configmap", objects: [vec![connection("ec-cm", json!({"job": job(missing_cm, json!({}))}))], keyed("cm", "ec-cm", json!({}))].concat(), expect: cond("cm", "LastRunSucceeded", "False", template_invalid) },
        Case { name: "template-containers-not-a-list", objects: [vec![connection("ec-badpod", json!({"job": {"template": {"spec": {"containers": "busybox"}}}}))], keyed("badpod", "ec-badpod", json!({}))].concat(), expect: cond("badpod", "LastRunSucceeded", "False", template_invalid) },
        Case { name: "hostile-variable-names", objects: [vec![connection("ec-vars", json!({"job": job(json!({"containers": [container()]}), json!({}))}))], keyed("vars", "ec-vars", json!({"variables": {"my var!": "x", "ünï": 1, "nested": {"a": [1, null]}, "": "empty"}}))].concat(), expect: cond("vars", "Ready", "True", &["Active"]) },
        Case { name: "activation-name-253-characters", objects: keyed(Box::leak(format!("{}.{}", "a".repeat(120), "b".repeat(119)).into_boxed_str()), "acme-sync", json!({})), expect: cond(Box::leak(format!("{}.{}", "a".repeat(120), "b".repeat(119)).into_boxed_str()), "Ready", "True", &["Active"]) },
    ]
}

/// Operator bugs this suite found and that are not fixed yet: counted as mishandled in the figures, fatal only
/// under `make faults` (`LATCHKEY_FAULTS_STRICT=1`). Empty: the two it found (a key that is no valid header
/// value retried forever; a garbage token answer shown as `TokenExpired`) are fixed.
const KNOWN_BUGS: &[&str] = &[];

fn fatal(mishandled: &[String]) -> Vec<&String> {
    let strict = figure("LATCHKEY_FAULTS_STRICT", 0) == 1;
    mishandled.iter().filter(|m| strict || !KNOWN_BUGS.iter().any(|k| m.starts_with(k))).collect()
}

fn resource(kind: &str) -> ApiResource {
    match kind {
        "Connector" => ApiResource::erase::<Connector>(&()),
        "EmbeddedConnection" => ApiResource::erase::<EmbeddedConnection>(&()),
        "UserActivation" => ApiResource::erase::<UserActivation>(&()),
        _ => ApiResource::erase::<Secret>(&()),
    }
}

/// Server-side apply of one manifest, with strict field validation (unknown fields are errors, as with
/// `kubectl apply --validate=strict`), except when `lenient`.
async fn apply(client: &Client, ns: &str, obj: &Value, lenient: bool) -> Result<(), String> {
    let ar = resource(obj["kind"].as_str().unwrap_or_default());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    // Lenient: a plain create, which drops unknown fields (what `kubectl create --validate=false` does).
    let r = if lenient {
        let o: DynamicObject = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
        api.create(&kube::api::PostParams::default(), &o).await.map(|_| ())
    } else {
        api.patch(name, &PatchParams::apply("bad-input-test").force().validation_strict(), &Patch::Apply(obj)).await.map(|_| ())
    };
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) => Err(e.message),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn malformed_and_hostile_manifests_are_refused_or_explained_while_a_healthy_activation_works() {
    let bed = bed().await;
    let client = bed.client();
    ensure_crds(&client).await;
    let p = provider().await;
    let ns = namespace(&bed, "bad-input").await;
    let other = namespace(&bed, "bad-input-other").await;
    let n = ns.name().to_string();
    api_key_connection(&client, &n, &p.url, true).await;
    put_source(&client, other.name(), "foreign-key", "good-key-foreign-0000").await;
    put_source(&client, &n, "healthy-key", "good-key-healthy-1111").await;
    let op = Operator::start(&bed, "bad_input_manifests", &[&n], &[]).await;
    apply(&client, &n, &activation("healthy", "acme-sync", json!({})), false).await.unwrap();
    let uas: Api<UserActivation> = ns.api();
    wait_for_value("the healthy activation Ready", Duration::from_secs(30), || async {
        let ua = uas.get("healthy").await.map_err(|e| e.to_string())?;
        if is_ready(&ua) { Ok(()) } else { Err(format!("{:?}", condition(&ua, "Ready"))) }
    })
    .await;

    let cases = cases(other.name());
    let mut outcome: BTreeMap<&str, String> = BTreeMap::new();
    let mut mishandled: Vec<String> = Vec::new();
    for case in &cases {
        let lenient = case.name == "activation-secret-in-another-namespace";
        let (last, before) = case.objects.split_last().unwrap();
        for o in before {
            if let Err(e) = apply(&client, &n, o, lenient).await {
                mishandled.push(format!("{}: a prerequisite was refused: {e}", case.name));
            }
        }
        let r = apply(&client, &n, last, lenient).await;
        match (&case.expect, r) {
            (Expect::Rejected(want), Err(msg)) if msg.contains(want) => {
                outcome.insert(case.name, format!("rejected: {}", msg.chars().take(160).collect::<String>()));
            }
            (Expect::Rejected(want), other) => {
                mishandled.push(format!("{}: expected a rejection containing {want:?}, got {other:?}", case.name))
            }
            (Expect::Condition { .. }, Err(msg)) => mishandled.push(format!("{}: refused at apply: {msg}", case.name)),
            (Expect::Condition { .. }, Ok(())) => {}
        }
    }
    // Conditions: all cases at once, bounded.
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut pending: Vec<&Case> = cases.iter().filter(|c| matches!(c.expect, Expect::Condition { .. })).collect();
    let mut last_seen: BTreeMap<&str, String> = BTreeMap::new();
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for c in pending {
            let Expect::Condition { ua, type_, status, reasons } = &c.expect else { continue };
            let got = uas.get_opt(ua).await.ok().flatten().and_then(|u| condition(&u, type_));
            match got {
                Some((s, r, m)) if s == *status && reasons.contains(&r.as_str()) => {
                    outcome.insert(c.name, format!("{type_}={s} {r}: {m}"));
                }
                other => {
                    last_seen.insert(c.name, format!("{other:?}"));
                    still.push(c);
                }
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for c in pending {
        mishandled.push(format!("{}: no expected condition; last seen {}", c.name, last_seen.get(c.name).cloned().unwrap_or_default()));
    }

    // The healthy activation is untouched and the operator still converges a new one.
    let healthy = uas.get("healthy").await.unwrap();
    if !is_ready(&healthy) {
        mishandled.push(format!("the healthy activation lost Ready: {:?}", condition(&healthy, "Ready")));
    }
    put_source(&client, &n, "late-key", "good-key-late-2222").await;
    apply(&client, &n, &activation("late", "acme-sync", json!({})), false).await.unwrap();
    wait_for_value("an activation created after the bad input to be Ready", Duration::from_secs(30), || async {
        let ua = uas.get("late").await.map_err(|e| e.to_string())?;
        if is_ready(&ua) { Ok(()) } else { Err(format!("{:?}", condition(&ua, "Ready"))) }
    })
    .await;
    let panics = op.log().lines().filter(|l| l.contains("panicked")).count();
    if panics > 0 {
        mishandled.push(format!("{panics} panic(s) in {}", op.log_path.display()));
    }
    let secrets: Vec<String> =
        vec!["good-key-healthy-1111".into(), "good-key-foreign-0000".into(), "good-key-late-2222".into(), "bad-key-rejected".into()];
    let leaks = leak_scan(&client, &[&n], &[op.log_path.as_path()], "healthy", &secrets).await;
    register_secrets("bad_input_manifests", "healthy", &secrets);
    for (name, o) in &outcome {
        eprintln!("  {name}: {o}");
    }
    record(
        "bad_input_manifests",
        json!({"bad_inputs_tried": cases.len(), "bad_inputs_mishandled": mishandled.len(), "mishandled": mishandled, "secret_leaks": leaks.places.len()}),
    );
    assert!(fatal(&mishandled).is_empty(), "mishandled bad input:\n{}", mishandled.join("\n"));
    assert!(leaks.places.is_empty(), "{:?}", leaks.places);
}

// ---- the connect server under forged, replayed, expired, oversized and malformed requests ----------------------

/// A client that follows no redirect and opens a connection per request: a server closes the connection after
/// refusing an oversized body unread, and a pooled connection would then fail the next request for that reason.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

#[tokio::test]
async fn forged_replayed_expired_oversized_and_malformed_requests_get_4xx_and_write_nothing() {
    use latchkey::connect::token::{Claims, Keyring};
    let bed = bed().await;
    let client = bed.client();
    ensure_crds(&client).await;
    let p = provider().await;
    let ns = namespace(&bed, "bad-http").await;
    let n = ns.name().to_string();
    api_key_connection(&client, &n, &p.url, false).await;
    // An activation waiting for its user (no source Secret): it has a connect link.
    let ua: Value = json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "awaiting"},
        "spec": {"connectionRef": {"name": "acme-sync"}, "user": {"id": "awaiting"}, "returnUrl": "https://app.example.com/done"}});
    apply(&client, &n, &ua, false).await.unwrap();
    let op = Operator::start(&bed, "bad_input_http", &[&n], &[]).await;
    let uas: Api<UserActivation> = ns.api();
    let link = wait_for_value("a connect link", Duration::from_secs(30), || async {
        let ua = uas.get("awaiting").await.map_err(|e| e.to_string())?;
        ua.status.and_then(|s| s.connect_url).ok_or_else(|| "no link yet".to_string())
    })
    .await;
    let token = link.rsplit('/').next().unwrap().to_string();
    let base = op.connect_base_url.clone();
    let ua = uas.get("awaiting").await.unwrap();
    let uid = ua.meta().uid.clone().unwrap();
    let nonce = ua.status.as_ref().and_then(|s| s.connect_nonce.clone()).unwrap();
    // The operator's own signing key (the test is admin): validly signed links that must still be refused.
    let key_secret = Api::<Secret>::namespaced(client.clone(), &n).get("latchkey-signing-key").await.unwrap();
    let keys = Keyring::new(latchkey::connect::keys_from_data(&key_secret.data.unwrap()));
    let claims = |nonce: &str, uid: &str, exp: i64| Claims {
        namespace: n.clone(),
        name: "awaiting".into(),
        uid: uid.into(),
        nonce: nonce.into(),
        exp,
    };
    let now = chrono::Utc::now().timestamp();
    let expired = keys.sign(&claims(&nonce, &uid, now - 60)).unwrap();
    let wrong_uid = keys.sign(&claims(&nonce, "00000000-0000-0000-0000-000000000000", now + 600)).unwrap();
    let stale_nonce = keys.sign(&claims("an-old-nonce", &uid, now + 600)).unwrap();
    let other_key = Keyring::new(vec![vec![7u8; 32]]).sign(&claims(&nonce, &uid, now + 600)).unwrap();
    let expired_state = keys.seal_state(&claims(&nonce, &uid, now - 60), None).unwrap();
    let stale_state = keys.seal_state(&claims("an-old-nonce", &uid, now + 600), None).unwrap();
    let (body, _sig) = token.split_once('.').unwrap();
    let tampered = format!("{body}.{}", "A".repeat(43));

    // Quiet first: the activation has converged, so any write below would come from a request.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mark = bed.audit_mark();
    let http = no_redirects();
    let form = [("api_key", "good-key-forged-3333")];
    type Req = (&'static str, reqwest::RequestBuilder, &'static [u16]);
    let big_form = "api_key=".to_string() + &"k".repeat(1 << 20);
    let table: Vec<Req> = vec![
        ("garbage token", http.get(format!("{base}/connect/not-a-token")), &[400]),
        ("forged signature", http.get(format!("{base}/connect/{tampered}")), &[400]),
        ("signed with another key", http.post(format!("{base}/connect/{other_key}")).form(&form), &[400]),
        ("expired link (GET)", http.get(format!("{base}/connect/{expired}")), &[410]),
        ("expired link (POST)", http.post(format!("{base}/connect/{expired}")).form(&form), &[410]),
        ("link of another activation uid", http.post(format!("{base}/connect/{wrong_uid}")).form(&form), &[404]),
        ("link with a spent nonce", http.post(format!("{base}/connect/{stale_nonce}")).form(&form), &[410]),
        ("oversized token", http.get(format!("{base}/connect/{}", "A".repeat(16 * 1024))), &[400, 414, 431]),
        (
            "oversized form",
            http.post(format!("{base}/connect/{token}")).header("content-type", "application/x-www-form-urlencoded").body(big_form),
            &[413],
        ),
        ("form as JSON", http.post(format!("{base}/connect/{token}")).json(&json!({"api_key": "good-key-forged-3333"})), &[415, 400, 422]),
        ("empty form", http.post(format!("{base}/connect/{token}")).form(&[("api_key", "")]), &[422]),
        (
            "malformed form encoding",
            http.post(format!("{base}/connect/{token}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("api_key=%zz%%&&=="),
            &[400, 422],
        ),
        ("PUT on a link", http.put(format!("{base}/connect/{token}")).form(&form), &[405]),
        ("callback without state", http.get(format!("{base}/oauth/callback?code=abc")), &[400]),
        ("callback with garbage state", http.get(format!("{base}/oauth/callback?code=abc&state=garbage")), &[400]),
        ("callback with a forged state", http.get(format!("{base}/oauth/callback?code=abc&state=s1.{}", "A".repeat(80))), &[400]),
        ("callback with an expired state", http.get(format!("{base}/oauth/callback?code=abc&state={expired_state}")), &[410]),
        ("callback with a spent state", http.get(format!("{base}/oauth/callback?code=abc&state={stale_state}")), &[410]),
        (
            "callback with an oversized state",
            http.get(format!("{base}/oauth/callback?code=abc&state={}", "s".repeat(8 * 1024))),
            &[400, 414, 431],
        ),
        ("callback with a repeated parameter", http.get(format!("{base}/oauth/callback?state=a&state=b")), &[400]),
        ("path traversal", http.get(format!("{base}/connect/..%2f..%2fetc%2fpasswd")), &[400, 404]),
        ("unknown path", http.get(format!("{base}/admin")), &[404]),
        ("metrics on the connect port", http.get(format!("{base}/metrics")), &[404]),
        // A GET changes nothing: a large header may be served (hyper takes up to its buffer size) or refused.
        ("huge header", http.get(format!("{base}/connect/{token}")).header("x-junk", "j".repeat(64 * 1024)), &[200, 400, 431]),
    ];
    let tried = table.len() + 2;
    let mut mishandled = Vec::new();
    for (what, req, want) in table {
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let headers_ok = r.headers().get("cache-control").is_some_and(|v| v == "no-store") || status == 431 || status == 414;
                if !want.contains(&status) {
                    mishandled.push(format!("{what}: {status}, expected {want:?}"));
                } else if !headers_ok {
                    mishandled.push(format!("{what}: no security headers"));
                }
            }
            Err(e) => mishandled.push(format!("{what}: no answer ({e})")),
        }
    }
    let writes: Vec<String> = bed
        .audit_events_since(mark)
        .iter()
        .filter(|e| e["objectRef"]["namespace"].as_str() == Some(n.as_str()))
        .map(|e| format!("{} {} {} by {}", e["verb"], e["objectRef"]["resource"], e["objectRef"]["name"], e["user"]["username"]))
        .collect();
    if !writes.is_empty() {
        mishandled.push(format!("refused requests wrote: {writes:?}"));
    }
    // Replay: the real link works once; the same POST again is refused and writes nothing more.
    let first = http.post(format!("{base}/connect/{token}")).form(&[("api_key", "good-key-real-4444")]).send().await.unwrap();
    if first.status().as_u16() != 303 {
        mishandled.push(format!("the real link: {}", first.status()));
    }
    let mark = bed.audit_mark();
    let replay = http.post(format!("{base}/connect/{token}")).form(&[("api_key", "good-key-replay-5555")]).send().await.unwrap();
    if replay.status().as_u16() != 410 {
        mishandled.push(format!("replayed link: {}, expected 410", replay.status()));
    }
    let secret = wait_for_value("the connected key in the owned Secret", Duration::from_secs(20), || async {
        Api::<Secret>::namespaced(client.clone(), &n).get("awaiting-acme-sync-credentials").await.map_err(|e| e.to_string())
    })
    .await;
    let stored = secret.data.unwrap().get("api_key").map(|b| String::from_utf8_lossy(&b.0).to_string());
    if stored.as_deref() != Some("good-key-real-4444") {
        mishandled.push("the replay changed the stored key".into());
    }
    let connect_writes = bed
        .audit_events_since(mark)
        .iter()
        .filter(|e| e["objectRef"]["resource"] == "secrets" && e["objectRef"]["namespace"].as_str() == Some(n.as_str()))
        .count();
    if connect_writes > 0 {
        mishandled.push(format!("{connect_writes} Secret writes after the replay"));
    }
    let panics = op.log().lines().filter(|l| l.contains("panicked")).count();
    if panics > 0 {
        mishandled.push(format!("{panics} panic(s) in {}", op.log_path.display()));
    }
    let secrets = vec!["good-key-real-4444".to_string(), "good-key-replay-5555".into(), "good-key-forged-3333".into()];
    let leaks = leak_scan(&client, &[&n], &[op.log_path.as_path()], "awaiting", &secrets).await;
    register_secrets("bad_input_http", "awaiting", &secrets);
    record(
        "bad_input_http",
        json!({"bad_inputs_tried": tried, "bad_inputs_mishandled": mishandled.len(), "mishandled": mishandled, "secret_leaks": leaks.places.len()}),
    );
    assert!(mishandled.is_empty(), "mishandled requests:\n{}", mishandled.join("\n"));
    assert!(leaks.places.is_empty(), "{:?}", leaks.places);
}

// ---- providers that answer badly ---------------------------------------------------------------------------

/// A provider that misbehaves on purpose, and a second "host" (127.0.0.2) that it redirects to, which must never
/// be reached.
struct BadProvider {
    url: String,
    elsewhere_hits: Arc<AtomicUsize>,
}

async fn bad_provider() -> BadProvider {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    let elsewhere_hits = Arc::new(AtomicUsize::new(0));
    let hits = elsewhere_hits.clone();
    let elsewhere = axum::Router::new().fallback(move || {
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, Ordering::SeqCst);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"access_token":"stolen","token_type":"Bearer","expires_in":3600}"#,
            )
        }
    });
    let l2 = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let other = format!("http://{}", l2.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l2, elsewhere).await });
    let json = |body: String| (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    let (o1, o2) = (other.clone(), other.clone());
    let app = axum::Router::new()
        .route(
            "/slow/me",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(120)).await;
                StatusCode::OK
            }),
        )
        .route("/redirect/me", get(move || async move { (StatusCode::FOUND, [(header::LOCATION, format!("{o1}/me"))]).into_response() }))
        .route("/token/malformed", post(move || async move { json("{\"access_token\": \"abc\", ".into()) }))
        .route("/token/missing", post(move || async move { json(r#"{"token_type":"Bearer","expires_in":3600}"#.into()) }))
        .route("/token/wrong-type", post(move || async move { json(r#"{"access_token":12345,"token_type":"Bearer"}"#.into()) }))
        .route(
            "/token/html",
            post(|| async { (StatusCode::OK, [(header::CONTENT_TYPE, "text/html")], "<html>maintenance</html>").into_response() }),
        )
        .route(
            "/token/huge",
            post(move || async move { json(format!(r#"{{"access_token":"{}","token_type":"Bearer"}}"#, "h".repeat(32 << 20))) }),
        )
        .route(
            "/token/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(120)).await;
                StatusCode::OK
            }),
        )
        .route(
            "/token/redirect",
            post(move || async move { (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, format!("{o2}/token"))]).into_response() }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    BadProvider { url, elsewhere_hits }
}

#[tokio::test]
async fn providers_answering_garbage_slowly_or_with_redirects_are_bounded_and_refused() {
    let bed = bed().await;
    let client = bed.client();
    ensure_crds(&client).await;
    let bad = bad_provider().await;
    let p = provider().await;
    let ns = namespace(&bed, "bad-provider").await;
    let n = ns.name().to_string();
    api_key_connection(&client, &n, &p.url, false).await;
    put_source(&client, &n, "healthy-key", "good-key-healthy-6666").await;
    apply(&client, &n, &activation("healthy", "acme-sync", json!({})), false).await.unwrap();
    let op = Operator::start(&bed, "bad_input_provider", &[&n], &[]).await;

    // Verification against a slow and a redirecting API (API keys); token requests answered badly (client
    // credentials, fetched by the operator with the tenant's client ID and secret).
    let mut objects: Vec<(String, &'static [&'static str])> = Vec::new();
    for (case, path, reasons) in
        [("slow-verify", "slow", &["VerificationUnavailable"][..]), ("redirect-verify", "redirect", &["CredentialsRejected"][..])]
    {
        let spec = json!({"baseUrl": format!("{}/{path}", bad.url), "authMethods": [api_key_method()], "verification": {"path": "/me"}});
        apply(&client, &n, &connector(&format!("c-{case}"), spec), false).await.unwrap();
        apply(&client, &n, &json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": format!("ec-{case}")}, "spec": {"connectorRef": {"name": format!("c-{case}")}, "authMethod": "token"}}), false).await.unwrap();
        apply(&client, &n, &source(&format!("{case}-key"), json!({"api_key": format!("good-key-{case}")})), false).await.unwrap();
        apply(&client, &n, &activation(case, &format!("ec-{case}"), json!({})), false).await.unwrap();
        objects.push((case.to_string(), reasons));
    }
    let token_cases: [(&str, &'static [&'static str]); 7] = [
        ("malformed", &["ClientSecretInvalid", "ProviderUnavailable", "CredentialsRejected"]),
        ("missing", &["ClientSecretInvalid", "ProviderUnavailable", "CredentialsRejected"]),
        ("wrong-type", &["ClientSecretInvalid", "ProviderUnavailable", "CredentialsRejected"]),
        ("html", &["ClientSecretInvalid", "ProviderUnavailable", "CredentialsRejected"]),
        ("huge", &["ClientSecretInvalid", "ProviderUnavailable", "CredentialsRejected"]),
        ("slow", &["ProviderUnavailable", "TokenExpired"]),
        ("redirect", &["ClientSecretInvalid", "ProviderUnavailable", "CredentialsRejected"]),
    ];
    for (case, reasons) in token_cases {
        let spec = json!({"baseUrl": bad.url, "authMethods": [{"name": "cc", "oauth2": {"flow": "ClientCredentials", "tokenUrl": format!("{}/token/{case}", bad.url)}}]});
        apply(&client, &n, &connector(&format!("c-tok-{case}"), spec), false).await.unwrap();
        apply(&client, &n, &json!({"apiVersion": "latchkey.dev/v1alpha1", "kind": "EmbeddedConnection", "metadata": {"name": format!("ec-tok-{case}")}, "spec": {"connectorRef": {"name": format!("c-tok-{case}")}, "authMethod": "cc"}}), false).await.unwrap();
        let name = format!("tok-{case}");
        apply(
            &client,
            &n,
            &source(&format!("{name}-key"), json!({"client_id": "tenant", "client_secret": format!("tenant-secret-{case}")})),
            false,
        )
        .await
        .unwrap();
        apply(&client, &n, &activation(&name, &format!("ec-tok-{case}"), json!({})), false).await.unwrap();
        objects.push((name, reasons));
    }
    let uas: Api<UserActivation> = ns.api();
    let started = Instant::now();
    let mut pending = objects.clone();
    let mut mishandled = Vec::new();
    let mut seen = BTreeMap::new();
    // Provider calls are bounded (10 s verification, 15 s token requests): every case must show its reason in 40 s.
    while !pending.is_empty() && started.elapsed() < Duration::from_secs(40) {
        let mut still = Vec::new();
        for (name, reasons) in pending {
            let c = uas.get(&name).await.ok().and_then(|u| condition(&u, "Ready"));
            match &c {
                Some((s, r, _)) if s == "False" && reasons.contains(&r.as_str()) => {
                    seen.insert(name.clone(), format!("{r} after {:.0}s", started.elapsed().as_secs_f64()));
                }
                _ => {
                    seen.insert(name.clone(), format!("{c:?}"));
                    still.push((name, reasons));
                }
            }
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for (name, _) in &pending {
        mishandled.push(format!("{name}: {}", seen[name]));
    }
    let hits = bad.elsewhere_hits.load(Ordering::SeqCst);
    if hits > 0 {
        mishandled.push(format!("a redirect was followed to another host ({hits} requests)"));
    }
    let healthy = uas.get("healthy").await.unwrap();
    if !is_ready(&healthy) {
        mishandled.push(format!("the healthy activation is not Ready: {:?}", condition(&healthy, "Ready")));
    }
    let panics = op.log().lines().filter(|l| l.contains("panicked")).count();
    if panics > 0 {
        mishandled.push(format!("{panics} panic(s)"));
    }
    for (k, v) in &seen {
        eprintln!("  {k}: {v}");
    }
    let secrets: Vec<String> = ["good-key-healthy-6666", "good-key-slow-verify", "good-key-redirect-verify"]
        .iter()
        .map(|s| s.to_string())
        .chain(token_cases.iter().map(|(c, _)| format!("tenant-secret-{c}")))
        .collect();
    let leaks = leak_scan(&client, &[&n], &[op.log_path.as_path()], "healthy", &secrets).await;
    register_secrets("bad_input_provider", "healthy", &secrets);
    record(
        "bad_input_provider",
        json!({"bad_inputs_tried": objects.len(), "bad_inputs_mishandled": mishandled.len(), "mishandled": mishandled, "secret_leaks": leaks.places.len()}),
    );
    assert!(fatal(&mishandled).is_empty(), "mishandled provider answers:\n{}", mishandled.join("\n"));
    assert!(leaks.places.is_empty(), "{:?}", leaks.places);
}
