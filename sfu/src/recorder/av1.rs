//! AV1 RTP payloads (the AV1 RTP specification, section 4) back into what IVF holds: the
//! low-overhead bitstream format, every OBU with its size field. rtc's depacketizer panics
//! on some two-byte payloads and copies its whole fragment buffer on every packet, which
//! any publisher in a recorded room could use; this one reads each byte once and bounds
//! what it keeps.

/// Why a payload could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Av1Error {
    /// No aggregation header, a length past the end, or an OBU shorter than its header.
    #[error("malformed AV1 payload")]
    Malformed,
    /// An OBU longer than the frame may be.
    #[error("AV1 OBU too large")]
    TooLarge,
}

/// OBU types dropped from the stream (the AV1 RTP specification, section 5).
const OBU_TEMPORAL_DELIMITER: u8 = 2;
const OBU_TILE_LIST: u8 = 8;

/// The OBUs of one stream's packets, in order.
#[derive(Debug, Default)]
pub struct Av1Obus {
    /// The OBU being continued from the previous packet.
    fragment: Vec<u8>,
    /// The fragment's start was lost: its remaining pieces are dropped.
    lost_start: bool,
}

impl Av1Obus {
    /// Forgets a fragment (the frame it belonged to is dropped).
    pub fn reset(&mut self) {
        self.fragment.clear();
        self.lost_start = false;
    }

    /// Appends the OBUs `payload` completes to `out`, each with its size field; keeps a
    /// fragment that continues in the next packet (at most `limit` bytes). Returns the
    /// aggregation header's N bit: the packet starts a new coded video sequence.
    pub fn push(
        &mut self,
        payload: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<bool, Av1Error> {
        let (&header, mut rest) = payload.split_first().ok_or(Av1Error::Malformed)?;
        let continues_previous = header & 0x80 != 0;
        let continues_next = header & 0x40 != 0;
        let elements = (header >> 4) & 0x03;
        let new_sequence = header & 0x08 != 0;
        if !continues_previous {
            self.reset();
        } else if self.fragment.is_empty() {
            // Its start never arrived.
            self.lost_start = true;
        }
        let mut index = 0u8;
        while !rest.is_empty() {
            index = index.saturating_add(1);
            let element = if elements == 0 || index < elements {
                let (length, used) = leb128(rest).ok_or(Av1Error::Malformed)?;
                let body = rest.get(used..).ok_or(Av1Error::Malformed)?;
                let element = body.get(..length).ok_or(Av1Error::Malformed)?;
                rest = &body[length..];
                element
            } else {
                std::mem::take(&mut rest)
            };
            let first = index == 1;
            let last = rest.is_empty();
            if !(first && continues_previous) {
                self.reset();
            }
            if self.fragment.len() + element.len() > limit {
                self.reset();
                return Err(Av1Error::TooLarge);
            }
            self.fragment.extend_from_slice(element);
            if last && continues_next {
                break;
            }
            if !self.lost_start {
                write_obu(&self.fragment, out)?;
            }
            self.reset();
        }
        Ok(new_sequence)
    }
}

/// Writes one whole OBU with its size field (dropping the types IVF does not carry).
fn write_obu(obu: &[u8], out: &mut Vec<u8>) -> Result<(), Av1Error> {
    let Some(&header) = obu.first() else {
        return Ok(());
    };
    let kind = (header >> 3) & 0x0F;
    if kind == OBU_TEMPORAL_DELIMITER || kind == OBU_TILE_LIST {
        return Ok(());
    }
    if header & 0x02 != 0 {
        // It carries its size already.
        out.extend_from_slice(obu);
        return Ok(());
    }
    let header_len = if header & 0x04 != 0 { 2 } else { 1 };
    let body = obu.get(header_len..).ok_or(Av1Error::Malformed)?;
    out.push(header | 0x02);
    if header_len == 2 {
        out.push(obu[1]);
    }
    write_leb128(body.len(), out);
    out.extend_from_slice(body);
    Ok(())
}

/// A LEB128 number (at most eight bytes, below 2^32) and the bytes it took.
fn leb128(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value: u64 = 0;
    for (i, byte) in bytes.iter().take(8).enumerate() {
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return usize::try_from(value)
                .ok()
                .filter(|v| *v <= u32::MAX as usize)
                .map(|v| (v, i + 1));
        }
    }
    None
}

