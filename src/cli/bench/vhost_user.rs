//! `guestnet bench --vhost-user`: the VM-switching benchmark without VMs.
//!
//! A VM's frames reach a vhost-user switch through its virtio-net driver; here that driver
//! is DPDK's own (`net_virtio_user`, in `dpdk-testpmd`), which moves frames as fast as a
//! guest's driver can, with no guest to boot and no emulated CPU in the way. Two such
//! frontends, `a` and `b`, each attached to one vhost-user socket, are switched by
//!
//! * **guestnet**: a `guestnet vhost-user` process (a child) serving both sockets as two
//!   peers of one network in a private directory under `/dev/shm`;
//! * **the anchor**: DPDK's vhost PMD (`net_vhost`) serving the same two sockets in another
//!   testpmd, forwarding (`io`) every frame from one socket to the other. It is the fastest
//!   thing that can stand between two vhost-user frontends: a busy-polling loop with no
//!   address lookup, no ring of its own and no sleeping.
//!
//! Two tests, each run against both switches:
//!
//! * **request/response**: one testpmd owns both frontends' ports, in `macswap` mode with
//!   `--port-topology=loop`: every frame received on a port goes back out of the same port
//!   with its addresses swapped, so it crosses the switch again. `start tx_first` sends one
//!   burst from each port, and those frames (`2 × BURST`) are all that is ever in flight:
//!   the rate measures how fast the switch turns frames around, latency included.
//! * **latency**: the same loop with one frame from each port (`--burst=1`), so that a
//!   frame never waits behind another: the loop's rate gives the round trip a → b → a
//!   (two crossings of the switch and two turns in the frontend), `2 × frames in flight ÷
//!   frames per second`. Measured with one queue pair.
//! * **stream** (when the machine has a CPU for each frontend besides the switch's): a
//!   `txonly` testpmd on `a` sends as fast as it can to an `rxonly` testpmd on `b`.
//!
//! **Queue pairs.** With `--queues N` (default 1) both switches serve N queue pairs per
//! socket and each frontend uses them all (`queues=N`, testpmd's `--rxq=N --txq=N`): a
//! forwarding stream per port and queue, each answering on the queue it received on. The
//! frames of such a run (its one-pair tests too) vary their IPv4 source
//! (`--txonly-multi-flow`). The anchor forwards queue `i` of one socket to queue `i` of
//! the other, and so does guestnet's port with its default steering (`--steering queue`);
//! with `--steering flow` it would spread each queue's flows over both pairs. The request/response test keeps the same
//! frames in flight whatever N (each stream starts with `BURST / N`), so the rates compare
//! what the switch pays for more queues, not a deeper pipeline. With N > 1 every test also
//! runs with one queue pair, in the same run, and the result gives each switch's ratio;
//! each measurement counts, from the frontends' per-queue counters, the frames every pair
//! carried each way.
//!
//! The switch is confined to `--switch-cores` CPUs (default 1), the frontends to the
//! others: the frontends busy-poll, and two busy pollers sharing a CPU would measure the
//! scheduler, not the switch. On a 2-core machine the switch gets CPU 0, the
//! request/response frontends CPU 1, and the stream is skipped. The anchor's forwarding
//! threads are one per switch CPU, at most two per queue pair (it has only that many
//! streams of frames to move). Each child is confined from birth (see `process::on_cpus`).
//!
//! A measurement reads the frontends' port counters (`show port stats all`) and the
//! switch's own at the start and the end of the window; the rate is the frames the
//! frontends received, both directions together, per second. The switch's CPU use is its
//! process's user and system time over the window (`/proc/PID/stat`; 1.0 is one CPU busy
//! all the time); guestnet's wake-ups are its peers' receiver wake-up counters, and the
//! voluntary context switches of the switch's threads (`/proc/PID/task/*/status`) count
//! every time it slept, kicks from the frontends included. Then the frontends stop sending
//! and keep receiving (`rxonly`) until what they sent equals what they received plus what
//! the switch counted as dropped, so the counts can add up exactly: for guestnet its
//! network's drops (each frame once) and its vhost-user ports' frames that found no room in
//! a frontend's buffers; for the anchor the frames its vhost PMD could not hand to a full
//! queue (`TX-dropped` of testpmd's forwarding statistics).
//!
//! DPDK wants huge pages: the run reserves what is missing and gives it back at the end,
//! saying so, or runs DPDK on ordinary memory when the kernel has none to give. SIGINT and
//! SIGTERM kill every child; the guards remove the sockets, the network and the directory
//! on every way out.

