//! Route rules: which method and path pattern needs which roles.
//!
//! The same rule tables drive the gateway (which refuses before forwarding)
//! and each service (which refuses again: defence in depth), so the two can
//! never disagree.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::identity::{Identity, Role};
use crate::problem::Problem;

/// One rule: `method` + `path` (segments, `{name}` matching any one segment)
/// is either public or needs one of `roles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    /// How long the gateway waits for the backend on this route (default:
    /// the gateway's `timeout_ms`).
    #[serde(default, rename = "timeoutMs", alias = "timeout_ms", skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Every role a user account can hold: "any signed-in user".
pub const SIGNED_IN: &[Role] = &[Role::User, Role::Operator, Role::Auditor, Role::Admin];

impl RouteRule {
    pub fn public(method: Method, path: &str) -> Self {
        Self {
            method: method.as_str().to_owned(),
            path: path.to_owned(),
            public: true,
            roles: Vec::new(),
            timeout_ms: None,
        }
    }

    pub fn roles(method: Method, path: &str, roles: &[Role]) -> Self {
        Self {
            method: method.as_str().to_owned(),
            path: path.to_owned(),
            public: false,
            roles: roles.to_vec(),
            timeout_ms: None,
        }
    }

    /// Whether the rule is well-formed: a known method, a path starting with
    /// `/`, and either public or with at least one role.
    pub fn validate(&self) -> Result<(), String> {
        if Method::from_bytes(self.method.as_bytes()).is_err() || self.method != self.method.to_ascii_uppercase() {
            return Err(format!("`{}` is not an upper-case HTTP method", self.method));
        }
        if !self.path.starts_with('/') {
            return Err(format!("path `{}` must start with `/`", self.path));
        }
        if self.public != self.roles.is_empty() {
            return Err(format!("{} {}: a rule is either public or names roles", self.method, self.path));
        }
        if self.timeout_ms == Some(0) {
            return Err(format!("{} {}: timeoutMs must be positive", self.method, self.path));
        }
        Ok(())
    }

    /// Whether `method path` falls under this rule. HEAD is allowed where GET is.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        let method_ok = self.method == method.as_str() || (method == Method::HEAD && self.method == "GET");
        method_ok && pattern_matches(&self.path, path)
    }

    /// Whether `identity` (None: anonymous) may use the route.
    pub fn check(&self, identity: Option<&Identity>) -> Result<(), Problem> {
        if self.public {
            return Ok(());
        }
        let identity = identity.ok_or_else(|| Problem::unauthenticated("sign in to use this route"))?;
        if identity.has_any_role(&self.roles) {
            Ok(())
        } else {
            Err(Problem::forbidden("your roles do not allow this"))
        }
    }

    /// Among rules matching one path, the lowest rank is the most specific:
    /// literal segments rank before parameters, earlier segments first, so
    /// `/reward-claims/me` wins over `/reward-claims/{id}`.
    pub fn rank(&self) -> u64 {
        segments(&self.path)
            .take(64)
            .enumerate()
            .filter(|(_, s)| is_param(s))
            .fold(0, |acc, (i, _)| acc | (1 << (63 - i)))
    }
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

fn is_param(segment: &str) -> bool {
    segment.starts_with('{') && segment.ends_with('}')
}

fn pattern_matches(pattern: &str, path: &str) -> bool {
    let mut want = segments(pattern);
    let mut have = segments(path);
    loop {
        match (want.next(), have.next()) {
            (None, None) => return true,
            (Some(w), Some(h)) if is_param(w) || w == h => continue,
            _ => return false,
        }
    }
}

/// The most specific rule for `method path`, if any.
pub fn find<'r>(rules: &'r [RouteRule], method: &Method, path: &str) -> Option<&'r RouteRule> {
    rules.iter().filter(|r| r.matches(method, path)).min_by_key(|r| r.rank())
}

/// Service middleware: refuses a request its rule does not allow, before
/// the handler runs. Paths without a rule go on (the router answers 404/405).
pub async fn enforce(State(rules): State<Arc<[RouteRule]>>, request: Request, next: Next) -> Response {
    if let Some(rule) = find(&rules, request.method(), request.uri().path())
        && let Err(problem) = rule.check(request.extensions().get::<Identity>())
    {
        return problem.into_response();
    }
    next.run(request).await
}

/// Wraps a service's routes so every request is checked against `rules`.
pub fn enforced(routes: axum::Router, rules: Vec<RouteRule>) -> axum::Router {
    let rules: Arc<[RouteRule]> = rules.into();
    routes.layer(axum::middleware::from_fn_with_state(rules, enforce))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<RouteRule> {
        vec![
            RouteRule::roles(Method::GET, "/reward-claims/{id}", &[Role::Operator, Role::Auditor, Role::User]),
            RouteRule::roles(Method::GET, "/reward-claims/me", SIGNED_IN),
            RouteRule::public(Method::POST, "/auth/login"),
            RouteRule::roles(Method::PUT, "/users/{username}/roles", &[Role::Admin]),
        ]
    }

    #[test]
    fn patterns_match_whole_segments() {
        let rules = rules();
        assert_eq!(find(&rules, &Method::GET, "/reward-claims/abc").unwrap().path, "/reward-claims/{id}");
        assert_eq!(find(&rules, &Method::GET, "/reward-claims/me").unwrap().path, "/reward-claims/me");
        assert_eq!(find(&rules, &Method::HEAD, "/reward-claims/me").unwrap().path, "/reward-claims/me");
        assert!(find(&rules, &Method::GET, "/reward-claims").is_none());
        assert!(find(&rules, &Method::GET, "/reward-claims/a/b").is_none());
        assert!(find(&rules, &Method::GET, "/auth/login").is_none());
        assert!(find(&rules, &Method::PUT, "/users/bob/roles").is_some());
        assert!(find(&rules, &Method::PUT, "/users//roles").is_none());
    }

    #[test]
    fn checks_say_401_for_anonymous_and_403_for_the_wrong_role() {
        let rule = RouteRule::roles(Method::PUT, "/users/{username}/roles", &[Role::Admin]);
        assert_eq!(rule.check(None).unwrap_err().status.as_u16(), 401);
        let user = Identity { sub: "1".into(), username: "u".into(), roles: vec![Role::User, Role::Operator] };
        assert_eq!(rule.check(Some(&user)).unwrap_err().status.as_u16(), 403);
        let admin = Identity { roles: vec![Role::Admin], ..user };
        assert!(rule.check(Some(&admin)).is_ok());
        assert!(RouteRule::public(Method::POST, "/auth/login").check(None).is_ok());
    }

    #[test]
    fn malformed_rules_are_refused() {
        assert!(RouteRule::public(Method::GET, "/x").validate().is_ok());
        assert!(RouteRule::roles(Method::GET, "/x", &[]).validate().is_err());
        assert!(RouteRule { public: true, ..RouteRule::roles(Method::GET, "/x", &[Role::User]) }.validate().is_err());
        assert!(RouteRule { method: "get".into(), ..RouteRule::public(Method::GET, "/x") }.validate().is_err());
        assert!(RouteRule::public(Method::GET, "x").validate().is_err());
    }
}
