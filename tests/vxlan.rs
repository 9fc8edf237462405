//! VXLAN ports end to end: "hosts" as network namespaces on one underlay, each with its
//! own guestnet network (its own directory) and a `guestnet vxlan` port running inside
//! the host's namespace, so its UDP socket uses the underlay.
//!
//! The underlay is a bridge in a namespace of its own ("the switch"), with one veth to
//! each host at `10.99.0.{1..}/24`, MTU 1550 so that full 1500-byte inner packets fit.
//! Guests are namespaces on TAP ports at `10.77.0.{1..}/24`, or the Linux kernel's own
//! vxlan device in a bridge with a veth guest.
//!
//! These need root, /dev/net/tun, `ip`, `ping` and the kernel's vxlan driver. Under CI
//! (`CI=true`) a missing prerequisite fails the test; elsewhere the test says why it skips.
//! A [`World`] guard kills every process it started and deletes every namespace it made,
//! however the test ends.

use std::io::{BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use guestnet::network::Peer;
use guestnet::network::{CreateOptions, JoinOptions, Network, PortKind};
use guestnet::wire::MacAddress;

mod root_support;
use root_support::{DEADLINE, KillOnDrop, ip, output_within, prerequisites_met, run, wait_until};

/// Whether this machine can run these tests (see `root_support::prerequisites_met`).
fn ready() -> bool {
    prerequisites_met("VXLAN tests", &["ip", "ping"])
}

const BIN: &str = env!("CARGO_BIN_EXE_guestnet");
const VNI: &str = "42";
const UNDERLAY_MTU: &str = "1550";

fn underlay_address(host: usize) -> String {
    format!("10.99.0.{}", host + 1)
}

fn guest_address(host: usize) -> String {
    format!("10.77.0.{}", host + 1)
}

/// Namespaces and processes of one test; all removed on drop.
struct World {
    prefix: String,
    switch: String,
    namespaces: Vec<String>,
    children: Vec<KillOnDrop>,
}

/// A host running guestnet: its namespace, its network's directory and the network.
struct Host {
    index: usize,
    dir: tempfile::TempDir,
    network: Network,
}

impl World {
    /// The switch namespace with its bridge.
    fn new(test: &str) -> World {
        let prefix = format!("gvx-{}-{test}", std::process::id());
        let mut world = World {
            switch: String::new(),
            prefix,
            namespaces: Vec::new(),
            children: Vec::new(),
        };
        world.switch = world.namespace("sw");
        // Without IGMP snooping the switch floods multicast as a plain hub would, so the
        // group tests depend on nothing but the ports' own joins.
        ip(&[
            "-n",
            &world.switch,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &world.switch, "link", "set", "br0", "up"]);
        world
    }

    /// A new namespace with IPv6 off (only the frames a test causes are on the wire)
    /// and loopback up.
    fn namespace(&mut self, role: &str) -> String {
        let namespace = format!("{}-{role}", self.prefix);
        ip(&["netns", "add", &namespace]);
        self.namespaces.push(namespace.clone());
        root_support::ipv6_off(&namespace);
        ip(&["-n", &namespace, "link", "set", "lo", "up"]);
        namespace
    }

    /// Host namespace `index`, wired to the switch as `u0` with its underlay address.
    fn underlay_host(&mut self, index: usize) -> String {
        let namespace = self.namespace(&format!("h{index}"));
        let port = format!("p{index}");
        ip(&[
            "link",
            "add",
            "u0",
            "netns",
            &namespace,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.switch,
        ]);
        ip(&[
            "-n",
            &namespace,
            "link",
            "set",
            "u0",
            "mtu",
            UNDERLAY_MTU,
            "up",
        ]);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &port,
            "mtu",
            UNDERLAY_MTU,
        ]);
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &port,
            "master",
            "br0",
            "up",
        ]);
        let address = format!("{}/24", underlay_address(index));
        ip(&["-n", &namespace, "addr", "add", &address, "dev", "u0"]);
        namespace
    }

    /// Host `index` running guestnet: a network, and a VXLAN port towards `remotes`.
    fn guestnet_host(&mut self, index: usize, remotes: &[usize]) -> Host {
        self.guestnet_host_with_mtu(index, remotes, 1550)
    }

    /// As [`guestnet_host`](Self::guestnet_host), the port told the underlay's MTU is
    /// `underlay_mtu`.
    fn guestnet_host_with_mtu(
        &mut self,
        index: usize,
        remotes: &[usize],
        underlay_mtu: usize,
    ) -> Host {
        let remotes: Vec<String> = remotes
            .iter()
            .flat_map(|&remote| ["--remote".to_string(), underlay_address(remote)])
            .collect();
        self.vxlan_host(index, &remotes, underlay_mtu)
    }

    /// Host `index` running guestnet with a VXLAN port given `port_args` (its remotes or
    /// its group).
    fn vxlan_host(&mut self, index: usize, port_args: &[String], underlay_mtu: usize) -> Host {
        self.vxlan_host_at(index, &underlay_address(index), port_args, underlay_mtu)
    }

    /// As [`vxlan_host`](Self::vxlan_host), the port bound to `local`: an IPv6 address
    /// turns IPv6 on for the host's underlay link and puts `local` on it. The port carries
    /// VNI 42 unless `port_args` give a `--vni-map`.
    fn vxlan_host_at(
        &mut self,
        index: usize,
        local: &str,
        port_args: &[String],
        underlay_mtu: usize,
    ) -> Host {
        let namespace = self.underlay_host(index);
        let ipv6 = local.contains(':');
        if ipv6 {
            let output = run(Command::new("ip").args([
                "netns",
                "exec",
                &namespace,
                "sysctl",
                "-qw",
                "net.ipv6.conf.u0.disable_ipv6=0",
            ]));
            assert!(output.status.success(), "turn IPv6 on for u0: {output:?}");
            let address = format!("{local}/64");
            ip(&[
                "-n", &namespace, "addr", "add", &address, "dev", "u0", "nodad",
            ]);
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let network = Network::create(dir.path(), "lab", CreateOptions::default()).expect("create");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &namespace, BIN, "--dir"])
            .arg(dir.path())
            .args(["vxlan", "lab", "--local", local])
            .args(["--underlay-mtu", &underlay_mtu.to_string()])
            .args(port_args);
        if !port_args.iter().any(|arg| arg == "--vni-map") {
            command.args(["--vni", VNI]);
        }
        let line = self.spawn_ready(command);
        assert!(line.starts_with("ready slot"), "{line}");
        let overhead = if ipv6 { 70 } else { 50 };
        let inner_mtu = format!("inner-mtu {}", underlay_mtu - overhead);
        assert!(line.ends_with(&inner_mtu), "{line}");
        Host {
            index,
            dir,
            network,
        }
    }

    /// A guest namespace on a TAP port of `host`'s network, at its guest address.
    fn tap_guest(&mut self, host: &Host) -> String {
        let role = format!("g{}", host.index);
        self.tap_guest_in(host, &role, &[], &guest_address(host.index))
    }

    /// A guest namespace named after `role` on a TAP port of `host`'s network given
    /// `port_args` (its VLAN), at `address`/24 on its interface `gn0`.
    fn tap_guest_in(
        &mut self,
        host: &Host,
        role: &str,
        port_args: &[&str],
        address: &str,
    ) -> String {
        let guest = self.namespace(role);
        let mut command = Command::new(BIN);
        command
            .arg("--dir")
            .arg(host.dir.path())
            .args(["tap", "lab", "--ifname", "gn0", "--netns", &guest])
            .args(port_args);
        let line = self.spawn_ready(command);
        assert!(line.starts_with("ready gn0"), "{line}");
        let address = format!("{address}/24");
        ip(&["-n", &guest, "addr", "add", &address, "dev", "gn0"]);
        ip(&["-n", &guest, "link", "set", "gn0", "up"]);
        guest
    }

    /// Host `index` running the Linux kernel's vxlan device (`vxlan_args` name its remote
    /// or its group) in a bridge with a veth guest at its guest address; returns the
    /// guest's namespace.
    fn linux_host(&mut self, index: usize, vxlan_args: &[&str]) -> String {
        self.linux_host_in(index, VNI, vxlan_args)
    }

    /// As [`linux_host`](Self::linux_host), the device in VNI `vni`.
    fn linux_host_in(&mut self, index: usize, vni: &str, vxlan_args: &[&str]) -> String {
        let host = self.underlay_host(index);
        let guest = self.namespace(&format!("g{index}"));
        let local = underlay_address(index);
        let mut args = vec![
            "-n", &host, "link", "add", "vx0", "type", "vxlan", "id", vni, "local", &local,
            "dstport", "4789", "dev", "u0",
        ];
        args.extend_from_slice(vxlan_args);
        ip(&args);
        ip(&["-n", &host, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "link", "add", "eth0", "netns", &guest, "type", "veth", "peer", "name", "v0", "netns",
            &host,
        ]);
        for device in ["vx0", "v0"] {
            ip(&["-n", &host, "link", "set", device, "master", "br0", "up"]);
        }
        ip(&["-n", &host, "link", "set", "br0", "up"]);
        let address = format!("{}/24", guest_address(index));
        ip(&["-n", &guest, "addr", "add", &address, "dev", "eth0"]);
        ip(&["-n", &guest, "link", "set", "eth0", "up"]);
        // The Linux guest keeps its offloads on: it leaves TCP checksums to "hardware" and
        // sends TSO super-frames, which cross the veth underlay unfinished and whole, as
        // they would between containers on one host.
        guest
    }

    /// Starts `command` and returns its first line of output (its "ready" line).
    fn spawn_ready(&mut self, mut command: Command) -> String {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a port");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        // Drained all along, so a chatty port never blocks on a full pipe; kept for the
        // failure message.
        let (errors, error_text) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            let _ = errors.send(text);
        });
        let received = root_support::lines_of(stdout);
        match received.recv_timeout(DEADLINE) {
            Ok(line) => {
                self.children.push(KillOnDrop(child));
                line
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = error_text.recv_timeout(DEADLINE).unwrap_or_default();
                panic!("{command:?} did not get ready in {DEADLINE:?}: {stderr}");
            }
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.0.kill();
            let _ = child.0.wait();
        }
        for namespace in self.namespaces.iter().rev() {
            let _ = run(Command::new("ip").args(["netns", "del", namespace]));
        }
    }
}

