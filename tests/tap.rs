//! TAP ports end to end: real kernel network stacks in network namespaces, each on a
//! `guestnet tap` process, talking through a network in a private directory.
//!
//! These need root, /dev/net/tun, `ip` and `ping`. Under CI (`CI=true`) a missing
//! prerequisite fails the test; elsewhere the test says why it skips. Every test makes
//! its own namespaces, named after the process and the test, and a [`Lab`] guard removes
//! them and kills its port processes however the test ends.
//!
//! IPv6 is turned off in the namespaces so that the only frames on the network are the
//! ones a test causes, and counters can be compared exactly.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use guestnet::network::counters::DropReason;
use guestnet::network::{CreateOptions, Network, PeerStatus};
use guestnet::wire::MacAddress;

mod root_support;
use root_support::{DEADLINE, KillOnDrop, ip, output_within, prerequisites_met, run, wait_until};

/// Whether this machine can run these tests (see `root_support::prerequisites_met`).
fn ready() -> bool {
    prerequisites_met("TAP tests", &["ip", "ping"])
}

const IFNAME: &str = "gn0";
const BIN: &str = env!("CARGO_BIN_EXE_guestnet");

/// A TAP port: a `guestnet tap` process serving one namespace, or one device of the
/// lab's process serving them all ([`Lab::together`]).
struct Tap {
    /// Its own process (none when the lab's one process serves it).
    child: Option<Child>,
    slot: u16,
    mac: MacAddress,
}

/// Namespaces on a network, each with a TAP port; everything is removed on drop.
struct Lab {
    dir: tempfile::TempDir,
    network: Network,
    namespaces: Vec<String>,
    taps: Vec<Tap>,
    /// The one `guestnet tap` process serving every namespace, if the lab has one.
    shared: Option<Child>,
}

impl Lab {
    /// `count` namespaces, `10.78.0.{1..}` on `gn0` in each, offloads on.
    fn new(test: &str, count: usize) -> Lab {
        Lab::with_offloads(test, &vec![true; count])
    }

    /// A namespace per entry of `offloads`, its TAP opened with offloads or without.
    fn with_offloads(test: &str, offloads: &[bool]) -> Lab {
        let args: Vec<&[&str]> = offloads
            .iter()
            .map(|&offload| {
                if offload {
                    &[][..]
                } else {
                    &["--no-offload"][..]
                }
            })
            .collect();
        Lab::with_args(test, &args)
    }

    /// A namespace per entry of `args`, its TAP port started with those extra options.
    fn with_args(test: &str, args: &[&[&str]]) -> Lab {
        let mut lab = Lab::empty();
        for (i, &extra) in args.iter().enumerate() {
            lab.add_namespace(test);
            let tap = lab.start_tap(i, extra);
            lab.taps.push(tap);
            lab.give_address(i);
        }
        lab
    }

    /// A network in a private directory, nothing on it yet.
    fn empty() -> Lab {
        let dir = tempfile::tempdir().expect("temp dir");
        let network = Network::create(dir.path(), "lab", CreateOptions::default()).expect("create");
        Lab {
            dir,
            network,
            namespaces: Vec::new(),
            taps: Vec::new(),
            shared: None,
        }
    }

    /// Makes the lab's next namespace (IPv6 off), removed with the lab; returns its name.
    fn add_namespace(&mut self, test: &str) -> String {
        let namespace = format!(
            "gnt-{}-{test}-{}",
            std::process::id(),
            self.namespaces.len()
        );
        ip(&["netns", "add", &namespace]);
        self.namespaces.push(namespace.clone());
        root_support::ipv6_off(&namespace);
        namespace
    }

    /// Gives namespace `i`'s `gn0` its address.
    fn give_address(&self, i: usize) {
        let cidr = format!("{}/24", Lab::address(i));
        root_support::add_address(&self.namespaces[i], &cidr, IFNAME);
    }

