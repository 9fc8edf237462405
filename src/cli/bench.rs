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
//! Workers are pinned with `sched_setaffinity`, unless `--no-pin`: the receiver on the
//! first CPU the command may use, the senders round-robin on the others. On two cores
//! one sender and the receiver each have a core; four senders share one core, so the
//! 4-sender figure measures what contention costs, not extra sending power.
//!
//! Ctrl-C (or SIGTERM) kills the workers; the private directory is removed on every exit
//! path by a guard.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

use crate::bench::{
    self, AnchorResult, BenchResult, Drops, FrameCounts, LatencySamples, ReceiverReport,
    SenderReport, SequenceCheck, Stamp, Throughput,
};
use crate::network::{CreateOptions, JoinOptions, Network, PortKind, monotonic_ns};
use crate::shm::layout::Geometry;
use crate::wire::MacAddress;

/// Name of the network inside the private directory.
const NETWORK: &str = "bench";
/// File name of the anchor's socket inside the private directory.
const ANCHOR_SOCKET: &str = "anchor.sock";
/// What the anchor is, as printed.
const ANCHOR_NAME: &str = "unix SOCK_DGRAM socket, one blocking send()/recv() per frame";
/// Frames the receiver takes per `receive` call.
const RECEIVE_BUDGET: usize = 64;
/// Longest sleep of an idle receiver before it looks at its stop flag again.
const IDLE_WAIT: Duration = Duration::from_millis(10);
/// How long a worker may take to start and join.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after the deadline a worker may take to report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Bytes per frame, Ethernet header included (32 to 1514).
    #[arg(long, default_value_t = 64)]
    pub frame_size: usize,
    /// Sender processes (1 to 64).
    #[arg(long, default_value_t = 1)]
    pub senders: u16,
    /// Seconds each of the two measurements lasts.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Frames per `send_batch` call (1 to 4096).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Slots of the receiver's ring (a power of two).
    #[arg(long, default_value_t = Geometry::default().ring_slots)]
    pub ring_slots: u32,
    /// Leave the workers unpinned (the scheduler places them).
    #[arg(long)]
    pub no_pin: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// What a worker process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Sends bench frames into the network.
    Sender,
    /// Receives them from the network.
    Receiver,
    /// Sends bench frames into the anchor socket.
    AnchorSender,
    /// Receives them from the anchor socket.
    AnchorReceiver,
}

/// Arguments of the hidden worker.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// What to do.
    #[arg(long, value_enum)]
    role: Role,
    /// Private directory of the run (network and socket).
    #[arg(long)]
    workspace: PathBuf,
    /// Sender number, or the number of senders for a receiver.
    #[arg(long)]
    id: u16,
    /// Receiver's MAC (senders).
    #[arg(long)]
    to: Option<MacAddress>,
    /// Bytes per frame.
    #[arg(long)]
    frame_size: usize,
    /// Frames per batch.
    #[arg(long)]
    batch: usize,
    /// CPU to pin to.
    #[arg(long)]
    cpu: Option<usize>,
}

/// Runs `bench`. The global `--dir` is not used: the run's network is private.
pub fn run(_dir: &Path, args: BenchArgs) -> anyhow::Result<()> {
    check_args(&args)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let interrupt = Interrupt::install()?;
    let workspace = Workspace::create()?;
    let geometry = Geometry {
        ring_slots: args.ring_slots,
        ..Geometry::default()
    };
    Network::create(
        workspace.path(),
        NETWORK,
        CreateOptions {
            geometry,
            ..CreateOptions::default()
        },
    )
    .context("create the bench network")?;
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
    let result = summarise(
        &args,
        (&senders, &receiver),
        (&anchor_senders, &anchor_receiver),
    );
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print_table(&result, &args, &command, &placement);
    }
    Ok(())
}

