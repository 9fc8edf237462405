//! The socket ports end to end: the real `guestnet stream` and `guestnet dgram` commands,
//! real unix socket clients speaking QEMU's framings, and library peers on the same
//! network to check what arrives and what was counted. Where a test needs the port's own
//! counters, it serves the port in-process instead of running the command.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use std::sync::Arc;
use std::thread::JoinHandle;

use guestnet::network::{CreateOptions, JoinOptions, Network, NetworkStatus, Peer, PeerStatus};
use guestnet::ports::dgram::{DgramCounters, DgramOptions, DgramPort};
use guestnet::ports::doorbell::Doorbell;
use guestnet::ports::stream::{StreamCounters, StreamOptions, StreamPort};
use guestnet::wire::MacAddress;

/// How long any single expected event may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(5);

/// A port process, killed and reaped however the test ends.
struct PortProcess {
    child: Child,
    path: PathBuf,
}

impl PortProcess {
    /// Starts `guestnet <kind> lab --listen PATH [extra]` and waits for its ready line.
    fn start(dir: &Path, kind: &str, socket: &str, extra: &[&str]) -> PortProcess {
        let path = dir.join(socket);
        let mut child = Command::new(env!("CARGO_BIN_EXE_guestnet"))
            .arg("--dir")
            .arg(dir)
            .args([kind, "lab", "--listen"])
            .arg(&path)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start guestnet");
        let stdout = child.stdout.take().expect("piped stdout");
        let port = PortProcess { child, path };
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let line = received
            .recv_timeout(DEADLINE)
            .expect("the port announces itself in time")
            .expect("readable stdout");
        assert_eq!(line, format!("listening on {}", port.path.display()));
        port
    }

    /// Sends SIGTERM and returns whether the process exited successfully in time.
    fn terminate(&mut self) -> bool {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("signal");
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the port did not exit after SIGTERM");
    }
}

impl Drop for PortProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn network(dir: &tempfile::TempDir) -> Network {
    Network::create(dir.path(), "lab", CreateOptions::default()).expect("create network")
}

fn mac(last: u8) -> MacAddress {
    MacAddress([0x52, 0x54, 0x00, 0x12, 0x34, last])
}

/// A frame with a recognisable payload, at least 60 bytes.
fn frame(dst: MacAddress, src: MacAddress, text: &str) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(text.as_bytes());
    f.resize(f.len().max(60), 0);
    f
}

