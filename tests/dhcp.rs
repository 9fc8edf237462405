//! `guestnet dhcp` end to end: two network namespaces on TAP ports get their addresses
//! from real DHCP clients (busybox `udhcpc` in one, ISC `dhclient` in the other), ping
//! each other, find each other by name through the server's DNS, and get the same
//! addresses back from a restarted server.
//!
//! Two tests need nothing: a client peer speaks DHCP to the command through the library
//! (and a scrape of `guestnet metrics` shows its lease and parses with `promtool`,
//! required under CI), and a second server on one lease file is refused. The namespace
//! test needs root, /dev/net/tun, `ip`, `ping`, `busybox` and `dhclient`. Under CI
//! (`CI=true`) a missing prerequisite fails the test; elsewhere the test says why it
//! skips. The namespaces are named after the process, and a [`Lab`] guard removes them
//! and kills every process it started however the test ends. The clients run with
//! scripts of the test's own that only set the interface's address, so nothing of the
//! host (its resolv.conf, its lease files) is touched.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dhcproto::v4::{self, DhcpOption, MessageType, Opcode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use guestnet::network::{CreateOptions, JoinOptions, Network, Peer, VlanMembership};
use guestnet::wire::arp::{ArpOperation, ArpPacket, ArpRepr};
use guestnet::wire::ipv4::{self, Ipv4Packet, Ipv4Repr};
use guestnet::wire::udp::{self, UdpPacket, UdpRepr};
use guestnet::wire::{EtherType, EthernetFrame, MacAddress, ethernet};

mod root_support;
use root_support::{DEADLINE, KillOnDrop, ip, output_within, prerequisites_met, run, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_guestnet");
const IFNAME: &str = "gn0";
const SERVER: &str = "10.79.0.254";
const DOMAIN: &str = "lab.internal";

/// How long a DHCP client may take to get a lease: it retransmits after a second or more.
const LEASE_DEADLINE: Duration = Duration::from_secs(30);

fn ready() -> bool {
    // `-V` is how the check probes a tool; `dhclient --version` exits 0 too, busybox with
    // any argument prints its banner.
    prerequisites_met("DHCP tests", &["ip", "ping", "busybox", "dhclient"])
}

/// udhcpc's script: it is run with the lease in its environment.
const UDHCPC_SCRIPT: &str = "#!/bin/sh
case \"$1\" in
  deconfig) ip addr flush dev \"$interface\"; ip link set \"$interface\" up ;;
  bound|renew) ip addr flush dev \"$interface\"; ip addr add \"$ip/$mask\" dev \"$interface\" ;;
esac
";

/// dhclient's script, in place of dhclient-script (which would rewrite resolv.conf).
const DHCLIENT_SCRIPT: &str = "#!/bin/sh
case \"$reason\" in
  PREINIT) ip link set \"$interface\" up ;;
  BOUND|RENEW|REBIND|REBOOT)
    ip addr flush dev \"$interface\"
    ip addr add \"$new_ip_address/$new_subnet_mask\" dev \"$interface\" ;;
esac
";

/// A network, a `guestnet dhcp` on it, and namespaces on TAP ports.
struct Lab {
    dir: tempfile::TempDir,
    network: Network,
    namespaces: Vec<String>,
    children: Vec<KillOnDrop>,
    dhcp: Option<KillOnDrop>,
}