fn ping(from: &str, to: &str) -> bool {
    run(Command::new("ip").args([
        "netns", "exec", from, "ping", "-c", "3", "-i", "0.2", "-W", "2", to,
    ]))
    .status
    .success()
}

fn report(output: &str, verb: &str) -> (u64, String) {
    let line = output
        .lines()
        .find(|line| line.starts_with(verb))
        .unwrap_or_else(|| panic!("no '{verb}' report in {output:?}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    (words[1].parse().expect("bytes"), words[4].to_string())
}

/// Sends `bytes` over TCP from namespace `from` to `to_address:port` (a listener in
/// namespace `to`) and checks that every byte arrived in order (length and CRC-32).
fn transfer_intact(from: &str, to: &str, to_address: &str, port: u16, bytes: u64) {
    let listen = format!("{to_address}:{port}");
    let mut receiver = Command::new("ip")
        .args(["netns", "exec", to, BIN, "__tcp-recv", "--listen", &listen])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the receiver");
    let stdout = receiver.stdout.take().expect("stdout");
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
        from,
        BIN,
        "__tcp-send",
        "--connect",
        &listen,
    ]);
    sender.args(["--bytes", &bytes.to_string()]);
    let sent = output_within(sender, Duration::from_secs(15));
    assert!(sent.status.success(), "sender: {sent:?}");
    let received = receiver_lines
        .recv_timeout(DEADLINE)
        .expect("receiver report");
    let (sent_bytes, sent_crc) = report(&String::from_utf8_lossy(&sent.stdout), "sent");
    let (received_bytes, received_crc) = report(&received, "received");
    assert_eq!(sent_bytes, bytes);
    assert_eq!(received_bytes, sent_bytes);
    assert_eq!(received_crc, sent_crc, "the stream arrived changed");
}

