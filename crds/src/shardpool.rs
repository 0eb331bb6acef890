//! `ShardPool`: the fleet of SFU shard pods, scaled with demand.

use crate::common::Condition;
use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the operator keeps running.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "tutti.dev",
    version = "v1alpha1",
    kind = "ShardPool",
    namespaced,
    status = "ShardPoolStatus",
    shortname = "sp",
    category = "tutti",
    doc = "The SFU shard fleet: how many shards, how big, and how they reach the network.",
    validation = Rule::new("self.spec.maxShards >= self.spec.minShards").message("maxShards must be at least minShards"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.ready"),
    printcolumn(name = "Draining", type_ = "integer", json_path = ".status.draining"),
    printcolumn(name = "Min", type_ = "integer", json_path = ".spec.minShards"),
    printcolumn(name = "Max", type_ = "integer", json_path = ".spec.maxShards"),
    printcolumn(name = "Load", type_ = "string", json_path = ".status.load"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ShardPoolSpec {
    /// Shards kept running even when idle (0–1000).
    #[serde(default = "default_min_shards")]
    #[schemars(range(max = 1000))]
    pub min_shards: u32,
    /// Shards never exceeded (1–1000).
    #[serde(default = "default_max_shards")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_shards: u32,
    /// What one shard takes.
    #[serde(default)]
    pub capacity: ShardCapacity,
    /// Free participant seats kept ready across the pool (Agones' buffer).
    #[serde(default = "default_buffer")]
    #[schemars(range(max = 1000000))]
    pub buffer: u32,
    /// How long a shard must stay empty before it is drained and removed.
    #[serde(default = "default_scale_down_delay")]
    #[schemars(regex(pattern = r"^([0-9]{1,6}(s|m|h))+$"))]
    pub scale_down_delay: String,
    /// How long a draining shard may keep participants before it is removed anyway.
    #[serde(default = "default_drain_timeout")]
    #[schemars(regex(pattern = r"^([0-9]{1,6}(s|m|h))+$"))]
    pub drain_timeout: String,
    /// The shard pods.
    pub template: ShardTemplate,
}

fn default_min_shards() -> u32 {
    1
}

fn default_max_shards() -> u32 {
    10
}

fn default_buffer() -> u32 {
    50
}

fn default_scale_down_delay() -> String {
    "10m".into()
}

fn default_drain_timeout() -> String {
    "1h".into()
}

/// What one shard takes.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ShardCapacity {
    /// Participants (publishers and viewers) on one shard (1–100000).
    #[serde(default = "default_participants")]
    #[schemars(range(min = 1, max = 100000))]
    pub participants: u32,
    /// Subscriber streams one shard forwards (1–1000000).
    #[serde(default = "default_forwarded_streams")]
    #[schemars(range(min = 1, max = 1000000))]
    pub forwarded_streams: u32,
}

fn default_participants() -> u32 {
    500
}

fn default_forwarded_streams() -> u32 {
    5000
}

impl Default for ShardCapacity {
    fn default() -> Self {
        Self {
            participants: default_participants(),
            forwarded_streams: default_forwarded_streams(),
        }
    }
}

/// The shard pod template.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShardTemplate {
    /// The `tutti-sfu` image.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// CPU and memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Nodes the shards may run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Labels on the shards (Rooms select shards by these).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Region or zone label, for seating viewers near their edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// How media reaches the shards.
    #[serde(default)]
    pub networking: Networking,
    /// The shards package broadcasts as HLS when the control plane asks (in a volume of
    /// their own at `/hls`); the image must have `ffmpeg` (`sfu/Dockerfile.media`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hls: bool,
    /// Where the shards write the recordings they are asked for (`Recording`); unset,
    /// they record nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recordings: Option<RecordingsVolume>,
}

