//! The benchmark's measuring instruments: which frames carry a send time, how latency
//! samples become percentiles, what each worker process reports, and how the reports add
//! up.
//!
//! `guestnet bench` (in [`crate::cli::bench`]) runs senders and a receiver as separate
//! processes, first over a guestnet network and then over the anchor, a unix datagram
//! socket. The pieces here do no I/O, so they are unit-tested on their own and shared by
//! both transports: the two are measured with the same frames and the same arithmetic.
//!
//! **Frames.** The frames are [test frames](crate::testframe), unchecked: each sender
//! stamps its number and the frame's sequence number into every frame as it sends it, and
//! checking each frame would measure the checksum instead of the network. Only every
//! [`SAMPLE_EVERY`]th frame of a sender carries its send time (0 means "not stamped"):
//! reading the clock for every frame would cost more than the frame itself at small
//! sizes. The receiver subtracts the send time from its own `CLOCK_MONOTONIC`, which all
//! processes of a host share, to get a one-way latency.
//!
//! **Accounting.** Every frame a sender offers is received, still queued when the
//! receiver stops, or dropped with a counted reason. A drop that a sender sees on behalf
//! of the receiver (its ring was full) is counted on both peers; a drop only the receiver
//! can see (a stale or invalid slot) is counted on the receiver alone. [`lost_frames`]
//! counts each lost frame once, so `received + queued + lost == sent` must hold.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::network::counters::{DropReason, PeerCounters};
use crate::testframe::Repr;

/// One frame in this many, per sender, carries its send time.
pub const SAMPLE_EVERY: u64 = 64;
/// Most latency samples a receiver keeps (8 bytes each); later ones are not recorded.
pub const MAX_SAMPLES: usize = 1 << 21;

/// Latency percentiles in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
}

/// Latency samples of one receiver.
#[derive(Debug, Default)]
pub struct LatencySamples {
    samples: Vec<u64>,
}

impl LatencySamples {
    /// Records one latency; ignored once [`MAX_SAMPLES`] are held.
    pub fn record(&mut self, nanoseconds: u64) {
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(nanoseconds);
        }
    }

    /// Samples recorded.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether none was recorded.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Nearest-rank percentiles (all zero without samples).
    pub fn percentiles(&mut self) -> Percentiles {
        self.samples.sort_unstable();
        let rank = |per_mille: usize| -> u64 {
            let n = self.samples.len();
            if n == 0 {
                return 0;
            }
            // Nearest rank: the smallest sample with at least p of them at or below it.
            let rank = (n * per_mille).div_ceil(1000).max(1);
            self.samples[rank - 1]
        };
        Percentiles {
            p50: rank(500),
            p99: rank(990),
            p999: rank(999),
        }
    }
}

/// Checks that each sender's frames arrive in order and without duplicates.
#[derive(Debug, Default)]
pub struct SequenceCheck {
    next: Vec<u64>,
    /// Frames whose sequence number was lower than one already seen from their sender.
    pub out_of_order: u64,
    /// Frames that are not test frames or name a sender beyond the ones expected.
    pub foreign: u64,
}

impl SequenceCheck {
    /// A check for senders `0..senders`.
    pub fn new(senders: u16) -> SequenceCheck {
        SequenceCheck {
            next: vec![0; senders as usize],
            ..SequenceCheck::default()
        }
    }

    /// Looks at one received frame's header (`None`: not a test frame).
    pub fn observe(&mut self, header: Option<Repr>) {
        let Some(header) = header else {
            self.foreign += 1;
            return;
        };
        let next = usize::try_from(header.sender)
            .ok()
            .and_then(|sender| self.next.get_mut(sender));
        let Some(next) = next else {
            self.foreign += 1;
            return;
        };
        // Gaps are fine (drops are counted elsewhere); going backwards is not.
        if header.sequence < *next {
            self.out_of_order += 1;
        } else {
            // Saturating: the number is whatever a peer wrote.
            *next = header.sequence.saturating_add(1);
        }
    }
}

/// What a sender worker reports when its time is up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderReport {
    /// Sender number.
    pub sender: u16,
    /// Frames offered to the transport.
    pub sent: u64,
    /// Frames the transport accepted (guestnet: routed; socket: `send` succeeded).
    pub accepted: u64,
    /// Drops the sender counted, by reason name (`ring_full`, …), non-zero only.
    pub drops: BTreeMap<String, u64>,
}

