//! Prometheus metrics. Labels are kinds and error classes, never object names.
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::user_activation::Phase;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub kind: String,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// One of a fixed set of names, and the status code: no allocation per request.
    pub route: &'static str,
    pub status: u16,
}

pub struct Metrics {
    pub registry: Mutex<Registry>,
    reconciles: Family<KindLabel, Counter>,
    errors: Family<ErrorLabel, Counter>,
    durations: Family<KindLabel, Histogram>,
    phases: Family<PhaseLabel, Gauge>,
    jobs_started: Counter,
    pub refreshes: Family<OutcomeLabel, Counter>,
    pub connect_requests: Family<RouteLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("latchkey");
        let reconciles = Family::<KindLabel, Counter>::default();
        let errors = Family::<ErrorLabel, Counter>::default();
        let durations = Family::<KindLabel, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 14)));
        let phases = Family::<PhaseLabel, Gauge>::default();
        let jobs_started = Counter::default();
        let refreshes = Family::<OutcomeLabel, Counter>::default();
        let connect_requests = Family::<RouteLabel, Counter>::default();
        registry.register("reconciles", "Reconciles by kind", reconciles.clone());
        registry.register("reconcile_errors", "Failed reconciles by kind and error class", errors.clone());
        registry.register("reconcile_duration_seconds", "Reconcile duration by kind", durations.clone());
        registry.register("activations", "UserActivations by phase", phases.clone());
        registry.register("jobs_started", "Integration Jobs started", jobs_started.clone());
        registry.register("token_refreshes", "OAuth2 token refreshes by outcome", refreshes.clone());
        registry.register("connect_requests", "Connect server requests by route and status", connect_requests.clone());
        Self { registry: Mutex::new(registry), reconciles, errors, durations, phases, jobs_started, refreshes, connect_requests }
    }
}

/// Observes a reconcile's duration when dropped.
pub struct Timer<'a> {
    start: Instant,
    metrics: &'a Metrics,
    kind: &'static str,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        let l = KindLabel { kind: self.kind.into() };
        self.metrics.durations.get_or_create(&l).observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    pub fn reconcile_timer(&self, kind: &'static str) -> Timer<'_> {
        self.reconciles.get_or_create(&KindLabel { kind: kind.into() }).inc();
        Timer { start: Instant::now(), metrics: self, kind }
    }

    pub fn reconcile_error(&self, kind: &str, error: &str) {
        self.errors.get_or_create(&ErrorLabel { kind: kind.into(), error: error.into() }).inc();
    }

    pub fn job_started(&self) {
        self.jobs_started.inc();
    }

    /// Moves one activation from one phase to another in the gauge.
    pub fn activation_phase(&self, from: Option<Phase>, to: Option<Phase>) {
        if from == to {
            return;
        }
        if let Some(p) = from {
            self.phases.get_or_create(&PhaseLabel { phase: format!("{p:?}") }).dec();
        }
        if let Some(p) = to {
            self.phases.get_or_create(&PhaseLabel { phase: format!("{p:?}") }).inc();
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        }
        out
    }
}
