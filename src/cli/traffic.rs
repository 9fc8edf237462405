//! `pktgen` and `sink`: a traffic generator and a receiver that verifies what arrives.
//!
//! Together they check the network's promises from outside, in separate processes, the
//! way real ports use it: `pktgen` sends numbered, checksummed [test frames](crate::testframe)
//! and reports what its peer counters say became of them; `sink` judges every frame it
//! receives (intact? in order? seen before?) and reports its own counters. A test (or a
//! person) then checks that the two sides add up: every frame a sender put on the network
//! was either received or counted as a drop with its reason.
//!
//! Both print one JSON object on stdout when they finish, so scripts can read them; `sink`
//! first prints `ready <slot> <mac>` as soon as it has joined, so whoever starts it knows
//! when frames sent to it will arrive.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::network::counters::{DropReason, PeerCounters};
use crate::network::{JoinOptions, Network, PortKind};
use crate::testframe::{self, Corruption, Verdict};
use crate::wire::{MacAddress, ethernet};

/// Frames a receiver takes from its ring per step.
const RECEIVE_BUDGET: usize = 256;
/// Longest sleep between two looks at the stop flag (a signal does not end a futex wait).
const STOP_CHECK: Duration = Duration::from_millis(100);
/// How often `pktgen --wait-for-peer` looks at the peer table.
const PEER_POLL: Duration = Duration::from_millis(10);
/// Corrupt frames described on stderr before the sink only counts them.
const CORRUPTION_REPORTS: u64 = 10;

/// Size of the frames `pktgen` sends: one size, or a range that sizes vary over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSize {
    /// Smallest frame, bytes.
    pub min: usize,
    /// Largest frame, bytes.
    pub max: usize,
}

impl FrameSize {
    /// Size of frame `sequence` of `sender`: spread over the range by a hash, so sizes mix
    /// within every batch and differ between senders, yet a rerun sends the same frames.
    pub fn for_frame(&self, sender: u32, sequence: u64) -> usize {
        let span = self.max.saturating_sub(self.min) as u64 + 1;
        let hash = (sequence ^ (u64::from(sender) << 40)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.min + ((hash >> 32) % span) as usize
    }
}

impl FromStr for FrameSize {
    type Err = String;

    /// Parses `BYTES` or `MIN-MAX`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let number = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("{s:?} is not a number of bytes"))
        };
        let (min, max) = match text.split_once('-') {
            Some((low, high)) => (number(low)?, number(high)?),
            None => (number(text)?, number(text)?),
        };
        if min > max {
            return Err(format!("empty size range {min}-{max}"));
        }
        if min < testframe::MIN_LEN {
            return Err(format!(
                "a test frame needs at least {} bytes",
                testframe::MIN_LEN
            ));
        }
        Ok(FrameSize { min, max })
    }
}

fn parse_destination(text: &str) -> Result<MacAddress, String> {
    if text.eq_ignore_ascii_case("broadcast") {
        return Ok(MacAddress::BROADCAST);
    }
    text.parse().map_err(|e| format!("{e}"))
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Arguments of `pktgen`.
#[derive(Debug, clap::Args)]
pub struct PktgenArgs {
    /// Network name.
    pub name: String,
    /// Destination MAC, or `broadcast`.
    #[arg(long, default_value = "broadcast", value_parser = parse_destination)]
    pub dst: MacAddress,
    /// Frames to send; 0 sends until SIGINT or SIGTERM.
    #[arg(long, default_value_t = 1000)]
    pub count: u64,
    /// Frame size in bytes (Ethernet header included), or MIN-MAX for mixed sizes.
    #[arg(long, default_value = "60")]
    pub size: FrameSize,
    /// Frames per batch (one wake-up of each receiver per batch).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub batch: u32,
    /// Sender identity written into every frame [default: the slot index].
    #[arg(long)]
    pub id: Option<u32>,
    /// MAC to publish [default: derived from the slot].
    #[arg(long)]
    pub mac: Option<MacAddress>,
    /// Frames per second; 0 sends as fast as the network takes them.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Before sending, wait until the destination is on the network: a peer publishing the
    /// unicast address, or `--receivers` peers with their link up for broadcast/multicast.
    #[arg(long)]
    pub wait_for_peer: bool,
    /// Receivers `--wait-for-peer` waits for when sending to a group.
    #[arg(long, default_value_t = 1)]
    pub receivers: usize,
    /// Longest wait of `--wait-for-peer`, in seconds.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub wait_timeout: Duration,
    /// Receive nothing: mark this port's link down, so copies sent to it are dropped and
    /// counted as `link_down` instead of filling its ring (for many broadcasting senders).
    #[arg(long)]
    pub no_receive: bool,
}

/// Arguments of `sink`.
#[derive(Debug, clap::Args)]
pub struct SinkArgs {
    /// Network name.
    pub name: String,
    /// Stop after this many frames; 0 for no limit.
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Stop when no frame arrived for this many seconds; 0 for no limit.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// MAC to publish [default: derived from the slot].
    #[arg(long)]
    pub mac: Option<MacAddress>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A flag that SIGINT and SIGTERM raise, so both commands end with a summary.
fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("install a signal handler")?;
    }
    Ok(stop)
}

