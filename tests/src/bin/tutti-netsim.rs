//! Builds a simulated network for tests written in other languages (the browser tests):
//! `tutti-netsim '<spec JSON>'` prints the built sites as one JSON line, keeps the delay
//! relay running, and removes everything when its stdin closes or it gets SIGTERM or
//! SIGINT — so a test runner that dies takes the network with it.

use anyhow::{Context, Result};
use std::io::Read;
use tokio::signal::unix::{SignalKind, signal};
use tutti_tests::netsim::{NetSim, Spec};

fn main() -> Result<()> {
    let spec = std::env::args()
        .nth(1)
        .context("usage: tutti-netsim '<spec JSON>' (see tests/src/netsim/mod.rs)")?;
    let spec: Spec = serde_json::from_str(&spec).context("the spec")?;
    let sim = NetSim::up(&spec)?;
    println!(
        "{}",
        serde_json::to_string(&serde_json::json!({ "sites": sim.sites }))?
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut term = signal(SignalKind::terminate())?;
            let mut interrupt = signal(SignalKind::interrupt())?;
            let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                let mut sink = [0u8; 256];
                let mut stdin = std::io::stdin();
                while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
                let _ = closed_tx.send(());
            });
            let stdin_closed = async {
                let _ = closed_rx.await;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
                () = stdin_closed => {}
            }
            anyhow::Ok(())
        })?;
    let counters = sim.down()?;
    eprintln!("{}", serde_json::to_string(&counters)?);
    Ok(())
}