/// Polls the network's status until `check` holds; fails after the deadline.
fn wait_for_status(
    net: &Network,
    what: &str,
    mut check: impl FnMut(&NetworkStatus) -> bool,
) -> NetworkStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let status = net.status();
        if check(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; status: {:#?}",
            status.peers
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn peer_with_mac(status: &NetworkStatus, mac: MacAddress) -> Option<&PeerStatus> {
    status.peers.iter().find(|p| p.mac == mac)
}

fn count_kind(status: &NetworkStatus, kind: &str) -> usize {
    status
        .peers
        .iter()
        .filter(|p| p.kind.name() == kind)
        .count()
}

/// The next frame a library peer receives, within the deadline.
fn receive_one(peer: &mut Peer) -> Vec<u8> {
    let deadline = Instant::now() + DEADLINE;
    let mut got = None;
    while got.is_none() {
        assert!(Instant::now() < deadline, "no frame arrived in time");
        peer.wait(Duration::from_millis(50));
        peer.receive(1, |f| got = Some(f.to_vec()));
    }
    got.unwrap_or_default()
}

/// A `-netdev stream` client.
struct StreamClient {
    socket: UnixStream,
}

impl StreamClient {
    fn connect(path: &Path) -> StreamClient {
        let socket = UnixStream::connect(path).expect("connect");
        socket.set_read_timeout(Some(DEADLINE)).expect("timeout");
        StreamClient { socket }
    }

    fn send(&mut self, frame: &[u8]) {
        let mut record = (frame.len() as u32).to_be_bytes().to_vec();
        record.extend_from_slice(frame);
        self.socket.write_all(&record).expect("send");
    }

    fn receive(&mut self) -> Vec<u8> {
        let mut prefix = [0u8; 4];
        self.socket
            .read_exact(&mut prefix)
            .expect("a length in time");
        let mut f = vec![0; u32::from_be_bytes(prefix) as usize];
        self.socket.read_exact(&mut f).expect("a frame in time");
        f
    }

    /// Whether the port closed the connection (read returns 0 before the deadline).
    fn is_closed_by_port(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.socket.read(&mut byte), Ok(0))
    }
}

/// Connects a stream client and waits until the port has made it a peer.
fn connect_and_join(net: &Network, path: &Path, expected_streams: usize) -> StreamClient {
    let client = StreamClient::connect(path);
    wait_for_status(net, "the connection to join", |s| {
        count_kind(s, "stream") == expected_streams
    });
    client
}

#[test]
fn stream_clients_exchange_frames_and_broadcasts_reach_both() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let _port = PortProcess::start(dir.path(), "stream", "lab.sock", &[]);
    let path = dir.path().join("lab.sock");
    let mut a = connect_and_join(&net, &path, 1);
    let mut b = connect_and_join(&net, &path, 2);

    // Each client's first frame publishes its MAC; the broadcast reaches the other.
    let hello_a = frame(MacAddress::BROADCAST, mac(0xa), "hello from a");
    a.send(&hello_a);
    assert_eq!(b.receive(), hello_a);
    let hello_b = frame(MacAddress::BROADCAST, mac(0xb), "hello from b");
    b.send(&hello_b);
    assert_eq!(a.receive(), hello_b);
    let status = wait_for_status(&net, "both MACs to be published", |s| {
        peer_with_mac(s, mac(0xa)).is_some() && peer_with_mac(s, mac(0xb)).is_some()
    });
    assert_ne!(
        peer_with_mac(&status, mac(0xa)).map(|p| p.slot),
        peer_with_mac(&status, mac(0xb)).map(|p| p.slot),
        "every connection is a peer of its own"
    );

    // Unicast both ways, several frames in one write to exercise batching.
    let to_b: Vec<_> = (0..5)
        .map(|i| frame(mac(0xb), mac(0xa), &format!("a to b #{i}")))
        .collect();
    for f in &to_b {
        a.send(f);
    }
    for f in &to_b {
        assert_eq!(&b.receive(), f);
    }
    let to_a = frame(mac(0xa), mac(0xb), "b to a");
    b.send(&to_a);
    assert_eq!(a.receive(), to_a);

    // A broadcast from a library peer reaches both clients.
    let mut local = net.join(JoinOptions::default()).unwrap();
    let everyone = frame(MacAddress::BROADCAST, local.mac(), "to everyone");
    local.send(&everyone);
    assert_eq!(a.receive(), everyone);
    assert_eq!(b.receive(), everyone);
    // Nothing came back to the library peer but what the clients sent it (nothing).
    assert_eq!(local.receive(usize::MAX, |_| {}), 0);
}

#[test]
fn stream_runt_is_counted_and_the_next_frame_still_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let _port = PortProcess::start(dir.path(), "stream", "lab.sock", &[]);
    let mut local = net.join(JoinOptions::default()).unwrap();
    let mut client = connect_and_join(&net, &dir.path().join("lab.sock"), 1);
    let good = frame(local.mac(), mac(0xa), "after the runt");
    let mut bytes = 5u32.to_be_bytes().to_vec();
    bytes.extend_from_slice(b"short");
    bytes.extend_from_slice(&(good.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&good);
    client.socket.write_all(&bytes).unwrap();
    assert_eq!(receive_one(&mut local), good);
    let status = wait_for_status(&net, "the runt to be counted", |s| {
        peer_with_mac(s, mac(0xa)).is_some_and(|p| p.drops.get("tx_invalid") == Some(&1))
    });
    let stream_peer = peer_with_mac(&status, mac(0xa)).unwrap();
    assert_eq!(stream_peer.tx_packets, 1, "only the good frame was sent");
}

