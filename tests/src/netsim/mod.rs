//! Simulated networks: Linux network namespaces ("sites") joined through a router
//! namespace, with one-way delay, jitter, loss and a rate limit per pair of sites and a
//! firewall per site.
//!
//! Each site has a veth pair to the router and the subnet `198.18.<i+1>.0/24` (RFC 2544's
//! benchmarking range, so nothing real is shadowed): the router holds `.1`, the site
//! `.2`, `.3`, … The kernel has no `tc netem` here, so the router sends every forwarded
//! IPv4 packet through a TUN device that this process reads: it holds each packet for
//! its link's delay ([`delay`]) and writes it back, and the router's policy routing sends
//! what comes out of the TUN on to its destination. One site may be the host's own
//! namespace (`host: true`), for servers and for the test itself.
//!
//! Everything is named `tsim-*`; one simulation runs at a time on a machine (a file lock),
//! and starting one first removes what a crashed run left. [`NetSim`] removes its
//! namespaces when dropped, so a failing test cleans up too. Needs root; when a namespace
//! cannot be created, [`NetSim::up`] fails and says why.

// TUN devices (open, ioctl, read, write, ppoll), the simulation lock (flock) and
// entering a namespace (setns) are system calls without safe wrappers in std: every
// block says why it is sound.
#![allow(unsafe_code)]

pub mod delay;
pub mod firewall;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use delay::LinkParams;
pub use firewall::Firewall;

/// Prefix of every namespace and interface a simulation creates.
const PREFIX: &str = "tsim-";
/// The router's namespace.
const ROUTER: &str = "tsim-router";
/// The router's TUN device.
const TUN: &str = "tsim-delay";
/// The routing table that sends forwarded packets into the TUN.
const DELAY_TABLE: &str = "100";
/// Most sites in one simulation (each takes a /24 of 198.18.0.0/16).
const MAX_SITES: usize = 32;
/// Most addresses of one site.
const MAX_ADDRESSES: u8 = 16;

/// A network to build.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The sites, in order (site `i` gets `198.18.<i+1>.0/24`).
    pub sites: Vec<SiteSpec>,
    /// What the path between two sites does to packets; pairs not listed forward at once.
    #[serde(default)]
    pub links: Vec<LinkSpec>,
    /// Seed of the loss and jitter draws (runs with one seed drop the same packets).
    #[serde(default)]
    pub seed: u64,
}

/// One site: a namespace, or the host's own namespace.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    /// 1-8 characters of a-z 0-9; the namespace is `tsim-<name>`.
    pub name: String,
    /// The host's namespace instead of a new one (at most one site).
    #[serde(default)]
    pub host: bool,
    /// How many addresses the site has (1 when absent).
    #[serde(default)]
    pub addresses: Option<u8>,
    /// What the site may send and receive; everything when absent. Not for the host.
    #[serde(default)]
    pub firewall: Option<Firewall>,
    /// Behind a NAT, like most people at home: the site's programs run in a namespace
    /// with a private address (`10.200.<i+1>.2`), and a second namespace
    /// (`tsim-<name>-gw`) holds the public addresses and masquerades for it.
    #[serde(default)]
    pub nat: bool,
}

/// The path between sites `a` and `b`: each direction gets `params`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// One site's name.
    pub a: String,
    /// The other site's name.
    pub b: String,
    /// Delay, jitter, loss and rate of each direction.
    #[serde(flatten)]
    pub params: LinkParams,
}

/// A site as built.
#[derive(Debug, Clone, Serialize)]
pub struct Site {
    /// Its name in the spec.
    pub name: String,
    /// Its namespace (`None` for the host).
    pub namespace: Option<String>,
    /// Its public addresses, the first being where its default route leaves from.
    pub addresses: Vec<Ipv4Addr>,
    /// Behind a NAT: the private address its programs have.
    pub private: Option<Ipv4Addr>,
    /// The router's address on its link.
    pub gateway: Ipv4Addr,
}

