//! What `status` shows of a socket: where its frontend stands and the counters.
//!
//! The counters are atomics, written by a socket's threads and read by the status file's
//! writer; [`CounterValues`] is their copy as it is written to the status file and read
//! back by `guestnet status`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Where one socket's frontend stands, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No frontend connected (a client keeps trying to connect).
    Listening,
    /// A frontend is connected; no queue runs yet.
    Connected,
    /// At least one queue runs.
    Running,
    /// Quarantined until the frontend disconnects.
    Quarantined,
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// One socket's counters, shared by its threads.
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of [`Counters`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct CounterValues {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            /// The current values.
            pub fn values(&self) -> CounterValues {
                CounterValues {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters! {
    /// Frontends that connected.
    connections,
    /// Messages handled.
    messages,
    /// Malformed messages (bad version or size, short payload, wrong number of file
    /// descriptors); each closed its connection.
    bad_messages,
    /// Requests this backend does not implement.
    unknown_requests,
    /// Well-formed messages refused: out of order, out of range, features not offered,
    /// addresses outside guest memory, memory that cannot be mapped.
    rejected_messages,
    /// Frames taken from the guest into the network.
    tx_frames,
    /// Frames written into the guest's buffers.
    rx_frames,
    /// Transmit chains outside guest memory, looping, or past the table.
    tx_bad_chains,
    /// Transmit chains with a write-only descriptor.
    tx_wrong_direction,
    /// Transmit frames too short, or too long for the MTU without segmentation offload.
    tx_bad_length,
    /// Transmit frames asking for an offload that was not negotiated.
    tx_bad_header,
    /// Receive chains outside guest memory, looping, or past the table.
    rx_bad_chains,
    /// Receive chains with a read-only descriptor.
    rx_wrong_direction,
    /// Frames that did not fit the buffers the guest posts.
    rx_no_room,
    /// Frames held for a guest that had no buffers posted when its frontend disconnected.
    rx_lost_on_disconnect,
    /// Times the port was quarantined.
    quarantines,
}

impl Counters {
    /// Adds `n` to `counter`. Relaxed: a counter orders nothing, it is only read for
    /// `status`.
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One socket's status, as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketStatus {
    /// The port's process.
    pub pid: u32,
    /// The socket.
    pub socket: PathBuf,
    /// The peer's slot while a frontend is connected.
    pub slot: Option<u16>,
    /// Where the frontend stands.
    pub state: State,
    /// Features the frontend acked.
    pub acked_features: u64,
    /// Protocol features the frontend acked.
    pub acked_protocol_features: u64,
    /// Queue pairs offered.
    pub queue_pairs: u16,
    /// Counters since the port started.
    pub counters: CounterValues,
}
