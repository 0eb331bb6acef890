//! Classification of datagrams arriving on the shard's one UDP port.
//!
//! Every peer shares the socket, so before a packet can reach a peer connection the shard
//! must know what it is (RFC 7983 demultiplexing by first byte) and, for STUN, which peer it
//! names (the ICE username fragment). Everything here reads bytes that come from anyone on
//! the network: it is bounded, allocation-free and never panics.

/// What a datagram is, judged by its first bytes (RFC 7983, RFC 5761).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    /// A STUN message (ICE connectivity check or consent freshness).
    Stun,
    /// A DTLS record (handshake, alert, or SCTP application data).
    Dtls,
    /// An SRTP packet.
    Rtp,
    /// An SRTCP packet.
    Rtcp,
    /// Nothing a WebRTC peer sends: dropped and counted.
    Unknown,
}

use std::net::SocketAddr;

/// The fixed STUN header length.
const STUN_HEADER_LEN: usize = 20;
/// The STUN magic cookie (RFC 5389 §6).
const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// The STUN USERNAME attribute type.
const STUN_ATTR_USERNAME: u16 = 0x0006;
/// The smallest RTP header.
const RTP_MIN_LEN: usize = 12;
/// The smallest RTCP packet (a header and a sender SSRC).
const RTCP_MIN_LEN: usize = 8;

/// Classifies a datagram. Lengths are checked, so a truncated packet is `Unknown` rather
/// than something a later stage has to guard against.
pub fn classify(datagram: &[u8]) -> DatagramKind {
    let Some(&first) = datagram.first() else {
        return DatagramKind::Unknown;
    };
    match first {
        0..=3 => {
            if datagram.len() >= STUN_HEADER_LEN && datagram[4..8] == STUN_MAGIC_COOKIE {
                DatagramKind::Stun
            } else {
                DatagramKind::Unknown
            }
        }
        20..=63 => {
            // A DTLS record header is 13 bytes.
            if datagram.len() >= 13 {
                DatagramKind::Dtls
            } else {
                DatagramKind::Unknown
            }
        }
        128..=191 => {
            let second = datagram.get(1).copied().unwrap_or(0);
            // RFC 5761 §4: RTCP packet types 192..=223 occupy the RTP marker+PT byte.
            if (192..=223).contains(&second) {
                if datagram.len() >= RTCP_MIN_LEN {
                    DatagramKind::Rtcp
                } else {
                    DatagramKind::Unknown
                }
            } else if datagram.len() >= RTP_MIN_LEN {
                DatagramKind::Rtp
            } else {
                DatagramKind::Unknown
            }
        }
        _ => DatagramKind::Unknown,
    }
}

/// The STUN USERNAME attribute's value, walking the attributes of a message already
/// classified as STUN. Returns `None` for a malformed message or one without USERNAME.
pub fn stun_username(datagram: &[u8]) -> Option<&[u8]> {
    if datagram.len() < STUN_HEADER_LEN {
        return None;
    }
    let declared = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let body_end = STUN_HEADER_LEN.checked_add(declared)?;
    if body_end > datagram.len() || declared % 4 != 0 {
        return None;
    }
    let mut offset = STUN_HEADER_LEN;
    while offset + 4 <= body_end {
        let typ = u16::from_be_bytes([datagram[offset], datagram[offset + 1]]);
        let len = usize::from(u16::from_be_bytes([
            datagram[offset + 2],
            datagram[offset + 3],
        ]));
        let value_start = offset + 4;
        let value_end = value_start.checked_add(len)?;
        if value_end > body_end {
            return None;
        }
        if typ == STUN_ATTR_USERNAME {
            return Some(&datagram[value_start..value_end]);
        }
        // Attributes are padded to a multiple of four bytes.
        offset = value_start + len.div_ceil(4) * 4;
    }
    None
}

