//! The registry: services, their path prefixes, instances and route rules.
//!
//! Loaded from a TOML file at start and replaced at runtime through the
//! ADMIN API. Readers take a snapshot without locking ([`arc_swap`]); a
//! change builds a new snapshot, keeping the health state of instances that
//! stay.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderValue, Method, Uri};
use chrono::{DateTime, Utc};
use rewards_kit::rules::RouteRule;
use serde::{Deserialize, Serialize};

use crate::FastMap;

/// Paths the gateway serves itself; no service may take them as a prefix.
const RESERVED: [&str; 6] = ["/gateway", "/health", "/ready", "/docs", "/openapi.json", "/metrics"];

/// Whether `path` is one of the gateway's own (served by itself, never forwarded).
pub fn is_reserved(path: &str) -> bool {
    RESERVED.iter().any(|r| path.strip_prefix(r).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
}

/// A service as registered (the file's `[[services]]`, the API's body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub prefix: String,
    pub instances: Vec<String>,
    pub routes: Vec<RouteRule>,
}

/// The registry file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
}

impl RegistryFile {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: Self = toml::from_str(text)?;
        Ok(file)
    }
}

/// A number no other instance, route or service of this process has.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// One backend instance and what the health checker last saw of it.
#[derive(Debug)]
pub struct Instance {
    /// Unique in the process: names the instance's connection pools.
    pub id: u64,
    pub url: Arc<str>,
    pub authority: String,
    /// The `Host` header forwarded requests carry.
    pub host: HeaderValue,
    healthy: AtomicBool,
    last_checked: Mutex<Option<DateTime<Utc>>>,
}

impl Instance {
    fn new(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|_| format!("`{url}` is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("`{url}`: only http:// instances are supported"));
        }
        let authority = uri.authority().ok_or_else(|| format!("`{url}` names no host"))?.to_string();
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(format!("`{url}`: an instance URL has no path"));
        }
        let host = HeaderValue::try_from(authority.as_str()).map_err(|_| format!("`{url}`: not a valid host"))?;
        // Optimistic: a new instance takes traffic until a probe says otherwise.
        Ok(Self {
            id: next_id(),
            url: Arc::from(url.trim_end_matches('/')),
            authority,
            host,
            healthy: AtomicBool::new(true),
            last_checked: Mutex::new(None),
        })
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records a probe's (or a failed forward's) verdict; true when it changed.
    pub fn set_healthy(&self, healthy: bool, at: DateTime<Utc>) -> bool {
        *self.last_checked.lock().expect("instance lock") = Some(at);
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    pub fn last_checked(&self) -> Option<DateTime<Utc>> {
        *self.last_checked.lock().expect("instance lock")
    }

    /// The URI of `path_and_query` on this instance.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, axum::http::Error> {
        Uri::builder().scheme("http").authority(self.authority.as_str()).path_and_query(path_and_query).build()
    }
}

/// A route rule ready for matching, with its metrics label.
#[derive(Debug)]
pub struct Route {
    /// Unique in the process: names the route's metrics series.
    pub id: u64,
    pub rule: RouteRule,
    rank: u64,
    pub label: Arc<str>,
    pub timeout: Option<Duration>,
}

/// A registered service.
#[derive(Debug)]
pub struct Service {
    /// Unique in the process: names the metrics of requests no rule matched.
    pub id: u64,
    pub name: Arc<str>,
    pub prefix: String,
    pub instances: Vec<Arc<Instance>>,
    pub routes: Vec<Route>,
    spec: ServiceSpec,
}

impl Service {
    /// The most specific rule for `method path` (the path after the prefix).
    pub fn route(&self, method: &Method, path: &str) -> Option<&Route> {
        self.routes.iter().filter(|r| r.rule.matches(method, path)).min_by_key(|r| r.rank)
    }

    /// The next healthy instance, round-robin; `skip` excludes one (a retry).
    pub fn pick(&self, skip: Option<&Instance>) -> Option<&Arc<Instance>> {
        thread_local! {
            // Each thread turns its own wheel per service: no counter shared
            // between cores, and one service's turns do not skip another's.
            static NEXT: RefCell<FastMap<u64, usize>> = RefCell::new(FastMap::default());
        }
        let usable = |inst: &&Arc<Instance>| inst.is_healthy() && skip.is_none_or(|s| !std::ptr::eq(s, &***inst));
        let n = self.instances.len();
        if n == 1 {
            return self.instances.first().filter(usable);
        }
        let start = NEXT.with_borrow_mut(|next| {
            if next.len() > 10_000 {
                next.clear(); // services replaced by registry changes
            }
            let turn = next.entry(self.id).or_insert(0);
            *turn = turn.wrapping_add(1);
            *turn
        });
        (0..n).map(|i| &self.instances[start.wrapping_add(i) % n]).find(usable)
    }

