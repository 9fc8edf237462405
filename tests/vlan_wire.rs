//! 802.1Q VLANs on the wire: namespaces on TAP ports, where the trunk side speaks through a
//! raw `AF_PACKET` socket because this host's kernel has no VLAN devices.
//!
//! Each test puts a `guestnet tap --trunk 10,20` port in a namespace of its own, where a
//! packet socket (tests/root_support/packet.rs) writes tagged frames onto the TAP and reads
//! what arrives, the tag coming back as packet metadata (`PACKET_AUXDATA`). Access
//! namespaces on `--vlan 10` and `--vlan 20` use the same IP subnet, even the same address,
//! so that only the VLAN keeps them apart: their kernels answer the trunk's ARP requests,
//! and the counters of `guestnet status` account for every frame that is not answered.
//!
//! These need root, /dev/net/tun, `ip` (and `tshark` for the capture test). Under CI
//! (`CI=true`) a missing prerequisite fails the test; elsewhere the test says why it skips.
//! A [`Lab`] removes its namespaces and kills its port processes however the test ends.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guestnet::network::{CreateOptions, JoinOptions, Network, PeerStatus, PortKind};
use guestnet::wire::MacAddress;

mod root_support;
use root_support::packet::{PacketSocket, Received, TPID_8021Q, describe};
use root_support::{DEADLINE, KillOnDrop, ip, output_within, prerequisites_met, run, wait_until};

const IFNAME: &str = "gn0";
const BIN: &str = env!("CARGO_BIN_EXE_guestnet");

/// The address the trunk side asks from; no namespace has it.
const ASKER: [u8; 4] = [10, 79, 0, 99];
/// The address both access namespaces have, each in its own VLAN.
const SHARED: [u8; 4] = [10, 79, 0, 1];
/// An address only the VLAN-10 namespace has.
const ONLY_10: [u8; 4] = [10, 79, 0, 10];

fn ready() -> bool {
    prerequisites_met("VLAN wire tests", &["ip"])
}

/// A `guestnet tap` process serving one namespace.
struct Tap {
    child: Child,
    slot: u16,
    mac: MacAddress,
}

/// Namespaces on a network, each with a TAP port; everything is removed on drop.
struct Lab {
    dir: tempfile::TempDir,
    network: Network,
    test: String,
    namespaces: Vec<String>,
    taps: Vec<Tap>,
}

impl Lab {
    fn new(test: &str) -> Lab {
        let dir = tempfile::tempdir().expect("temp dir");
        let network = Network::create(dir.path(), "lab", CreateOptions::default()).expect("create");
        Lab {
            dir,
            network,
            test: test.to_string(),
            namespaces: Vec::new(),
            taps: Vec::new(),
        }
    }

    /// The usual lab: namespace 0 on a trunk of VLANs 10 and 20 (no addresses: a packet
    /// socket speaks for it), 1 on VLAN 10 and 2 on VLAN 20, both with [`SHARED`].
    fn trunk_and_two_vlans(test: &str, extra: &[&str]) -> Lab {
        let mut lab = Lab::new(test);
        lab.add(&[&["--trunk", "10,20"], extra].concat(), &[]);
        lab.add(&[&["--vlan", "10"], extra].concat(), &["10.79.0.1/24"]);
        lab.add(&[&["--vlan", "20"], extra].concat(), &["10.79.0.1/24"]);
        lab
    }

    /// A namespace with IPv6 off, on a TAP port started with `args`, with `addresses` on
    /// its interface; returns its index.
    fn add(&mut self, args: &[&str], addresses: &[&str]) -> usize {
        let i = self.namespaces.len();
        let namespace = format!("gnv-{}-{}-{i}", std::process::id(), self.test);
        ip(&["netns", "add", &namespace]);
        self.namespaces.push(namespace.clone());
        // Off before the TAP exists, so that its interface never speaks IPv6: the only
        // frames on the network are the ones a test causes.
        root_support::ipv6_off(&namespace);
        let tap = self.start_tap(&namespace, args);
        self.taps.push(tap);
        for address in addresses {
            ip(&["-n", &namespace, "addr", "add", address, "dev", IFNAME]);
        }
        i
    }