fn check_args(args: &BenchArgs) -> anyhow::Result<()> {
    let max_frame = crate::wire::ethernet::max_frame_len(Geometry::default().mtu as usize, false);
    if !(bench::MIN_FRAME_LEN..=max_frame).contains(&args.frame_size) {
        bail!(
            "--frame-size must be between {} and {max_frame}",
            bench::MIN_FRAME_LEN
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
        drops: Drops::from_reports(senders, receiver),
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
        args.frame_size, args.seconds, args.batch, args.ring_slots
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
        .drops
        .tx
        .iter()
        .map(|(r, n)| format!("tx {r} {n}"))
        .chain(result.drops.rx.iter().map(|(r, n)| format!("rx {r} {n}")))
        .collect();
    let reasons = if reasons.is_empty() {
        String::new()
    } else {
        format!(" ({})", reasons.join(", "))
    };
    println!(
        "          drops {} of {} sent{reasons}; wake-ups per frame {:.6}",
        result.drops.total, result.frames.sent, result.wakeups_per_frame
    );
    println!(
        "anchor    {:8.2} Mpps {:8.2} Gbit/s   {}",
        result.anchor.mpps,
        result.anchor.gbps,
        latency(&result.anchor.latency_ns)
    );
    println!("          {}", result.anchor.name);
    println!("ratio     {:.2} × anchor (frames per second)", result.ratio);
    if result.out_of_order != 0 {
        println!(
            "WARNING: {} frames arrived out of order",
            result.out_of_order
        );
    }
}

fn nanoseconds(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else if ns >= 1_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else {
        format!("{ns} ns")
    }
}

/// "N cores (M usable), <model>" from the scheduler and /proc/cpuinfo.
fn machine() -> String {
    let cores = std::fs::read_to_string("/proc/cpuinfo")
        .map(|text| {
            let model = text
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, model)| model.trim().to_string());
            let count = text.lines().filter(|l| l.starts_with("processor")).count();
            (count, model)
        })
        .unwrap_or((0, None));
    let usable = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{} cores ({usable} usable), {}",
        cores.0,
        cores.1.unwrap_or_else(|| "unknown CPU".to_string())
    )
}

/// Which CPU each worker is pinned to.
#[derive(Debug)]
struct Placement {
    /// CPUs this command may use; empty when pinning is off or pointless.
    cpus: Vec<usize>,
}