impl Site {
    /// Its first address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addresses[0]
    }

    /// `ip netns exec <namespace>` before `program`, or `program` alone for the host.
    pub fn command(&self, program: &str) -> Command {
        match &self.namespace {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace, program]);
                command
            }
            None => Command::new(program),
        }
    }

    /// Runs `work` on a thread inside this site's namespace: sockets it creates live
    /// there for good, wherever they are used afterwards.
    pub fn run_inside<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let namespace = self.namespace.clone();
        std::thread::spawn(move || -> Result<T> {
            if let Some(namespace) = namespace {
                enter_namespace(&namespace)?;
            }
            Ok(work())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread inside {} panicked", self.name))?
    }
}

/// A running simulation; dropping it removes everything it created.
pub struct NetSim {
    /// The sites, in the spec's order.
    pub sites: Vec<Site>,
    stop: Arc<AtomicBool>,
    relay: Option<std::thread::JoinHandle<Result<delay::Counters>>>,
    links: Arc<delay::SharedLinks>,
    _lock: OwnedFd,
}

/// Changes a running simulation's links (see [`NetSim::link_setter`]).
#[derive(Clone)]
pub struct LinkSetter {
    names: Vec<String>,
    links: Arc<delay::SharedLinks>,
}

impl LinkSetter {
    /// The path between `link.a` and `link.b` does what `link` says from now on, both ways
    /// (a pair never listed forwarded at once until now).
    pub fn set(&self, link: &LinkSpec) -> Result<()> {
        let index = |name: &str| {
            self.names
                .iter()
                .position(|n| n == name)
                .with_context(|| format!("no site {name}"))
        };
        self.links
            .set(index(&link.a)?, index(&link.b)?, link.params.clone())
    }
}

