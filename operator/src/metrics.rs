//! Prometheus metrics of the operator.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    controller: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabel {
    category: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: String,
}

/// Every metric of the operator.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    failures: Family<CategoryLabel, Counter>,
    placement_seconds: Histogram,
    gc_released: Family<ShardLabel, Counter>,
    /// Garbage collection runs.
    pub gc_runs: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under `tutti_operator_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tutti_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let failures = Family::<CategoryLabel, Counter>::default();
        let placement_seconds = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        let gc_released = Family::<ShardLabel, Counter>::default();
        let gc_runs = Counter::default();
        registry.register(
            "reconciles",
            "Reconciles by controller and result",
            reconciles.clone(),
        );
        registry.register(
            "failures",
            "Reconcile failures by category",
            failures.clone(),
        );
        registry.register(
            "placement_seconds",
            "Time to place a room and create its pipeline",
            placement_seconds.clone(),
        );
        registry.register(
            "gc_released_pipelines",
            "Orphaned pipelines released, by shard",
            gc_released.clone(),
        );
        registry.register("gc_runs", "Garbage collection runs", gc_runs.clone());
        Self {
            registry,
            reconciles,
            failures,
            placement_seconds,
            gc_released,
            gc_runs,
        }
    }

    /// Counts a reconcile.
    pub fn reconciled(&self, controller: &'static str, result: &'static str) {
        self.reconciles
            .get_or_create(&ReconcileLabels { controller, result })
            .inc();
    }

    /// Counts a failure.
    pub fn failed(&self, category: &'static str) {
        self.failures
            .get_or_create(&CategoryLabel { category })
            .inc();
    }

    /// Records how long a placement took.
    pub fn placed(&self, seconds: f64) {
        self.placement_seconds.observe(seconds);
    }

    /// Counts a released orphan.
    pub fn gc_released(&self, shard: &str) {
        self.gc_released
            .get_or_create(&ShardLabel {
                shard: shard.to_owned(),
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
