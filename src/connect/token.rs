//! Signed connect tokens and sealed OAuth `state`.
//!
//! A connect token is `base64url(claims JSON) "." base64url(HMAC-SHA256(key, "lk1." claims))`: anyone can read
//! which activation it names, nobody can forge one without a key. The OAuth `state` also carries the PKCE
//! verifier, so it is sealed (XChaCha20-Poly1305, key derived from the signing key): the provider and the
//! user's browser see an opaque string. Both are checked in memory, before any I/O: a flood of forged links
//! costs microseconds. Several keys may verify (a rotation keeps old links valid); the first signs.
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::credentials::Sensitive;

type HmacSha256 = Hmac<Sha256>;

/// Longest token or state accepted (a bound on work done for garbage input).
const MAX_LEN: usize = 2048;
const TOKEN_DOMAIN: &[u8] = b"lk1.";
const STATE_PREFIX: &str = "s1.";

/// What a connect token or `state` says: which activation, which nonce, until when.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    #[serde(rename = "ns")]
    pub namespace: String,
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "u")]
    pub uid: String,
    /// Must still equal the activation's `status.connectNonce` when the link is completed.
    #[serde(rename = "c")]
    pub nonce: String,
    /// Expiry, Unix seconds.
    #[serde(rename = "e")]
    pub exp: i64,
}

impl Claims {
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.exp, 0).unwrap_or_default()
    }
}

/// The sealed content of an OAuth `state`.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
struct StateBody {
    #[serde(flatten)]
    claims: Claims,
    /// PKCE verifier.
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    verifier: Option<String>,
    /// Instance parameters the user entered on the connect page (the token URL may depend on them).
    #[serde(rename = "p", default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    params: std::collections::BTreeMap<String, String>,
}

/// A verified `state`: its claims and the PKCE verifier it carried.
#[derive(Clone, Debug)]
pub struct State {
    pub claims: Claims,
    pub pkce_verifier: Option<Sensitive>,
    /// Instance parameters from the connect page.
    pub params: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the link is malformed")]
    Malformed,
    #[error("the link's signature does not verify")]
    BadSignature,
    #[error("the link expired")]
    Expired,
    #[error("no signing key is loaded")]
    NoKey,
}

/// A key with what every request derives from it, derived once: the HMAC state after the key (links) and the
/// AEAD keyed from it (`state`). Deriving them per request (and copying the key list) was part of a forged link's
/// cost.
struct Key {
    mac: HmacSha256,
    state: XChaCha20Poly1305,
}

impl Key {
    fn new(raw: Vec<u8>) -> Self {
        let mac = <HmacSha256 as Mac>::new_from_slice(&raw).expect("HMAC takes keys of any length");
        Key { mac, state: state_cipher(&raw) }
    }

    /// The MAC of a link's body under this key (domain-separated), to finalize (sign) or check (verify).
    fn link_mac(&self, body: &[u8]) -> HmacSha256 {
        let mut m = self.mac.clone();
        m.update(TOKEN_DOMAIN);
        m.update(body);
        m
    }
}

fn derive(keys: Vec<Vec<u8>>) -> Arc<[Key]> {
    keys.into_iter().map(Key::new).collect()
}

/// The signing keys: the first signs, any verifies. Cheap to clone; replaced whole when the Secret changes.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: Arc<RwLock<Arc<[Key]>>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} keys)", self.keys.read().map(|k| k.len()).unwrap_or(0))
    }
}

impl Keyring {
    pub fn new(keys: Vec<Vec<u8>>) -> Self {
        Self { keys: Arc::new(RwLock::new(derive(keys))) }
    }

    pub fn replace(&self, keys: Vec<Vec<u8>>) {
        let keys = derive(keys);
        if let Ok(mut k) = self.keys.write() {
            *k = keys;
        }
    }

