//! The gateway in front of a real auth service and real backends on
//! ephemeral ports.

mod admin;
mod auth;
mod forwarding;
mod instances;
mod limits;
mod streaming;
mod support;
mod wire;
