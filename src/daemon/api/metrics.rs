//! `GET /metrics`: Prometheus metrics in the OpenMetrics text format.
//!
//! Pool gauges are read from the pool at scrape time, so they are never
//! stale; the request counter is kept by [`count_requests`], a middleware
//! that labels each request with its route template (`/v1/regions/{name}`,
//! never the raw path, so label cardinality stays bounded) and status.

use std::sync::Mutex;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{read_pool, ApiError, SharedState};
use crate::gate::Gate;
use crate::pool::Pool;

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
    requests: Family<Labels, Counter>,
    gate_in_flight: Gauge,
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
            requests: Family::default(),
            gate_in_flight: Gauge::default(),
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
            "pmvisor_api_requests",
            "Control API requests by method, route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "pmvisor_gate_in_flight",
            "Operations inside the I/O gate",
            metrics.gate_in_flight.clone(),
        );
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

    /// Read the pool and the gate and encode every metric.
    pub fn render(&self, pool: &Pool, gate: &Gate) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
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
        self.gate_in_flight.set(saturating_i64(gate.in_flight() as u64));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `GET /metrics`.
pub async fn get_metrics(State(state): State<SharedState>) -> Result<Response, ApiError> {
    let shared = std::sync::Arc::clone(&state);
    let text = read_pool(&state, move |pool| Ok(shared.metrics.render(pool, &shared.gate))).await?;
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
