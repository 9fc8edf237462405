//! The vhost-user port against a second, real frontend: DPDK's virtio-user driver, in
//! `dpdk-testpmd`. It is the virtio-net driver a DPDK application inside a VM runs,
//! speaking vhost-user over the port's socket with no VM around it, so these tests check
//! that the port serves a frontend nobody here wrote: its negotiation, its rings, its
//! restarts and its queue pairs.
//!
//! testpmd runs without huge pages (`--no-huge`, its memory in a memfd it shares with the
//! port) and without a terminal (`--stats-period`, or it would exit at once), printing its
//! port counters every second; the tests read those, the port's status and a library
//! peer on the network. Its forwarding core polls without pause, so the tests take turns
//! (one testpmd at a time) and keep their traffic short.
//!
//! They need `dpdk-testpmd` (Debian's `dpdk-dev`) and nothing else: no root, no huge
//! pages. Without it they are skipped with a reason, except under `CI=true`, where a
//! missing testpmd fails them.

#[allow(dead_code)] // the shared mock frontend's harness; this file uses a small part of it
mod vhost_support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use guestnet::network::{CreateOptions, JoinOptions, Network, Peer, PortKind};
use guestnet::wire::MacAddress;
use vhost_support::{Backend, counter, wait_for_status};

const NETWORK: &str = "lab";
const TESTPMD: &str = "dpdk-testpmd";
/// How long testpmd may take to start and connect, and any one expected event after.
const DEADLINE: Duration = Duration::from_secs(15);
/// `VIRTIO_NET_F_MQ`.
const MQ: u64 = 1 << 22;

