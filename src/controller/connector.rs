//! Connector: resolves its OAuth client Secret; `Ready` names what is missing.
use std::sync::Arc;

use chrono::Utc;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::{Context, Error, Result, status::apply_status};
use crate::api::conditions::{self, Condition, FALSE, TRUE, reasons, types};
use crate::api::{Connector, ConnectorStatus};
use crate::credentials::keys;
use crate::naming;

/// The name of the Secret holding the organisation's OAuth app, if a method has one.
pub fn client_secret_name(c: &Connector) -> Option<&str> {
    c.spec.auth_methods.iter().find_map(|m| m.oauth2.as_ref()?.client_secret_ref.as_ref().map(|r| r.name.as_str()))
}

pub async fn reconcile(c: Arc<Connector>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer("Connector");
    let ns = c.namespace().ok_or(Error::NoNamespace)?;
    let generation = c.metadata.generation;
    let now = Utc::now();
    let ready = match (crate::providers::problem(&c.spec), client_secret_name(&c)) {
        (Some((reason, message)), _) => Condition::new(types::READY, FALSE, reason, message, generation, now),
        (None, None) => Condition::new(types::READY, TRUE, reasons::READY, "all references resolve", generation, now),
        (None, Some(name)) => {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
            match api.get_opt(name).await.map_err(Error::kube("reading the OAuth client Secret"))? {
                None => Condition::new(
                    types::READY,
                    FALSE,
                    reasons::CLIENT_SECRET_NOT_FOUND,
                    format!("Secret {ns}/{name} (the organisation's OAuth app, keys client_id and client_secret) does not exist"),
                    generation,
                    now,
                ),
                Some(s) => {
                    label_source(&api, &s).await?;
                    let data = s.data.unwrap_or_default();
                    let missing: Vec<_> = [keys::CLIENT_ID, keys::CLIENT_SECRET]
                        .into_iter()
                        .filter(|k| data.get(*k).is_none_or(|v| v.0.is_empty()))
                        .collect();
                    if missing.is_empty() {
                        Condition::new(types::READY, TRUE, reasons::READY, "all references resolve", generation, now)
                    } else {
                        Condition::new(
                            types::READY,
                            FALSE,
                            reasons::CLIENT_SECRET_INVALID,
                            format!("Secret {ns}/{name} lacks key(s) {}", missing.join(", ")),
                            generation,
                            now,
                        )
                    }
                }
            }
        }
    };
    let current = c.status.clone().unwrap_or_default();
    let status = ConnectorStatus { conditions: conditions::merge(&current.conditions, vec![ready]), observed_generation: generation };
    apply_status(&Api::<Connector>::namespaced(ctx.client.clone(), &ns), &c, c.status.as_ref(), &status).await?;
    ctx.succeeded(c.as_ref());
    Ok(Action::await_change())
}

/// Adds `latchkey.dev/source=true` to a referenced Secret that lacks it, so that its changes are watched (by
/// label, metadata only). Uses its own field manager and touches nothing else.
pub async fn label_source(api: &Api<Secret>, s: &Secret) -> Result<Option<Secret>> {
    if s.labels().get(naming::SOURCE_LABEL).map(String::as_str) == Some("true") {
        return Ok(None);
    }
    let patch = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": s.name_any(), "labels": { naming::SOURCE_LABEL: "true" } },
    });
    let updated = api
        .patch(&s.name_any(), &PatchParams::apply(naming::SOURCE_LABEL_MANAGER), &Patch::Apply(&patch))
        .await
        .map_err(Error::kube("labelling a referenced Secret"))?;
    Ok(Some(updated))
}
