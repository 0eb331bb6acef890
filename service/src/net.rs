//! Addresses a process tells others to reach it at.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};

/// The IP to advertise when none is configured: the bound IP, else the interface the
/// host would route outbound traffic through (no packet is sent), else loopback.
pub fn default_advertise_ip(bound: IpAddr) -> IpAddr {
    if !bound.is_unspecified() {
        return bound;
    }
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|probe| {
            probe.connect((Ipv4Addr::new(192, 0, 2, 1), 9))?;
            probe.local_addr()
        })
        .map(|addr| addr.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_ip_prefers_the_bound_address() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(default_advertise_ip(ip), ip);
        assert!(!default_advertise_ip("0.0.0.0".parse().unwrap()).is_unspecified());
    }
}
