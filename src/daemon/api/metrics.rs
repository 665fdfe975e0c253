//! `GET /metrics`: Prometheus metrics in the OpenMetrics text format.
//!
//! Pool gauges and block region figures are read at scrape time, so they
//! are never stale; the request counter is kept by [`count_requests`], a middleware
//! that labels each request with its route template (`/v1/regions/{name}`,
//! never the raw path, so label cardinality stays bounded) and status.

use std::sync::Mutex;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use super::{read_regions, ApiError, SharedState};
use crate::agent::LatencySnapshot;
use crate::daemon::agents::Agents;
use crate::daemon::regions::Regions;
use crate::gate::Gate;

const CONTENT_TYPE_OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(String, String)>;

/// Every metric the daemon exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pool_size: Gauge,
    pool_data_pages: Gauge,
    pool_free_pages: Gauge,
    regions: Gauge,
    region_size: Family<Labels, Gauge>,
    block_resident: Family<Labels, Gauge>,
    block_swapped: Family<Labels, Gauge>,
    block_mrr: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    block_reads: Family<Labels, Counter>,
    block_writes: Family<Labels, Counter>,
    block_faults: Family<Labels, Counter>,
    block_evictions: Family<Labels, Counter>,
    block_evictions_by: Family<Labels, Counter>,
    agent_connected: Family<Labels, Gauge>,
    agent_answer_seconds: Family<Labels, AnswerTimes>,
    agent_failures: Family<Labels, Counter>,
    agent_rejected_blocks: Family<Labels, Counter>,
    requests: Family<Labels, Counter>,
    gate_in_flight: Gauge,
    /// The power-outage sequence's figures (updated by the POD coordinator).
    pub pod: crate::pod::PodMetrics,
    /// Serializes scrapes so one cannot clear the region gauges while
    /// another encodes them.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Register every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let metrics = Metrics {
            registry: Registry::default(),
            pool_size: Gauge::default(),
            pool_data_pages: Gauge::default(),
            pool_free_pages: Gauge::default(),
            regions: Gauge::default(),
            region_size: Family::default(),
            block_resident: Family::default(),
            block_swapped: Family::default(),
            block_mrr: Family::default(),
            block_reads: Family::default(),
            block_writes: Family::default(),
            block_faults: Family::default(),
            block_evictions: Family::default(),
            block_evictions_by: Family::default(),
            agent_connected: Family::default(),
            agent_answer_seconds: Family::default(),
            agent_failures: Family::default(),
            agent_rejected_blocks: Family::default(),
            requests: Family::default(),
            gate_in_flight: Gauge::default(),
            pod: crate::pod::PodMetrics::default(),
            scrape: Mutex::new(()),
        };
        registry.register("pmvisor_pool_size_bytes", "Size of the pool", metrics.pool_size.clone());
        registry.register(
            "pmvisor_pool_data_pages",
            "Pool pages available for regions",
            metrics.pool_data_pages.clone(),
        );
        registry.register(
            "pmvisor_pool_free_pages",
            "Pool pages not owned by any region",
            metrics.pool_free_pages.clone(),
        );
        registry.register("pmvisor_regions", "Number of regions", metrics.regions.clone());
        registry.register(
            "pmvisor_region_size_bytes",
            "Allocated size of each region",
            metrics.region_size.clone(),
        );
        registry.register(
            "pmvisor_block_resident_blocks",
            "Blocks of each block region held in pool frames",
            metrics.block_resident.clone(),
        );
        registry.register(
            "pmvisor_block_swapped_blocks",
            "Blocks of each block region held in the swap tier",
            metrics.block_swapped.clone(),
        );
        registry.register(
            "pmvisor_block_mrr",
            "Memory residence ratio of each block region: resident / (resident + swapped)",
            metrics.block_mrr.clone(),
        );
        registry.register(
            "pmvisor_block_reads",
            "Read requests served by each block region since the daemon started",
            metrics.block_reads.clone(),
        );
        registry.register(
            "pmvisor_block_writes",
            "Write requests served by each block region since the daemon started",
            metrics.block_writes.clone(),
        );
        registry.register(
            "pmvisor_block_faults",
            "Blocks faulted in from the swap tier since the daemon started",
            metrics.block_faults.clone(),
        );
        registry.register(
            "pmvisor_block_evictions",
            "Blocks evicted to the swap tier since the daemon started",
            metrics.block_evictions.clone(),
        );
        registry.register(
            "pmvisor_block_evictions_by_chooser",
            "Blocks that left the pool since the daemon started, by who chose them: guest_keep \
             (to swap), guest_drop (unmapped), host (CLOCK)",
            metrics.block_evictions_by.clone(),
        );
        registry.register(
            "pmvisor_agent_connected",
            "Whether the block region's guest agent is connected (1) or not (0)",
            metrics.agent_connected.clone(),
        );
        registry.register(
            "pmvisor_agent_answer_seconds",
            "Time the guest agent took to answer evict requests and grow notices",
            metrics.agent_answer_seconds.clone(),
        );
        registry.register(
            "pmvisor_agent_failures",
            "Agent requests that got no usable answer, by reason (the host chose instead)",
            metrics.agent_failures.clone(),
        );
        registry.register(
            "pmvisor_agent_rejected_blocks",
            "Blocks of agent answers the host did not use, by reason",
            metrics.agent_rejected_blocks.clone(),
        );
        registry.register(
            "pmvisor_api_requests",
            "Control API requests by method, route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "pmvisor_gate_in_flight",
            "Operations inside the I/O gate",
            metrics.gate_in_flight.clone(),
        );
        metrics.pod.register(&mut registry);
        Metrics { registry, ..metrics }
    }

    /// Count one answered request.
    pub fn record_request(&self, method: &str, route: &str, status: u16) {
        let labels = vec![
            ("method".to_string(), method.to_string()),
            ("route".to_string(), route.to_string()),
            ("status".to_string(), status.to_string()),
        ];
        self.requests.get_or_create(&labels).inc();
    }

    /// Read the pool, its block regions and the gate and encode every metric.
    pub fn render(&self, regions: &Regions, gate: &Gate, agents: &Agents) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let pool = regions.pool();
        let info = pool.info();
        self.pool_size.set(saturating_i64(info.size));
        self.pool_data_pages.set(saturating_i64(info.data_pages));
        self.pool_free_pages.set(saturating_i64(info.free_pages));
        self.regions.set(saturating_i64(info.regions as u64));
        self.region_size.clear();
        for region in pool.regions() {
            let labels = vec![("name".to_string(), region.name)];
            self.region_size.get_or_create(&labels).set(saturating_i64(region.size));
        }
        self.render_blocks(regions, agents);
        self.gate_in_flight.set(saturating_i64(gate.in_flight() as u64));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

