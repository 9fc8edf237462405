//! Real QEMU guests on the stream, dgram and vhost-user ports: a Linux kernel with
//! virtio-net, booted under software emulation (TCG), pings a namespace on a TAP port or
//! another guest, moves 16 MiB over TCP, and comes back after its port restarts; a guest
//! gets its address from `guestnet dhcp` at boot, and one on a VLAN trunk port reaches,
//! through its 802.1Q sub-interfaces, the peers of its own VLAN only.
//!
//! This is the check that the ports speak QEMU's `-netdev stream`, `-netdev dgram` and
//! vhost-user protocols as QEMU itself does, which the socket-level tests cannot prove.
//! The QEMU command lines are the README's.
//!
//! The guest is built by `scripts/guest-image` (kernel and initramfs under
//! `target/guest/`); its `/init` takes its address (or `dhcp`), VLAN sub-interfaces and a
//! command from the kernel command line, prints `GUESTNET-DONE rc=N` on the serial console,
//! which is QEMU's stdout here, and, with `guestnet.hold`, stays up until the test writes a
//! line to the console. The image, the accelerator (KVM where a guest boots under it, else
//! TCG), QEMU's command line and the console are `guestnet::cli::guest`'s, which `guestnet
//! bench --vm` uses too.
//!
//! These need root, /dev/net/tun, `ip`, `qemu-system-x86_64` 10 or newer and the guest image
//! (built here when missing). Under CI (`CI=true`) a missing prerequisite fails the test;
//! elsewhere the test says why it skips. Guards kill QEMU and the ports and remove the
//! namespaces however a test ends.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use guestnet::cli::child::Children;
use guestnet::cli::guest::{
    Accelerator, Boot, Console, DHCP, DONE_MARKER, GuestImage, HOLD_MARKER, LEASE_MARKER, QEMU,
    Stderr, done_status, qemu_command,
};
use guestnet::network::{CreateOptions, Network, PeerStatus, PortKind};
use guestnet::ports::dhcp::leases::Leases;
use guestnet::wire::MacAddress;

const BIN: &str = env!("CARGO_BIN_EXE_guestnet");
/// How long a port may take to print its ready line.
const PORT_READY: Duration = Duration::from_secs(5);
/// How long a guest may take from start to its marker line. A TCG boot takes about 3 s
/// alone; the bound leaves room for a loaded 2-core machine running guests side by side.
const GUEST_DONE: Duration = Duration::from_secs(60);
/// How long a released guest may take to power off.
const GUEST_EXIT: Duration = Duration::from_secs(15);
const NAMESPACE_ADDRESS: &str = "10.80.0.1";

/// The guest image if the machine can run these tests; panics under CI if it cannot.
fn prerequisites() -> Option<&'static GuestImage> {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root".to_string());
    }
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun".to_string());
    }
    let ip_found = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ip_found {
        missing.push("ip".to_string());
    }
    if let Err(problem) = qemu_version_ok() {
        missing.push(problem);
    }
    // Building the image may install packages, so it is only tried as root.
    let image = if missing.is_empty() {
        match guest_image() {
            Ok(image) => Some(image),
            Err(problem) => {
                missing.push(problem.clone());
                None
            }
        }
    } else {
        None
    };
    if let (true, Some(image)) = (missing.is_empty(), image) {
        return Some(image);
    }
    let reason = format!("QEMU tests need {}", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}, and CI must not skip them");
    }
    eprintln!("skipped: {reason}");
    None
}

/// `-netdev stream`/`dgram` with `addr.type=unix` and `reconnect-ms` need QEMU 10 here.
fn qemu_version_ok() -> Result<(), String> {
    let output = Command::new(QEMU)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|_| format!("{QEMU} (not found)"))?;
    // "QEMU emulator version 10.0.2 (Debian …)"
    let text = String::from_utf8_lossy(&output.stdout);
    let major = text
        .split_whitespace()
        .skip_while(|word| *word != "version")
        .nth(1)
        .and_then(|version| version.split('.').next())
        .and_then(|major| major.parse::<u32>().ok());
    match major {
        Some(major) if major >= 10 => Ok(()),
        _ => Err(format!(
            "{QEMU} 10 or newer (found {:?})",
            text.lines().next().unwrap_or("")
        )),
    }
}

/// Runs `scripts/guest-image` once per test process (it returns at once when the image is
/// current) so that parallel tests never build it side by side.
fn guest_image() -> Result<&'static GuestImage, String> {
    static IMAGE: OnceLock<Result<GuestImage, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            GuestImage::build(
                &root.join("scripts/guest-image"),
                &root.join("target/guest"),
            )
            .map_err(|error| format!("the guest image ({error:#})"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The accelerator to run guests with, chosen once per test process and said once:
/// KVM where a guest boots under it, TCG otherwise (`GUESTNET_ACCEL=kvm|tcg` skips the
/// probe).
fn accelerator(image: &GuestImage) -> Accelerator {
    static CHOSEN: OnceLock<Accelerator> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let (accelerator, reason) = Accelerator::choose(image, &Children::default())
            .unwrap_or_else(|error| (Accelerator::Tcg, format!("{error:#}")));
        eprintln!(
            "guests run under {}: {reason}",
            accelerator.name().to_uppercase()
        );
        accelerator
    })
}

