//! Batched datagram I/O for the shard's one UDP socket (Linux).
//!
//! A forwarded packet leaves once per subscriber, so syscalls per datagram would dominate
//! the shard's CPU. Outgoing datagrams are therefore:
//! 1. grouped by destination, keeping each destination's order;
//! 2. coalesced into UDP GSO runs (equal-sized segments, the last may be shorter), each
//!    run one message whose iovecs point at the encrypted datagrams, so nothing is copied;
//! 3. handed to the kernel with one `sendmmsg` per batch.
//!
//! If the kernel or the route refuses GSO (`EIO`/`EINVAL`/`ENOTSUP`), the batcher turns GSO
//! off for the socket's lifetime and sends one datagram per message, still batched by
//! `sendmmsg`. Incoming datagrams are read with `recvmmsg`.
//!
//! A socket bound to a wildcard address (`0.0.0.0`, `::`) on a host with several addresses
//! would let the kernel pick each reply's source address by route, which need not be the
//! address the peer sent to; a strict ICE agent drops such a reply (RFC 8445 §7.2.5.2.1)
//! and media from an unexpected address. So such a socket reads the destination address
//! of every datagram (`IP_PKTINFO`/`IPV6_RECVPKTINFO`) and every send names its source
//! address the same way, per destination.
//!
//! This is the one module with `unsafe` code: building `mmsghdr` arrays for the two
//! syscalls. Every pointer placed in a header refers to memory owned by the caller's
//! slices or by `self` and outlives the syscall, which is made before they are touched
//! again.
#![allow(unsafe_code)]