impl Placement {
    fn new(pin: bool) -> Placement {
        let allowed = rustix::thread::sched_getaffinity(None)
            .map(|set| {
                (0..rustix::thread::CpuSet::MAX_CPU)
                    .filter(|&cpu| set.is_set(cpu))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        Placement {
            cpus: if pin && allowed.len() >= 2 {
                allowed
            } else {
                Vec::new()
            },
        }
    }

    fn receiver(&self) -> Option<usize> {
        self.cpus.first().copied()
    }

    fn sender(&self, id: u16) -> Option<usize> {
        let others = self.cpus.get(1..)?;
        others.get(id as usize % others.len()).copied()
    }

    fn describe(&self, senders: u16) -> String {
        let Some(receiver) = self.receiver() else {
            return "not pinned".to_string();
        };
        let mut cpus: Vec<usize> = (0..senders).filter_map(|id| self.sender(id)).collect();
        cpus.sort_unstable();
        cpus.dedup();
        let cpus: Vec<String> = cpus.iter().map(usize::to_string).collect();
        format!(
            "pinned with sched_setaffinity: receiver on CPU {receiver}, senders on CPU {}",
            cpus.join(",")
        )
    }
}

/// The run's private directory under /dev/shm, removed when dropped.
struct Workspace {
    path: PathBuf,
}

impl Workspace {
    fn create() -> anyhow::Result<Workspace> {
        let shm = Path::new("/dev/shm");
        let parent = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let path = parent.join(format!(
            "guestnet-bench-{}-{}",
            std::process::id(),
            crate::network::unix_ns()
        ));
        // create_dir (not _all): fails if the name exists, so the directory is ours alone.
        std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Workspace { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!(
                "guestnet bench: could not remove {}: {e}",
                self.path.display()
            );
        }
    }
}

/// The pids of the workers that are running, for the signal thread to kill.
type Children = Arc<Mutex<Vec<u32>>>;

/// Turns SIGINT and SIGTERM into "kill the workers, then fail": the coordinator sees its
/// workers die, returns an error, and the guards clean up on the way out.
struct Interrupt {
    interrupted: Arc<AtomicBool>,
    children: Children,
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Interrupt {
    fn install() -> anyhow::Result<Interrupt> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
            .context("install signal handlers")?;
        let handle = signals.handle();
        let interrupted = Arc::new(AtomicBool::new(false));
        let children: Children = Arc::default();
        let thread = std::thread::spawn({
            let interrupted = Arc::clone(&interrupted);
            let children = Arc::clone(&children);
            move || {
                for _ in signals.forever() {
                    interrupted.store(true, Ordering::SeqCst);
                    kill_all(&children);
                }
            }
        });
        Ok(Interrupt {
            interrupted,
            children,
            handle,
            thread: Some(thread),
        })
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.interrupted.load(Ordering::SeqCst) {
            kill_all(&self.children);
            bail!("interrupted");
        }
        Ok(())
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn kill_all(children: &Children) {
    let pids = children.lock().unwrap_or_else(|p| p.into_inner());
    for &pid in pids.iter() {
        // Only pids still in the list: a worker leaves it before it is reaped, so its pid
        // cannot have been reused yet.
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// A worker process, killed and reaped when dropped.
struct Worker {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    children: Children,
}

impl Worker {
    fn spawn(mut command: Command, name: String, children: &Children) -> anyhow::Result<Worker> {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().with_context(|| format!("start {name}"))?;
        children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child.id());
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let (tx, lines) = mpsc::channel();
        // A thread per worker turns its stdout into lines we can wait for with a timeout;
        // it ends when the worker closes its stdout (exits).
        if let Some(stdout) = stdout {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Worker {
            name,
            child,
            stdin,
            lines,
            children: Arc::clone(children),
        })
    }

    fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{}: no stdin", self.name))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("{}: write {line:?}", self.name))
    }

    fn expect_line(&mut self, by: Instant, interrupt: &Interrupt) -> anyhow::Result<String> {
        let timeout = by.saturating_duration_since(Instant::now());
        let result = self.lines.recv_timeout(timeout);
        interrupt.check()?;
        match result {
            Ok(line) => Ok(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("{}: no answer within {timeout:?}", self.name)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().ok();
                bail!("{}: exited early ({status:?})", self.name)
            }
        }
    }

    /// Waits for the worker to close its stdout and exit, and checks that it succeeded.
    fn finish(mut self, by: Instant) -> anyhow::Result<()> {
        self.stdin = None;
        match self
            .lines
            .recv_timeout(by.saturating_duration_since(Instant::now()))
        {
            Ok(line) => bail!("{}: unexpected output {line:?}", self.name),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!("{}: did not exit", self.name),
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        self.forget_pid();
        let status = self
            .child
            .wait()
            .with_context(|| format!("{}: wait", self.name))?;
        if !status.success() {
            bail!("{}: {status}", self.name);
        }
        Ok(())
    }

    fn forget_pid(&self) {
        let id = self.child.id();
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&pid| pid != id);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Kill before leaving the list: the signal thread must never see a reaped pid.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        self.forget_pid();
        let _ = self.child.wait();
    }
}

/// Runs a worker (the hidden `bench-worker` subcommand).
pub fn worker(_dir: &Path, args: WorkerArgs) -> anyhow::Result<()> {
    if let Some(cpu) = args.cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        rustix::thread::sched_setaffinity(None, &set)
            .with_context(|| format!("pin to CPU {cpu}"))?;
    }
    let frame_size = args.frame_size.max(bench::MIN_FRAME_LEN);
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
                run.tick();
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
            let report = send_until(args.id, frames, deadline, |batch, _| {
                batch.iter().filter(|f| socket.send(f).is_ok()).count() as u64
            });
            let timed_out = report.sent - report.accepted;
            let mut report = report;
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
                        run.tick();
                    }
                    Err(_) => run.tick(),
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
    (0..batch).map(|_| bench::frame(to, from, size)).collect()
}

/// Says "ready" (with the MAC, for the receiver), then waits for "go <deadline>".
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
            bench::write_stamp(
                frame,
                Stamp {
                    sender: id,
                    sequence,
                    sent_ns,
                },
            );
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
            in_window: None,
            sequences: SequenceCheck::new(senders),
            latency: LatencySamples::default(),
        }
    }

    fn frame(&mut self, frame: &[u8]) {
        self.received += 1;
        let stamp = bench::read_stamp(frame);
        if let Some(sent) = stamp.map(|s| s.sent_ns).filter(|&ns| ns != 0) {
            self.latency.record(monotonic_ns().saturating_sub(sent));
        }
        self.sequences.observe(stamp);
    }

    /// How long to sleep when idle: not past the deadline, so the window closes on time.
    fn idle_wait(&self) -> Duration {
        if self.in_window.is_some() {
            return IDLE_WAIT;
        }
        Duration::from_nanos(self.deadline.saturating_sub(monotonic_ns())).min(IDLE_WAIT)
    }

    /// Called after each receive call; closes the measured window at the deadline.
    fn tick(&mut self) {
        if self.in_window.is_none() {
            let now = monotonic_ns();
            if now >= self.deadline {
                self.in_window = Some((self.received, now.saturating_sub(self.start)));
            }
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