/// Non-zero drop counts by reason name.
fn drops_by_reason(counts: &[u64]) -> BTreeMap<&'static str, u64> {
    DropReason::ALL
        .iter()
        .zip(counts)
        .filter(|(_, count)| **count != 0)
        .map(|(reason, count)| (reason.name(), *count))
        .collect()
}

/// What `pktgen` prints when it ends.
#[derive(Debug, Serialize)]
struct PktgenSummary {
    id: u32,
    slot: u16,
    mac: MacAddress,
    /// Frames handed to the network.
    sent: u64,
    /// Frames it accepted and routed (the others were refused and counted in `tx_drops`).
    accepted: u64,
    /// Copies put into receivers' rings.
    tx_deliveries: u64,
    /// Copies or frames dropped, by reason.
    tx_drops: BTreeMap<&'static str, u64>,
    /// Frames that arrived for the generator itself (discarded).
    received: u64,
}

/// Runs `pktgen`.
pub fn pktgen(dir: &Path, args: PktgenArgs) -> anyhow::Result<()> {
    let stop = stop_on_signals()?;
    let net = Network::open(dir, &args.name)?;
    let largest = ethernet::max_frame_len(net.geometry().mtu as usize, false);
    if args.size.max > largest {
        bail!(
            "--size {} is larger than the network's largest frame, {largest} bytes",
            args.size.max
        );
    }
    let mut peer = net.join(JoinOptions {
        kind: PortKind::Process,
        mac: args.mac,
        label: "pktgen".into(),
        ..JoinOptions::default()
    })?;
    if args.no_receive {
        peer.control().set_link_down(true)?;
    }
    if args.wait_for_peer {
        wait_for_destination(&net, peer.index(), &args, &stop)?;
    }
    let id = args.id.unwrap_or(u32::from(peer.index()));
    let src = peer.mac();
    // With a rate, a batch spans about a millisecond of the schedule, so pacing stays smooth.
    let batch = match args.rate {
        0 => u64::from(args.batch),
        rate => u64::from(args.batch).min((rate / 1000).max(1)),
    };
    let mut frames: Vec<Vec<u8>> = (0..batch)
        .map(|_| Vec::with_capacity(args.size.max))
        .collect();
    let started = Instant::now();
    let (mut sent, mut accepted, mut received) = (0u64, 0u64, 0u64);
    while !stop.load(Ordering::Relaxed) && (args.count == 0 || sent < args.count) {
        if args.rate != 0 && !pace(started, sent, args.rate, &stop) {
            break;
        }
        let n = match args.count {
            0 => batch,
            count => batch.min(count - sent),
        } as usize;
        for (offset, frame) in frames[..n].iter_mut().enumerate() {
            let sequence = sent + offset as u64;
            let len = args.size.for_frame(id, sequence);
            testframe::encode(frame, args.dst, src, id, sequence, len);
        }
        accepted += peer.send_batch(frames[..n].iter().map(Vec::as_slice)) as u64;
        sent += n as u64;
        // Keep our own ring empty: flooded or broadcast frames for us would otherwise
        // fill it and show up as drops in other senders' counters.
        received += peer.receive(RECEIVE_BUDGET, |_| {}) as u64;
    }
    let counters = peer.counters();
    let summary = PktgenSummary {
        id,
        slot: peer.index(),
        mac: src,
        sent,
        accepted,
        tx_deliveries: counters.tx_deliveries,
        tx_drops: drops_by_reason(&counters.tx_drops),
        received,
    };
    drop(peer);
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &summary)?;
    writeln!(stdout)?;
    Ok(())
}