    /// `count` namespaces served by one `guestnet tap` process (`--ifname gn0 --netns NS`
    /// per namespace), offloads on: frames between them go straight from device to
    /// device.
    fn together(test: &str, count: usize) -> Lab {
        let mut lab = Lab::empty();
        let mut command = Command::new(BIN);
        command
            .arg("--dir")
            .arg(lab.dir.path())
            .args(["tap", "lab"]);
        for _ in 0..count {
            let namespace = lab.add_namespace(test);
            command.args(["--ifname", IFNAME, "--netns", &namespace]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start guestnet tap");
        let stdout = child.stdout.take().expect("piped stdout");
        lab.shared = Some(child);
        let lines = root_support::lines_of(stdout);
        for i in 0..count {
            let line = lines
                .recv_timeout(DEADLINE)
                .unwrap_or_else(|_| panic!("guestnet tap did not get ready in {DEADLINE:?}"));
            lab.taps.push(Tap::from_ready_line(&line, None));
            lab.give_address(i);
        }
        lab
    }

    fn address(i: usize) -> String {
        format!("10.78.0.{}", i + 1)
    }

    /// Starts `guestnet tap` for namespace `i` and waits for its ready line.
    fn start_tap(&self, i: usize, extra: &[&str]) -> Tap {
        let mut child = Command::new(BIN)
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "tap",
                "lab",
                "--ifname",
                IFNAME,
                "--netns",
                &self.namespaces[i],
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start guestnet tap");
        let stdout = child.stdout.take().expect("piped stdout");
        let received = root_support::lines_of(stdout);
        let line = match received.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("guestnet tap did not get ready in {:?}", DEADLINE);
            }
        };
        Tap::from_ready_line(&line, Some(child))
    }

    fn exec(&self, i: usize, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.namespaces[i]])
            .args(args))
    }

    /// Pings namespace `to` from `from`; true if replies came.
    fn ping(&self, from: usize, to: usize, count: u32) -> bool {
        self.exec(
            from,
            &[
                "ping",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "1",
                &Lab::address(to),
            ],
        )
        .status
        .success()
    }

    /// Sends `bytes` of the built-in stream from namespace `from` to `to` (listening on
    /// `port`) and checks that every byte arrived, in order (length and CRC-32 compared).
    fn transfer_intact(&self, from: usize, to: usize, bytes: u64, port: u16) {
        let listen = format!("{}:{port}", Lab::address(to));
        let mut receiver = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.namespaces[to],
                BIN,
                "__tcp-recv",
                "--listen",
                &listen,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the receiver");
        let stdout = receiver.stdout.take().expect("stdout");
        // Killed and reaped however the test ends.
        let _receiver = KillOnDrop(receiver);
        let receiver_lines = root_support::lines_of(stdout);
        let line = receiver_lines
            .recv_timeout(DEADLINE)
            .expect("receiver ready line");
        assert!(line.starts_with("listening"), "{line}");
        let mut sender = Command::new("ip");
        sender.args([
            "netns",
            "exec",
            &self.namespaces[from],
            BIN,
            "__tcp-send",
            "--connect",
            &listen,
            "--bytes",
            &bytes.to_string(),
        ]);
        let sent = output_within(sender, Duration::from_secs(15));
        assert!(sent.status.success(), "sender: {sent:?}");
        let received = Output {
            status: sent.status,
            stdout: receiver_lines
                .recv_timeout(DEADLINE)
                .expect("receiver report")
                .into_bytes(),
            stderr: Vec::new(),
        };
        let (sent_bytes, sent_crc) = report(&sent, "sent");
        let (received_bytes, received_crc) = report(&received, "received");
        assert_eq!(sent_bytes, bytes);
        assert_eq!(received_bytes, sent_bytes);
        assert_eq!(received_crc, sent_crc, "the stream arrived changed");
    }

    /// Starts `guestnet stream` on the lab's network and connects a client to it, as QEMU's
    /// `-netdev stream` would; the port process is killed when the guard drops.
    fn stream_client(&self) -> (KillOnDrop, UnixStream) {
        let socket = self.dir.path().join("qemu.sock");
        let mut stream_port = Command::new(BIN)
            .arg("--dir")
            .arg(self.dir.path())
            .args(["stream", "lab", "--listen"])
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start guestnet stream");
        let stdout = stream_port.stdout.take().expect("stdout");
        let guard = KillOnDrop(stream_port);
        let (lines, ready) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = lines.send(line);
        });
        let line = ready.recv_timeout(DEADLINE).expect("ready line");
        assert!(line.starts_with("listening"), "{line}");
        let client = UnixStream::connect(&socket).expect("connect");
        client.set_read_timeout(Some(DEADLINE)).expect("timeout");
        (guard, client)
    }

    fn peer(&self, i: usize) -> PeerStatus {
        let slot = self.taps[i].slot;
        self.network
            .status()
            .peers
            .into_iter()
            .find(|peer| peer.slot == slot)
            .unwrap_or_else(|| panic!("peer of namespace {i} (slot {slot}) is up"))
    }

    fn rx_packets(&self, i: usize) -> u64 {
        self.peer(i).rx_packets
    }
}

