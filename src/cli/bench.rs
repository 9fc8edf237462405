//! `guestnet bench`: frames per second, drops, wake-ups and latency between processes,
//! against a unix datagram socket measured in the same run.
//!
//! The command is a coordinator. It makes a private directory under `/dev/shm` with one
//! network in it, and starts the workers as copies of its own executable (the hidden
//! `bench-worker` subcommand): one receiver and `--senders` senders, each its own process,
//! as guests' ports would be. The workers talk to it by lines:
//!
//! ```text
//! worker → "ready [mac]"      joined (the receiver says its MAC), waiting
//! worker ← "go <deadline>"    start now, stop sending at this monotonic time (ns)
//! sender → <report>           one JSON line when the deadline has passed, then exits
//! receiver ← "stop"           every sender is gone: drain what is left and report
//! receiver → <report>
//! ```
//!
//! so the start is a barrier without sleeps, and the receiver drains only once nothing
//! can arrive any more, which lets the counts add up exactly. The same is then done with
//! the anchor, the obvious alternative for moving frames between processes: a unix
//! `SOCK_DGRAM` socket, one frame per blocking `send()` and per `recv()`, as QEMU's
//! `-netdev dgram` does. Blocking sends give the anchor flow control (it never drops),
//! which favours it.
//!
//! When DPDK's `dpdk-testpmd` is installed (and unless `--no-memif`), a second anchor is
//! measured in the same run: DPDK memif between two testpmd processes on the same cores as
//! guestnet's sender and receiver (see `cli::bench::memif`), the bar DESIGN.md §5 sets. Without
//! DPDK the run says why memif is missing and goes on.
//!
//! Workers are pinned with `sched_setaffinity`, unless `--no-pin`: the receiver on the
//! first CPU the command may use, the senders round-robin on the others. On two cores
//! one sender and the receiver each have a core; four senders share one core, so the
//! 4-sender figure measures what contention costs, not extra sending power.
//!
//! Ctrl-C (or SIGTERM) kills the workers; the private directory is removed on every exit
//! path by a guard.

mod args;
mod memif;
mod netns;
mod process;
mod testpmd;
mod vhost_user;
mod vm;
mod worker;

pub use args::{BenchArgs, Role, WorkerArgs};
pub use netns::TAP_RING_SLOTS;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use super::format::nanoseconds;
use crate::bench::{
    self, AnchorResult, BenchResult, Drops, FrameCounts, MemifResult, ReceiverReport, SenderReport,
    Throughput,
};
use crate::network::monotonic_ns;
use crate::shm::layout::Geometry;
use crate::testframe;
use crate::wire::MacAddress;
use process::{Interrupt, Placement, Worker, Workspace, machine};

/// What the anchor is, as printed.
const ANCHOR_NAME: &str = "unix SOCK_DGRAM socket, one blocking send()/recv() per frame";
/// How long a worker may take to start and join.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after the deadline a worker may take to report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `bench`. The global `--dir` is not used: the run's network is private.
pub fn run(_dir: &Path, args: BenchArgs) -> anyhow::Result<()> {
    check_args(&args)?;
    if args.netns {
        return netns::run(&args);
    }
    if args.vm {
        return vm::run(&args);
    }
    if args.vhost_user {
        return vhost_user::run(&args);
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let interrupt = Interrupt::install()?;
    let workspace = Workspace::create()?;
    workspace.create_network(args.ring_slots.unwrap_or(Geometry::default().ring_slots))?;
    let placement = Placement::new(!args.no_pin);
    let plan = Plan {
        args: &args,
        workspace: workspace.path(),
        placement: &placement,
        interrupt: &interrupt,
    };
    progress(&args, "measuring guestnet");
    let (senders, receiver) = plan.measure(Transport::Guestnet)?;
    progress(&args, "measuring the anchor");
    let (anchor_senders, anchor_receiver) = plan.measure(Transport::Anchor)?;
    let memif = measure_memif(&args, workspace.path(), &placement, &interrupt)?;
    let mut result = summarise(
        &args,
        (&senders, &receiver),
        (&anchor_senders, &anchor_receiver),
    );
    match memif {
        Ok(memif) => {
            result.ratio_memif = Some(if memif.mpps > 0.0 {
                result.mpps / memif.mpps
            } else {
                0.0
            });
            result.memif = Some(memif);
        }
        Err(why) => result.memif_skipped = Some(why),
    }
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print_table(&result, &args, &command, &placement);
    }
    Ok(())
}