impl NetSim {
    /// Builds the network of `spec` and starts its delay relay.
    pub fn up(spec: &Spec) -> Result<Self> {
        validate(spec)?;
        let lock = take_lock()?;
        remove_leftovers();
        let mut sim = Self {
            sites: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            relay: None,
            links: Arc::default(),
            _lock: lock,
        };
        // On any error below, dropping `sim` removes what was made so far.
        ip(&["netns", "add", ROUTER]).context(
            "cannot create a network namespace (tests on simulated networks need root and \
             `ip netns`)",
        )?;
        quiet_ipv6(ROUTER)?;
        ns_ip(ROUTER, &["link", "set", "lo", "up"])?;
        sysctl(ROUTER, "net.ipv4.ip_forward", "1")?;
        sysctl(ROUTER, "net.ipv4.conf.all.rp_filter", "0")?;
        sysctl(ROUTER, "net.ipv4.conf.default.rp_filter", "0")?;
        for (index, spec) in spec.sites.iter().enumerate() {
            let site = build_site(index, spec)?;
            sim.sites.push(site);
        }
        sim.links = Arc::new(delay::SharedLinks::new(delay::LinkTable::new(
            spec.links
                .iter()
                .map(|link| {
                    let a = sim.index_of(&link.a)?;
                    let b = sim.index_of(&link.b)?;
                    Ok(((a, b), link.params.clone()))
                })
                .collect::<Result<Vec<_>>>()?,
        )));
        let links = sim.links.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop = sim.stop.clone();
        let seed = spec.seed;
        sim.relay = Some(
            std::thread::Builder::new()
                .name("netsim-delay".into())
                .spawn(move || -> Result<delay::Counters> {
                    let tun = enter_namespace(ROUTER).and_then(|()| delay::open_tun(TUN));
                    let tun = match tun {
                        Ok(tun) => {
                            let _ = ready_tx.send(Ok(()));
                            tun
                        }
                        Err(err) => {
                            let _ = ready_tx.send(Err(format!("{err:#}")));
                            return Err(err);
                        }
                    };
                    delay::run(&tun, &links, seed, &stop)
                })?,
        );
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => bail!("the delay relay's TUN device: {err}"),
            Err(_) => bail!("the delay relay stopped before it was ready"),
        }
        ns_ip(ROUTER, &["link", "set", TUN, "up"])?;
        ns_ip(
            ROUTER,
            &["route", "add", "default", "dev", TUN, "table", DELAY_TABLE],
        )?;
        // What comes back out of the TUN goes on by the main table; everything else the
        // router forwards goes into it first.
        ns_ip(
            ROUTER,
            &["rule", "add", "iif", TUN, "lookup", "main", "pref", "100"],
        )?;
        ns_ip(
            ROUTER,
            &["rule", "add", "lookup", DELAY_TABLE, "pref", "200"],
        )?;
        sysctl(ROUTER, &format!("net.ipv4.conf.{TUN}.rp_filter"), "0")?;
        Ok(sim)
    }

    /// What changes this simulation's links while it runs, from any thread.
    pub fn link_setter(&self) -> LinkSetter {
        LinkSetter {
            names: self.sites.iter().map(|site| site.name.clone()).collect(),
            links: self.links.clone(),
        }
    }

    /// The site called `name`.
    pub fn site(&self, name: &str) -> Result<&Site> {
        self.sites
            .iter()
            .find(|site| site.name == name)
            .with_context(|| format!("no site {name}"))
    }

    fn index_of(&self, name: &str) -> Result<usize> {
        self.sites
            .iter()
            .position(|site| site.name == name)
            .with_context(|| format!("a link names the unknown site {name}"))
    }

    /// Stops the relay and removes everything; returns what the relay counted.
    pub fn down(mut self) -> Result<delay::Counters> {
        let counters = self.stop_relay();
        teardown(&self.sites);
        self.sites.clear();
        let left = leftovers();
        ensure!(left.is_empty(), "left behind after teardown: {left:?}");
        counters
    }

    fn stop_relay(&mut self) -> Result<delay::Counters> {
        self.stop.store(true, Ordering::Relaxed);
        match self.relay.take() {
            Some(relay) => relay
                .join()
                .map_err(|_| anyhow::anyhow!("the delay relay panicked"))?,
            None => Ok(delay::Counters::default()),
        }
    }
}

impl Drop for NetSim {
    fn drop(&mut self) {
        let _ = self.stop_relay();
        teardown(&self.sites);
    }
}

fn validate(spec: &Spec) -> Result<()> {
    ensure!(
        !spec.sites.is_empty() && spec.sites.len() <= MAX_SITES,
        "a simulation has 1..={MAX_SITES} sites"
    );
    let mut names = HashSet::new();
    for site in &spec.sites {
        ensure!(
            (1..=8).contains(&site.name.len())
                && site
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && site.name != "router",
            "site names are 1-8 characters of a-z 0-9, not \"router\": {:?}",
            site.name
        );
        ensure!(names.insert(&site.name), "site {} named twice", site.name);
        ensure!(
            (1..=MAX_ADDRESSES).contains(&site.addresses.unwrap_or(1)),
            "a site has 1..={MAX_ADDRESSES} addresses"
        );
        ensure!(
            !(site.host && (site.firewall.is_some() || site.nat)),
            "the host's namespace gets no firewall and no NAT"
        );
    }
    ensure!(
        spec.sites.iter().filter(|site| site.host).count() <= 1,
        "at most one site is the host"
    );
    for link in &spec.links {
        link.params.validate()?;
    }
    Ok(())
}

