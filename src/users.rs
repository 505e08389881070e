//! `latchkey users`: a table of every user of a connection across namespaces.
use chrono::{DateTime, Utc};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use crate::api::UserActivation;
use crate::api::conditions::{self, types};
use crate::api::user_activation::Phase;
use crate::config::UsersArgs;

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// Redacted: a proxy URL in it may carry credentials.
    #[error("no Kubernetes configuration: {0}")]
    Config(String),
    #[error("listing UserActivations failed: {0}")]
    List(#[source] kube::Error),
}

pub async fn run(args: UsersArgs) -> Result<String, UsersError> {
    let config = crate::outbound::kube_config().await.map_err(|e| UsersError::Config(crate::outbound::redact(&e.to_string())))?;
    let namespace = args.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| UsersError::Config(crate::outbound::redact(&e.to_string())))?;
    let all = Api::<UserActivation>::all(client).list(&ListParams::default()).await.map_err(UsersError::List)?;
    let mine: Vec<_> = all
        .items
        .into_iter()
        .filter(|ua| ua.spec.connection_ref.name == args.connection && ua.connection_namespace().as_deref() == Some(namespace.as_str()))
        .collect();
    Ok(table(&mine, Utc::now()))
}

/// The table, one row per activation, sorted by namespace and name.
pub fn table(activations: &[UserActivation], now: DateTime<Utc>) -> String {
    let mut rows: Vec<[String; 8]> = activations
        .iter()
        .map(|ua| {
            let st = ua.status.clone().unwrap_or_default();
            let ready = conditions::find(&st.conditions, types::READY)
                .map(|c| format!("{} ({})", c.status, c.reason))
                .unwrap_or_else(|| "-".into());
            let expires = st.expires_at.map(|e| human(e - now)).unwrap_or_else(|| "-".into());
            let last_run = st.last_run.map(|r| r.outcome).unwrap_or_else(|| "-".into());
            let to_connect = matches!(st.phase, Some(Phase::AwaitingUser) | Some(Phase::NeedsReauthorization));
            let link = if to_connect { st.connect_url.unwrap_or_else(|| "-".into()) } else { "-".into() };
            [
                ua.namespace().unwrap_or_default(),
                ua.name_any(),
                ua.spec.user.id.clone(),
                st.phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "-".into()),
                ready,
                expires,
                last_run,
                link,
            ]
        })
        .collect();
    rows.sort();
    let header = ["NAMESPACE", "NAME", "USER", "PHASE", "READY", "EXPIRES IN", "LAST RUN", "CONNECT URL"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    for r in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> =
            r.iter().enumerate().map(|(i, c)| if i + 1 == r.len() { c.clone() } else { format!("{c:<w$}", w = widths[i]) }).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn human(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    match s {
        s if s < 0 => "expired".into(),
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_show_phase_expiry_and_links_only_for_those_to_connect() {
        let now = DateTime::parse_from_rfc3339("2026-11-26T00:00:00Z").unwrap().with_timezone(&Utc);
        let a: UserActivation = serde_json::from_value(json!({
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "acme", "namespace": "t-a"},
            "spec": {"connectionRef": {"name": "c", "namespace": "i"}, "user": {"id": "acme-42"}},
            "status": {"phase": "Active", "expiresAt": "2026-11-26T01:00:00Z", "connectUrl": "https://x/c/old",
                       "lastRun": {"job": "j", "outcome": "Succeeded"},
                       "conditions": [{"type": "Ready", "status": "True", "reason": "Active", "lastTransitionTime": "2026-11-25T00:00:00Z"}]}
        }))
        .unwrap();
        let b: UserActivation = serde_json::from_value(json!({
            "apiVersion": "latchkey.dev/v1alpha1", "kind": "UserActivation", "metadata": {"name": "globex", "namespace": "t-b"},
            "spec": {"connectionRef": {"name": "c", "namespace": "i"}, "user": {"id": "g-1"}},
            "status": {"phase": "AwaitingUser", "connectUrl": "https://x/c/new"}
        }))
        .unwrap();
        let t = table(&[b, a], now);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE"));
        assert!(
            lines[1].starts_with("t-a")
                && lines[1].contains("60m")
                && lines[1].contains("Succeeded")
                && !lines[1].contains("https://x/c/old")
        );
        assert!(lines[2].starts_with("t-b") && lines[2].ends_with("https://x/c/new"));
    }
}