    pub fn spec(&self) -> &ServiceSpec {
        &self.spec
    }
}

/// A snapshot of every registered service.
#[derive(Debug, Default)]
pub struct Registry {
    /// Longest prefix first, so the most specific service wins.
    services: Vec<Arc<Service>>,
}

impl Registry {
    /// Builds a registry, keeping the health state of `previous` instances
    /// whose service and URL stay the same.
    pub fn build(specs: Vec<ServiceSpec>, previous: Option<&Registry>) -> Result<Self, String> {
        let mut seen_names = HashMap::new();
        let mut seen_prefixes = HashMap::new();
        let mut services = Vec::with_capacity(specs.len());
        for spec in specs {
            validate(&spec)?;
            if seen_names.insert(spec.name.clone(), ()).is_some() {
                return Err(format!("service `{}` is registered twice", spec.name));
            }
            let prefix = spec.prefix.trim_end_matches('/').to_owned();
            if let Some(owner) = seen_prefixes.insert(prefix.clone(), spec.name.clone()) {
                return Err(format!("prefix `{prefix}` is taken by `{owner}`"));
            }
            let old = previous.and_then(|p| p.service(&spec.name));
            let instances = spec
                .instances
                .iter()
                .map(|url| {
                    let url_key = url.trim_end_matches('/');
                    match old.and_then(|o| o.instances.iter().find(|i| &*i.url == url_key)) {
                        Some(existing) => Ok(existing.clone()),
                        None => Instance::new(url).map(Arc::new),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            let routes = spec
                .routes
                .iter()
                .map(|rule| Route {
                    id: next_id(),
                    rule: rule.clone(),
                    rank: rule.rank(),
                    label: Arc::from(format!("{} {}{}", rule.method, prefix, rule.path)),
                    timeout: rule.timeout_ms.map(Duration::from_millis),
                })
                .collect();
            services.push(Arc::new(Service {
                id: next_id(),
                name: Arc::from(spec.name.as_str()),
                prefix,
                instances,
                routes,
                spec,
            }));
        }
        services.sort_by_key(|s| std::cmp::Reverse(s.prefix.len()));
        Ok(Self { services })
    }

    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| &*s.name == name)
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.iter()
    }

    /// The specs, by name, for building a changed registry.
    pub fn specs(&self) -> Vec<ServiceSpec> {
        let mut specs: Vec<ServiceSpec> = self.services.iter().map(|s| s.spec.clone()).collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs
    }

    /// The service whose prefix `path` lies under, on a segment boundary, and
    /// the path the service sees.
    pub fn resolve<'p>(&self, path: &'p str) -> Option<(&Arc<Service>, &'p str)> {
        self.services.iter().find_map(|s| {
            let rest = path.strip_prefix(s.prefix.as_str())?;
            match rest {
                "" => Some((s, "/")),
                _ if rest.starts_with('/') => Some((s, rest)),
                _ => None,
            }
        })
    }
}