/// The VXLAN port's status, as `guestnet status --json` shows it.
fn vxlan_status(host: &Host) -> serde_json::Value {
    let output = run(Command::new(BIN)
        .arg("--dir")
        .arg(host.dir.path())
        .args(["status", "lab", "--json"]));
    assert!(output.status.success(), "status: {output:?}");
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).expect("status is JSON");
    status["vxlan"][0].clone()
}

#[test]
fn two_guestnet_hosts_ping_and_move_a_tcp_stream_intact() {
    if !ready() {
        return;
    }
    let mut world = World::new("pair");
    let a = world.guestnet_host(0, &[1]);
    let b = world.guestnet_host(1, &[0]);
    let guest_a = world.tap_guest(&a);
    let guest_b = world.tap_guest(&b);
    assert!(ping(&guest_a, &guest_address(1)), "ping across VXLAN");
    transfer_intact(&guest_a, &guest_b, &guest_address(1), 5201, 8 << 20);
    transfer_intact(&guest_b, &guest_a, &guest_address(0), 5202, 4 << 20);
    // The port learned the other guest behind its one remote, and shows it (the status
    // file is rewritten every second, so wait for the counters to catch up).
    wait_until("the status shows the traffic and the learned guest", || {
        let status = vxlan_status(&a);
        let remote = &status["remotes"][0];
        remote["endpoint"] == "10.99.0.2:4789"
            && status["inner_mtu"] == 1500
            && remote["counters"]["rx_packets"].as_u64().unwrap_or(0) > 1000
            && remote["counters"]["tx_packets"].as_u64().unwrap_or(0) > 5000
            && remote["learned"].as_array().map(Vec::len) == Some(1)
    });
}

#[test]
fn a_guestnet_host_and_a_linux_vxlan_device_talk_both_ways() {
    if !ready() {
        return;
    }
    let mut world = World::new("linux");
    let a = world.guestnet_host(0, &[1]);
    let guest_a = world.tap_guest(&a);
    let guest_b = world.linux_host(1, &["remote", "10.99.0.1"]);
    assert!(ping(&guest_a, "10.77.0.2"), "guestnet → Linux");
    assert!(ping(&guest_b, "10.77.0.1"), "Linux → guestnet");
    transfer_intact(&guest_a, &guest_b, "10.77.0.2", 5201, 4 << 20);
    transfer_intact(&guest_b, &guest_a, "10.77.0.1", 5202, 4 << 20);
    let status = vxlan_status(&a);
    assert_eq!(status["receives_offloads"], true);
    let counters = &status["remotes"][0]["counters"];
    for reason in [
        "rx_malformed",
        "rx_instance_flag_clear",
        "rx_foreign_vni",
        "rx_invalid_inner",
    ] {
        assert_eq!(counters[reason], 0, "{reason} from the Linux device");
    }
}

/// A library peer on `host`'s network that receives everything.
fn library_peer(host: &Host) -> Peer {
    host.network
        .join(JoinOptions {
            kind: PortKind::Process,
            label: "test".into(),
            ..JoinOptions::default()
        })
        .expect("join")
}

/// A broadcast frame from `source` whose payload starts with `tag`.
fn broadcast(source: MacAddress, tag: u8) -> Vec<u8> {
    let mut frame = vec![0u8; 60];
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&source.octets());
    frame[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental EtherType
    frame[14] = tag;
    frame
}

