//! Builds a simulated network for tests written in other languages (the browser tests):
//! `tutti-netsim '<spec JSON>'` prints the built sites as one JSON line, keeps the delay
//! relay running, and removes everything when its stdin closes or it gets SIGTERM or
//! SIGINT — so a test runner that dies takes the network with it. Each line written to
//! its stdin is a link (`{"a", "b", "delay_ms", "rate_kbps", …}`, as in the spec) that
//! replaces what the path between two sites does; it answers `{"ok": true}` or
//! `{"error": "…"}` on a line of its own.

use anyhow::{Context, Result};
use std::io::{BufRead, Write};
use tokio::signal::unix::{SignalKind, signal};
use tutti_tests::netsim::{LinkSpec, NetSim, Spec};

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
            let setter = sim.link_setter();
            std::thread::spawn(move || {
                // Lines of at most 4 KiB; a longer one is answered as an error.
                let stdin = std::io::stdin();
                let mut lines = stdin.lock();
                let mut line = String::new();
                loop {
                    line.clear();
                    match std::io::Read::take(&mut lines, 4096).read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let too_long = !line.ends_with('\n') && line.len() >= 4096;
                    if too_long {
                        // The rest of the line is skipped, 4 KiB at a time, and gets one
                        // answer.
                        let mut rest = Vec::with_capacity(4096);
                        loop {
                            rest.clear();
                            match std::io::Read::take(&mut lines, 4096).read_until(b'\n', &mut rest)
                            {
                                Ok(n) if n > 0 && !rest.ends_with(b"\n") => {}
                                _ => break,
                            }
                        }
                    } else if line.trim().is_empty() {
                        continue;
                    }
                    let answer = if too_long {
                        Err(anyhow::anyhow!("a line longer than 4 KiB"))
                    } else {
                        serde_json::from_str::<LinkSpec>(line.trim())
                            .context("a link")
                            .and_then(|link| setter.set(&link))
                    };
                    let reply = match answer {
                        Ok(()) => serde_json::json!({ "ok": true }),
                        Err(err) => serde_json::json!({ "error": format!("{err:#}") }),
                    };
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{reply}");
                    let _ = out.flush();
                }
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