    /// Starts `guestnet tap` in `namespace` and waits for its ready line.
    fn start_tap(&self, namespace: &str, args: &[&str]) -> Tap {
        let mut child = Command::new(BIN)
            .arg("--dir")
            .arg(self.dir.path())
            .args(["tap", "lab", "--ifname", IFNAME, "--netns", namespace])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start guestnet tap");
        let stdout = child.stdout.take().expect("piped stdout");
        let received = root_support::lines_of(stdout);
        let Ok(line) = received.recv_timeout(DEADLINE) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("guestnet tap {args:?} did not get ready in {DEADLINE:?}");
        };
        // "ready gn0 slot N mac M"
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"ready"), "{line}");
        Tap {
            child,
            slot: words[3].parse().expect("slot"),
            mac: words[5].parse().expect("mac"),
        }
    }

    /// A packet socket on namespace `i`'s interface.
    fn socket(&self, i: usize) -> PacketSocket {
        PacketSocket::open(&self.namespaces[i], IFNAME)
    }

    fn mac(&self, i: usize) -> MacAddress {
        self.taps[i].mac
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

    fn drops(&self, i: usize, name: &str) -> u64 {
        self.peer(i).drops.get(name).copied().unwrap_or(0)
    }

    fn exec(&self, i: usize, args: &[&str]) -> std::process::Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.namespaces[i]])
            .args(args))
    }

    /// `guestnet status --json`, the peer of namespace `i`.
    fn status_json(&self, i: usize) -> serde_json::Value {
        let output = run(Command::new(BIN)
            .arg("--dir")
            .arg(self.dir.path())
            .args(["status", "lab", "--json"]));
        assert!(output.status.success(), "status --json: {output:?}");
        let status: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("status prints JSON");
        let slot = self.taps[i].slot;
        status["peers"]
            .as_array()
            .expect("a list of peers")
            .iter()
            .find(|peer| peer["slot"] == slot)
            .unwrap_or_else(|| panic!("slot {slot} in {status}"))
            .clone()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for tap in &mut self.taps {
            let _ = tap.child.kill();
            let _ = tap.child.wait();
        }
        for namespace in &self.namespaces {
            let _ = run(Command::new("ip").args(["netns", "del", namespace]));
        }
    }
}

/// An ARP request from `from` ([`ASKER`]) for `target`, broadcast, tagged with `vid` if
/// given (TCI = VID: priority 0), padded to the 60-byte minimum without its tag.
fn arp_request(from: MacAddress, target: [u8; 4], vid: Option<u16>) -> Vec<u8> {
    let mut frame = MacAddress::BROADCAST.0.to_vec();
    frame.extend_from_slice(&from.0);
    if let Some(vid) = vid {
        frame.extend_from_slice(&TPID_8021Q.to_be_bytes());
        frame.extend_from_slice(&vid.to_be_bytes());
    }
    let untagged_start = frame.len() - 12;
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&from.0);
    frame.extend_from_slice(&ASKER);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target);
    frame.resize(untagged_start + 60, 0);
    frame
}

/// If `frame` (as the packet socket hands it over, untagged) is an ARP reply to
/// [`ASKER`], the address it was about and the MAC it gave.
fn arp_reply(frame: &[u8]) -> Option<([u8; 4], MacAddress)> {
    let is_reply = frame.len() >= 42
        && frame[12..14] == [0x08, 0x06]
        && frame[20..22] == [0, 2]
        && frame[38..42] == ASKER;
    is_reply.then(|| {
        let about = frame[28..32].try_into().expect("4 bytes");
        let mac = MacAddress(frame[22..28].try_into().expect("6 bytes"));
        (about, mac)
    })
}

fn dotted(address: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(address).to_string()
}

