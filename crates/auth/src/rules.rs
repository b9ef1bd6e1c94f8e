//! Who may call what on the auth service. The gateway enforces these rules
//! before forwarding, and the service enforces them again.

use axum::http::Method;
use rewards_kit::identity::Role;
use rewards_kit::rules::{RouteRule, SIGNED_IN};

pub fn route_rules() -> Vec<RouteRule> {
    let admin = &[Role::Admin];
    vec![
        RouteRule::public(Method::GET, "/health"),
        RouteRule::public(Method::GET, "/ready"),
        RouteRule::public(Method::GET, "/openapi.json"),
        RouteRule::public(Method::GET, "/.well-known/jwks.json"),
        RouteRule::public(Method::POST, "/auth/signup"),
        RouteRule::public(Method::POST, "/auth/login"),
        RouteRule::public(Method::POST, "/auth/refresh"),
        RouteRule::roles(Method::POST, "/auth/logout", SIGNED_IN),
        RouteRule::roles(Method::POST, "/users/register", admin),
        RouteRule::roles(Method::GET, "/users/me", SIGNED_IN),
        RouteRule::roles(Method::POST, "/users/me/password", SIGNED_IN),
        RouteRule::roles(Method::GET, "/users", admin),
        RouteRule::roles(Method::GET, "/users/{username}", admin),
        RouteRule::roles(Method::PUT, "/users/{username}/roles", admin),
        RouteRule::roles(Method::PUT, "/users/{username}/status", admin),
        // ADMIN for anyone, anyone signed in for `me` (the handler tells).
        RouteRule::roles(Method::DELETE, "/users/{username}/sessions", SIGNED_IN),
        RouteRule::roles(Method::GET, "/audit", &[Role::Auditor, Role::Admin]),
        RouteRule::roles(Method::POST, "/keys/{kid}/revoke", admin),
        // The gateways' revocation feed: internal services only.
        RouteRule::roles(Method::GET, "/revocations", &[Role::Service]),
    ]
}
