//! The connect server: where end users bring their own credentials.
//!
//! - [`token`]: signed connect links and sealed OAuth `state` (verified in memory, before any I/O).
//! - [`routes`]: `GET/POST /connect/{token}` and `GET /oauth/callback`, served on every replica.
//! - [`limit`]: the per-activation rate limit.
//! - [`lookup`]: what a verified link points at, from the operator's reflector stores.
//! - [`pages`]: the HTML the user sees.
//! - [`refusals`]: refusal pages, rendered once per brand and kept.
//! - [`quiet`]: log lines a flood would repeat, at most one per connector per interval with a count.
//!
//! The signing keys live in a Secret in the operator namespace (created with one random key when absent). Every
//! data entry of that Secret is a key that verifies; the entry `signing-key` (else the first by name) signs.
pub mod limit;
pub mod lookup;
pub mod pages;
pub mod quiet;
pub mod refusals;
pub mod routes;
pub mod token;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{info, warn};

pub use token::Keyring;

/// The data key of the key that signs.
pub const SIGNING_KEY: &str = "signing-key";

/// Settings of the connect server that reconciles need too (to publish connect links).
pub struct ConnectConfig {
    /// The public URL users reach the connect server at, without a trailing slash.
    pub base_url: String,
    /// The keys that sign connect links and `state`.
    pub keys: Keyring,
}

impl ConnectConfig {
    pub fn new(base_url: &str, keys: Keyring) -> Self {
        Self { base_url: base_url.trim_end_matches('/').to_string(), keys }
    }

    /// `<base>/connect/<token>`.
    pub fn connect_url(&self, token: &str) -> String {
        format!("{}/connect/{token}", self.base_url)
    }

    /// `<base>/oauth/callback`: the OAuth `redirect_uri`.
    pub fn redirect_uri(&self) -> String {
        format!("{}/oauth/callback", self.base_url)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading or creating the signing-key Secret {namespace}/{name} failed: {source}")]
    Kube { namespace: String, name: String, source: kube::Error },
    #[error("the signing-key Secret {namespace}/{name} holds no key of at least 32 bytes")]
    Empty { namespace: String, name: String },
}

/// The keys in a signing-key Secret's data: `signing-key` first, then the others by name; each at least 32 bytes.
pub fn keys_from_data(data: &BTreeMap<String, ByteString>) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    if let Some(k) = data.get(SIGNING_KEY) {
        out.push(k.0.clone());
    }
    out.extend(data.iter().filter(|(n, _)| n.as_str() != SIGNING_KEY).map(|(_, v)| v.0.clone()));
    out.retain(|k| k.len() >= 32);
    out
}

/// Reads the signing keys, creating the Secret with one random key when it does not exist (two replicas racing
/// both end with the one that won).
pub async fn load_or_create_keys(client: &Client, namespace: &str, name: &str) -> Result<Vec<Vec<u8>>, KeyError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let err = |source| KeyError::Kube { namespace: namespace.into(), name: name.into(), source };
    for _ in 0..3 {
        if let Some(s) = api.get_opt(name).await.map_err(err)? {
            let keys = keys_from_data(&s.data.unwrap_or_default());
            if keys.is_empty() {
                return Err(KeyError::Empty { namespace: namespace.into(), name: name.into() });
            }
            return Ok(keys);
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                labels: Some(BTreeMap::from([
                    (crate::naming::NAME_LABEL.to_string(), "latchkey".to_string()),
                    (crate::naming::COMPONENT_LABEL.to_string(), "signing-key".to_string()),
                ])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(SIGNING_KEY.to_string(), ByteString(token::new_key()))])),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        match api.create(&PostParams { field_manager: Some(crate::naming::FIELD_MANAGER.into()), ..Default::default() }, &secret).await {
            Ok(_) => info!(namespace, name, "created the signing-key Secret"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(err(e)),
        }
    }
    Err(KeyError::Empty { namespace: namespace.into(), name: name.into() })
}

/// Re-reads the signing keys every minute, so that a rotation reaches every replica.
pub fn spawn_key_reloader(client: Client, namespace: String, name: String, keys: Keyring) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            match load_or_create_keys(&client, &namespace, &name).await {
                Ok(k) => keys.replace(k),
                Err(e) => warn!(error = %e, "reloading the signing keys failed; keeping the loaded ones"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signing_key_comes_first_and_short_keys_are_ignored() {
        let data = BTreeMap::from([
            ("a-old".to_string(), ByteString(vec![1; 32])),
            (SIGNING_KEY.to_string(), ByteString(vec![2; 32])),
            ("short".to_string(), ByteString(vec![3; 8])),
        ]);
        assert_eq!(keys_from_data(&data), vec![vec![2; 32], vec![1; 32]]);
    }
}
