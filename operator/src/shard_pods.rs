//! The Kubernetes objects of one shard, built from its pool: the Pod, and for the
//! NodePort and LoadBalancer modes the Service in front of its one UDP port. Pure
//! functions of the pool, the shard's slot and the operator's settings.
//!
//! The operator owns shard Pods directly rather than through a StatefulSet: scaling down
//! must remove the shard that is empty, whichever it is, and a StatefulSet only ever
//! removes its highest ordinal (which may be full). Each shard takes a **slot**, the
//! lowest free number below `maxShards`; its name and (in HostPort and NodePort modes)
//! its port follow from the slot, so a replacement reuses both.
//!
//! Networking modes:
//! * **HostNetwork** — the pod shares the node's network and its media port: one shard
//!   per node and port (the scheduler enforces it from the declared ports).
//! * **HostPort** — each slot gets its own host port (`port + slot`) for UDP and ICE-TCP,
//!   so one node holds several shards, the way Agones hands out game-server ports.
//! * **NodePort** — a Service per shard maps node port `port + slot` (in the NodePort
//!   range) to the pod; traffic stays on the pod's node (`externalTrafficPolicy: Local`).
//! * **LoadBalancer** — a Service of type LoadBalancer per shard (a UDP listener cannot be
//!   shared: ICE state lives in one shard), advertised by its address once it has one.
//!
//! The advertised IP is `advertiseAddress` when set; else the node's internal IP from the
//! downward API, or its external IP (which the downward API does not offer: the
//! operator annotates the scheduled pod with it, and the shard waits for the annotation
//! to appear in its downward-API volume); in LoadBalancer mode, the load balancer's.

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use tutti_crds::duration::parse_duration;
use tutti_crds::{NetworkingMode, NodeAddress, ShardPool};

/// The label naming a shard's pool.
pub const POOL_LABEL: &str = "tutti.dev/pool";
/// The label naming the shard itself (its id in the live state).
pub const SHARD_LABEL: &str = "tutti.dev/shard";
/// The label holding the shard's slot.
pub const SLOT_LABEL: &str = "tutti.dev/slot";
/// Present (`"true"`) while someone depends on the shard; the pool's disruption budget
/// selects these.
pub const OCCUPIED_LABEL: &str = "tutti.dev/occupied";
/// Set once the operator has seen the shard's record: a registered shard whose record
/// vanishes may still carry media, one that never registered carries none.
pub const REGISTERED: &str = "tutti.dev/registered";
/// When the shard was told to drain (Unix seconds), so a restarted operator keeps the
/// deadline.
pub const DRAINING_SINCE: &str = "tutti.dev/draining-since";
/// The node's external IP, written on the pod by the operator once it is scheduled (for
/// `nodeAddress: ExternalIP`); the shard reads it through the downward API.
pub const ADVERTISE_IP_ANNOTATION: &str = "tutti.dev/advertise-ip";
/// Where that annotation appears inside the shard's container.
pub const ADVERTISE_IP_FILE: &str = "/etc/tutti/advertise/ip";
/// Where a shard's recordings volume is mounted (`template.recordings`).
pub const RECORDINGS_DIR: &str = "/recordings";
/// Where a shard of a pool with `hls` packages broadcasts (a volume of its own).
pub const HLS_DIR: &str = "/hls";
/// The group of the shard image's user (distroless `nonroot`), which owns the recordings.
const SHARD_GROUP: u32 = 65532;
/// Where the operator writes a shard's region, from its node's
/// `topology.kubernetes.io/region` label (`-` when the node has none).
pub const REGION_ANNOTATION: &str = "tutti.dev/region";
/// The label regions come from.
pub const NODE_REGION_LABEL: &str = "topology.kubernetes.io/region";
/// The file a shard reads its region from (the annotation, through the downward API).
pub const REGION_FILE: &str = "/etc/tutti/topology/region";
/// The HTTP port of every shard (admin API, signaling, metrics, health).
pub const HTTP_PORT: u16 = 7880;
/// Longest pool name: the shard's id and its Service's name must stay within 63 bytes.
pub const MAX_POOL_NAME: usize = 40;
/// The NodePort range of a default cluster.
const NODE_PORTS: std::ops::RangeInclusive<u32> = 30000..=32767;

/// What the operator tells every shard it starts (from its own flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRuntime {
    /// The live state shards heartbeat to (an `etcd://` URL).
    pub store: String,
    /// The Secret holding `admin-token` and `signal-token`.
    pub token_secret: String,
    /// A Secret whose keys `username` and `password` log shards into etcd, if any.
    pub etcd_secret: Option<String>,
    /// A Secret whose `ca.crt` etcd's certificate is checked against, if etcd speaks TLS.
    pub etcd_ca_secret: Option<String>,
    /// The service account shard pods run as.
    pub service_account: Option<String>,
}

