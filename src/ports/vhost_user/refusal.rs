//! Why a well-formed request was refused.
//!
//! A refused request changes nothing; the frontend gets a failure if it asked for a reply,
//! the log says why (the [`Refusal`]'s text, with a hint where the cause is usually a
//! setting), and `status` counts it by kind. A malformed message is not a refusal: it
//! closes the connection and is counted as `bad_messages`.

use std::sync::atomic::AtomicU64;

use super::datapath::MAX_QUEUE_SIZE;
use super::memory::MemoryError;
use super::status::Counters;

/// Why a request was refused. Each kind has its counter in
/// [`RefusalCounters`](super::status::RefusalCounters), named after it, except
/// [`Refusal::NotImplemented`], counted as `unknown_requests`.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// `SET_FEATURES` with features this port did not offer (those bits).
    #[error("features {0:#x} were not offered")]
    FeaturesNotOffered(u64),
    /// `SET_PROTOCOL_FEATURES` with protocol features this port did not offer (those
    /// bits).
    #[error("protocol features {0:#x} were not offered")]
    ProtocolFeaturesNotOffered(u64),
    /// A queue index past the queue pairs this port offers.
    #[error(
        "queue {index} out of range: this port offers {queue_pairs} queue pairs; start it \
         with a larger --queues or give the frontend fewer queues"
    )]
    QueueOutOfRange {
        /// The queue asked for.
        index: u32,
        /// Queue pairs offered.
        queue_pairs: u16,
    },
    /// `SET_VRING_NUM` with a size that is not a power of two up to [`MAX_QUEUE_SIZE`].
    #[error("ring size {0} is not a power of two up to {MAX_QUEUE_SIZE}")]
    BadRingSize(u32),
    /// `SET_VRING_ADDR` before any guest memory was shared.
    #[error(
        "ring addresses before any guest memory was shared: is the VM's memory shared? \
         (QEMU: -object memory-backend-memfd,id=mem,size=…,share=on -machine \
         memory-backend=mem)"
    )]
    RingBeforeMemory,
    /// `SET_VRING_ADDR` with a part of the ring outside guest memory.
    #[error("ring address {address:#x} (+{len}) is outside guest memory")]
    RingOutsideMemory {
        /// The part's frontend address.
        address: u64,
        /// The part's length for the ring's size.
        len: u64,
    },
    /// `SET_VRING_ADDR` with a part of the ring not aligned as virtio requires.
    #[error("ring addresses: {0}")]
    MisalignedRing(#[source] virtio_queue::Error),
    /// `SET_MEM_TABLE` that cannot be mapped.
    #[error("memory table: {0}")]
    BadMemoryTable(#[source] MemoryError),
    /// `ADD_MEM_REG` with a region that cannot be mapped or added.
    #[error("add a memory region: {0}")]
    BadAddedRegion(#[source] MemoryError),
    /// `ADD_MEM_REG` without its descriptor.
    #[error("ADD_MEM_REG without a descriptor")]
    RegionWithoutDescriptor,
    /// `REM_MEM_REG` before any guest memory was shared.
    #[error("REM_MEM_REG without memory")]
    RemoveWithoutMemory,
    /// `REM_MEM_REG` of a region that cannot be removed.
    #[error("remove a memory region: {0}")]
    BadRemovedRegion(#[source] MemoryError),
    /// `SET_VRING_KICK` without a descriptor: the frontend would have the ring polled.
    #[error("polled rings (no kick descriptor) are not supported")]
    PolledRing,
    /// `SET_VRING_KICK` with a descriptor that is not an eventfd.
    #[error("the kick descriptor is not an eventfd")]
    KickNotAnEventfd,
    /// `SET_VRING_CALL` with a descriptor that is not an eventfd.
    #[error("the call descriptor is not an eventfd")]
    CallNotAnEventfd,
    /// `RESET_OWNER` when a fresh queue could not be made.
    #[error("reset a queue: {0}")]
    QueueNotReset(#[source] virtio_queue::Error),
    /// A request this backend does not implement (its code).
    #[error("request {0} is not implemented")]
    NotImplemented(u32),
}

impl Refusal {
    /// Counts the refusal: by kind, and as one of the `rejected_messages` (or, for a
    /// request not implemented, of the `unknown_requests`).
    pub fn count(&self, counters: &Counters) {
        let total = match self {
            Refusal::NotImplemented(_) => &counters.unknown_requests,
            _ => &counters.rejected_messages,
        };
        Counters::add(total, 1);
        if let Some(kind) = self.counter(counters) {
            Counters::add(kind, 1);
        }
    }

    /// This kind's own counter (none for a request not implemented: its total is its
    /// count).
    fn counter<'c>(&self, counters: &'c Counters) -> Option<&'c AtomicU64> {
        let c = &counters.refused;
        Some(match self {
            Refusal::FeaturesNotOffered(_) => &c.features_not_offered,
            Refusal::ProtocolFeaturesNotOffered(_) => &c.protocol_features_not_offered,
            Refusal::QueueOutOfRange { .. } => &c.queue_out_of_range,
            Refusal::BadRingSize(_) => &c.bad_ring_size,
            Refusal::RingBeforeMemory => &c.ring_before_memory,
            Refusal::RingOutsideMemory { .. } => &c.ring_outside_memory,
            Refusal::MisalignedRing(_) => &c.misaligned_ring,
            Refusal::BadMemoryTable(_) => &c.bad_memory_table,
            Refusal::BadAddedRegion(_) => &c.bad_added_region,
            Refusal::RegionWithoutDescriptor => &c.region_without_descriptor,
            Refusal::RemoveWithoutMemory => &c.remove_without_memory,
            Refusal::BadRemovedRegion(_) => &c.bad_removed_region,
            Refusal::PolledRing => &c.polled_ring,
            Refusal::KickNotAnEventfd => &c.kick_not_an_eventfd,
            Refusal::CallNotAnEventfd => &c.call_not_an_eventfd,
            Refusal::QueueNotReset(_) => &c.queue_not_reset,
            Refusal::NotImplemented(_) => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One refusal of every kind.
    fn every_kind() -> Vec<Refusal> {
        vec![
            Refusal::FeaturesNotOffered(1 << 63),
            Refusal::ProtocolFeaturesNotOffered(1 << 63),
            Refusal::QueueOutOfRange {
                index: 7,
                queue_pairs: 1,
            },
            Refusal::BadRingSize(3),
            Refusal::RingBeforeMemory,
            Refusal::RingOutsideMemory {
                address: 0x1000,
                len: 16,
            },
            Refusal::MisalignedRing(virtio_queue::Error::InvalidDescTableAlign),
            Refusal::BadMemoryTable(MemoryError::TooManyRegions),
            Refusal::BadAddedRegion(MemoryError::TooManyRegions),
            Refusal::RegionWithoutDescriptor,
            Refusal::RemoveWithoutMemory,
            Refusal::BadRemovedRegion(MemoryError::TooManyRegions),
            Refusal::PolledRing,
            Refusal::KickNotAnEventfd,
            Refusal::CallNotAnEventfd,
            Refusal::QueueNotReset(virtio_queue::Error::InvalidSize),
            Refusal::NotImplemented(0x4242),
        ]
    }

    #[test]
    fn every_kind_of_refusal_has_a_counter_of_its_own_and_they_add_up() {
        let counters = Counters::default();
        let refusals = every_kind();
        for refusal in &refusals {
            refusal.count(&counters);
        }
        let values = counters.values();
        let by_kind = values.refused.named();
        assert!(
            by_kind.iter().all(|&(_, n)| n == 1),
            "each kind counted once, in a counter of its own: {by_kind:?}"
        );
        assert_eq!(by_kind.len(), refusals.len() - 1, "a counter per kind");
        let sum: u64 = by_kind.iter().map(|&(_, n)| n).sum();
        assert_eq!(values.rejected_messages, sum);
        assert_eq!(values.unknown_requests, 1);
    }

    #[test]
    fn refusals_say_why_and_name_their_cause() {
        let why = Refusal::BadMemoryTable(MemoryError::TooManyRegions).to_string();
        assert!(why.starts_with("memory table: more than"), "{why}");
        let source =
            std::error::Error::source(&Refusal::BadMemoryTable(MemoryError::TooManyRegions));
        assert!(source.is_some(), "the memory error is the refusal's source");
        let why = Refusal::QueueOutOfRange {
            index: 7,
            queue_pairs: 1,
        }
        .to_string();
        assert!(
            why.contains("queue 7 out of range") && why.contains("--queues"),
            "{why}"
        );
    }
}