#[test]
fn stream_client_with_a_jumbo_mtu_loses_the_giant_frame_not_its_link() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let _port = PortProcess::start(dir.path(), "stream", "lab.sock", &[]);
    let mut local = net.join(JoinOptions::default()).unwrap();
    let mut client = connect_and_join(&net, &dir.path().join("lab.sock"), 1);
    // A guest configured for MTU 9000 on an MTU-1500 network: its length prefixes are
    // intact, only the frame is too long. Its body goes out in pieces, as a real socket
    // may deliver it.
    let mut jumbo = frame(local.mac(), mac(0xa), "jumbo");
    jumbo.resize(9000, 0x5a);
    client.socket.write_all(&9000u32.to_be_bytes()).unwrap();
    for piece in jumbo.chunks(1000) {
        client.socket.write_all(piece).unwrap();
    }
    let normal = frame(local.mac(), mac(0xa), "after the jumbo");
    client.send(&normal);
    assert_eq!(receive_one(&mut local), normal, "the link stays up");
    // The giant was counted alone, the normal frame sent: the counts may be written just
    // after the frame was delivered, so wait for both.
    let status = wait_for_status(&net, "the giant to be counted", |s| {
        peer_with_mac(s, mac(0xa))
            .is_some_and(|p| p.drops.get("tx_invalid") == Some(&1) && p.tx_packets == 1)
    });
    assert_eq!(count_kind(&status, "stream"), 1, "still connected");
    // And the client still receives.
    let down = frame(mac(0xa), local.mac(), "still connected");
    local.send(&down);
    assert_eq!(client.receive(), down);
}

/// A port served in this process, so a test can read the port's own counters; stopped
/// and joined however the test ends.
struct InProcessPort<Counters> {
    path: PathBuf,
    counters: Arc<Counters>,
    stop: Arc<Doorbell>,
    server: Option<JoinHandle<()>>,
}

impl<Counters> InProcessPort<Counters> {
    /// Runs `serve` on a thread of its own until the test ends.
    fn start(
        path: PathBuf,
        counters: Arc<Counters>,
        serve: impl FnOnce(&Doorbell) + Send + 'static,
    ) -> InProcessPort<Counters> {
        let stop = Arc::new(Doorbell::new().expect("doorbell"));
        let server = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || serve(&stop))
        };
        InProcessPort {
            path,
            counters,
            stop,
            server: Some(server),
        }
    }
}

/// A stream port on `DIR/lab.sock`, served in this process.
fn stream_port_in_process(dir: &Path, options: StreamOptions) -> InProcessPort<StreamCounters> {
    let path = dir.join("lab.sock");
    let network = Network::open(dir, "lab").expect("open the network");
    let port = StreamPort::bind(network, &path, options).expect("bind");
    let counters = port.counters();
    InProcessPort::start(path, counters, move |stop| {
        port.serve(stop).expect("serve");
    })
}

/// A datagram port on `DIR/lab.dgram`, served in this process.
fn dgram_port_in_process(dir: &Path, options: DgramOptions) -> InProcessPort<DgramCounters> {
    let path = dir.join("lab.dgram");
    let network = Network::open(dir, "lab").expect("open the network");
    let port = DgramPort::bind(network, &path, options).expect("bind");
    let counters = port.counters();
    InProcessPort::start(path, counters, move |stop| {
        port.serve(stop).expect("serve");
    })
}