use bytes::BytesMut;
use std::io;
use std::mem::{MaybeUninit, size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Largest number of segments in one GSO send (the kernel's `UDP_MAX_SEGMENTS`).
const MAX_SEGMENTS: usize = 64;
/// Largest total payload of one GSO send.
const MAX_GSO_BYTES: usize = 65_000;
/// `UDP_SEGMENT` socket option / control message (linux/udp.h).
const UDP_SEGMENT: libc::c_int = 103;
/// Size of a datagram receive buffer; larger datagrams are truncated and dropped.
pub const RECV_BUF_SIZE: usize = 2048;
/// Control buffer of one message, in 8-byte words: room for a UDP_SEGMENT and an
/// `in6_pktinfo` (the larger packet-info) control message.
const CONTROL_WORDS: usize = 8;

/// One message to send: a destination, the source address to send from (when the socket
/// must be told), and the indices of its datagrams.
struct Run {
    dest: SocketAddr,
    source: Option<IpAddr>,
    first: usize,
    count: usize,
    segment: usize,
}

/// Asks the kernel to report each received datagram's destination address, for a socket
/// bound to a wildcard address (see the module documentation).
pub fn enable_destination_info(fd: RawFd, ipv6: bool) -> io::Result<()> {
    let on: libc::c_int = 1;
    let (level, option) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    // SAFETY: `on` is a live c_int and its size is passed along.
    let result = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            &on as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    if ipv6 {
        // A dual-stack socket also receives IPv4 (as mapped addresses): report those too.
        // SAFETY: as above.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                &on as *const libc::c_int as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    Ok(())
}

/// Sends batches of datagrams with `sendmmsg` and, where possible, UDP GSO.
pub struct SendBatcher {
    gso: bool,
    order: Vec<usize>,
    by_dest: crate::FastMap<SocketAddr, Vec<usize>>,
    dests: Vec<SocketAddr>,
    runs: Vec<Run>,
    /// The system call's arrays, rebuilt for each call in allocations kept across calls.
    scratch: SendScratch,
}

/// What one `sendmmsg` points at, besides the datagrams.
#[derive(Default)]
struct SendScratch {
    iovecs: Vec<libc::iovec>,
    addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    controls: Vec<u64>,
    headers: Vec<libc::mmsghdr>,
}

/// What one [`SendBatcher::send`] call achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendOutcome {
    /// Datagrams handed to the kernel.
    pub sent: usize,
    /// Datagrams dropped because the kernel refused them (counted, not retried).
    pub failed: usize,
    /// Syscalls made.
    pub syscalls: usize,
    /// Whether the socket would block: the datagrams from `sent + failed` on are unsent.
    pub would_block: bool,
}

impl SendBatcher {
    /// A batcher that tries GSO first when `gso` is true.
    pub fn new(gso: bool) -> Self {
        Self {
            gso,
            order: Vec::new(),
            by_dest: crate::FastMap::default(),
            dests: Vec::new(),
            runs: Vec::new(),
            scratch: SendScratch::default(),
        }
    }

    /// Whether GSO is in use.
    pub fn gso_enabled(&self) -> bool {
        self.gso
    }

    /// Sends `datagrams` on `fd`, each destination's from the address `source` names for
    /// it (`None`: the kernel chooses). Datagrams are reordered across destinations (never
    /// within one). On `would_block`, the caller waits for writability and calls again
    /// with the datagrams not yet sent, which are moved to the end of `datagrams`'s order:
    /// after a would-block return, `datagrams` has been reordered so that the unsent ones
    /// are `datagrams[sent + failed..]`. The datagrams dealt with stay in `datagrams`
    /// (all of them, unless it would block) for the caller to reuse their buffers.
    pub fn send(
        &mut self,
        fd: RawFd,
        datagrams: &mut Vec<(SocketAddr, BytesMut)>,
        source: impl Fn(SocketAddr) -> Option<IpAddr>,
    ) -> SendOutcome {
        let mut outcome = SendOutcome::default();
        if datagrams.is_empty() {
            return outcome;
        }
        self.group(datagrams, &source);
        let mut run_index = 0;
        while run_index < self.runs.len() {
            let end = (run_index + 1024).min(self.runs.len());
            match self.send_runs(fd, datagrams, run_index, end) {
                Ok(accepted) => {
                    outcome.syscalls += 1;
                    for run in &self.runs[run_index..run_index + accepted] {
                        outcome.sent += run.count;
                    }
                    run_index += accepted;
                }
                Err(err) => {
                    outcome.syscalls += 1;
                    let code = err.raw_os_error().unwrap_or(0);
                    if code == libc::EAGAIN || code == libc::EWOULDBLOCK {
                        outcome.would_block = true;
                        break;
                    }
                    if self.gso
                        && self.runs[run_index].count > 1
                        && matches!(code, libc::EIO | libc::EINVAL | libc::EOPNOTSUPP)
                    {
                        // The kernel or device refuses segmentation offload: fall back to
                        // one datagram per message for the rest of the socket's life.
                        self.gso = false;
                        self.regroup_from(datagrams, run_index, &source);
                        continue;
                    }
                    // A refusal specific to this message (EMSGSIZE, EHOSTUNREACH...): drop
                    // its datagrams and carry on with the rest.
                    outcome.failed += self.runs[run_index].count;
                    run_index += 1;
                }
            }
        }
        if outcome.would_block {
            // Put the unsent datagrams last, in their send order, for the retry.
            let done: usize = self.runs[..run_index].iter().map(|r| r.count).sum();
            let mut ordered: Vec<(SocketAddr, BytesMut)> = Vec::with_capacity(datagrams.len());
            let mut taken: Vec<Option<(SocketAddr, BytesMut)>> =
                datagrams.drain(..).map(Some).collect();
            for &index in &self.order {
                if let Some(item) = taken[index].take() {
                    ordered.push(item);
                }
            }
            debug_assert_eq!(done, outcome.sent + outcome.failed);
            *datagrams = ordered;
        }
        outcome
    }

    /// Builds `self.order` (datagram indices grouped by destination) and `self.runs`.
    fn group(
        &mut self,
        datagrams: &[(SocketAddr, BytesMut)],
        source: &impl Fn(SocketAddr) -> Option<IpAddr>,
    ) {
        for list in self.by_dest.values_mut() {
            list.clear();
        }
        let mut dests = std::mem::take(&mut self.dests);
        dests.clear();
        for (index, (dest, _)) in datagrams.iter().enumerate() {
            let list = self.by_dest.entry(*dest).or_default();
            if list.is_empty() {
                dests.push(*dest);
            }
            list.push(index);
        }
        // Destinations of earlier calls keep their lists (and allocations) while the map
        // stays small; a shard with many peers leaving does not keep them all.
        if self.by_dest.len() > 2 * dests.len() + 64 {
            self.by_dest.retain(|_, list| !list.is_empty());
        }
        self.order.clear();
        for dest in &dests {
            if let Some(list) = self.by_dest.get(dest) {
                self.order.extend_from_slice(list);
            }
        }
        self.dests = dests;
        self.runs.clear();
        self.build_runs(datagrams, 0, source);
    }

    /// Splits `self.order[from..]` into runs.
    fn build_runs(
        &mut self,
        datagrams: &[(SocketAddr, BytesMut)],
        from: usize,
        source: &impl Fn(SocketAddr) -> Option<IpAddr>,
    ) {
        // Runs of one destination are adjacent: look its source up once.
        let mut known: Option<(SocketAddr, Option<IpAddr>)> = None;
        let mut i = from;
        while i < self.order.len() {
            let (dest, first) = &datagrams[self.order[i]];
            let from_ip = match known {
                Some((d, ip)) if d == *dest => ip,
                _ => {
                    let ip = source(*dest);
                    known = Some((*dest, ip));
                    ip
                }
            };
            let segment = first.len();
            let mut count = 1;
            let mut total = segment;
            if self.gso && segment > 0 {
                while i + count < self.order.len() && count < MAX_SEGMENTS {
                    let (next_dest, next) = &datagrams[self.order[i + count]];
                    if next_dest != dest
                        || next.len() > segment
                        || total + next.len() > MAX_GSO_BYTES
                    {
                        break;
                    }
                    total += next.len();
                    count += 1;
                    if next.len() < segment {
                        // A shorter segment must be the last of its run.
                        break;
                    }
                }
            }
            self.runs.push(Run {
                dest: *dest,
                source: from_ip,
                first: i,
                count,
                segment,
            });
            i += count;
        }
    }

    /// Rebuilds the runs from `run_index` on, one datagram each.
    fn regroup_from(
        &mut self,
        datagrams: &[(SocketAddr, BytesMut)],
        run_index: usize,
        source: &impl Fn(SocketAddr) -> Option<IpAddr>,
    ) {
        let from = self.runs[run_index].first;
        self.runs.truncate(run_index);
        self.build_runs(datagrams, from, source);
    }

    /// One `sendmmsg` for `runs[start..end]`; returns how many messages were accepted.
    fn send_runs(
        &mut self,
        fd: RawFd,
        datagrams: &[(SocketAddr, BytesMut)],
        start: usize,
        end: usize,
    ) -> io::Result<usize> {
        let runs = &self.runs[start..end];
        let SendScratch {
            iovecs,
            addrs,
            controls,
            headers,
        } = &mut self.scratch;
        iovecs.clear();
        addrs.clear();
        headers.clear();
        // One aligned control buffer per message: a UDP_SEGMENT u16 and a packet-info.
        controls.clear();
        controls.resize(runs.len() * CONTROL_WORDS, 0);
        for run in runs {
            for k in 0..run.count {
                let (_, data) = &datagrams[self.order[run.first + k]];
                iovecs.push(libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
                    iov_len: data.len(),
                });
            }
            addrs.push(to_sockaddr(&run.dest));
        }
        let mut iov_offset = 0;
        for (index, run) in runs.iter().enumerate() {
            // SAFETY: msghdr is a plain C struct for which all-zero bytes are a valid value
            // (null pointers, zero lengths).
            let mut header: libc::msghdr = unsafe { zeroed() };
            header.msg_name = &mut addrs[index].0 as *mut _ as *mut libc::c_void;
            header.msg_namelen = addrs[index].1;
            // SAFETY: `iov_offset` counts the iovecs of the runs before this one, so it is at
            // most `iovecs.len()`: the pointer stays inside (or one past) the allocation.
            header.msg_iov = unsafe { iovecs.as_mut_ptr().add(iov_offset) };
            header.msg_iovlen = run.count as _;
            iov_offset += run.count;
            let gso = (run.count > 1).then_some(run.segment as u16);
            if gso.is_some() || run.source.is_some() {
                // SAFETY: the message's control buffer is CONTROL_WORDS * 8 bytes, 8-byte
                // aligned and exclusively ours; `write_control` stays inside it.
                let control = unsafe { controls.as_mut_ptr().add(index * CONTROL_WORDS) };
                header.msg_control = control as *mut libc::c_void;
                header.msg_controllen = (CONTROL_WORDS * 8) as _;
                // SAFETY: `msg_control` points at this message's own CONTROL_WORDS * 8
                // bytes and `msg_controllen` says so, which is all `write_control` needs.
                header.msg_controllen = unsafe { write_control(&header, gso, run.source) } as _;
                if header.msg_controllen == 0 {
                    header.msg_control = std::ptr::null_mut();
                }
            }
            headers.push(libc::mmsghdr {
                msg_hdr: header,
                msg_len: 0,
            });
        }
        // SAFETY: `headers` points into `addrs`, `iovecs`, `controls` and the caller's
        // datagrams, all alive and unmoved until this call returns.
        let accepted = unsafe {
            libc::sendmmsg(
                fd,
                headers.as_mut_ptr(),
                headers.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if accepted < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(accepted as usize)
        }
    }
}

/// Writes a message's control messages (a GSO segment size, a source address) into the
/// control buffer `header` points at; returns the bytes used.
///
/// # Safety
/// `header.msg_control` must point at `header.msg_controllen` writable, 8-byte aligned
/// bytes, at least `CONTROL_WORDS * 8`.
unsafe fn write_control(header: &libc::msghdr, gso: Option<u16>, source: Option<IpAddr>) -> usize {
    let mut used = 0usize;
    // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR walk the buffer the caller vouches for; each
    // message written fits (u16: 24 bytes, in6_pktinfo: 40 bytes, 64 available).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        if let Some(segment) = gso {
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment);
            used += libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
            // Mark the length so far so CMSG_NXTHDR finds room for the next one.
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
        match source {
            Some(IpAddr::V4(ip)) if !cmsg.is_null() => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(ip.octets()),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::in_pktinfo, info);
                used += libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) as usize;
            }
            Some(IpAddr::V6(ip)) if !cmsg.is_null() => {
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut libc::in6_pktinfo, info);
                used += libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as usize;
            }
            _ => {}
        }
    }
    used
}

