//! The simulated-network harness itself: delay, jitter, loss and firewalls do what the
//! spec says, measured with real sockets inside the namespaces, and nothing is left
//! behind. Needs root and `ip netns` (CI has both); without them these tests fail and
//! say so.

use anyhow::{Context, Result, ensure};
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};
use tutti_tests::netsim::{Firewall, LinkParams, LinkSpec, NetSim, SiteSpec, Spec};

fn site(name: &str) -> SiteSpec {
    SiteSpec {
        name: name.into(),
        ..Default::default()
    }
}

fn host() -> SiteSpec {
    SiteSpec {
        name: "host".into(),
        host: true,
        addresses: Some(2),
        ..Default::default()
    }
}

fn link(a: &str, b: &str, params: LinkParams) -> LinkSpec {
    LinkSpec {
        a: a.into(),
        b: b.into(),
        params,
    }
}

fn namespaces() -> String {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// Round trips of 40 UDP echoes from `client` to an echo server at `server`.
fn echo_round_trips(client: UdpSocket, server: UdpSocket) -> Result<Vec<Duration>> {
    let target = server.local_addr()?;
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        server.set_read_timeout(Some(Duration::from_secs(3))).ok();
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            let _ = server.send_to(&buf[..n], from);
        }
    });
    client.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut round_trips = Vec::new();
    let mut buf = [0u8; 1500];
    for i in 0u32..40 {
        let sent = Instant::now();
        client.send_to(&i.to_be_bytes(), target)?;
        let (n, _) = client.recv_from(&mut buf).context("an echo")?;
        ensure!(buf[..n] == i.to_be_bytes(), "echo out of order");
        round_trips.push(sent.elapsed());
    }
    drop(client);
    let _ = echo.join();
    round_trips.sort();
    Ok(round_trips)
}

#[test]
fn delay_and_jitter_apply_to_each_direction() -> Result<()> {
    let sim = NetSim::up(&Spec {
        sites: vec![host(), site("near"), site("far")],
        links: vec![
            link(
                "near",
                "host",
                LinkParams {
                    delay_ms: 10.0,
                    ..Default::default()
                },
            ),
            link(
                "far",
                "host",
                LinkParams {
                    delay_ms: 60.0,
                    jitter_ms: 5.0,
                    ..Default::default()
                },
            ),
        ],
        seed: 1,
    })?;
    let server_addr = sim.site("host")?.addr();
    for (name, one_way) in [("near", 10.0), ("far", 60.0)] {
        let server = UdpSocket::bind((server_addr, 0))?;
        let client = sim
            .site(name)?
            .run_inside(|| UdpSocket::bind("0.0.0.0:0"))??;
        let round_trips = echo_round_trips(client, server)?;
        let fastest = round_trips[0].as_secs_f64() * 1000.0;
        let median = round_trips[round_trips.len() / 2].as_secs_f64() * 1000.0;
        println!(
            "{name}: one-way {one_way} ms each way, round trip min {fastest:.1} ms, median {median:.1} ms"
        );
        // Jitter is ±5 ms on the far link; nothing can arrive before its delay.
        let floor = if name == "far" {
            2.0 * (one_way - 5.0)
        } else {
            2.0 * one_way
        };
        ensure!(
            fastest >= floor - 0.5,
            "{name}: {fastest:.1} ms beats the {floor} ms floor"
        );
        ensure!(
            median < 2.0 * one_way + 100.0,
            "{name}: median {median:.1} ms"
        );
    }
    Ok(())
}

