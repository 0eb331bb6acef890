//! The control-plane interface of the shard core: commands, and the async handle the admin API and signaling sessions use to reach the media
//! thread.

use crate::signal::protocol::{ClientMessage, ErrorCode, ServerMessage};
use tokio::sync::{mpsc, oneshot};
pub use tutti_shard_api::admin::{
    AdminError, MAX_EMPTY_TIMEOUT_SECS, MediaPolicy, PARTICIPANT_BOUNDS, PipelineInfo,
    PipelineSpec, ShardLoad, SubscriberReception,
};

/// Why a join failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinError {
    /// The stable code.
    pub code: ErrorCode,
    /// The explanation.
    pub message: String,
}

impl JoinError {
    /// A join error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A join request: the validated fields of a `join` message.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Room name.
    pub room: String,
    /// Participant id.
    pub participant: String,
    /// Display name.
    pub name: String,
    /// Publishing permission.
    pub publish: bool,
    /// Subscribing permission.
    pub subscribe: bool,
    /// A child shard relaying the room (no seat, never announced).
    pub relay: bool,
    /// A relay's media pipe: its end (only with `relay`).
    pub pipe: Option<crate::signal::protocol::PipeEnd>,
    /// A relay that records the room (only with `relay`).
    pub recorder: bool,
    /// The client offers its subscriber connection (not with `relay`): the shard answers
    /// and fills the sections offered with the room's tracks.
    pub offer_subscriber: bool,
}

/// Which layers (by rid: `q`, `h`, `f`) of each relayed track, by the parent's track id,
/// nobody at this edge needs, its viewers and child edges included: the relay client
/// turns those links off, so the parent stops sending them and its publisher may stop
/// encoding them (dynacast across a cascade). A track missing from the map has nothing
/// turned off, and neither has a layer the edge does not know yet. A watch channel holds
/// only the latest state, so the core never blocks on it and a slow relay client never
/// misses the newest demand.
pub type RelayDemand = tokio::sync::watch::Sender<TurnedOffLayers>;

/// The rids of each relayed track (by the parent's track id) turned off; see
/// [`RelayDemand`].
pub type TurnedOffLayers = std::collections::BTreeMap<String, Vec<String>>;

/// The relay client's end of a [`RelayDemand`].
pub type TurnedOff = tokio::sync::watch::Receiver<TurnedOffLayers>;

/// A relayed track as the relay client announces it.
#[derive(Debug, Clone)]
pub struct RelayedTrack {
    /// The pipeline on this shard.
    pub room: String,
    /// The publishing participant at the parent.
    pub participant: String,
    /// Its display name.
    pub name: String,
    /// The track's id at the parent.
    pub track: String,
    /// Audio or video.
    pub kind: crate::signal::protocol::TrackKind,
    /// The codec the parent sends.
    pub codec: rtc::rtp_transceiver::rtp_sender::RTCRtpCodec,
    /// The SSRC the parent sends it with (one per relayed layer).
    pub ssrc: u32,
    /// Which simulcast layer this copy is (0 lowest), and how many are relayed.
    pub layer: (u8, u8),
}

/// An edge's end of a relay pipe, in the core.
pub type PipeId = u64;

/// Where the packets of a relayed layer go in the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayHandle {
    /// The published track.
    pub track: super::ids::TrackKey,
    /// The layer index.
    pub layer: usize,
}

/// The id of a joined session inside the core.
pub use super::ids::SessionId;