/// Sleeps until frame `sent` is due at `rate` frames per second; false if told to stop.
fn pace(started: Instant, sent: u64, rate: u64, stop: &AtomicBool) -> bool {
    let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        std::thread::sleep((due - now).min(STOP_CHECK));
    }
}

/// Waits until the destination of `args` can receive; see `--wait-for-peer`.
fn wait_for_destination(
    net: &Network,
    own_slot: u16,
    args: &PktgenArgs,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + args.wait_timeout;
    loop {
        let status = net.status();
        let mut others = status.peers.iter().filter(|p| p.slot != own_slot);
        let ready = if args.dst.is_multicast() {
            others.filter(|p| !p.link_down && !p.quarantined).count() >= args.receivers
        } else {
            others.any(|p| p.mac == args.dst)
        };
        if ready {
            return Ok(());
        }
        if stop.load(Ordering::Relaxed) {
            bail!("stopped while waiting for {}", args.dst);
        }
        if Instant::now() >= deadline {
            bail!(
                "no receiver for {} appeared within {:?}",
                args.dst,
                args.wait_timeout
            );
        }
        std::thread::sleep(PEER_POLL);
    }
}

/// What the sink saw of one sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
struct SenderReport {
    /// Frames received in order.
    received: u64,
    /// First sequence number seen.
    first: u64,
    /// Highest sequence number seen.
    last: u64,
    /// Sequence numbers skipped between `first` and `last` (lost frames).
    gaps: u64,
}

/// What the sink prints when it ends.
#[derive(Debug, Default, Serialize)]
struct SinkReport {
    slot: u16,
    mac: MacAddress,
    /// Every frame received, test frames or not.
    received: u64,
    /// Test frames that were damaged.
    corrupt: u64,
    /// Test frames whose sequence number equals the sender's last one.
    duplicates: u64,
    /// Test frames whose sequence number is below the sender's last one.
    out_of_order: u64,
    /// Frames that are not test frames.
    foreign: u64,
    /// Intact, in-order test frames by sender identity.
    per_sender: BTreeMap<u32, SenderReport>,
    /// The sink peer's receive drops, by reason.
    rx_drops: BTreeMap<&'static str, u64>,
}

impl SinkReport {
    /// Judges one received frame.
    fn check(&mut self, frame: &[u8]) {
        self.received += 1;
        let valid = match testframe::verify(frame) {
            Verdict::Valid(valid) => valid,
            Verdict::Foreign => {
                self.foreign += 1;
                return;
            }
            Verdict::Corrupt(corruption) => {
                self.corrupt += 1;
                if self.corrupt <= CORRUPTION_REPORTS {
                    report_corruption(corruption, frame);
                }
                return;
            }
        };
        let Some(sender) = self.per_sender.get_mut(&valid.sender) else {
            self.per_sender.insert(
                valid.sender,
                SenderReport {
                    received: 1,
                    first: valid.sequence,
                    last: valid.sequence,
                    gaps: 0,
                },
            );
            return;
        };
        if valid.sequence == sender.last {
            self.duplicates += 1;
        } else if valid.sequence < sender.last {
            self.out_of_order += 1;
        } else {
            sender.gaps += valid.sequence - sender.last - 1;
            sender.last = valid.sequence;
            sender.received += 1;
        }
    }

    /// Whether every test frame arrived intact, once and in order.
    fn is_clean(&self) -> bool {
        self.corrupt == 0 && self.duplicates == 0 && self.out_of_order == 0
    }

    fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "received {} frames: {} corrupt, {} duplicates, {} out of order, {} foreign",
            self.received, self.corrupt, self.duplicates, self.out_of_order, self.foreign
        )?;
        for (id, s) in &self.per_sender {
            writeln!(
                out,
                "sender {id}: {} frames, sequence {}..={}, {} lost in gaps",
                s.received, s.first, s.last, s.gaps
            )?;
        }
        for (reason, count) in &self.rx_drops {
            writeln!(out, "dropped before reception: {count} {reason}")?;
        }
        Ok(())
    }
}

fn report_corruption(corruption: Corruption, frame: &[u8]) {
    let head = &frame[..frame.len().min(testframe::HEADER_LEN)];
    tracing::warn!(?corruption, len = frame.len(), ?head, "corrupt test frame");
}