fn build_site(index: usize, spec: &SiteSpec) -> Result<Site> {
    let subnet = u8::try_from(index + 1)?;
    let gateway = Ipv4Addr::new(198, 18, subnet, 1);
    let addresses: Vec<Ipv4Addr> = (0..spec.addresses.unwrap_or(1))
        .map(|n| Ipv4Addr::new(198, 18, subnet, 2 + n))
        .collect();
    let site_end = format!("{PREFIX}{subnet}a");
    let router_end = format!("{PREFIX}{subnet}b");
    ip(&[
        "link",
        "add",
        &site_end,
        "type",
        "veth",
        "peer",
        "name",
        &router_end,
    ])?;
    ip(&["link", "set", &router_end, "netns", ROUTER])?;
    ns_ip(
        ROUTER,
        &["addr", "add", &format!("{gateway}/24"), "dev", &router_end],
    )?;
    ns_ip(ROUTER, &["link", "set", &router_end, "up"])?;
    sysctl(
        ROUTER,
        &format!("net.ipv4.conf.{router_end}.rp_filter"),
        "0",
    )?;
    let namespace = if spec.host {
        for addr in &addresses {
            ip(&["addr", "add", &format!("{addr}/24"), "dev", &site_end])?;
        }
        ip(&["link", "set", &site_end, "up"])?;
        ip(&[
            "route",
            "add",
            "198.18.0.0/16",
            "via",
            &gateway.to_string(),
            "dev",
            &site_end,
        ])?;
        None
    } else {
        let namespace = format!("{PREFIX}{}", spec.name);
        // Behind a NAT the public side lives in the home router's namespace.
        let public = if spec.nat {
            format!("{namespace}-gw")
        } else {
            namespace.clone()
        };
        ip(&["netns", "add", &public])?;
        quiet_ipv6(&public)?;
        let namespace = public;
        ip(&["link", "set", &site_end, "netns", &namespace])?;
        ns_ip(&namespace, &["link", "set", &site_end, "name", "eth0"])?;
        ns_ip(&namespace, &["link", "set", "lo", "up"])?;
        for addr in &addresses {
            ns_ip(
                &namespace,
                &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
            )?;
        }
        ns_ip(&namespace, &["link", "set", "eth0", "up"])?;
        ns_ip(
            &namespace,
            &["route", "add", "default", "via", &gateway.to_string()],
        )?;
        let mut private = None;
        let namespace = if spec.nat {
            let inside = format!("{PREFIX}{}", spec.name);
            let lan = Ipv4Addr::new(10, 200, subnet, 1);
            let address = Ipv4Addr::new(10, 200, subnet, 2);
            let (outer, inner) = (format!("{PREFIX}{subnet}l"), format!("{PREFIX}{subnet}m"));
            ip(&["netns", "add", &inside])?;
            quiet_ipv6(&inside)?;
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["link", "set", &outer, "netns", &namespace])?;
            ip(&["link", "set", &inner, "netns", &inside])?;
            ns_ip(&namespace, &["link", "set", &outer, "name", "lan0"])?;
            ns_ip(
                &namespace,
                &["addr", "add", &format!("{lan}/24"), "dev", "lan0"],
            )?;
            ns_ip(&namespace, &["link", "set", "lan0", "up"])?;
            ns_ip(&inside, &["link", "set", &inner, "name", "eth0"])?;
            ns_ip(&inside, &["link", "set", "lo", "up"])?;
            ns_ip(
                &inside,
                &["addr", "add", &format!("{address}/24"), "dev", "eth0"],
            )?;
            ns_ip(&inside, &["link", "set", "eth0", "up"])?;
            ns_ip(
                &inside,
                &["route", "add", "default", "via", &lan.to_string()],
            )?;
            sysctl(&namespace, "net.ipv4.ip_forward", "1")?;
            nft(
                &namespace,
                "table ip tsim-nat {\n  chain postrouting {\n    type nat hook postrouting priority 100; policy accept;\n    oif \"eth0\" masquerade\n  }\n}\n",
            )?;
            private = Some(address);
            inside
        } else {
            namespace
        };
        if let Some(firewall) = &spec.firewall {
            firewall.apply(&namespace)?;
        }
        Some((namespace, private))
    };
    let (namespace, private) = match namespace {
        Some((namespace, private)) => (Some(namespace), private),
        None => (None, None),
    };
    Ok(Site {
        name: spec.name.clone(),
        namespace,
        addresses,
        private,
        gateway,
    })
}