mod frontends;
mod switch;
mod table;

use frontends::Frontends;
use table::print_table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use super::args::BenchArgs;
use super::netns::TAP_RING_SLOTS;
use super::process::{Interrupt, Workspace, allowed_cpus, machine};
use super::testpmd::{self, HugePages, Instance, Memory, PortStats, Testpmd};
use crate::bench::Throughput;
use crate::cli::LOG_VARIABLE;
use crate::ports::vhost_user::{MAX_QUEUE_PAIRS, Steering};
use switch::{BURST, MACS, POLL_INTERVAL, SIDES, Switch};

/// Descriptors per virtqueue of each frontend.
const QUEUE_SIZE: u32 = 1024;
/// How long the frames still in flight may take to arrive once the senders stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// What the anchor is, as printed.
const ANCHOR_NAME: &str =
    "DPDK's vhost PMD: dpdk-testpmd forwarding (io) between the same two sockets";

/// The whole result, as `--json` prints it.
#[derive(Debug, Serialize)]
struct VhostUserResult {
    mode: &'static str,
    /// Bytes per frame, Ethernet header included.
    frame_size: usize,
    /// Seconds each measurement lasts.
    seconds: f64,
    switch_cores: usize,
    /// Queue pairs of each frontend and switch in the tests below.
    queues: u16,
    /// guestnet's port's steering ("queue" or "flow", see `guestnet vhost-user --help`).
    steering: Steering,
    /// Where the switch ran, and where the frontends did.
    switch_cpus: Vec<usize>,
    frontend_cpus: Vec<usize>,
    /// "huge_pages" or "no_huge_pages".
    memory: Memory,
    /// Slots of each peer's ring in guestnet's network.
    ring_slots: u32,
    machine: String,
    anchor_name: &'static str,
    request_response: Comparison,
    /// One frame in flight each way, one queue pair: the round trip through each switch.
    latency: Option<Comparison>,
    /// `None` on a machine without a CPU for each frontend besides the switch's.
    stream: Option<Comparison>,
    /// Why the stream was not measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_skipped: Option<String>,
    /// With more than one queue pair: the same tests with one, from the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    one_queue_pair: Option<Tests>,
    /// With more than one queue pair: each switch's frames per second with `queues` pairs
    /// ÷ with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_scaling: Option<Scaling>,
}

/// Both tests with one number of queue pairs.
#[derive(Debug, Serialize)]
struct Tests {
    queues: u16,
    request_response: Comparison,
    stream: Option<Comparison>,
}

/// Rates with several queue pairs ÷ rates with one.
#[derive(Debug, Serialize)]
struct Scaling {
    request_response: SwitchRatios,
    stream: Option<SwitchRatios>,
}

#[derive(Debug, Serialize)]
struct SwitchRatios {
    guestnet: f64,
    anchor: f64,
}

