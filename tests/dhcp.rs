//! `guestnet dhcp` end to end: two network namespaces on TAP ports get their addresses
//! from real DHCP clients (busybox `udhcpc` in one, ISC `dhclient` in the other), ping
//! each other, find each other by name through the server's DNS, and get the same
//! addresses back from a restarted server.
//!
//! These need root, /dev/net/tun, `ip`, `ping`, `busybox` and `dhclient`. Under CI
//! (`CI=true`) a missing prerequisite fails the test; elsewhere the test says why it
//! skips. The namespaces are named after the process, and a [`Lab`] guard removes them
//! and kills every process it started however the test ends. The clients run with
//! scripts of the test's own that only set the interface's address, so nothing of the
//! host (its resolv.conf, its lease files) is touched.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use guestnet::network::{CreateOptions, Network};

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
            let output = lab.exec(
                i,
                &[
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
            );
            assert!(output.status.success(), "turn IPv6 off in {namespace}");
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
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let line = received
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("guestnet {} did not get ready in {DEADLINE:?}", args[0]));
        assert!(line.starts_with(ready), "{line}");
        guard
    }

    /// Starts the DHCP server (again).
    fn start_dhcp(&mut self) {
        let server = self.start(
            &[
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
            ],
            "ready",
        );
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
            "udhcpc: {}",
            String::from_utf8_lossy(&output.stderr)
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
                "namespace {i} got no address in {LEASE_DEADLINE:?}"
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

    fn dhcp_status(&self) -> serde_json::Value {
        let output = run(Command::new(BIN)
            .arg("--dir")
            .arg(self.dir.path())
            .args(["status", "lab", "--json"]));
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
    if !ready() {
        return;
    }
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