fn validate(spec: &ServiceSpec) -> Result<(), String> {
    let name_ok = !spec.name.is_empty()
        && spec.name.len() <= 64
        && spec.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !name_ok {
        return Err(format!("name `{}`: 1-64 of a-z, 0-9 and `-`", spec.name));
    }
    let prefix = spec.prefix.trim_end_matches('/');
    let segments_ok = prefix.starts_with('/')
        && prefix[1..]
            .split('/')
            .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    if !segments_ok {
        return Err(format!("{}: prefix `{}` must be a path such as `/event-service`", spec.name, spec.prefix));
    }
    if is_reserved(prefix) {
        return Err(format!("{}: prefix `{prefix}` is the gateway's own", spec.name));
    }
    if spec.instances.is_empty() {
        return Err(format!("{}: at least one instance is needed", spec.name));
    }
    if spec.routes.is_empty() {
        return Err(format!("{}: at least one route rule is needed", spec.name));
    }
    for rule in &spec.routes {
        rule.validate().map_err(|e| format!("{}: {e}", spec.name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewards_kit::identity::Role;

    fn spec(name: &str, prefix: &str, instances: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            prefix: prefix.into(),
            instances: instances.iter().map(|s| s.to_string()).collect(),
            routes: vec![
                RouteRule::roles(Method::GET, "/events/{id}", &[Role::User]),
                RouteRule::public(Method::GET, "/health"),
            ],
        }
    }

    #[test]
    fn prefixes_match_on_segment_boundaries_and_the_longest_wins() {
        let registry = Registry::build(
            vec![
                spec("events", "/event-service", &["http://a:1"]),
                spec("events-v2", "/event-service/v2", &["http://b:1"]),
            ],
            None,
        )
        .unwrap();
        let name = |p| registry.resolve(p).map(|(s, rest)| (s.name.to_string(), rest));
        assert_eq!(name("/event-service/events/1"), Some(("events".into(), "/events/1")));
        assert_eq!(name("/event-service"), Some(("events".into(), "/")));
        assert_eq!(name("/event-service/v2/events/1"), Some(("events-v2".into(), "/events/1")));
        assert_eq!(name("/event-servicex/events/1"), None);
        assert_eq!(name("/"), None);
    }

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        let bad = [
            spec("Bad Name", "/x", &["http://a:1"]),
            spec("x", "x", &["http://a:1"]),
            spec("x", "/", &["http://a:1"]),
            spec("x", "/gateway", &["http://a:1"]),
            spec("x", "/metrics/more", &["http://a:1"]),
            spec("x", "/x", &[]),
            spec("x", "/x", &["https://a:1"]),
            spec("x", "/x", &["http://a:1/path"]),
            ServiceSpec { routes: vec![], ..spec("x", "/x", &["http://a:1"]) },
        ];
        for s in bad {
            assert!(Registry::build(vec![s.clone()], None).is_err(), "{s:?}");
        }
        let dup = Registry::build(vec![spec("a", "/x", &["http://a:1"]), spec("b", "/x/", &["http://a:1"])], None);
        assert!(dup.unwrap_err().contains("taken by"));
    }

    #[test]
    fn round_robin_skips_unhealthy_instances_and_health_survives_a_rebuild() {
        let registry =
            Registry::build(vec![spec("s", "/s", &["http://a:1", "http://b:1", "http://c:1"])], None).unwrap();
        let service = registry.service("s").unwrap();
        service.instances[1].set_healthy(false, Utc::now());
        let picks: Vec<String> = (0..4).map(|_| service.pick(None).unwrap().url.to_string()).collect();
        assert!(!picks.contains(&"http://b:1".to_owned()));
        assert!(picks.contains(&"http://a:1".to_owned()) && picks.contains(&"http://c:1".to_owned()));

        let rebuilt = Registry::build(registry.specs(), Some(&registry)).unwrap();
        assert!(!rebuilt.service("s").unwrap().instances[1].is_healthy());

        for inst in &service.instances {
            inst.set_healthy(false, Utc::now());
        }
        assert!(service.pick(None).is_none());
    }

    #[test]
    fn each_service_has_its_own_turn() {
        let registry = Registry::build(
            vec![spec("a", "/a", &["http://a1:1", "http://a2:1"]), spec("b", "/b", &["http://b1:1", "http://b2:1"])],
            None,
        )
        .unwrap();
        let (a, b) = (registry.service("a").unwrap(), registry.service("b").unwrap());
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(a.pick(None).unwrap().url.to_string());
            seen.push(b.pick(None).unwrap().url.to_string());
        }
        for url in ["http://a1:1", "http://a2:1", "http://b1:1", "http://b2:1"] {
            assert_eq!(seen.iter().filter(|s| *s == url).count(), 2, "{seen:?}");
        }
    }

    #[test]
    fn routes_match_by_method_and_pattern() {
        let registry = Registry::build(vec![spec("s", "/s", &["http://a:1"])], None).unwrap();
        let service = registry.service("s").unwrap();
        assert_eq!(&*service.route(&Method::GET, "/events/42").unwrap().label, "GET /s/events/{id}");
        assert!(service.route(&Method::POST, "/events/42").is_none());
        assert!(service.route(&Method::GET, "/events").is_none());
    }
}
