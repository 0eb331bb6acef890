//! A subscriber's copy of a packet, laid out by the shard: the RTP header under the
//! subscriber's SSRC, sequence number and timestamp, the header extensions the shard
//! writes for that subscriber (RFC 8285, one-byte form), then the payload.
//!
//! Two extensions stamp the moment of sending, so a receiver can measure the downlink and
//! send congestion feedback: a transport-wide sequence number (one counter per
//! connection, draft-holmer-rmcat-transport-wide-cc-extensions) and abs-send-time. A
//! resend must be the same bytes as the packet first sent under its sequence number (SRTP
//! encrypts both under one packet index), so each stream remembers what its recent
//! sequence numbers were stamped with ([`SentStamps`]).

use bytes::{BufMut, BytesMut};
use std::time::Duration;

/// The playout-delay extension's value: minimum and maximum delay 0 (render at once).
pub const PLAYOUT_DELAY_ZERO: [u8; 3] = [0, 0, 0];
/// The one-byte header extension profile (RFC 8285 section 4.2).
const ONE_BYTE_PROFILE: u16 = 0xBEDE;
/// Largest id the one-byte form can carry; `rtc` numbers extensions from 1, so a
/// connection has far fewer.
const MAX_ONE_BYTE_ID: u8 = 14;
/// The two-byte header extension profile (RFC 8285 section 4.3), for a value longer than
/// 16 bytes: an AV1 dependency descriptor carrying its structure.
const TWO_BYTE_PROFILE: u16 = 0x1000;
/// Largest value the one-byte form can carry.
const MAX_ONE_BYTE_LEN: usize = 16;
/// Largest header: 12 bytes, the extension header, four extensions of at most three bytes
/// and a dependency descriptor of at most 255, each with its two-byte id and length,
/// padded.
pub const MAX_HEADER_LEN: usize = 12 + 4 + (4 * (2 + 3) + 2 + 255usize).next_multiple_of(4);

/// The header extensions negotiated with one subscriber for one stream, by id.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExtensionIds {
    /// RFC 6464 audio level (audio): the publisher's value, passed on.
    pub audio_level: Option<u8>,
    /// abs-send-time: the shard's send time.
    pub abs_send_time: Option<u8>,
    /// Transport-wide sequence number.
    pub transport_cc: Option<u8>,
    /// Playout delay (video in music rooms): always zero.
    pub playout_delay: Option<u8>,
    /// AV1 dependency descriptor (video): the publisher's, passed on.
    pub dependency_descriptor: Option<u8>,
}

impl ExtensionIds {
    /// Whether a resend needs the first send's stamps.
    pub fn stamps_sends(&self) -> bool {
        self.abs_send_time.is_some() || self.transport_cc.is_some()
    }
}

/// What the send-time extensions of one packet carried.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendStamp {
    /// The connection's transport-wide sequence number.
    pub transport_seq: u16,
    /// abs-send-time: seconds in 6.18 fixed point, 24 bits.
    pub abs_send_time: u32,
}

/// abs-send-time for a send at `elapsed` since any fixed instant: 6.18 fixed-point
/// seconds, modulo 64 s (only differences matter to the receiver).
pub fn abs_send_time(elapsed: Duration) -> u32 {
    let fixed = (u128::from(elapsed.as_micros() as u64) << 18) / 1_000_000;
    (fixed as u32) & 0x00FF_FFFF
}

/// The fields of one outgoing packet.
#[derive(Debug, Clone, Copy)]
pub struct OutPacket<'a> {
    /// The marker bit.
    pub marker: bool,
    /// The padding bit: the payload ends in padding whose last byte counts it (RFC 3550
    /// 5.1); a probe's packets are padding only.
    pub padding: bool,
    /// The subscriber's payload type.
    pub payload_type: u8,
    /// The subscriber's sequence number.
    pub seq: u16,
    /// The subscriber's timestamp.
    pub timestamp: u32,
    /// The subscriber's SSRC.
    pub ssrc: u32,
    /// The publisher's audio level byte (RFC 6464: V flag and level), if it sent one.
    pub audio_level: Option<u8>,
    /// The publisher's AV1 dependency descriptor, if it sent one.
    pub dependency_descriptor: Option<&'a [u8]>,
    /// The send stamps.
    pub stamp: SendStamp,
    /// The payload.
    pub payload: &'a [u8],
}