/// A request to the media thread.
pub enum Command {
    /// Hangs the media thread for good (the `fault-injection` feature: tests of the
    /// liveness probe).
    #[cfg(feature = "fault-injection")]
    StallForever,
    /// Join a room; events for the session go to `events`.
    Join {
        /// The request.
        request: JoinRequest,
        /// Where the core sends this session's messages.
        events: mpsc::Sender<ServerMessage>,
        /// The outcome.
        reply: oneshot::Sender<Result<SessionId, JoinError>>,
    },
    /// A message of a joined session (anything but `join`, `ping`).
    Signal {
        /// The session.
        session: SessionId,
        /// The message.
        message: ClientMessage,
    },
    /// The session ended.
    Leave {
        /// The session.
        session: SessionId,
    },
    /// Create a pipeline, or update the spec of an existing one.
    PutPipeline {
        /// Room name.
        name: String,
        /// Spec.
        spec: PipelineSpec,
        /// `true` when created, `false` when updated.
        reply: oneshot::Sender<Result<(bool, PipelineInfo), AdminError>>,
    },
    /// List pipelines.
    ListPipelines {
        /// The list.
        reply: oneshot::Sender<Vec<PipelineInfo>>,
    },
    /// How each subscriber of a pipeline receives.
    Subscribers {
        /// Room name.
        room: String,
        /// The list; `None` for no such pipeline.
        reply: oneshot::Sender<Option<Vec<SubscriberReception>>>,
    },
    /// Release a pipeline, ending its sessions.
    ReleasePipeline {
        /// Room name.
        name: String,
        /// Done.
        reply: oneshot::Sender<Result<(), AdminError>>,
    },
    /// Report load.
    Load {
        /// The report.
        reply: oneshot::Sender<ShardLoad>,
    },
    /// Start draining: refuse new joins and pipelines; existing sessions continue.
    Drain {
        /// Acknowledged.
        reply: oneshot::Sender<ShardLoad>,
    },
    /// Tell every session to leave and stop the media thread.
    Shutdown,
    /// A relay client starts feeding a pipeline from its parent shard.
    RelayAttach {
        /// The pipeline.
        room: String,
        /// Where the core keeps which layers of each relayed track the edge needs.
        demand: RelayDemand,
        /// Refused when the pipeline does not exist.
        reply: oneshot::Sender<Result<(), AdminError>>,
    },
    /// A publisher at the parent, present or gone.
    RelayParticipant {
        /// The pipeline.
        room: String,
        /// Its participant id.
        participant: String,
        /// Its display name.
        name: String,
        /// Present (true) or gone (false).
        present: bool,
    },
    /// The parent's room started or stopped being recorded.
    RelayRecording {
        /// The pipeline.
        room: String,
        /// Whether a recorder is in it now.
        active: bool,
    },
    /// A publisher at the parent started or stopped sharing its screen.
    RelayScreenShare {
        /// The pipeline.
        room: String,
        /// Its participant id.
        participant: String,
        /// Whether it shares now.
        active: bool,
    },
    /// A relayed track (or one more layer of it) opened.
    RelayTrack {
        /// The track.
        track: RelayedTrack,
        /// Where to send its packets.
        reply: oneshot::Sender<Option<RelayHandle>>,
    },
    /// An edge opens its end of a relay pipe, given the parent's.
    PipeOpen {
        /// The pipeline relayed.
        room: String,
        /// The parent's end.
        parent: crate::signal::protocol::PipeEnd,
        /// This end's master key and salt (base64), which its RTCP is protected with.
        own_key: String,
        /// This end's RTCP SSRC.
        own_ssrc: u32,
        /// The pipe, or why not.
        reply: oneshot::Sender<Result<PipeId, String>>,
    },
    /// A track the parent announced on a pipe.
    PipeTrack {
        /// The pipe.
        pipe: PipeId,
        /// The track.
        track: RelayedTrack,
        /// Whether it was taken.
        reply: oneshot::Sender<bool>,
    },
    /// A relayed packet.
    RelayRtp {
        /// Where it goes.
        handle: RelayHandle,
        /// The packet.
        packet: rtc::rtp::Packet,
    },
    /// A relayed track ended at the parent.
    RelayTrackEnded {
        /// The pipeline.
        room: String,
        /// The track's id at the parent.
        track: String,
    },
    /// The relay client stopped: every relayed participant and track goes.
    RelayDetach {
        /// The pipeline.
        room: String,
    },
}

/// The async side's handle on the core.
#[derive(Clone)]
pub struct CoreHandle {
    tx: mpsc::Sender<Command>,
}

impl CoreHandle {
    /// Wraps the command channel of a running core.
    pub fn new(tx: mpsc::Sender<Command>) -> Self {
        Self { tx }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.ok()?;
        rx.await.ok()
    }

