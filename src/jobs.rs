//! Building a tenant's Job (pure): the connection's pod template plus the credential contract, and the checks that
//! keep the organisation's template from escaping the tenant's namespace.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::batch::v1::{Job, JobSpec as K8sJobSpec};
use k8s_openapi::api::core::v1::{
    DownwardAPIVolumeFile, DownwardAPIVolumeSource, EnvVar, EnvVarSource, KeyToPath, ObjectFieldSelector, PodTemplateSpec,
    SecretKeySelector, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::api::UserActivation;
use crate::api::connector::AuthKind;
use crate::api::embedded_connection::JobSpec;
use crate::credentials;
use crate::naming;

pub const CREDENTIALS_DIR: &str = "/var/run/latchkey/credentials";
pub const VARIABLES_DIR: &str = "/var/run/latchkey/vars";
/// Files of the token-response fields the connector keeps (`tokenResponseFields`).
pub const TOKEN_RESPONSE_DIR: &str = "/var/run/latchkey/token-response";
const CREDENTIALS_VOLUME: &str = "latchkey-credentials";
const TOKEN_RESPONSE_VOLUME: &str = "latchkey-token-response";
const VARIABLES_VOLUME: &str = "latchkey-variables";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("job.template is not a valid PodTemplateSpec: {0}")]
    Invalid(String),
    #[error("job.template has no containers")]
    NoContainers,
    #[error("job.template asks for {0}, which the connection does not allow (set job.allowPrivileged: true to allow it)")]
    Privileged(&'static str),
}

/// What a run needs to know besides the activation and the connection's job spec.
pub struct RunInput<'a> {
    pub ua: &'a UserActivation,
    pub job: &'a JobSpec,
    pub kind: AuthKind,
    pub secret_name: &'a str,
    pub run_key: &'a str,
    pub base_url: &'a str,
    /// The connector's `tokenResponseFields` (OAuth2): given as optional env and files.
    pub token_response_fields: &'a [String],
    /// The variables with the schema's defaults filled in.
    pub variables: &'a BTreeMap<String, serde_json::Value>,
    /// The same user's other connections that the Job needs.
    pub extra: &'a [ExtraConnection],
}

/// Another connection of the same user, as a Job gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraConnection {
    /// `SALESFORCE`: env `LATCHKEY_SALESFORCE_*`, folder `/var/run/latchkey/salesforce/`.
    pub as_: String,
    pub secret_name: String,
    pub kind: AuthKind,
    pub base_url: String,
    pub token_response_fields: Vec<String>,
}

/// Parses and checks the template.
pub fn template(spec: &JobSpec) -> Result<PodTemplateSpec, TemplateError> {
    let t: PodTemplateSpec = serde_json::from_value(spec.template.clone()).map_err(|e| TemplateError::Invalid(e.to_string()))?;
    let pod = t.spec.as_ref().ok_or(TemplateError::NoContainers)?;
    if pod.containers.is_empty() {
        return Err(TemplateError::NoContainers);
    }
    if !spec.allow_privileged {
        if pod.host_network == Some(true) {
            return Err(TemplateError::Privileged("hostNetwork"));
        }
        if pod.host_pid == Some(true) {
            return Err(TemplateError::Privileged("hostPID"));
        }
        if pod.host_ipc == Some(true) {
            return Err(TemplateError::Privileged("hostIPC"));
        }
        if pod.volumes.iter().flatten().any(|v| v.host_path.is_some()) {
            return Err(TemplateError::Privileged("a hostPath volume"));
        }
        let containers = pod.containers.iter().chain(pod.init_containers.iter().flatten());
        for c in containers {
            let sc = c.security_context.as_ref();
            if sc.and_then(|s| s.privileged) == Some(true) {
                return Err(TemplateError::Privileged("a privileged container"));
            }
            if sc.and_then(|s| s.allow_privilege_escalation) == Some(true) {
                return Err(TemplateError::Privileged("allowPrivilegeEscalation"));
            }
            if sc.and_then(|s| s.capabilities.as_ref()).and_then(|c| c.add.as_ref()).is_some_and(|a| !a.is_empty()) {
                return Err(TemplateError::Privileged("added capabilities"));
            }
        }
    }
    Ok(t)
}

