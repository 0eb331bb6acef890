//! Types the resources share.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The standard Kubernetes condition (`type`, `status`, `reason`, `message`,
/// `lastTransitionTime`, `observedGeneration`).
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// A key of a Secret in the resource's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within it.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A reference to another object in the same namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct LocalObjectRef {
    /// Its name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}