impl Lab {
    fn new(test: &str, count: usize) -> Lab {
        let dir = tempfile::tempdir().expect("temp dir");
        let network = Network::create(dir.path(), "lab", CreateOptions::default()).expect("create");
        let mut lab = Lab {
            dir,
            network,
            namespaces: Vec::new(),
            children: Vec::new(),
            dhcp: None,
        };
        for (name, text) in [
            ("udhcpc.sh", UDHCPC_SCRIPT),
            ("dhclient.sh", DHCLIENT_SCRIPT),
        ] {
            let path = lab.path(name);
            std::fs::write(&path, text).expect("write a client script");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        for i in 0..count {
            let namespace = format!("gnd-{}-{test}-{i}", std::process::id());
            ip(&["netns", "add", &namespace]);
            lab.namespaces.push(namespace.clone());
            root_support::ipv6_off(&namespace);
            let tap = lab.start(
                &["tap", "lab", "--ifname", IFNAME, "--netns", &namespace],
                "ready",
            );
            lab.children.push(tap);
        }
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `guestnet ARGS…` and waits for its first line, which must start with `ready`.
    fn start(&self, args: &[&str], ready: &str) -> KillOnDrop {
        let mut child = Command::new(BIN)
            .arg("--dir")
            .arg(self.dir.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start guestnet");
        let stdout = child.stdout.take().expect("piped stdout");
        let guard = KillOnDrop(child);
        let received = root_support::lines_of(stdout);
        let line = received
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("guestnet {} did not get ready in {DEADLINE:?}", args[0]));
        assert!(line.starts_with(ready), "{line}");
        guard
    }

    /// Starts the DHCP server (again).
    fn start_dhcp(&mut self) {
        self.start_dhcp_with(&[]);
    }

    /// Starts `guestnet dhcp` with `extra` options after the usual ones.
    fn start_dhcp_with(&mut self, extra: &[&str]) {
        let mut args = vec![
            "dhcp",
            "lab",
            "--subnet",
            "10.79.0.0/24",
            "--range",
            "10.79.0.10-10.79.0.50",
            "--domain",
            DOMAIN,
            "--lease-time",
            "10m",
        ];
        args.extend_from_slice(extra);
        let server = self.start(&args, "ready");
        self.dhcp = Some(server);
    }

    /// Stops the DHCP server with SIGTERM and waits for it to end.
    fn stop_dhcp(&mut self) {
        let mut server = self.dhcp.take().expect("a server runs");
        let pid = server.0.id().to_string();
        assert!(
            run(Command::new("kill").args(["-TERM", &pid]))
                .status
                .success()
        );
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = server.0.try_wait().expect("wait for the server") {
                assert!(status.success(), "guestnet dhcp ended with {status}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "guestnet dhcp did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exec(&self, i: usize, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.namespaces[i]])
            .args(args))
    }

    /// Runs busybox udhcpc once in namespace `i`, sending `name`; returns when it has a
    /// lease (it exits then) or fails the test.
    fn udhcpc(&self, i: usize, name: &str) {
        let mut command = Command::new("ip");
        command.args([
            "netns",
            "exec",
            &self.namespaces[i],
            "busybox",
            "udhcpc",
            "-i",
            IFNAME,
            "-f",
            "-q",
            "-n",
            "-t",
            "10",
            "-T",
            "2",
            "-x",
        ]);
        command
            .arg(format!("hostname:{name}"))
            .arg("-s")
            .arg(self.path("udhcpc.sh"));
        let output = output_within(command, LEASE_DEADLINE);
        assert!(
            output.status.success(),
            "udhcpc: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.what_the_network_saw()
        );
    }

    /// Runs ISC dhclient in namespace `i`, sending `name`, and waits until it configured
    /// an address; the client keeps running (to renew) until the lab ends.
    fn dhclient(&mut self, i: usize, name: &str) -> String {
        let config = self.path(&format!("dhclient-{i}.conf"));
        std::fs::write(
            &config,
            format!("send host-name \"{name}\";\ntimeout 30;\n"),
        )
        .expect("dhclient.conf");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.namespaces[i],
                "dhclient",
                "-d",
                "-1",
                "-cf",
            ])
            .arg(&config)
            .arg("-lf")
            .arg(self.path(&format!("dhclient-{i}.leases")))
            .arg("-pf")
            .arg(self.path(&format!("dhclient-{i}.pid")))
            .arg("-sf")
            .arg(self.path("dhclient.sh"))
            .arg(IFNAME)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dhclient");
        self.children.push(KillOnDrop(child));
        self.wait_for_address(i)
    }

    /// The IPv4 address of namespace `i`'s interface, if it has one.
    fn address(&self, i: usize) -> Option<String> {
        let output = self.exec(i, &["ip", "-4", "-o", "addr", "show", "dev", IFNAME]);
        let text = String::from_utf8_lossy(&output.stdout);
        text.split_whitespace()
            .skip_while(|word| *word != "inet")
            .nth(1)
            .and_then(|cidr| cidr.split('/').next())
            .map(str::to_string)
    }