impl SenderReport {
    /// Fills in the drops from the sender's own peer counters.
    pub fn with_counters(mut self, counters: &PeerCounters) -> SenderReport {
        for reason in DropReason::ALL {
            let count = counters.tx_dropped(reason);
            if count != 0 {
                self.drops.insert(reason.name().to_string(), count);
            }
        }
        self
    }
}

/// What the receiver worker reports once the senders are done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverReport {
    /// Frames received from "go" until told to stop.
    pub received: u64,
    /// Frames received between "go" and the deadline: the measured ones.
    pub received_in_window: u64,
    /// Nanoseconds from "go" to the first moment the deadline was seen passed.
    pub window_ns: u64,
    /// Frames still waiting when the receiver was told to stop (drained and counted).
    pub queued: u64,
    /// Frames the transport's own counters say were received (guestnet: `rx_packets`).
    pub counted_received: u64,
    /// Receive drops by reason name, non-zero only.
    pub drops: BTreeMap<String, u64>,
    /// Times the receiver was woken from sleep.
    pub wakeups: u64,
    /// Frames that arrived behind a later one of the same sender.
    pub out_of_order: u64,
    /// Frames that were not test frames from an expected sender.
    pub foreign: u64,
    /// Latency samples taken.
    pub latency_samples: u64,
    /// Latency percentiles.
    pub latency_ns: Percentiles,
}

impl ReceiverReport {
    /// Fills in drops and wake-ups from the receiver's own peer counters.
    pub fn with_counters(mut self, counters: &PeerCounters) -> ReceiverReport {
        for reason in DropReason::ALL {
            let count = counters.rx_dropped(reason);
            if count != 0 {
                self.drops.insert(reason.name().to_string(), count);
            }
        }
        self.wakeups = counters.wakeups;
        self.counted_received = counters.rx_packets;
        self
    }
}

/// Whether a receive drop of this reason is seen by the receiver alone. The others are
/// counted by the sender that met them too, on both peers, and must not count twice.
/// `abandoned` is counted by both when the writer is alive but was believed dead; a
/// writer that really died reports nothing, and then the bench fails anyway.
pub fn seen_by_receiver_only(reason: DropReason) -> bool {
    matches!(
        reason,
        DropReason::Stale | DropReason::Invalid | DropReason::Corrupt
    )
}

/// Frames lost, each counted once: every sender drop, plus the receiver's own.
pub fn lost_frames(senders: &[SenderReport], receiver: &ReceiverReport) -> u64 {
    let sent_side: u64 = senders.iter().flat_map(|s| s.drops.values()).sum();
    let receiver_side: u64 = DropReason::ALL
        .into_iter()
        .filter(|&r| seen_by_receiver_only(r))
        .filter_map(|r| receiver.drops.get(r.name()))
        .sum();
    sent_side + receiver_side
}

/// Where the drops of one run were counted, by reason, on both sides (a frame refused by
/// a full ring is counted by its sender and by the receiver; the run's total counts it once).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drops {
    /// Sender drops by reason, summed over the senders.
    pub tx: BTreeMap<String, u64>,
    /// Receiver drops by reason (those a sender saw are counted in `tx` too).
    pub rx: BTreeMap<String, u64>,
}

impl Drops {
    /// Sums the workers' drops.
    pub fn from_reports(senders: &[SenderReport], receiver: &ReceiverReport) -> Drops {
        let mut tx = BTreeMap::new();
        for (reason, count) in senders.iter().flat_map(|s| s.drops.iter()) {
            *tx.entry(reason.clone()).or_insert(0) += count;
        }
        Drops {
            tx,
            rx: receiver.drops.clone(),
        }
    }
}

/// Frame counts of one run, for checking that they add up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameCounts {
    /// Offered by the senders.
    pub sent: u64,
    /// Received by the receiver (in the window and after).
    pub received: u64,
    /// Found still queued at the end.
    pub queued: u64,
    /// Lost, each once.
    pub lost: u64,
}

/// One transport's measured figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Million frames per second received in the window.
    pub mpps: f64,
    /// Gigabits per second of frame bytes received in the window.
    pub gbps: f64,
}