impl Default for ShardRuntime {
    /// Shards of the chart's defaults: tokens in `tutti-tokens`, the live state in memory
    /// until the operator is told where etcd is.
    fn default() -> Self {
        Self {
            store: "memory".into(),
            token_secret: "tutti-tokens".into(),
            etcd_secret: None,
            etcd_ca_secret: None,
            service_account: None,
        }
    }
}

/// How a shard is reached, decided before its pod is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    /// The container's UDP (and ICE-TCP) port.
    pub media_port: u16,
    /// The IP clients send media to; the node's IP (downward API) when `None`.
    pub advertise_ip: Option<String>,
    /// The port clients send media to, when it differs from `media_port`.
    pub advertise_port: Option<u16>,
}

/// Checks what the schema cannot: names short enough, ports that fit, durations that
/// parse, an advertised address that is an IP.
pub fn validate_pool(pool: &ShardPool) -> Result<(), Vec<String>> {
    let spec = &pool.spec;
    let mut problems = Vec::new();
    let name = pool.name_any();
    let dns_label = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if name.len() > MAX_POOL_NAME || !dns_label {
        problems.push(format!(
            "the pool's name must be 1-{MAX_POOL_NAME} lowercase letters, digits and '-', starting with a letter (shard and Service names derive from it)"
        ));
    }
    if spec.min_shards > spec.max_shards {
        problems.push("maxShards must be at least minShards".into());
    }
    for (field, value) in [
        ("scaleDownDelay", &spec.scale_down_delay),
        ("drainTimeout", &spec.drain_timeout),
    ] {
        if parse_duration(value).is_none() {
            problems.push(format!(
                "{field} {value:?} is not a duration like 30s, 10m or 1h"
            ));
        }
    }
    if spec.template.image.trim().is_empty() {
        problems.push("template.image must name the tutti-sfu image".into());
    }
    let networking = &spec.template.networking;
    let last = u32::from(networking.port) + spec.max_shards.saturating_sub(1);
    match networking.mode {
        NetworkingMode::HostPort if last > 65535 => problems.push(format!(
            "HostPort gives each shard port {} + slot: {} shards do not fit below 65536",
            networking.port, spec.max_shards
        )),
        NetworkingMode::NodePort
            if !NODE_PORTS.contains(&u32::from(networking.port)) || !NODE_PORTS.contains(&last) =>
        {
            problems.push(format!(
                "NodePort gives each shard node port {} + slot: ports {}..={last} must lie in 30000..=32767",
                networking.port, networking.port
            ))
        }
        _ => {}
    }
    if let Some(address) = &networking.advertise_address
        && address.parse::<std::net::IpAddr>().is_err()
    {
        problems.push(format!(
            "advertiseAddress {address:?} must be an IP address"
        ));
    }
    let labels = spec.template.labels.iter();
    for (key, value) in labels {
        if key.is_empty()
            || key.len() > 253
            || value.len() > 63
            || key.contains(',')
            || value.contains(',')
        {
            problems.push(format!("template label {key}={value} is not a valid label"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// A shard's name from its pool and slot.
pub fn shard_name(pool: &str, slot: u32) -> String {
    format!("{pool}-shard-{slot}")
}

/// The Service in front of a shard's media port.
pub fn service_name(shard: &str) -> String {
    format!("{shard}-media")
}

/// The `n` lowest slots below `max` that no pod holds.
pub fn free_slots(taken: &BTreeSet<u32>, max: u32, n: u32) -> Vec<u32> {
    (0..max)
        .filter(|slot| !taken.contains(slot))
        .take(n as usize)
        .collect()
}

/// The media port a slot gets, and the advertised port where clients see another one.
pub fn slot_ports(pool: &ShardPool, slot: u32) -> Result<(u16, Option<u16>), String> {
    let networking = &pool.spec.template.networking;
    let offset = || {
        u16::try_from(u32::from(networking.port) + slot)
            .map_err(|_| format!("slot {slot} has no port below 65536"))
    };
    Ok(match networking.mode {
        NetworkingMode::HostNetwork | NetworkingMode::LoadBalancer => (networking.port, None),
        NetworkingMode::HostPort => (offset()?, None),
        NetworkingMode::NodePort => (networking.port, Some(offset()?)),
    })
}

/// Labels every object of a pool's shards carries.
pub fn pool_selector(pool: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "tutti-sfu".to_owned()),
        (POOL_LABEL.to_owned(), pool.to_owned()),
    ])
}

/// The reference that makes `pool` own (and garbage-collect) an object.
pub fn owner_reference(pool: &ShardPool) -> Value {
    json!({
        "apiVersion": ShardPool::api_version(&()),
        "kind": ShardPool::kind(&()),
        "name": pool.name_any(),
        "uid": pool.uid().unwrap_or_default(),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// The labels the shard publishes in the live state (rooms select shards by them).
fn shard_labels(pool: &ShardPool) -> String {
    let mut labels = pool.spec.template.labels.clone();
    labels.insert(POOL_LABEL.to_owned(), pool.name_any());
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Where shard pods find etcd's CA.
const ETCD_CA_DIR: &str = "/etc/tutti/etcd-ca";
const ETCD_CA_FILE: &str = "/etc/tutti/etcd-ca/ca.crt";

/// The variables that make a shard write recordings to `store` (and keep them on its
/// volume too when that is a claim of their own).
fn object_store_env(store: &tutti_crds::RecordingsObjectStore, keep_local: bool) -> Vec<Value> {
    let mut env = vec![
        json!({"name": "TUTTI_RECORD_S3_ENDPOINT", "value": store.endpoint}),
        json!({"name": "TUTTI_RECORD_S3_BUCKET", "value": store.bucket}),
        json!({"name": "TUTTI_RECORD_S3_REGION", "value": store.region}),
        json!({"name": "TUTTI_RECORD_S3_PREFIX", "value": store.prefix}),
        json!({"name": "TUTTI_RECORD_UPLOAD_EVERY", "value": store.upload_every_seconds.to_string()}),
    ];
    if store.virtual_host {
        env.push(json!({"name": "TUTTI_RECORD_S3_VIRTUAL_HOST", "value": "true"}));
    }
    if keep_local {
        env.push(json!({"name": "TUTTI_RECORD_KEEP_LOCAL", "value": "true"}));
    }
    if let Some(secret) = &store.credentials_secret {
        env.push(secret_env("AWS_ACCESS_KEY_ID", secret, "AWS_ACCESS_KEY_ID"));
        env.push(secret_env(
            "AWS_SECRET_ACCESS_KEY",
            secret,
            "AWS_SECRET_ACCESS_KEY",
        ));
    }
    env
}

fn secret_env(name: &str, secret: &str, key: &str) -> Value {
    json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
}

/// The pod of shard `name` in slot `slot`.
pub fn shard_pod(
    pool: &ShardPool,
    name: &str,
    slot: u32,
    exposure: &Exposure,
    runtime: &ShardRuntime,
) -> Result<Pod, String> {
    let spec = &pool.spec;
    let template = &spec.template;
    let mode = template.networking.mode;
    let media = exposure.media_port;
    let mut labels = template.labels.clone();
    labels.extend(pool_selector(&pool.name_any()));
    labels.insert(SHARD_LABEL.to_owned(), name.to_owned());
    labels.insert(SLOT_LABEL.to_owned(), slot.to_string());
    labels.insert("app.kubernetes.io/component".to_owned(), "shard".to_owned());
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        "tutti-operator".to_owned(),
    );
    let from_node_annotation = exposure.advertise_ip.is_none()
        && template.networking.node_address == NodeAddress::ExternalIP;
    let advertise_ip = match &exposure.advertise_ip {
        Some(ip) => json!({"name": "TUTTI_SFU_ADVERTISE_IP", "value": ip}),
        None if from_node_annotation => {
            json!({"name": "TUTTI_SFU_ADVERTISE_IP_FILE", "value": ADVERTISE_IP_FILE})
        }
        None => json!({"name": "TUTTI_SFU_ADVERTISE_IP",
            "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}),
    };
    let mut env = vec![
        json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        json!({"name": "TUTTI_SHARD_ID", "value": name}),
        json!({"name": "TUTTI_SFU_HTTP", "value": format!("0.0.0.0:{HTTP_PORT}")}),
        json!({"name": "TUTTI_SFU_UDP", "value": format!("0.0.0.0:{media}")}),
        json!({"name": "TUTTI_SHARD_PUBLIC_URL", "value": format!("http://$(POD_IP):{HTTP_PORT}")}),
        advertise_ip,
        json!({"name": "TUTTI_STORE", "value": runtime.store}),
        json!({"name": "TUTTI_SHARD_LABELS", "value": shard_labels(pool)}),
        json!({"name": "TUTTI_SFU_MAX_PARTICIPANTS", "value": spec.capacity.participants.to_string()}),
        json!({"name": "TUTTI_LOG_FORMAT", "value": "json"}),
        secret_env(
            "TUTTI_SFU_ADMIN_TOKEN",
            &runtime.token_secret,
            "admin-token",
        ),
        secret_env(
            "TUTTI_SFU_SIGNAL_TOKEN",
            &runtime.token_secret,
            "signal-token",
        ),
    ];
    if let Some(port) = exposure.advertise_port {
        env.push(json!({"name": "TUTTI_SFU_ADVERTISE_PORT", "value": port.to_string()}));
    }
    // A region given in the pool wins; otherwise the node's, as the operator annotates it.
    match &template.region {
        Some(region) => env.push(json!({"name": "TUTTI_SHARD_REGION", "value": region})),
        None => env.push(json!({"name": "TUTTI_SHARD_REGION_FILE", "value": REGION_FILE})),
    }
    if let Some(secret) = &runtime.etcd_secret {
        env.push(secret_env("TUTTI_ETCD_USER", secret, "username"));
        env.push(secret_env("TUTTI_ETCD_PASSWORD", secret, "password"));
    }
    if runtime.etcd_ca_secret.is_some() {
        env.push(json!({"name": "TUTTI_ETCD_CA", "value": ETCD_CA_FILE}));
    }
    if template.hls {
        env.push(json!({"name": "TUTTI_SFU_HLS_DIR", "value": HLS_DIR}));
    }
    if let Some(recordings) = &template.recordings {
        env.push(json!({"name": "TUTTI_SFU_RECORD_DIR", "value": RECORDINGS_DIR}));
        if let Some(store) = &recordings.object_store {
            env.extend(object_store_env(store, recordings.claim_name.is_some()));
        }
        if let (Some(days), Some(_)) = (recordings.retention_days, &recordings.claim_name) {
            env.push(json!({"name": "TUTTI_SFU_RECORD_RETENTION_DAYS", "value": days.to_string()}));
        }
    }
    let host_port = |port: u16| match mode {
        NetworkingMode::HostPort => json!(port),
        _ => Value::Null,
    };
    let mut ports = vec![
        json!({"name": "media-udp", "containerPort": media, "protocol": "UDP", "hostPort": host_port(media)}),
        json!({"name": "media-tcp", "containerPort": media, "protocol": "TCP", "hostPort": host_port(media)}),
        json!({"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}),
    ];
    for port in &mut ports {
        if let Some(fields) = port.as_object_mut() {
            fields.retain(|_, v| !v.is_null());
        }
    }
    let drain_timeout = parse_duration(&spec.drain_timeout)
        .ok_or_else(|| format!("drainTimeout {:?} is not a duration", spec.drain_timeout))?
        .as_secs();
    let mut container = json!({
        "name": "sfu",
        "image": template.image,
        "env": env,
        "ports": ports,
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2, "failureThreshold": 2},
        // Liveness asks the media thread (up to 5 s): a shard whose media thread died
        // is restarted within about half a minute.
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 6, "failureThreshold": 3},
        // Up to ten minutes to start: a shard on a public node waits for its address.
        "startupProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5, "failureThreshold": 120},
        // The kubelet runs this before SIGTERM: no new rooms or joins, and the pod stays
        // until its participants have left (or the grace period, the drain deadline, ends).
        "lifecycle": {"preStop": {"exec": {"command": ["/usr/local/bin/tutti-sfu", "drain", "--wait"]}}},
        "securityContext": {
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
    });
    let mut mounts = Vec::new();
    if from_node_annotation {
        mounts.push(
            json!({"name": "advertise", "mountPath": "/etc/tutti/advertise", "readOnly": true}),
        );
    }
    if template.region.is_none() {
        mounts.push(
            json!({"name": "topology", "mountPath": "/etc/tutti/topology", "readOnly": true}),
        );
    }
    if runtime.etcd_ca_secret.is_some() {
        mounts.push(json!({"name": "etcd-ca", "mountPath": ETCD_CA_DIR, "readOnly": true}));
    }
    if template.recordings.is_some() {
        mounts.push(json!({"name": "recordings", "mountPath": RECORDINGS_DIR}));
    }
    if template.hls {
        mounts.push(json!({"name": "hls", "mountPath": HLS_DIR}));
    }
    if !mounts.is_empty() {
        container["volumeMounts"] = json!(mounts);
    }
    if let Some(resources) = &template.resources {
        container["resources"] =
            serde_json::to_value(resources).map_err(|e| format!("resources: {e}"))?;
    }
    let mut pod_spec = json!({
        "containers": [container],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": drain_timeout + 30,
        "enableServiceLinks": false,
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
    });
    if !template.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(template.node_selector);
    }
    if let Some(account) = &runtime.service_account {
        pod_spec["serviceAccountName"] = json!(account);
    }
    pod_spec["automountServiceAccountToken"] = json!(false);
    let mut volumes = Vec::new();
    if from_node_annotation {
        volumes.push(json!({"name": "advertise", "downwardAPI": {"items": [
            {"path": "ip", "fieldRef": {"fieldPath": format!("metadata.annotations['{ADVERTISE_IP_ANNOTATION}']")}}
        ]}}));
    }
    if template.region.is_none() {
        volumes.push(json!({"name": "topology", "downwardAPI": {"items": [
            {"path": "region", "fieldRef": {"fieldPath": format!("metadata.annotations['{REGION_ANNOTATION}']")}}
        ]}}));
    }
    if let Some(secret) = &runtime.etcd_ca_secret {
        volumes.push(json!({"name": "etcd-ca", "secret": {
            "secretName": secret, "items": [{"key": "ca.crt", "path": "ca.crt"}]
        }}));
    }
    if let Some(recordings) = &template.recordings {
        volumes.push(match &recordings.claim_name {
            Some(claim) => json!({"name": "recordings", "persistentVolumeClaim": {
                "claimName": claim
            }}),
            // Only a staging area: what is stored whole is deleted from it.
            None => json!({"name": "recordings", "emptyDir": {}}),
        });
        // The image's non-root user writes there: the volume is made its group's.
        pod_spec["securityContext"]["fsGroup"] = json!(SHARD_GROUP);
        pod_spec["securityContext"]["fsGroupChangePolicy"] = json!("OnRootMismatch");
    }
    if template.hls {
        // A minute of segments per broadcast; in memory would count against the pod's.
        volumes.push(json!({"name": "hls", "emptyDir": {"sizeLimit": "1Gi"}}));
        pod_spec["securityContext"]["fsGroup"] = json!(SHARD_GROUP);
    }
    if !volumes.is_empty() {
        pod_spec["volumes"] = json!(volumes);
    }
    if mode == NetworkingMode::HostNetwork {
        pod_spec["hostNetwork"] = json!(true);
        pod_spec["dnsPolicy"] = json!("ClusterFirstWithHostNet");
    }
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": pool.namespace(),
            "labels": labels,
            "ownerReferences": [owner_reference(pool)],
        },
        "spec": pod_spec,
    });
    serde_json::from_value(pod).map_err(|e| format!("shard pod: {e}"))
}

/// The Service in front of a shard's media port (NodePort and LoadBalancer modes).
pub fn media_service(
    pool: &ShardPool,
    shard: &str,
    exposure: &Exposure,
) -> Result<Service, String> {
    let mode = pool.spec.template.networking.mode;
    let kind = match mode {
        NetworkingMode::NodePort => "NodePort",
        NetworkingMode::LoadBalancer => "LoadBalancer",
        _ => return Err("only NodePort and LoadBalancer shards have a media Service".into()),
    };
    let node_port = exposure.advertise_port.map_or(Value::Null, |p| json!(p));
    let port = |protocol: &str| {
        let mut port = json!({
            "name": format!("media-{}", protocol.to_lowercase()),
            "protocol": protocol,
            "port": exposure.advertise_port.unwrap_or(exposure.media_port),
            "targetPort": exposure.media_port,
            "nodePort": node_port,
        });
        if let Some(fields) = port.as_object_mut() {
            fields.retain(|_, v| !v.is_null());
        }
        port
    };
    let mut selector = pool_selector(&pool.name_any());
    selector.insert(SHARD_LABEL.to_owned(), shard.to_owned());
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(shard),
            "namespace": pool.namespace(),
            "labels": selector,
            "annotations": pool.spec.template.networking.service_annotations,
            "ownerReferences": [owner_reference(pool)],
        },
        "spec": {
            "type": kind,
            "selector": selector,
            // Media stays on the node of its shard and keeps the client's address (which
            // ICE checks against); no hop through another node.
            "externalTrafficPolicy": "Local",
            // Readiness says whether the shard takes newcomers (registered, not
            // draining); the calls already on it must keep flowing either way.
            "publishNotReadyAddresses": true,
            "ports": [port("UDP"), port("TCP")],
        },
    });
    serde_json::from_value(service).map_err(|e| format!("media service: {e}"))
}

/// Where a LoadBalancer Service is reached, once it is: an IP, or a host name (AWS
/// NLBs publish only names) to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BalancerAddress {
    /// An IP.
    Ip(String),
    /// A DNS name.
    Host(String),
}