impl Tap {
    /// The port `guestnet tap` reported ready ("ready gn0 slot N mac M").
    fn from_ready_line(line: &str, child: Option<Child>) -> Tap {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"ready"), "{line}");
        assert_eq!(words.get(1), Some(&IFNAME), "{line}");
        Tap {
            child,
            slot: words[3].parse().expect("slot"),
            mac: words[5].parse().expect("mac"),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let children = self.taps.iter_mut().filter_map(|tap| tap.child.as_mut());
        for child in children.chain(self.shared.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for namespace in &self.namespaces {
            let _ = run(Command::new("ip").args(["netns", "del", namespace]));
        }
    }
}

/// Reads one frame of the stream protocol (4-byte big-endian length, then the frame).
fn read_frame(client: &mut UnixStream) -> Vec<u8> {
    let mut length = [0u8; 4];
    client
        .read_exact(&mut length)
        .expect("a frame from the network");
    let mut frame = vec![0u8; u32::from_be_bytes(length) as usize];
    client.read_exact(&mut frame).expect("the frame's bytes");
    frame
}

fn report(output: &Output, verb: &str) -> (u64, String) {
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|line| line.starts_with(verb))
        .unwrap_or_else(|| panic!("no '{verb}' report in {text:?}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    (words[1].parse().expect("bytes"), words[4].to_string())
}

#[test]
fn two_namespaces_resolve_ping_and_move_64_mib_intact() {
    if !ready() {
        return;
    }
    let lab = Lab::new("pair", 2);
    assert!(lab.ping(0, 1, 2), "ping from a to b");
    assert!(lab.ping(1, 0, 2), "ping from b to a");
    // ARP resolved b's address to the MAC its TAP peer publishes.
    let neighbours = lab.exec(0, &["ip", "neigh", "show", &Lab::address(1)]);
    let neighbours = String::from_utf8_lossy(&neighbours.stdout);
    assert!(
        neighbours.contains(&lab.taps[1].mac.to_string()),
        "a's neighbour entry for b: {neighbours}"
    );

    lab.transfer_intact(0, 1, 64 << 20, 5301);
}

#[test]
fn broadcast_reaches_every_namespace() {
    if !ready() {
        return;
    }
    let lab = Lab::new("bcast", 3);
    let before = [lab.rx_packets(1), lab.rx_packets(2)];
    // a asks for b's address: one ARP broadcast, which c must see too.
    assert!(lab.ping(0, 1, 1));
    wait_until("the broadcast reached b's and c's TAP peers", || {
        lab.rx_packets(1) > before[0] && lab.rx_packets(2) > before[1]
    });
    // …and c's kernel, behind its TAP, received it.
    let stats = lab.exec(2, &["ip", "-s", "-j", "link", "show", IFNAME]);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("ip -j output");
    let received = stats[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .expect("rx packets");
    assert!(received >= 1, "c's interface received nothing: {stats}");
}

#[test]
fn a_promiscuous_interface_sees_other_namespaces_unicast() {
    if !ready() {
        return;
    }
    let lab = Lab::new("promisc", 3);
    assert!(lab.ping(0, 1, 1), "resolve b from a");
    let quiet = lab.rx_packets(2);
    assert!(lab.ping(0, 1, 2));
    assert_eq!(lab.rx_packets(2), quiet, "unicast a→b leaked to c");
    assert!(!lab.peer(2).promiscuous);

    ip(&[
        "-n",
        &lab.namespaces[2],
        "link",
        "set",
        IFNAME,
        "promisc",
        "on",
    ]);
    wait_until("c's peer is promiscuous", || lab.peer(2).promiscuous);
    let before = lab.rx_packets(2);
    assert!(lab.ping(0, 1, 3));
    wait_until("c saw the pings between a and b", || {
        lab.rx_packets(2) >= before + 6
    });

    ip(&[
        "-n",
        &lab.namespaces[2],
        "link",
        "set",
        IFNAME,
        "promisc",
        "off",
    ]);
    wait_until("c's peer is no longer promiscuous", || {
        !lab.peer(2).promiscuous
    });
}

#[test]
fn traffic_follows_a_new_mac_and_status_shows_it() {
    if !ready() {
        return;
    }
    let lab = Lab::new("mac", 2);
    assert!(lab.ping(0, 1, 1));
    // Announce the change with a gratuitous ARP, so a's cache follows at once instead of
    // after its entry goes stale.
    let notify = lab.exec(1, &["sysctl", "-qw", "net.ipv4.conf.all.arp_notify=1"]);
    assert!(notify.status.success());
    let notify = lab.exec(
        1,
        &[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{IFNAME}.arp_notify=1"),
        ],
    );
    assert!(notify.status.success());
    // Traffic flows while the address changes.
    let mut pinger = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.namespaces[0],
            "ping",
            "-i",
            "0.05",
            "-c",
            "40",
        ])
        .arg(Lab::address(1))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ping");
    let new_mac: MacAddress = "02:00:5e:10:20:30".parse().expect("mac");
    ip(&[
        "-n",
        &lab.namespaces[1],
        "link",
        "set",
        "dev",
        IFNAME,
        "address",
        "02:00:5e:10:20:30",
    ]);
    wait_until("b's peer publishes the new MAC", || {
        lab.peer(1).mac == new_mac
    });
    let _ = pinger.kill();
    let _ = pinger.wait();
    assert!(lab.ping(0, 1, 3), "ping after the MAC change");
    let neighbours = lab.exec(0, &["ip", "neigh", "show", &Lab::address(1)]);
    assert!(
        String::from_utf8_lossy(&neighbours.stdout).contains("02:00:5e:10:20:30"),
        "a learned b's new address"
    );
    let status = run(Command::new(BIN)
        .arg("--dir")
        .arg(lab.dir.path())
        .args(["status", "lab"]));
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains("02:00:5e:10:20:30"));
}