/// Receives on `peer` until a frame tagged `last` arrives; returns every tag seen.
fn tags_until(peer: &mut Peer, last: u8) -> Vec<u8> {
    let deadline = Instant::now() + DEADLINE;
    let mut tags = Vec::new();
    while !tags.contains(&last) {
        assert!(
            Instant::now() < deadline,
            "no frame tagged {last} arrived; got {tags:?}"
        );
        peer.wait(Duration::from_millis(100));
        peer.receive(64, |frame| {
            if frame.get(12..14) == Some(&[0x88, 0xb5]) {
                tags.push(frame[14]);
            }
        });
    }
    tags
}

#[test]
fn a_broadcast_reaches_each_of_two_other_hosts_exactly_once_and_a_reply_only_its_host() {
    if !ready() {
        return;
    }
    let mut world = World::new("three");
    let hosts = [
        world.guestnet_host(0, &[1, 2]),
        world.guestnet_host(1, &[0, 2]),
        world.guestnet_host(2, &[0, 1]),
    ];
    let mut peers: Vec<Peer> = hosts.iter().map(library_peer).collect();
    let source = peers[0].mac();
    assert!(matches!(
        peers[0].send(&broadcast(source, 1)),
        guestnet::network::Sent::Routed { delivered: 1, .. }
    ));
    // The marker follows the broadcast down the same paths, so once it has arrived any
    // duplicate of the broadcast would have arrived before it.
    peers[0].send(&broadcast(source, 2));
    for peer in &mut peers[1..] {
        assert_eq!(tags_until(peer, 2), vec![1, 2]);
    }
    // Head-end replication: one copy of each frame to each remote.
    wait_until("host 0's port counts its copies", || {
        let status = vxlan_status(&hosts[0]);
        (0..2).all(|r| status["remotes"][r]["counters"]["tx_packets"] == 2)
    });
    // The receiving hosts learned the source behind host 0, and do not send it on.
    for host in &hosts[1..] {
        wait_until("the source is learned behind host 0", || {
            let status = vxlan_status(host);
            status["remotes"][0]["learned"][0] == source.to_string()
                && status["remotes"][1]["counters"]["tx_packets"] == 0
        });
    }
    // A reply from host 1 to the learned address goes to host 0 alone: host 2 sees only
    // the broadcast sent after it.
    let replier = peers[1].mac();
    peers[1].send(&unicast(source, replier, 3));
    peers[1].send(&broadcast(replier, 4));
    assert_eq!(tags_until(&mut peers[0], 4), vec![3, 4]);
    assert_eq!(
        tags_until(&mut peers[2], 4),
        vec![4],
        "the unicast was not replicated"
    );
}

/// Moves the calling thread into a named network namespace (setns moves only the
/// calling thread, so the caller is a thread of its own).
fn enter(namespace: &str) {
    let file = std::fs::File::open(format!("/run/netns/{namespace}")).expect("open the namespace");
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .expect("enter the namespace");
}

/// Sends `datagrams` to `to` from `from` (an address of namespace `namespace`).
fn inject(namespace: &str, from: &str, to: &str, datagrams: Vec<Vec<u8>>) {
    let namespace = namespace.to_string();
    let from = format!("{from}:0");
    let to = to.to_string();
    std::thread::spawn(move || {
        enter(&namespace);
        let socket = UdpSocket::bind(&from).expect("bind");
        for datagram in datagrams {
            socket.send_to(&datagram, &to).expect("send");
        }
    })
    .join()
    .expect("the injecting thread");
}

fn vxlan_datagram(flags: u8, vni: u32, inner: &[u8]) -> Vec<u8> {
    let vni = vni.to_be_bytes();
    let mut bytes = vec![flags, 0, 0, 0, vni[1], vni[2], vni[3], 0];
    bytes.extend_from_slice(inner);
    bytes
}

