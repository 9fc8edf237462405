//! Chaos: members of every kind under load while random members are killed or frozen
//! (DESIGN §4, invariants 1, 2, 4 and 7).
//!
//! The cast, each a real process except the two socket clients:
//!
//! * three `sink`s, each publishing a fixed MAC, verifying every frame they receive;
//! * four `pktgen`s sending numbered, checksummed frames to those MACs at a steady rate;
//! * a `capture` writing every frame of the network as pcap to its stdout, which the test
//!   reads and verifies as it comes;
//! * a `stream` port with a client thread of the test writing test frames to a sink, and a
//!   `dgram` port with another; both clients verify what the network sends back to them.
//!
//! For [`chaos_duration`] a chaos loop picks a random running member now and then, and
//! either SIGKILLs it (then starts a replacement) or SIGSTOPs it and SIGCONTs it up to half
//! a second later. Several members may be frozen at once. The schedule comes from a seed
//! that is printed; `GUESTNET_CHAOS_SEED` replays it (as far as timing allows).
//!
//! Meanwhile the test samples every sink's receive counter every 100 ms. A sink that is
//! running while one of its senders is running must keep receiving: the longest stretch
//! without a frame must stay under a second. (The design promises 100 ms; that bound is
//! for a benchmark to measure, since two CI cores shared with other jobs cannot keep it.)
//!
//! Afterwards everyone is resumed, the senders are stopped, the rings drain, the receivers
//! stop and report, and every member has left. Then:
//!
//! * nothing arrived damaged, twice or out of order, at any sink, the capture or a client;
//! * the network's counters add up: the counters of everyone who ever joined have been
//!   added into the retired totals, so every copy a sender counted as delivered or dropped
//!   must show up on the receiving side as received or dropped, and the other way round.
//!
//! **Killed members take their last batch's counts with them.** A peer adds its counts up
//! privately during a batch and writes them once at its end (`network::counters`), so a
//! member killed halfway through a batch never counts its part of it: frames it sent
//! arrive without having been counted as sent, frames it took from its ring were never
//! counted as received. The identity therefore holds up to one batch per killed member, on
//! the side that member was on; the test allows that, by the batch sizes of each kind of
//! member, and prints the difference it found.
//!
//! Receivers that leave while frames are on their way to them are counted too: a copy
//! refused as `peer_gone`, a frame left unread, and a writer caught mid-copy (`stalled`)
//! are all counted on the departed receiver's behalf in the retired totals (the two
//! deterministic cases are in `tests/network.rs`).

use std::collections::{BTreeMap, HashMap};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use guestnet::network::counters::PeerCounters;
use guestnet::network::{CreateOptions, Network, NetworkStatus};
use guestnet::ports::{capture, dgram};
use guestnet::shm::Mapping;
use guestnet::shm::layout::{Geometry, Header, Layout, PeerEntry, status as entry_status};
use guestnet::testframe::{self, Verdict};
use guestnet::wire::MacAddress;
use guestnet::wire::pcap::{PcapError, PcapReader};
use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;

const NET: &str = "chaos";
/// Room for the cast, the two clients' peers and the dead awaiting reclaim.
const MAX_PEERS: u32 = 24;
/// Small rings, so that a frozen receiver fills its ring and senders count `ring_full`.
const RING_SLOTS: u32 = 256;

/// Which sink each `pktgen` sends to; the first sink gets two of them.
const PKTGEN_TARGETS: [usize; 4] = [0, 0, 1, 2];
const SINKS: usize = 3;
/// The sink the stream client sends to, and the one the datagram client sends to, so
/// that every sink has two senders.
const STREAM_TARGET: usize = 1;
const DGRAM_TARGET: usize = 2;
/// Frames per second of each `pktgen`.
const PKTGEN_RATE: u64 = 10_000;
/// Frames each socket client writes per millisecond.
const CLIENT_FRAMES_PER_MS: u64 = 4;

/// Time between two chaos actions, milliseconds.
const ACTION_GAP_MS: (u64, u64) = (50, 250);
/// Longest freeze, milliseconds.
const LONGEST_STOP_MS: u64 = 500;
/// One action in this many is a kill; the others freeze.
const KILL_ONE_IN: u64 = 3;

/// How often the sinks' counters are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Longest a running sink may go without a frame while one of its senders runs.
const LONGEST_STALL: Duration = Duration::from_secs(1);

/// Longest a (re)started member may take to be up.
const START_BOUND: Duration = Duration::from_secs(10);
/// Longest a member may take to stop after SIGTERM, or the rings to drain.
const FINISH_BOUND: Duration = Duration::from_secs(20);

/// A frame a killed sender never counted went to at most every other peer (a frame to a
/// sink that is gone floods).
const COPIES_PER_FRAME_BOUND: u64 = MAX_PEERS as u64 - 1;
/// Frames of one `sink` or `pktgen` receive batch (`RECEIVE_BUDGET` of `guestnet::cli::traffic`).
const TRAFFIC_RECEIVE_BUDGET: u64 = 256;
/// Frames a stream or dgram port's writer takes from its ring at once (their `WRITE_BUDGET`).
const PORT_WRITE_BUDGET: u64 = 64;
/// Frames one read of a stream port can hold: its decoder reads at most a largest frame
/// and its length prefix (1522 + 4 bytes), and our shortest record is 60 + 4 bytes.
const STREAM_READ_FRAMES: u64 = 1526 / 64;

/// Sender identities of the socket clients' frames; `pktgen`s use role × 1000 + n.
const STREAM_IDS: u32 = 50_000;
const DGRAM_ID: u32 = 60_000;

/// Drop reasons nothing in this test may cause: every frame is well formed and addressed,
/// nobody is quarantined and no slot is scribbled on.
const IMPOSSIBLE_DROPS: [&str; 4] = ["invalid", "no_route", "quarantined", "corrupt"];