impl SwitchRatios {
    fn of(several: &Comparison, one: &Comparison) -> SwitchRatios {
        SwitchRatios {
            guestnet: ratio(several.guestnet.mpps, one.guestnet.mpps),
            anchor: ratio(several.anchor.mpps, one.anchor.mpps),
        }
    }
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

/// One test, through guestnet and through the anchor.
#[derive(Debug, Clone, Serialize)]
struct Comparison {
    /// Frames kept in flight (request/response), or none (stream: as many as fit).
    frames_in_flight: Option<u64>,
    guestnet: Measured,
    anchor: Measured,
    /// guestnet ÷ anchor frames per second.
    ratio: f64,
    /// With frames in flight: guestnet's round trip ÷ the anchor's (the inverse of
    /// `ratio`; the latency target is ≤ 1.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    round_trip_ratio: Option<f64>,
}

/// One switch's figures in one test.
#[derive(Debug, Clone, Serialize)]
struct Measured {
    /// Million frames per second received by the frontends, both directions together.
    mpps: f64,
    /// The same in gigabits per second (frame bytes only).
    gbit_s: f64,
    /// With frames in flight (request/response, latency): the mean round trip a → b → a in
    /// microseconds, `2 × frames in flight ÷ frames per second`, the frontends' turns
    /// included.
    #[serde(skip_serializing_if = "Option::is_none")]
    round_trip_us: Option<f64>,
    /// guestnet: its peers' receiver wake-ups per frame. None for the anchor, which never
    /// sleeps.
    wakeups_per_frame: Option<f64>,
    /// Times the switch's threads went to sleep, per frame (voluntary context switches).
    sleeps_per_frame: f64,
    /// CPU time the switch used per second of the window (1.0 = one CPU all the time).
    switch_cpu: f64,
    /// Frame counts over the whole test, a → b then b → a.
    directions: [Direction; 2],
    /// The switch's drops by reason.
    drops_by_reason: BTreeMap<String, u64>,
    /// Frame counts over the whole test by queue pair, from the frontends' per-queue
    /// counters.
    queue_pairs: Vec<QueuePair>,
}

/// Frames one queue pair carried over a whole test.
#[derive(Debug, Clone, Serialize)]
struct QueuePair {
    queue: u16,
    /// Sent on it by `a`'s frontend, then by `b`'s.
    sent: [u64; 2],
    /// Received on it by `a`'s frontend, then by `b`'s.
    received: [u64; 2],
}

/// Frames one way over a whole test, counted once every frame in flight has arrived.
#[derive(Debug, Clone, Serialize)]
struct Direction {
    from: &'static str,
    to: &'static str,
    /// Sent by the frontend `from` (its port's transmit counter).
    sent: u64,
    /// Received by the frontend `to`.
    received: u64,
    /// Dropped on the way, as the switch counted them.
    dropped: u64,
    /// `sent - received - dropped`: zero when the counts add up.
    unaccounted: i64,
}

/// Runs `bench --vhost-user`.
pub(super) fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let testpmd = testpmd::preflight("guestnet bench --vhost-user")?;
    if args.queues == 0 || args.queues > MAX_QUEUE_PAIRS {
        bail!(
            "--queues must be between 1 and {MAX_QUEUE_PAIRS}, not {}",
            args.queues
        );
    }
    let cpus = Cpus::split(args.switch_cores)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let interrupt = Interrupt::install()?;
    let stream_skipped = cpus.stream().is_none().then(|| {
        format!(
            "the stream needs {} CPUs ({} for the switch, one for each frontend); this \
             command may use {}",
            args.switch_cores + 2,
            args.switch_cores,
            cpus.switch.len() + cpus.frontends.len()
        )
    });
    // The anchor, and the frontends of one test: two testpmds, or three for the stream.
    let huge_pages = HugePages::reserve(if stream_skipped.is_none() { 3 } else { 2 });
    let workspace = Workspace::create()?;
    let ring_slots = args.ring_slots.unwrap_or(TAP_RING_SLOTS);