/// One testpmd at a time: each busy-polls a core, and CI machines have two.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Takes this test's turn, or returns `None` (after saying why) when testpmd is missing
/// outside CI; under `CI=true` a missing testpmd fails the test.
fn turn() -> Option<MutexGuard<'static, ()>> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(TESTPMD).is_file()));
    if !found {
        let reason = format!("the DPDK frontend tests need {TESTPMD} (Debian package dpdk-dev)");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{reason}, and CI must not skip them");
        }
        eprintln!("skipped: {reason}");
        return None;
    }
    // A test that failed while holding the turn leaves nothing behind (its children are
    // killed on drop), so the next one may go.
    Some(ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The CPUs this process may run on, as an EAL CPU set: `(0,1)`.
fn allowed_cpus() -> String {
    let set = rustix::thread::sched_getaffinity(None).expect("sched_getaffinity");
    let cpus: Vec<String> = (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&cpu| set.is_set(cpu))
        .map(|cpu| cpu.to_string())
        .collect();
    format!("({})", cpus.join(","))
}

/// Where EAL keeps a run's files (`--file-prefix`), removed when the run ends.
fn eal_runtime_dir(prefix: &str) -> PathBuf {
    let base = if rustix::process::geteuid().is_root() {
        PathBuf::from("/var/run")
    } else {
        std::env::var_os("XDG_RUNTIME_DIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
    };
    base.join("dpdk").join(prefix)
}

/// Port counters from testpmd's periodic "NIC statistics" block.
#[derive(Debug, Clone, Copy)]
struct PortStats {
    rx_packets: u64,
}

/// One forwarding stream's counters from testpmd's statistics at exit.
#[derive(Debug, Clone, Copy)]
struct StreamStats {
    rx_queue: u32,
    tx_queue: u32,
    rx_packets: u64,
    tx_packets: u64,
}

/// The number after `label` in `text`.
fn number_after(text: &str, label: &str) -> Option<u64> {
    let start = text.find(label)? + label.len();
    text[start..].split_whitespace().next()?.parse().ok()
}

/// A `dpdk-testpmd` with one virtio-user port on a vhost-user socket; killed (SIGKILL)
/// and its EAL files removed however the test ends.
struct Testpmd {
    child: Child,
    prefix: String,
    /// Everything it printed, stdout and stderr, as it came.
    output: Arc<Mutex<String>>,
    mac: MacAddress,
}

impl Testpmd {
    /// Starts testpmd on `socket` with `queues` queue pairs, the port's MAC set to `mac`,
    /// and the application options `forwarding` (mode and its settings).
    fn start(socket: &Path, mac: MacAddress, queues: u16, forwarding: &[&str]) -> Testpmd {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "guestnet-test-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let cpus = allowed_cpus();
        let mut vdev = format!(
            "net_virtio_user0,path={},queue_size=1024,mac={mac}",
            socket.display()
        );
        if queues > 1 {
            vdev.push_str(&format!(",queues={queues}"));
        }
        let mut command = Command::new(TESTPMD);
        command
            // Two lcores (main and one forwarding core), each free to run on any CPU we
            // may use.
            .arg("--lcores")
            .arg(format!("0@{cpus},1@{cpus}"))
            .args(["--no-pci", "--no-huge", "-m", "256", "--no-shconf"])
            .args(["--no-telemetry", "--file-prefix", &prefix])
            .args(["--vdev", &vdev, "--"])
            .args(["--stats-period", "1", "--nb-cores", "1"])
            .args(["--total-num-mbufs", "16384"]);
        if queues > 1 {
            command.arg(format!("--rxq={queues}"));
            command.arg(format!("--txq={queues}"));
        }
        let mut child = command
            .args(forwarding)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dpdk-testpmd");
        let output = Arc::new(Mutex::new(String::new()));
        let streams: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("piped stdout")),
            Box::new(child.stderr.take().expect("piped stderr")),
        ];
        for mut stream in streams {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buffer) {
                    let text = String::from_utf8_lossy(&buffer[..n]);
                    output
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&text);
                }
            });
        }
        Testpmd {
            child,
            prefix,
            output,
            mac,
        }
    }

    fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The port counters of the last complete periodic statistics block, if any yet.
    fn port_stats(&self) -> Option<PortStats> {
        let output = self.output();
        output
            .rmatch_indices("NIC statistics for port 0")
            .map(|(at, _)| &output[at..])
            // A block still being written has no throughput lines yet.
            .find(|block| block.contains("Tx-bps"))
            .and_then(|block| {
                Some(PortStats {
                    rx_packets: number_after(block, "RX-packets:")?,
                })
            })
    }

    /// Waits (bounded by [`DEADLINE`]) until its port counters satisfy `condition`;
    /// fails at once if testpmd exits.
    fn wait_for_stats(&mut self, what: &str, condition: impl Fn(PortStats) -> bool) -> PortStats {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(stats) = self.port_stats().filter(|s| condition(*s)) {
                return stats;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "testpmd exited ({status}) before {what}:\n{}",
                    self.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}; testpmd printed:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ends testpmd as Ctrl-C would (it stops forwarding and prints its totals, per
    /// stream when there are several) and returns what it printed.
    fn stop(mut self) -> String {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::INT).expect("SIGINT");
        let deadline = Instant::now() + DEADLINE;
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "testpmd did not exit after SIGINT:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The readers finish once the pipes close; give them the time they need.
        let deadline = Instant::now() + DEADLINE;
        while !self.output().contains("Bye") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.output()
    }

    /// Kills testpmd with SIGKILL, as a crashing VM dies: no goodbye to the backend.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(eal_runtime_dir(&self.prefix));
    }
}

/// The per-stream statistics testpmd prints at exit when it forwards more than one
/// stream: "Forward Stats for RX Port= 0/Queue= 1 -> TX Port= 0/Queue= 1", then the
/// stream's "RX-packets: … TX-packets: …".
fn stream_stats(output: &str) -> Vec<StreamStats> {
    const HEADING: &str = "Forward Stats for RX Port=";
    output
        .match_indices(HEADING)
        .filter_map(|(at, _)| {
            let block = &output[at..];
            Some(StreamStats {
                rx_queue: number_after(block, "Queue=")? as u32,
                tx_queue: number_after(&block[block.find("-> TX")?..], "Queue=")? as u32,
                rx_packets: number_after(block, "RX-packets:")?,
                tx_packets: number_after(block, "TX-packets:")?,
            })
        })
        .collect()
}

