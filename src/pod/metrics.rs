//! The POD figures in the daemon's Prometheus registry.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::report::{Phase, PodReport};

type Labels = Vec<(String, String)>;

/// POD metrics; clones share the same values.
#[derive(Debug, Clone, Default)]
pub struct PodMetrics {
    triggers: Counter,
    cancels: Counter,
    fenced: Gauge,
    last_total: Gauge<f64, AtomicU64>,
    last_phase: Family<Labels, Gauge<f64, AtomicU64>>,
    overruns: Family<Labels, Counter>,
}

impl PodMetrics {
    /// Register every POD metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("pmvisor_pod_triggers", "POD sequences run", self.triggers.clone());
        registry.register(
            "pmvisor_pod_cancels",
            "Fences lifted by pod cancel",
            self.cancels.clone(),
        );
        registry.register("pmvisor_pod_fenced", "1 while the pool is fenced", self.fenced.clone());
        registry.register(
            "pmvisor_pod_last_seconds",
            "Trigger to fenced in the last POD sequence",
            self.last_total.clone(),
        );
        registry.register(
            "pmvisor_pod_last_phase_seconds",
            "Each phase of the last POD sequence",
            self.last_phase.clone(),
        );
        registry.register(
            "pmvisor_pod_phase_overruns",
            "Phases that ended after the POD budget ran out",
            self.overruns.clone(),
        );
    }

    /// Take in a finished sequence.
    pub fn record(&self, report: &PodReport) {
        self.triggers.inc();
        self.fenced.set(i64::from(report.fenced));
        self.last_total.set(report.total_us as f64 / 1e6);
        for phase in &report.phases {
            let labels = vec![("phase".to_string(), phase.phase.name().to_string())];
            self.last_phase.get_or_create(&labels).set(phase.micros as f64 / 1e6);
            if phase.overran {
                self.overruns.get_or_create(&labels).inc();
            }
        }
    }

    /// Take in a lifted fence.
    pub fn record_cancel(&self) {
        self.cancels.inc();
        self.fenced.set(0);
    }

    /// The last duration of `phase`, seconds (tests).
    pub fn last_phase_seconds(&self, phase: Phase) -> f64 {
        let labels = vec![("phase".to_string(), phase.name().to_string())];
        self.last_phase.get_or_create(&labels).get()
    }
}
