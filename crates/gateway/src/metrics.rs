//! Prometheus metrics: requests by route, status and upstream; latency
//! histograms; instance health. Served at `/metrics` to the operators'
//! networks only.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rewards_kit::Problem;

use crate::Gateway;
use crate::registry::{Instance, Route, Service};

pub const REQUESTS: &str = "gateway_requests_total";
pub const DURATION: &str = "gateway_request_duration_seconds";
pub const INSTANCE_HEALTHY: &str = "gateway_instance_healthy";

const BUCKETS: [f64; 14] = [0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// The process's recorder, installed once (several gateways in one test
/// process share it).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DURATION.to_owned()), &BUCKETS)
            .expect("valid buckets")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        handle
    })
}

/// A request's series: route (or the service, for requests no rule
/// matched), status and upstream instance (0: none), by their ids.
type SeriesKey = (u64, u16, u64);

/// Most series handles a thread keeps (registry changes make new ones).
const MAX_SERIES: usize = 10_000;

thread_local! {
    /// Each series' handles, looked up once per thread: recording is then
    /// two atomic updates, with no labels built or hashed per request.
    static SERIES: RefCell<HashMap<SeriesKey, (Counter, Histogram)>> = RefCell::new(HashMap::new());
}

/// One forwarded (or refused) request; `route` is `None` when no rule matched.
pub fn record(
    service: &Service,
    route: Option<&Route>,
    upstream: Option<&Instance>,
    status: StatusCode,
    took: Duration,
) {
    let key = (route.map_or(service.id, |r| r.id), status.as_u16(), upstream.map_or(0, |i| i.id));
    SERIES.with_borrow_mut(|series| {
        if series.len() >= MAX_SERIES && !series.contains_key(&key) {
            series.clear();
        }
        let (counter, histogram) = series.entry(key).or_insert_with(|| {
            let route: Arc<str> = route.map_or_else(|| Arc::from("unmatched"), |r| r.label.clone());
            let upstream: Arc<str> = upstream.map_or_else(|| Arc::from("none"), |i| i.url.clone());
            let counter = metrics::counter!(REQUESTS, "service" => service.name.clone(), "route" => route.clone(),
                "status" => status_label(status), "upstream" => upstream);
            let histogram = metrics::histogram!(DURATION, "service" => service.name.clone(), "route" => route);
            (counter, histogram)
        });
        counter.increment(1);
        histogram.record(took.as_secs_f64());
    });
}

pub fn instance_health(service: &Arc<str>, url: &Arc<str>, healthy: bool) {
    metrics::gauge!(INSTANCE_HEALTHY, "service" => service.clone(), "instance" => url.clone()).set(if healthy {
        1.0
    } else {
        0.0
    });
}

fn status_label(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200 => "200",
        201 => "201",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        409 => "409",
        413 => "413",
        422 => "422",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// `GET /metrics`, for addresses in `metrics_allow` only.
pub async fn serve(State(gateway): State<Arc<Gateway>>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    if !allowed(&gateway.settings.metrics_allow, peer.ip()) {
        return Problem::forbidden("metrics are served to the operators' networks only").into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle().render()).into_response()
}

fn allowed(networks: &[ipnet::IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    networks.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_networks_may_read_metrics() {
        let nets: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "127.0.0.0/8".parse().unwrap()];
        assert!(allowed(&nets, "10.1.2.3".parse().unwrap()));
        assert!(allowed(&nets, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(!allowed(&nets, "203.0.113.1".parse().unwrap()));
    }
}
