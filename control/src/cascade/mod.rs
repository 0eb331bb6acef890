//! Broadcast cascades: the pure planner of relay trees ([`plan`]) and the driver that
//! applies plans to shards and publishes them in the live state ([`driver`]).

pub mod driver;
pub mod plan;

pub use driver::{DriveError, Driven, Driver};
pub use plan::{CascadeParams, Demand, Edge, Plan, PlanError};
