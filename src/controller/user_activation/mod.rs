//! UserActivation: one tenant's credentials into a Secret the operator owns, verified, and that tenant's Jobs.
//!
//! Each reconcile observes (stores first, a GET only where a store cannot serve), decides with the pure functions
//! of [`decide`], applies only the differences, and writes status once, when it changed.
pub mod decide;
pub mod oauth;
pub mod source;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info};

use super::{Context, Error, Result, status::apply_status_checked};
use crate::api::conditions::{self, Condition, FALSE, TRUE, UNKNOWN, reasons, types};
use crate::api::connector::AuthKind;
use crate::api::embedded_connection::SecretDeletionPolicy;
use crate::api::user_activation::{LastRun, Phase};
use crate::api::{Connector, EmbeddedConnection, UserActivation, UserActivationStatus};
use crate::credentials::{self, Credential, verify};
use crate::instance;
use crate::job_record::JobRecord;
use crate::jobs;
use crate::naming::{self, DATA_HASH_ANNOTATION, GENERATION_ANNOTATION, SOURCE_VERSION_ANNOTATION};
use crate::secret_record::SecretRecord;
use decide::{Admitted, Gate, Run};

/// The credential generation of an activation whose auth method takes no credentials: constant, so its first
/// run happens once and nothing later counts as a credential change.
const NO_CREDENTIALS_GENERATION: u32 = 1;