/// Room enough for the header [`write`] makes of `packet`: [`MAX_HEADER_LEN`] only for a
/// packet carrying the longest dependency descriptor, so that a full-sized video packet's
/// copy still fits a reused datagram buffer.
pub fn header_room(packet: &OutPacket<'_>) -> usize {
    match packet.dependency_descriptor {
        Some(value) => 12 + 4 + (4 * (2 + 3) + 2 + value.len()).next_multiple_of(4),
        None => 12 + 4 + 16,
    }
}

/// Writes `packet` into `buf` (emptied first) with the extensions `ids` names; returns
/// the header's length. Allocates only if `buf` has less room than the packet needs.
pub fn write(buf: &mut BytesMut, ids: &ExtensionIds, packet: &OutPacket<'_>) -> usize {
    buf.clear();
    let mut small = [(0u8, [0u8; 3], 0usize); 4];
    let mut count = 0;
    let mut add = |id: Option<u8>, value: &[u8]| {
        if let Some(id) = id.filter(|id| (1..=MAX_ONE_BYTE_ID).contains(id))
            && let Some(slot) = small.get_mut(count)
        {
            slot.1[..value.len()].copy_from_slice(value);
            *slot = (id, slot.1, value.len());
            count += 1;
        }
    };
    if let Some(level) = packet.audio_level {
        add(ids.audio_level, &[level]);
    }
    add(
        ids.abs_send_time,
        &packet.stamp.abs_send_time.to_be_bytes()[1..],
    );
    add(ids.transport_cc, &packet.stamp.transport_seq.to_be_bytes());
    add(ids.playout_delay, &PLAYOUT_DELAY_ZERO);
    let small = &small[..count];
    let descriptor = match (ids.dependency_descriptor, packet.dependency_descriptor) {
        (Some(id), Some(value)) if id >= 1 && !value.is_empty() && value.len() <= 255 => {
            Some((id, value))
        }
        _ => None,
    };
    // The one-byte form while every element fits it; the two-byte form (which a receiver
    // that negotiated the dependency descriptor reads, as libwebrtc does) for a descriptor
    // that does not.
    let two_byte = descriptor
        .is_some_and(|(id, value)| id > MAX_ONE_BYTE_ID || value.len() > MAX_ONE_BYTE_LEN);
    let any = !small.is_empty() || descriptor.is_some();

    let first = 0x80 | if packet.padding { 0x20 } else { 0 } | if any { 0x10 } else { 0 };
    buf.put_u8(first);
    buf.put_u8(u8::from(packet.marker) << 7 | (packet.payload_type & 0x7f));
    buf.put_u16(packet.seq);
    buf.put_u32(packet.timestamp);
    buf.put_u32(packet.ssrc);
    if any {
        let element_header = if two_byte { 2 } else { 1 };
        let body: usize = small
            .iter()
            .map(|(_, _, len)| element_header + len)
            .chain(descriptor.map(|(_, value)| element_header + value.len()))
            .sum();
        let words = body.div_ceil(4);
        buf.put_u16(if two_byte {
            TWO_BYTE_PROFILE
        } else {
            ONE_BYTE_PROFILE
        });
        buf.put_u16(words as u16);
        let elements = small
            .iter()
            .map(|(id, value, len)| (*id, &value[..*len]))
            .chain(descriptor);
        for (id, value) in elements {
            if two_byte {
                buf.put_u8(id);
                buf.put_u8(value.len() as u8);
            } else {
                buf.put_u8(id << 4 | (value.len() as u8 - 1));
            }
            buf.put_slice(value);
        }
        buf.put_bytes(0, words * 4 - body);
    }
    let header_len = buf.len();
    buf.put_slice(packet.payload);
    header_len
}

/// What a stream's recent sequence numbers were first sent with, for their resends: the
/// send-time extensions, and the RTP marker (which the shard sets where a subscriber's
/// picture ends, by the spatial layers it received then).
#[derive(Debug)]
pub struct SentStamps {
    slots: Box<[Option<(u16, SendStamp, bool)>]>,
}

