//! What placing a room came to, whoever asked for it (a Room resource, a record).

/// The outcome of placing a room.
#[derive(Debug, Clone, PartialEq)]
pub enum RoomOutcome {
    /// On a shard, which answered.
    Placed {
        /// The shard.
        shard: String,
        /// Participants it reports.
        participants: u32,
        /// Whether this reconcile moved the room (a previous shard was gone).
        moved: bool,
    },
    /// The spec is invalid; nothing was done.
    Invalid(String),
    /// Another Room (in another namespace) already has this name.
    NameConflict(String),
    /// The password Secret or key is missing.
    SecretMissing(String),
    /// No shard can take it.
    NoShard(String),
    /// Placed by latency: waiting for the first participant's round trips.
    AwaitingParticipants,
    /// The shard it is on does not answer.
    ShardUnreachable {
        /// The shard.
        shard: String,
        /// What went wrong.
        message: String,
    },
}
