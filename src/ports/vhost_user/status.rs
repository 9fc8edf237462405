//! What `status` shows of a socket: where its frontend stands and the counters.
//!
//! The counters are atomics, written by a socket's threads and read by the status file's
//! writer; [`CounterValues`] is their copy as it is written to the status file and read
//! back by `guestnet status`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::ports::counters::counters;

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

counters! {
    /// One socket's counters, shared by its threads.
    pub struct Counters;
    /// A copy of [`Counters`].
    pub struct CounterValues;
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
    /// addresses outside guest memory, memory that cannot be mapped. By why in
    /// `refused`.
    rejected_messages,
    /// Frames taken from the guest into the network.
    tx_frames,
    /// Frames written into the guest's buffers.
    rx_frames,
    /// Of `rx_frames`, those written straight from another guest of this port, past the
    /// network's ring: one copy from guest to guest where the ring takes three.
    rx_direct,
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
    /// Accesses to a ring that failed: switching the guest's kicks off or on, returning
    /// a chain (`add_used`), or signalling the guest. They fail only when the ring no
    /// longer lies in guest memory, as when the frontend replaced the memory table under a
    /// running ring.
    ring_access_failures,
    [
        /// `rejected_messages` by why: one counter per kind of refusal, named after the
        /// kind.
        refused: RefusalCounters / RefusalCounterValues,
    ]
}

counters! {
    /// Well-formed messages refused, by why; they add up to `rejected_messages`.
    pub struct RefusalCounters;
    /// A copy of [`RefusalCounters`].
    pub struct RefusalCounterValues;
    /// `SET_FEATURES` with a feature this port did not offer.
    features_not_offered,
    /// `SET_PROTOCOL_FEATURES` with a protocol feature this port did not offer.
    protocol_features_not_offered,
    /// A queue index past the queue pairs this port offers (`--queues`).
    queue_out_of_range,
    /// `SET_VRING_NUM` with a size that is not a power of two up to the largest ring.
    bad_ring_size,
    /// `SET_VRING_ADDR` before any guest memory was shared.
    ring_before_memory,
    /// `SET_VRING_ADDR` with a part of the ring outside guest memory.
    ring_outside_memory,
    /// `SET_VRING_ADDR` with a part of the ring not aligned as virtio requires.
    misaligned_ring,
    /// `SET_MEM_TABLE` with a region that cannot be mapped (empty, past its file's end,
    /// overlapping another, too many).
    bad_memory_table,
    /// `ADD_MEM_REG` with a region that cannot be mapped or added.
    bad_added_region,
    /// `ADD_MEM_REG` without its descriptor (the parser lets none through; counted
    /// should that change).
    region_without_descriptor,
    /// `REM_MEM_REG` before any guest memory was shared.
    remove_without_memory,
    /// `REM_MEM_REG` of a region that is not mapped.
    bad_removed_region,
    /// `SET_VRING_KICK` without a descriptor: a polled ring, which this port does not
    /// serve.
    polled_ring,
    /// `SET_VRING_KICK` with a descriptor that is not an eventfd.
    kick_not_an_eventfd,
    /// `SET_VRING_CALL` with a descriptor that is not an eventfd.
    call_not_an_eventfd,
    /// `RESET_OWNER` when a fresh queue could not be made (never, for this port's ring
    /// size; counted should that change).
    queue_not_reset,
}

impl Counters {
    /// Adds `n` to `counter`. Relaxed: a counter orders nothing, it is only read for
    /// `status`. Nothing is added most of the time (the engine reports its ring access
    /// failures and a round's frames every round), and a locked add of nothing would
    /// still cost its cycles.
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// One queue pair's frames, bumped by the engine once per round.
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Frames taken from the pair's transmit queue into the network.
    pub tx_frames: AtomicU64,
    /// Frames written into the pair's receive queue.
    pub rx_frames: AtomicU64,
}

impl QueueCounters {
    /// A copy, for the status file.
    pub fn values(&self) -> QueueFrames {
        QueueFrames {
            tx_frames: self.tx_frames.load(Ordering::Relaxed),
            rx_frames: self.rx_frames.load(Ordering::Relaxed),
        }
    }
}

/// A copy of one queue pair's [`QueueCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueFrames {
    /// Frames taken from the pair's transmit queue into the network.
    pub tx_frames: u64,
    /// Frames written into the pair's receive queue.
    pub rx_frames: u64,
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
    /// Frames by queue pair since the port started, pair 0 first: they add up to
    /// `tx_frames` and `rx_frames`. (Empty from a port that predates them.)
    #[serde(default)]
    pub queues: Vec<QueueFrames>,
}
