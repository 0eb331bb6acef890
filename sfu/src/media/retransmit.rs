//! The per-track retransmission buffer.
//!
//! One buffer per published video stream, shared by every subscriber: a NACK from any of
//! them is answered from here after its outgoing sequence number has been mapped back to
//! the source (see [`super::sequencer`]). Packets are held as parsed RTP packets whose
//! payload is a reference-counted slice of the decrypted datagram, so keeping them costs
//! no copy.

use rtc::rtp;
use std::time::{Duration, Instant};

/// Packets kept per stream: about five seconds of 1 Mbit/s video.
pub const DEFAULT_CAPACITY: usize = 512;

/// A ring of recently received packets, indexed by sequence number.
#[derive(Debug)]
pub struct RetransmitBuffer {
    slots: Vec<Option<(Instant, rtp::Packet)>>,
    max_age: Duration,
}

impl RetransmitBuffer {
    /// A buffer with room for `capacity` packets (rounded up to a power of two) that
    /// refuses to resend packets older than `max_age`.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        let capacity = capacity.max(1).next_power_of_two();
        Self {
            slots: (0..capacity).map(|_| None).collect(),
            max_age,
        }
    }

    fn index(&self, seq: u16) -> usize {
        usize::from(seq) & (self.slots.len() - 1)
    }

    /// Stores a packet, replacing whatever occupied its slot.
    pub fn insert(&mut self, now: Instant, packet: rtp::Packet) {
        let index = self.index(packet.header.sequence_number);
        self.slots[index] = Some((now, packet));
    }

    /// The stored packet with this sequence number, if still held and fresh enough.
    pub fn get(&self, seq: u16, now: Instant) -> Option<&rtp::Packet> {
        match &self.slots[self.index(seq)] {
            Some((stored_at, packet))
                if packet.header.sequence_number == seq
                    && now.saturating_duration_since(*stored_at) <= self.max_age =>
            {
                Some(packet)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn packet(seq: u16) -> rtp::Packet {
        rtp::Packet {
            header: rtp::header::Header {
                sequence_number: seq,
                ..Default::default()
            },
            payload: Bytes::from(vec![seq as u8; 4]),
        }
    }

    #[test]
    fn keeps_the_newest_packet_per_slot() {
        let t0 = Instant::now();
        let mut buffer = RetransmitBuffer::new(100, Duration::from_secs(2));
        for seq in 0..300u16 {
            buffer.insert(t0, packet(seq));
        }
        // Capacity rounds to 128: seq 299 lives, seq 100 was overwritten by 228.
        assert_eq!(buffer.get(299, t0).unwrap().payload[0], 299u16 as u8);
        assert!(buffer.get(100, t0).is_none());
        assert!(buffer.get(228, t0).is_some());
        // Too old to be useful.
        assert!(buffer.get(299, t0 + Duration::from_secs(3)).is_none());
    }

    #[test]
    fn wraps_around_sequence_space() {
        let t0 = Instant::now();
        let mut buffer = RetransmitBuffer::new(DEFAULT_CAPACITY, Duration::from_secs(2));
        for i in 0..20u16 {
            buffer.insert(t0, packet(65_530u16.wrapping_add(i)));
        }
        assert!(buffer.get(65_535, t0).is_some());
        assert!(buffer.get(3, t0).is_some());
    }
}