impl Throughput {
    /// Figures for `frames` frames of `frame_size` bytes received over `window_ns`.
    pub fn of(frames: u64, frame_size: usize, window_ns: u64) -> Throughput {
        if window_ns == 0 {
            return Throughput::default();
        }
        let seconds = window_ns as f64 / 1e9;
        Throughput {
            mpps: frames as f64 / seconds / 1e6,
            gbps: frames as f64 * frame_size as f64 * 8.0 / seconds / 1e9,
        }
    }
}

/// The anchor's figures in the result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnchorResult {
    /// What the anchor is.
    pub name: String,
    /// Million frames per second.
    pub mpps: f64,
    /// Gigabits per second.
    pub gbps: f64,
    /// Its latency percentiles, measured the same way.
    pub latency_ns: Percentiles,
    /// Its frame counts.
    pub frames: FrameCounts,
}

/// Everything `guestnet bench --json` prints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    /// Bytes per frame.
    pub frame_size: usize,
    /// Sender processes.
    pub senders: u16,
    /// Seconds each measurement lasted.
    pub seconds: f64,
    /// guestnet's million frames per second.
    pub mpps: f64,
    /// guestnet's gigabits per second.
    pub gbps: f64,
    /// Frames guestnet lost, each counted once.
    pub drops: u64,
    /// Where those drops were counted, by reason.
    pub drops_by_reason: Drops,
    /// Receiver wake-ups per frame received.
    pub wakeups_per_frame: f64,
    /// guestnet's one-way latency percentiles.
    pub latency_ns: Percentiles,
    /// guestnet's frame counts.
    pub frames: FrameCounts,
    /// Frames received out of order (must be 0).
    pub out_of_order: u64,
    /// The anchor measured in the same run.
    pub anchor: AnchorResult,
    /// guestnet's Mpps over the anchor's.
    pub ratio: f64,
    /// The second anchor, DPDK memif, measured in the same run: absent when it was not
    /// (`--no-memif`, DPDK missing or failing; `memif_skipped` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memif: Option<MemifResult>,
    /// guestnet's Mpps over memif's, when memif was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_memif: Option<f64>,
    /// Why memif was not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memif_skipped: Option<String>,
}

/// The memif anchor's figures in the result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemifResult {
    /// What the anchor is.
    pub name: String,
    /// Million frames per second the receiver counted.
    pub mpps: f64,
    /// Gigabits per second of frame bytes.
    pub gbps: f64,
    /// Frames the receiver counted in the window.
    pub received: u64,
    /// The window's length, in seconds.
    pub window_s: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples = LatencySamples::default();
        assert_eq!(samples.percentiles(), Percentiles::default());
        for ns in (1..=1000).rev() {
            samples.record(ns);
        }
        assert_eq!(
            samples.percentiles(),
            Percentiles {
                p50: 500,
                p99: 990,
                p999: 999
            }
        );
        let mut one = LatencySamples::default();
        one.record(7);
        assert_eq!(one.percentiles().p999, 7);
    }

    #[test]
    fn sequence_check_counts_reordering_but_not_gaps() {
        let mut check = SequenceCheck::new(2);
        let at = |sender, sequence| {
            Some(Repr {
                sender,
                sequence,
                sent_ns: 0,
                len: crate::testframe::MIN_LEN,
            })
        };
        for s in [
            at(0, 0),
            at(1, 0),
            at(0, 5),
            at(0, 3),
            at(0, 5),
            at(5, 0),
            None,
        ] {
            check.observe(s);
        }
        assert_eq!((check.out_of_order, check.foreign), (2, 2));
    }

    #[test]
    fn mirrored_drops_count_once() {
        let mut sender = SenderReport::default();
        sender.drops.insert("ring_full".into(), 10);
        let mut receiver = ReceiverReport::default();
        receiver.drops.insert("ring_full".into(), 10);
        receiver.drops.insert("stale".into(), 2);
        assert_eq!(
            lost_frames(&[sender.clone(), sender.clone()], &receiver),
            22
        );
        let drops = Drops::from_reports(&[sender.clone(), sender], &receiver);
        assert_eq!(drops.tx["ring_full"], 20);
        assert_eq!(drops.rx["stale"], 2);
    }

    #[test]
    fn throughput_counts_frame_bytes() {
        let t = Throughput::of(2_000_000, 64, 1_000_000_000);
        assert!((t.mpps - 2.0).abs() < 1e-9);
        assert!((t.gbps - 1.024).abs() < 1e-9);
        assert_eq!(Throughput::of(5, 64, 0), Throughput::default());
    }
}