impl SentStamps {
    /// Room for `capacity` sequence numbers (rounded up to a power of two); older ones
    /// cannot be resent.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1).next_power_of_two();
        Self {
            slots: vec![None; capacity].into_boxed_slice(),
        }
    }

    fn slot(&self, seq: u16) -> usize {
        usize::from(seq) & (self.slots.len() - 1)
    }

    /// Records what `seq` was first sent with.
    pub fn record(&mut self, seq: u16, stamp: SendStamp, marker: bool) {
        let slot = self.slot(seq);
        if let Some(entry) = self.slots.get_mut(slot) {
            *entry = Some((seq, stamp, marker));
        }
    }

    /// What `seq` was sent with, if it is recent enough to be remembered.
    pub fn get(&self, seq: u16) -> Option<SendStamp> {
        match self.slots.get(self.slot(seq)) {
            Some(Some((sent, stamp, _))) if *sent == seq => Some(*stamp),
            _ => None,
        }
    }

    /// Whether `seq` was sent with the marker, if it is recent enough to be remembered.
    pub fn marker(&self, seq: u16) -> Option<bool> {
        match self.slots.get(self.slot(seq)) {
            Some(Some((sent, _, marker))) if *sent == seq => Some(*marker),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::shared::marshal::Unmarshal;

    fn parse(buf: &[u8]) -> rtc::rtp::Packet {
        let mut raw = buf;
        rtc::rtp::Packet::unmarshal(&mut raw).expect("a valid RTP packet")
    }

    #[test]
    fn a_packet_with_every_extension_parses_back_with_rtc() {
        let ids = ExtensionIds {
            audio_level: Some(1),
            abs_send_time: Some(2),
            transport_cc: Some(3),
            playout_delay: Some(4),
            dependency_descriptor: None,
        };
        let stamp = SendStamp {
            transport_seq: 0xBEEF,
            abs_send_time: 0x12_3456,
        };
        let mut buf = BytesMut::with_capacity(1500);
        let header_len = write(
            &mut buf,
            &ids,
            &OutPacket {
                padding: false,
                marker: true,
                payload_type: 111,
                seq: 65_000,
                timestamp: 0xDEAD_BEEF,
                ssrc: 0x0102_0304,
                audio_level: Some(0x80 | 30),
                dependency_descriptor: None,
                stamp,
                payload: b"opus",
            },
        );
        assert_eq!(header_len % 4, 0);
        assert!(header_len <= MAX_HEADER_LEN);
        assert!(
            header_len <= 32,
            "{header_len}: no more than before descriptors"
        );
        let packet = parse(&buf);
        let header = &packet.header;
        assert!(header.marker);
        assert_eq!(
            (
                header.payload_type,
                header.sequence_number,
                header.timestamp,
                header.ssrc
            ),
            (111, 65_000, 0xDEAD_BEEF, 0x0102_0304)
        );
        assert_eq!(header.extension_profile, ONE_BYTE_PROFILE);
        assert_eq!(&header.get_extension(1).expect("level")[..], &[0x80 | 30]);
        assert_eq!(
            &header.get_extension(2).expect("abs")[..],
            &[0x12, 0x34, 0x56]
        );
        assert_eq!(&header.get_extension(3).expect("twcc")[..], &[0xBE, 0xEF]);
        assert_eq!(&header.get_extension(4).expect("delay")[..], &[0, 0, 0]);
        assert_eq!(&packet.payload[..], b"opus");
    }

    #[test]
    fn without_extensions_the_header_is_twelve_bytes_and_unusable_ids_are_left_out() {
        let mut buf = BytesMut::new();
        let packet = OutPacket {
            padding: false,
            marker: false,
            payload_type: 96,
            seq: 1,
            timestamp: 2,
            ssrc: 3,
            audio_level: None,
            dependency_descriptor: None,
            stamp: SendStamp::default(),
            payload: &[1, 2, 3],
        };
        assert_eq!(write(&mut buf, &ExtensionIds::default(), &packet), 12);
        assert!(!parse(&buf).header.extension);
        // Id 15 is reserved in the one-byte form, 0 is padding: neither is written. An
        // audio level id with no level from the publisher writes nothing either.
        let ids = ExtensionIds {
            audio_level: Some(1),
            abs_send_time: Some(15),
            transport_cc: Some(0),
            playout_delay: None,
            dependency_descriptor: None,
        };
        assert_eq!(write(&mut buf, &ids, &packet), 12);
        assert_eq!(&parse(&buf).payload[..], &[1, 2, 3]);
    }

    #[test]
    fn a_dependency_descriptor_goes_in_the_one_byte_form_when_short_and_the_two_byte_when_long() {
        let ids = ExtensionIds {
            transport_cc: Some(3),
            dependency_descriptor: Some(12),
            ..ExtensionIds::default()
        };
        let stamp = SendStamp {
            transport_seq: 7,
            abs_send_time: 0,
        };
        let mut buf = BytesMut::new();
        for (len, profile) in [
            (3, ONE_BYTE_PROFILE),
            (16, ONE_BYTE_PROFILE),
            (17, TWO_BYTE_PROFILE),
            (255, TWO_BYTE_PROFILE),
        ] {
            let descriptor: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            let header_len = write(
                &mut buf,
                &ids,
                &OutPacket {
                    padding: false,
                    marker: false,
                    payload_type: 45,
                    seq: 9,
                    timestamp: 10,
                    ssrc: 11,
                    audio_level: None,
                    dependency_descriptor: Some(&descriptor),
                    stamp,
                    payload: &[0x18, 1, 2],
                },
            );
            assert!(header_len <= MAX_HEADER_LEN && header_len.is_multiple_of(4));
            assert!(
                header_len
                    <= header_room(&OutPacket {
                        padding: false,
                        marker: false,
                        payload_type: 45,
                        seq: 9,
                        timestamp: 10,
                        ssrc: 11,
                        audio_level: None,
                        dependency_descriptor: Some(&descriptor),
                        stamp,
                        payload: &[],
                    })
            );
            let packet = parse(&buf);
            assert_eq!(packet.header.extension_profile, profile, "{len} bytes");
            assert_eq!(
                &packet.header.get_extension(12).expect("descriptor")[..],
                &descriptor[..]
            );
            assert_eq!(&packet.header.get_extension(3).expect("twcc")[..], &[0, 7]);
            assert_eq!(&packet.payload[..], &[0x18, 1, 2]);
        }
        // Without the subscriber's id, nothing of it.
        let ids = ExtensionIds {
            dependency_descriptor: None,
            ..ids
        };
        let descriptor = [1u8; 20];
        write(
            &mut buf,
            &ids,
            &OutPacket {
                padding: false,
                marker: false,
                payload_type: 45,
                seq: 9,
                timestamp: 10,
                ssrc: 11,
                audio_level: None,
                dependency_descriptor: Some(&descriptor),
                stamp,
                payload: &[0x18],
            },
        );
        let packet = parse(&buf);
        assert_eq!(packet.header.extension_profile, ONE_BYTE_PROFILE);
        assert_eq!(packet.header.extensions.len(), 1);
    }

    #[test]
    fn abs_send_time_is_six_point_eighteen_seconds_modulo_sixty_four() {
        assert_eq!(abs_send_time(Duration::ZERO), 0);
        assert_eq!(abs_send_time(Duration::from_secs(1)), 1 << 18);
        assert_eq!(abs_send_time(Duration::from_millis(250)), 1 << 16);
        assert_eq!(abs_send_time(Duration::from_secs(64)), 0);
        assert_eq!(abs_send_time(Duration::from_secs(65)), 1 << 18);
    }

    #[test]
    fn sent_stamps_remember_recent_numbers_only() {
        let mut stamps = SentStamps::new(100);
        let stamp = |n: u16| SendStamp {
            transport_seq: n,
            abs_send_time: u32::from(n) * 3,
        };
        for seq in 0..300u16 {
            stamps.record(seq, stamp(seq), seq % 3 == 0);
        }
        assert_eq!(stamps.get(299), Some(stamp(299)));
        assert_eq!(stamps.marker(297), Some(true));
        assert_eq!(stamps.marker(298), Some(false));
        assert_eq!(stamps.marker(171), None);
        assert_eq!(stamps.get(172), Some(stamp(172)));
        // Overwritten by 128 numbers later, and never sent.
        assert_eq!(stamps.get(171), None);
        assert_eq!(stamps.get(300), None);
    }
}