/// The destination address of a received message, from its packet-info control message.
///
/// # Safety
/// `header` must describe a message the kernel filled, with `msg_control` pointing at
/// `msg_controllen` readable bytes.
unsafe fn destination_of(header: &libc::msghdr) -> Option<IpAddr> {
    // SAFETY: the caller vouches for the control buffer; the kernel wrote whole cmsgs.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(header);
        while !cmsg.is_null() {
            let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                let info =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::in_pktinfo);
                return Some(IpAddr::V4(Ipv4Addr::from(
                    info.ipi_addr.s_addr.to_ne_bytes(),
                )));
            }
            if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
                let info =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::in6_pktinfo);
                let ip = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                return Some(match ip.to_ipv4_mapped() {
                    Some(v4) => IpAddr::V4(v4),
                    None => IpAddr::V6(ip),
                });
            }
            cmsg = libc::CMSG_NXTHDR(header, cmsg);
        }
    }
    None
}

fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Receives batches of datagrams with `recvmmsg`.
pub struct RecvBatch {
    buffers: Vec<[u8; RECV_BUF_SIZE]>,
    addrs: Vec<MaybeUninit<libc::sockaddr_storage>>,
    controls: Vec<[u64; CONTROL_WORDS]>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    sources: Vec<Option<SocketAddr>>,
    destinations: Vec<Option<IpAddr>>,
    /// The system call's arrays, rebuilt for each call in allocations kept across calls.
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

/// One received datagram.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// Where it came from.
    pub source: SocketAddr,
    /// The local address it was sent to, when the socket reports it (wildcard binds).
    pub destination: Option<IpAddr>,
    /// Its bytes.
    pub bytes: &'a [u8],
}