/// Measures the memif anchor: `Ok(Err(why))` when it is skipped or cannot be measured
/// here (said on stderr too), an error only when the run was interrupted.
fn measure_memif(
    args: &BenchArgs,
    workspace: &Path,
    placement: &Placement,
    interrupt: &Interrupt,
) -> anyhow::Result<Result<MemifResult, String>> {
    if args.no_memif {
        return Ok(Err("--no-memif".to_string()));
    }
    let testpmd = match memif::preflight() {
        Ok(testpmd) => testpmd,
        Err(e) => {
            let why = format!("{e:#}");
            eprintln!("guestnet bench: memif not measured: {why}");
            return Ok(Err(why));
        }
    };
    progress(args, "measuring memif (DPDK)");
    match memif::measure(
        &testpmd,
        workspace,
        args.frame_size,
        args.seconds,
        placement,
        interrupt,
    ) {
        Ok(measured) => Ok(Ok(MemifResult {
            name: memif::MEMIF_NAME.to_string(),
            mpps: measured.throughput.mpps,
            gbps: measured.throughput.gbps,
            received: measured.received,
            window_s: measured.window.as_secs_f64(),
        })),
        Err(e) => {
            // Ctrl-C fails the run; DPDK failing only costs the anchor.
            interrupt.check()?;
            let why = format!("{e:#}");
            eprintln!("guestnet bench: memif not measured: {why}");
            Ok(Err(why))
        }
    }
}

fn check_args(args: &BenchArgs) -> anyhow::Result<()> {
    let max_frame = crate::wire::ethernet::max_frame_len(Geometry::default().mtu as usize, false);
    if !(testframe::MIN_LEN..=max_frame).contains(&args.frame_size) {
        bail!(
            "--frame-size must be between {} and {max_frame}",
            testframe::MIN_LEN
        );
    }
    if !(1..=64).contains(&args.senders) {
        bail!("--senders must be between 1 and 64");
    }
    if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 3600.0) {
        bail!("--seconds must be more than 0 and at most 3600");
    }
    if !(1..=4096).contains(&args.batch) {
        bail!("--batch must be between 1 and 4096");
    }
    Ok(())
}

/// Says on stderr what is being measured, even with `--json`: a person sees progress,
/// and a caller can tell the run has started.
fn progress(args: &BenchArgs, what: &str) {
    eprintln!("guestnet bench: {what} for {} s", args.seconds);
}

/// Which transport a measurement uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Guestnet,
    Anchor,
}

/// Everything a measurement needs.
struct Plan<'a> {
    args: &'a BenchArgs,
    workspace: &'a Path,
    placement: &'a Placement,
    interrupt: &'a Interrupt,
}