impl<Counters> Drop for InProcessPort<Counters> {
    fn drop(&mut self) {
        self.stop.ring();
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

#[test]
fn stream_client_announcing_a_gibibyte_frame_is_disconnected_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let port = stream_port_in_process(dir.path(), StreamOptions::default());
    let mut local = net.join(JoinOptions::default()).unwrap();
    let mut client = connect_and_join(&net, &port.path, 1);
    // A giant first: skipped and counted on the port, the connection stays.
    let mut jumbo = frame(local.mac(), mac(0xa), "jumbo");
    jumbo.resize(9000, 0);
    client.send(&jumbo);
    let normal = frame(local.mac(), mac(0xa), "normal");
    client.send(&normal);
    assert_eq!(receive_one(&mut local), normal);
    assert_eq!(port.counters.values().giants_skipped, 1);
    assert_eq!(port.counters.values().closed_out_of_step, 0);
    // Then a length no frame has: the stream is out of step, the connection is closed.
    // One write: the port may close the connection as soon as it has read the length.
    let mut record = (1u32 << 30).to_be_bytes().to_vec();
    record.extend_from_slice(&[0u8; 64]);
    client.socket.write_all(&record).unwrap();
    assert!(
        client.is_closed_by_port(),
        "a 1 GiB length closes the connection"
    );
    wait_for_status(&net, "its peer to leave", |s| count_kind(s, "stream") == 0);
    let counters = port.counters.values();
    assert_eq!(counters.closed_out_of_step, 1);
    assert_eq!(counters.giants_skipped, 1);
}

#[test]
fn stream_giant_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let _port = PortProcess::start(dir.path(), "stream", "lab.sock", &[]);
    let path = dir.path().join("lab.sock");
    let mut local = net.join(JoinOptions::default()).unwrap();
    let mut bad = connect_and_join(&net, &path, 1);
    let mut good = connect_and_join(&net, &path, 2);

    // One write: the port may close the connection as soon as it has read the length.
    let mut record = 100_000u32.to_be_bytes().to_vec();
    record.extend_from_slice(&[0u8; 64]);
    bad.socket.write_all(&record).unwrap();
    assert!(
        bad.is_closed_by_port(),
        "a giant length closes the connection"
    );
    wait_for_status(&net, "the giant's peer to leave", |s| {
        count_kind(s, "stream") == 1
    });

    // The other client and the port carry on, both ways.
    let up = frame(local.mac(), mac(0xc), "still here");
    good.send(&up);
    assert_eq!(receive_one(&mut local), up);
    let down = frame(mac(0xc), local.mac(), "and back");
    local.send(&down);
    assert_eq!(good.receive(), down);
    // And the port still accepts new clients.
    let _again = connect_and_join(&net, &path, 2);
}

#[test]
fn stream_clients_beyond_max_clients_are_disconnected_until_one_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let _port = PortProcess::start(dir.path(), "stream", "lab.sock", &["--max-clients", "2"]);
    let path = dir.path().join("lab.sock");
    let mut first = connect_and_join(&net, &path, 1);
    let mut second = connect_and_join(&net, &path, 2);
    let mut third = StreamClient::connect(&path);
    assert!(
        third.is_closed_by_port(),
        "a third client is over the limit"
    );
    assert_eq!(
        count_kind(&net.status(), "stream"),
        2,
        "and never became a peer, although the network has room"
    );
    // The two clients served carry on.
    first.send(&frame(MacAddress::BROADCAST, mac(1), "still here"));
    assert_eq!(second.receive()[14..24], *b"still here");
    // One leaves: the next client takes its place.
    drop(first);
    wait_for_status(&net, "the first client to leave", |s| {
        count_kind(s, "stream") == 1
    });
    let mut fourth = connect_and_join(&net, &path, 2);
    fourth.send(&frame(MacAddress::BROADCAST, mac(4), "my turn"));
    assert_eq!(second.receive()[14..21], *b"my turn");
}

#[test]
fn stream_client_opening_connection_after_connection_gets_16_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let port = stream_port_in_process(dir.path(), StreamOptions::default());
    // One program opens connection after connection on a network of 64 slots: the default
    // limit leaves the other slots to others.
    let clients: Vec<_> = (1..=16)
        .map(|n| connect_and_join(&net, &port.path, n))
        .collect();
    let mut over = StreamClient::connect(&port.path);
    assert!(over.is_closed_by_port(), "the 17th connection is refused");
    let counters = port.counters.values();
    assert_eq!(counters.connections_accepted, 16);
    assert_eq!(counters.refused_over_limit, 1);
    assert_eq!(counters.refused_by_network, 0);
    assert_eq!(count_kind(&net.status(), "stream"), 16);
    drop(clients);
}