/// testpmd's totals at exit (its "Accumulated forward statistics"), counted from when it
/// started forwarding: (RX-packets, TX-packets).
fn totals(output: &str) -> (u64, u64) {
    output
        .find("Accumulated forward statistics")
        .and_then(|at| {
            let block = &output[at..];
            Some((
                number_after(block, "RX-packets:")?,
                number_after(block, "TX-packets:")?,
            ))
        })
        .unwrap_or_else(|| panic!("no totals in what testpmd printed:\n{output}"))
}

/// A network in a private directory, a `guestnet vhost-user` on it, and a library peer.
struct Lab {
    dir: tempfile::TempDir,
    network: Network,
    peer: Peer,
    backend: Backend,
}

impl Lab {
    fn start(extra: &[&str]) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let network =
            Network::create(dir.path(), NETWORK, CreateOptions::default()).expect("create");
        let peer = network
            .join(JoinOptions {
                label: "test peer".into(),
                ..JoinOptions::default()
            })
            .expect("join");
        let backend = Backend::start(dir.path(), NETWORK, &["vm.sock"], extra);
        Lab {
            dir,
            network,
            peer,
            backend,
        }
    }

    fn socket(&self) -> &Path {
        &self.backend.sockets[0]
    }

    fn status(
        &self,
        what: &str,
        condition: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for_status(self.dir.path(), NETWORK, self.socket(), what, condition)
    }

    /// The vhost-user peers on the network, as (slot, MAC, link down).
    fn vhost_peers(&self) -> Vec<(u16, MacAddress, bool)> {
        self.network
            .status()
            .peers
            .iter()
            .filter(|p| p.kind == PortKind::VhostUser)
            .map(|p| (p.slot, p.mac, p.link_down))
            .collect()
    }

    /// Waits until testpmd forwards: it printed its first statistics (which it does once
    /// its forwarding core runs) and the vhost-user peer's link is up (the frontend's
    /// receive queue runs). The link comes up while testpmd is still starting its port,
    /// and testpmd discards what arrives before it forwards (counted in its port's
    /// RX-packets, never forwarded), so a test that waited for the link alone would lose
    /// its first frames to testpmd, not to the port.
    fn wait_until_forwarding(&self, testpmd: &mut Testpmd) {
        testpmd.wait_for_stats("testpmd forwards", |_| true);
        let deadline = Instant::now() + DEADLINE;
        while !self.vhost_peers().iter().any(|&(_, _, down)| !down) {
            assert!(
                Instant::now() < deadline,
                "the frontend's link did not come up: {:?}",
                self.vhost_peers()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Receives until `enough` frames came (bounded by [`DEADLINE`]).
    fn receive(&mut self, enough: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + DEADLINE;
        let mut frames = Vec::new();
        while frames.len() < enough {
            assert!(
                Instant::now() < deadline,
                "only {} of {enough} frames arrived",
                frames.len()
            );
            self.peer.wait(Duration::from_millis(50));
            self.peer.receive(usize::MAX, |f| frames.push(f.to_vec()));
        }
        frames
    }

    /// Sends `frames` to a frontend that sends each back (testpmd's `macswap`), at most
    /// `window` unanswered at a time so that no ring on the way overflows, and returns
    /// what came back (bounded by [`DEADLINE`] without progress).
    fn echo(&mut self, testpmd: &Testpmd, frames: &[Vec<u8>], window: usize) -> Vec<Vec<u8>> {
        let mut sent = 0;
        let mut echoes = Vec::with_capacity(frames.len());
        let mut last_progress = Instant::now();
        while echoes.len() < frames.len() {
            let room = window.saturating_sub(sent - echoes.len());
            let batch = &frames[sent..(sent + room).min(frames.len())];
            if !batch.is_empty() {
                assert_eq!(
                    self.peer.send_batch(batch.iter().map(Vec::as_slice)),
                    batch.len()
                );
                sent += batch.len();
            }
            self.peer.wait(Duration::from_millis(50));
            let before = echoes.len();
            self.peer.receive(usize::MAX, |f| echoes.push(f.to_vec()));
            if echoes.len() > before {
                last_progress = Instant::now();
            }
            assert!(
                last_progress.elapsed() < DEADLINE,
                "{} of {} frames came back, {sent} sent; testpmd: {:?}; port: {:?}; peers: {:?}",
                echoes.len(),
                frames.len(),
                testpmd.port_stats(),
                vhost_support::vhost_status(self.dir.path(), NETWORK, self.socket()),
                self.network.status().peers
            );
        }
        echoes
    }
}

/// A frame from `src` to `dst` with a numbered payload, `len` bytes long.
fn frame(dst: MacAddress, src: MacAddress, number: u32, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental EtherType
    f.extend_from_slice(&number.to_be_bytes());
    f.extend((0..len.saturating_sub(f.len())).map(|i| (number as usize + i) as u8));
    f
}

/// What testpmd's `macswap` makes of `frame`: the same, its two addresses exchanged.
fn swapped(frame: &[u8]) -> Vec<u8> {
    let mut echo = frame.to_vec();
    echo[..6].copy_from_slice(&frame[6..12]);
    echo[6..12].copy_from_slice(&frame[..6]);
    echo
}

/// A locally administered MAC for testpmd's port.
fn frontend_mac(last: u8) -> MacAddress {
    MacAddress([0x02, 0xdd, 0x00, 0x00, 0x00, last])
}

#[test]
fn frames_a_dpdk_frontend_sends_reach_a_peer_intact() {
    let Some(_turn) = turn() else { return };
    let mut lab = Lab::start(&[]);
    let peer_mac = lab.peer.mac();
    let testpmd = Testpmd::start(
        lab.socket(),
        frontend_mac(1),
        1,
        &["--forward-mode=txonly", &format!("--eth-peer=0,{peer_mac}")],
    );
    // testpmd sends as fast as it can, far faster than the peer reads: the frames that
    // arrive are checked, the rest are counted as drops for a full ring.
    let frames = lab.receive(1000);
    for f in &frames {
        let parsed = etherparse::SlicedPacket::from_ethernet(f)
            .unwrap_or_else(|e| panic!("not an Ethernet frame ({e}): {f:02x?}"));
        let Some(etherparse::LinkSlice::Ethernet2(ethernet)) = parsed.link else {
            panic!("no Ethernet header: {f:02x?}");
        };
        assert_eq!(ethernet.destination(), peer_mac.0);
        assert_eq!(ethernet.source(), testpmd.mac.0);
        let Some(etherparse::NetSlice::Ipv4(ipv4)) = parsed.net else {
            panic!("testpmd's txonly frames are IPv4: {f:02x?}");
        };
        let header = ipv4.header().to_header();
        assert_eq!(
            header.header_checksum,
            header.calc_header_checksum(),
            "the IPv4 header arrived changed"
        );
        assert!(
            matches!(parsed.transport, Some(etherparse::TransportSlice::Udp(_))),
            "testpmd's txonly frames are UDP: {f:02x?}"
        );
        assert_eq!(f.len(), 64, "testpmd's txonly frames are 64 bytes");
    }
    let taken = counter(
        &lab.status("frames taken from the frontend", |e| {
            counter(e, "tx_frames") >= 1000
        }),
        "tx_frames",
    );
    let (_, sent) = totals(&testpmd.stop());
    assert!(
        taken <= sent,
        "the port took {taken} frames from a frontend that sent {sent}"
    );
}

#[test]
fn a_dpdk_frontend_counts_every_frame_a_peer_sends_it() {
    let Some(_turn) = turn() else { return };
    let mut lab = Lab::start(&[]);
    let mut testpmd = Testpmd::start(lab.socket(), frontend_mac(2), 1, &["--forward-mode=rxonly"]);
    lab.wait_until_forwarding(&mut testpmd);
    const FRAMES: u32 = 1000;
    const BATCH: u32 = 50;
    let source = lab.peer.mac();
    let taken = |lab: &Lab| {
        lab.network
            .status()
            .peers
            .iter()
            .find(|p| p.kind == PortKind::VhostUser)
            .map_or(0, |p| p.rx_packets)
    };
    // Batch by batch, each taken from the port's ring before the next goes, so no ring
    // overflows and every frame must reach testpmd.
    for first in (0..FRAMES).step_by(BATCH as usize) {
        let batch: Vec<Vec<u8>> = (first..first + BATCH)
            .map(|n| frame(testpmd.mac, source, n, 128))
            .collect();
        assert_eq!(
            lab.peer.send_batch(batch.iter().map(Vec::as_slice)),
            batch.len()
        );
        let deadline = Instant::now() + DEADLINE;
        while taken(&lab) < u64::from(first + BATCH) {
            assert!(
                Instant::now() < deadline,
                "the port took {} of {} frames",
                taken(&lab),
                first + BATCH
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let stats = testpmd.wait_for_stats("testpmd counted every frame", |s| {
        s.rx_packets >= u64::from(FRAMES)
    });
    assert_eq!(
        stats.rx_packets,
        u64::from(FRAMES),
        "no more than were sent"
    );
    let entry = lab.status("every frame delivered", |e| {
        counter(e, "rx_frames") >= u64::from(FRAMES)
    });
    assert_eq!(counter(&entry, "rx_frames"), u64::from(FRAMES));
    assert_eq!(counter(&entry, "rx_no_room"), 0);
    let drops = &lab.peer.counters();
    assert_eq!(
        drops.tx_dropped_total(),
        0,
        "the peer dropped none: {drops:?}"
    );
}

#[test]
fn frames_make_a_round_trip_through_a_dpdk_frontend_intact_and_in_order() {
    let Some(_turn) = turn() else { return };
    let mut lab = Lab::start(&[]);
    let mut testpmd = Testpmd::start(
        lab.socket(),
        frontend_mac(3),
        1,
        &["--forward-mode=macswap"],
    );
    lab.wait_until_forwarding(&mut testpmd);
    let source = lab.peer.mac();
    let frames: Vec<Vec<u8>> = (0..1000)
        .map(|n| frame(testpmd.mac, source, n, 60 + (n as usize * 7) % 1400))
        .collect();
    let echoes = lab.echo(&testpmd, &frames, 32);
    let expected: Vec<Vec<u8>> = frames.iter().map(|f| swapped(f)).collect();
    assert!(echoes == expected, "the echoes differ from what was sent");
    assert_eq!(totals(&testpmd.stop()), (1000, 1000), "testpmd's totals");
}

#[test]
fn a_dpdk_frontend_killed_mid_traffic_is_served_again_when_it_comes_back() {
    let Some(_turn) = turn() else { return };
    let mut lab = Lab::start(&[]);
    let peer_mac = lab.peer.mac();
    let mut first = Testpmd::start(
        lab.socket(),
        frontend_mac(4),
        1,
        &["--forward-mode=txonly", &format!("--eth-peer=0,{peer_mac}")],
    );
    lab.receive(1000);
    // Traffic the other way too, so that the port is writing into the frontend's receive
    // queue as well when it dies.
    let towards: Vec<Vec<u8>> = (0..64)
        .map(|n| frame(first.mac, peer_mac, n, 100))
        .collect();
    lab.peer.send_batch(towards.iter().map(Vec::as_slice));
    first.kill();

    let entry = lab.status("the port noticed the frontend died", |e| {
        e["state"] == "listening" && counter(e, "connections") >= 1
    });
    assert_eq!(counter(&entry, "connections"), 1);
    assert!(
        entry["slot"].is_null(),
        "no peer without a frontend: {entry}"
    );
    assert!(lab.backend.is_alive(), "the port died with its frontend");
    let deadline = Instant::now() + DEADLINE;
    while !lab.vhost_peers().is_empty() {
        assert!(Instant::now() < deadline, "the dead frontend's peer stayed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // What the first frontend sent before it died is of no interest any more.
    lab.peer.receive(usize::MAX, |_| {});

    let mut second = Testpmd::start(
        lab.socket(),
        frontend_mac(5),
        1,
        &["--forward-mode=macswap"],
    );
    lab.wait_until_forwarding(&mut second);
    let frames: Vec<Vec<u8>> = (0..200)
        .map(|n| frame(second.mac, peer_mac, n, 200))
        .collect();
    let echoes = lab.echo(&second, &frames, 32);
    let expected: Vec<Vec<u8>> = frames.iter().map(|f| swapped(f)).collect();
    assert!(echoes == expected, "the second frontend's echoes differ");
    let peers = lab.vhost_peers();
    assert_eq!(peers.len(), 1, "one vhost-user peer: {peers:?}");
    assert_eq!(peers[0].1, second.mac, "the new frontend's MAC is learned");
    let entry = lab.status("the second connection counted", |e| {
        counter(e, "connections") >= 2
    });
    assert_eq!(counter(&entry, "connections"), 2);
    assert_eq!(entry["state"], "running");
    second.stop();
}

#[test]
fn a_dpdk_frontend_with_two_queue_pairs_carries_traffic_on_both() {
    let Some(_turn) = turn() else { return };
    let mut lab = Lab::start(&["--queues", "2"]);
    let mut testpmd = Testpmd::start(
        lab.socket(),
        frontend_mac(6),
        2,
        &["--forward-mode=macswap"],
    );
    lab.wait_until_forwarding(&mut testpmd);
    let entry = lab.status("running", |e| e["state"] == "running");
    assert_eq!(entry["queue_pairs"], 2);
    assert_ne!(
        entry["acked_features"].as_u64().unwrap_or(0) & MQ,
        0,
        "testpmd acked MQ"
    );
    // The port picks a receive queue by hashing a frame's Ethernet header, so frames
    // from several source addresses (learned behind the peer) spread over both queues.
    let sources: Vec<MacAddress> = (0..16)
        .map(|i| MacAddress([0x02, 0xee, 0x00, 0x00, 0x00, i]))
        .collect();
    let frames: Vec<Vec<u8>> = (0..512u32)
        .map(|n| frame(testpmd.mac, sources[n as usize % sources.len()], n, 128))
        .collect();
    let mut echoes = lab.echo(&testpmd, &frames, 32);
    let mut expected: Vec<Vec<u8>> = frames.iter().map(|f| swapped(f)).collect();
    // Each flow keeps its order; the two queues interleave.
    for source in &sources {
        let of = |frames: &[Vec<u8>]| -> Vec<Vec<u8>> {
            frames
                .iter()
                .filter(|f| f[..6] == source.0)
                .cloned()
                .collect()
        };
        assert!(
            of(&echoes) == of(&expected),
            "flow {source} came back changed"
        );
    }
    echoes.sort();
    expected.sort();
    assert!(echoes == expected, "the echoes differ from what was sent");

    let output = testpmd.stop();
    let streams = stream_stats(&output);
    eprintln!("testpmd's streams: {streams:?}");
    assert_eq!(
        streams.len(),
        2,
        "two streams in testpmd's totals:\n{output}"
    );
    for stream in &streams {
        assert_eq!(
            stream.rx_queue, stream.tx_queue,
            "macswap answers on its queue"
        );
        assert!(
            stream.rx_packets > 0 && stream.tx_packets > 0,
            "queue pair {} carried no traffic: {streams:?}",
            stream.rx_queue
        );
    }
    let received: u64 = streams.iter().map(|s| s.rx_packets).sum();
    assert_eq!(received, 512, "{streams:?}");
    assert_eq!(totals(&output), (512, 512), "testpmd's totals");

    // The port counts each pair's frames too, and they add up to its totals.
    let entry = lab.status("the port counted every frame by queue pair", |e| {
        counter(e, "tx_frames") >= 512 && counter(e, "rx_frames") >= 512
    });
    let pairs = entry["queues"].as_array().expect("queues in the status");
    assert_eq!(pairs.len(), 2, "{entry}");
    for (direction, total) in [("tx_frames", 512), ("rx_frames", 512)] {
        let by_pair: Vec<u64> = pairs
            .iter()
            .map(|p| p[direction].as_u64().unwrap_or(0))
            .collect();
        assert!(by_pair.iter().all(|&n| n > 0), "{direction}: {entry}");
        assert_eq!(by_pair.iter().sum::<u64>(), total, "{direction}: {entry}");
        assert_eq!(counter(&entry, direction), total, "{entry}");
    }
}

#[test]
fn a_dpdk_frontend_sending_flat_out_is_held_to_its_rate_without_drops() {
    let Some(_turn) = turn() else { return };
    const RATE: u64 = 100_000_000;
    const FRAME: u64 = 1000;
    let mut lab = Lab::start(&["--rate", "100m"]);
    let peer_mac = lab.peer.mac();
    // 1000-byte frames, as fast as testpmd can make them: far more than 100 Mbit/s.
    let testpmd = Testpmd::start(
        lab.socket(),
        frontend_mac(7),
        1,
        &[
            "--forward-mode=txonly",
            &format!("--eth-peer=0,{peer_mac}"),
            "--txpkts=1000",
        ],
    );
    let sent = |lab: &Lab| {
        let status = lab.network.status();
        let entry = status
            .peers
            .iter()
            .find(|p| p.kind == PortKind::VhostUser)
            .cloned();
        entry.map_or((0, 0), |p| {
            let limited = p.drops.get("tx_rate_limited").copied().unwrap_or(0);
            (p.tx_bytes, limited)
        })
    };
    // The frames flow once testpmd forwards; measure from then on, for two seconds,
    // draining the peer's ring meanwhile.
    lab.receive(100);
    let (start_bytes, _) = sent(&lab);
    let start_cpu = cpu_ticks(lab.backend.pid());
    let start = Instant::now();
    let mut received = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        lab.peer.wait(Duration::from_millis(50));
        lab.peer.receive(usize::MAX, |f| {
            assert_eq!(f.len() as u64, FRAME);
            received += 1;
        });
    }
    let (end_bytes, limited) = sent(&lab);
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(lab.backend.pid()) - start_cpu) as f64
        / rustix::param::clock_ticks_per_second() as f64;
    let (_, offered) = totals(&testpmd.stop());
    let bps = (end_bytes - start_bytes) as f64 * 8.0 / elapsed;
    eprintln!(
        "{bps:.0} bit/s let through over {elapsed:.2} s ({received} frames received), \
         testpmd offered {offered} frames; the port used {:.0} % of a CPU",
        cpu / elapsed * 100.0
    );
    // The port holds the frontend back rather than have the network refuse its frames:
    // it takes a frame only when the bucket has room for the largest one, so none is
    // ever over the limit.
    assert_eq!(limited, 0, "frames refused as rate_limited");
    let ratio = bps / RATE as f64;
    assert!(
        (0.5..=1.1).contains(&ratio),
        "{bps:.0} bit/s is {ratio:.2} of the rate"
    );
}

/// User plus system time process `pid` (all its threads) has used so far, in clock
/// ticks: fields 14 and 15 of `/proc/PID/stat`, counted after the command name.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let after_name = &stat[stat.rfind(')').expect("a command name") + 1..];
    // After the name: state is field 3, so field N is at N - 3.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| -> u64 { fields[n - 3].parse().expect("a number of ticks") };
    field(14) + field(15)
}