/// Sends an ARP request for `target` tagged `vid` from the trunk socket and returns the
/// first reply about `target`, failing after [`DEADLINE`] or if any other ARP reply came
/// first. A request that is not answered leaves no reply in the socket, so asking again
/// after it shows that it was not: the answer to this one would have come in behind it.
fn ask(socket: &PacketSocket, me: MacAddress, target: [u8; 4], vid: Option<u16>) -> Received {
    socket.send(&arp_request(me, target, vid));
    let what = format!("an ARP reply about {} (asked on {vid:?})", dotted(target));
    let (reply, passed) = socket.recv_matching(&what, DEADLINE, |received| {
        arp_reply(&received.frame).is_some_and(|(about, _)| about == target)
    });
    let stray: Vec<Received> = passed
        .into_iter()
        .filter(|received| arp_reply(&received.frame).is_some())
        .collect();
    assert!(
        stray.is_empty(),
        "ARP replies nobody should have sent arrived before {what}: {}",
        describe(&stray)
    );
    assert_eq!(
        reply.frame[0..6],
        me.0,
        "the reply is addressed to the asker"
    );
    reply
}

/// Checks that `reply` came from `mac`, tagged `vid` with an 802.1Q tag.
fn assert_answered(reply: &Received, mac: MacAddress, vid: u16, what: &str) {
    let (_, answer) = arp_reply(&reply.frame).expect("an ARP reply");
    assert_eq!(
        (answer, reply.vid()),
        (mac, Some(vid)),
        "{what}: the answer's MAC and VLAN"
    );
    assert_eq!(
        reply.frame[6..12],
        mac.0,
        "{what}: sent from the answer's MAC"
    );
    assert_eq!(reply.tpid, Some(TPID_8021Q), "{what}: an 802.1Q tag");
    assert_eq!(
        reply.tci.map(|tci| tci >> 13),
        Some(0),
        "{what}: priority 0"
    );
}

#[test]
fn a_tagged_arp_request_is_answered_only_by_the_namespace_of_its_vlan_tagged_back() {
    if !ready() {
        return;
    }
    let lab = Lab::trunk_and_two_vlans("arp", &[]);
    ip(&[
        "-n",
        &lab.namespaces[1],
        "addr",
        "add",
        "10.79.0.10/24",
        "dev",
        IFNAME,
    ]);
    let trunk = lab.peer(0);
    assert_eq!(
        (trunk.vlan_mode.as_str(), trunk.vlans.as_str(), trunk.native),
        ("trunk", "10,20", None)
    );
    let socket = lab.socket(0);
    let me = lab.mac(0);
    let (a10, b20) = (lab.mac(1), lab.mac(2));
    assert_ne!(a10, b20);

    // The same question, 10.79.0.1, gets each VLAN's own answer, tagged with its VLAN.
    let reply = ask(&socket, me, SHARED, Some(10));
    assert_answered(&reply, a10, 10, "10.79.0.1 on VLAN 10");
    let reply = ask(&socket, me, SHARED, Some(20));
    assert_answered(&reply, b20, 20, "10.79.0.1 on VLAN 20");
    let reply = ask(&socket, me, ONLY_10, Some(10));
    assert_answered(&reply, a10, 10, "10.79.0.10 on VLAN 10");

    // 10.79.0.10 asked on VLAN 20 is not answered: the VLAN-20 namespace does not have
    // it, and the VLAN-10 one never hears the question.
    socket.send(&arp_request(me, ONLY_10, Some(20)));
    let reply = ask(&socket, me, SHARED, Some(20));
    assert_answered(&reply, b20, 20, "10.79.0.1 on VLAN 20, after 10.79.0.10");
    // Five requests, each flooded in its VLAN, whose only other member is one access
    // namespace: one copy each, three to VLAN 20 and two to VLAN 10. Each port writes its
    // counts at the end of a batch, so wait for them to reach what was sent.
    wait_until("the trunk port counted its five requests", || {
        lab.peer(0).tx_packets >= 5
    });
    let trunk = lab.peer(0);
    assert_eq!(
        (trunk.tx_packets, trunk.tx_deliveries),
        (5, 5),
        "each request reached exactly one peer"
    );
    wait_until("the access ports counted the requests they got", || {
        lab.peer(1).rx_packets >= 2 && lab.peer(2).rx_packets >= 3
    });
    assert_eq!(
        lab.peer(1).rx_packets,
        2,
        "VLAN 10's namespace heard VLAN 20"
    );
    assert_eq!(lab.peer(2).rx_packets, 3);
    // …and each answered the two questions it could.
    wait_until("the access ports counted their answers", || {
        lab.peer(1).tx_packets >= 2 && lab.peer(2).tx_packets >= 2
    });
    assert_eq!((lab.peer(1).tx_packets, lab.peer(2).tx_packets), (2, 2));
    assert_eq!(lab.drops(0, "tx_vlan_filtered"), 0);
}