#[test]
fn a_frame_longer_than_the_mtu_is_dropped_and_counted() {
    if !ready() {
        return;
    }
    let lab = Lab::new("mtu", 2);
    assert!(lab.ping(0, 1, 1));
    assert_eq!(lab.peer(0).drops.get("tx_invalid"), None);
    ip(&[
        "-n",
        &lab.namespaces[0],
        "link",
        "set",
        IFNAME,
        "mtu",
        "9000",
    ]);
    let big = lab.exec(
        0,
        &[
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "-s",
            "3000",
            "-M",
            "do",
            &Lab::address(1),
        ],
    );
    assert!(
        !big.status.success(),
        "a 3 KB frame crossed a 1500-byte network"
    );
    let slot = lab.taps[0].slot;
    wait_until("the refused frame is counted as invalid", || {
        lab.network
            .counters(slot)
            .is_some_and(|c| c.tx_dropped(DropReason::Invalid) >= 1)
    });
    assert!(lab.ping(0, 1, 1), "small frames still pass");
}

#[test]
fn a_killed_tap_port_is_reclaimed_and_the_others_keep_working() {
    if !ready() {
        return;
    }
    let mut lab = Lab::new("kill", 3);
    let victim = lab.taps[2].slot;
    let child = lab.taps[2].child.as_mut().expect("its own process");
    child.kill().expect("SIGKILL the port");
    let _ = child.wait();
    wait_until("the dead port's slot is reclaimed", || {
        lab.network
            .status()
            .peers
            .iter()
            .all(|peer| peer.slot != victim)
    });
    // The kernel removed the device with the port's descriptor.
    let gone = lab.exec(2, &["ip", "link", "show", IFNAME]);
    assert!(!gone.status.success(), "gn0 outlived its port");
    assert!(lab.ping(0, 1, 2), "a and b still talk");
    assert!(lab.ping(1, 0, 2));
}