    progress(&format!(
        "guestnet: vhost-user ports on CPU {}, DPDK frontends on CPU {}, {} s per test",
        list(&cpus.switch),
        list(&cpus.frontends),
        args.seconds
    ));
    if std::env::var_os(LOG_VARIABLE).is_none() {
        progress(&format!(
            "the frontends' guest memory is not sealed (DPDK's never is), which the port \
             warns about for every connection; left out of this run ({LOG_VARIABLE}=warn shows it)"
        ));
    }
    // One queue pair first, for comparison, when the run is about several.
    let counts = if args.queues > 1 {
        vec![1, args.queues]
    } else {
        vec![1]
    };
    let memory = huge_pages.memory();
    let mut runs = Vec::new();
    for queues in counts {
        let plan = Plan {
            args,
            testpmd: &testpmd,
            cpus: &cpus,
            queues,
            memory,
            interrupt: &interrupt,
        };
        runs.push(plan.run(&workspace, ring_slots)?);
    }
    drop(workspace);
    drop(huge_pages);
    // The latency test runs with one queue pair only: in the first run.
    let latency = runs.first_mut().and_then(|(_, latency)| latency.take());
    let (several, _) = runs.pop().context("no test ran")?;
    let one_queue_pair = runs.pop().map(|(tests, _)| tests);
    let queue_scaling = one_queue_pair.as_ref().map(|one| Scaling {
        request_response: SwitchRatios::of(&several.request_response, &one.request_response),
        stream: several
            .stream
            .as_ref()
            .zip(one.stream.as_ref())
            .map(|(several, one)| SwitchRatios::of(several, one)),
    });
    let result = VhostUserResult {
        mode: "vhost-user",
        frame_size: args.frame_size,
        seconds: args.seconds,
        switch_cores: args.switch_cores,
        queues: several.queues,
        steering: args.steering,
        switch_cpus: cpus.switch.clone(),
        frontend_cpus: cpus.frontends.clone(),
        memory,
        ring_slots,
        machine: machine(),
        anchor_name: ANCHOR_NAME,
        request_response: several.request_response,
        latency,
        stream: several.stream,
        stream_skipped,
        one_queue_pair,
        queue_scaling,
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print_table(&result, &command);
    }
    Ok(())
}

fn progress(what: &str) {
    eprintln!("guestnet bench: {what}");
}

fn list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Which CPUs the switch gets and which the frontends get.
#[derive(Debug)]
struct Cpus {
    switch: Vec<usize>,
    frontends: Vec<usize>,
}

impl Cpus {
    fn split(switch_cores: usize) -> anyhow::Result<Cpus> {
        let allowed = allowed_cpus();
        if allowed.len() < 2 {
            bail!(
                "guestnet bench --vhost-user needs 2 CPUs or more: the DPDK frontends \
                 busy-poll, and sharing the switch's CPU with them would measure the \
                 scheduler; this command may use {}",
                allowed.len()
            );
        }
        if switch_cores == 0 || switch_cores >= allowed.len() {
            bail!(
                "--switch-cores must be between 1 and {} here: the frontends need a CPU \
                 the switch does not use",
                allowed.len() - 1
            );
        }
        let (switch, frontends) = allowed.split_at(switch_cores);
        Ok(Cpus {
            switch: switch.to_vec(),
            frontends: frontends.to_vec(),
        })
    }

    /// The request/response frontends' CPUs: a forwarding thread for each stream (port and
    /// queue) at most.
    fn request_response(&self, queues: u16) -> Vec<usize> {
        self.frontends
            .iter()
            .copied()
            .take(2 * usize::from(queues))
            .collect()
    }

    /// The stream's sending and receiving frontends' CPUs, if there are two.
    fn stream(&self) -> Option<(usize, usize)> {
        Some((*self.frontends.first()?, *self.frontends.get(1)?))
    }

    /// The anchor's forwarding CPUs: it has two streams of frames per queue pair to move at
    /// most.
    fn anchor(&self, queues: u16) -> Vec<usize> {
        self.switch
            .iter()
            .copied()
            .take(2 * usize::from(queues))
            .collect()
    }
}

/// The two tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    RequestResponse,
    /// Request/response with one frame from each port.
    Latency,
    Stream,
}