#[test]
fn malformed_foreign_and_flooding_datagrams_are_counted_and_never_delivered() {
    if !ready() {
        return;
    }
    let mut world = World::new("bad");
    // Room for one learned address behind the remotes.
    let port_args = ["--remote", "10.99.0.2", "--max-learned", "1"].map(String::from);
    let a = world.vxlan_host(0, &port_args, 1550);
    let b = world.underlay_host(1);
    ip(&["-n", &b, "addr", "add", "10.99.0.9/24", "dev", "u0"]);
    let mut peer = library_peer(&a);
    let source = MacAddress::new([0x02, 0xbb, 0, 0, 0, 1]);
    let newcomer = MacAddress::new([0x02, 0xbb, 0, 0, 0, 2]);
    let mut multicast_source = broadcast(source, 9);
    multicast_source[6] = 0x03;
    let to = "10.99.0.1:4789";
    inject(
        &b,
        "10.99.0.9",
        to,
        vec![vxlan_datagram(0x08, 42, &broadcast(source, 9))],
    );
    inject(
        &b,
        "10.99.0.2",
        to,
        vec![
            vec![0x08, 0, 0],
            vxlan_datagram(0x00, 42, &broadcast(source, 9)),
            vxlan_datagram(0x08, 43, &broadcast(source, 9)),
            vxlan_datagram(0x08, 42, &broadcast(source, 9)[..10]),
            vxlan_datagram(0x08, 42, &multicast_source),
            // Longer than the underlay's MTU: the sending kernel fragments it, and a port
            // that reads a packet socket sees pieces, which it drops (RFC 7348 lets it).
            vxlan_datagram(0x08, 42, &vec![0u8; 1600]),
            // Good: its source takes the one place in the table.
            vxlan_datagram(0x08, 42, &broadcast(source, 5)),
            // A second source finds the table full.
            vxlan_datagram(0x08, 42, &broadcast(newcomer, 6)),
            // Good again, last: once it is in, the others have been judged.
            vxlan_datagram(0x08, 42, &broadcast(source, 2)),
        ],
    );
    assert_eq!(
        tags_until(&mut peer, 2),
        vec![5, 2],
        "only the good frames arrive"
    );
    wait_until("the status file shows every drop", || {
        let status = vxlan_status(&a);
        let remote = &status["remotes"][0]["counters"];
        status["receives_offloads"] == true
            && status["counters"]["rx_unknown_remote"] == 1
            && status["counters"]["rx_fragmented"] == 1
            && status["counters"]["rx_bad_outer"] == 0
            && remote["rx_malformed"] == 1
            && remote["rx_instance_flag_clear"] == 1
            && remote["rx_foreign_vni"] == 1
            && remote["rx_invalid_inner"] == 2
            && remote["rx_too_many_sources"] == 1
            && remote["rx_packets"] == 2
    });
    // The network's own counters agree: the port's peer counted the invalid frames.
    let port = a
        .network
        .status()
        .peers
        .into_iter()
        .find(|p| p.kind == PortKind::Vxlan)
        .expect("the port's peer");
    assert_eq!(port.tx_packets, 2);
    assert_eq!(port.drops.get("tx_invalid"), Some(&2), "{:?}", port.drops);
    assert_eq!(peer.counters().rx_packets, 2);
}

#[test]
fn a_frame_too_big_for_the_underlay_is_dropped_and_counted_never_fragmented() {
    if !ready() {
        return;
    }
    let mut world = World::new("mtu");
    // Host 0's port is told the underlay carries 1500 bytes: inner frames of at most
    // 1500 - 50 + 14 = 1464 bytes fit.
    let a = world.guestnet_host_with_mtu(0, &[1], 1500);
    let b = world.guestnet_host(1, &[0]);
    let mut sender = library_peer(&a);
    let mut receiver = library_peer(&b);
    let source = sender.mac();
    let mut frame = broadcast(source, 1);
    frame.resize(1465, 0);
    sender.send(&frame);
    let mut fits = broadcast(source, 2);
    fits.resize(1464, 0);
    sender.send(&fits);
    let mut lengths = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while lengths.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the frame that fits did not arrive"
        );
        receiver.wait(Duration::from_millis(100));
        receiver.receive(64, |frame| lengths.push(frame.len()));
    }
    assert_eq!(
        lengths,
        vec![1464],
        "only the frame that fits crossed, whole"
    );
    wait_until("the port counts the frame too big", || {
        let status = vxlan_status(&a);
        status["inner_mtu"] == 1450
            && status["counters"]["tx_too_big"] == 1
            && status["remotes"][0]["counters"]["tx_packets"] == 1
    });
}

#[test]
fn datagrams_leave_from_a_source_port_hashed_from_the_inner_frame() {
    if !ready() {
        return;
    }
    let mut world = World::new("sport");
    let a = world.guestnet_host(0, &[1]);
    let b = world.underlay_host(1);
    // A plain UDP socket on host 1 stands in for a VTEP and reports what arrives.
    let (ready, listening) = mpsc::channel();
    let (arrived, datagrams) = mpsc::channel();
    std::thread::spawn(move || {
        enter(&b);
        let socket = UdpSocket::bind("10.99.0.2:4789").expect("bind");
        socket.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let _ = ready.send(());
        let mut buffer = [0u8; 2048];
        for _ in 0..2 {
            let Ok((length, from)) = socket.recv_from(&mut buffer) else {
                return;
            };
            let _ = arrived.send((buffer[..length].to_vec(), from));
        }
    });
    listening
        .recv_timeout(DEADLINE)
        .expect("the listener is ready");
    let mut peer = library_peer(&a);
    let frames = [
        broadcast(MacAddress::new([0x02, 0xaa, 0, 0, 0, 1]), 1),
        broadcast(MacAddress::new([0x02, 0xaa, 0, 0, 0, 2]), 2),
    ];
    for frame in &frames {
        peer.send(frame);
    }
    let mut ports = Vec::new();
    for frame in &frames {
        let (datagram, from) = datagrams
            .recv_timeout(DEADLINE)
            .expect("a datagram from the port");
        let mut expected = vec![0x08, 0, 0, 0, 0, 0, 42, 0];
        expected.extend_from_slice(frame);
        assert_eq!(datagram, expected, "VXLAN header and the frame, untouched");
        assert_eq!(from.ip().to_string(), "10.99.0.1");
        assert_eq!(from.port(), guestnet::wire::vxlan::source_port(frame));
        assert!(from.port() >= 49152);
        ports.push(from.port());
    }
    assert_ne!(ports[0], ports[1], "two flows, two source ports");
    wait_until("status says the source ports are hashed", || {
        vxlan_status(&a)["hashed_source_ports"] == true
    });
}