#[test]
fn link_down_on_the_interface_stops_delivery_and_counts_it() {
    if !ready() {
        return;
    }
    link_down_stops_delivery_and_is_counted(&Lab::new("down", 2));
}

/// The same through one process, whose frames between its devices skip the ring: the
/// network's admission still stops them.
#[test]
fn link_down_stops_delivery_between_devices_of_one_process() {
    if !ready() {
        return;
    }
    link_down_stops_delivery_and_is_counted(&Lab::together("down1", 2));
}

fn link_down_stops_delivery_and_is_counted(lab: &Lab) {
    assert!(lab.ping(0, 1, 1));
    ip(&["-n", &lab.namespaces[1], "link", "set", IFNAME, "down"]);
    wait_until("b's peer is marked link down", || lab.peer(1).link_down);
    assert!(!lab.ping(0, 1, 1), "a down interface answered");
    wait_until("the frames to b are counted as link_down", || {
        lab.peer(0)
            .drops
            .get("tx_link_down")
            .is_some_and(|&n| n >= 1)
    });
    ip(&["-n", &lab.namespaces[1], "link", "set", IFNAME, "up"]);
    wait_until("b's link is up again", || !lab.peer(1).link_down);
    assert!(lab.ping(0, 1, 2), "ping after link up");
}

/// A stream-port client shares the network with a namespace: its ARP broadcast reaches
/// the namespace's kernel, whose unicast answer reaches the client.
#[test]
fn a_stream_client_and_a_namespace_share_the_network() {
    if !ready() {
        return;
    }
    let lab = Lab::new("mixed", 1);
    let (_stream_port, mut client) = lab.stream_client();
    let client_mac = [0x02, 0, 0, 0, 0, 0x99];
    let client_ip = [10, 78, 0, 99];
    // ARP: who has 10.78.0.1? tell 10.78.0.99.
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&client_mac);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&client_mac);
    frame.extend_from_slice(&client_ip);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&[10, 78, 0, 1]);
    frame.resize(60, 0);
    let before = lab.rx_packets(0);
    let mut message = (frame.len() as u32).to_be_bytes().to_vec();
    message.extend_from_slice(&frame);
    client.write_all(&message).expect("send the ARP request");
    wait_until("the namespace's TAP peer received the broadcast", || {
        lab.rx_packets(0) > before
    });
    // The kernel answers; read frames until its ARP reply arrives.
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "no ARP reply from the namespace");
        let reply = read_frame(&mut client);
        let is_answer = reply.len() >= 42
            && reply[0..6] == client_mac
            && reply[12..14] == [0x08, 0x06]
            && reply[20..22] == [0, 2]
            && reply[28..32] == [10, 78, 0, 1];
        if is_answer {
            assert_eq!(
                reply[6..12],
                lab.taps[0].mac.octets(),
                "answered from the TAP's MAC"
            );
            break;
        }
    }
}

#[test]
fn the_demo_runs_end_to_end_and_cleans_up() {
    if !ready() {
        return;
    }
    let mut demo = Command::new(BIN);
    demo.args(["demo", "--seconds", "1"]);
    let output = output_within(demo, Duration::from_secs(40));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("ping both ways"), "{text}");
    assert!(text.contains("average RTT"), "{text}");
    assert!(text.contains("Gbit/s"), "{text}");
    assert!(text.contains("cleaning up"), "{text}");
    // Its namespaces and its network directory are gone.
    let marker = "create namespaces ";
    let line = text
        .lines()
        .find(|line| line.contains(marker))
        .expect("namespace line");
    let first = line
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .expect("name");
    let namespaces = run(Command::new("ip").args(["netns", "list"]));
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).contains(first),
        "{first} left behind"
    );
    let pid = first.trim_start_matches("gn-demo-").trim_end_matches("-a");
    assert!(!std::path::Path::new(&format!("/dev/shm/guestnet-demo-{pid}")).exists());
}

#[test]
fn without_offloads_64_mib_arrive_intact() {
    if !ready() {
        return;
    }
    let lab = Lab::with_offloads("nooff", &[false, false]);
    lab.transfer_intact(0, 1, 64 << 20, 5302);
    // Both TAPs were opened plainly: every frame on the network fits the MTU.
    for i in 0..2 {
        assert_eq!(lab.peer(i).drops.get("tx_invalid"), None, "namespace {i}");
    }
}

