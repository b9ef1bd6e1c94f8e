//! The auth service over real HTTP, on SQLite and PostgreSQL.

mod accounts;
mod keys;
mod ops;
mod sessions;
mod support;
mod throttle;
