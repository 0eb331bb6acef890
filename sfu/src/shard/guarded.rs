//! Keeping a panic inside the WebRTC stack to the one connection it happened in.
//!
//! Everything a client sends ends up in `rtc`'s parsers and state machines; a panic there
//! must cost that participant its session, not the shard its media thread. Only calls into
//! one connection are caught, and only with closures that cannot reach the core's state
//! (`UnwindSafe`: no `&mut` borrows of anything but the connection), so an unwinding
//! panic can leave nothing half-updated but the connection itself, which is then never
//! touched again: its session is ended on the normal path, and it is dropped, not closed.
//! A panic in the core's own code is not caught: the media thread ends and the liveness
//! probe reports it, instead of the shard running on with broken maps.

use rtc::peer_connection::RTCPeerConnection;
use std::panic::{AssertUnwindSafe, UnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A peer connection the core stops using once it panicked.
pub(crate) struct GuardedPc {
    pc: Option<RTCPeerConnection>,
    /// Never had a connection (a relay pipe): calls find none, and it is not poisoned.
    detached: bool,
    /// Raised for the whole core when any connection panics, so that it looks for the
    /// poisoned one only then.
    alarm: Arc<AtomicBool>,
    #[cfg(any(test, feature = "sim"))]
    panic_next: bool,
}

impl GuardedPc {
    /// Guards `pc`; a panic in it raises `alarm`.
    pub(crate) fn new(pc: RTCPeerConnection, alarm: Arc<AtomicBool>) -> Self {
        Self {
            pc: Some(pc),
            detached: false,
            alarm,
            #[cfg(any(test, feature = "sim"))]
            panic_next: false,
        }
    }

    /// No connection at all: a relay pipe, whose SRTP the shard does itself.
    pub(crate) fn detached(alarm: Arc<AtomicBool>) -> Self {
        Self {
            pc: None,
            detached: true,
            alarm,
            #[cfg(any(test, feature = "sim"))]
            panic_next: false,
        }
    }

    /// Runs `f` on the connection. `None` when the connection panicked, now or before, or
    /// when there is none.
    pub(crate) fn with<R>(
        &mut self,
        f: impl FnOnce(&mut RTCPeerConnection) -> R + UnwindSafe,
    ) -> Option<R> {
        #[cfg(any(test, feature = "sim"))]
        let inject = std::mem::take(&mut self.panic_next);
        let pc = self.pc.as_mut()?;
        // `f` is unwind-safe (it borrows nothing mutably); the connection is the one
        // thing the call may leave broken, and if it unwinds the connection is discarded
        // below and never used again.
        let outcome = catch_unwind(AssertUnwindSafe(move || {
            #[cfg(any(test, feature = "sim"))]
            if inject {
                panic!("a panic injected into a peer connection");
            }
            f(pc)
        }));
        match outcome {
            Ok(value) => Some(value),
            Err(_) => {
                if let Some(poisoned) = self.pc.take() {
                    // Its destructor runs on state the panic may have broken.
                    let _ = catch_unwind(AssertUnwindSafe(move || drop(poisoned)));
                }
                self.alarm.store(true, Ordering::Relaxed);
                None
            }
        }
    }

    /// Whether the connection panicked and is gone.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.pc.is_none() && !self.detached
    }

    /// Makes the next call into the connection panic (tests of this containment).
    #[cfg(any(test, feature = "sim"))]
    pub(crate) fn panic_on_next_call(&mut self) {
        self.panic_next = true;
    }
}

/// A value moved into a guarded call (a packet to send): if the call unwinds, it goes
/// down with the connection, and nothing else ever sees it.
pub(crate) struct MovedIn<T>(T);

impl<T> UnwindSafe for MovedIn<T> {}

impl<T> MovedIn<T> {
    /// Wraps `value`.
    pub(crate) fn new(value: T) -> Self {
        Self(value)
    }

    /// The value, inside the call.
    pub(crate) fn take(self) -> T {
        self.0
    }
}