impl RecvBatch {
    /// Room for `capacity` datagrams per call.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            buffers: vec![[0u8; RECV_BUF_SIZE]; capacity],
            addrs: (0..capacity).map(|_| MaybeUninit::zeroed()).collect(),
            controls: vec![[0; CONTROL_WORDS]; capacity],
            lens: vec![0; capacity],
            truncated: vec![false; capacity],
            sources: vec![None; capacity],
            destinations: vec![None; capacity],
            iovecs: Vec::with_capacity(capacity),
            headers: Vec::with_capacity(capacity),
        }
    }

    /// How many datagrams one call can return.
    pub fn capacity(&self) -> usize {
        self.buffers.len()
    }

    /// Reads up to `capacity` datagrams without blocking; returns how many arrived.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let capacity = self.buffers.len();
        let Self {
            iovecs, headers, ..
        } = self;
        iovecs.clear();
        iovecs.extend(self.buffers.iter_mut().map(|buf| libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: RECV_BUF_SIZE,
        }));
        headers.clear();
        for index in 0..capacity {
            // SAFETY: msghdr is a plain C struct for which all-zero bytes are a valid value.
            let mut header: libc::msghdr = unsafe { zeroed() };
            header.msg_name = self.addrs[index].as_mut_ptr() as *mut libc::c_void;
            header.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: `iovecs` has `capacity` entries and `index < capacity`.
            header.msg_iov = unsafe { iovecs.as_mut_ptr().add(index) };
            header.msg_iovlen = 1;
            header.msg_control = self.controls[index].as_mut_ptr() as *mut libc::c_void;
            header.msg_controllen = (CONTROL_WORDS * 8) as _;
            headers.push(libc::mmsghdr {
                msg_hdr: header,
                msg_len: 0,
            });
        }
        // SAFETY: headers point into `self.buffers`, `self.addrs`, `self.controls` and
        // `iovecs`, all alive and unmoved for the call.
        let received = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                capacity as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        let received = received as usize;
        for (index, header) in headers.iter().enumerate().take(received) {
            self.lens[index] = header.msg_len as usize;
            self.truncated[index] = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            // SAFETY: the kernel filled the address for every received message.
            let storage = unsafe { self.addrs[index].assume_init_ref() };
            self.sources[index] = from_sockaddr(storage);
            // SAFETY: the kernel filled this message's header and control buffer.
            self.destinations[index] = unsafe { destination_of(&header.msg_hdr) };
        }
        Ok(received)
    }

    /// The `index`th datagram of the last call, or `None` when it was truncated or came
    /// from an address family the shard does not speak.
    pub fn datagram(&self, index: usize) -> Option<Received<'_>> {
        if self.truncated.get(index).copied().unwrap_or(true) {
            return None;
        }
        let source = self.sources.get(index).copied().flatten()?;
        let len = self.lens[index].min(RECV_BUF_SIZE);
        Some(Received {
            source,
            destination: self.destinations[index],
            bytes: &self.buffers[index][..len],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn socket() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        socket
    }

    fn payload(tag: u8, len: usize) -> BytesMut {
        BytesMut::from(&vec![tag; len][..])
    }

    fn drain(receiver: &UdpSocket, expected: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < expected {
            let (n, _) = receiver
                .recv_from(&mut buf)
                .expect("datagram within timeout");
            got.push(buf[..n].to_vec());
        }
        got
    }

    #[test]
    fn gso_and_plain_batches_deliver_every_datagram_intact_and_in_order() {
        for gso in [true, false] {
            let sender = socket();
            let a = socket();
            let b = socket();
            let mut batch = Vec::new();
            // Interleaved fan-out: equal sizes, then a shorter tail, then a longer one.
            for i in 0..10u8 {
                batch.push((a.local_addr().unwrap(), payload(i, 1200)));
                batch.push((b.local_addr().unwrap(), payload(100 + i, 1200)));
            }
            batch.push((a.local_addr().unwrap(), payload(50, 300)));
            batch.push((a.local_addr().unwrap(), payload(51, 1300)));
            let mut batcher = SendBatcher::new(gso);
            let outcome = batcher.send(sender.as_raw_fd(), &mut batch, |_| None);
            assert_eq!(outcome.sent, 22, "gso={gso}: {outcome:?}");
            assert!(!outcome.would_block);
            // Left for the caller, whose buffers they are.
            assert_eq!(batch.len(), 22);
            // Two destinations, at most a handful of messages, one syscall.
            assert_eq!(outcome.syscalls, 1);
            let got_a = drain(&a, 12);
            let got_b = drain(&b, 10);
            for (i, datagram) in got_a.iter().take(10).enumerate() {
                assert_eq!(datagram, &vec![i as u8; 1200]);
            }
            assert_eq!(got_a[10], vec![50u8; 300]);
            assert_eq!(got_a[11], vec![51u8; 1300]);
            for (i, datagram) in got_b.iter().enumerate() {
                assert_eq!(datagram, &vec![100 + i as u8; 1200]);
            }
        }
    }

    #[test]
    fn recvmmsg_returns_sources_and_bytes() {
        let receiver = socket();
        let sender = socket();
        for i in 0..5u8 {
            sender
                .send_to(&[i; 10], receiver.local_addr().unwrap())
                .unwrap();
        }
        let mut batch = RecvBatch::new(8);
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while seen.len() < 5 && std::time::Instant::now() < deadline {
            match batch.recv(receiver.as_raw_fd()) {
                Ok(n) => {
                    for index in 0..n {
                        let got = batch.datagram(index).expect("datagram");
                        assert_eq!(got.source, sender.local_addr().unwrap());
                        assert_eq!(got.destination, None, "not asked for");
                        seen.push(got.bytes.to_vec());
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::yield_now();
                }
                Err(err) => panic!("recvmmsg: {err}"),
            }
        }
        assert_eq!(seen, (0..5u8).map(|i| vec![i; 10]).collect::<Vec<_>>());
    }

    /// Reads one batch within two seconds.
    fn recv_some(batch: &mut RecvBatch, fd: RawFd) -> usize {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            match batch.recv(fd) {
                Ok(n) if n > 0 => return n,
                _ if std::time::Instant::now() < deadline => std::thread::yield_now(),
                other => panic!("no datagram: {other:?}"),
            }
        }
    }

    #[test]
    fn a_wildcard_socket_answers_from_the_address_it_was_reached_at() {
        // The server listens on 0.0.0.0; the client reaches it at 127.0.0.2, one of the
        // host's addresses that is not the route's preferred source towards the client.
        let server = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        server.set_nonblocking(true).expect("nonblocking");
        let port = server.local_addr().unwrap().port();
        enable_destination_info(server.as_raw_fd(), false).expect("IP_PKTINFO");
        let client = socket();
        let reached: SocketAddr = SocketAddr::from(([127, 0, 0, 2], port));
        client.send_to(b"check", reached).unwrap();
        let mut batch = RecvBatch::new(4);
        assert_eq!(recv_some(&mut batch, server.as_raw_fd()), 1);
        let got = batch.datagram(0).expect("datagram");
        assert_eq!(got.destination, Some(reached.ip()));
        let peer = got.source;
        for gso in [true, false] {
            // Three equal datagrams make a GSO run when GSO is on: both control messages.
            let mut replies: Vec<(SocketAddr, BytesMut)> =
                (0..3).map(|i| (peer, payload(i, 100))).collect();
            let outcome = SendBatcher::new(gso).send(server.as_raw_fd(), &mut replies, |to| {
                (to == peer).then_some(reached.ip())
            });
            assert_eq!(outcome.sent, 3, "gso={gso}: {outcome:?}");
            let mut buf = [0u8; 256];
            for _ in 0..3 {
                let (_, from) = client.recv_from(&mut buf).expect("reply");
                assert_eq!(from, reached, "gso={gso}: the reply's source");
            }
        }
        // Without the source named, the kernel picks the route's address: the fault this
        // prevents.
        let mut reply = vec![(peer, payload(9, 10))];
        SendBatcher::new(true).send(server.as_raw_fd(), &mut reply, |_| None);
        let mut buf = [0u8; 64];
        let (_, from) = client.recv_from(&mut buf).expect("reply");
        assert_eq!(from, SocketAddr::from(([127, 0, 0, 1], port)));
    }

    #[test]
    fn oversized_datagrams_are_reported_as_truncated() {
        let receiver = socket();
        let sender = socket();
        sender
            .send_to(
                &vec![1u8; RECV_BUF_SIZE + 100],
                receiver.local_addr().unwrap(),
            )
            .unwrap();
        let mut batch = RecvBatch::new(2);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            match batch.recv(receiver.as_raw_fd()) {
                Ok(n) if n > 0 => {
                    assert!(batch.datagram(0).is_none());
                    break;
                }
                _ if std::time::Instant::now() < deadline => std::thread::yield_now(),
                other => panic!("no datagram: {other:?}"),
            }
        }
    }
}