impl Metrics {
    /// Per block region figures. Counters are set by clearing the family
    /// and counting each up from zero to the region's own counter.
    fn render_blocks(&self, regions: &Regions, agents: &Agents) {
        self.block_resident.clear();
        self.block_swapped.clear();
        self.block_mrr.clear();
        for family in [&self.block_reads, &self.block_writes, &self.block_faults] {
            family.clear();
        }
        self.block_evictions.clear();
        for family in [&self.block_evictions_by, &self.agent_failures, &self.agent_rejected_blocks]
        {
            family.clear();
        }
        self.agent_connected.clear();
        self.agent_answer_seconds.clear();
        let Ok(blocks) = regions.blocks() else { return };
        for name in blocks.names() {
            let Some(region) = blocks.get(&name) else { continue };
            let stats = region.stats();
            let labels = vec![("region".to_string(), name.clone())];
            self.block_resident.get_or_create(&labels).set(saturating_i64(stats.resident_blocks));
            self.block_swapped.get_or_create(&labels).set(saturating_i64(stats.swapped_blocks));
            self.block_mrr.get_or_create(&labels).set(stats.mrr);
            self.block_reads.get_or_create(&labels).inc_by(stats.reads);
            self.block_writes.get_or_create(&labels).inc_by(stats.writes);
            self.block_faults.get_or_create(&labels).inc_by(stats.faults);
            self.block_evictions.get_or_create(&labels).inc_by(stats.evictions);
            let totals = agents.totals(&name);
            let by = [
                ("guest_keep", totals.guest_kept),
                ("guest_drop", totals.guest_dropped),
                ("host", stats.evictions.saturating_sub(totals.guest_kept)),
            ];
            for (chooser, n) in by {
                self.block_evictions_by.get_or_create(&with(&labels, "chooser", chooser)).inc_by(n);
            }
            let r = &totals.rejected;
            let rejected = [
                ("out_of_range", r.out_of_range),
                ("duplicate", r.duplicate),
                ("not_resident", r.not_resident),
                ("surplus", r.surplus),
                ("no_swap", r.no_swap),
            ];
            for (reason, n) in rejected {
                self.agent_rejected_blocks
                    .get_or_create(&with(&labels, "reason", reason))
                    .inc_by(n);
            }
            let Some(agent) = agents.get(&name) else { continue };
            let link = agent.link.stats();
            self.agent_connected.get_or_create(&labels).set(i64::from(link.connected));
            for (reason, n) in &link.failures {
                self.agent_failures.get_or_create(&with(&labels, "reason", reason)).inc_by(*n);
            }
            self.agent_answer_seconds.get_or_create(&labels).set(agent.link.latency());
        }
    }
}

fn with(labels: &Labels, key: &str, value: &str) -> Labels {
    let mut labels = labels.clone();
    labels.push((key.to_string(), value.to_string()));
    labels
}

/// An agent's answer times as read at scrape time, encoded as a
/// Prometheus histogram.
#[derive(Debug, Default)]
struct AnswerTimes(Mutex<LatencySnapshot>);

impl AnswerTimes {
    fn set(&self, snapshot: LatencySnapshot) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = snapshot;
    }
}

impl TypedMetric for AnswerTimes {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AnswerTimes {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        encoder.encode_histogram::<NoLabelSet>(s.sum_seconds, s.count, &s.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `GET /metrics`.
pub async fn get_metrics(State(state): State<SharedState>) -> Result<Response, ApiError> {
    let shared = std::sync::Arc::clone(&state);
    let text = read_regions(&state, move |regions| {
        Ok(shared.metrics.render(regions, &shared.gate, &shared.agents))
    })
    .await?;
    Ok(([(CONTENT_TYPE, CONTENT_TYPE_OPENMETRICS)], text).into_response())
}

/// Middleware: count every request by method, route template and status.
pub async fn count_requests(
    State(state): State<SharedState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    state.metrics.record_request(&method, &route, response.status().as_u16());
    response
}
