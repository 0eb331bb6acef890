//! Pure media logic of the shard: no sockets, no clocks, no peer connections.
//!
//! Everything here is driven by the shard with packets and instants and unit-tested on
//! its own: codec inspection, sequence and picture-ID rewriting, layer choice, retransmission,
//! keyframe throttling and speaker detection.

pub mod allocation;
pub mod codec;
pub mod dependency_descriptor;
pub mod downlink;
pub mod downtrack;
pub mod dynacast;
pub mod feedback;
pub mod keyframe;
pub mod loss;
pub mod outgoing;
pub mod picture_id;
pub mod probe;
pub mod quality;
pub mod rate;
pub mod receiver_feedback;
pub mod retransmit;
pub mod rtx;
pub mod send_history;
pub mod sender_report;
pub mod sequencer;
pub mod simulcast;
pub mod spatial;
pub mod speaker;
pub mod temporal;
pub mod uplink;
pub mod uplink_feedback;
pub mod vp9;