/// A path changed while the simulation runs: what is sent after the change takes the new
/// delay; an unknown site or a value out of range is refused and changes nothing.
#[test]
fn a_link_changed_while_running_applies_from_then_on() -> Result<()> {
    let sim = NetSim::up(&Spec {
        sites: vec![host(), site("hotel")],
        links: vec![link(
            "hotel",
            "host",
            LinkParams {
                delay_ms: 10.0,
                ..Default::default()
            },
        )],
        seed: 3,
    })?;
    let server_addr = sim.site("host")?.addr();
    let fastest = |sim: &NetSim| -> Result<f64> {
        let server = UdpSocket::bind((server_addr, 0))?;
        let client = sim
            .site("hotel")?
            .run_inside(|| UdpSocket::bind("0.0.0.0:0"))??;
        Ok(echo_round_trips(client, server)?[0].as_secs_f64() * 1000.0)
    };
    let before = fastest(&sim)?;
    let setter = sim.link_setter();
    setter.set(&link(
        "hotel",
        "host",
        LinkParams {
            delay_ms: 50.0,
            ..Default::default()
        },
    ))?;
    let after = fastest(&sim)?;
    println!("round trip min {before:.1} ms, then {after:.1} ms after the change");
    ensure!((20.0..60.0).contains(&before), "before: {before:.1} ms");
    ensure!(after >= 99.5, "after: {after:.1} ms");
    for wrong in [
        link("hotel", "nowhere", LinkParams::default()),
        link(
            "hotel",
            "host",
            LinkParams {
                loss: 2.0,
                ..Default::default()
            },
        ),
    ] {
        ensure!(setter.set(&wrong).is_err(), "{wrong:?} accepted");
    }
    ensure!(fastest(&sim)? >= 99.5, "a refused change changed something");
    Ok(())
}

#[test]
fn loss_drops_the_configured_share() -> Result<()> {
    let sim = NetSim::up(&Spec {
        sites: vec![host(), site("lossy")],
        links: vec![link(
            "lossy",
            "host",
            LinkParams {
                loss: 0.1,
                ..Default::default()
            },
        )],
        seed: 42,
    })?;
    let server = UdpSocket::bind((sim.site("host")?.addr(), 0))?;
    let target = server.local_addr()?;
    let client = sim
        .site("lossy")?
        .run_inside(|| UdpSocket::bind("0.0.0.0:0"))??;
    // Read while sending: 2000 datagrams would overflow the socket's buffer.
    let receiver = std::thread::spawn(move || {
        server.set_read_timeout(Some(Duration::from_secs(2))).ok();
        let mut received = 0;
        let mut buf = [0u8; 64];
        while let Ok(n) = server.recv(&mut buf) {
            if &buf[..n] == b"end" {
                break;
            }
            received += 1;
        }
        received
    });
    for i in 0u32..2000 {
        client.send_to(&i.to_be_bytes(), target)?;
        if i % 50 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // The end marker may be lost too; the receiver then stops at its read timeout.
    client.send_to(b"end", target)?;
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    let counters = sim.down()?;
    println!("received {received} of 2000; relay counted {counters:?}");
    ensure!(
        (1650..=1950).contains(&received),
        "{received} of 2000 arrived at 10% loss"
    );
    ensure!(counters.lost >= 50, "{counters:?}");
    Ok(())
}

#[test]
fn a_firewall_lets_through_only_what_it_lists() -> Result<()> {
    // Ports of the host are chosen before the network exists: listeners bind later.
    let sim = NetSim::up(&Spec {
        sites: vec![
            host(),
            SiteSpec {
                name: "strict".into(),
                firewall: Some(Firewall {
                    allow_tcp: vec![SocketAddrV4::new([198, 18, 1, 2].into(), 443)],
                    allow_tls: vec![SocketAddrV4::new([198, 18, 1, 3].into(), 443)],
                    allow_udp: vec![],
                }),
                ..Default::default()
            },
        ],
        links: vec![],
        seed: 0,
    })?;
    let host_site = sim.site("host")?;
    let strict = sim.site("strict")?;
    let web = TcpListener::bind((host_site.addresses[0], 443))?;
    let turn = TcpListener::bind((host_site.addresses[1], 443))?;
    let other = TcpListener::bind((host_site.addresses[0], 0))?;
    let other_addr = other.local_addr()?;
    let udp_target = UdpSocket::bind((host_site.addresses[0], 0))?.local_addr()?;

    // UDP anywhere is refused at once.
    let udp = strict.run_inside(|| UdpSocket::bind("0.0.0.0:0"))??;
    ensure!(udp.send_to(b"x", udp_target).is_err(), "UDP got out");
    // TCP to the listed port connects and carries anything.
    let web_addr = web.local_addr()?;
    let mut stream = strict
        .run_inside(move || TcpStream::connect_timeout(&web_addr, Duration::from_secs(3)))??;
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n")?;
    let (mut accepted, _) = web.accept()?;
    let mut buf = [0u8; 64];
    let n = accepted.read(&mut buf)?;
    ensure!(buf[..n].starts_with(b"GET"), "web traffic blocked");
    // TCP elsewhere does not connect.
    let blocked = strict
        .run_inside(move || TcpStream::connect_timeout(&other_addr, Duration::from_secs(1)))?;
    ensure!(blocked.is_err(), "TCP to an unlisted port connected");
    // The TLS-only port: a connection that starts with a TLS record passes, data and all;
    // one that starts with a STUN message (plain TURN over TCP) never delivers a byte.
    let turn_addr = turn.local_addr()?;
    turn.set_nonblocking(false)?;
    let mut tls = strict
        .run_inside(move || TcpStream::connect_timeout(&turn_addr, Duration::from_secs(3)))??;
    tls.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])?;
    let (mut tls_accepted, _) = turn.accept()?;
    tls_accepted.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut got = Vec::new();
    while got.len() < 10 {
        let n = tls_accepted.read(&mut buf)?;
        ensure!(n > 0, "the TLS connection closed");
        got.extend_from_slice(&buf[..n]);
    }
    tls.write_all(&[0x00, 0x01, 0x00, 0x00])?;
    let n = tls_accepted.read(&mut buf)?;
    ensure!(
        n == 4,
        "later segments of a TLS connection pass whatever they hold"
    );
    let mut plain = strict
        .run_inside(move || TcpStream::connect_timeout(&turn_addr, Duration::from_secs(3)))??;
    plain.write_all(&[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42])?;
    let (mut plain_accepted, _) = turn.accept()?;
    plain_accepted.set_read_timeout(Some(Duration::from_millis(1500)))?;
    ensure!(
        plain_accepted.read(&mut buf).is_err(),
        "a plain STUN message passed the TLS-only port"
    );
    Ok(())
}