    pub fn len(&self) -> usize {
        self.keys.read().map(|k| k.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys now (a reference count, not a copy).
    fn snapshot(&self) -> Arc<[Key]> {
        self.keys.read().map(|k| k.clone()).unwrap_or_else(|_| Arc::new([]))
    }

    /// A connect token for these claims, signed with the first key.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let keys = self.snapshot();
        let key = keys.first().ok_or(TokenError::NoKey)?;
        let body = serde_json::to_vec(claims).map_err(|_| TokenError::Malformed)?;
        let mac = key.link_mac(&body).finalize().into_bytes();
        Ok(format!("{}.{}", URL_SAFE_NO_PAD.encode(&body), URL_SAFE_NO_PAD.encode(mac)))
    }

    /// Checks a connect token's signature (constant time, any key) and expiry. No I/O.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, TokenError> {
        if token.len() > MAX_LEN {
            return Err(TokenError::Malformed);
        }
        let (body_b64, sig_b64) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let body = URL_SAFE_NO_PAD.decode(body_b64).map_err(|_| TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD.decode(sig_b64).map_err(|_| TokenError::Malformed)?;
        let keys = self.snapshot();
        if keys.is_empty() {
            return Err(TokenError::NoKey);
        }
        let ok = keys.iter().any(|k| k.link_mac(&body).verify_slice(&sig).is_ok());
        if !ok {
            return Err(TokenError::BadSignature);
        }
        let claims: Claims = serde_json::from_slice(&body).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now.timestamp() {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    /// An OAuth `state` sealing the claims and the PKCE verifier, with the first key.
    pub fn seal_state(&self, claims: &Claims, pkce_verifier: Option<&Sensitive>) -> Result<String, TokenError> {
        self.seal_state_with(claims, pkce_verifier, &Default::default())
    }

    /// Like [`Keyring::seal_state`], also sealing the instance parameters the user entered.
    pub fn seal_state_with(
        &self,
        claims: &Claims,
        pkce_verifier: Option<&Sensitive>,
        params: &std::collections::BTreeMap<String, String>,
    ) -> Result<String, TokenError> {
        let keys = self.snapshot();
        let key = keys.first().ok_or(TokenError::NoKey)?;
        let body = StateBody { claims: claims.clone(), verifier: pkce_verifier.map(|v| v.expose().to_string()), params: params.clone() };
        let plain = serde_json::to_vec(&body).map_err(|_| TokenError::Malformed)?;
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let ct = key.state.encrypt(XNonce::from_slice(&nonce), plain.as_slice()).map_err(|_| TokenError::Malformed)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(format!("{STATE_PREFIX}{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// Opens a `state` (authenticated decryption with any key) and checks its expiry. No I/O.
    pub fn open_state(&self, state: &str, now: DateTime<Utc>) -> Result<State, TokenError> {
        if state.len() > MAX_LEN {
            return Err(TokenError::Malformed);
        }
        let raw = state.strip_prefix(STATE_PREFIX).ok_or(TokenError::Malformed)?;
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| TokenError::Malformed)?;
        if bytes.len() < 24 + 16 {
            return Err(TokenError::Malformed);
        }
        let (nonce, ct) = bytes.split_at(24);
        let keys = self.snapshot();
        if keys.is_empty() {
            return Err(TokenError::NoKey);
        }
        let plain = keys.iter().find_map(|k| k.state.decrypt(XNonce::from_slice(nonce), ct).ok()).ok_or(TokenError::BadSignature)?;
        let body: StateBody = serde_json::from_slice(&plain).map_err(|_| TokenError::Malformed)?;
        if body.claims.exp <= now.timestamp() {
            return Err(TokenError::Expired);
        }
        Ok(State { claims: body.claims, pkce_verifier: body.verifier.map(Sensitive::new), params: body.params })
    }
}

/// The AEAD key for `state`: derived from the signing key, so one Secret serves both and neither key is reused
/// for two purposes.
fn state_cipher(key: &[u8]) -> XChaCha20Poly1305 {
    let mut h = Sha256::new();
    h.update(b"latchkey state v1\0");
    h.update(key);
    let k = h.finalize();
    XChaCha20Poly1305::new(&k)
}

/// A fresh random nonce for a connect link (128 bits, base64url).
pub fn new_nonce() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// A fresh 256-bit signing key.
pub fn new_key() -> Vec<u8> {
    let mut b = vec![0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b
}

/// Constant-time equality of two strings (nonces).
pub fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn claims(now: DateTime<Utc>) -> Claims {
        Claims {
            namespace: "t".into(),
            name: "acme".into(),
            uid: "u-1".into(),
            nonce: new_nonce(),
            exp: (now + Duration::hours(1)).timestamp(),
        }
    }

    #[test]
    fn a_signed_token_verifies() {
        let now = Utc::now();
        let k = Keyring::new(vec![new_key()]);
        let c = claims(now);
        let t = k.sign(&c).unwrap();
        assert_eq!(k.verify(&t, now).unwrap(), c);
    }

    #[test]
    fn forged_tampered_and_foreign_tokens_are_refused() {
        let now = Utc::now();
        let k = Keyring::new(vec![new_key()]);
        let c = claims(now);
        let t = k.sign(&c).unwrap();
        // Tampered claims, same signature.
        let (_, sig) = t.split_once('.').unwrap();
        let mut other = c.clone();
        other.name = "victim".into();
        let forged = format!("{}.{sig}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&other).unwrap()));
        assert_eq!(k.verify(&forged, now), Err(TokenError::BadSignature));
        // Garbage.
        assert_eq!(k.verify("nope", now), Err(TokenError::Malformed));
        assert_eq!(k.verify(&"a".repeat(5000), now), Err(TokenError::Malformed));
        // Another key.
        let stranger = Keyring::new(vec![new_key()]);
        assert_eq!(stranger.verify(&t, now), Err(TokenError::BadSignature));
        // A flipped signature bit.
        let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
        bytes[0] ^= 1;
        let flipped = format!("{}.{}", t.split_once('.').unwrap().0, URL_SAFE_NO_PAD.encode(bytes));
        assert_eq!(k.verify(&flipped, now), Err(TokenError::BadSignature));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let now = Utc::now();
        let k = Keyring::new(vec![new_key()]);
        let t = k.sign(&claims(now)).unwrap();
        assert_eq!(k.verify(&t, now + Duration::hours(2)), Err(TokenError::Expired));
    }

    #[test]
    fn an_old_key_still_verifies_after_rotation() {
        let now = Utc::now();
        let old = new_key();
        let k = Keyring::new(vec![old.clone()]);
        let t = k.sign(&claims(now)).unwrap();
        let s = k.seal_state(&claims(now), None).unwrap();
        k.replace(vec![new_key(), old]);
        assert!(k.verify(&t, now).is_ok());
        assert!(k.open_state(&s, now).is_ok());
    }

    #[test]
    fn state_seals_the_verifier() {
        let now = Utc::now();
        let k = Keyring::new(vec![new_key()]);
        let c = claims(now);
        let v = Sensitive::new("verifier-abcdefghijklmnopqrstuvwxyz0123456789");
        let s = k.seal_state(&c, Some(&v)).unwrap();
        assert!(!s.contains("verifier"), "the verifier is not readable");
        let opened = k.open_state(&s, now).unwrap();
        assert_eq!(opened.claims, c);
        assert_eq!(opened.pkce_verifier, Some(v));
        // Tampered, expired, foreign.
        let mut bytes = URL_SAFE_NO_PAD.decode(s.strip_prefix(STATE_PREFIX).unwrap()).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(k.open_state(&format!("{STATE_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)), now).unwrap_err(), TokenError::BadSignature);
        assert_eq!(k.open_state(&s, now + Duration::hours(2)).unwrap_err(), TokenError::Expired);
        assert_eq!(Keyring::new(vec![new_key()]).open_state(&s, now).unwrap_err(), TokenError::BadSignature);
        assert_eq!(k.open_state("s1.AAAA", now).unwrap_err(), TokenError::Malformed);
        // A connect token is not a state, and a state is not a connect token.
        let t = k.sign(&c).unwrap();
        assert!(k.open_state(&t, now).is_err());
        assert!(k.verify(&s, now).is_err());
    }

    #[test]
    fn nonces_compare_in_constant_time() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "ab"));
    }
}
