//! `EmbeddedConnection`: a connector offered to external users with a chosen auth method and no credentials.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{Condition, DURATION_PATTERN, LocalObjectRef};

/// A connector offered to external users. It holds no credentials: each user activates it with their own
/// (a `UserActivation`), and it does not function until at least one user is active.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "latchkey.dev",
    version = "v1alpha1",
    kind = "EmbeddedConnection",
    namespaced,
    status = "EmbeddedConnectionStatus",
    shortname = "lkec",
    category = "latchkey",
    printcolumn = r#"{"name":"Connector","type":"string","jsonPath":".spec.connectorRef.name"}"#,
    printcolumn = r#"{"name":"Method","type":"string","jsonPath":".spec.authMethod"}"#,
    printcolumn = r#"{"name":"Active","type":"integer","jsonPath":".status.activeUsers"}"#,
    printcolumn = r#"{"name":"Users","type":"integer","jsonPath":".status.totalUsers"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddedConnectionSpec {
    /// The Connector, in this namespace.
    pub connector_ref: LocalObjectRef,
    /// Name of one of the connector's `authMethods`.
    #[schemars(length(min = 1, max = 63))]
    pub auth_method: String,
    /// Namespaces whose UserActivations may activate this connection, by label. Default: this namespace only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<LabelSelector>,
    /// URL prefixes that an activation's `returnUrl` must start with (no open redirect).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(u, u.startsWith('https://') || u.startsWith('http://'))").message("allowedReturnUrls must be http(s) URLs"))]
    pub allowed_return_urls: Vec<String>,
    /// How long a connect link stays valid. Default 24h; renewed when expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub connect_url_ttl: Option<String>,
    /// What happens to a tenant's credentials Secret when its activation is deleted: `Delete` (after best-effort
    /// revocation) or `Retain` (kept, not revoked).
    #[serde(default)]
    pub secret_deletion_policy: SecretDeletionPolicy,
    /// While an activation is suspended (`spec.suspend: true`, no new Jobs): `KeepFresh` (default) keeps
    /// refreshing its OAuth2 tokens, so resuming finds a valid token at once; `StopRefresh` makes no token
    /// requests until it resumes, then refreshes with the stored refresh token. Neither needs new consent.
    #[serde(default)]
    pub suspend_policy: SuspendPolicy,
    /// A JSON Schema for each activation's `spec.variables`: violations show as `Ready=False,
    /// reason=InvalidVariables`; top-level `default`s fill missing values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::preserve_object_opt")]
    pub variables_schema: Option<serde_json::Value>,
    /// The per-tenant integration Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobSpec>,
    /// How the connect page looks to this connection's users. Each field set here wins over the operator-wide
    /// brand (the chart's `connect.branding`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branding: Option<Branding>,
}

/// The organisation's brand on the connect page.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Branding {
    /// The organisation's name: shown above the form, in the page title and in the help link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub name: Option<String>,
    /// URL of the organisation's logo (an image shown 40 px high; https in production).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://\S+$"))]
    pub logo_url: Option<String>,
    /// Primary colour (buttons, links, focus rings), `#rrggbb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^#[0-9a-fA-F]{6}$"))]
    pub primary_color: Option<String>,
    /// Page background colour in light mode, `#rrggbb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^#[0-9a-fA-F]{6}$"))]
    pub background_color: Option<String>,
    /// Where users get help: an http(s) or mailto: URL, linked from every page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^(https?://|mailto:)\S+$"))]
    pub support_url: Option<String>,
}

impl Branding {
    /// This brand with `base`'s fields where this one has none.
    pub fn over(&self, base: &Branding) -> Branding {
        Branding {
            name: self.name.clone().or_else(|| base.name.clone()),
            logo_url: self.logo_url.clone().or_else(|| base.logo_url.clone()),
            primary_color: self.primary_color.clone().or_else(|| base.primary_color.clone()),
            background_color: self.background_color.clone().or_else(|| base.background_color.clone()),
            support_url: self.support_url.clone().or_else(|| base.support_url.clone()),
        }
    }
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SuspendPolicy {
    #[default]
    KeepFresh,
    StopRefresh,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SecretDeletionPolicy {
    #[default]
    Delete,
    Retain,
}

/// The integration that runs for each active user, with only that user's credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// Cron schedule (5 fields or a macro such as `@hourly`). Without it: one run when a user first becomes
    /// active and one after each change of their credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(@(yearly|annually|monthly|weekly|daily|hourly)|\S+\s+\S+\s+\S+\s+\S+\s+\S+)$"))]
    pub schedule: Option<String>,
    /// Time zone of the schedule (IANA name). Default `Etc/UTC`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// With a schedule: also run once when a user first becomes active. Default true.
    #[serde(default = "default_true")]
    pub run_on_activation: bool,
    /// Allow privileged pods, host namespaces and hostPath volumes in the template. Default false.
    #[serde(default)]
    pub allow_privileged: bool,
    /// The pod template (a `PodTemplateSpec`). Latchkey adds the credential volume, env and labels.
    #[schemars(schema_with = "super::preserve_object")]
    pub template: serde_json::Value,
    /// Retries of a failed run. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 20))]
    pub backoff_limit: Option<i32>,
    /// Deadline of one run in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    /// `Forbid` (default) skips a tick while a run is active and postpones a credential-change run; `Allow` runs
    /// concurrently.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// Further connections the Job needs from the same user (same namespace, same `user.id`): it runs only when
    /// the user has an active activation of each, and gets their credentials under `LATCHKEY_<AS>_*` and
    /// `/var/run/latchkey/<as>/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub connections: Vec<JobConnection>,
    /// Finished successful Jobs kept per user. Default 3.
    #[serde(default = "default_history")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_jobs_history_limit: i32,
    /// Finished failed Jobs kept per user. Default 3.
    #[serde(default = "default_history")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_jobs_history_limit: i32,
}

fn default_true() -> bool {
    true
}
fn default_history() -> i32 {
    3
}

/// Another connection a Job needs, and the prefix its credentials get.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobConnection {
    /// The EmbeddedConnection; `namespace` defaults to this connection's.
    pub connection_ref: JobConnectionRef,
    /// Prefix of its env vars (`LATCHKEY_<AS>_ACCESS_TOKEN`) and folder (`/var/run/latchkey/<as>/`).
    #[serde(rename = "as")]
    #[schemars(regex(pattern = r"^[A-Z][A-Z0-9_]{0,30}$"))]
    pub as_: String,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JobConnectionRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConcurrencyPolicy {
    #[default]
    Forbid,
    Allow,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddedConnectionStatus {
    /// Users whose activation is Ready.
    #[serde(default)]
    pub active_users: i32,
    /// All activations of this connection.
    #[serde(default)]
    pub total_users: i32,
    /// `Ready` is True only with at least one active user and a resolvable connector.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
