//! Gateways in cluster mode, in this process, over a real etcd: a session resumed through
//! another gateway replica comes back as the same participant; a room created on first
//! join is placed by the operator; etcd over TLS with client certificates.

use anyhow::{Context, Result, ensure};
use serde_json::json;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tutti_control::placement::Strategy;
use tutti_operator::metrics::Metrics;
use tutti_operator::run::{Settings, run_standalone};
use tutti_signaling::cluster::{ClusterGateway, ClusterOptions};
use tutti_signaling::config::LocalRooms;
use tutti_signaling::session::GatewayOptions;
use tutti_store::{EtcdConfig, EtcdStore, LiveView, LiveWriter, RoomRecord};
use tutti_tests::etcd::{Etcd, TlsFiles};
use tutti_tests::gateway::GatewayClient;
use tutti_tests::shard::{ADMIN_TOKEN, SIGNAL_TOKEN, TestShard};

const SESSION_SECRET: &str = "a-session-secret-shared-by-gateways-0123";

fn gateway_options(etcd: &Etcd) -> Result<ClusterOptions> {
    Ok(ClusterOptions {
        common: GatewayOptions {
            listen: "127.0.0.1:0".parse()?,
            rooms: LocalRooms::from_file(Default::default(), false).map_err(anyhow::Error::msg)?,
            jwt_secret: None,
            session_secret: Some(SESSION_SECRET.into()),
            ice: Default::default(),
            region: None,
            trust_forwarded_for: false,
            rooms_per_client: tutti_signaling::guesses::DEFAULT_ROOMS_PER_CLIENT,
            metrics_listen: None,
            sockets: Default::default(),
            turn_grants_per_client: tutti_signaling::guesses::DEFAULT_TURN_GRANTS_PER_CLIENT,
        },
        etcd: EtcdConfig::parse(&etcd.url()).map_err(anyhow::Error::msg)?,
        shard_signal_token: SIGNAL_TOKEN.into(),
        route_wait: Duration::from_secs(15),
        shard_networks: Default::default(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_through_another_gateway_as_the_same_participant() -> Result<()> {
    let etcd = Etcd::start().await?;
    let stop = CancellationToken::new();
    let store = EtcdStore::connect(
        &EtcdConfig::parse(&etcd.url()).map_err(anyhow::Error::msg)?,
        Duration::from_secs(10),
    )
    .await?;
    let shard = TestShard::start().await?;
    shard.heartbeat_into(
        store.clone(),
        "shard-1",
        Duration::from_secs(1),
        Duration::from_secs(5),
        stop.clone(),
    );
    let operator = tokio::spawn(run_standalone(
        store.clone(),
        Settings {
            admin_token: ADMIN_TOKEN.into(),
            strategy: Strategy::Packed,
            gc_period: Duration::from_secs(30),
            gc_grace: Duration::from_secs(60),
            shard_poll: Duration::from_millis(200),
            identity: "test".into(),
            namespace: "default".into(),
            controller: Default::default(),
            compact_every: Duration::from_secs(300),
            cascade: Default::default(),
            shards: Default::default(),
            pool_period: Duration::from_secs(5),
        },
        std::sync::Arc::new(Metrics::new()),
        stop.clone(),
    ));
    let first = ClusterGateway::start(gateway_options(&etcd)?)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let second = ClusterGateway::start(gateway_options(&etcd)?)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    // A room nobody declared: the first join hands it to the operator, which places it.
    let mut violin = GatewayClient::connect(&format!("ws://{}/v1/ws", first.server.addr)).await?;
    let joined = violin
        .join(json!({"room": "improv", "name": "Violin"}))
        .await?;
    let participant = joined["participant"]
        .as_str()
        .context("participant")?
        .to_owned();
    let resume = joined["resume"]
        .as_str()
        .context("resume token")?
        .to_owned();
    // The test's own view of etcd follows its watch, which may trail the gateway's: the
    // room and its route are waited for, not read once (CI once read no route yet).
    tutti_tests::eventually::eventually(
        Duration::from_secs(10),
        "the auto-created room routed to shard-1 in the test's view",
        || async {
            Ok(store.room("improv").and_then(|r| r.owner).as_deref()
                == Some(tutti_store::AUTO_CREATED_OWNER)
                && store.route("improv").is_some_and(|r| r.shard == "shard-1"))
        },
    )
    .await?;
    let mut piano = GatewayClient::connect(&format!("ws://{}/v1/ws", second.server.addr)).await?;
    piano
        .join(json!({"room": "improv", "name": "Piano"}))
        .await?;

    // The first gateway goes away; the violin comes back through the second one.
    first.stop().await;
    violin.until("reconnect", Duration::from_secs(10)).await?;
    let mut again = GatewayClient::connect(&format!("ws://{}/v1/ws", second.server.addr)).await?;
    let rejoined = again
        .join(json!({"room": "improv", "name": "Violin", "resume": resume}))
        .await?;
    ensure!(
        rejoined["participant"] == participant.as_str(),
        "{rejoined}"
    );
    // The piano sees the same participant come back, by id.
    let back = piano
        .until("participant_joined", Duration::from_secs(10))
        .await?;
    ensure!(back["participant"]["id"] == participant.as_str(), "{back}");

    // A resume token is no password: for another room it is ignored, and the room's own
    // rules apply (here: no name given, so the join is refused).
    let mut other = GatewayClient::connect(&format!("ws://{}/v1/ws", second.server.addr)).await?;
    let refused = other
        .join(json!({"room": "elsewhere", "resume": resume}))
        .await;
    ensure!(refused.is_err_and(|e| e.to_string() == "bad_message"));

    second.stop().await;
    stop.cancel();
    let _ = operator.await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_client_certificates() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("tutti-etcd-tls-{}", std::process::id()));
    let tls = TlsFiles::generate(&dir).await?;
    let etcd = Etcd::start_tls(tls.clone()).await?;
    let mut config = EtcdConfig::parse(&etcd.url()).map_err(anyhow::Error::msg)?;
    config.ca_file = Some(tls.ca.clone());
    config.identity_files = Some(tls.client.clone());
    let store = EtcdStore::connect(&config, Duration::from_secs(10)).await?;
    ensure!(store.synced(), "synced over TLS");
    store.put_room(RoomRecord::with_defaults("secure")).await?;
    let listed = etcd
        .etcdctl(&["get", "/tutti/rooms/secure", "--print-value-only"])
        .await?;
    ensure!(listed.contains("\"name\":\"secure\""), "{listed}");
    // Without the client certificate, etcd refuses.
    let mut anonymous = config.clone();
    anonymous.identity_files = None;
    let refused = EtcdStore::connect(&anonymous, Duration::from_secs(3)).await;
    ensure!(
        refused.is_err() || refused.is_ok_and(|s| !s.synced()),
        "no client certificate, no data"
    );
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