#[test]
fn stream_closed_connection_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let net = Network::create(
        dir.path(),
        "lab",
        CreateOptions {
            geometry: guestnet::shm::layout::Geometry {
                max_peers: 2,
                ..Default::default()
            },
            ..CreateOptions::default()
        },
    )
    .unwrap();
    let _port = PortProcess::start(dir.path(), "stream", "lab.sock", &[]);
    let path = dir.path().join("lab.sock");
    // Two slots: each connection in turn takes one, and leaves it when it closes.
    for round in 0..3 {
        let mut first = connect_and_join(&net, &path, 1);
        let mut second = connect_and_join(&net, &path, 2);
        // The network is full now: a third connection is refused and closed.
        let mut third = StreamClient::connect(&path);
        assert!(third.is_closed_by_port(), "round {round}: full network");
        first.send(&frame(MacAddress::BROADCAST, mac(1), "bye"));
        assert_eq!(second.receive()[14..17], *b"bye");
        drop(first);
        drop(second);
        wait_for_status(&net, "the slots to be freed", |s| s.peers.is_empty());
    }
}

#[test]
fn stream_client_that_does_not_read_stalls_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let _port = PortProcess::start(dir.path(), "stream", "lab.sock", &[]);
    let path = dir.path().join("lab.sock");
    let mut local = net.join(JoinOptions::default()).unwrap();
    let mut stuck = connect_and_join(&net, &path, 1);
    let mut reader = connect_and_join(&net, &path, 2);
    stuck.send(&frame(local.mac(), mac(0x5), "I never read"));
    reader.send(&frame(local.mac(), mac(0x6), "I do"));
    receive_one(&mut local);
    receive_one(&mut local);
    wait_for_status(&net, "both MACs", |s| {
        peer_with_mac(s, mac(0x5)).is_some() && peer_with_mac(s, mac(0x6)).is_some()
    });

    // Far more than the socket buffer and the ring hold, all to the client that never
    // reads: the surplus is counted as ring_full, nothing blocks.
    let big = {
        let mut f = frame(mac(0x5), local.mac(), "flood");
        f.resize(1514, 0xee);
        f
    };
    let sent = 3000;
    let accepted = local.send_batch(std::iter::repeat_n(&big[..], sent));
    assert_eq!(accepted, sent);
    let counters = local.counters();
    let ring_full = counters.tx_dropped(guestnet::network::counters::DropReason::RingFull);
    assert!(
        ring_full > 0,
        "the stuck client's ring filled: {counters:?}"
    );
    assert_eq!(counters.tx_deliveries + ring_full, sent as u64);

    // The other client is served at once.
    let hello = frame(mac(0x6), local.mac(), "not stalled");
    local.send(&hello);
    assert_eq!(reader.receive(), hello);
    drop(stuck);
}

#[test]
fn stream_mac_option_publishes_it_and_refuses_a_second_client() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let fixed = mac(0x77);
    let _port = PortProcess::start(
        dir.path(),
        "stream",
        "lab.sock",
        &["--mac", &fixed.to_string()],
    );
    let path = dir.path().join("lab.sock");
    let mut first = connect_and_join(&net, &path, 1);
    assert!(peer_with_mac(&net.status(), fixed).is_some());
    let mut second = StreamClient::connect(&path);
    assert!(second.is_closed_by_port(), "the MAC is taken");
    // The first client is unaffected and reached at its MAC, whatever it sends from.
    let mut local = net.join(JoinOptions::default()).unwrap();
    first.send(&frame(local.mac(), mac(0x01), "other source"));
    receive_one(&mut local);
    let to_first = frame(fixed, local.mac(), "to the fixed MAC");
    local.send(&to_first);
    assert_eq!(first.receive(), to_first);
    assert!(peer_with_mac(&net.status(), fixed).is_some());
}

