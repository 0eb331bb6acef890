//! The core's ids: sessions, peer connections and published tracks, each its own type so
//! that one can never be looked up in another's map. They come from one counter, so an id
//! names one thing for the core's lifetime and logs stay unambiguous.

use std::fmt;

macro_rules! id {
    ($(#[$doc:meta])* $vis:vis $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis struct $name(u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id!(
    /// A joined session (one participant's signaling session on this shard).
    pub SessionId
);
id!(
    /// A peer connection.
    pub(crate) PeerKey
);
id!(
    /// A published track (a publisher's, or one relayed from a parent shard).
    pub TrackKey
);

/// Hands out ids, all from one counter.
#[derive(Debug)]
pub(crate) struct Ids {
    next: u64,
}

impl Default for Ids {
    fn default() -> Self {
        Self { next: 1 }
    }
}

impl Ids {
    fn next(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        id
    }

    /// A new session id.
    pub(crate) fn session(&mut self) -> SessionId {
        SessionId(self.next())
    }

    /// A new peer connection id.
    pub(crate) fn peer(&mut self) -> PeerKey {
        PeerKey(self.next())
    }

    /// A new track id.
    pub(crate) fn track(&mut self) -> TrackKey {
        TrackKey(self.next())
    }
}

#[cfg(test)]
impl SessionId {
    /// An id for tests that need one without a core.
    pub(crate) fn for_test(id: u64) -> Self {
        Self(id)
    }
}