/// Where the credentials stand after the credentials step.
enum Creds {
    /// In the owned Secret, at this generation.
    Stored { generation: u32, verified: Option<bool> },
    /// Nothing yet: the user has to bring them (connect link) or the application has to write its Secret.
    Awaiting { reason: &'static str, message: String },
    /// The application's Secret is unusable, or the provider rejected the credential, or a foreign Secret holds
    /// the name: Ready=False with this reason.
    Unusable { reason: &'static str, message: String, rejected: bool },
    /// The verification request failed for a reason that may pass (network, 429, 5xx): retried with backoff.
    Unverified { message: String, stored_generation: Option<u32>, retry_in: Option<Duration> },
}

pub async fn reconcile(ua: Arc<UserActivation>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer("UserActivation");
    if ua.metadata.deletion_timestamp.is_some() {
        return cleanup(&ua, &ctx).await;
    }
    // The stores do not show this process's last writes for it yet: their watch events trigger the next reconcile.
    if ctx.expect.pending(&ua, &ctx.stores) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let ns = ua.namespace().ok_or(Error::NoNamespace)?;
    let now = Utc::now();
    let generation = ua.metadata.generation;
    let prev = ua.status.clone().unwrap_or_default();
    let mut status = UserActivationStatus { observed_generation: generation, ..prev.clone() };
    let mut desired: Vec<Condition> = Vec::new();
    let mut requeue: Option<Duration> = None;
    let mut retry_after: Option<Duration> = None;
    // A Job this reconcile created, not yet in the store: reported as running right away (one status write less).
    let mut started_job: Option<String> = None;

    // Observe references from the stores.
    let conn_ns = ua.connection_namespace().unwrap_or_default();
    let connection = ctx.stores.connections.get(&ObjectRef::new(&ua.spec.connection_ref.name).within(&conn_ns));
    let connector =
        connection.as_ref().and_then(|c| ctx.stores.connectors.get(&ObjectRef::new(&c.spec.connector_ref.name).within(&conn_ns)));
    let ns_labels = ctx.stores.namespaces.get(&ObjectRef::new(&ns)).map(|n| n.metadata.labels.clone().unwrap_or_default());
    let older = older_activation_of_same_user(&ctx, &ua);

    let admitted = decide::admit(&ua, connection.as_deref(), connector.as_deref(), ns_labels.as_ref(), older);
    let secret_name = naming::credentials_secret_name(&ua);
    let owned = ctx.stores.owned_secrets.get(&ObjectRef::new(&secret_name).within(&ns));
    if owned.as_ref().is_some_and(|o| o.owned_by(&ua.uid().unwrap_or_default())) {
        status.secret_name = Some(secret_name.clone());
    }

    let adm: Admitted<'_> = match admitted {
        Err(Gate { reason, message }) => {
            desired.push(Condition::new(types::READY, FALSE, reason, message, generation, now));
            status.phase = Some(Phase::Failing);
            return finish(&ua, &ctx, prev, status, desired, None).await;
        }
        Ok(a) => a,
    };
    let kind = adm.method.kind();
    // The status write below carries the resourceVersion the finalizer patch produced (the patch had the read one
    // as precondition, so nothing else changed), or it would fail as a conflict when it needs a precondition.
    let ua = if needs_finalizer(&adm) && !ua.finalizers().iter().any(|f| f == naming::FINALIZER) {
        Arc::new(add_finalizer(&ctx, &ua).await?)
    } else {
        ua
    };

    // Credentials into the owned Secret (a method that takes none has no Secret: it is ready as it is). The first
    // write of a new owned Secret may wait for the first Job, to go out with its create (below).
    let mut first_write: Option<SecretWrite> = None;
    let creds = if kind == AuthKind::None {
        status.secret_name = None;
        Creds::Stored { generation: NO_CREDENTIALS_GENERATION, verified: None }
    } else {
        sync_credentials(&ctx, &ua, &adm, kind, &secret_name, owned.as_deref(), &mut status, &mut first_write).await?
    };

    // The tenant's instance: the connector's URLs with their parameters filled in, within allowedHosts.
    let resolved;
    let adm = if instance::is_templated(adm.connector, adm.method) {
        let values = instance::values(adm.connector, &ua.spec.instance, &status.instance_parameters, &BTreeMap::new(), &BTreeMap::new());
        match instance::resolve(adm.connector, adm.method, &values, true) {
            Ok(r) => {
                resolved = r;
                status.base_url = Some(resolved.0.spec.base_url.clone());
                Admitted { connection: adm.connection, connector: &resolved.0, method: &resolved.1 }
            }
            // Still to come from the user or the provider: the connect flow brings it.
            Err(e) if e.is_pending() && !matches!(creds, Creds::Stored { .. }) => {
                status.base_url = None;
                adm
            }
            Err(e) => {
                status.base_url = None;
                desired.push(Condition::new(types::READY, FALSE, instance::INVALID_BASE_URL, e.to_string(), generation, now));
                status.phase = Some(Phase::Failing);
                return finish(&ua, &ctx, prev, status, desired, None).await;
            }
        }
    } else {
        status.base_url = Some(adm.connector.spec.base_url.clone()).filter(|u| !u.is_empty());
        adm
    };
    let creds = oauth::lifecycle(&ctx, &ua, &adm, kind, &secret_name, owned.as_deref(), creds, &mut status, &mut requeue, now).await?;
    let (ready, awaiting) = match &creds {
        Creds::Stored { generation: g, .. } if kind == AuthKind::None => {
            status.credential_generation = *g;
            desired.push(Condition::new(
                types::CREDENTIALS_VALID,
                TRUE,
                reasons::NO_CREDENTIALS_NEEDED,
                "the connector's auth method takes no credentials",
                generation,
                now,
            ));
            desired.push(Condition::new(
                types::READY,
                TRUE,
                reasons::ACTIVE,
                "the auth method takes no credentials; nothing to store",
                generation,
                now,
            ));
            (true, false)
        }
        Creds::Stored { generation: g, verified } => {
            status.secret_name = Some(secret_name.clone());
            status.credential_generation = *g;
            let cv = match verified {
                Some(true) => Condition::new(
                    types::CREDENTIALS_VALID,
                    TRUE,
                    reasons::VERIFIED,
                    "the provider accepted the credentials",
                    generation,
                    now,
                ),
                _ => Condition::new(
                    types::CREDENTIALS_VALID,
                    TRUE,
                    reasons::NOT_VERIFIED,
                    "stored; the connector declares no verification request",
                    generation,
                    now,
                ),
            };
            desired.push(cv);
            desired.push(Condition::new(
                types::READY,
                TRUE,
                reasons::ACTIVE,
                format!("credentials stored in Secret {secret_name}"),
                generation,
                now,
            ));
            (true, false)
        }
        Creds::Awaiting { reason, message } => {
            desired.push(Condition::new(types::READY, FALSE, reason, message.clone(), generation, now));
            (false, true)
        }
        Creds::Unverified { message, stored_generation, retry_in } => {
            desired.push(Condition::new(
                types::CREDENTIALS_VALID,
                UNKNOWN,
                reasons::VERIFICATION_UNAVAILABLE,
                message.clone(),
                generation,
                now,
            ));
            retry_after = Some(retry_in.unwrap_or_else(|| ctx.backoff(ua.as_ref())));
            // The credentials stored before stay usable while the new ones cannot be checked.
            let ready = stored_generation.is_some();
            if ready {
                desired.push(Condition::new(
                    types::READY,
                    TRUE,
                    reasons::ACTIVE,
                    format!("credentials stored in Secret {secret_name}; a newer version awaits verification"),
                    generation,
                    now,
                ));
            } else {
                desired.push(Condition::new(types::READY, FALSE, reasons::VERIFICATION_UNAVAILABLE, message.clone(), generation, now));
            }
            (ready, false)
        }
        Creds::Unusable { reason, message, rejected } => {
            if *rejected {
                desired.push(Condition::new(types::CREDENTIALS_VALID, FALSE, reason, message.clone(), generation, now));
            }
            desired.push(Condition::new(types::READY, FALSE, reason, message.clone(), generation, now));
            (false, false)
        }
    };
    status.phase = Some(decide::phase(ready, ua.spec.suspend, awaiting, oauth::needs_reauth(&creds)));

    // Variables, with the schema's defaults.
    let variables = match crate::variables::effective(adm.connection.spec.variables_schema.as_ref(), &ua.spec.variables.to_map()) {
        Ok(v) => Some(v),
        Err(message) => {
            desired.retain(|c| c.type_ != types::READY);
            desired.push(Condition::new(types::READY, FALSE, reasons::INVALID_VARIABLES, message, generation, now));
            status.phase = Some(Phase::Failing);
            None
        }
    };
    let ready = ready && variables.is_some();

    // Jobs.
    let uid = ua.uid().unwrap_or_default();
    let own_jobs: Vec<Arc<JobRecord>> =
        ctx.stores.relations.jobs_of(&ns, &uid).iter().filter_map(|name| ctx.stores.jobs.get(&ObjectRef::new(name).within(&ns))).collect();
    if let Some(job_spec) = &adm.connection.spec.job {
        if ready && !ua.spec.suspend {
            match decide::plan_run(
                job_spec,
                status.credential_generation,
                status.run_generation,
                status.last_schedule_time,
                decide::any_active(&own_jobs),
                now,
            ) {
                Err(e) => desired.push(Condition::new(
                    types::LAST_RUN_SUCCEEDED,
                    FALSE,
                    reasons::JOB_TEMPLATE_INVALID,
                    e.to_string(),
                    generation,
                    now,
                )),
                Ok(plan) => {
                    status.last_schedule_time = plan.last_schedule_time;
                    if let Some(next) = plan.next_tick {
                        requeue = min_requeue(requeue, until(next, now));
                    }
                    let extra = match extra_connections(&ctx, &ua, job_spec, &conn_ns) {
                        Ok(x) => {
                            if !job_spec.connections.is_empty() {
                                desired.push(Condition::new(
                                    types::CONNECTIONS_READY,
                                    TRUE,
                                    reasons::READY,
                                    "the user has activated every connection the job needs",
                                    generation,
                                    now,
                                ));
                            }
                            Some(x)
                        }
                        Err(missing) => {
                            desired.push(Condition::new(
                                types::CONNECTIONS_READY,
                                FALSE,
                                reasons::WAITING_FOR_CONNECTIONS,
                                format!("the job also needs this user's active activation of {missing}"),
                                generation,
                                now,
                            ));
                            None
                        }
                    };
                    // A run asked for with the run-now annotation (a new value), unless Forbid and a run is active.
                    let run_now =
                        ua.annotations().get(naming::RUN_NOW_ANNOTATION).filter(|v| status.run_now_handled.as_ref() != Some(*v)).cloned();
                    let manual = run_now.as_ref().filter(|_| {
                        plan.run.is_none()
                            && !(job_spec.concurrency_policy == crate::api::embedded_connection::ConcurrencyPolicy::Forbid
                                && decide::any_active(&own_jobs))
                    });
                    let run = plan.run.clone().or_else(|| manual.map(|v| Run::Manual(naming::hash_hex(&[v.as_bytes()])[..12].to_string())));
                    if run.is_some() && run_now.is_some() {
                        status.run_now_handled = run_now.clone();
                    }
                    if let (Some(run), Some(extra)) = (run.filter(|_| extra.is_some()), &extra) {
                        let vars = variables.clone().unwrap_or_default();
                        // A new Secret and the first Job are sent together: the Job's pod cannot start before the
                        // Secret it mounts exists, so nothing reads it early; one round trip less per activation.
                        let started = match first_write.take() {
                            Some(w) => {
                                let (written, started) =
                                    tokio::join!(w.send(&ctx, &ua), start_run(&ctx, &ua, &adm, kind, &secret_name, &run, &vars, extra));
                                written?;
                                started?
                            }
                            None => start_run(&ctx, &ua, &adm, kind, &secret_name, &run, &vars, extra).await?,
                        };
                        match started {
                            Ok(started) => {
                                started_job = started;
                                if let Run::Credentials(g) = run {
                                    status.run_generation = g;
                                }
                            }
                            Err(message) => desired.push(Condition::new(
                                types::LAST_RUN_SUCCEEDED,
                                FALSE,
                                reasons::JOB_TEMPLATE_INVALID,
                                message,
                                generation,
                                now,
                            )),
                        }
                    }
                }
            }
        }
        prune_history(&ctx, &ns, &own_jobs, job_spec).await?;
    }
    if let Some(w) = first_write.take() {
        w.send(&ctx, &ua).await?;
    }
    let newest = decide::newest(&own_jobs).map(|job| {
        let outcome = job.outcome();
        let st = job.status.as_ref();
        let mut run = LastRun {
            job: job.name_any(),
            start_time: st.and_then(|s| s.start_time.as_ref()).map(|t| ts(&t.0)),
            completion_time: st.and_then(|s| s.completion_time.as_ref()).map(|t| ts(&t.0)),
            outcome: format!("{outcome:?}"),
            succeeded: match outcome {
                jobs::Outcome::Running => None,
                jobs::Outcome::Succeeded => Some(true),
                jobs::Outcome::Failed => Some(false),
            },
        };
        // A running Job's start time alone is no reason to write: it is written with its outcome.
        if let Some(prev_run) =
            prev.last_run.as_ref().filter(|p| p.job == run.job && p.outcome == run.outcome && outcome == jobs::Outcome::Running)
        {
            run.start_time = prev_run.start_time;
        }
        (outcome, run)
    });
    let newest = match (newest, started_job) {
        (Some(n), Some(started)) if n.1.job != started => Some((jobs::Outcome::Running, running(started))),
        (None, Some(started)) => Some((jobs::Outcome::Running, running(started))),
        (n, _) => n,
    };
    if let Some((outcome, run)) = newest {
        let name = run.job.clone();
        status.last_run = Some(run);
        if !desired.iter().any(|c| c.type_ == types::LAST_RUN_SUCCEEDED) {
            desired.push(match outcome {
                jobs::Outcome::Succeeded => Condition::new(
                    types::LAST_RUN_SUCCEEDED,
                    TRUE,
                    reasons::JOB_SUCCEEDED,
                    format!("Job {name} succeeded"),
                    generation,
                    now,
                ),
                jobs::Outcome::Failed => Condition::new(
                    types::LAST_RUN_SUCCEEDED,
                    FALSE,
                    reasons::JOB_FAILED,
                    format!("Job {name} failed; see its pods' logs"),
                    generation,
                    now,
                ),
                jobs::Outcome::Running => Condition::new(
                    types::LAST_RUN_SUCCEEDED,
                    UNKNOWN,
                    reasons::JOB_RUNNING,
                    format!("Job {name} is running"),
                    generation,
                    now,
                ),
            });
        }
    }
    if let Some(r) = retry_after {
        // Not a success: keep the failure count (finish would reset it) and retry after the backoff.
        return finish_keeping_failures(&ua, &ctx, prev, status, desired, min_requeue(requeue, r)).await;
    }
    finish(&ua, &ctx, prev, status, desired, requeue).await
}

/// Whether deleting the activation needs work before its Secret goes (kept with Retain; revocation).
fn needs_finalizer(adm: &Admitted<'_>) -> bool {
    adm.connection.spec.secret_deletion_policy == SecretDeletionPolicy::Retain || oauth::revocable(adm)
}

/// Adds the finalizer over the version read; returns the activation as written.
async fn add_finalizer(ctx: &Context, ua: &UserActivation) -> Result<UserActivation> {
    let api: Api<UserActivation> = Api::namespaced(ctx.client.clone(), &ua.namespace().unwrap_or_default());
    let mut finalizers = ua.finalizers().to_vec();
    finalizers.push(naming::FINALIZER.into());
    let patch = serde_json::json!({ "metadata": { "finalizers": finalizers, "resourceVersion": ua.resource_version() } });
    api.patch(&ua.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(Error::kube("adding the finalizer"))
}

/// The owned Secret of an activation: its labels, owner reference (so the garbage collector removes it with the
/// activation), data and annotations. The reconciler and the connect server write the same shape.
pub fn owned_secret_object(
    ua: &UserActivation,
    name: &str,
    data: BTreeMap<String, k8s_openapi::ByteString>,
    annotations: BTreeMap<String, String>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: ua.namespace(),
            labels: Some(naming::activation_labels(ua, "credentials")),
            annotations: Some(annotations),
            owner_references: Some(vec![naming::owner_ref(ua)]),
            ..Default::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

fn running(job: String) -> LastRun {
    LastRun { job, start_time: None, completion_time: None, outcome: format!("{:?}", jobs::Outcome::Running), succeeded: None }
}

fn ts(t: &k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond() as u32).unwrap_or_default()
}

fn until(t: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (t - now).to_std().unwrap_or(Duration::ZERO) + Duration::from_millis(50)
}

fn min_requeue(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Writes status (when changed), publishes an event on a phase transition, and says when to look again.
async fn finish_keeping_failures(
    ua: &UserActivation,
    ctx: &Context,
    prev: UserActivationStatus,
    mut status: UserActivationStatus,
    desired: Vec<Condition>,
    requeue: Option<Duration>,
) -> Result<Action> {
    status.conditions = conditions::merge(&prev.conditions, desired);
    let api: Api<UserActivation> = Api::namespaced(ctx.client.clone(), &ua.namespace().unwrap_or_default());
    // The connect server claims a link by removing its nonce (compare-and-swap): a status that changes the link, or
    // carries a live one, is written only over the version read, so a stale copy never brings a spent nonce back.
    let link_changed = prev.connect_nonce != status.connect_nonce || prev.connect_url != status.connect_url;
    let over_read = link_changed || prev.connect_nonce.is_some();
    let written = apply_status_checked(&api, ua, ua.status.as_ref(), &status, over_read).await?;
    let wrote = written.is_some();
    ctx.expect.status_written(ua, written);
    // Events on transitions, except the expected steps of a new activation, which its status tells: Active at
    // once, or awaiting the user with a link and then Active with the first credentials. That keeps its write
    // budget at the Secret, the first Job and its status writes.
    let first_and_fine = decide::first_steps(&prev, &status);
    if wrote && prev.phase != status.phase {
        let ready = conditions::find(&status.conditions, types::READY);
        let (reason, note) = ready.map(|c| (c.reason.to_string(), c.message.clone())).unwrap_or_default();
        info!(activation = %ua.name_any(), namespace = %ua.namespace().unwrap_or_default(), phase = ?status.phase, reason = %reason, "phase changed");
        if !first_and_fine {
            let type_ = if status.phase == Some(Phase::Failing) { EventType::Warning } else { EventType::Normal };
            let _ = ctx
                .recorder
                .publish(&Event { type_, reason, note: Some(note), action: "Reconcile".into(), secondary: None }, &ua.object_ref(&()))
                .await;
        }
    }
    ctx.metrics.activation_phase(prev.phase, status.phase);
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

async fn finish(
    ua: &UserActivation,
    ctx: &Context,
    prev: UserActivationStatus,
    status: UserActivationStatus,
    desired: Vec<Condition>,
    requeue: Option<Duration>,
) -> Result<Action> {
    let action = finish_keeping_failures(ua, ctx, prev, status, desired, requeue).await?;
    ctx.succeeded(ua);
    Ok(action)
}

/// An older activation (by creation time, then name) of the same connection and user id, if any.
/// The activation of the same connection and user id that takes precedence, if any: one that is already Ready
/// (the user keeps what works), then the older (creation time has one-second resolution), then by name.
fn older_activation_of_same_user(ctx: &Context, ua: &UserActivation) -> Option<String> {
    let waiting = |o: &UserActivation| !o.status.as_ref().is_some_and(|s| conditions::is_true(&s.conditions, types::READY));
    let me = (waiting(ua), ua.metadata.creation_timestamp.as_ref().map(|t| t.0), ua.namespace(), ua.name_any());
    let conn = (ua.connection_namespace(), &ua.spec.connection_ref.name);
    ctx.stores
        .relations
        .activations_of_user(ua)
        .into_iter()
        .filter_map(|r| ctx.stores.activations.get(&r))
        .filter(|o| {
            o.uid() != ua.uid() && o.spec.user.id == ua.spec.user.id && (o.connection_namespace(), &o.spec.connection_ref.name) == conn
        })
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .filter(|o| (waiting(o), o.metadata.creation_timestamp.as_ref().map(|t| t.0), o.namespace(), o.name_any()) < me)
        .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
        .next()
}

fn annotation<'a>(secret: Option<&'a SecretRecord>, key: &str) -> Option<&'a str> {
    secret.and_then(|s| s.annotation(key))
}

/// Brings the owned Secret in line with the application's source Secret (or finds credentials the connect flow
/// stored there).
// Each argument is a distinct input or output of the sync; a struct bundling them would exist only for this call.
#[allow(clippy::too_many_arguments)]
async fn sync_credentials(
    ctx: &Context,
    ua: &UserActivation,
    adm: &Admitted<'_>,
    kind: AuthKind,
    secret_name: &str,
    owned: Option<&SecretRecord>,
    status: &mut UserActivationStatus,
    first_write: &mut Option<SecretWrite>,
) -> Result<Creds> {
    let ns = ua.namespace().unwrap_or_default();
    let uid = ua.uid().unwrap_or_default();
    let stored_generation = annotation(owned, GENERATION_ANNOTATION).and_then(|g| g.parse::<u32>().ok());
    let owned_is_ours = owned.is_some_and(|s| s.owned_by(&uid));

    let Some(source) = &ua.spec.credentials_secret_ref else {
        // No source: credentials come from the user through the connect flow.
        if let (true, Some(g)) = (owned_is_ours, stored_generation) {
            return Ok(Creds::Stored {
                generation: g,
                verified: annotation(owned, naming::VERIFIED_ANNOTATION).map(|v| v == "true").filter(|v| *v),
            });
        }
        return Ok(Creds::Awaiting {
            reason: reasons::AWAITING_USER,
            message: "waiting for the user to connect through status.connectUrl".into(),
        });
    };

    // Unchanged source (as the metadata watch sees it): nothing to read.
    let watched = source::watched_version(ctx, &ns, &source.name);
    if let Some(v) = &watched {
        if owned_is_ours
            && annotation(owned, SOURCE_VERSION_ANNOTATION) == Some(v.as_str())
            && let Some(g) = stored_generation
        {
            let verified = annotation(owned, naming::VERIFIED_ANNOTATION).map(|v| v == "true");
            return Ok(Creds::Stored { generation: g, verified: verified.filter(|v| *v) });
        }
        if status.source_resource_version.as_ref() == Some(v) {
            let permanent = [reasons::CREDENTIALS_REJECTED, reasons::SOURCE_SECRET_INVALID];
            if let Some(c) =
                conditions::find(&status.conditions, types::READY).filter(|c| !c.is_true() && permanent.contains(&c.reason.as_str()))
            {
                // Already rejected this version: wait for a change.
                return Ok(Creds::Unusable {
                    reason: reasons_static(&c.reason),
                    message: c.message.clone(),
                    rejected: c.reason == reasons::CREDENTIALS_REJECTED,
                });
            }
        }
    }

    // A failed verification of this same version: wait out the backoff (a watch event, such as our own status
    // write, must not repeat the request).
    if let (Some(wait), Some(v)) = (ctx.wait_remaining(ua), &watched)
        && status.source_resource_version.as_ref() == Some(v)
        && let Some(c) =
            conditions::find(&status.conditions, types::CREDENTIALS_VALID).filter(|c| c.reason == reasons::VERIFICATION_UNAVAILABLE)
    {
        let stored = owned_is_ours.then_some(stored_generation).flatten();
        return Ok(Creds::Unverified { message: c.message.clone(), stored_generation: stored, retry_in: Some(wait) });
    }

    // The source's data and, when the store has no owned Secret of that name, whether a foreign one holds the name:
    // two reads, sent together.
    let name_check = async {
        match owned {
            Some(m) => Ok(Some(m.clone())),
            None => Api::<Secret>::namespaced(ctx.client.clone(), &ns)
                .get_metadata_opt(secret_name)
                .await
                .map_err(Error::kube("checking the credentials Secret name"))
                .map(|o| o.map(|m| SecretRecord::owned(&m.metadata))),
        }
    };
    let (src, owned_meta) = tokio::try_join!(source::read(ctx, &ns, &source.name), name_check)?;
    let Some(src) = src else {
        return Ok(Creds::Awaiting {
            reason: reasons::SOURCE_SECRET_NOT_FOUND,
            message: format!("Secret {ns}/{} (spec.credentialsSecretRef) does not exist", source.name),
        });
    };
    status.source_resource_version = Some(src.resource_version.clone());
    let credential = match Credential::from_secret_data(kind, &src.data) {
        Ok(c) => c,
        Err(e) => {
            return Ok(Creds::Unusable {
                reason: reasons::SOURCE_SECRET_INVALID,
                message: format!("Secret {ns}/{}: {e}", source.name),
                rejected: false,
            });
        }
    };
    let data = credential.to_secret_data();
    let hash = credentials::data_hash(&data);

    // A Secret of that name that the operator does not own is never overwritten.
    if let Some(m) = &owned_meta
        && !m.owned_by(&uid)
    {
        let _ = ctx
            .recorder
            .publish(
                &Event {
                    type_: EventType::Warning,
                    reason: reasons::SECRET_CONFLICT.into(),
                    note: Some(format!("Secret {secret_name} exists and is not owned by this activation; it is left untouched")),
                    action: "WriteSecret".into(),
                    secondary: None,
                },
                &ua.object_ref(&()),
            )
            .await;
        return Ok(Creds::Unusable {
            reason: reasons::SECRET_CONFLICT,
            message: format!(
                "Secret {ns}/{secret_name} exists and is not owned by this activation: delete or rename it; Latchkey never overwrites it"
            ),
            rejected: false,
        });
    }
    let same_data = annotation(owned_meta.as_ref(), DATA_HASH_ANNOTATION) == Some(hash.as_str());
    let prev_generation = annotation(owned_meta.as_ref(), GENERATION_ANNOTATION).and_then(|g| g.parse::<u32>().ok()).unwrap_or(0);

    let mut verified = None;
    if !same_data {
        // A templated address is resolved (and checked against allowedHosts) before anything is sent.
        let resolved = match instance_for(adm, ua, status, &credential) {
            Ok(r) => r,
            Err(e) => return Ok(Creds::Unusable { reason: instance::INVALID_BASE_URL, message: e.to_string(), rejected: false }),
        };
        let (connector, method) = resolved.as_ref().map(|(c, m)| (c, m)).unwrap_or((adm.connector, adm.method));
        match verify::verify(&ctx.http, connector, method, &credential, &connector.spec.base_url).await {
            Ok(None) => {}
            Ok(Some(verify::Verdict::Valid)) => verified = Some(true),
            Ok(Some(verify::Verdict::Rejected { status: code })) => {
                let v = adm.connector.spec.verification.as_ref().map(|v| format!("{:?} {}", v.method, v.path)).unwrap_or_default();
                return Ok(Creds::Unusable {
                    reason: reasons::CREDENTIALS_REJECTED,
                    message: format!("the provider answered {code} to {v}: the credentials in Secret {} do not work", source.name),
                    rejected: true,
                });
            }
            // A credential that cannot even be put into the request (a key with a line break, say) is unusable:
            // retrying will not help.
            Err(verify::VerifyError::BadUrl(why)) => {
                return Ok(Creds::Unusable {
                    reason: reasons::SOURCE_SECRET_INVALID,
                    message: format!("Secret {}: {why}", source.name),
                    rejected: false,
                });
            }
            Err(e) => {
                status.consecutive_failures = status.consecutive_failures.saturating_add(1);
                return Ok(Creds::Unverified {
                    message: e.to_string(),
                    stored_generation: owned_is_ours.then_some(prev_generation).filter(|g| *g > 0),
                    retry_in: None,
                });
            }
        }
    } else {
        verified = annotation(owned_meta.as_ref(), naming::VERIFIED_ANNOTATION).map(|v| v == "true").filter(|v| *v);
    }
    status.consecutive_failures = 0;
    let generation = if same_data { prev_generation.max(1) } else { prev_generation + 1 };
    let mut annotations = BTreeMap::from([
        (DATA_HASH_ANNOTATION.to_string(), hash),
        (SOURCE_VERSION_ANNOTATION.to_string(), src.resource_version.clone()),
        (GENERATION_ANNOTATION.to_string(), generation.to_string()),
    ]);
    if verified == Some(true) {
        annotations.insert(naming::VERIFIED_ANNOTATION.to_string(), "true".into());
    }
    let unchanged = same_data
        && annotation(owned_meta.as_ref(), SOURCE_VERSION_ANNOTATION) == Some(src.resource_version.as_str())
        && annotation(owned_meta.as_ref(), GENERATION_ANNOTATION) == Some(generation.to_string().as_str());
    if !unchanged {
        let write = SecretWrite { name: secret_name.to_string(), data, annotations };
        if owned_meta.is_none() && matches!(kind, AuthKind::ApiKey | AuthKind::Basic) {
            // A new Secret of static credentials: written with the first Job (or at the end of the reconcile).
            *first_write = Some(write);
        } else {
            write.send(ctx, ua).await?;
        }
        debug!(activation = %ua.name_any(), secret = %secret_name, generation, "credentials stored");
    }
    Ok(Creds::Stored { generation, verified })
}

/// The connector resolved for a credential read from the application's Secret (its token-response fields may
/// fill parameters, remembered in status). `Ok(None)`: the connector has no parameters.
fn instance_for(
    adm: &Admitted<'_>,
    ua: &UserActivation,
    status: &mut UserActivationStatus,
    credential: &Credential,
) -> Result<Option<(Connector, crate::api::connector::AuthMethod)>, instance::InstanceError> {
    if !instance::is_templated(adm.connector, adm.method) {
        return Ok(None);
    }
    let fields = match credential {
        Credential::OAuth2(t) => t.fields.clone(),
        _ => BTreeMap::new(),
    };
    let values = instance::values(adm.connector, &ua.spec.instance, &status.instance_parameters, &BTreeMap::new(), &fields);
    let r = instance::resolve(adm.connector, adm.method, &values, true)?;
    status.instance_parameters = instance::remembered(adm.connector, &values);
    Ok(Some(r))
}

fn reasons_static(r: &str) -> &'static str {
    [reasons::CREDENTIALS_REJECTED, reasons::SOURCE_SECRET_INVALID].into_iter().find(|x| *x == r).unwrap_or(reasons::SOURCE_SECRET_INVALID)
}

/// A write of the owned Secret, decided and not sent yet.
struct SecretWrite {
    name: String,
    data: BTreeMap<String, k8s_openapi::ByteString>,
    annotations: BTreeMap<String, String>,
}

impl SecretWrite {
    async fn send(self, ctx: &Context, ua: &UserActivation) -> Result<()> {
        write_secret(ctx, ua, &self.name, self.data, self.annotations).await
    }
}

/// Server-side apply of the owned Secret.
pub async fn write_secret(
    ctx: &Context,
    ua: &UserActivation,
    name: &str,
    data: BTreeMap<String, k8s_openapi::ByteString>,
    annotations: BTreeMap<String, String>,
) -> Result<()> {
    let ns = ua.namespace().unwrap_or_default();
    let secret = owned_secret_object(ua, name, data, annotations);
    let written = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .patch(name, &PatchParams::apply(naming::FIELD_MANAGER).force(), &Patch::Apply(&secret))
        .await
        .map_err(Error::kube("writing the credentials Secret"))?;
    ctx.expect.secret_written(ua, name, written.metadata.resource_version);
    Ok(())
}

/// Creates the Job of a run, after checking the template. `Ok(Err(message))` when the template cannot run here.
/// The same user's active activations of the other connections the job needs; `Err` names the missing ones.
fn extra_connections(
    ctx: &Context,
    ua: &UserActivation,
    spec: &crate::api::embedded_connection::JobSpec,
    conn_ns: &str,
) -> Result<Vec<jobs::ExtraConnection>, String> {
    let ns = ua.namespace().unwrap_or_default();
    let mine = ctx.stores.relations.activations_of_tenant_user(&ns, &ua.spec.user.id);
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for need in &spec.connections {
        let need_ns = need.connection_ref.namespace.clone().unwrap_or_else(|| conn_ns.to_string());
        let found = mine.iter().filter_map(|r| ctx.stores.activations.get(r)).find(|o| {
            o.spec.connection_ref.name == need.connection_ref.name
                && o.connection_namespace().as_deref() == Some(need_ns.as_str())
                && o.status.as_ref().is_some_and(|s| conditions::is_true(&s.conditions, types::READY))
        });
        let resolved = found.and_then(|o| {
            let ec = ctx.stores.connections.get(&ObjectRef::new(&need.connection_ref.name).within(&need_ns))?;
            let connector = ctx.stores.connectors.get(&ObjectRef::new(&ec.spec.connector_ref.name).within(&need_ns))?;
            let method = connector.auth_method(&ec.spec.auth_method)?;
            Some(jobs::ExtraConnection {
                as_: need.as_.clone(),
                // A method without credentials has no Secret.
                secret_name: match method.kind() {
                    AuthKind::None => String::new(),
                    _ => o.status.as_ref()?.secret_name.clone()?,
                },
                kind: method.kind(),
                base_url: o.status.as_ref().and_then(|s| s.base_url.clone()).unwrap_or_else(|| connector.spec.base_url.clone()),
                token_response_fields: method.oauth2.as_ref().map(|m| m.token_response_fields.clone()).unwrap_or_default(),
            })
        });
        match resolved {
            Some(x) => out.push(x),
            None => missing.push(format!("{need_ns}/{}", need.connection_ref.name)),
        }
    }
    if missing.is_empty() { Ok(out) } else { Err(missing.join(", ")) }
}

#[allow(clippy::too_many_arguments)]
async fn start_run(
    ctx: &Context,
    ua: &UserActivation,
    adm: &Admitted<'_>,
    kind: AuthKind,
    secret_name: &str,
    run: &Run,
    variables: &BTreeMap<String, serde_json::Value>,
    extra: &[jobs::ExtraConnection],
) -> Result<Result<Option<String>, String>> {
    let Some(spec) = &adm.connection.spec.job else { return Ok(Ok(None)) };
    let ns = ua.namespace().unwrap_or_default();
    // Already created (the store saw it before this activation's status caught up): nothing to do.
    let key = run.key();
    let existing = naming::job_name(ua, &key);
    if ctx.stores.jobs.get(&ObjectRef::new(&existing).within(&ns)).is_some() {
        return Ok(Ok(Some(existing)));
    }
    let template = match jobs::template(spec) {
        Ok(t) => t,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let (cms, secrets) = jobs::referenced_objects(&template);
    let mut missing = Vec::new();
    let cm_api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    for name in &cms {
        if cm_api.get_metadata_opt(name).await.map_err(Error::kube("checking ConfigMaps the job template names"))?.is_none() {
            missing.push(format!("ConfigMap {name}"));
        }
    }
    let s_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    for name in &secrets {
        if s_api.get_metadata_opt(name).await.map_err(Error::kube("checking Secrets the job template names"))?.is_none() {
            missing.push(format!("Secret {name}"));
        }
    }
    if !missing.is_empty() {
        return Ok(Err(format!("the job template names {} that do(es) not exist in namespace {ns}", missing.join(", "))));
    }
    let token_response_fields = adm.method.oauth2.as_ref().map(|m| m.token_response_fields.as_slice()).unwrap_or_default();
    let input = jobs::RunInput {
        ua,
        job: spec,
        kind,
        secret_name,
        run_key: &key,
        base_url: &adm.connector.spec.base_url,
        token_response_fields,
        variables,
        extra,
    };
    let job = jobs::build(&input, template);
    let name = job.name_any();
    match Api::<Job>::namespaced(ctx.client.clone(), &ns)
        .create(&PostParams { field_manager: Some(naming::FIELD_MANAGER.into()), ..Default::default() }, &job)
        .await
    {
        Ok(created) => {
            ctx.expect.job_created(ua, &name, created.metadata.resource_version);
            info!(activation = %ua.name_any(), namespace = %ns, job = %name, run = %key, "started run");
            ctx.metrics.job_started();
            Ok(Ok(Some(name)))
        }
        // The run key makes the name: a restart never doubles a run.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Ok(Some(name))),
        Err(e) => Err(Error::kube("creating the Job")(e)),
    }
}

async fn prune_history(ctx: &Context, ns: &str, jobs: &[Arc<JobRecord>], spec: &crate::api::embedded_connection::JobSpec) -> Result<()> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    for name in decide::beyond_history(jobs, spec) {
        match api.delete(&name, &DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() }).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(Error::kube("deleting an old Job")(e)),
        }
    }
    Ok(())
}