fn write_leb128(mut value: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1 << 20;
    /// A frame OBU (type 6) header without a size field.
    const FRAME: u8 = 6 << 3;
    /// A sequence header OBU (type 1).
    const SEQUENCE: u8 = 1 << 3;

    #[test]
    fn obus_get_their_size_fields_and_delimiters_go() {
        let mut obus = Av1Obus::default();
        let mut out = Vec::new();
        // N=1, W=0: a temporal delimiter, a sequence header, a frame, each with a length.
        let payload = [0x08, 1, 2 << 3, 3, SEQUENCE, 0xAA, 0xBB, 2, FRAME, 0xCC];
        assert_eq!(obus.push(&payload, &mut out, LIMIT), Ok(true));
        assert_eq!(out, vec![SEQUENCE | 2, 2, 0xAA, 0xBB, FRAME | 2, 1, 0xCC]);
    }

    #[test]
    fn an_obu_in_pieces_is_put_together_and_one_missing_its_start_is_dropped() {
        let mut obus = Av1Obus::default();
        let mut out = Vec::new();
        // W=1 (one element, no length), Y=1: continues.
        assert_eq!(obus.push(&[0x50, FRAME, 1, 2], &mut out, LIMIT), Ok(false));
        assert!(out.is_empty());
        // Z=1, W=1: the rest.
        obus.push(&[0x90, 3, 4], &mut out, LIMIT).unwrap();
        assert_eq!(out, vec![FRAME | 2, 4, 1, 2, 3, 4]);
        // A continuation whose start was lost is dropped, and what follows it is kept.
        let mut fresh = Av1Obus::default();
        let mut out = Vec::new();
        fresh
            .push(&[0xA0, 2, 9, 9, FRAME, 7], &mut out, LIMIT)
            .unwrap();
        assert_eq!(out, vec![FRAME | 2, 1, 7]);
    }

    #[test]
    fn malformed_and_oversized_payloads_are_refused_without_panicking() {
        let mut obus = Av1Obus::default();
        let mut out = Vec::new();
        for bad in [
            &[][..],
            &[0x10, 0x06][..],
            &[0x00, 5, 1][..],
            &[0x00, 0xFF, 0xFF][..],
        ] {
            let _ = obus.push(bad, &mut out, LIMIT);
        }
        assert_eq!(
            obus.push(&[0x00, 5, 1], &mut out, LIMIT),
            Err(Av1Error::Malformed)
        );
        // An extension header promised but absent.
        assert_eq!(
            obus.push(&[0x10, FRAME | 4], &mut out, LIMIT),
            Err(Av1Error::Malformed)
        );
        // Pieces growing past the limit: refused, and the fragment forgotten.
        let piece = [vec![0x50, FRAME], vec![0u8; 600]].concat();
        obus.push(&piece, &mut out, 1_000).unwrap();
        let more = [vec![0xD0], vec![0u8; 600]].concat();
        assert_eq!(obus.push(&more, &mut out, 1_000), Err(Av1Error::TooLarge));
        assert!(obus.fragment.is_empty());
    }

    #[test]
    fn leb128_round_trips_and_bounds() {
        for value in [0usize, 1, 127, 128, 300, 1 << 20] {
            let mut bytes = Vec::new();
            write_leb128(value, &mut bytes);
            assert_eq!(leb128(&bytes), Some((value, bytes.len())));
        }
        assert_eq!(leb128(&[0x80; 9]), None);
        assert_eq!(leb128(&[]), None);
    }
}