    /// Joins a room.
    pub async fn join(
        &self,
        request: JoinRequest,
        events: mpsc::Sender<ServerMessage>,
    ) -> Result<SessionId, JoinError> {
        self.ask(|reply| Command::Join {
            request,
            events,
            reply,
        })
        .await
        .unwrap_or_else(|| {
            Err(JoinError::new(
                ErrorCode::Internal,
                "the shard is shutting down",
            ))
        })
    }

    /// Delivers a session's message.
    pub async fn signal(&self, session: SessionId, message: ClientMessage) -> bool {
        self.tx
            .send(Command::Signal { session, message })
            .await
            .is_ok()
    }

    /// Ends a session.
    pub async fn leave(&self, session: SessionId) {
        let _ = self.tx.send(Command::Leave { session }).await;
    }

    /// Creates or updates a pipeline.
    pub async fn put_pipeline(
        &self,
        name: String,
        spec: PipelineSpec,
    ) -> Result<(bool, PipelineInfo), AdminError> {
        self.ask(|reply| Command::PutPipeline { name, spec, reply })
            .await
            .unwrap_or(Err(AdminError::Unavailable))
    }

    /// Lists pipelines.
    pub async fn list_pipelines(&self) -> Result<Vec<PipelineInfo>, AdminError> {
        self.ask(|reply| Command::ListPipelines { reply })
            .await
            .ok_or(AdminError::Unavailable)
    }

    /// How each subscriber of pipeline `room` receives.
    pub async fn subscribers(&self, room: String) -> Result<Vec<SubscriberReception>, AdminError> {
        self.ask(|reply| Command::Subscribers {
            room: room.clone(),
            reply,
        })
        .await
        .ok_or(AdminError::Unavailable)?
        .ok_or(AdminError::NotFound(room))
    }

    /// Releases a pipeline.
    pub async fn release_pipeline(&self, name: String) -> Result<(), AdminError> {
        self.ask(|reply| Command::ReleasePipeline { name, reply })
            .await
            .unwrap_or(Err(AdminError::Unavailable))
    }

    /// Reports load.
    pub async fn load(&self) -> Result<ShardLoad, AdminError> {
        self.ask(|reply| Command::Load { reply })
            .await
            .ok_or(AdminError::Unavailable)
    }

    /// Starts draining.
    pub async fn drain(&self) -> Result<ShardLoad, AdminError> {
        self.ask(|reply| Command::Drain { reply })
            .await
            .ok_or(AdminError::Unavailable)
    }

    /// Stops the media thread after telling sessions to leave.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown).await;
    }

    /// Sends a command without waiting for room in the queue; whether it was queued.
    pub fn try_send(&self, command: Command) -> bool {
        self.tx.try_send(command).is_ok()
    }

    /// Sends a command, waiting for room in the queue; whether it was queued.
    pub async fn send(&self, command: Command) -> bool {
        self.tx.send(command).await.is_ok()
    }

    /// Registers a relay feed for a pipeline; `demand` then says which layers of each
    /// relayed track the edge needs.
    pub async fn relay_attach(&self, room: String, demand: RelayDemand) -> Result<(), AdminError> {
        self.ask(|reply| Command::RelayAttach {
            room,
            demand,
            reply,
        })
        .await
        .unwrap_or(Err(AdminError::Unavailable))
    }

    /// Opens this edge's end of a relay pipe.
    pub async fn pipe_open(
        &self,
        room: String,
        parent: crate::signal::protocol::PipeEnd,
        own_key: String,
        own_ssrc: u32,
    ) -> Result<PipeId, String> {
        self.ask(|reply| Command::PipeOpen {
            room,
            parent,
            own_key,
            own_ssrc,
            reply,
        })
        .await
        .unwrap_or_else(|| Err("the media thread is gone".into()))
    }

    /// Announces a track arriving on a pipe; whether it was taken.
    pub async fn pipe_track(&self, pipe: PipeId, track: RelayedTrack) -> bool {
        self.ask(|reply| Command::PipeTrack { pipe, track, reply })
            .await
            .unwrap_or(false)
    }

    /// Announces a relayed track (or layer); where to send its packets.
    pub async fn relay_track(&self, track: RelayedTrack) -> Option<RelayHandle> {
        self.ask(|reply| Command::RelayTrack { track, reply })
            .await
            .flatten()
    }
}