/// Runs `sink`.
pub fn sink(dir: &Path, args: SinkArgs) -> anyhow::Result<()> {
    let stop = stop_on_signals()?;
    let net = Network::open(dir, &args.name)?;
    let mut peer = net.join(JoinOptions {
        kind: PortKind::Process,
        mac: args.mac,
        label: "sink".into(),
        ..JoinOptions::default()
    })?;
    let mut report = SinkReport {
        slot: peer.index(),
        mac: peer.mac(),
        ..SinkReport::default()
    };
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "ready {} {}", peer.index(), peer.mac())?;
        stdout.flush()?;
    }
    let limit = |received: u64| match args.count {
        0 => RECEIVE_BUDGET,
        count => RECEIVE_BUDGET.min(count.saturating_sub(received) as usize),
    };
    let mut last_frame = Instant::now();
    let mut signalled = false;
    loop {
        if args.count != 0 && report.received >= args.count {
            break;
        }
        if stop.load(Ordering::Relaxed) {
            signalled = true;
            break;
        }
        if peer.receive(limit(report.received), |frame| report.check(frame)) > 0 {
            last_frame = Instant::now();
            continue;
        }
        let idle = last_frame.elapsed();
        if !args.timeout.is_zero() && idle >= args.timeout {
            break;
        }
        let slice = if args.timeout.is_zero() {
            STOP_CHECK
        } else {
            (args.timeout - idle).min(STOP_CHECK)
        };
        peer.wait(slice);
    }
    if signalled {
        // Frames already in the ring when the signal came were delivered: count them too,
        // so a test that stops the sink after its senders finished sees every frame. At
        // most one ring's worth, in case senders are still going.
        let mut left = net.geometry().ring_slots as usize;
        while left > 0 {
            let budget = limit(report.received).min(left);
            let taken = peer.receive(budget, |frame| report.check(frame));
            if taken == 0 {
                break;
            }
            left -= taken;
        }
    }
    let counters: PeerCounters = peer.counters();
    report.rx_drops = drops_by_reason(&counters.rx_drops);
    drop(peer);
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut stdout, &report)?;
        writeln!(stdout)?;
    } else {
        report.print_text(&mut stdout)?;
    }
    stdout.flush()?;
    if !report.is_clean() {
        bail!(
            "{} corrupt, {} duplicated and {} out-of-order frames",
            report.corrupt,
            report.duplicates,
            report.out_of_order
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(sender: u32, sequence: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mac = MacAddress([2, 0, 0, 0, 0, 1]);
        testframe::encode(&mut out, mac, mac, sender, sequence, 80);
        out
    }

    #[test]
    fn sizes_parse_and_stay_in_their_range() {
        assert_eq!("64".parse(), Ok(FrameSize { min: 64, max: 64 }));
        let range: FrameSize = "60-1514".parse().unwrap();
        assert_eq!(range, FrameSize { min: 60, max: 1514 });
        assert!("100-60".parse::<FrameSize>().is_err());
        assert!("20".parse::<FrameSize>().is_err(), "below a test frame");
        assert!("x".parse::<FrameSize>().is_err());
        let sizes: Vec<usize> = (0..1000).map(|seq| range.for_frame(1, seq)).collect();
        assert!(sizes.iter().all(|s| (60..=1514).contains(s)));
        assert!(sizes.iter().any(|&s| s < 200) && sizes.iter().any(|&s| s > 1300));
    }

    #[test]
    fn destinations_and_durations_parse() {
        assert_eq!(parse_destination("broadcast"), Ok(MacAddress::BROADCAST));
        assert_eq!(
            parse_destination("02:00:00:00:00:07"),
            Ok(MacAddress([2, 0, 0, 0, 0, 7]))
        );
        assert!(parse_destination("nobody").is_err());
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("NaN").is_err());
    }

    #[test]
    fn the_sink_tells_gaps_from_duplicates_and_reordering() {
        let mut report = SinkReport::default();
        for seq in [0, 1, 3, 3, 2, 7] {
            report.check(&frame(9, seq));
        }
        report.check(&frame(4, 5));
        report.check(&[0u8; 60]);
        let mut broken = frame(9, 8);
        broken[50] ^= 1;
        report.check(&broken);
        assert_eq!(report.received, 9);
        assert_eq!(
            (
                report.duplicates,
                report.out_of_order,
                report.foreign,
                report.corrupt
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(
            report.per_sender[&9],
            SenderReport {
                received: 4,
                first: 0,
                last: 7,
                gaps: 4
            }
        );
        assert_eq!(report.per_sender[&4].first, 5);
        assert!(!report.is_clean());
    }
}