/// One TAP takes offloads and one does not: the offload side's TCP super-frames are cut
/// into MTU-sized segments, checksums finished, on their way to the plain side; the plain
/// side's frames reach the offload side as they are. Both directions arrive intact.
#[test]
fn a_mixed_network_of_offload_and_plain_taps_moves_16_mib_both_ways_intact() {
    if !ready() {
        return;
    }
    let lab = Lab::with_offloads("mixoff", &[true, false]);
    let sent_before = lab.peer(0).tx_packets;
    let received_before = lab.peer(1).rx_packets;
    lab.transfer_intact(0, 1, 16 << 20, 5303);
    let sent = lab.peer(0).tx_packets - sent_before;
    let received = lab.peer(1).rx_packets - received_before;
    // 16 MiB in segments of at most 1460 bytes is at least 11 490 frames; the offload
    // side handed over far fewer, larger ones.
    assert!(
        received >= (16 << 20) / 1460,
        "plain side received {received}"
    );
    assert!(
        sent * 2 < received,
        "the offload side sent {sent} frames for the plain side's {received}: no super-frames?"
    );
    lab.transfer_intact(1, 0, 16 << 20, 5304);
}

/// The internet checksum (RFC 1071) of `parts` laid end to end, each of even length
/// except perhaps the last.
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in parts.concat().chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A namespace whose TAP takes checksum offload sends UDP and TCP to a stream-port
/// client: the kernel leaves their checksums for the device to finish, and the client,
/// which cannot, must get them finished, in frames no longer than the MTU allows.
#[test]
fn a_stream_client_gets_finished_checksums_from_an_offload_namespace() {
    if !ready() {
        return;
    }
    let lab = Lab::new("csum", 1);
    let (_stream_port, mut client) = lab.stream_client();
    ip(&[
        "-n",
        &lab.namespaces[0],
        "neigh",
        "replace",
        "10.78.0.99",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        IFNAME,
        "nud",
        "permanent",
    ]);
    // A 1400-byte UDP datagram, and a TCP connection attempt (its SYN is enough).
    let udp = lab.exec(
        0,
        &[
            "bash",
            "-c",
            "head -c 1400 /dev/urandom > /dev/udp/10.78.0.99/9999",
        ],
    );
    assert!(udp.status.success(), "send UDP: {udp:?}");
    let _syn = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &lab.namespaces[0]])
            .args(["bash", "-c", "exec 3<>/dev/tcp/10.78.0.99/9998"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a TCP connection"),
    );
    let (mut saw_udp, mut saw_syn) = (false, false);
    let deadline = Instant::now() + DEADLINE;
    while !(saw_udp && saw_syn) {
        assert!(
            Instant::now() < deadline,
            "UDP seen: {saw_udp}, SYN seen: {saw_syn}"
        );
        let frame = read_frame(&mut client);
        assert!(frame.len() <= 1514, "a {}-byte frame", frame.len());
        if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip_header = &frame[14..14 + usize::from(frame[14] & 0x0f) * 4];
        assert_eq!(internet_checksum(&[ip_header]), 0, "IPv4 header checksum");
        let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
        let segment = &frame[14 + ip_header.len()..14 + total];
        let protocol = ip_header[9];
        let mut pseudo = ip_header[12..20].to_vec();
        pseudo.extend_from_slice(&[0, protocol]);
        pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        let port = u16::from_be_bytes([segment[2], segment[3]]);
        match (protocol, port) {
            (17, 9999) => {
                assert_eq!(segment.len(), 8 + 1400);
                assert_ne!(&segment[6..8], &[0, 0], "UDP checksum left out");
                assert_eq!(internet_checksum(&[&pseudo, segment]), 0, "UDP checksum");
                saw_udp = true;
            }
            (6, 9998) => {
                assert_eq!(internet_checksum(&[&pseudo, segment]), 0, "TCP checksum");
                saw_syn = true;
            }
            _ => {}
        }
    }
}