#[test]
fn frames_tagged_for_a_vlan_a_port_is_not_in_are_dropped_and_counted_vlan_filtered() {
    if !ready() {
        return;
    }
    let lab = Lab::trunk_and_two_vlans("filter", &[]);
    let socket = lab.socket(0);
    let me = lab.mac(0);
    let before = [lab.peer(0), lab.peer(1), lab.peer(2)];

    // On the trunk of 10 and 20: a request tagged for VLAN 30, which nobody is in, and an
    // untagged one (the trunk has no native VLAN). Then one for VLAN 10, answered.
    socket.send(&arp_request(me, SHARED, Some(30)));
    socket.send(&arp_request(me, SHARED, None));
    let reply = ask(&socket, me, SHARED, Some(10));
    assert_answered(&reply, lab.mac(1), 10, "10.79.0.1 on VLAN 10");
    wait_until("the trunk port counted two frames vlan_filtered", || {
        lab.drops(0, "tx_vlan_filtered") >= 2
    });
    let trunk = lab.peer(0);
    assert_eq!(trunk.drops.get("tx_vlan_filtered"), Some(&2));
    assert_eq!(
        trunk.tx_deliveries,
        before[0].tx_deliveries + 1,
        "only the VLAN-10 request was delivered"
    );
    wait_until("namespace 1 received the VLAN-10 request", || {
        lab.peer(1).rx_packets > before[1].rx_packets
    });
    assert_eq!(lab.peer(1).rx_packets, before[1].rx_packets + 1);
    assert_eq!(lab.peer(2).rx_packets, before[2].rx_packets);

    // An access port takes untagged frames only: a tagged one from its namespace (sent
    // through a packet socket there, since its kernel cannot tag) is dropped too.
    let access = lab.socket(1);
    access.send(&arp_request(lab.mac(1), ASKER, Some(10)));
    wait_until(
        "the access port counted its tagged frame vlan_filtered",
        || lab.drops(1, "tx_vlan_filtered") >= 1,
    );
    let a10 = lab.peer(1);
    assert_eq!(a10.drops.get("tx_vlan_filtered"), Some(&1));
    assert_eq!(
        a10.tx_deliveries,
        before[1].tx_deliveries + 1,
        "its ARP reply only"
    );
    // What `guestnet status --json` shows.
    assert_eq!(lab.status_json(0)["drops"]["tx_vlan_filtered"], 2);
    assert_eq!(lab.status_json(1)["drops"]["tx_vlan_filtered"], 1);
    assert_eq!(lab.status_json(1)["vlans"], "10");
    assert_eq!(lab.status_json(1)["native"], 10);
    assert_eq!(lab.drops(2, "tx_vlan_filtered"), 0);
}

