//! The shared kit of the rewards services.
//!
//! Everything here is plumbing that every service needs in the same shape:
//! problem+json errors ([`problem`]), request extractors that answer bad input
//! with those errors ([`extract`]), the HTTP layer stack with request ids and
//! access logs ([`http`]), `/health` and `/ready` ([`health`]), configuration
//! ([`config`]), logging ([`telemetry`]), stores opened by URL ([`store`]), the
//! gateway-to-service identity proof ([`identity`]) and graceful serving
//! ([`server`]). Domain logic lives in the service crates, never here.

pub mod audit;
pub mod clock;
pub mod config;
pub mod extract;
pub mod health;
pub mod http;
pub mod identity;
pub mod openapi;
pub mod page;
pub mod problem;
pub mod rules;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;

#[cfg(feature = "testing")]
pub mod testing;

pub use problem::{Problem, ProblemCode};