/// A network in a private directory, with the ports and namespace the test starts on it;
/// all are stopped and removed on drop.
struct Lab {
    dir: tempfile::TempDir,
    network: Network,
    /// The port processes, newest last; each is killed and reaped when dropped.
    ports: Vec<Console>,
    children: Children,
    namespace: Option<String>,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().expect("temp dir");
        let network = Network::create(dir.path(), "lab", CreateOptions::default()).expect("create");
        Lab {
            dir,
            network,
            ports: Vec::new(),
            children: Children::default(),
            namespace: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `guestnet ARGS…` on the lab's network and returns its first stdout line once
    /// it is there (the port's ready line).
    fn start_port(&mut self, args: &[&str]) -> String {
        let mut command = Command::new(BIN);
        command.arg("--dir").arg(self.dir.path()).args(args);
        let port = Console::spawn(command, "guestnet port", Stderr::Inherit, &self.children)
            .expect("start a guestnet port");
        self.ports.push(port);
        let port = self.ports.last_mut().expect("the port just started");
        port.next_line(Instant::now() + PORT_READY)
            .unwrap_or_else(|error| panic!("guestnet {args:?} printed no ready line: {error:#}"))
    }

    /// `guestnet stream lab --listen SOCK`; returns the socket path.
    fn stream_port(&mut self) -> PathBuf {
        let socket = self.path("lab.sock");
        let line = self.start_port(&["stream", "lab", "--listen", path_str(&socket)]);
        assert!(line.starts_with("listening"), "{line}");
        socket
    }

    /// Kills the newest port (SIGKILL: it leaves its socket file behind) and reaps it.
    fn kill_newest_port(&mut self) {
        self.ports.pop().expect("a port to kill");
    }

    /// The process id of the newest port.
    fn newest_port_pid(&self) -> u32 {
        self.ports.last().expect("a port").id()
    }

    /// `guestnet dgram lab --listen SOCK`; returns the socket path.
    fn dgram_port(&mut self) -> PathBuf {
        let socket = self.path("lab-dgram.sock");
        let line = self.start_port(&["dgram", "lab", "--listen", path_str(&socket)]);
        assert!(line.starts_with("listening"), "{line}");
        socket
    }

    /// `guestnet vhost-user lab --socket S…` (with `--client` when QEMU listens); returns
    /// the socket paths, `NAME.sock` in the lab directory for each of `names`.
    fn vhost_user_port(&mut self, names: &[&str], client: bool) -> Vec<PathBuf> {
        self.vhost_user_port_with(names, client, &[])
    }

    /// [`Lab::vhost_user_port`] with more arguments for the port.
    fn vhost_user_port_with(
        &mut self,
        names: &[&str],
        client: bool,
        extra: &[&str],
    ) -> Vec<PathBuf> {
        let sockets: Vec<PathBuf> = names
            .iter()
            .map(|name| self.path(&format!("{name}.sock")))
            .collect();
        let mut args = vec!["vhost-user".to_string(), "lab".to_string()];
        for socket in &sockets {
            args.push("--socket".into());
            args.push(path_str(socket).into());
        }
        if client {
            args.push("--client".into());
        }
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let line = self.start_port(&args);
        let expected = if client {
            "connecting to"
        } else {
            "listening on"
        };
        assert!(line.starts_with(expected), "{line}");
        sockets
    }

    /// The vhost-user sockets' status from `guestnet status --json`.
    fn vhost_user_status(&self) -> Vec<serde_json::Value> {
        let output = Command::new(BIN)
            .arg("--dir")
            .arg(self.dir.path())
            .args(["status", "lab", "--json"])
            .stdin(Stdio::null())
            .output()
            .expect("run guestnet status");
        assert!(output.status.success(), "{output:?}");
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("status JSON");
        report["vhost_user"].as_array().cloned().unwrap_or_default()
    }

    /// A namespace on a TAP port, `10.80.0.1/24` on its `gn0`; returns the TAP's slot.
    fn namespace_on_tap(&mut self, test: &str) -> u16 {
        self.namespace_on_tap_with(test, &format!("{NAMESPACE_ADDRESS}/24"), &[])
    }

    /// [`Lab::namespace_on_tap`] with `address` (CIDR) and more arguments for the port.
    fn namespace_on_tap_with(&mut self, test: &str, address: &str, extra: &[&str]) -> u16 {
        let namespace = format!("gnq-{}-{test}", std::process::id());
        ip(&["netns", "add", &namespace]);
        self.namespace = Some(namespace.clone());
        let mut args = vec!["tap", "lab", "--ifname", "gn0", "--netns", &namespace];
        args.extend(extra);
        let line = self.start_port(&args);
        // "ready gn0 slot N mac M"
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"ready"), "{line}");
        let slot = words.get(3).and_then(|slot| slot.parse().ok());
        ip(&["-n", &namespace, "addr", "add", address, "dev", "gn0"]);
        ip(&["-n", &namespace, "link", "set", "gn0", "up"]);
        slot.unwrap_or_else(|| panic!("no slot in {line:?}"))
    }

    /// The peer with `mac`, as `status` shows it.
    fn peer_with_mac(&self, mac: MacAddress) -> PeerStatus {
        let status = self.network.status();
        status
            .peers
            .into_iter()
            .find(|peer| peer.mac == mac)
            .unwrap_or_else(|| panic!("no peer with MAC {mac} in status"))
    }

    fn peer_in_slot(&self, slot: u16) -> PeerStatus {
        self.network
            .status()
            .peers
            .into_iter()
            .find(|peer| peer.slot == slot)
            .unwrap_or_else(|| panic!("no peer in slot {slot}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.ports.clear();
        if let Some(namespace) = &self.namespace {
            let _ = Command::new("ip")
                .args(["netns", "del", namespace])
                .stdin(Stdio::null())
                .output();
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// A running QEMU guest whose serial console is read line by line; killed on drop.
struct Guest {
    /// QEMU's stdout (the console) and stderr.
    console: Console,
    mac: MacAddress,
}

impl Guest {
    /// Boots the guest with `address` (CIDR) on a virtio-net NIC with `mac`, whose backend
    /// `backend` gives (QEMU arguments ending in a `-netdev` with `id=n0`), running
    /// `command`, then holding.
    fn boot(
        image: &GuestImage,
        backend: &[String],
        mac: &str,
        address: &str,
        command: &str,
    ) -> Guest {
        let device = format!("virtio-net-pci,netdev=n0,mac={mac}");
        Guest::boot_with_device(image, backend, &device, address, command)
    }

    /// [`Guest::boot`] with the `-device` argument given whole (it must name the MAC).
    fn boot_with_device(
        image: &GuestImage,
        backend: &[String],
        device: &str,
        address: &str,
        command: &str,
    ) -> Guest {
        let boot = Boot {
            run: command,
            address: Some(address),
            hold: true,
            ..Boot::default()
        };
        Guest::boot_as(image, backend, device, &boot)
    }

    /// [`Guest::boot_with_device`] doing what `boot` says (which should hold).
    fn boot_as(image: &GuestImage, backend: &[String], device: &str, boot: &Boot) -> Guest {
        let mac = device
            .split(',')
            .find_map(|option| option.strip_prefix("mac="))
            .expect("the device names its MAC");
        let mut qemu = qemu_command(image, accelerator(image), boot);
        qemu.args(backend).args(["-device", device]);
        // Nothing here handles signals: the guest is a group of its own.
        let console = Console::spawn(qemu, "guest", Stderr::Capture, &Children::default())
            .unwrap_or_else(|error| panic!("{error:#}"));
        Guest {
            console,
            mac: mac.parse().expect("MAC"),
        }
    }

    /// Everything the console and QEMU's stderr printed so far, for failure messages.
    fn transcript(&self) -> String {
        self.console.transcript().join("\n")
    }

    /// Reads the console until a line contains `marker`; returns that line.
    fn expect_line(&mut self, marker: &str, deadline: Instant) -> String {
        self.console
            .expect(marker, deadline)
            .unwrap_or_else(|error| {
                panic!("{error:#}\n(its whole console:\n{})", self.transcript())
            })
    }

    /// Waits for the guest's command to finish and returns its exit status.
    fn exit_status(&mut self, deadline: Instant) -> i32 {
        let line = self.expect_line(DONE_MARKER, deadline);
        let status = done_status(&line);
        self.expect_line(HOLD_MARKER, deadline);
        status.unwrap_or_else(|| panic!("bad marker line {line:?}"))
    }

    /// Types an empty line on the guest's console: what a waiting `read` there takes.
    fn press_enter(&mut self) {
        self.console
            .press_enter()
            .unwrap_or_else(|error| panic!("{error:#}"));
    }

    /// Lets the holding guest power off, and checks that QEMU ends on its own: its stdout
    /// and stderr close (the console channel disconnects) and it exits successfully.
    fn release(mut self) {
        self.press_enter();
        let status = self
            .console
            .wait_for_exit(GUEST_EXIT)
            .unwrap_or_else(|error| {
                panic!(
                    "the guest did not power off: {error:#}; its console:\n{}",
                    self.transcript()
                )
            });
        assert!(status.success(), "qemu: {status}\n{}", self.transcript());
    }
}

/// The README's stream netdev, with the socket path filled in.
fn stream_netdev(socket: &Path) -> Vec<String> {
    vec![
        "-netdev".into(),
        format!(
            "stream,id=n0,server=off,addr.type=unix,addr.path={},reconnect-ms=1000",
            socket.display()
        ),
    ]
}

/// The README's dgram netdev: the guest's own socket `local`, the port's `remote`.
fn dgram_netdev(local: &Path, remote: &Path) -> Vec<String> {
    vec![
        "-netdev".into(),
        format!(
            "dgram,id=n0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
            local.display(),
            remote.display()
        ),
    ]
}

/// How QEMU reaches a vhost-user backend.
#[derive(Debug, Clone, Copy)]
enum Chardev {
    /// QEMU connects to the port's socket, and again after it restarts.
    Connect,
    /// QEMU listens; the port (`--client`) connects.
    Listen,
}

/// The README's vhost-user netdev: a socket chardev to the port, and the netdev on it.
/// The guest's memory is shared (a memfd) as the README says, for every guest
/// (`qemu_command`).
fn vhost_user_netdev(socket: &Path, chardev: Chardev) -> Vec<String> {
    let mode = match chardev {
        Chardev::Connect => "reconnect-ms=1000",
        Chardev::Listen => "server=on,wait=off",
    };
    [
        "-chardev",
        &format!("socket,id=c0,path={},{mode}", socket.display()),
        "-netdev",
        "vhost-user,id=n0,chardev=c0",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// Waits until `to` answers (the guest's `reach`: the other side may still be booting, or
/// QEMU reconnecting), then pings it three times; all three must be answered.
fn ping(to: &str) -> String {
    format!("reach {to} && ping -c 3 {to}")
}

/// One guest on `netdev` pings the namespace on a TAP port; the marker must report
/// success, and both the guest's port peer (of `kind`) and the TAP must have carried frames.
fn guest_pings_namespace(test: &str, kind: PortKind, netdev: impl FnOnce(&mut Lab) -> Vec<String>) {
    let Some(image) = prerequisites() else {
        return;
    };
    let mut lab = Lab::new();
    let tap_slot = lab.namespace_on_tap(test);
    let netdev = netdev(&mut lab);
    let mut guest = Guest::boot(
        image,
        &netdev,
        "52:54:00:12:34:56",
        "10.80.0.11/24",
        &ping(NAMESPACE_ADDRESS),
    );
    let status = guest.exit_status(Instant::now() + GUEST_DONE);
    assert_eq!(status, 0, "ping failed; console:\n{}", guest.transcript());

    let peer = lab.peer_with_mac(guest.mac);
    assert_eq!(peer.kind, kind);
    // Three echo requests out, three replies in, plus ARP both ways.
    assert!(peer.tx_packets >= 4, "guest sent too little: {peer:?}");
    assert!(peer.rx_packets >= 4, "guest received too little: {peer:?}");
    let tap = lab.peer_in_slot(tap_slot);
    assert!(tap.rx_packets >= 4 && tap.tx_packets >= 4, "{tap:?}");
    guest.release();
}

#[test]
fn guest_on_stream_port_pings_namespace() {
    guest_pings_namespace("stream", PortKind::Stream, |lab| {
        stream_netdev(&lab.stream_port())
    });
}

#[test]
fn guest_on_dgram_port_pings_namespace() {
    guest_pings_namespace("dgram", PortKind::Dgram, |lab| {
        let remote = lab.dgram_port();
        dgram_netdev(&lab.path("vm0.sock"), &remote)
    });
}

/// A guest on the stream port and one on the dgram port ping each other; each holds after
/// its pings, so the other can still reach it.
#[test]
fn guests_on_stream_and_dgram_ports_ping_each_other() {
    let Some(image) = prerequisites() else {
        return;
    };
    let mut lab = Lab::new();
    let stream = stream_netdev(&lab.stream_port());
    let remote = lab.dgram_port();
    let dgram = dgram_netdev(&lab.path("vm1.sock"), &remote);
    let mut first = Guest::boot(
        image,
        &stream,
        "52:54:00:12:34:56",
        "10.80.0.11/24",
        &ping("10.80.0.12"),
    );
    let mut second = Guest::boot(
        image,
        &dgram,
        "52:54:00:12:34:57",
        "10.80.0.12/24",
        &ping("10.80.0.11"),
    );
    let deadline = Instant::now() + GUEST_DONE;
    let first_status = first.exit_status(deadline);
    let second_status = second.exit_status(deadline);
    assert_eq!(first_status, 0, "console:\n{}", first.transcript());
    assert_eq!(second_status, 0, "console:\n{}", second.transcript());

    let on_stream = lab.peer_with_mac(first.mac);
    let on_dgram = lab.peer_with_mac(second.mac);
    assert_eq!(on_stream.kind, PortKind::Stream);
    assert_eq!(on_dgram.kind, PortKind::Dgram);
    // Each sent at least its three requests and three replies, and received as many.
    for peer in [&on_stream, &on_dgram] {
        assert!(peer.tx_packets >= 6 && peer.rx_packets >= 6, "{peer:?}");
    }
    first.release();
    second.release();
}

/// The README promises that `reconnect-ms` brings QEMU back after the stream port restarts:
/// the guest pings, the port is killed and started again on the same socket, and the guest
/// pings again, through a peer of the new port process.
#[test]
fn guest_on_stream_port_comes_back_after_the_port_restarts() {
    let Some(image) = prerequisites() else {
        return;
    };
    let mut lab = Lab::new();
    lab.namespace_on_tap("restart");
    let netdev = stream_netdev(&lab.stream_port());
    let pings = ping(NAMESPACE_ADDRESS);
    // Between the two pings the guest waits for a line on its console.
    let command = format!("{pings} && echo GUESTNET-PHASE && read line && {pings}");
    let mut guest = Guest::boot(
        image,
        &netdev,
        "52:54:00:12:34:58",
        "10.80.0.13/24",
        &command,
    );
    let deadline = Instant::now() + GUEST_DONE;
    guest.expect_line("GUESTNET-PHASE", deadline);

    lab.kill_newest_port();
    lab.stream_port();
    let new_port = lab.newest_port_pid();
    guest.press_enter();
    let status = guest.exit_status(deadline);
    assert_eq!(
        status,
        0,
        "ping after the restart failed; console:\n{}",
        guest.transcript()
    );

    let peer = lab.peer_with_mac(guest.mac);
    assert_eq!(
        peer.pid, new_port,
        "the guest's peer is not the new port's: {peer:?}"
    );
    assert!(peer.tx_packets >= 3 && peer.rx_packets >= 3, "{peer:?}");
    guest.release();
}

/// `ADDR` answers within five one-second pings: what "traffic resumes within 5 s" means
/// from inside the guest.
fn reach_within_5s(to: &str) -> String {
    format!("i=0; until ping -c 1 -W 1 {to}; do i=$((i+1)); [ $i -lt 5 ] || exit 9; done")
}

/// The MD5 line (`HASH  /f`) a guest printed for the file it sent or received.
fn md5_of_f(transcript: &str) -> String {
    transcript
        .lines()
        .find_map(|line| line.trim().strip_suffix("  /f"))
        .map(|hash| hash.trim().to_string())
        .unwrap_or_else(|| panic!("no checksum of /f on the console:\n{transcript}"))
}

/// Two guests on vhost-user ports of one port process ping each other, then one sends
/// the other 16 MiB of random bytes over TCP, which arrive intact; the guests negotiated
/// the offloads, so the transfer went as super-frames, and no descriptor was refused.
#[test]
fn guests_on_vhost_user_ports_ping_and_move_16_mib_over_tcp() {
    let Some(image) = prerequisites() else {
        return;
    };
    let mut lab = Lab::new();
    let sockets = lab.vhost_user_port(&["vm0", "vm1"], false);
    let receiver_command = format!("{} && nc -l -p 5000 > /f && md5sum /f", ping("10.80.0.12"));
    // The receiver may still be starting its listener: the sender retries, boundedly.
    let sender_command = format!(
        "dd if=/dev/urandom of=/f bs=1M count=16 2>/dev/null && md5sum /f && {} && \
         i=0; until nc 10.80.0.11 5000 < /f; do i=$((i+1)); [ $i -lt 50 ] || exit 8; sleep 0.2; done",
        ping("10.80.0.11")
    );
    let mut receiving = Guest::boot(
        image,
        &vhost_user_netdev(&sockets[0], Chardev::Connect),
        "52:54:00:00:01:01",
        "10.80.0.11/24",
        &receiver_command,
    );
    let mut sending = Guest::boot(
        image,
        &vhost_user_netdev(&sockets[1], Chardev::Connect),
        "52:54:00:00:01:02",
        "10.80.0.12/24",
        &sender_command,
    );
    let deadline = Instant::now() + GUEST_DONE;
    let sent = sending.exit_status(deadline);
    let received = receiving.exit_status(deadline);
    assert_eq!(sent, 0, "sender failed; console:\n{}", sending.transcript());
    assert_eq!(
        received,
        0,
        "receiver failed; console:\n{}",
        receiving.transcript()
    );
    assert_eq!(
        md5_of_f(&receiving.transcript()),
        md5_of_f(&sending.transcript()),
        "the 16 MiB arrived changed"
    );

    for guest in [&receiving, &sending] {
        let peer = lab.peer_with_mac(guest.mac);
        assert_eq!(peer.kind, PortKind::VhostUser);
    }
    let sender_peer = lab.peer_with_mac(sending.mac);
    // 16 MiB in 1500-byte frames would be over 11000; super-frames make it far fewer.
    assert!(
        sender_peer.tx_bytes >= 16 << 20 && sender_peer.tx_packets < 11_000,
        "{sender_peer:?}"
    );
    let statuses = lab.vhost_user_status();
    assert_eq!(statuses.len(), 2, "{statuses:?}");
    for status in &statuses {
        assert_eq!(status["state"], "running", "{status}");
        let features = status["acked_features"].as_u64().unwrap_or(0);
        let tso4 = guestnet::ports::vhost_user::feature::GUEST_TSO4;
        assert_ne!(features & tso4, 0, "GUEST_TSO4 not negotiated: {status}");
        let counters = &status["counters"];
        for fault in [
            "bad_messages",
            "rejected_messages",
            "tx_bad_chains",
            "tx_wrong_direction",
            "tx_bad_length",
            "tx_bad_header",
            "rx_bad_chains",
            "rx_wrong_direction",
            "rx_no_room",
        ] {
            assert_eq!(counters[fault], 0, "{fault}: {status}");
        }
    }
    receiving.release();
    sending.release();
}

/// One network holding a VM on a vhost-user port, a VM on the stream port and a namespace
/// on a TAP port: every one reaches the two others.
#[test]
fn vhost_user_stream_and_tap_guests_reach_each_other() {
    let Some(image) = prerequisites() else {
        return;
    };
    let mut lab = Lab::new();
    lab.namespace_on_tap("mixed");
    let vhost = lab.vhost_user_port(&["vm0"], false);
    let stream = stream_netdev(&lab.stream_port());
    let mut on_vhost = Guest::boot(
        image,
        &vhost_user_netdev(&vhost[0], Chardev::Connect),
        "52:54:00:00:02:01",
        "10.80.0.11/24",
        &format!("{} && {}", ping(NAMESPACE_ADDRESS), ping("10.80.0.12")),
    );
    let mut on_stream = Guest::boot(
        image,
        &stream,
        "52:54:00:00:02:02",
        "10.80.0.12/24",
        &format!("{} && {}", ping(NAMESPACE_ADDRESS), ping("10.80.0.11")),
    );
    let deadline = Instant::now() + GUEST_DONE;
    let vhost_status = on_vhost.exit_status(deadline);
    let stream_status = on_stream.exit_status(deadline);
    assert_eq!(vhost_status, 0, "console:\n{}", on_vhost.transcript());
    assert_eq!(stream_status, 0, "console:\n{}", on_stream.transcript());
    // And from the namespace to both, while they hold.
    let namespace = lab.namespace.clone().expect("the lab's namespace");
    for guest in ["10.80.0.11", "10.80.0.12"] {
        let output = Command::new("ip")
            .args([
                "netns", "exec", &namespace, "ping", "-c", "2", "-W", "2", guest,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run ping");
        assert!(
            output.status.success(),
            "the namespace cannot reach {guest}: {output:?}"
        );
    }
    assert_eq!(lab.peer_with_mac(on_vhost.mac).kind, PortKind::VhostUser);
    assert_eq!(lab.peer_with_mac(on_stream.mac).kind, PortKind::Stream);
    on_vhost.release();
    on_stream.release();
}

/// A guest's traffic resumes within 5 s after its vhost-user port is killed and started
/// again, without the guest rebooting: QEMU reconnects (`reconnect-ms`) to a port in
/// server mode, or a `--client` port reconnects to a listening QEMU.
fn guest_comes_back_after_the_vhost_user_port_restarts(test: &str, chardev: Chardev) {
    let Some(image) = prerequisites() else {
        return;
    };
    let client = matches!(chardev, Chardev::Listen);
    let mut lab = Lab::new();
    lab.namespace_on_tap(test);
    let socket = lab.path("vm0.sock");
    let start_port = |lab: &mut Lab| lab.vhost_user_port(&["vm0"], client);
    // A client port needs QEMU's socket first; a server port must be there before QEMU.
    if !client {
        start_port(&mut lab);
    }
    let command = format!(
        "{} && echo GUESTNET-PHASE && read line && {}",
        ping(NAMESPACE_ADDRESS),
        reach_within_5s(NAMESPACE_ADDRESS)
    );
    let mut guest = Guest::boot(
        image,
        &vhost_user_netdev(&socket, chardev),
        "52:54:00:00:03:01",
        "10.80.0.13/24",
        &command,
    );
    if client {
        // QEMU creates its socket at start-up, before the guest boots.
        let wait = Instant::now() + PORT_READY;
        while !socket.exists() {
            assert!(Instant::now() < wait, "QEMU did not create {socket:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        start_port(&mut lab);
    }
    let deadline = Instant::now() + GUEST_DONE;
    guest.expect_line("GUESTNET-PHASE", deadline);
    let first_port = lab.newest_port_pid();

    lab.kill_newest_port();
    start_port(&mut lab);
    let new_port = lab.newest_port_pid();
    guest.press_enter();
    let status = guest.exit_status(deadline);
    assert_eq!(
        status,
        0,
        "no traffic within 5 s of the restart; console:\n{}",
        guest.transcript()
    );
    let peer = lab.peer_with_mac(guest.mac);
    assert_ne!(first_port, new_port);
    assert_eq!(
        peer.pid, new_port,
        "the guest's peer is not the new port's: {peer:?}"
    );
    assert!(peer.rx_packets >= 1 && peer.tx_packets >= 1, "{peer:?}");
    guest.release();
}

#[test]
fn guest_comes_back_after_a_server_mode_vhost_user_port_restarts() {
    guest_comes_back_after_the_vhost_user_port_restarts("vhserver", Chardev::Connect);
}

#[test]
fn guest_comes_back_after_a_client_mode_vhost_user_port_restarts() {
    guest_comes_back_after_the_vhost_user_port_restarts("vhclient", Chardev::Listen);
}

/// With `--queues 2` the port offers MQ; a two-CPU guest started with `queues=2,mq=on`
/// negotiates it, gets two queue pairs, and pings through them.
#[test]
fn guest_with_two_queue_pairs_pings_namespace() {
    let Some(image) = prerequisites() else {
        return;
    };
    let mut lab = Lab::new();
    lab.namespace_on_tap("mq");
    let sockets = lab.vhost_user_port_with(&["vm0"], false, &["--queues", "2"]);
    let mut backend = vhost_user_netdev(&sockets[0], Chardev::Connect);
    if let Some(netdev) = backend.last_mut() {
        netdev.push_str(",queues=2");
    }
    backend.extend(["-smp".to_string(), "2".to_string()]);
    let mut guest = Guest::boot_with_device(
        image,
        &backend,
        "virtio-net-pci,netdev=n0,mac=52:54:00:00:04:01,mq=on,vectors=6",
        "10.80.0.14/24",
        &format!(
            "{} && ls /sys/class/net/eth0/queues",
            ping(NAMESPACE_ADDRESS)
        ),
    );
    let status = guest.exit_status(Instant::now() + GUEST_DONE);
    assert_eq!(status, 0, "console:\n{}", guest.transcript());
    assert!(
        guest.transcript().contains("rx-1") && guest.transcript().contains("tx-1"),
        "the guest has one queue pair only:\n{}",
        guest.transcript()
    );
    let statuses = lab.vhost_user_status();
    let features = statuses[0]["acked_features"].as_u64().unwrap_or(0);
    assert_ne!(
        features & guestnet::ports::vhost_user::feature::MQ,
        0,
        "{statuses:?}"
    );
    assert_eq!(statuses[0]["queue_pairs"], 2);
    guest.release();
}

/// Issue 12: a guest on a vhost-user port asks `guestnet dhcp` for its address at boot
/// (busybox udhcpc, sending its host name). It gets one from the range with the server's
/// router and domain, the lease file holds that address for the guest's MAC and name, the
/// guest pings a namespace on a TAP port (a static address outside the range), and the
/// server's DNS answers the guest's own name with the leased address.
#[test]
fn guest_on_vhost_user_port_gets_its_address_by_dhcp() {
    let Some(image) = prerequisites() else {
        return;
    };
    let mut lab = Lab::new();
    lab.namespace_on_tap("dhcp");
    let leases = lab.path("lab.leases");
    let line = lab.start_port(&[
        "dhcp",
        "lab",
        "--subnet",
        "10.80.0.0/24",
        "--range",
        "10.80.0.100-10.80.0.150",
        "--router",
        NAMESPACE_ADDRESS,
        "--domain",
        "lab.internal",
        "--leases",
        path_str(&leases),
    ]);
    // "ready slot N mac MAC address ADDR"
    let server: Ipv4Addr = line
        .split_whitespace()
        .skip_while(|word| *word != "address")
        .nth(1)
        .and_then(|address| address.parse().ok())
        .unwrap_or_else(|| panic!("no server address in {line:?}"));
    let vhost = lab.vhost_user_port(&["vm0"], false);
    let command = format!(
        "ip -4 addr show dev eth0 && {} && nslookup -type=a vm1.lab.internal {server}",
        ping(NAMESPACE_ADDRESS)
    );
    let boot = Boot {
        run: &command,
        address: Some(DHCP),
        hostname: Some("vm1"),
        hold: true,
        ..Boot::default()
    };
    let mut guest = Guest::boot_as(
        image,
        &vhost_user_netdev(&vhost[0], Chardev::Connect),
        "virtio-net-pci,netdev=n0,mac=52:54:00:00:05:01",
        &boot,
    );
    let deadline = Instant::now() + GUEST_DONE;
    let lease = guest.expect_line(LEASE_MARKER, deadline);
    let status = guest.exit_status(deadline);
    assert_eq!(status, 0, "console:\n{}", guest.transcript());

    // "GUESTNET-LEASE 10.80.0.100/24 router 10.80.0.1 dns 10.80.0.254 domain lab.internal"
    let words: Vec<&str> = lease
        .split(LEASE_MARKER)
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let (address, length) = words
        .first()
        .and_then(|cidr| cidr.split_once('/'))
        .unwrap_or_else(|| panic!("no address in {lease:?}"));
    let address: Ipv4Addr = address.parse().expect("the leased address");
    let range = Ipv4Addr::new(10, 80, 0, 100)..=Ipv4Addr::new(10, 80, 0, 150);
    assert!(range.contains(&address), "{address} is outside the range");
    assert_eq!(length, "24", "{lease}");
    let server_text = server.to_string();
    assert_eq!(
        words[1..],
        [
            "router",
            NAMESPACE_ADDRESS,
            "dns",
            &server_text,
            "domain",
            "lab.internal"
        ],
        "{lease}"
    );
    let transcript = guest.transcript();
    assert!(
        transcript.contains(&format!("inet {address}/24")),
        "eth0 does not have {address}:\n{transcript}"
    );
    // busybox nslookup: "Name:\tvm1.lab.internal" then "Address: ADDR".
    let answer = transcript
        .lines()
        .skip_while(|line| !line.contains("vm1.lab.internal") || !line.starts_with("Name:"))
        .nth(1)
        .unwrap_or_default();
    assert_eq!(
        answer.trim(),
        format!("Address: {address}"),
        "the server's DNS did not answer vm1's name:\n{transcript}"
    );

    let table = Leases::load(&leases).expect("read the lease file");
    let record = table
        .get(guest.mac)
        .unwrap_or_else(|| panic!("no lease for {} in {table:?}", guest.mac));
    assert_eq!(record.address, address, "{record:?}");
    assert!(record.bound, "{record:?}");
    assert_eq!(record.host_name.as_deref(), Some("vm1"), "{record:?}");
    assert_eq!(lab.peer_with_mac(guest.mac).kind, PortKind::VhostUser);
    guest.release();
}

/// Issue 13, 802.1Q: a guest on a vhost-user trunk port of VLANs 10 and 20 has eth0.10 and
/// eth0.20 in one IP subnet (10.90.0.1 and .2 of 10.90.0.0/24), a guest on a vhost-user
/// access port of VLAN 10 is 10.90.0.10, and a namespace on a TAP access port of VLAN 20
/// is 10.90.0.20. Through eth0.10 the trunk guest reaches 10.90.0.10 and not 10.90.0.20;
/// through eth0.20 the reverse: a frame crossing between the VLANs would answer a ping that
/// must go unanswered. The access guest reaches the trunk's VLAN-10 address too. A ping
/// through eth0.30, a VLAN the trunk does not carry, is dropped and counted at the trunk's
/// port (`tx_vlan_filtered`); `status` shows each port's VLANs.
#[test]
fn guest_on_trunk_port_reaches_its_vlan_10_peer_and_not_the_vlan_20_one() {
    let Some(image) = prerequisites() else {
        return;
    };
    let mut lab = Lab::new();
    let vlan_20_slot = lab.namespace_on_tap_with("vlan", "10.90.0.20/24", &["--vlan", "20"]);
    let trunk_socket = lab.vhost_user_port_with(&["trunk"], false, &["--trunk", "10,20"]);
    let access_socket = lab.vhost_user_port_with(&["access"], false, &["--vlan", "10"]);
    // Each step that must fail exits with a code of its own, so the marker says which.
    // Busybox ping waits -W seconds (10 by default) for an answer after its last request,
    // whatever -w says: without -W the three that must fail took 32 s instead of 8.
    let trunk_command = [
        "reach -I eth0.10 10.90.0.10 || exit 11",
        "reach -I eth0.20 10.90.0.20 || exit 12",
        "ping -c 2 -w 3 -W 2 -I eth0.10 10.90.0.20 && exit 21",
        "ping -c 2 -w 3 -W 2 -I eth0.20 10.90.0.10 && exit 22",
        "ping -c 1 -w 2 -W 2 -I eth0.30 10.90.3.2 && exit 23",
        "exit 0",
    ]
    .join("; ");
    let trunk_boot = Boot {
        run: &trunk_command,
        vlans: &[
            (10, "10.90.0.1/24"),
            (20, "10.90.0.2/24"),
            (30, "10.90.3.1/24"),
        ],
        hold: true,
        ..Boot::default()
    };
    let mut trunk = Guest::boot_as(
        image,
        &vhost_user_netdev(&trunk_socket[0], Chardev::Connect),
        "virtio-net-pci,netdev=n0,mac=52:54:00:00:06:01",
        &trunk_boot,
    );
    let mut access = Guest::boot(
        image,
        &vhost_user_netdev(&access_socket[0], Chardev::Connect),
        "52:54:00:00:06:10",
        "10.90.0.10/24",
        &ping("10.90.0.1"),
    );
    let deadline = Instant::now() + GUEST_DONE;
    let trunk_status = trunk.exit_status(deadline);
    let access_status = access.exit_status(deadline);
    assert_eq!(
        trunk_status,
        0,
        "1x: a ping within a VLAN failed, 2x: one across VLANs was answered, 23: VLAN 30 \
         got through; console:\n{}",
        trunk.transcript()
    );
    assert_eq!(access_status, 0, "console:\n{}", access.transcript());

    let trunk_peer = lab.peer_with_mac(trunk.mac);
    let access_peer = lab.peer_with_mac(access.mac);
    let vlan_20 = lab.peer_in_slot(vlan_20_slot);
    for (peer, mode, vlans) in [
        (&trunk_peer, "trunk", "10,20"),
        (&access_peer, "access", "10"),
        (&vlan_20, "access", "20"),
    ] {
        assert_eq!(
            (peer.vlan_mode.as_str(), peer.vlans.as_str()),
            (mode, vlans),
            "{peer:?}"
        );
    }
    assert!(
        trunk_peer
            .drops
            .get("tx_vlan_filtered")
            .copied()
            .unwrap_or(0)
            >= 1,
        "VLAN 30's frames were not counted: {trunk_peer:?}"
    );
    // Each side of VLAN 10 got at least three echo requests and three replies.
    for peer in [&trunk_peer, &access_peer] {
        assert!(peer.rx_packets >= 6 && peer.tx_packets >= 6, "{peer:?}");
    }
    trunk.release();
    access.release();
}