impl Plan<'_> {
    /// Runs one measurement: starts the workers, releases them together, collects reports.
    fn measure(&self, transport: Transport) -> anyhow::Result<(Vec<SenderReport>, ReceiverReport)> {
        let (receiver_role, sender_role) = match transport {
            Transport::Guestnet => (Role::Receiver, Role::Sender),
            Transport::Anchor => (Role::AnchorReceiver, Role::AnchorSender),
        };
        let mut receiver = self.spawn(
            receiver_role,
            self.args.senders,
            None,
            self.placement.receiver(),
        )?;
        let ready = receiver.expect_line(Instant::now() + START_TIMEOUT, self.interrupt)?;
        let to = match transport {
            Transport::Guestnet => Some(parse_ready_mac(&ready)?),
            Transport::Anchor => None,
        };
        let mut senders = Vec::new();
        for id in 0..self.args.senders {
            senders.push(self.spawn(sender_role, id, to, self.placement.sender(id))?);
        }
        for sender in &mut senders {
            sender.expect_line(Instant::now() + START_TIMEOUT, self.interrupt)?;
        }
        let length = Duration::from_secs_f64(self.args.seconds);
        let deadline = monotonic_ns().saturating_add(length.as_nanos() as u64);
        let go = format!("go {deadline}");
        // The receiver first, so it is listening when the first frame comes.
        receiver.send_line(&go)?;
        for sender in &mut senders {
            sender.send_line(&go)?;
        }
        let report_by = Instant::now() + length + REPORT_TIMEOUT;
        let mut sender_reports = Vec::new();
        for mut sender in senders {
            let line = sender.expect_line(report_by, self.interrupt)?;
            sender_reports.push(
                serde_json::from_str::<SenderReport>(&line)
                    .with_context(|| format!("{}: bad report {line:?}", sender.name))?,
            );
            sender.finish(report_by)?;
        }
        // Every sender has exited: nothing is in flight, so what the receiver drains now
        // is exactly what was still queued.
        receiver.send_line("stop")?;
        let line = receiver.expect_line(Instant::now() + REPORT_TIMEOUT, self.interrupt)?;
        let receiver_report = serde_json::from_str::<ReceiverReport>(&line)
            .with_context(|| format!("{}: bad report {line:?}", receiver.name))?;
        receiver.finish(Instant::now() + REPORT_TIMEOUT)?;
        Ok((sender_reports, receiver_report))
    }

    fn spawn(
        &self,
        role: Role,
        id: u16,
        to: Option<MacAddress>,
        cpu: Option<usize>,
    ) -> anyhow::Result<Worker> {
        let role_name = match role {
            Role::Sender => "sender",
            Role::Receiver => "receiver",
            Role::AnchorSender => "anchor-sender",
            Role::AnchorReceiver => "anchor-receiver",
        };
        let mut command = Command::new(std::env::current_exe().context("find own executable")?);
        command
            .arg("bench-worker")
            .arg("--role")
            .arg(role_name)
            .arg("--workspace")
            .arg(self.workspace)
            .arg("--id")
            .arg(id.to_string())
            .arg("--frame-size")
            .arg(self.args.frame_size.to_string())
            .arg("--batch")
            .arg(self.args.batch.to_string());
        if let Some(mac) = to {
            command.arg("--to").arg(mac.to_string());
        }
        if let Some(cpu) = cpu {
            command.arg("--cpu").arg(cpu.to_string());
        }
        let name = if matches!(role, Role::Sender | Role::AnchorSender) {
            format!("{role_name} {id}")
        } else {
            role_name.to_string()
        };
        let worker = Worker::spawn(command, name, &self.interrupt.children)?;
        // A signal that came while we were spawning missed this child: look again.
        self.interrupt.check()?;
        Ok(worker)
    }
}

fn parse_ready_mac(line: &str) -> anyhow::Result<MacAddress> {
    line.strip_prefix("ready ")
        .and_then(|mac| mac.trim().parse().ok())
        .ok_or_else(|| anyhow!("receiver: expected \"ready <mac>\", got {line:?}"))
}

/// Turns the workers' reports into the result.
fn summarise(
    args: &BenchArgs,
    (senders, receiver): (&[SenderReport], &ReceiverReport),
    (anchor_senders, anchor_receiver): (&[SenderReport], &ReceiverReport),
) -> BenchResult {
    let guestnet = Throughput::of(
        receiver.received_in_window,
        args.frame_size,
        receiver.window_ns,
    );
    let anchor = Throughput::of(
        anchor_receiver.received_in_window,
        args.frame_size,
        anchor_receiver.window_ns,
    );
    let counts = |senders: &[SenderReport], receiver: &ReceiverReport| FrameCounts {
        sent: senders.iter().map(|s| s.sent).sum(),
        received: receiver.received,
        queued: receiver.queued,
        lost: bench::lost_frames(senders, receiver),
    };
    let wakeups_per_frame = if receiver.received == 0 {
        0.0
    } else {
        receiver.wakeups as f64 / receiver.received as f64
    };
    let ratio = if anchor.mpps > 0.0 {
        guestnet.mpps / anchor.mpps
    } else {
        0.0
    };
    BenchResult {
        frame_size: args.frame_size,
        senders: args.senders,
        seconds: args.seconds,
        mpps: guestnet.mpps,
        gbps: guestnet.gbps,
        drops: bench::lost_frames(senders, receiver),
        drops_by_reason: Drops::from_reports(senders, receiver),
        wakeups_per_frame,
        latency_ns: receiver.latency_ns,
        frames: counts(senders, receiver),
        out_of_order: receiver.out_of_order + anchor_receiver.out_of_order,
        anchor: AnchorResult {
            name: ANCHOR_NAME.to_string(),
            mpps: anchor.mpps,
            gbps: anchor.gbps,
            latency_ns: anchor_receiver.latency_ns,
            frames: counts(anchor_senders, anchor_receiver),
        },
        ratio,
        memif: None,
        ratio_memif: None,
        memif_skipped: None,
    }
}

