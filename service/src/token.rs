//! Random tokens: ICE credentials, ids, generated secrets.

use rand::RngExt;
use rand::distr::Alphanumeric;

/// A random alphanumeric token (ICE credentials, track ids, generated secrets).
pub fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_asked_length_and_differ() {
        let (a, b) = (random_token(22), random_token(22));
        assert_eq!(a.len(), 22);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