/// The local (shard-side) ufrag of an ICE username `"local:remote"` as sent by the
/// remote peer in its Binding requests (RFC 8445 §7.2.2).
pub fn local_ufrag(username: &[u8]) -> Option<&str> {
    let colon = username.iter().position(|&b| b == b':')?;
    std::str::from_utf8(&username[..colon])
        .ok()
        .filter(|ufrag| !ufrag.is_empty())
}

/// The answer to a plain STUN Binding request (RFC 8489: no USERNAME, so not an ICE
/// check): a Binding success response carrying XOR-MAPPED-ADDRESS, the way any STUN
/// server answers. Clients time these to learn their round trip to the shard's region.
/// `None` for anything else, or a request carrying attributes we would have to
/// understand (only FINGERPRINT and SOFTWARE may come along).
pub fn probe_response(datagram: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    if datagram.len() < STUN_HEADER_LEN
        || datagram[0..2] != [0x00, 0x01]
        || datagram[4..8] != STUN_MAGIC_COOKIE
    {
        return None;
    }
    let declared = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if STUN_HEADER_LEN + declared != datagram.len() || declared % 4 != 0 {
        return None;
    }
    let mut offset = STUN_HEADER_LEN;
    while offset + 4 <= datagram.len() {
        let typ = u16::from_be_bytes([datagram[offset], datagram[offset + 1]]);
        let len = usize::from(u16::from_be_bytes([
            datagram[offset + 2],
            datagram[offset + 3],
        ]));
        // SOFTWARE, FINGERPRINT: nothing to act on. Anything else (USERNAME, PRIORITY,
        // comprehension-required attributes) is not a plain probe.
        if typ != 0x8022 && typ != 0x8028 {
            return None;
        }
        offset += 4 + len.div_ceil(4) * 4;
    }
    let transaction = &datagram[8..20];
    let mut address = Vec::with_capacity(20);
    let port = from.port() ^ 0x2112;
    match from.ip() {
        std::net::IpAddr::V4(ip) => {
            address.extend_from_slice(&[0, 0x01]);
            address.extend_from_slice(&port.to_be_bytes());
            for (byte, key) in ip.octets().iter().zip(STUN_MAGIC_COOKIE) {
                address.push(byte ^ key);
            }
        }
        std::net::IpAddr::V6(ip) => {
            address.extend_from_slice(&[0, 0x02]);
            address.extend_from_slice(&port.to_be_bytes());
            let key = STUN_MAGIC_COOKIE.iter().chain(transaction);
            for (byte, key) in ip.octets().iter().zip(key) {
                address.push(byte ^ key);
            }
        }
    }
    let body_len = 4 + address.len();
    let mut response = Vec::with_capacity(STUN_HEADER_LEN + body_len);
    response.extend_from_slice(&[0x01, 0x01]);
    response.extend_from_slice(&u16::try_from(body_len).ok()?.to_be_bytes());
    response.extend_from_slice(&datagram[4..20]);
    response.extend_from_slice(&0x0020u16.to_be_bytes());
    response.extend_from_slice(&u16::try_from(address.len()).ok()?.to_be_bytes());
    response.extend_from_slice(&address);
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun_with_username(username: &[u8]) -> Vec<u8> {
        let padded = username.len().div_ceil(4) * 4;
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
        msg.extend_from_slice(&STUN_MAGIC_COOKIE);
        msg.extend_from_slice(&[7u8; 12]);
        msg.extend_from_slice(&STUN_ATTR_USERNAME.to_be_bytes());
        msg.extend_from_slice(&(username.len() as u16).to_be_bytes());
        msg.extend_from_slice(username);
        msg.resize(STUN_HEADER_LEN + 4 + padded, 0);
        msg
    }

    #[test]
    fn classifies_by_first_byte_and_length() {
        assert_eq!(classify(&[]), DatagramKind::Unknown);
        assert_eq!(classify(&stun_with_username(b"a:b")), DatagramKind::Stun);
        // STUN range without the magic cookie is not STUN.
        assert_eq!(classify(&[0u8; 20]), DatagramKind::Unknown);
        assert_eq!(classify(&[22u8; 13]), DatagramKind::Dtls);
        assert_eq!(classify(&[22u8; 5]), DatagramKind::Unknown);
        let mut rtp = [0u8; 12];
        rtp[0] = 0x80;
        rtp[1] = 96;
        assert_eq!(classify(&rtp), DatagramKind::Rtp);
        assert_eq!(classify(&rtp[..11]), DatagramKind::Unknown);
        let mut rtcp = [0u8; 8];
        rtcp[0] = 0x81;
        rtcp[1] = 206; // PSFB
        assert_eq!(classify(&rtcp), DatagramKind::Rtcp);
        assert_eq!(classify(&rtcp[..7]), DatagramKind::Unknown);
        assert_eq!(classify(&[255u8; 100]), DatagramKind::Unknown);
    }

    #[test]
    fn finds_username_and_local_ufrag() {
        let msg = stun_with_username(b"shardufrag:clientufrag");
        let username = stun_username(&msg).expect("username present");
        assert_eq!(username, b"shardufrag:clientufrag");
        assert_eq!(local_ufrag(username), Some("shardufrag"));
        assert_eq!(local_ufrag(b":x"), None);
        assert_eq!(local_ufrag(b"nocolon"), None);
    }

    #[test]
    fn malformed_stun_yields_nothing() {
        let msg = stun_with_username(b"abc:def");
        // Every truncation of a valid message is rejected or parsed within bounds.
        for cut in 0..msg.len() {
            let _ = stun_username(&msg[..cut]);
        }
        // A length field larger than the datagram.
        let mut lying = msg.clone();
        lying[3] = 0xF0;
        assert_eq!(stun_username(&lying), None);
        // An attribute whose length runs past the body.
        let mut overlong = msg;
        overlong[STUN_HEADER_LEN + 3] = 0xFF;
        assert_eq!(stun_username(&overlong), None);
    }

    #[test]
    fn a_plain_binding_request_gets_its_mapped_address_back() {
        use rtc::stun::message::Getter;
        let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        request.extend_from_slice(b"tutti-probe!");
        let from: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let response = probe_response(&request, from).unwrap();
        // Decoded by the STUN implementation the shard's ICE uses, not by our own code.
        let mut message = rtc::stun::message::Message {
            raw: response,
            ..Default::default()
        };
        message.decode().unwrap();
        assert_eq!(message.typ.to_string(), "Binding success response");
        assert_eq!(&message.transaction_id.0[..], b"tutti-probe!");
        let mut mapped = rtc::stun::xoraddr::XorMappedAddress::default();
        mapped.get_from(&message).unwrap();
        assert_eq!(SocketAddr::new(mapped.ip, mapped.port), from);
        let v6: SocketAddr = "[2001:db8::7]:5000".parse().unwrap();
        let mut message = rtc::stun::message::Message {
            raw: probe_response(&request, v6).unwrap(),
            ..Default::default()
        };
        message.decode().unwrap();
        let mut mapped = rtc::stun::xoraddr::XorMappedAddress::default();
        mapped.get_from(&message).unwrap();
        assert_eq!(SocketAddr::new(mapped.ip, mapped.port), v6);
    }

    #[test]
    fn ice_checks_responses_and_garbage_are_not_probes() {
        let from: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        // With USERNAME: an ICE check, for the peer it names.
        assert!(probe_response(&stun_with_username(b"abcd:efgh"), from).is_none());
        let mut response = vec![0x01, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        response.extend_from_slice(b"tutti-probe!");
        assert!(probe_response(&response, from).is_none());
        let mut lying = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42];
        lying.extend_from_slice(b"tutti-probe!");
        assert!(
            probe_response(&lying, from).is_none(),
            "declared length past the end"
        );
        assert!(probe_response(&[0x00, 0x01, 0x00], from).is_none());
    }
}
