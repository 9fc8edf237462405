//! The workers: a sender or a receiver, over guestnet or over the anchor socket. The
//! loops and the bookkeeping are shared, so both transports are measured alike.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow};

use super::args::{Role, WorkerArgs};
use super::process::NETWORK;
use crate::bench::{self, LatencySamples, ReceiverReport, SenderReport, SequenceCheck};
use crate::network::{JoinOptions, Network, PortKind, monotonic_ns};
use crate::testframe;
use crate::wire::MacAddress;

/// File name of the anchor's socket inside the run's private directory.
const ANCHOR_SOCKET: &str = "anchor.sock";

/// Frames the receiver takes per `receive` call.
const RECEIVE_BUDGET: usize = 64;
/// Frames a receiver takes between two looks at the clock while frames keep coming. The
/// measured window then closes at most this many frames past its deadline (microseconds
/// at these rates; the count and the time are read together, so the rate is exact),
/// instead of the clock being read after every receive call: when calls bring a few
/// frames each, that was 5 to 13 % of the guestnet receiver's samples under `perf`.
const CLOCK_EVERY: u64 = 256;
/// Longest sleep of an idle receiver before it looks at its stop flag again.
const IDLE_WAIT: Duration = Duration::from_millis(10);

/// Runs a worker.
pub(super) fn run(args: WorkerArgs) -> anyhow::Result<()> {
    if let Some(cpu) = args.cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set)
            .with_context(|| format!("pin to CPU {cpu}"))?;
    }
    let frame_size = args.frame_size.max(testframe::MIN_LEN);
    match args.role {
        Role::Sender => {
            let to = args.to.ok_or_else(|| anyhow!("a sender needs --to"))?;
            let net = Network::open(&args.workspace, NETWORK)?;
            let peer = net.join(bench_port("bench sender"))?;
            let frames = frames_for(to, peer.mac(), frame_size, args.batch);
            let control = peer.control();
            let (mut tx, _rx) = peer.split();
            let deadline = ready_then_go(None)?;
            let report = send_until(args.id, frames, deadline, |batch, now| {
                tx.send_batch_at(batch.iter().map(Vec::as_slice), now) as u64
            });
            report_line(&report.with_counters(&control.counters()))
        }
        Role::Receiver => {
            let net = Network::open(&args.workspace, NETWORK)?;
            let mut peer = net.join(bench_port("bench receiver"))?;
            let deadline = ready_then_go(Some(peer.mac()))?;
            let stop = watch_for_stop();
            let mut run = ReceiveRun::new(args.id, deadline);
            while !stop.load(Ordering::Acquire) {
                let got = peer.receive(RECEIVE_BUDGET, |frame| run.frame(frame));
                run.tick(got);
                if got == 0 {
                    peer.wait(run.idle_wait());
                }
            }
            let mut queued = 0;
            loop {
                let got = peer.receive(usize::MAX, |_| queued += 1);
                if got == 0 {
                    break;
                }
            }
            report_line(&run.report(queued).with_counters(&peer.counters()))
        }
        Role::AnchorSender => {
            let socket = UnixDatagram::unbound().context("anchor socket")?;
            socket
                .connect(args.workspace.join(ANCHOR_SOCKET))
                .context("connect to the anchor")?;
            // Bounded: a receiver that stopped reading must not hold us past the deadline.
            socket.set_write_timeout(Some(IDLE_WAIT))?;
            let frames = frames_for(
                MacAddress::BROADCAST,
                MacAddress::ZERO,
                frame_size,
                args.batch,
            );
            let deadline = ready_then_go(None)?;
            let mut report = send_until(args.id, frames, deadline, |batch, _| {
                batch.iter().filter(|f| socket.send(f).is_ok()).count() as u64
            });
            // A send that timed out is a frame the anchor did not take: its only drop.
            let timed_out = report.sent - report.accepted;
            if timed_out != 0 {
                report.drops.insert("send_timeout".to_string(), timed_out);
            }
            report_line(&report)
        }
        Role::AnchorReceiver => {
            let path = args.workspace.join(ANCHOR_SOCKET);
            let socket = UnixDatagram::bind(&path).context("bind the anchor socket")?;
            socket.set_read_timeout(Some(IDLE_WAIT))?;
            let deadline = ready_then_go(None)?;
            let stop = watch_for_stop();
            let mut run = ReceiveRun::new(args.id, deadline);
            let mut buffer = vec![0u8; 65536];
            while !stop.load(Ordering::Acquire) {
                match socket.recv(&mut buffer) {
                    Ok(len) => {
                        run.frame(&buffer[..len.min(buffer.len())]);
                        run.close_at_deadline();
                    }
                    Err(_) => run.close_at_deadline(),
                }
            }
            socket.set_nonblocking(true)?;
            let mut queued = 0;
            while socket.recv(&mut buffer).is_ok() {
                queued += 1;
            }
            let mut report = run.report(queued);
            report.counted_received = report.received + queued;
            report_line(&report)
        }
    }
}

fn bench_port(label: &str) -> JoinOptions {
    JoinOptions {
        kind: PortKind::Bench,
        label: label.to_string(),
        ..JoinOptions::default()
    }
}

fn frames_for(to: MacAddress, from: MacAddress, size: usize, batch: usize) -> Vec<Vec<u8>> {
    (0..batch)
        .map(|_| testframe::unchecked(to, from, size))
        .collect()
}