/// Frames in flight in the latency test: one from each port.
const LATENCY_IN_FLIGHT: u64 = 2;

/// One switch's tests.
struct Measurements {
    looped: Measured,
    latency: Option<Measured>,
    stream: Option<Measured>,
}

impl Measured {
    /// These figures with the round trip that `frames` in flight at this rate take.
    fn in_flight(self, frames: u64) -> Measured {
        let round_trip_us = (self.mpps > 0.0).then(|| 2.0 * frames as f64 / self.mpps);
        Measured {
            round_trip_us,
            ..self
        }
    }
}

/// Everything a measurement needs.
struct Plan<'a> {
    args: &'a BenchArgs,
    testpmd: &'a Path,
    cpus: &'a Cpus,
    /// Queue pairs of the switches and the frontends.
    queues: u16,
    memory: Memory,
    interrupt: &'a Interrupt,
}

impl Plan<'_> {
    /// The tests through guestnet, then through the anchor; the latency test's
    /// comparison beside them (with one queue pair only).
    fn run(
        &self,
        workspace: &Workspace,
        ring_slots: u32,
    ) -> anyhow::Result<(Tests, Option<Comparison>)> {
        let queues = self.queues;
        let pairs = if queues == 1 { "pair" } else { "pairs" };
        progress(&format!("{queues} queue {pairs}"));
        let guestnet = {
            let mut switch = Switch::guestnet(
                workspace,
                ring_slots,
                &self.cpus.switch,
                (queues, self.args.steering),
                self.interrupt,
            )?;
            self.both_tests(&mut switch)?
        };
        progress(&format!("anchor: {ANCHOR_NAME}"));
        let anchor = {
            let mut switch = Switch::anchor(
                workspace,
                self.testpmd,
                self.cpus.anchor(queues),
                queues,
                self.memory,
                self.interrupt,
            )?;
            let measured = self.both_tests(&mut switch)?;
            switch.stop()?;
            measured
        };
        let compare = |guestnet: Measured, anchor: Measured, frames_in_flight: Option<u64>| {
            let (guestnet, anchor) = match frames_in_flight {
                Some(frames) => (guestnet.in_flight(frames), anchor.in_flight(frames)),
                None => (guestnet, anchor),
            };
            Comparison {
                frames_in_flight,
                ratio: ratio(guestnet.mpps, anchor.mpps),
                round_trip_ratio: guestnet
                    .round_trip_us
                    .zip(anchor.round_trip_us)
                    .map(|(ours, theirs)| ratio(ours, theirs)),
                guestnet,
                anchor,
            }
        };
        let tests = Tests {
            queues,
            request_response: compare(
                guestnet.looped,
                anchor.looped,
                Some(self.frames_in_flight()),
            ),
            stream: guestnet
                .stream
                .zip(anchor.stream)
                .map(|(guestnet, anchor)| compare(guestnet, anchor, None)),
        };
        let latency = guestnet
            .latency
            .zip(anchor.latency)
            .map(|(guestnet, anchor)| compare(guestnet, anchor, Some(LATENCY_IN_FLIGHT)));
        Ok((tests, latency))
    }

    /// Frames each request/response stream (a port's queue) starts with: the same in
    /// flight in all, whatever the queue pairs.
    fn burst_per_queue(&self) -> u64 {
        (BURST / u64::from(self.queues)).max(1)
    }

    /// Frames in flight in the request/response test: a burst from each queue of both
    /// ports.
    fn frames_in_flight(&self) -> u64 {
        2 * u64::from(self.queues) * self.burst_per_queue()
    }

    /// The request/response test, the latency test with one queue pair, then the stream
    /// where there are CPUs for it.
    fn both_tests(&self, switch: &mut Switch) -> anyhow::Result<Measurements> {
        let looped = self.measure(switch, Test::RequestResponse)?;
        let latency = if self.queues == 1 {
            Some(self.measure(switch, Test::Latency)?)
        } else {
            None
        };
        let stream = if self.cpus.stream().is_some() {
            Some(self.measure(switch, Test::Stream)?)
        } else {
            None
        };
        Ok(Measurements {
            looped,
            latency,
            stream,
        })
    }

    /// Runs one test through `switch`: frontends up, a window of traffic, the drain.
    fn measure(&self, switch: &mut Switch, test: Test) -> anyhow::Result<Measured> {
        let name = match test {
            Test::RequestResponse => "request/response",
            Test::Latency => "latency (one frame in flight each way)",
            Test::Stream => "stream",
        };
        progress(&format!("{}: {name}", switch.name()));
        let mut frontends = self.frontends(switch.sockets(), test)?;
        switch.wait_for_frontends(true, self.interrupt)?;
        let base = (frontends.counts()?, switch.sample()?);
        let queues_base = frontends.queue_counts()?;
        match test {
            Test::RequestResponse | Test::Latency => {
                frontends.command(0, "start tx_first")?;
            }
            Test::Stream => {
                // The receiver first, so the first frame finds it polling.
                frontends.command(1, "start")?;
                frontends.command(0, "start")?;
            }
        }
        let start = (Instant::now(), frontends.counts()?, switch.sample()?);
        frontends.pause(Duration::from_secs_f64(self.args.seconds))?;
        let end = (Instant::now(), frontends.counts()?, switch.sample()?);
        // Stop sending; keep receiving until every frame sent has arrived or was dropped.
        match test {
            Test::RequestResponse | Test::Latency => {
                frontends.command(0, "stop")?;
                frontends.command(0, "set fwd rxonly")?;
                frontends.command(0, "start")?;
            }
            Test::Stream => {
                frontends.command(0, "stop")?;
            }
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let (counts, mut drained) = loop {
            let counts = frontends.counts()?;
            let sample = switch.sample()?;
            let directions = directions(&base.0, &counts, base.1.dropped, sample.dropped);
            if directions.iter().all(|d| d.unaccounted == 0) || Instant::now() >= deadline {
                break (counts, sample);
            }
            frontends.pause(POLL_INTERVAL)?;
        };
        frontends.stop_receiving(test)?;
        let queues_end = frontends.queue_counts()?;
        frontends.quit()?;
        switch.wait_for_frontends(false, self.interrupt)?;
        // The ports' own counters are final once the frontends are gone.
        switch.refresh_port_drops(&mut drained)?;

        let (t0, counts0, switch0) = &start;
        let (t1, counts1, switch1) = &end;
        let received: u64 = (0..2)
            .map(|i| counts1[i].rx_packets.saturating_sub(counts0[i].rx_packets))
            .sum();
        let window = t1.duration_since(*t0);
        let throughput = Throughput::of(received, self.args.frame_size, window.as_nanos() as u64);
        let per_frame = |n: u64| {
            if received == 0 {
                0.0
            } else {
                n as f64 / received as f64
            }
        };
        let ticks = rustix::param::clock_ticks_per_second().max(1) as f64;
        let mut drops_by_reason = drained.drops_by_reason.clone();
        for (reason, count) in &base.1.drops_by_reason {
            if let Some(total) = drops_by_reason.get_mut(reason) {
                *total = total.saturating_sub(*count);
            }
        }
        drops_by_reason.retain(|_, count| *count != 0);
        Ok(Measured {
            mpps: throughput.mpps,
            gbit_s: throughput.gbps,
            round_trip_us: None,
            wakeups_per_frame: switch1
                .wakeups
                .zip(switch0.wakeups)
                .map(|(after, before)| per_frame(after.saturating_sub(before))),
            sleeps_per_frame: per_frame(switch1.sleeps.saturating_sub(switch0.sleeps)),
            switch_cpu: switch1.cpu_ticks.saturating_sub(switch0.cpu_ticks) as f64
                / ticks
                / window.as_secs_f64(),
            directions: directions(&base.0, &counts, base.1.dropped, drained.dropped),
            drops_by_reason,
            queue_pairs: queue_pairs(&queues_base, &queues_end),
        })
    }

    /// Starts the frontends of `test` on `sockets`, ready to be told to start.
    fn frontends(&self, sockets: &[PathBuf; 2], test: Test) -> anyhow::Result<Frontends> {
        let device = |number: usize, side: usize| {
            format!(
                "net_virtio_user{number},path={},queues={},queue_size={QUEUE_SIZE},mac={}",
                sockets[side].display(),
                self.queues,
                MACS[side]
            )
        };
        let burst = format!("--burst={BURST}");
        let frame_size = format!("--txpkts={}", self.args.frame_size);
        // A stream per port and queue; frames of many flows, so that a switch that steers
        // by flow uses every queue (only when the run is about several, so that a run
        // with one sends what it always did).
        let mut queue_options = vec![
            format!("--rxq={}", self.queues),
            format!("--txq={}", self.queues),
        ];
        if self.args.queues > 1 {
            queue_options.push("--txonly-multi-flow".into());
        }
        let children = &self.interrupt.children;
        let burst_per_queue = match test {
            Test::Latency => 1,
            _ => self.burst_per_queue(),
        };
        let instances = match test {
            Test::RequestResponse | Test::Latency => vec![Testpmd::start(
                self.testpmd,
                &Instance {
                    name: "frontends",
                    cpus: self.cpus.request_response(self.queues),
                    devices: vec![device(0, 0), device(1, 1)],
                    options: [
                        "--forward-mode=macswap".into(),
                        "--port-topology=loop".into(),
                        format!("--eth-peer=0,{}", MACS[1]),
                        format!("--eth-peer=1,{}", MACS[0]),
                        frame_size,
                        format!("--burst={burst_per_queue}"),
                    ]
                    .into_iter()
                    .chain(queue_options)
                    .collect(),
                },
                self.memory,
                children,
            )?],
            Test::Stream => {
                let (sending, receiving) = self.cpus.stream().context("no CPUs for a stream")?;
                // The receiver first: frames sent to `b` before it is there would be lost.
                let receiver = Testpmd::start(
                    self.testpmd,
                    &Instance {
                        name: "receiving frontend",
                        cpus: vec![receiving],
                        devices: vec![device(0, 1)],
                        options: [
                            "--forward-mode=rxonly".into(),
                            "--port-topology=loop".into(),
                            burst.clone(),
                        ]
                        .into_iter()
                        .chain(queue_options.clone())
                        .collect(),
                    },
                    self.memory,
                    children,
                )?;
                let sender = Testpmd::start(
                    self.testpmd,
                    &Instance {
                        name: "sending frontend",
                        cpus: vec![sending],
                        devices: vec![device(0, 0)],
                        options: [
                            "--forward-mode=txonly".into(),
                            "--port-topology=loop".into(),
                            format!("--eth-peer=0,{}", MACS[1]),
                            frame_size,
                            burst,
                        ]
                        .into_iter()
                        .chain(queue_options)
                        .collect(),
                    },
                    self.memory,
                    children,
                )?;
                vec![sender, receiver]
            }
        };
        let sides = match test {
            Test::RequestResponse | Test::Latency => [(0, 0), (0, 1)],
            Test::Stream => [(0, 0), (1, 0)],
        };
        Ok(Frontends {
            instances,
            sides,
            queues: self.queues,
        })
    }
}