/// The address a LoadBalancer Service got, if it has one (an IP preferred).
pub fn load_balancer_address(service: &Service) -> Option<BalancerAddress> {
    let ingress = service
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?;
    ingress
        .iter()
        .find_map(|i| i.ip.clone().map(BalancerAddress::Ip))
        .or_else(|| {
            ingress
                .iter()
                .find_map(|i| i.hostname.clone().map(BalancerAddress::Host))
        })
}

/// A node's region for shards: its `topology.kubernetes.io/region` label when it is a
/// valid region name, else `-` (none).
pub fn node_region(node: &k8s_openapi::api::core::v1::Node) -> String {
    node.metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(NODE_REGION_LABEL))
        .filter(|region| tutti_store::valid_region(region))
        .cloned()
        .unwrap_or_else(|| "-".into())
}

/// A node's ExternalIP, from its status.
pub fn node_external_ip(node: &k8s_openapi::api::core::v1::Node) -> Option<String> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "ExternalIP" && a.address.parse::<std::net::IpAddr>().is_ok())
        .map(|a| a.address.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tutti_crds::ShardPoolSpec;

    fn pool(mode: &str, port: u16) -> ShardPool {
        let spec: ShardPoolSpec = serde_json::from_value(json!({
            "minShards": 1, "maxShards": 4,
            "template": {"image": "tutti-sfu:test", "labels": {"tier": "low-latency"},
                "networking": {"mode": mode, "port": port}},
        }))
        .expect("spec");
        let mut pool = ShardPool::new("main", spec);
        pool.metadata.namespace = Some("media".into());
        pool.metadata.uid = Some("uid-1".into());
        pool
    }

    fn runtime() -> ShardRuntime {
        ShardRuntime {
            store: "etcd://tutti-etcd:2379".into(),
            token_secret: "tutti-tokens".into(),
            etcd_secret: None,
            etcd_ca_secret: None,
            service_account: None,
        }
    }

    fn env(pod: &Pod, name: &str) -> Value {
        let json = serde_json::to_value(pod).expect("pod");
        json["spec"]["containers"][0]["env"]
            .as_array()
            .and_then(|env| env.iter().find(|e| e["name"] == name).cloned())
            .unwrap_or(Value::Null)
    }

    fn build(pool: &ShardPool, slot: u32) -> Pod {
        let (media_port, advertise_port) = slot_ports(pool, slot).expect("ports");
        let exposure = Exposure {
            media_port,
            advertise_ip: pool.spec.template.networking.advertise_address.clone(),
            advertise_port,
        };
        shard_pod(pool, &shard_name("main", slot), slot, &exposure, &runtime()).expect("pod")
    }

    #[test]
    fn a_pool_with_a_recordings_volume_gives_every_shard_it_and_the_flag() {
        let mut recorded = pool("HostPort", 40000);
        recorded.spec.template.recordings = Some(tutti_crds::RecordingsVolume {
            claim_name: Some("tutti-recordings".into()),
            object_store: None,
            retention_days: Some(30),
        });
        let pod = build(&recorded, 0);
        assert_eq!(env(&pod, "TUTTI_SFU_RECORD_DIR")["value"], RECORDINGS_DIR);
        assert_eq!(env(&pod, "TUTTI_SFU_RECORD_RETENTION_DAYS")["value"], "30");
        let json = serde_json::to_value(&pod).expect("pod");
        let volume = json["spec"]["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == "recordings").cloned())
            .expect("the recordings volume");
        assert_eq!(
            volume["persistentVolumeClaim"]["claimName"],
            "tutti-recordings"
        );
        let mounts = json["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            mounts
                .iter()
                .any(|m| m["name"] == "recordings" && m["mountPath"] == RECORDINGS_DIR)
        );
        assert_eq!(json["spec"]["securityContext"]["fsGroup"], 65532);
        // Without one, no shard records.
        let plain = build(&pool("HostPort", 40000), 0);
        assert_eq!(env(&plain, "TUTTI_SFU_RECORD_DIR"), Value::Null);
        assert_eq!(env(&pod, "TUTTI_RECORD_S3_BUCKET"), Value::Null);
    }

    #[test]
    fn a_pool_with_hls_gives_every_shard_a_directory_to_package_in() {
        let mut packaging = pool("HostPort", 40000);
        packaging.spec.template.hls = true;
        let pod = build(&packaging, 0);
        assert_eq!(env(&pod, "TUTTI_SFU_HLS_DIR")["value"], HLS_DIR);
        let json = serde_json::to_value(&pod).expect("pod");
        let volume = json["spec"]["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == "hls").cloned())
            .expect("the HLS volume");
        assert_eq!(volume["emptyDir"]["sizeLimit"], "1Gi");
        let mounts = json["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            mounts
                .iter()
                .any(|m| m["name"] == "hls" && m["mountPath"] == HLS_DIR)
        );
        assert_eq!(
            env(&build(&pool("HostPort", 40000), 0), "TUTTI_SFU_HLS_DIR"),
            Value::Null
        );
    }

    #[test]
    fn a_pool_recording_to_object_storage_stages_in_a_volume_of_its_own() {
        let mut stored = pool("HostPort", 40000);
        stored.spec.template.recordings = Some(tutti_crds::RecordingsVolume {
            claim_name: None,
            retention_days: None,
            object_store: Some(tutti_crds::RecordingsObjectStore {
                endpoint: "https://s3.eu-west-1.amazonaws.com".into(),
                bucket: "lessons".into(),
                region: "eu-west-1".into(),
                prefix: "tutti/".into(),
                virtual_host: true,
                upload_every_seconds: 5,
                credentials_secret: Some("s3-keys".into()),
            }),
        });
        let pod = build(&stored, 0);
        assert_eq!(env(&pod, "TUTTI_SFU_RECORD_DIR")["value"], RECORDINGS_DIR);
        assert_eq!(env(&pod, "TUTTI_RECORD_S3_BUCKET")["value"], "lessons");
        assert_eq!(env(&pod, "TUTTI_RECORD_S3_REGION")["value"], "eu-west-1");
        assert_eq!(env(&pod, "TUTTI_RECORD_S3_PREFIX")["value"], "tutti/");
        assert_eq!(env(&pod, "TUTTI_RECORD_S3_VIRTUAL_HOST")["value"], "true");
        assert_eq!(env(&pod, "TUTTI_RECORD_UPLOAD_EVERY")["value"], "5");
        // Nothing of its own to keep a copy on.
        assert_eq!(env(&pod, "TUTTI_RECORD_KEEP_LOCAL"), Value::Null);
        assert_eq!(
            env(&pod, "AWS_SECRET_ACCESS_KEY")["valueFrom"]["secretKeyRef"],
            json!({"name": "s3-keys", "key": "AWS_SECRET_ACCESS_KEY"})
        );
        let json = serde_json::to_value(&pod).expect("pod");
        let volume = json["spec"]["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == "recordings").cloned())
            .expect("the staging volume");
        assert_eq!(volume["emptyDir"], json!({}));
    }

    #[test]
    fn host_port_shards_get_their_own_port_and_advertise_the_node() {
        let pool = pool("HostPort", 40000);
        let pod = serde_json::to_value(build(&pool, 2)).expect("json");
        let ports = &pod["spec"]["containers"][0]["ports"];
        assert_eq!(ports[0]["containerPort"], 40002);
        assert_eq!(ports[0]["hostPort"], 40002);
        assert_eq!(ports[0]["protocol"], "UDP");
        assert_eq!(ports[1]["hostPort"], 40002);
        assert!(ports[2].get("hostPort").is_none());
        assert!(pod["spec"].get("hostNetwork").is_none());
        assert_eq!(pod["metadata"]["name"], "main-shard-2");
        assert_eq!(pod["metadata"]["labels"][SLOT_LABEL], "2");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ShardPool");
        let pod = build(&pool, 2);
        assert_eq!(
            env(&pod, "TUTTI_SFU_ADVERTISE_IP")["valueFrom"]["fieldRef"]["fieldPath"],
            "status.hostIP"
        );
        assert_eq!(env(&pod, "TUTTI_SFU_UDP")["value"], "0.0.0.0:40002");
        assert_eq!(
            env(&pod, "TUTTI_SHARD_LABELS")["value"],
            "tier=low-latency,tutti.dev/pool=main"
        );
        assert_eq!(
            env(&pod, "TUTTI_SFU_ADMIN_TOKEN")["valueFrom"]["secretKeyRef"]["key"],
            "admin-token"
        );
    }

    #[test]
    fn shards_on_public_nodes_wait_for_the_external_ip_the_operator_writes() {
        let mut pool = pool("HostPort", 40000);
        pool.spec.template.networking.node_address = NodeAddress::ExternalIP;
        let pod = build(&pool, 0);
        assert_eq!(
            env(&pod, "TUTTI_SFU_ADVERTISE_IP_FILE")["value"],
            ADVERTISE_IP_FILE
        );
        assert_eq!(env(&pod, "TUTTI_SFU_ADVERTISE_IP"), Value::Null);
        let json = serde_json::to_value(&pod).expect("json");
        assert_eq!(
            json["spec"]["volumes"][0]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.annotations['tutti.dev/advertise-ip']"
        );
        assert_eq!(
            json["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
            "/etc/tutti/advertise"
        );
    }

    #[test]
    fn host_network_shards_share_the_node_and_keep_the_base_port() {
        let pool = pool("HostNetwork", 7882);
        let pod = serde_json::to_value(build(&pool, 3)).expect("json");
        assert_eq!(pod["spec"]["hostNetwork"], true);
        assert_eq!(pod["spec"]["dnsPolicy"], "ClusterFirstWithHostNet");
        assert_eq!(
            pod["spec"]["containers"][0]["ports"][0]["containerPort"],
            7882
        );
    }

    #[test]
    fn node_port_shards_advertise_their_node_port_through_a_local_service() {
        let mut pool = pool("NodePort", 31000);
        pool.spec.template.networking.advertise_address = Some("203.0.113.7".into());
        let pod = build(&pool, 1);
        assert_eq!(env(&pod, "TUTTI_SFU_ADVERTISE_PORT")["value"], "31001");
        assert_eq!(env(&pod, "TUTTI_SFU_ADVERTISE_IP")["value"], "203.0.113.7");
        let (media_port, advertise_port) = slot_ports(&pool, 1).expect("ports");
        let exposure = Exposure {
            media_port,
            advertise_ip: None,
            advertise_port,
        };
        let service =
            serde_json::to_value(media_service(&pool, "main-shard-1", &exposure).expect("svc"))
                .expect("json");
        assert_eq!(service["spec"]["type"], "NodePort");
        assert_eq!(service["spec"]["externalTrafficPolicy"], "Local");
        assert_eq!(service["spec"]["ports"][0]["nodePort"], 31001);
        assert_eq!(service["spec"]["ports"][0]["targetPort"], 31000);
        assert_eq!(service["spec"]["ports"][1]["protocol"], "TCP");
        assert_eq!(service["spec"]["selector"][SHARD_LABEL], "main-shard-1");
    }

    #[test]
    fn pools_that_cannot_work_are_refused_with_reasons() {
        assert!(validate_pool(&pool("HostPort", 7882)).is_ok());
        let problems = validate_pool(&pool("HostPort", 65534)).expect_err("no room");
        assert!(problems[0].contains("65536"), "{problems:?}");
        let problems = validate_pool(&pool("NodePort", 7882)).expect_err("range");
        assert!(problems[0].contains("30000"), "{problems:?}");
        let mut bad = pool("LoadBalancer", 7882);
        bad.spec.template.networking.advertise_address = Some("nlb.example.com".into());
        bad.spec.drain_timeout = "soon".into();
        let problems = validate_pool(&bad).expect_err("bad");
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn slots_fill_the_lowest_gaps() {
        let taken = BTreeSet::from([0, 2]);
        assert_eq!(free_slots(&taken, 5, 2), vec![1, 3]);
        assert_eq!(free_slots(&taken, 3, 5), vec![1]);
    }

    #[test]
    fn a_shard_without_a_pool_region_reads_its_nodes() {
        let mut pool = pool("HostPort", 40000);
        let pod = build(&pool, 0);
        assert_eq!(env(&pod, "TUTTI_SHARD_REGION_FILE")["value"], REGION_FILE);
        assert_eq!(env(&pod, "TUTTI_SHARD_REGION"), Value::Null);
        let json = serde_json::to_value(&pod).expect("json");
        let volume = &json["spec"]["volumes"][0];
        assert_eq!(volume["name"], "topology");
        assert_eq!(
            volume["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.annotations['tutti.dev/region']"
        );
        assert_eq!(
            json["spec"]["containers"][0]["volumeMounts"][0]["mountPath"],
            "/etc/tutti/topology"
        );
        pool.spec.template.region = Some("eu-west-1".into());
        let pod = build(&pool, 0);
        assert_eq!(env(&pod, "TUTTI_SHARD_REGION")["value"], "eu-west-1");
        assert_eq!(env(&pod, "TUTTI_SHARD_REGION_FILE"), Value::Null);
    }

    #[test]
    fn a_shard_learns_its_region_from_the_pool_or_its_node() {
        let from_node = |labels: serde_json::Value| -> String {
            let node: k8s_openapi::api::core::v1::Node =
                serde_json::from_value(json!({"metadata": {"name": "n", "labels": labels}}))
                    .unwrap();
            node_region(&node)
        };
        assert_eq!(
            from_node(json!({"topology.kubernetes.io/region": "eu-west-1"})),
            "eu-west-1"
        );
        assert_eq!(from_node(json!({})), "-");
        assert_eq!(
            from_node(json!({"topology.kubernetes.io/region": "Not A Region!"})),
            "-"
        );
    }

    #[test]
    fn shards_check_etcds_certificate_against_the_ca_they_are_given() {
        let pool = pool("HostPort", 7882);
        let (media_port, advertise_port) = slot_ports(&pool, 0).expect("ports");
        let exposure = Exposure {
            media_port,
            advertise_ip: None,
            advertise_port,
        };
        let mut with_ca = runtime();
        with_ca.etcd_ca_secret = Some("tutti-etcd-tls".into());
        let pod = shard_pod(&pool, &shard_name("main", 0), 0, &exposure, &with_ca).expect("pod");
        assert_eq!(env(&pod, "TUTTI_ETCD_CA")["value"], ETCD_CA_FILE);
        let json = serde_json::to_value(&pod).expect("pod");
        let volumes = json["spec"]["volumes"].to_string();
        assert!(
            volumes.contains("tutti-etcd-tls") && volumes.contains("ca.crt"),
            "{volumes}"
        );
        let mounts = json["spec"]["containers"][0]["volumeMounts"].to_string();
        assert!(mounts.contains(ETCD_CA_DIR), "{mounts}");
        assert_eq!(env(&build(&pool, 0), "TUTTI_ETCD_CA"), Value::Null);
    }
}