/// ConfigMaps and Secrets the template names (volumes, env, envFrom, image pull secrets): they must exist in the
/// tenant's namespace.
pub fn referenced_objects(t: &PodTemplateSpec) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut cms, mut secrets) = (BTreeSet::new(), BTreeSet::new());
    let Some(pod) = &t.spec else { return (cms, secrets) };
    for v in pod.volumes.iter().flatten() {
        if let Some(c) = &v.config_map
            && c.optional != Some(true)
        {
            cms.insert(c.name.clone());
        }
        if let Some(s) = &v.secret
            && s.optional != Some(true)
        {
            secrets.extend(s.secret_name.clone());
        }
    }
    for s in pod.image_pull_secrets.iter().flatten() {
        secrets.insert(s.name.clone());
    }
    for c in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
        for e in c.env.iter().flatten() {
            if let Some(src) = &e.value_from {
                if let Some(r) = src.config_map_key_ref.as_ref().filter(|r| r.optional != Some(true)) {
                    cms.insert(r.name.clone());
                }
                if let Some(r) = src.secret_key_ref.as_ref().filter(|r| r.optional != Some(true)) {
                    secrets.insert(r.name.clone());
                }
            }
        }
        for f in c.env_from.iter().flatten() {
            if let Some(r) = f.config_map_ref.as_ref().filter(|r| r.optional != Some(true)) {
                cms.insert(r.name.clone());
            }
            if let Some(r) = f.secret_ref.as_ref().filter(|r| r.optional != Some(true)) {
                secrets.insert(r.name.clone());
            }
        }
    }
    (cms, secrets)
}

/// `LATCHKEY_VAR_<UPPER_SNAKE>`: strings as they are, other values as JSON.
pub fn variable_env(vars: &BTreeMap<String, serde_json::Value>) -> Vec<EnvVar> {
    vars.iter()
        .map(|(k, v)| {
            let name: String = k.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
            let value = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            EnvVar { name: format!("LATCHKEY_VAR_{name}"), value: Some(value), value_from: None }
        })
        .collect()
}

