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

/// Ranks the layers of a track given their rids in the order the publisher offered them:
/// conventional names by convention, the rest in that order after them. When no name
/// follows a convention (`r0`, `r1`, `r2` of other SFUs' clients), the order alone ranks
/// them, lowest first, as encodings are conventionally listed: so that asking for the
/// high quality gets the top layer, not the lowest.
pub fn rank_layers(rids: &[&str]) -> Vec<u8> {
    if rids.iter().all(|rid| rid_rank(rid).is_none()) {
        return (0..rids.len())
            .map(|i| u8::try_from(i).unwrap_or(u8::MAX))
            .collect();
    }
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
        assert_eq!(rank_layers(&["q", "x", "f"]), vec![0, 3, 2]);
        assert_eq!(rank_layers(&["r0", "r1", "r2"]), vec![0, 1, 2]);
        assert_eq!(rank_layers(&[]), Vec::<u8>::new());
    }
}
