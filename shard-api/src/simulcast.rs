//! Simulcast layer names: how the rids a publisher gives its encodings rank by quality,
//! shared by the shard (which forwards by rank) and the gateway (which maps a WHEP
//! player's layer choice to a quality).
//!
//! The names are the application's choice, so quality is ranked from the common
//! conventions (`q`/`h`/`f`, `low`/`mid`/`high`, `0`/`1`/`2`) and otherwise from the order
//! the publisher offered them.

/// The rank a rid conventionally denotes, if it follows a known convention.
pub fn rid_rank(rid: &str) -> Option<u8> {
    match rid.to_ascii_lowercase().as_str() {
        "q" | "l" | "low" | "0" | "quarter" => Some(0),
        "h" | "m" | "mid" | "medium" | "1" | "half" => Some(1),
        "f" | "high" | "hi" | "2" | "full" => Some(2),
        _ => None,
    }
}

/// Ranks the layers of a track given their rids in the order they were first seen:
/// conventional names by convention, the rest by arrival order after them.
pub fn rank_layers(rids: &[&str]) -> Vec<u8> {
    let mut next_unknown = 3u8;
    rids.iter()
        .map(|rid| {
            rid_rank(rid).unwrap_or_else(|| {
                let rank = next_unknown;
                next_unknown = next_unknown.saturating_add(1);
                rank
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_conventional_and_unknown_rids() {
        assert_eq!(rank_layers(&["f", "h", "q"]), vec![2, 1, 0]);
        assert_eq!(rank_layers(&["low", "MID", "high"]), vec![0, 1, 2]);
        assert_eq!(rank_layers(&["a", "b"]), vec![3, 4]);
    }
}
