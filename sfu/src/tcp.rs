//! ICE-TCP framing (RFC 6544 §3, RFC 4571): on a TCP connection every STUN, DTLS or
//! SRTP packet is preceded by its length as a 16-bit big-endian number.
//!
//! ICE-TCP is the fallback for clients whose network lets no UDP out: the shard listens
//! on the same port number over TCP and advertises a passive TCP host candidate next to
//! its UDP one. Frames come from anyone who connects, so the decoder bounds what it holds.

use bytes::{Buf, BytesMut};

/// The largest frame accepted (the UDP receive buffer's size); a larger one ends the
/// connection.
pub const MAX_FRAME: usize = crate::udp::RECV_BUF_SIZE;

/// A frame longer than [`MAX_FRAME`] was announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ICE-TCP frame of {0} bytes exceeds the limit")]
pub struct FrameTooLarge(pub usize);

/// Splits a TCP byte stream into frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: BytesMut,
}

impl FrameDecoder {
    /// Appends bytes read from the connection.
    pub fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<BytesMut>, FrameTooLarge> {
        if self.buffer.len() < 2 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([self.buffer[0], self.buffer[1]]));
        if len > MAX_FRAME {
            return Err(FrameTooLarge(len));
        }
        if self.buffer.len() < 2 + len {
            return Ok(None);
        }
        self.buffer.advance(2);
        Ok(Some(self.buffer.split_to(len)))
    }
}

/// Prefixes a packet with its length. Packets longer than a u16 cannot be framed.
pub fn encode(packet: &[u8]) -> Option<BytesMut> {
    let len = u16::try_from(packet.len()).ok()?;
    let mut out = BytesMut::with_capacity(packet.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_frames_split_anywhere() {
        let frames: Vec<Vec<u8>> = vec![vec![1; 20], vec![], vec![7; 1200], vec![3; 1]];
        let mut stream = Vec::new();
        for frame in &frames {
            stream.extend_from_slice(&encode(frame).unwrap());
        }
        for chunk in [1, 2, 3, 7, 100, stream.len()] {
            let mut decoder = FrameDecoder::default();
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                decoder.push(piece);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    out.push(frame.to_vec());
                }
            }
            assert_eq!(out, frames, "chunk size {chunk}");
        }
    }

    #[test]
    fn refuses_oversized_frames() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&[0xFF, 0xFF, 1, 2]);
        assert_eq!(decoder.next_frame(), Err(FrameTooLarge(65535)));
        assert!(encode(&vec![0u8; 70_000]).is_none());
    }
}
