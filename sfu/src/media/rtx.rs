//! A subscriber's RTX stream (RFC 4588) beside one outgoing video stream: where the
//! shard's bandwidth probes pad, as browsers probe. Padding a bottleneck drops is then lost
//! on a stream no decoder plays and no loss statistic of the video counts; on the video's
//! own stream it showed as lost video in the receiver's reports and in its `getStats`.

/// The RTX stream paired with one outgoing video stream.
#[derive(Debug)]
pub struct RtxStream {
    /// Its SSRC, declared with the video's in the offer (`a=ssrc-group:FID`).
    pub ssrc: u32,
    /// The RTX payload type the subscriber's answer pairs with the video's (`apt=`):
    /// `None` until the answer came, or for good when the subscriber refused RTX.
    pub payload_type: Option<u8>,
    /// SRTP packet index of the next packet (RFC 3711 §3.3.1), whose low 16 bits are its
    /// sequence number: the stream only counts up, so its rollover needs no estimate.
    next_index: u64,
}

impl RtxStream {
    /// A stream with SSRC `ssrc` whose first packet has sequence number `first_seq`.
    pub fn new(ssrc: u32, first_seq: u16) -> Self {
        Self {
            ssrc,
            payload_type: None,
            next_index: u64::from(first_seq),
        }
    }

    /// The sequence number and SRTP packet index of the next packet, taken.
    pub fn next_packet(&mut self) -> (u16, u64) {
        let index = self.next_index;
        self.next_index += 1;
        (index as u16, index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_wrap_while_the_index_counts_on() {
        let mut rtx = RtxStream::new(7, 65_534);
        assert_eq!(rtx.next_packet(), (65_534, 65_534));
        assert_eq!(rtx.next_packet(), (65_535, 65_535));
        assert_eq!(
            rtx.next_packet(),
            (0, 65_536),
            "the rollover counter moved to 1"
        );
        assert_eq!(rtx.next_packet(), (1, 65_537));
        assert_eq!(rtx.payload_type, None, "nothing negotiated yet");
    }
}