#[test]
fn stream_port_replaces_a_stale_socket_and_cleans_up_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let path = dir.path().join("lab.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a stale socket file is left behind");
    let mut port = PortProcess::start(dir.path(), "stream", "lab.sock", &[]);
    let _client = connect_and_join(&net, &path, 1);
    assert!(port.terminate(), "exit status 0 after SIGTERM");
    assert!(!path.exists(), "the socket file is removed");
    assert!(net.status().peers.is_empty(), "every peer left");
}

#[test]
fn stream_port_refuses_a_path_someone_listens_on() {
    let dir = tempfile::tempdir().unwrap();
    let _net = network(&dir);
    let path = dir.path().join("lab.sock");
    let _owner = UnixListener::bind(&path).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_guestnet"))
        .arg("--dir")
        .arg(dir.path())
        .args(["stream", "lab", "--listen"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use"), "clear error: {stderr}");
    assert!(path.exists(), "the owner's socket is left alone");
}

/// A `-netdev dgram` client: a datagram socket bound to its own path.
fn dgram_client(dir: &Path, name: &str) -> UnixDatagram {
    let socket = UnixDatagram::bind(dir.join(name)).expect("bind client");
    socket.set_read_timeout(Some(DEADLINE)).expect("timeout");
    socket
}

fn dgram_receive(socket: &UnixDatagram) -> Vec<u8> {
    let mut buffer = vec![0; 2048];
    let n = socket.recv(&mut buffer).expect("a datagram in time");
    buffer.truncate(n);
    buffer
}

#[test]
fn dgram_clients_exchange_frames() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let port = PortProcess::start(dir.path(), "dgram", "lab.dgram", &[]);
    let a = dgram_client(dir.path(), "a.sock");
    let b = dgram_client(dir.path(), "b.sock");

    let hello_a = frame(MacAddress::BROADCAST, mac(0xa), "hello from a");
    a.send_to(&hello_a, &port.path).unwrap();
    wait_for_status(&net, "a to join", |s| peer_with_mac(s, mac(0xa)).is_some());
    let hello_b = frame(MacAddress::BROADCAST, mac(0xb), "hello from b");
    b.send_to(&hello_b, &port.path).unwrap();
    assert_eq!(
        dgram_receive(&a),
        hello_b,
        "a broadcast reaches the other sender"
    );
    let status = wait_for_status(&net, "b to join", |s| peer_with_mac(s, mac(0xb)).is_some());
    assert_eq!(count_kind(&status, "dgram"), 2);

    let to_b: Vec<_> = (0..5)
        .map(|i| frame(mac(0xb), mac(0xa), &format!("a to b #{i}")))
        .collect();
    for f in &to_b {
        a.send_to(f, &port.path).unwrap();
    }
    for f in &to_b {
        assert_eq!(&dgram_receive(&b), f, "unicast, in order");
    }
    let to_a = frame(mac(0xa), mac(0xb), "b to a");
    b.send_to(&to_a, &port.path).unwrap();
    assert_eq!(dgram_receive(&a), to_a);

    // A datagram too long for the network, and a runt, are counted on their sender.
    let mut giant = frame(mac(0xb), mac(0xa), "too long");
    giant.resize(4000, 0);
    a.send_to(&giant, &port.path).unwrap();
    a.send_to(&[0u8; 10], &port.path).unwrap();
    let after = frame(mac(0xb), mac(0xa), "after the bad ones");
    a.send_to(&after, &port.path).unwrap();
    assert_eq!(dgram_receive(&b), after);
    wait_for_status(&net, "the bad datagrams to be counted", |s| {
        peer_with_mac(s, mac(0xa)).is_some_and(|p| p.drops.get("tx_invalid") == Some(&2))
    });
}

#[test]
fn dgram_unnamed_sender_is_counted_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let port = PortProcess::start(dir.path(), "dgram", "lab.dgram", &[]);
    let mut local = net.join(JoinOptions::default()).unwrap();
    let unnamed = UnixDatagram::unbound().unwrap();
    unnamed
        .send_to(&frame(local.mac(), mac(0xd), "from nowhere"), &port.path)
        .unwrap();
    unnamed
        .send_to(&frame(local.mac(), mac(0xd), "again"), &port.path)
        .unwrap();
    let status = wait_for_status(&net, "the unnamed frames to be counted", |s| {
        s.peers
            .iter()
            .any(|p| p.label == "dgram unnamed" && p.drops.get("tx_quarantined") == Some(&2))
    });
    assert_eq!(
        count_kind(&status, "dgram"),
        1,
        "no peer per unnamed sender"
    );
    assert_eq!(
        local.receive(usize::MAX, |_| {}),
        0,
        "nothing was delivered"
    );
}

