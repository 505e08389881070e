//! Property tests of the connect server's input: signed connect tokens and sealed OAuth `state` (parsing never
//! panics, only what was signed verifies, any change breaks it), and the HTTP handlers themselves on a loopback
//! port (arbitrary tokens, states and query strings get a 4xx and no I/O: the kube client points nowhere).
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::Utc;
use latchkey::connect::token::{Claims, Keyring};
use latchkey::connect::{ConnectConfig, routes};
use latchkey::credentials::Sensitive;
use proptest::prelude::*;

fn keyring() -> Keyring {
    Keyring::new(vec![vec![42u8; 32], vec![7u8; 32]])
}

fn claims_strategy() -> impl Strategy<Value = Claims> {
    ("[a-z0-9-]{1,63}", "[a-z0-9.-]{1,253}", "[a-f0-9-]{36}", "[A-Za-z0-9_-]{22}", 1i64..4_000_000_000i64)
        .prop_map(|(namespace, name, uid, nonce, exp)| Claims { namespace, name, uid, nonce, exp })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_tokens_and_states_are_refused_without_panic(s in ".{0,3000}") {
        let k = keyring();
        prop_assert!(k.verify(&s, Utc::now()).is_err());
        prop_assert!(k.open_state(&s, Utc::now()).is_err());
    }

    #[test]
    fn token_shaped_garbage_is_refused(body in "[A-Za-z0-9_-]{0,400}", sig in "[A-Za-z0-9_-]{0,100}") {
        let k = keyring();
        let token = format!("{body}.{sig}");
        let state = format!("s1.{body}{sig}");
        prop_assert!(k.verify(&token, Utc::now()).is_err());
        prop_assert!(k.open_state(&state, Utc::now()).is_err());
    }

    #[test]
    fn signed_tokens_verify_and_any_change_breaks_them(c in claims_strategy(), pos in any::<prop::sample::Index>(), with in "[A-Za-z0-9_.-]") {
        let k = keyring();
        let now = chrono::DateTime::from_timestamp(c.exp - 1, 0).unwrap();
        let t = k.sign(&c).unwrap();
        prop_assert_eq!(k.verify(&t, now).unwrap(), c.clone());
        let i = pos.index(t.len());
        let mut changed = t.clone();
        changed.replace_range(i..i + 1, &with);
        if changed != t {
            // base64url without padding: the last character may carry unused bits; a change there that decodes to
            // the same bytes is the same token.
            if let Ok(v) = k.verify(&changed, now) {
                prop_assert_eq!(v, c.clone());
            }
        }
        prop_assert!(k.verify(&t, chrono::DateTime::from_timestamp(c.exp, 0).unwrap()).is_err(), "expired at exp");
        prop_assert!(Keyring::new(vec![vec![1u8; 32]]).verify(&t, now).is_err(), "another key");
    }

    #[test]
    fn sealed_states_open_and_any_change_breaks_them(c in claims_strategy(), verifier in "[A-Za-z0-9._~-]{43,128}", pos in any::<prop::sample::Index>()) {
        let k = keyring();
        let now = chrono::DateTime::from_timestamp(c.exp - 1, 0).unwrap();
        let s = k.seal_state(&c, Some(&Sensitive::new(verifier.clone()))).unwrap();
        let opened = k.open_state(&s, now).unwrap();
        prop_assert_eq!(opened.claims, c.clone());
        let opened_verifier = opened.pkce_verifier.unwrap();
        prop_assert_eq!(opened_verifier.expose(), verifier.as_str());
        prop_assert!(!s.contains(&verifier), "the verifier is sealed, not just encoded");
        let i = 3 + pos.index(s.len() - 3);
        let mut changed = s.clone();
        let repl = if &s[i..i + 1] == "A" { "B" } else { "A" };
        changed.replace_range(i..i + 1, repl);
        if let Ok(o) = k.open_state(&changed, now) {
            prop_assert_eq!(o.claims, c.clone(), "only a no-op change (unused last bits) may still open");
        }
    }
}

// ---- the handlers ---------------------------------------------------------------------------------------------

struct Server {
    base: String,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

/// The connect router on a loopback port, with stores that never become ready and a kube client that points at a
/// closed port: any request that got past the in-memory checks would fail with 503, which the properties below
/// refuse.
fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let base = rt.block_on(async {
            let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
            let client = kube::Client::try_from(config).unwrap();
            let connect = Arc::new(ConnectConfig::new("http://127.0.0.1", keyring()));
            // Stores no watch feeds: never ready, so a link that passes its checks gets 503 (not ready).
            let lookup = latchkey::connect::lookup::Lookup::new(client, latchkey::controller::Stores::unfed(), Default::default());
            let state = routes::ConnectState::new(lookup, reqwest::Client::new(), connect);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(routes::serve(listener, state, std::future::pending()));
            base
        });
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).timeout(Duration::from_secs(10)).build().unwrap();
        Server { base, rt, http }
    })
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn status_of(req: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder) -> u16 {
    let s = server();
    let r = req(&s.http, &s.base);
    s.rt.block_on(async { r.send().await.map(|r| r.status().as_u16()).unwrap_or(0) })
}

const REFUSALS: &[u16] = &[400, 404, 405, 410, 413, 414, 415, 422, 431];

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn connect_links_with_arbitrary_tokens_get_a_4xx(tok in ".{1,600}", field in ".{0,200}") {
        let get = status_of(|h, b| h.get(format!("{b}/connect/{}", enc(&tok))));
        prop_assert!(REFUSALS.contains(&get), "GET: {get}");
        let post = status_of(|h, b| h.post(format!("{b}/connect/{}", enc(&tok))).form(&[("api_key", field.as_str())]));
        prop_assert!(REFUSALS.contains(&post), "POST: {post}");
    }

    #[test]
    fn callbacks_with_arbitrary_queries_get_a_4xx(state in ".{0,600}", code in ".{0,300}", error in proptest::option::of("[a-z_]{1,40}"), raw in "[ -~]{0,300}") {
        let mut q = format!("state={}&code={}", enc(&state), enc(&code));
        if let Some(e) = &error {
            q.push_str(&format!("&error={e}"));
        }
        let st = status_of(|h, b| h.get(format!("{b}/oauth/callback?{q}")));
        prop_assert!(REFUSALS.contains(&st), "{q}: {st}");
        let st = status_of(|h, b| h.get(format!("{b}/oauth/callback?{}", raw.replace(' ', "%20").replace('#', "%23"))));
        prop_assert!(REFUSALS.contains(&st), "raw {raw}: {st}");
    }
}

#[test]
fn a_signed_link_reaches_storage_only_after_its_checks() {
    // Control for the properties above: a validly signed, unexpired link does get past the in-memory checks (and
    // then finds the stores not ready: 503), so a 4xx there really is the parser refusing.
    let c = Claims { namespace: "ns".into(), name: "ua".into(), uid: "u".into(), nonce: "n".into(), exp: Utc::now().timestamp() + 600 };
    let t = keyring().sign(&c).unwrap();
    assert_eq!(status_of(|h, b| h.get(format!("{b}/connect/{t}"))), 503);
    let expired = keyring().sign(&Claims { exp: Utc::now().timestamp() - 1, ..c }).unwrap();
    assert_eq!(status_of(|h, b| h.get(format!("{b}/connect/{expired}"))), 410);
}
