//! The events service over real HTTP, on SQLite and PostgreSQL.

mod audit;
mod claims;
mod decider;
mod events;
mod faults;
mod payout;
mod rewards;
mod support;
