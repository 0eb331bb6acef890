//! Local mode: the whole system in one process, with no Kubernetes and no etcd.
//!
//! It starts a few SFU shards (the same shard code as in a cluster, each with its own UDP
//! port and HTTP server on loopback), the in-memory live state the shards heartbeat into,
//! the placer that stands in for the operator, and the gateway in front of them. Only the
//! store and the placement authority differ from a cluster; sessions, admission,
//! relaying and media are the production paths.

use crate::metrics::GatewayMetrics;
use crate::placement::{LocalPlacer, RoomRouter, refresh_occupancy};
use crate::server::{AppState, RunningServer, serve};
use crate::session::{Gateway, GatewayOptions, GatewayParts};
use crate::shard_link::WsConnector;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tutti_sfu::heartbeat::{self, HeartbeatConfig};
use tutti_sfu::server::{RunningShard, ShardOptions};
use tutti_sfu::shard::CoreConfig;
use tutti_store::{LiveView, LiveWriter, MemoryStore};

/// Heartbeat period of embedded shards.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often room occupancy is refreshed for the room list.
const OCCUPANCY_PERIOD: Duration = Duration::from_secs(2);

/// How often local mode replans broadcast cascades.
const CASCADE_PERIOD: Duration = Duration::from_secs(1);

/// Local mode's stand-in for the operator's cascade loop: places each broadcast's stage
/// (so that it has an origin before anyone presents) and drives its cascade.
async fn drive_cascades(
    store: MemoryStore,
    placer: Arc<LocalPlacer>,
    admin_token: String,
    stop: CancellationToken,
) {
    let driver = tutti_cascade::Driver::new(store.clone(), admin_token, Default::default());
    loop {
        for broadcast in store.broadcasts() {
            if store.route(&broadcast.stage).is_none()
                && let Some(stage) = store.room(&broadcast.stage)
                && let Err(err) = placer.shard_for(&stage, None).await
            {
                tracing::warn!(broadcast = %broadcast.name, %err, "stage not placed");
            }
        }
        for (broadcast, outcome) in driver.pass().await {
            if let Err(err) = outcome {
                tracing::debug!(%broadcast, %err, "cascade not applied");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CASCADE_PERIOD) => {}
        }
    }
}

/// What local mode needs to start.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// What every gateway takes.
    pub common: GatewayOptions,
    /// Shards to embed.
    pub shards: usize,
    /// IP the media sockets bind to.
    pub media_bind: IpAddr,
    /// First media port (shard N uses it plus N); 0 picks free ports.
    pub media_port: u16,
    /// IP advertised to clients for media.
    pub advertise_ip: IpAddr,
    /// Participants one shard accepts.
    pub shard_max_participants: usize,
}

/// A running local system.
pub struct LocalSystem {
    /// The gateway's HTTP server.
    pub server: RunningServer,
    /// The embedded shards, with their ids.
    pub shards: Vec<(String, RunningShard)>,
    /// The live state.
    pub store: MemoryStore,
    stop: CancellationToken,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl LocalSystem {
    /// Starts the shards, waits until each has published its record, then serves.
    pub async fn start(options: LocalOptions) -> Result<Self, Box<dyn std::error::Error>> {
        let store = MemoryStore::new();
        for room in &options.common.rooms.rooms {
            store.put_room(room.clone()).await?;
        }
        for broadcast in &options.common.rooms.broadcasts {
            store.put_broadcast(broadcast.clone()).await?;
        }
        let admin_token = tutti_sfu::peer::random_token(32);
        let signal_token = tutti_sfu::peer::random_token(32);
        let stop = CancellationToken::new();
        let mut shards = Vec::new();
        let mut background = Vec::new();
        for index in 0..options.shards {
            let port = match options.media_port {
                0 => 0,
                base => base.saturating_add(index as u16),
            };
            let udp = SocketAddr::new(options.media_bind, port);
            let mut core = CoreConfig::new(udp);
            core.max_participants = options.shard_max_participants;
            let shard = tutti_sfu::server::start(ShardOptions {
                http: SocketAddr::from(([127, 0, 0, 1], 0)),
                udp,
                advertise_ip: Some(options.advertise_ip),
                advertise_port: None,
                ice_tcp: true,
                admin_token: admin_token.clone(),
                signal_token: signal_token.clone(),
                core,
                name: format!("local-{index}"),
                registration: None,
            })
            .await?;
            let id = format!("local-{index}");
            let beat = HeartbeatConfig {
                id: id.clone(),
                http_base: format!("http://{}", shard.http_addr),
                region: None,
                probe: Some(shard.advertised.to_string()),
                region_file: None,
                labels: Default::default(),
                capacity: options.shard_max_participants as u32,
                interval: HEARTBEAT,
                ttl: HEARTBEAT * 5,
            };
            // The first record is written before the gateway serves, so the first join
            // already finds every shard.
            let load = shard.handle.load().await?;
            store
                .heartbeat(heartbeat::record(&beat, &load), beat.ttl)
                .await?;
            let registration = heartbeat::Registration::new(beat.ttl);
            background.push(tokio::spawn(heartbeat::run(
                beat,
                shard.handle.clone(),
                store.clone(),
                registration,
                stop.clone(),
            )));
            tracing::info!(shard = %id, media = %shard.udp_addr, advertised = %shard.advertised, "embedded shard started");
            shards.push((id, shard));
        }
        let occupancy = crate::rooms::OccupancyMap::default();
        background.push(tokio::spawn(refresh_occupancy(
            store.clone(),
            admin_token.clone(),
            occupancy.clone(),
            OCCUPANCY_PERIOD,
            stop.clone(),
        )));
        let metrics = Arc::new(GatewayMetrics::new());
        metrics.include_shards(
            shards
                .iter()
                .map(|(id, shard)| (id.clone(), shard.metrics.clone()))
                .collect(),
        );
        let placer = Arc::new(LocalPlacer::new(store.clone(), admin_token.clone()));
        background.push(tokio::spawn(drive_cascades(
            store.clone(),
            placer.clone(),
            admin_token,
            stop.clone(),
        )));
        let view: Arc<dyn LiveView> = Arc::new(store.clone());
        let gateway = Gateway::build(
            GatewayParts {
                view: view.clone(),
                router: placer,
                connector: Arc::new(WsConnector::new(
                    signal_token,
                    crate::shard_urls::ShardNetworks::default(),
                )),
                occupancy,
                metrics,
            },
            &options.common,
        )?;
        let server = serve(options.common.listen, AppState::new(gateway, view)).await?;
        Ok(Self {
            server,
            shards,
            store,
            stop,
            background,
        })
    }

    /// The gateway's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Tells clients to reconnect, stops the gateway, then stops the shards.
    pub async fn stop(self) {
        self.server.stop().await;
        self.stop.cancel();
        for task in self.background {
            let _ = task.await;
        }
        for (_, shard) in self.shards {
            shard.stop().await;
        }
    }
}