#[test]
fn dgram_sender_that_went_away_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let port = PortProcess::start(dir.path(), "dgram", "lab.dgram", &[]);
    let mut local = net.join(JoinOptions::default()).unwrap();
    let client = dgram_client(dir.path(), "vm.sock");
    let hello = frame(local.mac(), mac(0xe), "soon gone");
    client.send_to(&hello, &port.path).unwrap();
    assert_eq!(receive_one(&mut local), hello);
    // The client closes its socket: the next frame for it finds nobody there.
    drop(client);
    local.send(&frame(mac(0xe), local.mac(), "anyone?"));
    wait_for_status(&net, "the gone sender's peer to leave", |s| {
        count_kind(s, "dgram") == 0
    });
    // A restarted client binding the same path again is a new peer.
    std::fs::remove_file(dir.path().join("vm.sock")).unwrap();
    let again = dgram_client(dir.path(), "vm.sock");
    again.send_to(&hello, &port.path).unwrap();
    assert_eq!(receive_one(&mut local), hello);
}

#[test]
fn dgram_port_cleans_up_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let mut port = PortProcess::start(dir.path(), "dgram", "lab.dgram", &[]);
    let client = dgram_client(dir.path(), "vm.sock");
    client
        .send_to(&frame(MacAddress::BROADCAST, mac(0xf), "hi"), &port.path)
        .unwrap();
    wait_for_status(&net, "the sender to join", |s| count_kind(s, "dgram") == 1);
    assert!(port.terminate(), "exit status 0 after SIGTERM");
    assert!(!port.path.exists(), "the socket file is removed");
    assert!(net.status().peers.is_empty(), "every peer left");
}