/// Where every shard of a pool writes recordings: a volume mounted at `/recordings`,
/// object storage, or both (the volume then keeps a copy).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.claimName) || has(self.objectStore)").message("recordings need a claimName, an objectStore or both"))]
pub struct RecordingsVolume {
    /// The PersistentVolumeClaim the shards mount (ReadWriteMany when they may run on more
    /// than one node, such as EFS on EKS). Unset: recordings are staged in a volume of
    /// the pod's own and kept only in object storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: Option<String>,
    /// S3-compatible object storage recordings are written to as they go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_store: Option<RecordingsObjectStore>,
    /// Recordings on the claim that ended more than this many days ago are deleted
    /// (1-36500; unset keeps them; object storage keeps its own rules, such as a bucket
    /// lifecycle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 36500))]
    pub retention_days: Option<u32>,
}

/// An S3-compatible bucket for recordings.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RecordingsObjectStore {
    /// The endpoint, e.g. `https://s3.eu-west-1.amazonaws.com` or `http://minio:9000`.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("endpoint is an http(s) URL"))]
    pub endpoint: String,
    /// The bucket.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// The region requests are signed for.
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64))]
    pub region: String,
    /// Prepended to every key (`recordings/`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = Rule::new("!self.startsWith('/')").message("prefix does not start with /"))]
    pub prefix: String,
    /// Address the bucket by host name (AWS) instead of by path (MinIO).
    #[serde(default)]
    pub virtual_host: bool,
    /// Seconds between uploads of a running recording's new bytes: what losing a shard
    /// can lose (1-3600, default 10).
    #[serde(default = "default_upload_every")]
    #[schemars(range(min = 1, max = 3600))]
    pub upload_every_seconds: u32,
    /// A Secret in the pool's namespace with `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY`. Unset: the pod's own credentials (EKS Pod Identity, set
    /// up for the shards' service account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_upload_every() -> u32 {
    10
}

/// How clients' media reaches a shard's one UDP port.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Networking {
    /// The mode.
    #[serde(default)]
    pub mode: NetworkingMode,
    /// The media port (HostNetwork, LoadBalancer, NodePort), or the first of the host
    /// ports handed out (HostPort) (1024–65535).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: u16,
    /// The IP clients are told to send media to. Unset: the node's address (see
    /// `nodeAddress`), or in LoadBalancer mode the load balancer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_address: Option<String>,
    /// Which address of its node a shard advertises when `advertiseAddress` is unset.
    #[serde(default)]
    pub node_address: NodeAddress,
    /// Annotations on each shard's media Service (NodePort, LoadBalancer), such as a
    /// cloud's load-balancer settings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_annotations: BTreeMap<String, String>,
}

/// Which address of its node a shard advertises.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NodeAddress {
    /// The node's primary (internal) IP: LANs, home servers, private clusters.
    #[default]
    InternalIP,
    /// The node's ExternalIP (public nodes in a cloud); shards wait for the operator
    /// to read it from the Node before they start.
    ExternalIP,
}

fn default_port() -> u16 {
    7882
}

impl Default for Networking {
    fn default() -> Self {
        Self {
            mode: NetworkingMode::default(),
            port: default_port(),
            advertise_address: None,
            node_address: NodeAddress::default(),
            service_annotations: BTreeMap::new(),
        }
    }
}

/// How a shard's UDP port is exposed.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NetworkingMode {
    /// The pod uses the node's network; one shard per node and port.
    HostNetwork,
    /// Each shard gets its own host port, several shards per node (the Agones way).
    #[default]
    HostPort,
    /// One UDP port behind a cloud load balancer.
    LoadBalancer,
    /// One UDP port behind a NodePort service.
    NodePort,
}

/// What the operator observed.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ShardPoolStatus {
    /// Shards ready to take rooms.
    #[serde(default)]
    pub ready: u32,
    /// Shards draining before removal.
    #[serde(default)]
    pub draining: u32,
    /// Participants across the pool.
    #[serde(default)]
    pub participants: u32,
    /// Participant seats across ready shards.
    #[serde(default)]
    pub capacity: u32,
    /// Seats in use, as a percentage (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<String>,
    /// Ready and Scaling.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