/// A frame from `source` to `destination` whose payload starts with `tag`.
fn unicast(destination: MacAddress, source: MacAddress, tag: u8) -> Vec<u8> {
    let mut frame = broadcast(source, tag);
    frame[..6].copy_from_slice(&destination.octets());
    frame
}

#[test]
fn on_a_multicast_group_floods_go_once_to_the_group_and_unicast_straight_to_its_host() {
    if !ready() {
        return;
    }
    let mut world = World::new("group");
    let group: Vec<String> = ["--group", "239.1.1.1", "--dev", "u0"]
        .map(String::from)
        .to_vec();
    let hosts: Vec<Host> = (0..3).map(|i| world.vxlan_host(i, &group, 1550)).collect();
    let mut peers: Vec<Peer> = hosts.iter().map(library_peer).collect();
    let macs: Vec<MacAddress> = peers.iter().map(Peer::mac).collect();
    peers[0].send(&broadcast(macs[0], 1));
    peers[0].send(&broadcast(macs[0], 2));
    for peer in &mut peers[1..] {
        assert_eq!(tags_until(peer, 2), vec![1, 2], "each broadcast once");
    }
    wait_until("host 0 sent each broadcast once, to the group", || {
        let status = vxlan_status(&hosts[0]);
        status["group"] == "239.1.1.1:4789"
            && status["remotes"][0]["endpoint"] == "239.1.1.1:4789"
            && status["remotes"][0]["counters"]["tx_packets"] == 2
    });
    // Host 1 learned host 0's peer behind 10.99.0.1: a reply goes there alone, so host 2
    // sees only the broadcast sent after it.
    peers[1].send(&unicast(macs[0], macs[1], 3));
    peers[1].send(&broadcast(macs[1], 4));
    assert_eq!(tags_until(&mut peers[0], 4), vec![3, 4]);
    assert_eq!(
        tags_until(&mut peers[2], 4),
        vec![4],
        "the unicast was not flooded"
    );
    wait_until(
        "host 1 shows host 0 as a remote with its peer behind it",
        || {
            let status = vxlan_status(&hosts[1]);
            let remotes = status["remotes"].as_array().cloned().unwrap_or_default();
            remotes.iter().any(|remote| {
                remote["endpoint"] == "10.99.0.1:4789"
                    && remote["counters"]["tx_packets"] == 1
                    && remote["learned"][0] == macs[0].to_string()
            })
        },
    );
}

#[test]
fn on_a_multicast_group_a_guestnet_host_and_a_linux_vxlan_device_talk_both_ways() {
    if !ready() {
        return;
    }
    let mut world = World::new("lgroup");
    let group: Vec<String> = ["--group", "239.1.1.1", "--dev", "u0"]
        .map(String::from)
        .to_vec();
    let a = world.vxlan_host(0, &group, 1550);
    let guest_a = world.tap_guest(&a);
    let guest_b = world.linux_host(1, &["group", "239.1.1.1"]);
    assert!(ping(&guest_a, "10.77.0.2"), "guestnet → Linux");
    assert!(ping(&guest_b, "10.77.0.1"), "Linux → guestnet");
    transfer_intact(&guest_b, &guest_a, "10.77.0.1", 5203, 2 << 20);
    let guest_b_mac = run(Command::new("ip").args([
        "netns",
        "exec",
        &guest_b,
        "cat",
        "/sys/class/net/eth0/address",
    ]));
    let guest_b_mac = String::from_utf8_lossy(&guest_b_mac.stdout)
        .trim()
        .to_string();
    // The learned list may also hold the Linux host's bridge; the guest must be in it.
    wait_until(
        "the Linux host is a remote with its guest learned behind it",
        || {
            let status = vxlan_status(&a);
            let remote = &status["remotes"][1];
            let learned = remote["learned"].as_array().cloned().unwrap_or_default();
            remote["endpoint"] == "10.99.0.2:4789"
                && learned.iter().any(|mac| *mac == guest_b_mac)
                && remote["counters"]["rx_invalid_inner"] == 0
        },
    );
}

#[test]
fn over_an_ipv6_underlay_two_guestnet_hosts_ping_and_move_a_tcp_stream_intact() {
    if !ready() {
        return;
    }
    let mut world = World::new("ipv6");
    let remote = |address: &str| vec!["--remote".to_string(), format!("[{address}]")];
    let a = world.vxlan_host_at(0, "fd99::1", &remote("fd99::2"), 1550);
    let b = world.vxlan_host_at(1, "fd99::2", &remote("fd99::1"), 1550);
    let guest_a = world.tap_guest(&a);
    let guest_b = world.tap_guest(&b);
    // IPv6 headers cost 20 bytes more: inner MTU 1550 - 70 = 1480. The guests keep under it.
    for guest in [&guest_a, &guest_b] {
        ip(&["-n", guest, "link", "set", "gn0", "mtu", "1400"]);
    }
    assert!(ping(&guest_a, &guest_address(1)), "ping across IPv6");
    transfer_intact(&guest_a, &guest_b, &guest_address(1), 5201, 2 << 20);
    wait_until("the status shows the IPv6 remote and its MTU", || {
        let status = vxlan_status(&a);
        status["inner_mtu"] == 1480
            // No raw IPv6 path: datagrams leave from the bound UDP socket.
            && status["hashed_source_ports"] == false
            && status["remotes"][0]["endpoint"] == "[fd99::2]:4789"
            && status["remotes"][0]["counters"]["rx_packets"].as_u64().unwrap_or(0) > 100
    });
}