/// The Job for one run of one tenant.
pub fn build(input: &RunInput<'_>, mut template: PodTemplateSpec) -> Job {
    let ua = input.ua;
    let labels = naming::activation_labels(ua, "job");
    let usable = credentials::job_keys(input.kind);
    let variables_json = serde_json::to_string(input.variables).unwrap_or_else(|_| "{}".into());

    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels.get_or_insert_with(BTreeMap::new).extend(labels.clone());
    meta.annotations.get_or_insert_with(BTreeMap::new).insert(naming::VARIABLES_ANNOTATION.into(), variables_json);
    let pod = template.spec.get_or_insert_with(Default::default);
    if pod.restart_policy.is_none() || pod.restart_policy.as_deref() == Some("Always") {
        pod.restart_policy = Some("Never".into());
    }
    if pod.automount_service_account_token.is_none() {
        pod.automount_service_account_token = Some(false);
    }
    // A method without credentials has no Secret: no credentials volume, directory or env.
    let has_credentials = input.kind != AuthKind::None;
    let mut volumes = pod.volumes.take().unwrap_or_default();
    if has_credentials {
        volumes.push(credential_volume(CREDENTIALS_VOLUME, input.secret_name, &usable));
    }
    volumes.push(Volume {
        name: VARIABLES_VOLUME.into(),
        downward_api: Some(DownwardAPIVolumeSource {
            items: Some(vec![DownwardAPIVolumeFile {
                path: "variables.json".into(),
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.annotations['{}']", naming::VARIABLES_ANNOTATION),
                    api_version: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut env = vec![
        EnvVar { name: "LATCHKEY_BASE_URL".into(), value: Some(input.base_url.into()), value_from: None },
        EnvVar { name: "LATCHKEY_USER_ID".into(), value: Some(ua.spec.user.id.clone()), value_from: None },
        EnvVar { name: "LATCHKEY_ACTIVATION".into(), value: Some(ua.name_any()), value_from: None },
        EnvVar { name: "LATCHKEY_VARIABLES_FILE".into(), value: Some(format!("{VARIABLES_DIR}/variables.json")), value_from: None },
    ];
    if has_credentials {
        env.push(EnvVar { name: "LATCHKEY_CREDENTIALS_DIR".into(), value: Some(CREDENTIALS_DIR.into()), value_from: None });
    }
    env.extend(credential_env(input.secret_name, &usable, None));
    env.extend(token_response_env(input.secret_name, input.token_response_fields, None));
    env.extend(variable_env(input.variables));
    let mut mounts =
        vec![VolumeMount { name: VARIABLES_VOLUME.into(), mount_path: VARIABLES_DIR.into(), read_only: Some(true), ..Default::default() }];
    if has_credentials {
        mounts.insert(
            0,
            VolumeMount {
                name: CREDENTIALS_VOLUME.into(),
                mount_path: CREDENTIALS_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        );
    }
    if !input.token_response_fields.is_empty() {
        // Optional: a provider may leave a field out of a response, and a missing key must not stop the pod.
        volumes.push(Volume {
            name: TOKEN_RESPONSE_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(input.secret_name.into()),
                items: Some(
                    input
                        .token_response_fields
                        .iter()
                        .map(|f| KeyToPath { key: format!("{}{f}", credentials::keys::TOKEN_RESPONSE_PREFIX), path: f.clone(), mode: None })
                        .collect(),
                ),
                default_mode: Some(0o440),
                optional: Some(true),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: TOKEN_RESPONSE_VOLUME.into(),
            mount_path: TOKEN_RESPONSE_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    for x in input.extra {
        let lower = x.as_.to_ascii_lowercase().replace('_', "-");
        let volume = format!("latchkey-{lower}");
        let keys = credentials::job_keys(x.kind);
        if x.kind != AuthKind::None {
            volumes.push(credential_volume(&volume, &x.secret_name, &keys));
            mounts.push(VolumeMount {
                name: volume,
                mount_path: format!("/var/run/latchkey/{lower}"),
                read_only: Some(true),
                ..Default::default()
            });
        }
        env.push(EnvVar { name: format!("LATCHKEY_{}_BASE_URL", x.as_), value: Some(x.base_url.clone()), value_from: None });
        env.extend(credential_env(&x.secret_name, &keys, Some(&x.as_)));
        env.extend(token_response_env(&x.secret_name, &x.token_response_fields, Some(&x.as_)));
    }
    pod.volumes = Some(volumes);
    for c in pod.containers.iter_mut().chain(pod.init_containers.iter_mut().flatten()) {
        let e = c.env.get_or_insert_with(Vec::new);
        e.retain(|v| !v.name.starts_with("LATCHKEY_"));
        e.extend(env.iter().cloned());
        c.volume_mounts.get_or_insert_with(Vec::new).extend(mounts.iter().cloned());
    }

    let mut job_labels = labels;
    job_labels.insert(naming::COMPONENT_LABEL.into(), "job".into());
    Job {
        metadata: ObjectMeta {
            name: Some(naming::job_name(ua, input.run_key)),
            namespace: ua.namespace(),
            labels: Some(job_labels),
            annotations: Some(BTreeMap::from([(naming::RUN_KEY_ANNOTATION.into(), input.run_key.into())])),
            owner_references: Some(vec![naming::owner_ref(ua)]),
            ..Default::default()
        },
        spec: Some(K8sJobSpec {
            template,
            backoff_limit: Some(input.job.backoff_limit.unwrap_or(2)),
            active_deadline_seconds: input.job.active_deadline_seconds,
            ..Default::default()
        }),
        status: None,
    }
}

/// A Secret volume with only the usable keys of a credential: never the refresh token or a client secret.
fn credential_volume(name: &str, secret: &str, keys: &[(&'static str, &'static str)]) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(keys.iter().map(|(k, _)| KeyToPath { key: (*k).into(), path: (*k).into(), mode: None }).collect()),
            default_mode: Some(0o440),
            // A listed key the Secret lacks fails the mount unless the volume is optional: an OAuth grant may come
            // without token_type or expires_at. The required keys still fail fast through their env vars.
            optional: Some(keys.iter().any(|(k, _)| !required_key(k))),
        }),
        ..Default::default()
    }
}

/// A key every credential of its kind has; the others (token_type, expires_at) an OAuth grant may lack.
fn required_key(key: &str) -> bool {
    matches!(key, credentials::keys::API_KEY | credentials::keys::ACCESS_TOKEN | credentials::keys::USERNAME | credentials::keys::PASSWORD)
}

/// `LATCHKEY_[<AS>_]<KEY>` env vars from the credential's Secret. Keys an OAuth grant may lack (token_type,
/// expires_at) are optional.
fn credential_env(secret: &str, keys: &[(&'static str, &'static str)], prefix: Option<&str>) -> Vec<EnvVar> {
    keys.iter()
        .map(|(key, var)| {
            let required = required_key(key);
            let name = match prefix {
                Some(p) => var.replacen("LATCHKEY_", &format!("LATCHKEY_{p}_"), 1),
                None => (*var).to_string(),
            };
            EnvVar {
                name,
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: (*key).into(), optional: Some(!required) }),
                    ..Default::default()
                }),
            }
        })
        .collect()
}

/// `LATCHKEY_[<AS>_]TOKEN_RESPONSE_<FIELD>` from the credential's Secret, optional (a response may omit a field).
fn token_response_env(secret: &str, fields: &[String], prefix: Option<&str>) -> Vec<EnvVar> {
    fields
        .iter()
        .map(|f| {
            let var = credentials::token_response_env(f);
            EnvVar {
                name: match prefix {
                    Some(p) => var.replacen("LATCHKEY_", &format!("LATCHKEY_{p}_"), 1),
                    None => var,
                },
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.into(),
                        key: format!("{}{f}", credentials::keys::TOKEN_RESPONSE_PREFIX),
                        optional: Some(true),
                    }),
                    ..Default::default()
                }),
            }
        })
        .collect()
}