/// How long the chaos lasts: `GUESTNET_CHAOS_SECONDS`, else a minute under CI and ten
/// seconds for a developer's run.
fn chaos_duration() -> Duration {
    if let Ok(text) = std::env::var("GUESTNET_CHAOS_SECONDS") {
        let seconds: f64 = text
            .parse()
            .unwrap_or_else(|_| panic!("GUESTNET_CHAOS_SECONDS={text:?} is not a number"));
        return Duration::try_from_secs_f64(seconds)
            .unwrap_or_else(|e| panic!("GUESTNET_CHAOS_SECONDS={text:?}: {e}"));
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(10)
    }
}

/// The seed of the chaos schedule: `GUESTNET_CHAOS_SEED` (decimal or 0x-hex), else the clock.
fn chaos_seed() -> u64 {
    match std::env::var("GUESTNET_CHAOS_SEED") {
        Ok(text) => {
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("GUESTNET_CHAOS_SEED={text:?} is not a number"))
        }
        Err(_) => guestnet::network::unix_ns(),
    }
}

/// A small deterministic generator (xorshift64*).
struct Random(u64);

impl Random {
    fn new(seed: u64) -> Random {
        // Xorshift never leaves zero.
        Random(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// The MAC sink `index` publishes in every incarnation, so its senders find it again.
fn sink_mac(index: usize) -> MacAddress {
    MacAddress([0x02, 0xc4, 0xa0, 0x5e, 0x00, index as u8])
}

/// Frame sizes of the socket clients: varied, and small enough for many per write.
fn client_frame_len(sequence: u64) -> usize {
    60 + (sequence.wrapping_mul(7919) % 541) as usize
}

// ---------------------------------------------------------------------------------------
// Verifying frames in the test process.

/// What the test's own receivers (the capture reader, the socket clients) found. These
/// outlive the processes, unlike what a killed `sink` saw.
#[derive(Default)]
struct Findings {
    frames: AtomicU64,
    corrupt: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    foreign: AtomicU64,
}

/// The last sequence number seen per sender, for one receiver.
#[derive(Default)]
struct OrderCheck(HashMap<u32, u64>);

impl Findings {
    fn judge(&self, order: &mut OrderCheck, frame: &[u8], receiver: &str) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        match testframe::verify(frame) {
            Verdict::Valid(valid) => match order.0.get_mut(&valid.sender) {
                None => {
                    order.0.insert(valid.sender, valid.sequence);
                }
                Some(last) if valid.sequence > *last => *last = valid.sequence,
                Some(last) if valid.sequence == *last => {
                    self.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                Some(last) => {
                    let count = self.out_of_order.fetch_add(1, Ordering::Relaxed);
                    if count < 10 {
                        eprintln!(
                            "{receiver}: sender {} frame {} after {last}",
                            valid.sender, valid.sequence
                        );
                    }
                }
            },
            Verdict::Foreign => {
                self.foreign.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Corrupt(why) => {
                let count = self.corrupt.fetch_add(1, Ordering::Relaxed);
                if count < 10 {
                    eprintln!(
                        "{receiver}: corrupt frame of {} bytes: {why:?}",
                        frame.len()
                    );
                }
            }
        }
    }

    fn assert_clean(&self, who: &str) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let (corrupt, duplicates, out_of_order, foreign) = (
            load(&self.corrupt),
            load(&self.duplicates),
            load(&self.out_of_order),
            load(&self.foreign),
        );
        assert_eq!(
            (corrupt, duplicates, out_of_order, foreign),
            (0, 0, 0, 0),
            "{who}: corrupt, duplicated, out-of-order and foreign frames"
        );
    }
}

/// Errors the test's helper threads met, reported by the main thread.
type Problems = Arc<Mutex<Vec<String>>>;

fn report_problem(problems: &Problems, problem: String) {
    eprintln!("problem: {problem}");
    problems
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(problem);
}

/// Reads a capture's pcap stream and verifies every frame, until the capture ends. Fails
/// on a stream that ends mid-record, as a killed capture's may.
fn verify_pcap(
    stdout: std::process::ChildStdout,
    findings: &Findings,
    name: &str,
) -> Result<(), PcapError> {
    let mut reader = PcapReader::new(BufReader::with_capacity(1 << 20, stdout))?;
    let mut order = OrderCheck::default();
    while let Some(record) = reader.next_record()? {
        findings.judge(&mut order, &record.data, name);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The socket clients: threads of the test that play a VM behind a stream or dgram port.

/// Both socket clients; dropping this stops them.
struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<ClientThread>,
    /// Frames the clients handed to their ports.
    written: Arc<AtomicU64>,
    findings: Arc<Findings>,
}

struct ClientThread {
    name: &'static str,
    thread: Option<JoinHandle<()>>,
    /// Closed when the thread ends, however it ends.
    ended: Receiver<()>,
}

impl Clients {
    fn start(dir: &Path, problems: &Problems) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let findings = Arc::new(Findings::default());
        let mut threads = Vec::new();
        let context = ClientContext {
            stop: Arc::clone(&stop),
            written: Arc::clone(&written),
            findings: Arc::clone(&findings),
            problems: Arc::clone(problems),
        };
        let stream_path = dir.join("stream.sock");
        let spawn = |name: &'static str, body: Box<dyn FnOnce() + Send>| {
            let (ended_tx, ended) = mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                // Dropped when the body returns or panics: the main thread's bounded wait
                // sees the channel close.
                let _ended = ended_tx;
                body();
            });
            ClientThread {
                name,
                thread: Some(thread),
                ended,
            }
        };
        let stream_context = context.clone();
        threads.push(spawn(
            "stream client",
            Box::new(move || stream_client(&stream_path, &stream_context)),
        ));
        let (port, own) = (dir.join("dgram.sock"), dir.join("dgram-client.sock"));
        threads.push(spawn(
            "dgram client",
            Box::new(move || dgram_client(&port, &own, &context)),
        ));
        Clients {
            stop,
            threads,
            written,
            findings,
        }
    }