#[test]
fn on_a_multicast_group_a_sender_that_falls_silent_is_aged_out_and_counted() {
    if !ready() {
        return;
    }
    let mut world = World::new("gage");
    let port_args: Vec<String> = ["--group", "239.1.1.1", "--dev", "u0", "--ageing", "1"]
        .map(String::from)
        .to_vec();
    let a = world.vxlan_host(0, &port_args, 1550);
    let b = world.underlay_host(1);
    let mut peer = library_peer(&a);
    let source = MacAddress::new([0x02, 0xcc, 0, 0, 0, 1]);
    inject(
        &b,
        "10.99.0.2",
        "10.99.0.1:4789",
        vec![vxlan_datagram(0x08, 42, &broadcast(source, 1))],
    );
    assert_eq!(
        tags_until(&mut peer, 1),
        vec![1],
        "the sender's frame arrives"
    );
    // A second later the sender has said nothing more: it is no longer a remote, and what
    // it sent still counts in the port's totals.
    wait_until("the silent sender is aged out", || {
        let status = vxlan_status(&a);
        let remotes = status["remotes"].as_array().cloned().unwrap_or_default();
        remotes.len() == 1
            && remotes[0]["endpoint"] == "239.1.1.1:4789"
            && status["counters"]["remotes_aged"] == 1
            && status["counters"]["rx_packets"] == 1
    });
}