/// The outcome of a Job from its status (see [`crate::job_record::JobRecord::outcome`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Running,
    Succeeded,
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ua() -> UserActivation {
        serde_json::from_value(json!({
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation",
            "metadata": {"name": "acme", "namespace": "tenant-a", "uid": "uid-1"},
            "spec": {"connectionRef": {"name": "sync", "namespace": "int"}, "user": {"id": "acme-42"},
                     "variables": {"org": "acme", "limit": 50}}
        }))
        .unwrap()
    }

    fn spec(template: serde_json::Value) -> JobSpec {
        serde_json::from_value(json!({ "template": template })).unwrap()
    }

    fn basic_template() -> serde_json::Value {
        json!({"spec": {"containers": [{"name": "sync", "image": "busybox"}]}})
    }

    /// The variables of [`ua`], as the reconcile hands them over.
    static VARIABLES: std::sync::LazyLock<BTreeMap<String, serde_json::Value>> = std::sync::LazyLock::new(|| ua().spec.variables.to_map());

    /// The run input most tests use: the activation's own Secret, no token-response fields, no further connections.
    fn run_input<'a>(ua: &'a UserActivation, js: &'a JobSpec, kind: AuthKind) -> RunInput<'a> {
        RunInput {
            ua,
            job: js,
            kind,
            secret_name: "acme-sync-credentials",
            run_key: "cred-1",
            base_url: "https://api.example.com",
            token_response_fields: &[],
            variables: &VARIABLES,
            extra: &[],
        }
    }

    #[test]
    fn job_gets_only_usable_keys_of_its_own_secret() {
        let ua = ua();
        let js = spec(basic_template());
        let extra = vec![ExtraConnection {
            as_: "SALESFORCE".into(),
            secret_name: "acme-sf-credentials".into(),
            kind: AuthKind::OAuth2AuthorizationCode,
            base_url: "https://acme.my.salesforce.com".into(),
            token_response_fields: vec!["instance_url".into()],
        }];
        let with_extra =
            build(&RunInput { extra: &extra, ..run_input(&ua, &js, AuthKind::OAuth2AuthorizationCode) }, template(&js).unwrap());
        let pod2 = with_extra.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let env2: Vec<_> = pod2.containers[0].env.iter().flatten().map(|e| e.name.clone()).collect();
        assert!(
            env2.contains(&"LATCHKEY_SALESFORCE_ACCESS_TOKEN".to_string())
                && env2.contains(&"LATCHKEY_SALESFORCE_BASE_URL".to_string())
                && env2.contains(&"LATCHKEY_SALESFORCE_TOKEN_RESPONSE_INSTANCE_URL".to_string()),
            "{env2:?}"
        );
        let sf = pod2.volumes.as_ref().unwrap().iter().find(|v| v.name == "latchkey-salesforce").unwrap();
        assert!(!sf.secret.as_ref().unwrap().items.as_ref().unwrap().iter().any(|i| i.key == "refresh_token"));
        assert!(pod2.containers[0].volume_mounts.as_ref().unwrap().iter().any(|m| m.mount_path == "/var/run/latchkey/salesforce"));
        let input = run_input(&ua, &js, AuthKind::OAuth2AuthorizationCode);
        let job = build(&input, template(&js).unwrap());
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let secret_vol = pod.volumes.as_ref().unwrap().iter().find_map(|v| v.secret.as_ref()).unwrap();
        assert_eq!(secret_vol.secret_name.as_deref(), Some("acme-sync-credentials"));
        let keys: Vec<_> = secret_vol.items.as_ref().unwrap().iter().map(|i| i.key.as_str()).collect();
        assert!(!keys.contains(&"refresh_token") && keys.contains(&"access_token"));
        let env = pod.containers[0].env.as_ref().unwrap();
        let names: Vec<_> = env.iter().map(|e| e.name.as_str()).collect();
        assert!(names.contains(&"LATCHKEY_ACCESS_TOKEN") && names.contains(&"LATCHKEY_VAR_ORG") && names.contains(&"LATCHKEY_VAR_LIMIT"));
        assert!(env.iter().filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref()).all(|r| r.name == "acme-sync-credentials"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(job.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-1");
        assert_eq!(env.iter().find(|e| e.name == "LATCHKEY_VAR_LIMIT").unwrap().value.as_deref(), Some("50"));
    }

    #[test]
    fn token_response_fields_reach_the_job_as_optional_env_and_files() {
        let ua = ua();
        let js = spec(basic_template());
        let fields = vec!["instance_url".to_string()];
        let input = RunInput {
            base_url: "https://acme.my.salesforce.com/services/data/v62.0",
            token_response_fields: &fields,
            ..run_input(&ua, &js, AuthKind::OAuth2AuthorizationCode)
        };
        let job = build(&input, template(&js).unwrap());
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let env = pod.containers[0].env.as_ref().unwrap();
        let var = env.iter().find(|e| e.name == "LATCHKEY_TOKEN_RESPONSE_INSTANCE_URL").expect("the field's env var");
        let r = var.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str(), r.optional), ("acme-sync-credentials", "token_response.instance_url", Some(true)));
        let vol = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == "latchkey-token-response").unwrap().secret.as_ref().unwrap();
        assert_eq!(vol.optional, Some(true));
        assert_eq!(vol.items.as_ref().unwrap()[0].path, "instance_url");
        assert!(pod.containers[0].volume_mounts.as_ref().unwrap().iter().any(|m| m.mount_path == TOKEN_RESPONSE_DIR));
    }

    #[test]
    fn an_oauth_grant_without_token_type_or_expiry_still_mounts_but_an_api_key_must_be_there() {
        let ua = ua();
        let js = spec(basic_template());
        let volume_optional = |kind| {
            let input = run_input(&ua, &js, kind);
            let job = build(&input, template(&js).unwrap());
            let pod = job.spec.unwrap().template.spec.unwrap();
            let vols = pod.volumes.unwrap();
            let creds = vols.iter().find(|v| v.secret.as_ref().is_some_and(|s| s.secret_name.as_deref() == Some("acme-sync-credentials")));
            let env = pod.containers[0].env.clone().unwrap();
            let token_env = env.iter().find(|e| e.name == "LATCHKEY_ACCESS_TOKEN" || e.name == "LATCHKEY_API_KEY").cloned();
            (creds.unwrap().secret.as_ref().unwrap().optional, token_env.unwrap().value_from.unwrap().secret_key_ref.unwrap().optional)
        };
        // token_type/expires_at may be missing: the volume tolerates it, the access token's env var does not.
        assert_eq!(volume_optional(AuthKind::OAuth2AuthorizationCode), (Some(true), Some(false)));
        assert_eq!(volume_optional(AuthKind::ApiKey), (Some(false), Some(false)));
    }

    #[test]
    fn a_method_without_credentials_gets_no_secret_in_its_job() {
        let ua = ua();
        let js = spec(basic_template());
        let input = RunInput { secret_name: "", ..run_input(&ua, &js, AuthKind::None) };
        let job = build(&input, template(&js).unwrap());
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert!(pod.volumes.iter().flatten().all(|v| v.secret.is_none()), "no Secret volume: {:?}", pod.volumes);
        let env = pod.containers[0].env.as_ref().unwrap();
        assert!(env.iter().all(|e| e.value_from.is_none()), "no env from a Secret: {env:?}");
        let names: Vec<_> = env.iter().map(|e| e.name.as_str()).collect();
        assert!(names.contains(&"LATCHKEY_BASE_URL") && names.contains(&"LATCHKEY_USER_ID") && names.contains(&"LATCHKEY_VAR_ORG"));
        assert!(!names.contains(&"LATCHKEY_CREDENTIALS_DIR"), "{names:?}");
        let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
        assert!(mounts.iter().all(|m| m.mount_path != CREDENTIALS_DIR), "{mounts:?}");
    }

    #[test]
    fn privileged_templates_are_refused_unless_allowed() {
        let t = json!({"spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "x"}]}});
        assert_eq!(template(&spec(t.clone())), Err(TemplateError::Privileged("hostNetwork")));
        let mut allowed = spec(t);
        allowed.allow_privileged = true;
        assert!(template(&allowed).is_ok());
        let t = json!({"spec": {"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": true}}]}});
        assert!(matches!(template(&spec(t)), Err(TemplateError::Privileged(_))));
        let t = json!({"spec": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}], "containers": [{"name": "c", "image": "x"}]}});
        assert!(matches!(template(&spec(t)), Err(TemplateError::Privileged(_))));
        assert_eq!(template(&spec(json!({"spec": {"containers": []}}))), Err(TemplateError::NoContainers));
    }

    #[test]
    fn referenced_objects_found() {
        let t = json!({"spec": {
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [{"name": "cfg", "configMap": {"name": "settings"}}],
            "containers": [{"name": "c", "image": "x", "envFrom": [{"secretRef": {"name": "extra"}}],
                            "env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "opt", "key": "k", "optional": true}}}]}]}});
        let (cms, secrets) = referenced_objects(&template(&spec(t)).unwrap());
        assert_eq!(cms.into_iter().collect::<Vec<_>>(), vec!["settings"]);
        assert_eq!(secrets.into_iter().collect::<Vec<_>>(), vec!["extra", "pull"]);
    }
}
