//! A media socket whose send buffer fills waits for room and loses nothing.
//!
//! Loopback frees a datagram's send buffer inside the send call, so a full buffer cannot be
//! made on the host. Inside a namespace of its own, the test puts a token bucket (`tc
//! tbf`, 20 Mbit/s) on `lo`: datagrams wait in the queue, charged to the sender, until the
//! bucket lets them through. Sending 1.2 MB at once then fills the socket's buffer
//! (212 kB by default, well under the queue's 1 MB), `sendmmsg` would block, and the
//! sender must wait for room as the media loop does ([`MediaSocket::writable`]) and go on
//! with exactly the datagrams not yet sent. Needs root (as the network simulations do).

use anyhow::{Context, Result, ensure};
use bytes::BytesMut;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;
use tutti_sfu::media_socket::MediaSocket;
use tutti_sfu::udp::SendBatcher;
use tutti_tests::netsim::enter_namespace;

const DATAGRAMS: usize = 1000;
const SIZE: usize = 1200;

/// A network namespace with `lo` up behind a 20 Mbit/s token bucket; removed on drop.
struct SlowLoopback(String);

impl SlowLoopback {
    fn new() -> Result<Self> {
        let name = format!("tbp-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let namespace = Self(name);
        run(Command::new("ip").args(["-n", &namespace.0, "link", "set", "lo", "up"]))?;
        run(Command::new("ip").args([
            "netns",
            "exec",
            &namespace.0,
            "tc",
            "qdisc",
            "add",
            "dev",
            "lo",
            "root",
            "tbf",
            "rate",
            "20mbit",
            "burst",
            "16kb",
            "latency",
            "400ms",
        ]))?;
        Ok(namespace)
    }

    /// Two UDP sockets bound to its loopback: sender, sink.
    fn sockets(&self) -> Result<(UdpSocket, UdpSocket)> {
        let name = self.0.clone();
        std::thread::spawn(move || -> Result<(UdpSocket, UdpSocket)> {
            enter_namespace(&name)?;
            Ok((
                UdpSocket::bind("127.0.0.1:0")?,
                UdpSocket::bind("127.0.0.1:0")?,
            ))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
    }
}

impl Drop for SlowLoopback {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(command: &mut Command) -> Result<()> {
    let output = command.output().with_context(|| format!("{command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_send_buffer_is_waited_out_and_nothing_is_lost() -> Result<()> {
    let namespace = SlowLoopback::new().context("needs root: ip netns and tc")?;
    let (sender, sink) = namespace.sockets()?;
    let to: SocketAddr = sink.local_addr()?;
    let socket = MediaSocket::new(sender)?;
    let sink = tokio::net::UdpSocket::from_std({
        sink.set_nonblocking(true)?;
        sink
    })?;
    let receiver = tokio::spawn(async move {
        // Each datagram says which it is: every one must arrive, once.
        let mut seen = vec![false; DATAGRAMS];
        let mut buf = vec![0u8; 2048];
        let mut count = 0;
        while count < DATAGRAMS {
            let n = sink.recv(&mut buf).await?;
            ensure!(n == SIZE, "a datagram of {n} bytes");
            let index = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
            ensure!(index < DATAGRAMS && !seen[index], "datagram {index} again");
            seen[index] = true;
            count += 1;
        }
        Ok::<_, anyhow::Error>(count)
    });

    let mut outgoing: Vec<(SocketAddr, BytesMut)> = (0..DATAGRAMS as u16)
        .map(|index| {
            let mut datagram = BytesMut::zeroed(SIZE);
            datagram[..2].copy_from_slice(&index.to_be_bytes());
            (to, datagram)
        })
        .collect();
    let mut sender = SendBatcher::new(true);
    let mut waits = 0;
    // The media loop's flush: send; on would-block, wait for room and go on with the rest.
    let send = async {
        while !outgoing.is_empty() {
            let outcome = sender.send(socket.fd(), &mut outgoing, |_| None);
            ensure!(
                outcome.failed == 0,
                "the kernel refused {} datagrams",
                outcome.failed
            );
            if !outcome.would_block {
                break;
            }
            waits += 1;
            outgoing.drain(..outcome.sent);
            socket.writable().await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(30), send)
        .await
        .context("the sender never found room again")??;
    let received = tokio::time::timeout(Duration::from_secs(30), receiver)
        .await
        .context("datagrams missing at the sink")???;
    println!("{received} datagrams received after {waits} waits for room");
    ensure!(
        waits > 0,
        "the send buffer never filled: nothing was tested"
    );
    ensure!(received == DATAGRAMS);
    Ok(())
}
