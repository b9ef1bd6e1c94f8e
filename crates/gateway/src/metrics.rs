//! Prometheus metrics: requests by route, status and upstream; latency
//! histograms; instance health. Served at `/metrics` to the operators'
//! networks only.
//!
//! Each serving thread counts into a table of its own, behind a lock that
//! only it takes (and `/metrics`, while it reads): recording a request is a
//! map lookup and a few additions, with no cache line shared between cores.
//! `/metrics` merges the threads' tables, and reads instance health off the
//! registry, so nothing else needs updating as it changes.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rewards_kit::Problem;

use crate::Gateway;
use crate::registry::{Instance, Route, Service};

pub const REQUESTS: &str = "gateway_requests_total";
pub const DURATION: &str = "gateway_request_duration_seconds";
pub const INSTANCE_HEALTHY: &str = "gateway_instance_healthy";

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 14] = [0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// A request's series: route (or the service, for requests no rule
/// matched), status and upstream instance (0: none), by their ids.
type SeriesKey = (u64, u16, u64);

/// Most series one thread keeps; past it the thread starts over (Prometheus
/// reads that as a counter reset).
const MAX_SERIES: usize = 10_000;

/// One series as a thread counted it.
#[derive(Debug, Clone)]
struct Series {
    service: Arc<str>,
    route: Arc<str>,
    status: u16,
    upstream: Arc<str>,
    count: u64,
    /// Requests that took at most `BUCKETS[i]` but more than the bound before.
    buckets: [u64; BUCKETS.len()],
    sum: f64,
}

type Table = HashMap<SeriesKey, Series, foldhash::fast::RandomState>;

/// service, route, status, upstream
type RequestLabels = (Arc<str>, Arc<str>, u16, Arc<str>);
/// service, route
type RouteLabels = (Arc<str>, Arc<str>);
/// bucket counts, count, sum
type Histogram = ([u64; BUCKETS.len()], u64, f64);

/// Every serving thread's table, for `/metrics` to merge.
#[derive(Default)]
pub struct Metrics {
    tables: Mutex<Vec<Arc<Mutex<Table>>>>,
}

impl Metrics {
    /// A table for one serving thread.
    pub fn recorder(&self) -> Recorder {
        let table = Arc::new(Mutex::new(Table::default()));
        self.tables.lock().expect("metrics tables").push(table.clone());
        Recorder(table)
    }

    /// Everything counted so far, in the Prometheus text format.
    fn render_counted(&self) -> String {
        let mut requests: BTreeMap<RequestLabels, u64> = BTreeMap::new();
        let mut durations: BTreeMap<RouteLabels, Histogram> = BTreeMap::new();
        for table in self.tables.lock().expect("metrics tables").iter() {
            let table = table.lock().expect("a metrics table").clone();
            for s in table.into_values() {
                let key = (s.service.clone(), s.route.clone(), s.status, s.upstream.clone());
                *requests.entry(key).or_default() += s.count;
                let (buckets, count, sum) = durations.entry((s.service, s.route)).or_default();
                for (total, n) in buckets.iter_mut().zip(s.buckets) {
                    *total += n;
                }
                *count += s.count;
                *sum += s.sum;
            }
        }
        let mut out = String::new();
        let _ = writeln!(out, "# HELP {REQUESTS} Requests by service, route, status and upstream instance.");
        let _ = writeln!(out, "# TYPE {REQUESTS} counter");
        for ((service, route, status, upstream), count) in &requests {
            let labels = labels(&[("service", service), ("route", route), ("status", status_label(*status))]);
            let _ = writeln!(out, "{REQUESTS}{{{labels},upstream=\"{}\"}} {count}", escape(upstream));
        }
        let _ = writeln!(out, "# HELP {DURATION} Time from a request's arrival to its answer's head, by route.");
        let _ = writeln!(out, "# TYPE {DURATION} histogram");
        for ((service, route), (buckets, count, sum)) in &durations {
            let labels = labels(&[("service", service), ("route", route)]);
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(buckets) {
                cumulative += n;
                let _ = writeln!(out, "{DURATION}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{DURATION}_bucket{{{labels},le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{DURATION}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{DURATION}_count{{{labels}}} {count}");
        }
        out
    }
}

/// Each instance's health as the checker last saw it.
fn render_health(gateway: &Gateway) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP {INSTANCE_HEALTHY} 1 while the instance passes its health checks.");
    let _ = writeln!(out, "# TYPE {INSTANCE_HEALTHY} gauge");
    for service in gateway.registry.load().services() {
        for instance in &service.instances {
            let labels = labels(&[("service", &service.name), ("instance", &instance.url)]);
            let _ = writeln!(out, "{INSTANCE_HEALTHY}{{{labels}}} {}", u8::from(instance.is_healthy()));
        }
    }
    out
}

/// One serving thread's table.
pub struct Recorder(Arc<Mutex<Table>>);

impl Recorder {
    /// One forwarded (or refused) request; `route` is `None` when no rule matched.
    pub fn record(
        &self,
        service: &Service,
        route: Option<&Route>,
        upstream: Option<&Instance>,
        status: StatusCode,
        took: Duration,
    ) {
        let key = (route.map_or(service.id, |r| r.id), status.as_u16(), upstream.map_or(0, |i| i.id));
        let mut table = self.0.lock().expect("a metrics table");
        if table.len() >= MAX_SERIES && !table.contains_key(&key) {
            table.clear();
        }
        let series = table.entry(key).or_insert_with(|| Series {
            service: service.name.clone(),
            route: route.map_or_else(|| Arc::from("unmatched"), |r| r.label.clone()),
            status: status.as_u16(),
            upstream: upstream.map_or_else(|| Arc::from("none"), |i| i.url.clone()),
            count: 0,
            buckets: [0; BUCKETS.len()],
            sum: 0.0,
        });
        let seconds = took.as_secs_f64();
        series.count += 1;
        series.sum += seconds;
        // Slower than the last bound: counted in +Inf only (count minus the buckets).
        if let Some(i) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            series.buckets[i] += 1;
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{name}=\"{}\"", escape(value));
    }
    out
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn status_label(status: u16) -> &'static str {
    match status {
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
    let text = gateway.metrics.render_counted() + &render_health(&gateway);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
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

    #[test]
    fn the_threads_counts_are_merged_into_counters_and_cumulative_buckets() {
        let spec: crate::registry::ServiceSpec = serde_json::from_value(serde_json::json!({
            "name": "s", "prefix": "/s", "instances": ["http://a:1"],
            "routes": [{ "method": "GET", "path": "/x", "public": true }]
        }))
        .unwrap();
        let registry = crate::registry::Registry::build(vec![spec], None).unwrap();
        let service = registry.service("s").unwrap();
        let (route, instance) = (&service.routes[0], &service.instances[0]);
        let metrics = Metrics::default();
        let (one, two) = (metrics.recorder(), metrics.recorder());
        one.record(service, Some(route), Some(instance), StatusCode::OK, Duration::from_micros(100));
        two.record(service, Some(route), Some(instance), StatusCode::OK, Duration::from_millis(3));
        two.record(service, Some(route), None, StatusCode::UNAUTHORIZED, Duration::from_secs(20));
        one.record(service, None, None, StatusCode::NOT_FOUND, Duration::from_micros(300));
        let text = metrics.render_counted();
        let line =
            |start: &str| text.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("{start}\n{text}"));
        let series = r#"service="s",route="GET /s/x""#;
        assert!(line(&format!(r#"{REQUESTS}{{{series},status="200",upstream="http://a:1"}}"#)).ends_with(" 2"));
        assert!(line(&format!(r#"{REQUESTS}{{{series},status="401",upstream="none"}}"#)).ends_with(" 1"));
        assert!(line(&format!(r#"{REQUESTS}{{service="s",route="unmatched",status="404""#)).ends_with(" 1"));
        assert!(line(&format!(r#"{DURATION}_bucket{{{series},le="0.0002"}}"#)).ends_with(" 1"));
        assert!(line(&format!(r#"{DURATION}_bucket{{{series},le="0.005"}}"#)).ends_with(" 2"));
        assert!(line(&format!(r#"{DURATION}_bucket{{{series},le="10"}}"#)).ends_with(" 2"), "20 s is past every bound");
        assert!(line(&format!(r#"{DURATION}_bucket{{{series},le="+Inf"}}"#)).ends_with(" 3"));
        assert!(line(&format!(r#"{DURATION}_count{{{series}}}"#)).ends_with(" 3"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&[("route", "GET /a\"b\\c\nd")]), r#"route="GET /a\"b\\c\nd""#);
    }
}