/// Deletion: with `Retain`, the Secret loses its owner reference so that the garbage collector keeps it.
async fn cleanup(ua: &UserActivation, ctx: &Context) -> Result<Action> {
    ctx.expect.forget(ua);
    // A token request still out for the activation has nothing to write to any more.
    ctx.inflight.forget(&ua.uid().unwrap_or_default());
    let ns = ua.namespace().unwrap_or_default();
    if !ua.finalizers().iter().any(|f| f == naming::FINALIZER) {
        return Ok(Action::await_change());
    }
    let retain = connection_of(ctx, ua).is_some_and(|c| c.spec.secret_deletion_policy == SecretDeletionPolicy::Retain);
    if retain {
        let name = naming::credentials_secret_name(ua);
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({ "metadata": { "ownerReferences": null } });
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(Error::kube("releasing the retained Secret")(e)),
        }
    }
    if !retain {
        oauth::revoke_on_delete(ctx, ua).await;
    }
    remove_finalizer(ctx, ua).await?;
    Ok(Action::await_change())
}

fn connection_of(ctx: &Context, ua: &UserActivation) -> Option<Arc<EmbeddedConnection>> {
    ctx.stores.connections.get(&ObjectRef::new(&ua.spec.connection_ref.name).within(&ua.connection_namespace().unwrap_or_default()))
}

#[allow(dead_code)]
fn connector_of(ctx: &Context, ec: &EmbeddedConnection) -> Option<Arc<Connector>> {
    ctx.stores.connectors.get(&ObjectRef::new(&ec.spec.connector_ref.name).within(&ec.namespace().unwrap_or_default()))
}

async fn remove_finalizer(ctx: &Context, ua: &UserActivation) -> Result<()> {
    let api: Api<UserActivation> = Api::namespaced(ctx.client.clone(), &ua.namespace().unwrap_or_default());
    let remaining: Vec<_> = ua.finalizers().iter().filter(|f| *f != naming::FINALIZER).cloned().collect();
    let patch = serde_json::json!({ "metadata": { "finalizers": remaining, "resourceVersion": ua.resource_version() } });
    match api.patch(&ua.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::kube("removing the finalizer")(e)),
    }
}