    fn wait_for_address(&self, i: usize) -> String {
        let deadline = Instant::now() + LEASE_DEADLINE;
        loop {
            if let Some(address) = self.address(i) {
                return address;
            }
            assert!(
                Instant::now() < deadline,
                "namespace {i} got no address in {LEASE_DEADLINE:?}\n{}",
                self.what_the_network_saw()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pings `to` from namespace `from` until it answers, failing after the deadline.
    fn ping(&self, from: usize, to: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self
            .exec(from, &["ping", "-c", "1", "-W", "1", to])
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "namespace {from} cannot ping {to}"
            );
        }
    }

    /// Asks the server, from namespace `i`, about `name` with busybox nslookup.
    fn nslookup(&self, i: usize, name: &str) -> Output {
        self.exec(i, &["busybox", "nslookup", name, SERVER])
    }

    /// For a failure's message: the network's status (every peer's counters and drops,
    /// the DHCP server's counters), so that a lost request or answer shows where it went.
    fn what_the_network_saw(&self) -> String {
        let output = self.status_json();
        format!(
            "guestnet status: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// `guestnet status lab --json`, run.
    fn status_json(&self) -> Output {
        run(Command::new(BIN)
            .arg("--dir")
            .arg(self.dir.path())
            .args(["status", "lab", "--json"]))
    }

    fn dhcp_status(&self) -> serde_json::Value {
        let output = self.status_json();
        assert!(output.status.success(), "status: {output:?}");
        let status: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("status JSON");
        status["dhcp"][0].clone()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Clients first (they live in the namespaces), then ports, then the namespaces.
        self.children.clear();
        self.dhcp = None;
        for namespace in &self.namespaces {
            let _ = run(Command::new("ip").args(["netns", "del", namespace]));
        }
    }
}

fn in_range(address: &str) -> bool {
    let last: u8 = address
        .rsplit('.')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    address.starts_with("10.79.0.") && (10..=50).contains(&last)
}

#[test]
fn two_namespaces_get_leases_ping_and_find_each_other_by_name_and_keep_them_across_a_restart() {
    if !ready() {
        return;
    }
    let mut lab = Lab::new("names", 2);
    lab.start_dhcp();
    lab.udhcpc(0, "alpha");
    let alpha = lab.wait_for_address(0);
    let beta = lab.dhclient(1, "beta");
    assert!(in_range(&alpha) && in_range(&beta), "{alpha} {beta}");
    assert_ne!(alpha, beta);

    lab.ping(0, &beta);
    lab.ping(1, &alpha);
    lab.ping(0, SERVER);

    let found = lab.nslookup(0, &format!("beta.{DOMAIN}"));
    let text = String::from_utf8_lossy(&found.stdout);
    assert!(text.contains(&beta), "beta.{DOMAIN} from alpha: {text}");
    let found = lab.nslookup(1, &format!("alpha.{DOMAIN}"));
    let text = String::from_utf8_lossy(&found.stdout);
    assert!(text.contains(&alpha), "alpha.{DOMAIN} from beta: {text}");
    let found = lab.nslookup(1, &alpha);
    let text = String::from_utf8_lossy(&found.stdout);
    assert!(
        text.contains(&format!("alpha.{DOMAIN}")),
        "{alpha} from beta: {text}"
    );
    // No open resolver: a name outside the domain is refused.
    let refused = lab.nslookup(0, "example.com");
    assert!(
        !refused.status.success() || String::from_utf8_lossy(&refused.stdout).contains("REFUSED")
    );

    // The server rewrites its status file every second.
    wait_until("status shows both leases and the refusal", || {
        let status = lab.dhcp_status();
        status["leases"] == 2 && status["counters"]["dns_refused"].as_u64() >= Some(1)
    });
    let status = lab.dhcp_status();
    assert_eq!(status["counters"]["acks"], 2, "{status}");
    assert!(
        status["counters"]["dns_refused"].as_u64() >= Some(1),
        "{status}"
    );
    assert_eq!(status["counters"]["bad_headers"], 0, "{status}");

    // A restarted server keeps the leases: each MAC gets its address back, asked anew.
    lab.stop_dhcp();
    lab.children.truncate(2); // dhclient stops; the TAP ports stay
    for i in 0..2 {
        assert!(
            lab.exec(i, &["ip", "addr", "flush", "dev", IFNAME])
                .status
                .success()
        );
    }
    let _ = std::fs::remove_file(lab.path("dhclient-1.leases"));
    lab.start_dhcp();
    lab.udhcpc(0, "alpha");
    assert_eq!(lab.wait_for_address(0), alpha);
    assert_eq!(lab.dhclient(1, "beta"), beta);
    let found = lab.nslookup(0, &format!("beta.{DOMAIN}"));
    assert!(String::from_utf8_lossy(&found.stdout).contains(&beta));
    assert!(lab.network.status().peers.len() >= 3);
}

#[test]
fn a_second_server_on_the_same_network_and_lease_file_is_refused() {
    let mut lab = Lab::new("twice", 0);
    lab.start_dhcp();
    let output = run(Command::new(BIN).arg("--dir").arg(lab.dir.path()).args([
        "dhcp",
        "lab",
        "--subnet",
        "10.79.0.0/24",
        "--range",
        "10.79.0.10-10.79.0.50",
    ]));
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("another guestnet dhcp uses the lease file"),
        "{error}"
    );
}

/// A DHCP client made of a peer: it sends BOOTREQUESTs from its own MAC and reads what
/// comes back.
struct Client {
    peer: Peer,
}

impl Client {
    fn send(&mut self, message: &v4::Message) {
        let mut payload = Vec::new();
        message
            .encode(&mut Encoder::new(&mut payload))
            .expect("encode");
        let udp_len = udp::HEADER_LEN + payload.len();
        let mut frame = vec![0u8; ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp_len];
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.set_destination(MacAddress::BROADCAST);
        eth.set_source(self.peer.mac());
        eth.set_ethertype(EtherType::Ipv4);
        let mut ip = Ipv4Packet::new_unchecked(&mut frame[ethernet::HEADER_LEN..]);
        Ipv4Repr {
            source: Ipv4Addr::UNSPECIFIED,
            destination: Ipv4Addr::BROADCAST,
            protocol: ipv4::PROTOCOL_UDP,
            payload_len: udp_len,
            ttl: 64,
            dont_fragment: false,
        }
        .emit(&mut ip);
        ip.fill_checksum();
        let at = ethernet::HEADER_LEN + ipv4::HEADER_LEN;
        UdpRepr {
            source_port: 68,
            destination_port: 67,
            payload_len: payload.len(),
        }
        .emit(&mut UdpPacket::new_unchecked(&mut frame[at..]));
        frame[at + udp::HEADER_LEN..].copy_from_slice(&payload);
        self.peer.send(&frame);
    }

    fn message(&self, kind: MessageType) -> v4::Message {
        let mut m = v4::Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.peer.mac().octets(),
        );
        m.set_opcode(Opcode::BootRequest);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m.opts_mut().insert(DhcpOption::Hostname("peer".into()));
        m
    }

    /// The next DHCP reply, within the lease deadline; ARP probes seen on the way are
    /// counted into `probes`.
    fn reply(&mut self, probes: &mut u32) -> v4::Message {
        let deadline = Instant::now() + LEASE_DEADLINE;
        loop {
            let mut found = None;
            self.peer.receive(64, |frame| {
                if let Some(message) = dhcp_reply(frame) {
                    found = Some(message);
                } else if is_arp_request(frame) {
                    *probes += 1;
                }
            });
            if let Some(message) = found {
                return message;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no DHCP reply within {LEASE_DEADLINE:?}");
            self.peer.wait(left.min(Duration::from_millis(100)));
        }
    }

    /// DISCOVER, OFFER (after a probe), REQUEST, ACK: the address leased.
    fn lease(&mut self) -> Ipv4Addr {
        let mut probes = 0;
        self.send(&self.message(MessageType::Discover));
        let offer = self.reply(&mut probes);
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        let mut request = self.message(MessageType::Request);
        request
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        request
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(SERVER.parse().unwrap()));
        self.send(&request);
        let ack = self.reply(&mut probes);
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), offer.yiaddr());
        ack.yiaddr()
    }
}