/// Frame counts of a test from its frontends' counters (`base` and `now`) and the
/// switch's drops by direction (`dropped_base` and `dropped_now`), a → b then b → a.
fn directions(
    base: &[PortStats; 2],
    now: &[PortStats; 2],
    dropped_base: [u64; 2],
    dropped_now: [u64; 2],
) -> [Direction; 2] {
    [0, 1].map(|from| {
        let to = 1 - from;
        let sent = now[from].tx_packets.saturating_sub(base[from].tx_packets);
        let received = now[to].rx_packets.saturating_sub(base[to].rx_packets);
        let dropped = dropped_now[from].saturating_sub(dropped_base[from]);
        Direction {
            from: SIDES[from],
            to: SIDES[to],
            sent,
            received,
            dropped,
            unaccounted: sent as i64 - received as i64 - dropped as i64,
        }
    })
}

/// Frames each queue pair carried between the frontends' per-queue counters `base` and
/// `now` (`a`'s, then `b`'s).
fn queue_pairs(base: &[Vec<PortStats>; 2], now: &[Vec<PortStats>; 2]) -> Vec<QueuePair> {
    let queues = now[0].len().min(now[1].len());
    (0..queues)
        .map(|q| {
            let delta = |side: usize, field: fn(&PortStats) -> u64| {
                let before = base[side].get(q).map_or(0, field);
                now[side].get(q).map_or(0, field).saturating_sub(before)
            };
            QueuePair {
                queue: q as u16,
                sent: [0, 1].map(|side| delta(side, |p| p.tx_packets)),
                received: [0, 1].map(|side| delta(side, |p| p.rx_packets)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_count_what_each_side_sent_and_the_other_received() {
        let port = |rx_packets, tx_packets| PortStats {
            rx_packets,
            tx_packets,
            tx_dropped: 0,
        };
        let base = [port(0, 0); 2];
        let now = [port(90, 100), port(97, 95)];
        let [ab, ba] = directions(&base, &now, [1, 0], [4, 5]);
        assert_eq!((ab.from, ab.to), ("a", "b"));
        // a sent 100, b received 97, the switch dropped 3 of them (4 counted, 1 before).
        assert_eq!(
            (ab.sent, ab.received, ab.dropped, ab.unaccounted),
            (100, 97, 3, 0)
        );
        // b sent 95, a received 90, the switch dropped 5: all there.
        assert_eq!(
            (ba.sent, ba.received, ba.dropped, ba.unaccounted),
            (95, 90, 5, 0)
        );
    }

    #[test]
    fn queue_pairs_count_each_pairs_frames_over_the_test() {
        let stats = |counts: &[(u64, u64)]| -> Vec<PortStats> {
            counts
                .iter()
                .map(|&(rx_packets, tx_packets)| PortStats {
                    rx_packets,
                    tx_packets,
                    tx_dropped: 0,
                })
                .collect()
        };
        let base = [stats(&[(1, 2), (3, 4)]), stats(&[(5, 6), (7, 8)])];
        let now = [stats(&[(11, 12), (3, 24)]), stats(&[(15, 16), (17, 8)])];
        let pairs = queue_pairs(&base, &now);
        assert_eq!(pairs.len(), 2);
        assert_eq!((pairs[0].sent, pairs[0].received), ([10, 10], [10, 10]));
        assert_eq!((pairs[1].sent, pairs[1].received), ([20, 0], [0, 10]));
    }

    #[test]
    fn the_switch_gets_the_first_cpus_and_the_frontends_the_rest() {
        let cpus = Cpus {
            switch: vec![0],
            frontends: vec![1],
        };
        assert_eq!(cpus.request_response(1), [1]);
        assert_eq!(cpus.request_response(2), [1]);
        assert_eq!(
            cpus.stream(),
            None,
            "two frontends on one CPU measure the scheduler"
        );
        let cpus = Cpus {
            switch: vec![0, 1, 2],
            frontends: vec![3, 4, 5],
        };
        assert_eq!(cpus.request_response(1), [3, 4]);
        assert_eq!(cpus.request_response(2), [3, 4, 5]);
        assert_eq!(cpus.stream(), Some((3, 4)));
        assert_eq!(cpus.anchor(1), [0, 1]);
        assert_eq!(cpus.anchor(2), [0, 1, 2]);
    }
}