#[test]
fn everything_is_removed_when_the_simulation_ends() -> Result<()> {
    let sim = NetSim::up(&Spec {
        sites: vec![host(), site("gone")],
        ..Default::default()
    })?;
    ensure!(namespaces().contains("tsim-gone"), "namespace not created");
    // `down` checks, while it still holds the lock, that no namespace, interface or
    // route of the simulation is left.
    sim.down()?;
    Ok(())
}

#[test]
fn a_site_behind_nat_reaches_out_from_its_public_address() -> Result<()> {
    let sim = NetSim::up(&Spec {
        sites: vec![
            host(),
            SiteSpec {
                name: "home".into(),
                nat: true,
                ..Default::default()
            },
        ],
        links: vec![link(
            "home",
            "host",
            LinkParams {
                delay_ms: 5.0,
                ..Default::default()
            },
        )],
        seed: 0,
    })?;
    let home = sim.site("home")?;
    let private = home.private.context("a private address")?;
    let server = UdpSocket::bind((sim.site("host")?.addr(), 0))?;
    let target = server.local_addr()?;
    let client = home.run_inside(|| UdpSocket::bind("0.0.0.0:0"))??;
    client.connect(target)?;
    ensure!(
        client.local_addr()?.ip() == private,
        "the client's own address is the private one: {}",
        client.local_addr()?
    );
    client.send(b"hello")?;
    server.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut buf = [0u8; 16];
    let (n, seen) = server.recv_from(&mut buf)?;
    ensure!(&buf[..n] == b"hello");
    ensure!(
        seen.ip() == std::net::IpAddr::V4(home.addr()),
        "the server sees the public address, not {seen}"
    );
    // The reply finds its way back through the NAT's mapping.
    server.send_to(b"back", seen)?;
    client.set_read_timeout(Some(Duration::from_secs(3)))?;
    let n = client.recv(&mut buf)?;
    ensure!(&buf[..n] == b"back");
    sim.down()?;
    Ok(())
}