/// A 1500-byte IPv4 packet crosses between an access port and the trunk both ways: 1514
/// bytes untagged on the access side, 1518 tagged on the trunk, and neither is refused as
/// longer than the MTU.
fn full_size_frames_cross_between_access_and_trunk(test: &str, extra: &[&str]) {
    let mut lab = Lab::new(test);
    lab.add(&[&["--trunk", "10,20"], extra].concat(), &[]);
    lab.add(&[&["--vlan", "10"], extra].concat(), &["10.79.0.1/24"]);
    let trunk_socket = lab.socket(0);
    let access_socket = lab.socket(1);
    let trunk_mac = lab.mac(0);

    // Access → trunk: the namespace's kernel sends 1472 bytes of UDP (a 1500-byte IP
    // packet) to an address it resolves to the trunk's MAC.
    ip(&[
        "-n",
        &lab.namespaces[1],
        "neigh",
        "replace",
        &dotted(ASKER),
        "lladdr",
        &trunk_mac.to_string(),
        "dev",
        IFNAME,
        "nud",
        "permanent",
    ]);
    let sent = lab.exec(
        1,
        &[
            "bash",
            "-c",
            &format!("head -c 1472 /dev/zero > /dev/udp/{}/9999", dotted(ASKER)),
        ],
    );
    assert!(sent.status.success(), "send 1472 bytes of UDP: {sent:?}");
    let (frame, _) = trunk_socket.recv_matching("the full-size UDP frame", DEADLINE, |r| {
        r.frame.len() >= 38 && r.frame[12..14] == [0x08, 0x00] && r.frame[36..38] == [0x27, 0x0f]
    });
    assert_eq!(frame.frame.len(), 1514, "IP packet of 1500 bytes");
    assert_eq!(frame.vid(), Some(10), "tagged for VLAN 10 on the trunk");
    assert_eq!(
        frame.wire_len, 1518,
        "with its tag, 1518 bytes on the trunk"
    );

    // Trunk → access: a 1518-byte frame tagged 10 reaches the namespace as 1514 bytes.
    let payload = vec![0x5a; 1472];
    let mut tagged = Vec::new();
    etherparse::PacketBuilder::ethernet2(trunk_mac.0, lab.mac(1).0)
        .single_vlan(etherparse::VlanId::try_new(10).expect("VID"))
        .ipv4(ASKER, SHARED, 64)
        .udp(9998, 9998)
        .write(&mut tagged, &payload)
        .expect("build the frame");
    assert_eq!(tagged.len(), 1518);
    trunk_socket.send(&tagged);
    let (frame, _) = access_socket.recv_matching("the full-size tagged frame", DEADLINE, |r| {
        r.frame.len() >= 38 && r.frame[12..14] == [0x08, 0x00] && r.frame[36..38] == [0x27, 0x0e]
    });
    assert_eq!(frame.frame.len(), 1514, "untagged on the access port");
    assert_eq!(frame.vid(), None, "no tag on the access port");
    assert_eq!(frame.frame[42..], payload[..], "the payload arrived intact");

    for i in 0..2 {
        assert_eq!(
            lab.peer(i).drops.get("tx_invalid"),
            None,
            "namespace {i}'s full-size frame was refused as a giant"
        );
        assert_eq!(lab.drops(i, "tx_vlan_filtered"), 0);
    }
}

#[test]
fn a_full_size_frame_crosses_tagged_to_the_trunk_without_being_a_giant() {
    if !ready() {
        return;
    }
    full_size_frames_cross_between_access_and_trunk("mtu", &[]);
}

#[test]
fn a_full_size_frame_crosses_tagged_to_the_trunk_without_offloads_too() {
    if !ready() {
        return;
    }
    full_size_frames_cross_between_access_and_trunk("mtunooff", &["--no-offload"]);
}

/// Starts `guestnet capture` with `args` into `file`.
fn start_capture(dir: &Path, file: &Path, args: &[&str]) -> KillOnDrop {
    let child = Command::new(BIN)
        .arg("--dir")
        .arg(dir)
        .args(["capture", "lab", "-w"])
        .arg(file)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start guestnet capture");
    KillOnDrop(child)
}

/// Interrupts a capture and waits for it to exit cleanly, within [`DEADLINE`].
fn stop_capture(capture: &mut KillOnDrop) {
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&capture.0),
        rustix::process::Signal::INT,
    )
    .expect("SIGINT to the capture");
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = capture.0.try_wait().expect("poll the capture") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the capture did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "the capture exits cleanly: {status}");
}

