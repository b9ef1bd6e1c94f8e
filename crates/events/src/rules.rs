//! Who may call what on the events service. The gateway enforces these rules
//! before forwarding, and the service enforces them again.

use axum::http::Method;
use rewards_kit::identity::Role;
use rewards_kit::rules::{RouteRule, SIGNED_IN};

pub fn route_rules() -> Vec<RouteRule> {
    let writers = &[Role::Operator, Role::Admin];
    let readers = &[Role::Operator, Role::Auditor, Role::Admin];
    vec![
        RouteRule::public(Method::GET, "/health"),
        RouteRule::public(Method::GET, "/ready"),
        RouteRule::public(Method::GET, "/openapi.json"),
        RouteRule::roles(Method::POST, "/events", writers),
        RouteRule::roles(Method::GET, "/events", SIGNED_IN),
        RouteRule::roles(Method::GET, "/events/{id}", SIGNED_IN),
        RouteRule::roles(Method::PUT, "/events/{id}", writers),
        RouteRule::roles(Method::PATCH, "/events/{id}", writers),
        RouteRule::roles(Method::POST, "/rewards", writers),
        RouteRule::roles(Method::GET, "/rewards", readers),
        RouteRule::roles(Method::GET, "/rewards/{id}", readers),
        RouteRule::roles(Method::PUT, "/rewards/{id}", writers),
        RouteRule::roles(Method::PATCH, "/rewards/{id}", writers),
        RouteRule::roles(Method::GET, "/audit", &[Role::Auditor, Role::Admin]),
        // Operators and game servers (signed in as OPERATOR), and internal services.
        RouteRule::roles(Method::POST, "/activities", &[Role::Operator, Role::Admin, Role::Service]),
        RouteRule::roles(Method::GET, "/progress/me", SIGNED_IN),
        RouteRule::roles(Method::POST, "/reward-claims", &[Role::User, Role::Admin]),
        RouteRule::roles(Method::GET, "/reward-claims", readers),
        RouteRule::roles(Method::GET, "/reward-claims/me", SIGNED_IN),
        // Staff see any claim; a player its own (the handler checks).
        RouteRule::roles(Method::GET, "/reward-claims/{id}", SIGNED_IN),
        RouteRule::roles(Method::GET, "/reward-claims/{id}/transitions", SIGNED_IN),
        RouteRule::roles(Method::POST, "/reward-claims/{id}/approve", writers),
        RouteRule::roles(Method::POST, "/reward-claims/{id}/reject", writers),
        RouteRule::roles(Method::POST, "/reward-claims/{id}/retry", writers),
    ]
}