#[test]
fn a_mac_locked_namespace_that_changes_its_address_loses_its_traffic_counted() {
    if !ready() {
        return;
    }
    let lab = Lab::with_args("lock", &[&[], &["--lock-mac"]]);
    assert!(
        lab.ping(0, 1, 1),
        "ping while the address is the locked one"
    );
    let locked = lab.peer(1);
    assert!(locked.lock_mac, "status shows the lock");
    ip(&[
        "-n",
        &lab.namespaces[1],
        "link",
        "set",
        "dev",
        IFNAME,
        "address",
        "02:00:5e:10:20:31",
    ]);
    // b now answers from an address it is not locked to: its frames are refused.
    assert!(
        !lab.ping(1, 0, 3),
        "b's frames from its new address got through"
    );
    wait_until("b's refused frames are counted as spoofed", || {
        lab.peer(1).drops.get("tx_spoofed").copied().unwrap_or(0) > 0
    });
    assert_eq!(
        lab.peer(1).mac,
        locked.mac,
        "the locked MAC stays published"
    );
}

#[test]
fn two_isolated_namespaces_reach_a_normal_one_and_not_each_other() {
    if !ready() {
        return;
    }
    let lab = Lab::with_args("iso", &[&[], &["--isolated"], &["--isolated"]]);
    assert!(lab.ping(1, 0, 1), "isolated → normal");
    assert!(lab.ping(2, 0, 1), "the other isolated → normal");
    assert!(lab.ping(0, 1, 1), "normal → isolated");
    assert!(!lab.ping(1, 2, 2), "isolated namespaces reached each other");
    assert!(lab.peer(1).isolated && lab.peer(2).isolated && !lab.peer(0).isolated);
}

#[test]
fn namespaces_on_vlan_10_ping_each_other_and_one_on_vlan_20_in_the_same_subnet_cannot() {
    if !ready() {
        return;
    }
    let lab = Lab::with_args(
        "vlan",
        &[&["--vlan", "10"], &["--vlan", "10"], &["--vlan", "20"]],
    );
    assert!(lab.ping(0, 1, 1), "VLAN 10 → VLAN 10");
    assert!(lab.ping(1, 0, 1), "and back");
    let other = lab.peer(2);
    assert_eq!(other.vlans, "20");
    assert_eq!(
        (other.vlan_mode.as_str(), other.native),
        ("access", Some(20))
    );
    assert!(!lab.ping(2, 0, 2), "VLAN 20 reached VLAN 10");
    assert!(!lab.ping(0, 2, 2), "VLAN 10 reached VLAN 20");
    let after_2 = lab.peer(2);
    // Its ARP requests went out, counted as sent, and reached nobody: it is alone in its
    // VLAN, and nothing of VLAN 10 reached it.
    assert!(
        after_2.tx_packets > other.tx_packets,
        "VLAN 20 sent nothing"
    );
    assert_eq!(
        after_2.tx_deliveries, other.tx_deliveries,
        "a frame of VLAN 20 was delivered somewhere"
    );
    assert_eq!(after_2.rx_packets, 0, "VLAN 20 received a frame");
    assert!(lab.ping(0, 1, 1), "VLAN 10 still works");
}

#[test]
fn a_rate_limited_namespace_sends_tcp_near_its_rate_without_losing_frames() {
    if !ready() || !prerequisites_met("the rate-limit test", &["iperf3"]) {
        return;
    }
    let lab = Lab::with_args("rate", &[&["--rate", "200m"], &[]]);
    assert!(lab.ping(0, 1, 1));
    assert_eq!(lab.peer(0).rate, 200_000_000, "status shows the rate");
    // A one-off iperf3 server in the unlimited namespace; its first line says it listens.
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.namespaces[1],
            "iperf3",
            "-s",
            "-1",
            "--forceflush",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    let stdout = server.stdout.take().expect("piped");
    let _server = KillOnDrop(server);
    let (lines, listening) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening") && lines.send(()).is_err() {
                break;
            }
        }
    });
    listening
        .recv_timeout(DEADLINE)
        .expect("the iperf3 server listens");
    let mut client = Command::new("ip");
    client.args(["netns", "exec", &lab.namespaces[0], "iperf3", "-c"]);
    client.arg(Lab::address(1)).args(["-t", "3", "-J"]);
    let output = output_within(client, Duration::from_secs(30));
    assert!(output.status.success(), "iperf3 client failed");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("iperf3's JSON report");
    let sent = &report["end"]["sum_sent"];
    let bps = sent["bits_per_second"].as_f64().expect("bits per second");
    let ratio = bps / 200e6;
    eprintln!(
        "rate-limited TCP: {:.1} Mbit/s ({ratio:.2} × 200 Mbit/s), {} retransmissions",
        bps / 1e6,
        sent["retransmits"]
    );
    assert!(
        (0.5..=1.1).contains(&ratio),
        "{:.1} Mbit/s against a 200 Mbit/s limit",
        bps / 1e6
    );
    // The TAP port holds its guest back instead of dropping: no frame lost to the limit.
    assert_eq!(
        lab.peer(0).drops.get("tx_rate_limited"),
        None,
        "frames were dropped at the limit instead of held back"
    );
}