fn dhcp_reply(frame: &[u8]) -> Option<v4::Message> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    let header = Ipv4Repr::parse(&ip).ok()?;
    let datagram = UdpPacket::new_checked(ip.payload()).ok()?;
    let udp = UdpRepr::parse(&datagram, header.source, header.destination).ok()?;
    (udp.destination_port == 68).then_some(())?;
    v4::Message::decode(&mut Decoder::new(datagram.payload())).ok()
}

fn is_arp_request(frame: &[u8]) -> bool {
    EthernetFrame::new_checked(frame)
        .ok()
        .filter(|eth| eth.ethertype() == EtherType::Arp)
        .and_then(|eth| ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok())
        .is_some_and(|arp| arp.operation == ArpOperation::Request)
}

/// `GET /metrics` from a `guestnet metrics` on a free port of 127.0.0.1.
fn scrape(dir: &std::path::Path) -> String {
    let mut child = Command::new(BIN)
        .arg("--dir")
        .arg(dir)
        .args(["metrics", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start guestnet metrics");
    let stdout = child.stdout.take().expect("stdout");
    let _exporter = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(DEADLINE)
        .expect("metrics says where it listens");
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    let mut stream = TcpStream::connect(&address).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").expect("ask");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
        .split_once("\r\n\r\n")
        .expect("a body")
        .1
        .to_string()
}

/// `promtool check metrics` accepts `body` (required under CI; elsewhere skipped with a
/// word when promtool is missing).
fn promtool_accepts(body: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("skipped the promtool check: {e} (Debian package prometheus)");
            return;
        }
        Err(e) => panic!("promtool is needed under CI: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_peer_gets_a_lease_from_the_command_keeps_it_across_a_restart_and_the_scrape_shows_it() {
    let mut lab = Lab::new("peer", 0);
    lab.start_dhcp();
    let peer = lab.network.join(JoinOptions::default()).expect("join");
    let mut client = Client { peer };
    let address = client.lease();
    assert!(in_range(&address.to_string()), "{address}");
    wait_until("status shows the lease", || {
        lab.dhcp_status()["leases"] == 1
    });
    let body = scrape(lab.dir.path());
    assert!(
        body.lines()
            .any(|l| l.starts_with("guestnet_dhcp_leases{") && l.ends_with(" 1")),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("guestnet_dhcp_acks_total{") && l.ends_with(" 1")),
        "{body}"
    );
    promtool_accepts(&body);
    lab.stop_dhcp();
    lab.start_dhcp();
    assert_eq!(
        client.lease(),
        address,
        "the same MAC gets the same address after a restart"
    );
}

#[test]
fn a_server_in_vlan_10_leases_to_vlan_10_and_never_hears_vlan_20() {
    let mut lab = Lab::new("vlan", 0);
    lab.start_dhcp_with(&["--vlan", "10"]);
    let join = |vid| {
        let vlans = VlanMembership::access(vid).expect("a VLAN");
        lab.network
            .join(JoinOptions {
                vlans,
                ..JoinOptions::default()
            })
            .expect("join")
    };
    let mut in_10 = Client { peer: join(10) };
    let address = in_10.lease();
    assert!(in_range(&address.to_string()), "{address}");
    // The server is the only other peer; a DISCOVER in VLAN 20 reaches no one.
    let mut in_20 = Client { peer: join(20) };
    in_20.send(&in_20.message(MessageType::Discover));
    let sent = in_20.peer.counters();
    assert_eq!(sent.tx_packets, 1, "the DISCOVER was sent");
    assert_eq!(sent.tx_deliveries, 0, "and delivered to no one: {sent:?}");
    wait_until("status shows one lease", || {
        lab.dhcp_status()["leases"] == 1
    });
    let status = lab.dhcp_status();
    assert_eq!(
        status["counters"]["discovers"], 1,
        "only VLAN 10's DISCOVER arrived: {status}"
    );
}
