//! Cluster mode: a gateway among several, in front of shards it does not own.
//!
//! The live state comes from etcd through a local copy; rooms are placed by the operator
//! (rooms declared in a rooms file, and rooms created on first join, are handed to it as
//! records). Any gateway serves any client: sessions resume through any replica, and a
//! client whose room moved is told to join again.

use crate::metrics::GatewayMetrics;
use crate::routing::StoreRouter;
use crate::server::{AppState, RunningServer, serve};
use crate::session::{Gateway, GatewayOptions, GatewayParts};
use crate::shard_link::WsConnector;
use std::sync::Arc;
use std::time::Duration;
use tutti_store::{EtcdConfig, EtcdStore, LiveView, LiveWriter};

/// The owner of room records a gateway writes from its rooms file.
pub const FILE_OWNER: &str = "Gateway/file";

/// What a cluster gateway needs to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// What every gateway takes.
    pub common: GatewayOptions,
    /// Where etcd is.
    pub etcd: EtcdConfig,
    /// The token shards accept on their signaling endpoint.
    pub shard_signal_token: String,
    /// How long a join waits for its room to be placed.
    pub route_wait: Duration,
    /// The networks shard signaling URLs must point into to get the token.
    pub shard_networks: crate::shard_urls::ShardNetworks,
}

/// A running cluster gateway.
pub struct ClusterGateway {
    /// The HTTP server.
    pub server: RunningServer,
    /// The live state.
    pub store: EtcdStore,
}

impl ClusterGateway {
    /// Connects to etcd (serving even before it answers, not ready until it does), hands
    /// the rooms file's rooms and broadcasts to the operator, and serves.
    pub async fn start(options: ClusterOptions) -> Result<Self, Box<dyn std::error::Error>> {
        let store = EtcdStore::connect(&options.etcd, Duration::from_secs(5)).await?;
        if !store.synced() {
            tracing::warn!("etcd does not answer yet; joins wait until it does");
        }
        for room in &options.common.rooms.rooms {
            let mut record = room.clone();
            record.owner = Some(FILE_OWNER.into());
            if store.room(&record.name).as_ref() != Some(&record) {
                store.put_room(record).await?;
            }
        }
        for broadcast in &options.common.rooms.broadcasts {
            let mut record = broadcast.clone();
            record.owner = Some(FILE_OWNER.into());
            if store.broadcast(&record.name).as_ref() != Some(&record) {
                store.put_broadcast(record).await?;
            }
        }
        let recordings = Arc::new(crate::recordings::StoreRecordings::new(
            store.clone(),
            false,
        ));
        for room in &options.common.rooms.recorded {
            recordings.declare(room).await?;
        }
        let view: Arc<dyn LiveView> = Arc::new(store.clone());
        let gateway = Gateway::build(
            GatewayParts {
                view: view.clone(),
                router: Arc::new(StoreRouter::new(store.clone(), options.route_wait)),
                connector: Arc::new(WsConnector::new(
                    options.shard_signal_token.clone(),
                    options.shard_networks.clone(),
                )),
                occupancy: Default::default(),
                metrics: Arc::new(GatewayMetrics::new()),
            },
            &options.common,
        )?;
        // Recordings run on shards started with --record-dir; a shard without one refuses,
        // and the recording's status says so.
        let state = AppState::new(gateway, view).with_recordings(recordings);
        let server = serve(options.common.listen, state).await?;
        Ok(Self { server, store })
    }

    /// The gateway's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Tells clients to reconnect (to another replica) and stops.
    pub async fn stop(self) {
        self.server.stop().await;
    }
}
