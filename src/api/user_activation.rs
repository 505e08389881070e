//! `UserActivation`: one external user's activation of an EmbeddedConnection, in the tenant's namespace.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{Condition, LocalObjectRef};

/// One external user's activation of an EmbeddedConnection with their own credentials. The operator keeps the
/// credentials in a Secret it owns in this namespace and runs this user's Jobs with only that Secret.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "latchkey.dev",
    version = "v1alpha1",
    kind = "UserActivation",
    namespaced,
    status = "UserActivationStatus",
    shortname = "lkua",
    category = "latchkey",
    printcolumn = r#"{"name":"Connection","type":"string","jsonPath":".spec.connectionRef.name"}"#,
    printcolumn = r#"{"name":"User","type":"string","jsonPath":".spec.user.id"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Expires","type":"date","jsonPath":".status.expiresAt"}"#,
    printcolumn = r#"{"name":"Last Run","type":"string","jsonPath":".status.lastRun.outcome"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct UserActivationSpec {
    /// The EmbeddedConnection this user activates; `namespace` defaults to the activation's own.
    pub connection_ref: ConnectionRef,
    /// The external user, by the application's own id (unique per connection).
    pub user: ExternalUser,
    /// A Secret in this namespace with the credentials the application supplies: `api_key`; or `username` and
    /// `password`; or `client_id` and `client_secret`; or an imported `access_token` [+ `refresh_token`,
    /// `expires_at`]. Without it the user brings credentials through `status.connectUrl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<LocalObjectRef>,
    /// Values handed to this user's Jobs as `LATCHKEY_VAR_<NAME>` and `/var/run/latchkey/variables.json`.
    #[serde(default, skip_serializing_if = "Variables::is_empty")]
    #[schemars(schema_with = "super::preserve_value_map")]
    pub variables: Variables,
    /// Values of the connector's `instanceParameters` that come from the spec (`from: Spec`), e.g. `{ shop: acme }`
    /// for `https://{shop}.myshopify.com/admin/api`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub instance: BTreeMap<String, String>,
    /// Where the connect page sends the user back; must start with one of the connection's `allowedReturnUrls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub return_url: Option<String>,
    /// Stop starting Jobs (running ones finish); credentials stay fresh.
    #[serde(default)]
    pub suspend: bool,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the EmbeddedConnection; default: the activation's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalUser {
    /// The application's id for this user or tenant.
    #[schemars(length(min = 1, max = 253))]
    pub id: String,
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the user (connect link) or for the application's Secret.
    AwaitingUser,
    Active,
    Refreshing,
    /// Credentials rejected, or a reference that does not resolve.
    Failing,
    NeedsReauthorization,
    Suspended,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserActivationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// A bearer link for the user to bring their credentials (anyone who can read this activation can use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_url_expires_at: Option<DateTime<Utc>>,
    /// The nonce the current connect link carries; completing a link rotates it (single use across replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_nonce: Option<String>,
    /// Why the last connect attempt failed (e.g. the user declined consent); cleared when credentials arrive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_error: Option<String>,
    /// The API address of this tenant: the connector's `baseUrl` with its parameters filled in (Jobs get it as
    /// `LATCHKEY_BASE_URL`; verification requests go there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Values of instance parameters that came from the connect page or the token response (not secret).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub instance_parameters: BTreeMap<String, String>,
    /// The Secret the operator owns with this user's credentials (Jobs mount it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Expiry of the OAuth2 access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_failures: u32,
    /// Generation of the credentials in the owned Secret; each change by the user or application adds one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub credential_generation: u32,
    /// Credential generation of the last run started (runs without a schedule: one per generation).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub run_generation: u32,
    /// resourceVersion of the source Secret last read (accepted or rejected), so it is read again only on change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_resource_version: Option<String>,
    /// The value of the `latchkey.dev/refresh-now` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_now_handled: Option<String>,
    /// The value of the `latchkey.dev/run-now` annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_now_handled: Option<String>,
    /// The schedule tick of the last scheduled run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<LastRun>,
    /// `Ready`, `CredentialsValid`, `LastRunSucceeded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastRun {
    /// Name of the Job.
    pub job: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<DateTime<Utc>>,
    /// `Running`, `Succeeded` or `Failed`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<bool>,
}

/// `spec.variables`: a JSON object, kept as a list sorted by name. A `BTreeMap` takes a 630-byte node for its first
/// entry; an activation has a few variables, and the activation store keeps one copy per activation. Read and
/// written exactly as the map (sorted keys; of a repeated key the last value).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Variables(Box<[(String, serde_json::Value)]>);

impl Variables {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &serde_json::Value)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// The variables as a map (for the schema check and the Job).
    pub fn to_map(&self) -> BTreeMap<String, serde_json::Value> {
        self.0.iter().cloned().collect()
    }
}

impl From<BTreeMap<String, serde_json::Value>> for Variables {
    fn from(map: BTreeMap<String, serde_json::Value>) -> Self {
        Variables(map.into_iter().collect())
    }
}

impl Serialize for Variables {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Variables {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::deserialize(d).map(Variables::from)
    }
}

impl UserActivation {
    /// Namespace of the referenced EmbeddedConnection.
    pub fn connection_namespace(&self) -> Option<String> {
        self.spec.connection_ref.namespace.clone().or_else(|| self.metadata.namespace.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn variables_read_and_write_like_the_map_they_replace() {
        let text = r#"{"zone": "eu", "org": {"id": 7}, "limit": 50, "zone": "us"}"#;
        let map: BTreeMap<String, serde_json::Value> = serde_json::from_str(text).unwrap();
        let vars: Variables = serde_json::from_str(text).unwrap();
        assert_eq!(vars.to_map(), map);
        assert_eq!(serde_json::to_string(&vars).unwrap(), serde_json::to_string(&map).unwrap());
        assert_eq!(vars.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["limit", "org", "zone"]);

        let spec = |vars: serde_json::Value| -> UserActivationSpec {
            serde_json::from_value(json!({"connectionRef": {"name": "c"}, "user": {"id": "u"}, "variables": vars})).unwrap()
        };
        let written = serde_json::to_value(spec(json!({}))).unwrap();
        assert!(written.get("variables").is_none(), "empty variables are left out, as before");
        assert_eq!(serde_json::to_value(spec(json!({"a": 1}))).unwrap()["variables"], json!({"a": 1}));
        assert!(serde_json::from_value::<Variables>(json!(["a"])).is_err());
    }
}