fn teardown(sites: &[Site]) {
    for (index, site) in sites.iter().enumerate() {
        match &site.namespace {
            Some(namespace) => {
                let _ = ip(&["netns", "del", namespace]);
                if site.private.is_some() {
                    let _ = ip(&["netns", "del", &format!("{namespace}-gw")]);
                }
            }
            // The kernel removes a namespace's interfaces (and so their veth peers) some
            // time after the namespace goes; the host's end is removed now.
            None => {
                let _ = ip(&["link", "del", &format!("{PREFIX}{}a", index + 1)]);
            }
        }
    }
    let _ = ip(&["netns", "del", ROUTER]);
}

/// Removes namespaces and host interfaces a crashed run left (the lock is held, so no
/// other simulation is running).
fn remove_leftovers() {
    for item in leftovers() {
        let _ = match item {
            Leftover::Namespace(name) => ip(&["netns", "del", &name]),
            Leftover::Link(name) => ip(&["link", "del", &name]),
            Leftover::Route(route) => ip(&["route", "del", &route]),
        };
    }
}

/// Something of a simulation that exists on the host.
#[derive(Debug)]
enum Leftover {
    Namespace(String),
    Link(String),
    Route(String),
}

fn leftovers() -> Vec<Leftover> {
    let mut found = Vec::new();
    let lines = |args: &[&str]| -> Vec<String> {
        Command::new("ip")
            .args(args)
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    for line in lines(&["netns", "list"]) {
        if let Some(name) = line.split_whitespace().next()
            && name.starts_with(PREFIX)
        {
            found.push(Leftover::Namespace(name.to_owned()));
        }
    }
    for line in lines(&["-o", "link", "show"]) {
        // "7: tsim-1a@if6: <...>"
        if let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next())
            && name.starts_with(PREFIX)
        {
            found.push(Leftover::Link(name.to_owned()));
        }
    }
    for line in lines(&["route", "show", "198.18.0.0/16"]) {
        if !line.trim().is_empty() {
            found.push(Leftover::Route("198.18.0.0/16".into()));
        }
    }
    found
}

fn take_lock() -> Result<OwnedFd> {
    let path = std::env::temp_dir().join("tutti-netsim.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // Blocks while another simulation runs (tests run in parallel; the network is one).
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!(
            "cannot lock {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(OwnedFd::from(file))
}

/// Moves the calling thread into namespace `name` (one `ip netns` made, under /run/netns).
pub fn enter_namespace(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let file = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
    // SAFETY: setns on a namespace descriptor; it only changes this thread's namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("cannot enter {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Turns IPv6 off in a new namespace: the simulation is IPv4, and link-local addresses
/// finishing duplicate detection a second after a link comes up make browsers in it see
/// a network change (and abort a page load with ERR_NETWORK_CHANGED).
fn quiet_ipv6(namespace: &str) -> Result<()> {
    sysctl(namespace, "net.ipv6.conf.all.disable_ipv6", "1")?;
    sysctl(namespace, "net.ipv6.conf.default.disable_ipv6", "1")
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

fn ns_ip(namespace: &str, args: &[&str]) -> Result<()> {
    run(Command::new("ip").arg("-n").arg(namespace).args(args))
}

fn sysctl(namespace: &str, key: &str, value: &str) -> Result<()> {
    run(Command::new("ip")
        .args(["netns", "exec", namespace, "sysctl", "-q", "-w"])
        .arg(format!("{key}={value}")))
}

/// Loads an nftables ruleset into `namespace`.
fn nft(namespace: &str, ruleset: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", namespace, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run nft (Debian package nftables)")?;
    child
        .stdin
        .take()
        .context("nft's stdin")?
        .write_all(ruleset.as_bytes())?;
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "nft refused a ruleset in {namespace}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}