fn print_table(result: &BenchResult, args: &BenchArgs, command: &str, placement: &Placement) {
    let senders = if args.senders == 1 {
        "1 sender".to_string()
    } else {
        format!("{} senders", args.senders)
    };
    println!(
        "guestnet bench: {}-byte frames, {senders} → 1 receiver, {} s per transport, batch {}, ring {} slots",
        args.frame_size,
        args.seconds,
        args.batch,
        args.ring_slots.unwrap_or(Geometry::default().ring_slots)
    );
    println!("machine: {}", machine());
    println!("workers: {}", placement.describe(args.senders));
    println!("command: {command}");
    println!();
    let latency = |p: &bench::Percentiles| {
        format!(
            "latency p50 {} p99 {} p99.9 {}",
            nanoseconds(p.p50),
            nanoseconds(p.p99),
            nanoseconds(p.p999)
        )
    };
    println!(
        "guestnet  {:8.2} Mpps {:8.2} Gbit/s   {}",
        result.mpps,
        result.gbps,
        latency(&result.latency_ns)
    );
    let reasons: Vec<String> = result
        .drops_by_reason
        .tx
        .iter()
        .map(|(r, n)| format!("tx {r} {n}"))
        .chain(
            result
                .drops_by_reason
                .rx
                .iter()
                .map(|(r, n)| format!("rx {r} {n}")),
        )
        .collect();
    let reasons = if reasons.is_empty() {
        String::new()
    } else {
        format!(" ({})", reasons.join(", "))
    };
    println!(
        "          drops {} of {} sent{reasons}; wake-ups per frame {:.6}",
        result.drops, result.frames.sent, result.wakeups_per_frame
    );
    if result.drops_by_reason.tx.contains_key("ring_full") {
        println!(
            "          (ring_full: the senders send as fast as they can, faster than the \
             receiver reads; the rate above is what it received)"
        );
    }
    println!(
        "anchor    {:8.2} Mpps {:8.2} Gbit/s   {}",
        result.anchor.mpps,
        result.anchor.gbps,
        latency(&result.anchor.latency_ns)
    );
    println!("          {}", result.anchor.name);
    println!("ratio     {:.2} × anchor (frames per second)", result.ratio);
    match (&result.memif, result.ratio_memif) {
        (Some(memif), Some(ratio)) => {
            println!(
                "memif     {:8.2} Mpps {:8.2} Gbit/s",
                memif.mpps, memif.gbps
            );
            println!("          {}", memif.name);
            println!("ratio     {ratio:.2} × memif (frames per second)");
        }
        _ => println!(
            "memif     not measured: {}",
            result.memif_skipped.as_deref().unwrap_or("unknown")
        ),
    }
    if result.out_of_order != 0 {
        println!(
            "WARNING: {} frames arrived out of order",
            result.out_of_order
        );
    }
}

/// Runs a worker (the hidden `bench-worker` subcommand). The global `--dir` is not used:
/// the coordinator names the run's private directory.
pub fn worker(_dir: &Path, args: WorkerArgs) -> anyhow::Result<()> {
    worker::run(args)
}