/// Says "ready" (with the MAC, for the receiver), then waits for `go <deadline>`.
fn ready_then_go(mac: Option<MacAddress>) -> anyhow::Result<u64> {
    let mut out = std::io::stdout().lock();
    match mac {
        Some(mac) => writeln!(out, "ready {mac}")?,
        None => writeln!(out, "ready")?,
    }
    out.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    line.trim()
        .strip_prefix("go ")
        .and_then(|deadline| deadline.parse().ok())
        .ok_or_else(|| anyhow!("expected \"go <deadline>\", got {line:?}"))
}

/// Raises a flag when the coordinator says "stop" or goes away (stdin closes).
fn watch_for_stop() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        let mut line = String::new();
        // Any line or end of input means stop: there is nothing else to say.
        let _ = std::io::stdin().lock().read_line(&mut line);
        flag.store(true, Ordering::Release);
    });
    stop
}

fn report_line(report: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(report)?)?;
    out.flush()?;
    Ok(())
}

/// The sender's loop, the same for both transports: stamp a batch, hand it over, until
/// the deadline. `send` returns how many frames the transport accepted.
fn send_until(
    id: u16,
    mut frames: Vec<Vec<u8>>,
    deadline: u64,
    mut send: impl FnMut(&[Vec<u8>], u64) -> u64,
) -> SenderReport {
    let mut sequence = 0u64;
    let mut accepted = 0u64;
    loop {
        let now = monotonic_ns();
        if now >= deadline {
            break;
        }
        for frame in &mut frames {
            let sent_ns = if sequence.is_multiple_of(bench::SAMPLE_EVERY) {
                now
            } else {
                0
            };
            // Every frame came from `frames_for`, so it holds a whole header.
            let mut packet = testframe::Packet::new_unchecked(frame.as_mut_slice());
            packet.set_sender(u32::from(id));
            packet.set_sequence(sequence);
            packet.set_sent_ns(sent_ns);
            sequence += 1;
        }
        accepted += send(&frames, now);
    }
    SenderReport {
        sender: id,
        sent: sequence,
        accepted,
        drops: BTreeMap::new(),
    }
}

/// The receiver's bookkeeping, the same for both transports.
struct ReceiveRun {
    start: u64,
    deadline: u64,
    received: u64,
    /// `received` when the clock was last read.
    clock_read_at: u64,
    in_window: Option<(u64, u64)>,
    sequences: SequenceCheck,
    latency: LatencySamples,
}

impl ReceiveRun {
    fn new(senders: u16, deadline: u64) -> ReceiveRun {
        ReceiveRun {
            start: monotonic_ns(),
            deadline,
            received: 0,
            clock_read_at: 0,
            in_window: None,
            sequences: SequenceCheck::new(senders),
            latency: LatencySamples::default(),
        }
    }

    fn frame(&mut self, frame: &[u8]) {
        self.received += 1;
        let header = testframe::header(frame).ok();
        if let Some(sent) = header.map(|h| h.sent_ns).filter(|&ns| ns != 0) {
            self.latency.record(monotonic_ns().saturating_sub(sent));
        }
        self.sequences.observe(header);
    }

    /// How long to sleep when idle: not past the deadline, so the window closes on time.
    fn idle_wait(&self) -> Duration {
        if self.in_window.is_some() {
            return IDLE_WAIT;
        }
        Duration::from_nanos(self.deadline.saturating_sub(monotonic_ns())).min(IDLE_WAIT)
    }

    /// Called after each receive call with the frames it brought: closes the measured
    /// window once past the deadline, looking at the clock when a call brought nothing
    /// or after [`CLOCK_EVERY`] frames.
    fn tick(&mut self, got: usize) {
        if got == 0 || self.received - self.clock_read_at >= CLOCK_EVERY {
            self.close_at_deadline();
        }
    }

    /// Closes the measured window if the deadline has passed. (The anchor's receiver calls
    /// this after every datagram: its system call per frame dwarfs a look at the clock.)
    fn close_at_deadline(&mut self) {
        if self.in_window.is_some() {
            return;
        }
        self.clock_read_at = self.received;
        let now = monotonic_ns();
        if now >= self.deadline {
            self.in_window = Some((self.received, now.saturating_sub(self.start)));
        }
    }

    fn report(mut self, queued: u64) -> ReceiverReport {
        let (received_in_window, window_ns) = self
            .in_window
            .unwrap_or((self.received, monotonic_ns().saturating_sub(self.start)));
        ReceiverReport {
            received: self.received,
            received_in_window,
            window_ns,
            queued,
            out_of_order: self.sequences.out_of_order,
            foreign: self.sequences.foreign,
            latency_samples: self.latency.len() as u64,
            latency_ns: self.latency.percentiles(),
            ..ReceiverReport::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_closes_past_its_deadline_on_an_empty_call_or_after_clock_every_frames() {
        // A deadline already passed: only whether the clock is looked at decides.
        let mut run = ReceiveRun::new(1, 0);
        run.received = 3;
        run.tick(3);
        assert_eq!(
            run.in_window, None,
            "a few frames in: the clock is not read"
        );
        run.received = CLOCK_EVERY;
        run.tick(5);
        assert_eq!(run.in_window.map(|(n, _)| n), Some(CLOCK_EVERY));
        run.received += 10;
        run.tick(0);
        assert_eq!(
            run.in_window.map(|(n, _)| n),
            Some(CLOCK_EVERY),
            "closed once"
        );

        let mut idle = ReceiveRun::new(1, 0);
        idle.tick(0);
        assert_eq!(
            idle.in_window.map(|(n, _)| n),
            Some(0),
            "an empty call looks"
        );

        let mut early = ReceiveRun::new(1, u64::MAX);
        early.received = 2 * CLOCK_EVERY;
        early.tick(0);
        early.close_at_deadline();
        assert_eq!(early.in_window, None, "not before the deadline");
    }
}