/// Polls the port's counters until `check` holds; fails after the deadline.
fn wait_for_counters<Values: std::fmt::Debug>(
    what: &str,
    read: impl Fn() -> Values,
    check: impl Fn(&Values) -> bool,
) -> Values {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let values = read();
        if check(&values) {
            return values;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {values:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn dgram_senders_beyond_max_clients_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let options = DgramOptions {
        max_clients: 2,
        ..DgramOptions::default()
    };
    let port = dgram_port_in_process(dir.path(), options);
    let mut local = net.join(JoinOptions::default()).unwrap();
    let a = dgram_client(dir.path(), "a.sock");
    let b = dgram_client(dir.path(), "b.sock");
    for (client, last) in [(&a, 0xa), (&b, 0xb)] {
        let hello = frame(local.mac(), mac(last), "served");
        client.send_to(&hello, &port.path).unwrap();
        assert_eq!(receive_one(&mut local), hello);
    }
    // A third sender (one program binding address after address) gets no peer, although
    // the network has room; its datagrams are dropped and counted.
    let c = dgram_client(dir.path(), "c.sock");
    for _ in 0..3 {
        c.send_to(&frame(local.mac(), mac(0xc), "over the limit"), &port.path)
            .unwrap();
    }
    let counters = wait_for_counters(
        "the third sender's datagrams to be refused",
        || port.counters.values(),
        |c| c.refused_over_limit == 3,
    );
    assert_eq!(counters.senders_admitted, 2);
    assert_eq!(counters.refused_by_network, 0);
    assert_eq!(count_kind(&net.status(), "dgram"), 2);
    assert_eq!(
        local.receive(usize::MAX, |_| {}),
        0,
        "nothing of it arrived"
    );
    // The two served carry on.
    let again = frame(local.mac(), mac(0xa), "still served");
    a.send_to(&again, &port.path).unwrap();
    assert_eq!(receive_one(&mut local), again);
}

#[test]
fn dgram_sender_that_falls_silent_expires_and_its_place_goes_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let options = DgramOptions {
        max_clients: 1,
        // Long enough that the second sender surely comes while the first is served.
        idle_timeout: Some(Duration::from_secs(1)),
        ..DgramOptions::default()
    };
    let port = dgram_port_in_process(dir.path(), options);
    let mut local = net.join(JoinOptions::default()).unwrap();
    let quiet = dgram_client(dir.path(), "quiet.sock");
    let hello = frame(local.mac(), mac(0x1), "then silence");
    quiet.send_to(&hello, &port.path).unwrap();
    assert_eq!(receive_one(&mut local), hello);
    // A second sender waits for the place.
    let next = dgram_client(dir.path(), "next.sock");
    next.send_to(&frame(local.mac(), mac(0x2), "full"), &port.path)
        .unwrap();
    wait_for_counters(
        "the second sender to be refused",
        || port.counters.values(),
        |c| c.refused_over_limit == 1,
    );
    // The first falls silent: it expires, its peer leaves and frees the slot.
    wait_for_status(&net, "the silent sender's peer to leave", |s| {
        count_kind(s, "dgram") == 0
    });
    assert_eq!(port.counters.values().senders_expired, 1);
    let mine = frame(local.mac(), mac(0x2), "my turn");
    next.send_to(&mine, &port.path).unwrap();
    assert_eq!(receive_one(&mut local), mine);
    assert_eq!(port.counters.values().senders_admitted, 2);
    // The network's traffic towards it reaches it.
    let reply = frame(mac(0x2), local.mac(), "welcome");
    local.send(&reply);
    assert_eq!(dgram_receive(&next), reply);
}

#[test]
fn dgram_sender_silent_past_idle_timeout_leaves_and_comes_back_with_its_next_datagram() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let port = PortProcess::start(dir.path(), "dgram", "lab.dgram", &["--idle-timeout", "0.2"]);
    let mut local = net.join(JoinOptions::default()).unwrap();
    let client = dgram_client(dir.path(), "vm.sock");
    let hello = frame(local.mac(), mac(0xe), "hello");
    client.send_to(&hello, &port.path).unwrap();
    assert_eq!(receive_one(&mut local), hello);
    wait_for_status(&net, "the silent sender's peer to leave", |s| {
        count_kind(s, "dgram") == 0
    });
    let back = frame(local.mac(), mac(0xe), "back again");
    client.send_to(&back, &port.path).unwrap();
    assert_eq!(receive_one(&mut local), back);
    let reply = frame(mac(0xe), local.mac(), "welcome back");
    local.send(&reply);
    assert_eq!(dgram_receive(&client), reply);
}

#[test]
fn stream_client_locked_to_its_mac_that_sends_as_another_host_is_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let net = network(&dir);
    let _port = PortProcess::start(dir.path(), "stream", "lab.sock", &["--lock-mac"]);
    let path = dir.path().join("lab.sock");
    let mut local = net.join(JoinOptions::default()).unwrap();
    let mut client = connect_and_join(&net, &path, 1);
    // The first source the client sends from becomes its locked MAC.
    let first = frame(local.mac(), mac(0xa), "first");
    client.send(&first);
    assert_eq!(receive_one(&mut local), first);
    // Then it sends as someone else, then as itself again: only the last one arrives.
    client.send(&frame(local.mac(), mac(0xb), "spoofed"));
    let again = frame(local.mac(), mac(0xa), "again");
    client.send(&again);
    assert_eq!(receive_one(&mut local), again);
    let status = wait_for_status(&net, "the spoofed frame is counted", |s| {
        peer_with_mac(s, mac(0xa)).is_some_and(|p| p.drops.get("tx_spoofed") == Some(&1))
    });
    assert!(peer_with_mac(&status, mac(0xa)).unwrap().lock_mac);
}