/// A file of namespace `namespace`'s `/sys/class/net/gn0`, read inside it (sysfs shows
/// the devices of the namespace that mounted it).
fn guest_link_file(namespace: &str, file: &str) -> String {
    let path = format!("/sys/class/net/gn0/{file}");
    let output = run(Command::new("ip").args(["netns", "exec", namespace, "cat", &path]));
    assert!(
        output.status.success(),
        "read {path} in {namespace}: {output:?}"
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Frames namespace `namespace`'s `gn0` has received.
fn guest_rx_packets(namespace: &str) -> u64 {
    guest_link_file(namespace, "statistics/rx_packets")
        .parse()
        .expect("a count")
}

/// The MAC address namespace `namespace` has resolved `address` to on `gn0`, if any.
fn neighbour(namespace: &str, address: &str) -> Option<String> {
    let output =
        run(Command::new("ip").args(["-n", namespace, "neigh", "show", address, "dev", "gn0"]));
    let text = String::from_utf8_lossy(&output.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .iter()
        .position(|&word| word == "lladdr")
        .and_then(|at| words.get(at + 1))
        .map(|mac| mac.to_string())
}

/// The VXLAN status's segment of VNI `vni`.
fn segment(status: &serde_json::Value, vni: u64) -> serde_json::Value {
    status["segments"]
        .as_array()
        .and_then(|segments| segments.iter().find(|s| s["vni"] == vni))
        .cloned()
        .unwrap_or_default()
}

#[test]
fn with_a_vni_map_each_vlan_reaches_only_its_own_vni_on_the_other_host() {
    if !ready() {
        return;
    }
    let mut world = World::new("vnimap");
    let map = |remote: usize| {
        [
            "--vni-map",
            "10=1010,20=1020",
            "--remote",
            &underlay_address(remote),
        ]
        .map(String::from)
        .to_vec()
    };
    let a = world.vxlan_host(0, &map(1), 1550);
    let b = world.vxlan_host(1, &map(0), 1550);
    // Both VLANs use one subnet, and on host B both guests have the same address: a frame
    // that leaked from one VLAN into the other would be answered.
    let a10 = world.tap_guest_in(&a, "a10", &["--vlan", "10"], "10.77.0.1");
    let a20 = world.tap_guest_in(&a, "a20", &["--vlan", "20"], "10.77.0.1");
    let b10 = world.tap_guest_in(&b, "b10", &["--vlan", "10"], "10.77.0.2");
    let b20 = world.tap_guest_in(&b, "b20", &["--vlan", "20"], "10.77.0.2");
    let mac = |guest: &str| guest_link_file(guest, "address");
    let quiet = [guest_rx_packets(&a20), guest_rx_packets(&b20)];

    assert!(ping(&a10, "10.77.0.2"), "VLAN 10 across VNI 1010");
    assert_eq!(
        neighbour(&a10, "10.77.0.2"),
        Some(mac(&b10)),
        "answered by host B's VLAN-10 guest"
    );
    assert_eq!(
        [guest_rx_packets(&a20), guest_rx_packets(&b20)],
        quiet,
        "VLAN 20's guests saw nothing of VLAN 10's traffic"
    );
    assert!(ping(&a20, "10.77.0.2"), "VLAN 20 across VNI 1020");
    assert_eq!(neighbour(&a20, "10.77.0.2"), Some(mac(&b20)));

    // Each VNI counted its own traffic, and learned its own guest behind host B.
    wait_until("host A's status shows each VNI's traffic and guest", || {
        let status = vxlan_status(&a);
        let (vni10, vni20) = (segment(&status, 1010), segment(&status, 1020));
        let learned = |segment: &serde_json::Value| segment["learned"].clone();
        status["vni"] == serde_json::json!({"10": 1010, "20": 1020})
            && vni10["vlan"] == 10
            && vni20["vlan"] == 20
            && vni10["counters"]["rx_packets"].as_u64() >= Some(3)
            && vni10["counters"]["tx_packets"].as_u64() >= Some(3)
            && vni20["counters"]["rx_packets"].as_u64() >= Some(3)
            && learned(&vni10) == serde_json::json!([mac(&b10)])
            && learned(&vni20) == serde_json::json!([mac(&b20)])
    });

    // From host B's underlay address (a configured remote): a datagram of a VNI the map
    // does not name, and one of VNI 1010 whose inner frame brings a tag of its own.
    let b_host = format!("{}-h1", world.prefix);
    let source = MacAddress::new([0x02, 0xdd, 0, 0, 0, 1]);
    let mut tagged = broadcast(source, 7);
    tagged.splice(12..12, [0x81, 0x00, 0x00, 20]);
    inject(
        &b_host,
        &underlay_address(1),
        "10.99.0.1:4789",
        vec![
            vxlan_datagram(0x08, 42, &broadcast(source, 7)),
            vxlan_datagram(0x08, 1010, &tagged),
        ],
    );
    wait_until(
        "host A counts the foreign VNI and the tagged inner frame",
        || {
            let counters = &vxlan_status(&a)["remotes"][0]["counters"];
            counters["rx_foreign_vni"] == 1 && counters["rx_tagged_inner"] == 1
        },
    );
    // A trunk of exactly the mapped VLANs never hands the port anything else.
    assert_eq!(vxlan_status(&a)["counters"]["tx_unmapped_vlan"], 0);
}

#[test]
fn with_a_vni_map_a_vlan_meets_a_linux_vxlan_device_in_its_vni_and_streams_intact() {
    if !ready() {
        return;
    }
    let mut world = World::new("vnilinux");
    let port_args = ["--vni-map", "10=1010,20=1020", "--remote", "10.99.0.2"].map(String::from);
    let a = world.vxlan_host(0, &port_args, 1550);
    let a10 = world.tap_guest_in(&a, "a10", &["--vlan", "10"], "10.77.0.1");
    let a20 = world.tap_guest_in(&a, "a20", &["--vlan", "20"], "10.77.0.1");
    // The Linux device carries VNI 1010 alone: VLAN 10 on this side.
    let linux = world.linux_host_in(1, "1010", &["remote", "10.99.0.1"]);
    assert!(
        ping(&a10, "10.77.0.2"),
        "VLAN 10 → the Linux guest in VNI 1010"
    );
    assert!(ping(&linux, "10.77.0.1"), "the Linux guest → VLAN 10");
    assert!(
        !ping(&a20, "10.77.0.2"),
        "VLAN 20 is VNI 1020, where nobody is"
    );
    // The Linux guest's TSO super-frames and unfinished checksums cross tagged for VLAN
    // 10, their offsets moved by the tag, and leave the access port untagged again.
    transfer_intact(&linux, &a10, "10.77.0.1", 5201, 4 << 20);
    transfer_intact(&a10, &linux, "10.77.0.2", 5202, 2 << 20);
    wait_until(
        "the stream is counted in VNI 1010 and nothing refused",
        || {
            let status = vxlan_status(&a);
            let vni10 = segment(&status, 1010);
            let remote = &status["remotes"][0]["counters"];
            status["receives_offloads"] == true
                && vni10["counters"]["rx_packets"].as_u64().unwrap_or(0) > 100
                && vni10["counters"]["tx_packets"].as_u64().unwrap_or(0) > 100
                && segment(&status, 1020)["counters"]["rx_packets"] == 0
                && remote["rx_invalid_inner"] == 0
                && remote["rx_tagged_inner"] == 0
                && remote["rx_foreign_vni"] == 0
        },
    );
}

#[test]
fn a_port_with_a_vni_map_joins_as_a_trunk_of_exactly_the_mapped_vlans() {
    // No root needed: the port binds loopback, and its remote is never sent to.
    let dir = tempfile::tempdir().expect("temp dir");
    let network = Network::create(dir.path(), "lab", CreateOptions::default()).expect("create");
    let mut child = Command::new(BIN)
        .arg("--dir")
        .arg(dir.path())
        .args(["vxlan", "lab", "--vni-map", "20=1020,10=1010"])
        .args(["--local", "127.0.0.1:0", "--remote", "127.0.0.1:9"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the port");
    let stdout = child.stdout.take().expect("piped stdout");
    let _port = KillOnDrop(child);
    let (lines, ready) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = lines.send(line);
    });
    let line = ready.recv_timeout(DEADLINE).expect("a ready line");
    assert!(line.starts_with("ready slot"), "{line}");
    let peers = network.status().peers;
    assert_eq!(peers.len(), 1);
    let port = &peers[0];
    assert_eq!(
        (port.vlan_mode.as_str(), port.vlans.as_str(), port.native),
        ("trunk", "10,20", None),
        "tagged for each mapped VLAN, untagged frames refused"
    );
    assert!(
        port.label.starts_with("vxlan vni-map 127.0.0.1:"),
        "{}",
        port.label
    );
}