/// Namespaces served by one process: frames between its devices go straight from one to
/// the other, counted as delivered and received as through the rings, and the receiving
/// port's writer is never woken for them.
#[test]
fn namespaces_served_by_one_process_talk_past_the_rings_counted() {
    if !ready() {
        return;
    }
    let lab = Lab::together("one", 2);
    assert!(lab.ping(0, 1, 1), "resolve and ping b from a");
    let before = [lab.peer(0), lab.peer(1)];
    let pings = 30;
    let output = lab.exec(
        0,
        &[
            "ping",
            "-c",
            &pings.to_string(),
            "-i",
            "0.01",
            "-W",
            "1",
            &Lab::address(1),
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let after = [lab.peer(0), lab.peer(1)];
    let received = |i: usize| after[i].rx_packets - before[i].rx_packets;
    let sent = |i: usize| after[i].tx_packets - before[i].tx_packets;
    // Requests one way, replies the other (and perhaps an ARP refresh).
    assert!(received(1) >= pings && received(0) >= pings, "{after:?}");
    assert_eq!(sent(0), received(1), "a's frames all reached b: {after:?}");
    assert_eq!(sent(1), received(0), "b's frames all reached a: {after:?}");
    assert_eq!(
        after[0].tx_deliveries - before[0].tx_deliveries,
        sent(0),
        "{after:?}"
    );
    // Through the rings each request wakes b's writer and each reply a's: 60 wake-ups.
    let woken = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.wakeups - b.wakeups)
        .sum::<u64>();
    assert!(
        woken <= 4,
        "{woken} writer wake-ups for {pings} pings: frames went through the rings"
    );
    assert!(after.iter().all(|p| p.drops.is_empty()), "{after:?}");
    lab.transfer_intact(0, 1, 16 << 20, 5311);
    lab.transfer_intact(1, 0, 16 << 20, 5312);
}

/// A process serving several namespaces: a device deleted under it takes only its own
/// peer out of the network (the peer leaves at once, the others serve on), and the
/// process killed with SIGKILL leaves neither peers nor devices behind.
#[test]
fn one_process_serving_three_namespaces_loses_one_device_then_is_killed() {
    if !ready() {
        return;
    }
    let mut lab = Lab::together("three", 3);
    assert!(lab.ping(0, 2, 1), "a reaches c");
    let gone = lab.taps[2].slot;
    ip(&["-n", &lab.namespaces[2], "link", "del", IFNAME]);
    // Left, not swept: the process is alive and would hold a slot it had not let go.
    wait_until("c's peer has left the network", || {
        lab.network
            .status()
            .peers
            .iter()
            .all(|peer| peer.slot != gone)
    });
    assert!(lab.ping(0, 1, 2), "a and b still talk");
    assert!(lab.ping(1, 0, 2));
    let child = lab.shared.as_mut().expect("the lab's process");
    child.kill().expect("SIGKILL the process");
    let _ = child.wait();
    wait_until("every peer of the killed process is reclaimed", || {
        lab.network.status().peers.is_empty()
    });
    for i in 0..2 {
        let left = lab.exec(i, &["ip", "link", "show", IFNAME]);
        assert!(
            !left.status.success(),
            "gn0 of namespace {i} outlived its process"
        );
    }
}
