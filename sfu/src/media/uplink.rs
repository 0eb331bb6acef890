//! The loss of a stream the shard receives from a publisher, from its sequence numbers: how
//! the publisher's uplink is doing, for the connection quality the room is shown.
//!
//! Counted per window: the packets expected (from the first number of the window to the
//! highest seen) against those that arrived. A retransmission that repaired a loss counts
//! as arrived, as it reached the shard; a late packet of the previous window counts in the
//! next, which at worst hides a loss for a window.

/// Counts one stream's packets between two reads.
#[derive(Debug, Default, Clone)]
pub struct ReceivedLoss {
    /// The first number the window expects (the one after the last window's highest).
    base: Option<u16>,
    /// The highest number seen, in sequence order.
    highest: u16,
    /// Packets that arrived in this window.
    received: u32,
}

impl ReceivedLoss {
    /// A packet numbered `seq` arrived.
    pub fn on_packet(&mut self, seq: u16) {
        match self.base {
            None => {
                self.base = Some(seq);
                self.highest = seq;
            }
            Some(_) => {
                if seq.wrapping_sub(self.highest) < 0x8000 {
                    self.highest = seq;
                }
            }
        }
        self.received += 1;
    }

    /// Ends the window: the share of its packets lost, percent; `None` when none arrived.
    pub fn close_window(&mut self) -> Option<f64> {
        let base = self.base?;
        let received = self.received;
        if received == 0 {
            return None;
        }
        self.received = 0;
        let span = self.highest.wrapping_sub(base);
        if span >= 0x8000 {
            // Only late packets of earlier windows came: nothing new was expected.
            return Some(0.0);
        }
        let expected = u32::from(span) + 1;
        let lost = expected.saturating_sub(received);
        self.base = Some(self.highest.wrapping_add(1));
        Some(f64::from(lost) * 100.0 / f64::from(expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_gaps_of_each_window() {
        let mut loss = ReceivedLoss::default();
        assert_eq!(loss.close_window(), None, "nothing yet");
        // 100 packets, every tenth missing, across the sequence number's wrap.
        for i in 0..100u16 {
            if i % 10 != 5 {
                loss.on_packet(65_500u16.wrapping_add(i));
            }
        }
        assert_eq!(loss.close_window(), Some(10.0));
        // The next window starts after the last one's highest: its first packet missing
        // counts.
        for i in 101..200u16 {
            loss.on_packet(65_500u16.wrapping_add(i));
        }
        assert_eq!(loss.close_window(), Some(1.0));
        assert_eq!(loss.close_window(), None, "a silent window says nothing");
    }

    #[test]
    fn reordering_and_repairs_are_not_losses() {
        let mut loss = ReceivedLoss::default();
        for seq in [1u16, 3, 2, 4, 6, 5, 7, 8, 9, 10] {
            loss.on_packet(seq);
        }
        assert_eq!(loss.close_window(), Some(0.0));
        // A packet lost, then resent after the window's highest: repaired.
        for seq in [11u16, 13, 14, 12, 15] {
            loss.on_packet(seq);
        }
        assert_eq!(loss.close_window(), Some(0.0));
        // A late packet of the last window opens this one: no loss, and no jump back.
        for seq in [14u16, 16, 17, 18, 19, 20] {
            loss.on_packet(seq);
        }
        assert_eq!(loss.close_window(), Some(0.0));
        for seq in [21u16, 23] {
            loss.on_packet(seq);
        }
        assert_eq!(loss.close_window(), Some(100.0 / 3.0));
        // A window with only a late repair (22) and nothing new: no loss, and the next
        // window still starts after 23.
        loss.on_packet(22);
        assert_eq!(loss.close_window(), Some(0.0));
        loss.on_packet(25);
        assert_eq!(loss.close_window(), Some(50.0));
    }
}