/// `vlan.id`, `eth.type` (of the frame inside the tag, if tagged), `arp.opcode` and
/// `eth.src` of each frame tshark reads in `file`, tab-separated.
fn tshark_rows(file: &Path) -> Vec<String> {
    let output = output_within(
        {
            let mut tshark = Command::new("tshark");
            tshark.arg("-r").arg(file).args([
                "-T",
                "fields",
                "-e",
                "vlan.id",
                "-e",
                "vlan.etype",
                "-e",
                "arp.opcode",
                "-e",
                "eth.src",
            ]);
            tshark
        },
        Duration::from_secs(30),
    );
    assert!(
        output.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_capture_read_by_tshark_shows_the_tags_of_each_vlan() {
    if !ready() || !prerequisites_met("the VLAN capture test", &["tshark"]) {
        return;
    }
    let lab = Lab::trunk_and_two_vlans("capture", &[]);
    let default_file = lab.dir.path().join("default.pcap");
    let all_file = lab.dir.path().join("all.pcap");
    let mut default_capture = start_capture(lab.dir.path(), &default_file, &[]);
    let mut all_capture = start_capture(lab.dir.path(), &all_file, &["--trunk", "all"]);
    wait_until("both captures joined", || {
        let captures: Vec<PeerStatus> = lab
            .network
            .status()
            .peers
            .into_iter()
            .filter(|peer| peer.kind == PortKind::Capture)
            .collect();
        captures.len() == 2
    });
    // A capture is a trunk of every VLAN: by default with native VLAN 1 (untagged),
    // with `--trunk all` without one.
    let mut natives: Vec<Option<u16>> = lab
        .network
        .status()
        .peers
        .iter()
        .filter(|peer| peer.kind == PortKind::Capture)
        .map(|peer| {
            assert_eq!((peer.vlan_mode.as_str(), peer.promiscuous), ("trunk", true));
            peer.native
        })
        .collect();
    natives.sort();
    assert_eq!(natives, vec![None, Some(1)]);

    // An untagged frame of VLAN 1 from a library peer, then each VLAN's ARP exchange.
    let mut plain = lab.network.join(JoinOptions::default()).expect("join");
    let mut untagged = MacAddress::BROADCAST.0.to_vec();
    untagged.extend_from_slice(&plain.mac().0);
    untagged.extend_from_slice(&[0x88, 0xb5]);
    untagged.resize(60, 0x11);
    plain.send(&untagged);
    let socket = lab.socket(0);
    let me = lab.mac(0);
    assert_answered(
        &ask(&socket, me, SHARED, Some(10)),
        lab.mac(1),
        10,
        "VLAN 10",
    );
    assert_answered(
        &ask(&socket, me, SHARED, Some(20)),
        lab.mac(2),
        20,
        "VLAN 20",
    );

    // Five frames in each capture; wait until both wrote them, then stop them.
    for capture in [&default_file, &all_file] {
        wait_until("the capture wrote five frames", || {
            pcap_records(capture) >= 5
        });
    }
    stop_capture(&mut default_capture);
    stop_capture(&mut all_capture);

    let (me, a10, b20, plain_mac) = (
        me.to_string(),
        lab.mac(1).to_string(),
        lab.mac(2).to_string(),
        plain.mac().to_string(),
    );
    let tagged_rows = [
        format!("10\t0x0806\t1\t{me}"),
        format!("10\t0x0806\t2\t{a10}"),
        format!("20\t0x0806\t1\t{me}"),
        format!("20\t0x0806\t2\t{b20}"),
    ];
    let default_rows = tshark_rows(&default_file);
    let all_rows = tshark_rows(&all_file);
    for row in &tagged_rows {
        assert!(default_rows.contains(row), "{row:?} in {default_rows:#?}");
        assert!(all_rows.contains(row), "{row:?} in {all_rows:#?}");
    }
    let vlan_1_default = format!("\t\t\t{plain_mac}");
    let vlan_1_all = format!("1\t0x88b5\t\t{plain_mac}");
    assert!(
        default_rows.contains(&vlan_1_default),
        "VLAN 1 untagged in the default capture: {default_rows:#?}"
    );
    assert!(
        all_rows.contains(&vlan_1_all),
        "VLAN 1 tagged with --trunk all: {all_rows:#?}"
    );
    assert_eq!(default_rows.len(), 5, "{default_rows:#?}");
    assert_eq!(all_rows.len(), 5, "{all_rows:#?}");
}

/// How many whole records the pcap file at `path` holds so far.
fn pcap_records(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap_or_default();
    let Ok(mut reader) = guestnet::wire::pcap::PcapReader::new(&bytes[..]) else {
        return 0;
    };
    let mut records = 0;
    while let Ok(Some(_)) = reader.next_record() {
        records += 1;
    }
    records
}