    /// Stops both clients and waits (bounded) for their threads.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for client in &mut self.threads {
            match client.ended.recv_timeout(FINISH_BOUND) {
                Err(RecvTimeoutError::Disconnected) => {}
                Ok(()) | Err(RecvTimeoutError::Timeout) => {
                    panic!("{} did not stop within {FINISH_BOUND:?}", client.name)
                }
            }
            if let Some(thread) = client.thread.take() {
                assert!(thread.join().is_ok(), "{} panicked", client.name);
            }
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct ClientContext {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    findings: Arc<Findings>,
    problems: Problems,
}

impl ClientContext {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Connects to the stream port again and again (it is killed now and then) and writes
/// test frames to [`STREAM_TARGET`]; each connection is a new peer, so it gets a sender
/// identity and a MAC of its own. A second thread reads and verifies what comes back.
fn stream_client(path: &Path, context: &ClientContext) {
    let mut connections = 0u32;
    while !context.stopping() {
        let Ok(socket) = UnixStream::connect(path) else {
            // The port is being replaced: try again shortly (pacing, not synchronisation).
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        connections += 1;
        let id = STREAM_IDS + connections;
        let src = MacAddress([
            0x02,
            0xc4,
            0x5e,
            0x01,
            (connections >> 8) as u8,
            connections as u8,
        ]);
        let reader = match socket.try_clone() {
            Ok(clone) => {
                let findings = Arc::clone(&context.findings);
                Some(std::thread::spawn(move || {
                    read_stream(
                        clone,
                        &findings,
                        &format!("stream connection {connections}"),
                    )
                }))
            }
            Err(e) => {
                report_problem(&context.problems, format!("clone a stream socket: {e}"));
                None
            }
        };
        let dst = sink_mac(STREAM_TARGET);
        let (mut frame, mut records) = (Vec::new(), Vec::new());
        let mut sequence = 0u64;
        while !context.stopping() {
            records.clear();
            for _ in 0..CLIENT_FRAMES_PER_MS {
                let len = client_frame_len(sequence);
                testframe::encode(&mut frame, dst, src, id, sequence, len);
                records.extend_from_slice(&(frame.len() as u32).to_be_bytes());
                records.extend_from_slice(&frame);
                sequence += 1;
            }
            // Blocking, never timed out: a record cut short would put the stream out of
            // step. A frozen port blocks us until it is resumed; a killed one fails this.
            if (&socket).write_all(&records).is_err() {
                break;
            }
            context
                .written
                .fetch_add(CLIENT_FRAMES_PER_MS, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = socket.shutdown(std::net::Shutdown::Both);
        if let Some(reader) = reader
            && reader.join().is_err()
        {
            report_problem(&context.problems, "the stream reader panicked".into());
        }
    }
}

/// Reads length-prefixed frames until the connection ends.
fn read_stream(socket: UnixStream, findings: &Findings, name: &str) {
    let mut input = BufReader::new(socket);
    let mut order = OrderCheck::default();
    let mut frame = Vec::new();
    loop {
        let mut prefix = [0u8; 4];
        if input.read_exact(&mut prefix).is_err() {
            return;
        }
        frame.resize(u32::from_be_bytes(prefix) as usize, 0);
        if frame.len() > 65_536 || input.read_exact(&mut frame).is_err() {
            return;
        }
        findings.judge(&mut order, &frame, name);
    }
}

/// Sends test frames to [`DGRAM_TARGET`] through the dgram port from one bound socket for
/// the whole test (each port incarnation makes it a new peer on its first datagram), and
/// verifies what comes back on a second thread.
fn dgram_client(port: &Path, own: &Path, context: &ClientContext) {
    let socket = match UnixDatagram::bind(own) {
        Ok(socket) => socket,
        Err(e) => {
            report_problem(&context.problems, format!("bind {}: {e}", own.display()));
            return;
        }
    };
    // Timeouts so that both threads notice the stop flag; a datagram is never cut short.
    let timeouts = socket
        .set_write_timeout(Some(Duration::from_millis(50)))
        .and_then(|()| socket.set_read_timeout(Some(Duration::from_millis(100))));
    let reader = match timeouts.and_then(|()| socket.try_clone()) {
        Ok(clone) => {
            let context = context.clone();
            std::thread::spawn(move || read_datagrams(&clone, &context))
        }
        Err(e) => {
            report_problem(&context.problems, format!("set up the dgram client: {e}"));
            return;
        }
    };
    let (dst, src) = (
        sink_mac(DGRAM_TARGET),
        MacAddress([0x02, 0xc4, 0x5e, 0x02, 0, 1]),
    );
    let mut frame = Vec::new();
    let mut sequence = 0u64;
    while !context.stopping() {
        for _ in 0..CLIENT_FRAMES_PER_MS {
            testframe::encode(
                &mut frame,
                dst,
                src,
                DGRAM_ID,
                sequence,
                client_frame_len(sequence),
            );
            match socket.send_to(&frame, port) {
                Ok(_) => {
                    sequence += 1;
                    context.written.fetch_add(1, Ordering::Relaxed);
                }
                // A frozen port's queue is full; a killed one's socket is stale or
                // being replaced. Try again later.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::NotFound
                    ) =>
                {
                    break;
                }
                Err(e) => {
                    report_problem(&context.problems, format!("dgram send: {e}"));
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if reader.join().is_err() {
        report_problem(&context.problems, "the dgram reader panicked".into());
    }
}

fn read_datagrams(socket: &UnixDatagram, context: &ClientContext) {
    let mut order = OrderCheck::default();
    let mut buffer = vec![0u8; 65_536];
    while !context.stopping() {
        match socket.recv(&mut buffer) {
            Ok(n) => context
                .findings
                .judge(&mut order, &buffer[..n], "dgram client"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                report_problem(&context.problems, format!("dgram receive: {e}"));
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Member processes.

/// A `guestnet` child process. Dropping it kills and reaps it, so a failing test leaves
/// no process behind (SIGKILL ends a stopped process too).
struct Process {
    name: String,
    child: std::process::Child,
    /// Its stdout lines, for the members that print lines.
    lines: Option<Receiver<String>>,
    /// The capture's pcap reader: closed when the stream ends, with how it ended.
    pcap: Option<Receiver<Result<(), String>>>,
}

impl Process {
    fn spawn(
        name: String,
        dir: &Path,
        args: &[&str],
        pcap_findings: Option<Arc<Findings>>,
    ) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_guestnet"))
            .arg("--dir")
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (mut lines, mut pcap) = (None, None);
        match pcap_findings {
            Some(findings) => {
                let (sender, receiver) = mpsc::channel();
                let reader_name = name.clone();
                std::thread::spawn(move || {
                    let outcome = verify_pcap(stdout, &findings, &reader_name);
                    let _ = sender.send(outcome.map_err(|e| e.to_string()));
                });
                pcap = Some(receiver);
            }
            None => {
                let (sender, receiver) = mpsc::channel();
                // A thread, so that waiting for a line can be bounded.
                std::thread::spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        if sender.send(line).is_err() {
                            break;
                        }
                    }
                });
                lines = Some(receiver);
            }
        }
        Process {
            name,
            child,
            lines,
            pcap,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: Signal) {
        kill_process(Pid::from_child(&self.child), signal)
            .unwrap_or_else(|e| panic!("{signal:?} to {}: {e}", self.name));
    }

    /// A line it printed, if one is waiting.
    fn try_line(&self) -> Option<String> {
        self.lines.as_ref().and_then(|lines| lines.try_recv().ok())
    }

    /// Panics if it has exited on its own.
    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited on its own under chaos ({status})", self.name);
        }
    }

    fn kill(&mut self) {
        self.signal(Signal::KILL);
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (bounded) for it to exit; returns its last stdout line.
    fn terminate(&mut self) -> (Option<String>, ExitStatus) {
        self.signal(Signal::TERM);
        let deadline = Instant::now() + FINISH_BOUND;
        let mut last = None;
        if let Some(lines) = &self.lines {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match lines.recv_timeout(left) {
                    Ok(line) => last = Some(line),
                    Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {
                        panic!("{} did not finish within {FINISH_BOUND:?}", self.name)
                    }
                }
            }
        }
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return (last, status),
                Ok(None) => {
                    assert!(
                        Instant::now() < deadline,
                        "{} did not exit within {FINISH_BOUND:?} of SIGTERM",
                        self.name
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("reap {}: {e}", self.name),
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Sink,
    Pktgen,
    Capture,
    StreamPort,
    DgramPort,
}

/// Where an incarnation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Started, not yet on the network (or not yet listening).
    Starting,
    Running,
    /// Frozen by SIGSTOP until the given moment.
    Stopped {
        until: Instant,
    },
}

/// One incarnation of a role.
struct Member {
    process: Process,
    state: State,
    started: Instant,
    /// When it last became able to make progress: up, or resumed from a freeze.
    resumed: Instant,
}

/// A place in the cast, filled by one incarnation after another.
struct Role {
    name: String,
    kind: Kind,
    /// The sink this role's frames go to.
    target: Option<usize>,
    /// Incarnations started so far.
    incarnations: u32,
    member: Option<Member>,
}

/// What the chaos loop did.
#[derive(Default)]
struct Tally {
    kills: BTreeMap<Kind, u64>,
    stops: BTreeMap<Kind, u64>,
    /// Every action, with its time since the chaos began, for failure messages.
    log: Vec<(Duration, String)>,
}

impl Tally {
    fn kills(&self) -> u64 {
        self.kills.values().sum()
    }

    fn stops(&self) -> u64 {
        self.stops.values().sum()
    }
}

/// One up entry of the peer table.
struct Row {
    pid: u32,
    counters: PeerCounters,
}

/// The region's peer table, mapped by the test and only read: watching the members must
/// not sweep for dead peers (as `Network::status` does), or the test would be reclaiming
/// them instead of the survivors.
struct PeerTable {
    mapping: Mapping,
    layout: Layout,
}

impl PeerTable {
    fn open(path: &Path) -> PeerTable {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("open the region");
        let size = file.metadata().expect("region size").len();
        let mapping = Mapping::map(file.as_fd(), size as usize).expect("map the region");
        let header: &Header = mapping.get(0).expect("region header");
        let layout = Layout::from_header(header, size).expect("region layout");
        PeerTable { mapping, layout }
    }

    fn rows(&self) -> Vec<Row> {
        (0..self.layout.geometry.max_peers as usize)
            .filter_map(|index| {
                let entry: &PeerEntry = self.mapping.get(self.layout.peer_offset(index))?;
                (entry.status.load(Ordering::Acquire) == entry_status::UP).then(|| Row {
                    pid: entry.pid.load(Ordering::Relaxed),
                    counters: PeerCounters::read(entry),
                })
            })
            .collect()
    }
}

/// Sums of a process's peers' counters (a socket port has one peer per client).
#[derive(Default, Clone, Copy)]
struct ByProcess {
    tx_packets: u64,
    rx_packets: u64,
}

fn by_process(rows: &[Row]) -> HashMap<u32, ByProcess> {
    let mut sums: HashMap<u32, ByProcess> = HashMap::new();
    for row in rows {
        let sum = sums.entry(row.pid).or_default();
        sum.tx_packets += row.counters.tx_packets;
        sum.rx_packets += row.counters.rx_packets;
    }
    sums
}

/// All members, and what the test knows of them.
struct Cast {
    dir: PathBuf,
    roles: Vec<Role>,
    capture_findings: Arc<Findings>,
    tally: Tally,
    began: Instant,
}

impl Cast {
    fn new(dir: &Path) -> Cast {
        let mut roles = Vec::new();
        let mut role = |name: String, kind, target| {
            roles.push(Role {
                name,
                kind,
                target,
                incarnations: 0,
                member: None,
            })
        };
        for sink in 0..SINKS {
            role(format!("sink {sink}"), Kind::Sink, None);
        }
        for (index, &target) in PKTGEN_TARGETS.iter().enumerate() {
            role(format!("pktgen {index}"), Kind::Pktgen, Some(target));
        }
        role("capture".into(), Kind::Capture, None);
        role("stream port".into(), Kind::StreamPort, Some(STREAM_TARGET));
        role("dgram port".into(), Kind::DgramPort, Some(DGRAM_TARGET));
        Cast {
            dir: dir.to_path_buf(),
            roles,
            capture_findings: Arc::new(Findings::default()),
            tally: Tally::default(),
            began: Instant::now(),
        }
    }

    /// Starts a new incarnation of role `index` (the previous one is gone).
    fn start(&mut self, index: usize) {
        let role = &mut self.roles[index];
        role.incarnations += 1;
        let name = format!("{} #{}", role.name, role.incarnations);
        let dir = self.dir.as_path();
        let path = |file: &str| dir.join(file).to_string_lossy().into_owned();
        let process = match role.kind {
            Kind::Sink => {
                let mac = sink_mac(index).to_string();
                let args = ["sink", NET, "--json", "--timeout", "0", "--mac", &mac];
                Process::spawn(name, dir, &args, None)
            }
            Kind::Pktgen => {
                assert!(role.incarnations < 1000, "sender identities would collide");
                let id = (index as u32 * 1000 + role.incarnations).to_string();
                let dst = sink_mac(role.target.expect("a pktgen has a target")).to_string();
                let rate = PKTGEN_RATE.to_string();
                let args = [
                    "pktgen", NET, "--dst", &dst, "--count", "0", "--rate", &rate, "--size",
                    "60-1514", "--id", &id,
                ];
                Process::spawn(name, dir, &args, None)
            }
            Kind::Capture => {
                let findings = Arc::clone(&self.capture_findings);
                Process::spawn(name, dir, &["capture", NET, "-w", "-"], Some(findings))
            }
            Kind::StreamPort => {
                let socket = path("stream.sock");
                Process::spawn(name, dir, &["stream", NET, "--listen", &socket], None)
            }
            Kind::DgramPort => {
                let socket = path("dgram.sock");
                Process::spawn(name, dir, &["dgram", NET, "--listen", &socket], None)
            }
        };
        let now = Instant::now();
        role.member = Some(Member {
            process,
            state: State::Starting,
            started: now,
            resumed: now,
        });
    }

    /// Moves members that came up to `Running`, resumes those whose freeze is over, and
    /// fails loudly if one died on its own or takes too long to start.
    fn tend(&mut self, rows: &[Row], now: Instant) {
        let on_network: Vec<u32> = rows.iter().map(|r| r.pid).collect();
        for (index, role) in self.roles.iter_mut().enumerate() {
            let Some(member) = role.member.as_mut() else {
                continue;
            };
            member.process.assert_alive();
            match member.state {
                State::Starting => {
                    let up = match role.kind {
                        // `ready SLOT MAC`
                        Kind::Sink => member.process.try_line().map(|line| {
                            let words: Vec<&str> = line.split_whitespace().collect();
                            let mac = sink_mac(index).to_string();
                            assert!(
                                words.len() == 3 && words[0] == "ready" && words[2] == mac,
                                "{}: {line:?}",
                                member.process.name
                            );
                        }),
                        Kind::StreamPort | Kind::DgramPort => {
                            member.process.try_line().map(|line| {
                                assert!(
                                    line.starts_with("listening on "),
                                    "{}: {line:?}",
                                    member.process.name
                                );
                            })
                        }
                        Kind::Pktgen | Kind::Capture => {
                            on_network.contains(&member.process.pid()).then_some(())
                        }
                    };
                    if up.is_some() {
                        member.state = State::Running;
                        member.resumed = now;
                    } else {
                        assert!(
                            now.duration_since(member.started) < START_BOUND,
                            "{} was not up within {START_BOUND:?}",
                            member.process.name
                        );
                    }
                }
                State::Stopped { until } if now >= until => {
                    member.process.signal(Signal::CONT);
                    member.state = State::Running;
                    member.resumed = now;
                }
                State::Stopped { .. } | State::Running => {}
            }
        }
    }

    fn all_running(&self) -> bool {
        self.roles
            .iter()
            .all(|r| r.member.as_ref().is_some_and(|m| m.state == State::Running))
    }

    /// Kills or freezes one random running member.
    fn act(&mut self, random: &mut Random, now: Instant) {
        let running: Vec<usize> = (0..self.roles.len())
            .filter(|&i| {
                self.roles[i]
                    .member
                    .as_ref()
                    .is_some_and(|m| m.state == State::Running)
            })
            .collect();
        if running.is_empty() {
            return;
        }
        let index = running[(random.next() % running.len() as u64) as usize];
        let at = now.duration_since(self.began);
        let kind = self.roles[index].kind;
        if random.next().is_multiple_of(KILL_ONE_IN) {
            if let Some(mut member) = self.roles[index].member.take() {
                member.process.kill();
                self.tally
                    .log
                    .push((at, format!("SIGKILL {}", member.process.name)));
            }
            *self.tally.kills.entry(kind).or_default() += 1;
            self.start(index);
        } else {
            let pause = random.between(1, LONGEST_STOP_MS);
            if let Some(member) = self.roles[index].member.as_mut() {
                member.process.signal(Signal::STOP);
                member.state = State::Stopped {
                    until: now + Duration::from_millis(pause),
                };
                let name = &member.process.name;
                self.tally
                    .log
                    .push((at, format!("SIGSTOP {name} for {pause} ms")));
            }
            *self.tally.stops.entry(kind).or_default() += 1;
        }
    }

    /// The earliest end of a freeze.
    fn next_resume(&self) -> Option<Instant> {
        self.roles
            .iter()
            .filter_map(|r| match r.member.as_ref()?.state {
                State::Stopped { until } => Some(until),
                _ => None,
            })
            .min()
    }

    /// The running member of role `index`, if any.
    fn running(&self, index: usize) -> Option<&Member> {
        self.roles[index]
            .member
            .as_ref()
            .filter(|m| m.state == State::Running)
    }

    /// Roles whose frames go to sink `sink`.
    fn feeders(&self, sink: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.roles.len()).filter(move |&i| self.roles[i].target == Some(sink))
    }

    /// Resumes every frozen member and waits (bounded) until everyone is up.
    fn calm_down(&mut self, table: &PeerTable) {
        let deadline = Instant::now() + START_BOUND;
        loop {
            for role in &mut self.roles {
                if let Some(member) = role.member.as_mut()
                    && let State::Stopped { until } = &mut member.state
                {
                    *until = Instant::now();
                }
            }
            self.tend(&table.rows(), Instant::now());
            if self.all_running() {
                return;
            }
            assert!(Instant::now() < deadline, "the cast did not settle");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops every member of `kind` with SIGTERM; returns what each printed last.
    fn terminate(&mut self, kind: Kind) -> Vec<(String, Option<String>, ExitStatus)> {
        let mut ended = Vec::new();
        for role in self.roles.iter_mut().filter(|r| r.kind == kind) {
            let Some(mut member) = role.member.take() else {
                continue;
            };
            let (last, status) = member.process.terminate();
            if let Some(pcap) = &member.process.pcap {
                match pcap.recv_timeout(FINISH_BOUND) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => panic!("{}: bad pcap stream: {e}", member.process.name),
                    Err(e) => panic!(
                        "{}: the pcap reader did not finish: {e}",
                        member.process.name
                    ),
                }
            }
            ended.push((member.process.name.clone(), last, status));
        }
        ended
    }
}

// ---------------------------------------------------------------------------------------
// Watching for stalls.

/// What the watch knows of one sink.
struct SinkWatch {
    /// The incarnation watched (its pid) and its receive count at the last sample.
    pid: u32,
    rx_packets: u64,
    /// When it was last seen to have received, or last not expected to.
    last_progress: Instant,
    /// Samples taken while it and a sender of its were running, and how many of them
    /// found no new frame.
    fed_samples: u64,
    idle_samples: u64,
    /// The longest it was seen without a new frame while fed (a lower bound of its
    /// longest stall), and when, since the chaos began, that was.
    longest: Duration,
    longest_at: Duration,
    /// The longest time between two samples that saw new frames while it was fed (an
    /// upper bound, which includes the sampling period and any lateness of the sampler).
    longest_between: Duration,
}

struct StallWatch {
    sinks: Vec<SinkWatch>,
    /// Frames each process had sent at the last sample.
    sent: HashMap<u32, u64>,
}

impl StallWatch {
    fn new(now: Instant) -> StallWatch {
        StallWatch {
            sinks: (0..SINKS)
                .map(|_| SinkWatch {
                    pid: 0,
                    rx_packets: 0,
                    last_progress: now,
                    fed_samples: 0,
                    idle_samples: 0,
                    longest: Duration::ZERO,
                    longest_at: Duration::ZERO,
                    longest_between: Duration::ZERO,
                })
                .collect(),
            sent: HashMap::new(),
        }
    }

    /// One sample. A sink is *fed* when it is running and a running sender of its sent
    /// frames since the last sample; only then is a lack of new frames held against it,
    /// and only for the time since it was last resumed or started.
    fn sample(&mut self, cast: &Cast, rows: &[Row], now: Instant) {
        let counts = by_process(rows);
        for (index, watch) in self.sinks.iter_mut().enumerate() {
            let sink = cast.running(index).and_then(|member| {
                let pid = member.process.pid();
                counts
                    .get(&pid)
                    .map(|c| (pid, c.rx_packets, member.resumed))
            });
            let Some((pid, rx_packets, resumed)) = sink else {
                watch.last_progress = now;
                continue;
            };
            let fed = pid == watch.pid
                && cast.feeders(index).any(|feeder| {
                    cast.running(feeder).is_some_and(|member| {
                        let pid = member.process.pid();
                        let before = self.sent.get(&pid);
                        let after = counts.get(&pid).map(|c| c.tx_packets);
                        matches!((before, after), (Some(b), Some(a)) if a > *b)
                    })
                });
            let progressed = rx_packets > watch.rx_packets;
            if fed {
                watch.fed_samples += 1;
                let gap = now.duration_since(watch.last_progress.max(resumed));
                if progressed {
                    watch.longest_between = watch.longest_between.max(gap);
                } else {
                    watch.idle_samples += 1;
                    if gap > watch.longest {
                        watch.longest = gap;
                        watch.longest_at = now.duration_since(cast.began);
                    }
                }
            }
            if progressed || !fed {
                watch.last_progress = now;
            }
            (watch.pid, watch.rx_packets) = (pid, rx_packets);
        }
        self.sent = counts.iter().map(|(&pid, c)| (pid, c.tx_packets)).collect();
    }
}

// ---------------------------------------------------------------------------------------
// The test.

fn network(dir: &Path) -> Network {
    Network::create(
        dir,
        NET,
        CreateOptions {
            geometry: Geometry {
                max_peers: MAX_PEERS,
                ring_slots: RING_SLOTS,
                mtu: 1500,
                ..Geometry::default()
            },
            ..CreateOptions::default()
        },
    )
    .expect("create the network")
}

/// A count from a JSON summary (0 when absent: drop maps list non-zero reasons only).
fn number(value: &Value, path: &[&str]) -> u64 {
    let mut v = value;
    for key in path {
        match v.get(key) {
            Some(inner) => v = inner,
            None => return 0,
        }
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("{path:?} in {value} is not a count"))
}

fn summary(name: &str, last: Option<String>, status: ExitStatus) -> Value {
    let line = last.unwrap_or_else(|| panic!("{name} printed no summary ({status})"));
    assert!(status.success(), "{name} failed ({status}): {line}");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{name}: {line:?} is not JSON: {e}"))
}

#[test]
fn under_kills_and_freezes_every_frame_is_accounted_for_and_no_survivor_stalls() {
    let duration = chaos_duration();
    let seed = chaos_seed();
    eprintln!(
        "chaos for {duration:?}, seed {seed:#x} (replay with GUESTNET_CHAOS_SEED={seed:#x}; \
         set the length with GUESTNET_CHAOS_SECONDS)"
    );
    let test_began = Instant::now();
    let dir = tempfile::tempdir().expect("temporary directory");
    let net = network(dir.path());
    let table = PeerTable::open(&dir.path().join(NET));
    let problems: Problems = Arc::default();

    let mut cast = Cast::new(dir.path());
    for index in 0..cast.roles.len() {
        cast.start(index);
    }
    let mut clients = Clients::start(dir.path(), &problems);
    // Everyone up, and frames reaching every sink, before the chaos begins.
    let deadline = Instant::now() + START_BOUND;
    loop {
        let rows = table.rows();
        cast.tend(&rows, Instant::now());
        let counts = by_process(&rows);
        let receiving = (0..SINKS).all(|sink| {
            cast.running(sink)
                .and_then(|m| counts.get(&m.process.pid()))
                .is_some_and(|c| c.rx_packets > 0)
        });
        if cast.all_running() && receiving {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cast did not start: {:#?}",
            net.status()
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // The chaos. Sleeping here paces the signals and samples; nothing waits on it.
    let mut random = Random::new(seed);
    let began = Instant::now();
    cast.began = began;
    let end = began + duration;
    let mut watch = StallWatch::new(began);
    let mut next_action =
        began + Duration::from_millis(random.between(ACTION_GAP_MS.0, ACTION_GAP_MS.1));
    let mut next_sample = began + SAMPLE_EVERY;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let rows = table.rows();
        cast.tend(&rows, now);
        if now >= next_sample {
            watch.sample(&cast, &rows, now);
            next_sample = (next_sample + SAMPLE_EVERY).max(now);
        }
        if now >= next_action {
            cast.act(&mut random, now);
            next_action =
                now + Duration::from_millis(random.between(ACTION_GAP_MS.0, ACTION_GAP_MS.1));
        }
        let wake = [
            Some(next_action),
            Some(next_sample),
            cast.next_resume(),
            Some(end),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(end);
        let nap = wake.saturating_duration_since(Instant::now());
        std::thread::sleep(nap.min(Duration::from_millis(10)));
    }
    let chaos_took = began.elapsed();

    // Everyone resumed and up; then the senders stop, the rings drain, the receivers stop.
    cast.calm_down(&table);
    clients.stop();
    let written = clients.written.load(Ordering::Relaxed);
    let mut sent_by_survivors = 0;
    for (name, last, status) in cast.terminate(Kind::Pktgen) {
        let summary = summary(&name, last, status);
        for reason in IMPOSSIBLE_DROPS {
            assert_eq!(
                number(&summary, &["tx_drops", reason]),
                0,
                "{name}: {summary}"
            );
        }
        assert_eq!(
            number(&summary, &["accepted"]),
            number(&summary, &["sent"]),
            "{name}: every frame routed: {summary}"
        );
        sent_by_survivors += number(&summary, &["sent"]);
    }
    let drain_deadline = Instant::now() + FINISH_BOUND;
    loop {
        let status = net.status();
        if status.peers.iter().all(|p| p.rx_queued == 0) {
            break;
        }
        assert!(
            Instant::now() < drain_deadline,
            "the rings did not drain within {FINISH_BOUND:?}: {:#?}",
            status.peers
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut received_by_last_sinks = 0;
    for (name, last, status) in cast.terminate(Kind::Sink) {
        let report = summary(&name, last, status);
        for key in ["corrupt", "duplicates", "out_of_order", "foreign"] {
            assert_eq!(number(&report, &[key]), 0, "{name}: {key} in {report}");
        }
        received_by_last_sinks += number(&report, &["received"]);
    }
    for kind in [Kind::Capture, Kind::StreamPort, Kind::DgramPort] {
        for (name, _, status) in cast.terminate(kind) {
            assert!(status.success(), "{name} failed ({status})");
        }
    }
    let status = net.status();
    assert!(
        status.peers.is_empty(),
        "everyone left, yet the table holds {:#?}",
        status.peers
    );

    // What was done, and what came of it.
    let tally = &cast.tally;
    eprintln!(
        "chaos took {chaos_took:?}: {} freezes {:?}, {} kills {:?}",
        tally.stops(),
        tally.stops,
        tally.kills(),
        tally.kills
    );
    eprintln!(
        "surviving pktgens sent {sent_by_survivors}, the clients wrote {written}, the last \
         sinks received {received_by_last_sinks}; the capture verified {} frames, the \
         clients {}",
        cast.capture_findings.frames.load(Ordering::Relaxed),
        clients.findings.frames.load(Ordering::Relaxed)
    );
    for (index, sink) in watch.sinks.iter().enumerate() {
        eprintln!(
            "sink {index}: fed in {} samples, {} without a new frame; longest seen without \
             a frame {:?} (at {:?}); longest between samples with new frames {:?}",
            sink.fed_samples,
            sink.idle_samples,
            sink.longest,
            sink.longest_at,
            sink.longest_between
        );
    }

    let problems = problems.lock().unwrap_or_else(|p| p.into_inner());
    assert!(problems.is_empty(), "helper threads failed: {problems:#?}");
    cast.capture_findings.assert_clean("the capture");
    clients.findings.assert_clean("the socket clients");
    assert!(written > 0, "the socket clients wrote nothing");
    for (index, sink) in watch.sinks.iter().enumerate() {
        assert!(
            sink.fed_samples > 0,
            "sink {index} was never watched while fed"
        );
    }
    assert!(
        cast.capture_findings.frames.load(Ordering::Relaxed) > 0,
        "the capture saw nothing"
    );
    check_accounting(&status, tally, seed);
    for (index, sink) in watch.sinks.iter().enumerate() {
        assert!(
            sink.longest < LONGEST_STALL,
            "sink {index} went {:?} without a frame while fed, up to {:?} into the chaos \
             (seed {seed:#x}); actions around then:\n{}",
            sink.longest,
            sink.longest_at,
            actions_around(tally, sink.longest_at, sink.longest)
        );
    }
    eprintln!("the chaos test took {:?} in all", test_began.elapsed());
}

/// The chaos loop's actions during a stretch of `span` that ended at `end`, and in the
/// second before it.
fn actions_around(tally: &Tally, end: Duration, span: Duration) -> String {
    let from = end.saturating_sub(span + Duration::from_secs(1));
    tally
        .log
        .iter()
        .filter(|(at, _)| *at >= from && *at <= end)
        .map(|(at, what)| format!("  {at:?} {what}\n"))
        .collect()
}

/// The frames of one send batch and of one receive batch that a member of `kind` killed
/// halfway through them never counted.
fn uncounted_by_kill(kind: Kind) -> (u64, u64) {
    match kind {
        Kind::Sink => (0, TRAFFIC_RECEIVE_BUDGET),
        // At a rate, `pktgen` sends a millisecond's worth per batch; it drains its own
        // ring (flooded frames) after each.
        Kind::Pktgen => (PKTGEN_RATE / 1000, TRAFFIC_RECEIVE_BUDGET),
        Kind::Capture => (0, capture::BATCH as u64),
        Kind::StreamPort => (STREAM_READ_FRAMES, PORT_WRITE_BUDGET),
        Kind::DgramPort => (dgram::RECEIVE_BATCH as u64, PORT_WRITE_BUDGET),
    }
}

/// Checks the network-wide accounting identities of `network::counters` on the retired
/// totals, once everyone has left, and prints every figure behind them.
fn check_accounting(status: &NetworkStatus, tally: &Tally, seed: u64) {
    let retired = &status.retired;
    let drops = |side: &str| -> BTreeMap<String, u64> {
        retired
            .drops
            .iter()
            .filter_map(|(name, &count)| Some((name.strip_prefix(side)?.to_string(), count)))
            .collect()
    };
    let (tx_drops, rx_drops) = (drops("tx_"), drops("rx_"));
    eprintln!(
        "retired: tx_packets {}, tx_deliveries {}, rx_packets {}",
        retired.tx_packets, retired.tx_deliveries, retired.rx_packets
    );
    let mut reasons: Vec<&String> = tx_drops.keys().chain(rx_drops.keys()).collect();
    reasons.sort();
    reasons.dedup();
    for reason in &reasons {
        let (tx, rx) = (
            tx_drops.get(*reason).copied().unwrap_or(0),
            rx_drops.get(*reason).copied().unwrap_or(0),
        );
        eprintln!(
            "  {reason:>12}: tx {tx:>9}  rx {rx:>9}  rx - tx {:>7}",
            rx as i64 - tx as i64
        );
    }
    for reason in IMPOSSIBLE_DROPS {
        assert!(
            !tx_drops.contains_key(reason) && !rx_drops.contains_key(reason),
            "no frame here can be dropped as {reason}: {:?}",
            retired.drops
        );
    }
    assert!(retired.tx_deliveries > 0, "no traffic at all");

    // Every copy a sender counted, delivered or dropped, is counted by its receiver:
    // received, dropped on the way in, or discarded unread when it left (peer_gone).
    let sent_copies = retired.tx_deliveries + tx_drops.values().sum::<u64>();
    let received_copies = retired.rx_packets + rx_drops.values().sum::<u64>();
    let difference = received_copies as i64 - sent_copies as i64;
    // tx_packets × destinations: every frame accepted here has at least one destination
    // (its sink, or everyone else while the sink is gone), so it made at least one copy.
    assert!(
        sent_copies >= retired.tx_packets,
        "{} frames were accepted but only {sent_copies} copies counted",
        retired.tx_packets
    );
    // What killed members may have taken with them (see the module doc): a killed sender
    // never counted its last batch's copies, a killed receiver its last batch's frames.
    let kills = tally.kills();
    let (mut uncounted_sent, mut uncounted_received) = (0, 0);
    for (&kind, &count) in &tally.kills {
        let (send_batch, receive_batch) = uncounted_by_kill(kind);
        uncounted_sent += count * send_batch * COPIES_PER_FRAME_BOUND;
        uncounted_received += count * receive_batch;
    }
    eprintln!(
        "copies: senders counted {sent_copies}, receivers {received_copies}: received - sent \
         = {difference} ({:.1} per kill); {kills} kills allow -{uncounted_received}..=+{uncounted_sent}",
        difference as f64 / kills.max(1) as f64
    );
    assert!(
        -(uncounted_received as i64) <= difference && difference <= uncounted_sent as i64,
        "copies counted by senders ({sent_copies}) and by receivers ({received_copies}) differ \
         by {difference}, more than {kills} killed members can explain (seed {seed:#x}): {retired:#?}"
    );
}
