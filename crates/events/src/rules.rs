//! Who may call what on the events service. The gateway enforces these rules
//! before forwarding, and the service enforces them again.

use axum::http::Method;
use rewards_kit::rules::RouteRule;

pub fn route_rules() -> Vec<RouteRule> {
    vec![RouteRule::public(Method::GET, "/health"), RouteRule::public(Method::GET, "/ready")]
}
