//! EmbeddedConnection: resolves its connector and auth method and counts its users. It is `Ready` only with at
//! least one active user: an embedded connection does not function before that.
use std::sync::Arc;

use chrono::Utc;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::{Context, Error, Result, status::apply_status};
use crate::api::conditions::{self, Condition, FALSE, TRUE, reasons, types};
use crate::api::{Connector, EmbeddedConnection, EmbeddedConnectionStatus};

pub async fn reconcile(ec: Arc<EmbeddedConnection>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer("EmbeddedConnection");
    let ns = ec.namespace().ok_or(Error::NoNamespace)?;
    let name = ec.name_any();
    let (mut active, mut total) = (0, 0);
    for ua in ctx.stores.relations.activations_of_connection(&ec).iter().filter_map(|r| ctx.stores.activations.get(r)) {
        if ua.spec.connection_ref.name == name && ua.connection_namespace().as_deref() == Some(ns.as_str()) {
            total += 1;
            if ua.status.as_ref().is_some_and(|s| conditions::is_true(&s.conditions, types::READY)) {
                active += 1;
            }
        }
    }
    let connector = ctx.stores.connectors.get(&ObjectRef::<Connector>::new(&ec.spec.connector_ref.name).within(&ns));
    let ready = ready_condition(&ec, connector.as_deref(), active, Utc::now());
    let current = ec.status.clone().unwrap_or_default();
    let status = EmbeddedConnectionStatus {
        active_users: active,
        total_users: total,
        conditions: conditions::merge(&current.conditions, vec![ready]),
        observed_generation: ec.metadata.generation,
    };
    apply_status(&Api::<EmbeddedConnection>::namespaced(ctx.client.clone(), &ns), &ec, ec.status.as_ref(), &status).await?;
    ctx.succeeded(ec.as_ref());
    Ok(Action::await_change())
}

/// `Ready` of a connection: its connector and method resolve and at least one user is active.
pub fn ready_condition(ec: &EmbeddedConnection, connector: Option<&Connector>, active: i32, now: chrono::DateTime<Utc>) -> Condition {
    let g = ec.metadata.generation;
    let ns = ec.namespace().unwrap_or_default();
    let Some(connector) = connector else {
        return Condition::new(
            types::READY,
            FALSE,
            reasons::CONNECTOR_NOT_FOUND,
            format!("Connector {ns}/{} does not exist", ec.spec.connector_ref.name),
            g,
            now,
        );
    };
    if connector.auth_method(&ec.spec.auth_method).is_none() {
        let names: Vec<_> = connector.spec.auth_methods.iter().map(|m| m.name.as_str()).collect();
        return Condition::new(
            types::READY,
            FALSE,
            reasons::AUTH_METHOD_NOT_FOUND,
            format!("Connector {} has no auth method {:?}; it has {}", connector.name_any(), ec.spec.auth_method, names.join(", ")),
            g,
            now,
        );
    }
    if active == 0 {
        return Condition::new(
            types::READY,
            FALSE,
            reasons::NO_ACTIVE_USERS,
            "activate at least one user: an embedded connection does not function before that",
            g,
            now,
        );
    }
    Condition::new(types::READY, TRUE, reasons::READY, format!("{active} active user(s)"), g, now)
}
