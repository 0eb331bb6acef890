//! Custom resource types of Tutti (`tutti.dev/v1alpha1`).
//!
//! The Room, Broadcast and ShardPool types, and the generated CRD YAML kept in
//! sync with them, arrive with the operator issue; this crate holds the group
//! and version they will share.

/// The API group of every Tutti custom resource.
pub const GROUP: &str = "tutti.dev";
/// The API version of every Tutti custom resource.
pub const VERSION: &str = "v1alpha1";
