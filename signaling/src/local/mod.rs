//! Local mode: the whole system in one process, with no Kubernetes and no etcd.
//!
//! It starts a few SFU shards (the same shard code as in a cluster, each with its own UDP
//! port and HTTP server on loopback), the in-memory live state the shards heartbeat into,
//! the control loops a standalone operator runs (`tutti_control`: placement, cascades,
//! garbage collection) and a gateway that finds rooms as a cluster gateway does. Only the
//! store differs from a cluster (memory instead of etcd) and Kubernetes is absent;
//! placement, sessions, admission, relaying and media are the production paths.

mod hls;
mod occupancy;
mod shard_metrics;

use crate::metrics::GatewayMetrics;
use crate::recordings::StoreRecordings;
use crate::rooms::OccupancyMap;
use crate::routing::StoreRouter;
use crate::server::{AppState, RunningServer, serve};
use crate::session::{Gateway, GatewayOptions, GatewayParts};
use crate::shard_link::WsConnector;
use occupancy::refresh_occupancy;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tutti_control::loops::{self, LoopSettings, Quiet};
use tutti_control::placement::Strategy;
use tutti_sfu::heartbeat::{self, HeartbeatConfig};
use tutti_sfu::server::{RunningShard, ShardOptions};
use tutti_sfu::shard::CoreConfig;
use tutti_store::{LiveView, LiveWriter, MemoryStore};

/// Heartbeat period of embedded shards.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often room occupancy is refreshed for the room list.
const OCCUPANCY_PERIOD: Duration = Duration::from_secs(2);

/// How long a join waits for its room to be placed (the control loop places it within
/// milliseconds; this only bounds a shard that does not answer).
const ROUTE_WAIT: Duration = Duration::from_secs(10);

/// The control loops' settings in local mode: the operator's, with a faster poll (the
/// shards are in this process) and no history to compact.
fn control_settings(admin_token: String) -> LoopSettings {
    LoopSettings {
        admin_token,
        strategy: Strategy::default(),
        gc_period: Duration::from_secs(30),
        gc_grace: Duration::from_secs(60),
        shard_poll: Duration::from_millis(500),
        compact_every: Duration::from_secs(3600),
        cascade: Default::default(),
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
    /// Where recordings go: those of the rooms declared with `record = true`, and those
    /// started over the HTTP API.
    pub record_dir: Option<std::path::PathBuf>,
    /// Recordings that ended more than this many days ago are deleted; 0 keeps them.
    pub record_retention_days: u32,
    /// Object storage recordings are also written to.
    pub record_store: Option<tutti_sfu::recorder::store::ObjectStoreConfig>,
    /// Where broadcasts declared with `hls = true` are packaged; `None`: a private
    /// temporary directory, removed at stop.
    pub hls_dir: Option<std::path::PathBuf>,
    /// Recordings stopped over the HTTP API are composed into one file (ffmpeg).
    pub record_compose: bool,
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
    /// Where broadcasts are packaged as HLS (removed with this when temporary).
    _hls: Option<hls::Directory>,
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
        let recorded = &options.common.rooms.recorded;
        if !recorded.is_empty() && options.record_dir.is_none() {
            return Err(
                format!("the rooms file asks to record {recorded:?}: give --record-dir").into(),
            );
        }
        let admin_token = tutti_service::token::random_token(32);
        let signal_token = tutti_service::token::random_token(32);
        // Broadcasts packaged as HLS: by whichever shard holds the stage, as in a
        // cluster, each shard in a directory of its own.
        let hls = if options.common.rooms.broadcasts.iter().any(|b| b.hls) {
            Some(hls::Directory::new(options.hls_dir.clone())?)
        } else {
            None
        };
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
                record_dir: options.record_dir.clone(),
                record_store: options.record_store.clone(),
                hls_dir: hls
                    .as_ref()
                    .map(|d| d.path().join(format!("local-{index}"))),
                // The gateway sweeps the directory the embedded shards share, once.
                record_retention_days: 0,
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
        let occupancy = OccupancyMap::default();
        background.push(tokio::spawn(refresh_occupancy(
            store.clone(),
            admin_token.clone(),
            occupancy.clone(),
            OCCUPANCY_PERIOD,
            stop.clone(),
        )));
        let metrics = Arc::new(GatewayMetrics::new());
        metrics.include(Box::new(shard_metrics::ShardsCollector::new(
            shards
                .iter()
                .map(|(id, shard)| (id.clone(), shard.metrics.clone()))
                .collect(),
        )));
        background.push(tokio::spawn(loops::run(
            store.clone(),
            control_settings(admin_token),
            Arc::new(Quiet),
            stop.clone(),
        )));
        let recordings = Arc::new(StoreRecordings::new(store.clone(), options.record_compose));
        for room in recorded {
            recordings.declare(room).await?;
        }
        if let (Some(dir), days @ 1..) = (&options.record_dir, options.record_retention_days) {
            background.push(tokio::spawn(tutti_sfu::recorder::retention::sweep_old(
                dir.clone(),
                days,
                stop.clone(),
            )));
        }
        let view: Arc<dyn LiveView> = Arc::new(store.clone());
        let gateway = Gateway::build(
            GatewayParts {
                view: view.clone(),
                router: Arc::new(StoreRouter::new(store.clone(), ROUTE_WAIT)),
                connector: Arc::new(WsConnector::new(
                    signal_token,
                    crate::shard_urls::ShardNetworks::default(),
                )),
                occupancy,
                metrics,
            },
            &options.common,
        )?;
        let mut state = AppState::new(gateway, view);
        if options.record_dir.is_some() {
            state = state.with_recordings(recordings);
        }

        let server = serve(options.common.listen, state).await?;
        Ok(Self {
            server,
            shards,
            store,
            stop,
            background,
            _hls: hls,
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
