//! `guestnet bench --vm`: throughput between two QEMU guests through guestnet's vhost-user
//! ports, against two TAP devices on a Linux bridge, measured in the same run.
//!
//! This is the comparison a VM host cares about: the same two guests (the image of
//! `scripts/guest-image`, 256 MiB and one vCPU each, memory shared through a memfd) talk
//!
//! * **guestnet**: through a `guestnet vhost-user` backend (a child process) serving one
//!   socket per guest on a network in a private directory under `/dev/shm`;
//! * **the anchor**: through what QEMU users set up today, `-netdev tap` (`vhost=off`, so
//!   QEMU itself moves the frames, as the vhost-user backend does) on TAP devices enslaved
//!   to a Linux bridge. The bridge and the TAPs live in a namespace of the run's own, so
//!   nothing appears in the host's namespace and deleting the namespace removes them all.
//!
//! In each lab one guest runs `iperf3 -s`; the other runs a TCP test (one stream) and then a
//! UDP test with 64-byte datagrams sent as fast as it can (`-b 0`), whose received packet
//! rate shows the per-packet cost that bulk TCP hides. The guests boot side by side; the
//! client waits for a line on its serial console, which this command types once the server
//! says it listens, so no test starts early and none waits on a timer. Results come back on
//! the client's console (QEMU's stdout): iperf3's `receiver` summary lines, between marker
//! lines the guest prints.
//!
//! The guests, their accelerator and their consoles are [`crate::cli::guest`]'s, as in the
//! QEMU tests. The accelerator is KVM when a guest actually boots under it, and sooner than
//! one booted under TCG beside it (a usable-looking `/dev/kvm` can still hang a guest, or
//! make QEMU abort, as under some nested hypervisors), TCG otherwise; the output says which
//! and why (`GUESTNET_ACCEL=kvm|tcg` skips the probe). Under TCG both figures are dominated
//! by emulating the guests' CPUs, so the ratio says more than the absolute numbers.
//!
//! SIGINT and SIGTERM kill the guests and the backend; the [`BridgeLab`] and [`GuestnetLab`]
//! guards remove the namespace, the network and the directory on every way out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use super::args::BenchArgs;
use super::netns::TAP_RING_SLOTS;
use super::process::{Interrupt, NETWORK, Workspace, machine};
use crate::cli::format::packet_rate;
use crate::cli::guest::{
    Accelerator, Boot, Console, DONE_MARKER, GUEST_MEMORY_MIB, GuestImage, QEMU, Stderr,
    done_status, qemu_command,
};
use crate::cli::netns::{self, ip};
use crate::network::Network;

/// UDP payload bytes per datagram: small, so the packet rate is what is measured.
const UDP_PAYLOAD: u32 = 64;
/// The guests' MACs and addresses: server first, then client.
const MACS: [&str; 2] = ["52:54:00:76:6d:01", "52:54:00:76:6d:02"];
const ADDRESSES: [&str; 2] = ["10.79.0.1", "10.79.0.2"];
/// How long two guests may take to boot side by side and start: a TCG boot alone takes a
/// few seconds; this leaves room for a loaded 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Beyond the tests' own length, how long the client may take to report.
const REPORT_MARGIN: Duration = Duration::from_secs(60);
/// How long the backend may take to say it listens, or to exit after SIGTERM.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Markers the guests print on their consoles.
const CLIENT_WAITING: &str = "GUESTNET-BENCH-WAIT";
const TCP_BEGINS: &str = "GUESTNET-BENCH-TCP";
const UDP_BEGINS: &str = "GUESTNET-BENCH-UDP";
const SERVER_LISTENING: &str = "Server listening";

/// The whole result, as `--json` prints it.
#[derive(Debug, Serialize)]
struct VmResult {
    mode: &'static str,
    /// Seconds of each iperf3 test.
    seconds: u64,
    /// "kvm" or "tcg".
    accelerator: &'static str,
    /// Why that accelerator.
    accelerator_reason: String,
    guest_memory_mib: u32,
    /// UDP payload bytes per datagram.
    udp_payload: u32,
    /// Slots of each peer's ring in guestnet's network.
    ring_slots: u32,
    machine: String,
    guestnet: Measured,
    bridge: Measured,
    /// guestnet ÷ bridge TCP throughput.
    tcp_ratio: f64,
    /// guestnet ÷ bridge received UDP packet rate.
    udp_ratio: f64,
    /// guestnet's drop counters over the run, summed over the two guests' peers.
    guestnet_drops: BTreeMap<String, u64>,
}

/// One lab's figures.
#[derive(Debug, Clone, Copy, Serialize)]
struct Measured {
    /// TCP throughput the receiver saw, in Gbit/s.
    tcp_gbps: f64,
    /// UDP datagrams received per second.
    udp_pps: f64,
    /// UDP datagrams the receiver expected (the highest sequence number it saw).
    udp_datagrams: u64,
    /// Of those, how many never arrived.
    udp_lost: u64,
}

/// Runs `bench --vm`.
pub(super) fn run(args: &BenchArgs) -> anyhow::Result<()> {
    preflight()?;
    // iperf3 counts whole seconds.
    let seconds = args.seconds.ceil().max(1.0) as u64;
    let ring_slots = args.ring_slots.unwrap_or(TAP_RING_SLOTS);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let interrupt = Interrupt::install()?;
    let image = guest_image(&args.image_dir)?;
    interrupt.check()?;
    let (accelerator, accelerator_reason) = match Accelerator::without_probe() {
        Some(choice) => choice,
        None => {
            progress("trying KVM: booting a guest under it and one under TCG");
            Accelerator::probe(&image, &interrupt.children)?
        }
    };
    progress(&format!(
        "accelerator {}: {accelerator_reason}",
        accelerator.name().to_uppercase()
    ));
    let bench = Bench {
        image: &image,
        accelerator,
        seconds,
        interrupt: &interrupt,
    };

    progress(&format!(
        "guestnet: two guests on vhost-user ports, {seconds} s per test"
    ));
    let guestnet_lab = GuestnetLab::build(ring_slots, &interrupt)?;
    let guestnet = bench.measure(|i| guestnet_lab.netdev(i), None)?;
    let guestnet_drops = guestnet_lab.drops();
    drop(guestnet_lab);

    progress(&format!(
        "Linux bridge: two guests on TAP devices, {seconds} s per test"
    ));
    let bridge_lab = BridgeLab::build(&interrupt)?;
    let bridge = bench.measure(|i| bridge_lab.netdev(i), Some(&bridge_lab.namespace))?;
    drop(bridge_lab);

    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let result = VmResult {
        mode: "vm",
        seconds,
        accelerator: accelerator.name(),
        accelerator_reason,
        guest_memory_mib: GUEST_MEMORY_MIB,
        udp_payload: UDP_PAYLOAD,
        ring_slots,
        machine: machine(),
        guestnet,
        bridge,
        tcp_ratio: ratio(guestnet.tcp_gbps, bridge.tcp_gbps),
        udp_ratio: ratio(guestnet.udp_pps, bridge.udp_pps),
        guestnet_drops,
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

/// Says exactly what is missing before anything is made.
fn preflight() -> anyhow::Result<()> {
    netns::preflight("guestnet bench --vm")?;
    if !netns::have(QEMU, "--version") {
        bail!(
            "guestnet bench --vm needs {QEMU} (package qemu-system-x86) to run the guests; \
             install it and try again"
        );
    }
    if !netns::have_iperf3() {
        bail!(
            "guestnet bench --vm needs iperf3 on the host (package iperf3): the guest image \
             takes its iperf3 from there; install it and try again"
        );
    }
    Ok(())
}

/// The image in `dir`, built there by `scripts/guest-image` when it is missing.
fn guest_image(dir: &Path) -> anyhow::Result<GuestImage> {
    let image = GuestImage::in_dir(dir);
    if image.is_present() {
        return Ok(image);
    }
    let Some(script) = GuestImage::script() else {
        bail!(
            "no guest image in {} (vmlinuz and initramfs.cpio.gz): build it with \
             `scripts/guest-image {}` in guestnet's source tree, or name another with --image-dir",
            dir.display(),
            dir.display()
        );
    };
    progress(&format!(
        "no guest image in {}: building it with {}",
        dir.display(),
        script.display()
    ));
    GuestImage::build(&script, dir)
}

/// What one measurement needs.
struct Bench<'a> {
    image: &'a GuestImage,
    accelerator: Accelerator,
    seconds: u64,
    interrupt: &'a Interrupt,
}

impl Bench<'_> {
    /// Boots the server and the client guest, each on the network device `netdev(i)`
    /// gives (QEMU arguments defining netdev `n0`), QEMU in `namespace` if given, and runs
    /// the TCP and the UDP test.
    fn measure(
        &self,
        netdev: impl Fn(usize) -> Vec<String>,
        namespace: Option<&str>,
    ) -> anyhow::Result<Measured> {
        let server_address = ADDRESSES[0];
        let seconds = self.seconds;
        let client_run = [
            format!("echo {CLIENT_WAITING}"),
            "read line".to_string(),
            format!("reach {server_address}"),
            format!("echo {TCP_BEGINS}"),
            format!("iperf3 -c {server_address} -t {seconds} -i 0"),
            format!("echo {UDP_BEGINS}"),
            format!("iperf3 -c {server_address} -u -l {UDP_PAYLOAD} -b 0 -t {seconds} -i 0"),
        ]
        .join(" && ");
        let runs = ["iperf3 -s".to_string(), client_run];
        let names = ["server guest", "client guest"];
        let mut guests = Vec::new();
        for i in 0..2 {
            let address = format!("{}/24", ADDRESSES[i]);
            let boot = Boot {
                run: &runs[i],
                address: Some(&address),
                ..Boot::default()
            };
            let mut command = qemu_command(self.image, self.accelerator, &boot);
            command.args(netdev(i)).args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={}", MACS[i]),
            ]);
            if let Some(namespace) = namespace {
                command = in_namespace(namespace, command);
            }
            guests.push(Console::spawn(
                command,
                names[i],
                Stderr::Capture,
                &self.interrupt.children,
            )?);
            self.interrupt.check()?;
        }
        let [server, client] = guests.as_mut_slice() else {
            bail!("two guests were started");
        };
        let booted_by = Instant::now() + BOOT_TIMEOUT;
        server.expect(SERVER_LISTENING, booted_by)?;
        client.expect(CLIENT_WAITING, booted_by)?;
        client.press_enter()?;
        let tests = Duration::from_secs(2 * seconds);
        let done = client.expect(DONE_MARKER, Instant::now() + tests + REPORT_MARGIN)?;
        match done_status(&done) {
            Some(0) => {}
            Some(127) => bail!(
                "the guest has no iperf3: rebuild the image with scripts/guest-image (it \
                 copies the host's iperf3 in); the client guest's console:\n{}",
                client.tail()
            ),
            _ => bail!(
                "the client guest's tests failed; its console:\n{}",
                client.tail()
            ),
        }
        let report = parse_report(client.transcript()).with_context(|| {
            format!(
                "the client guest's console has no iperf3 results:\n{}",
                client.tail()
            )
        })?;
        Ok(report)
    }
}

/// `command` run by `ip netns exec NAMESPACE`, which execs it: the pid stays QEMU's.
fn in_namespace(namespace: &str, command: Command) -> Command {
    let mut wrapped = Command::new("ip");
    wrapped
        .args(["netns", "exec", namespace])
        .arg(command.get_program())
        .args(command.get_args());
    wrapped
}

/// The figures from the client's console: the `receiver` line after each marker.
fn parse_report(console: &[String]) -> anyhow::Result<Measured> {
    let receiver_after = |marker: &str| {
        console
            .iter()
            .skip_while(|line| !line.contains(marker))
            .find(|line| line.split_whitespace().last() == Some("receiver"))
            .with_context(|| format!("no iperf3 receiver line after {marker}"))
    };
    let tcp = parse_receiver_line(receiver_after(TCP_BEGINS)?)?;
    let udp = parse_receiver_line(receiver_after(UDP_BEGINS)?)?;
    let (lost, datagrams) = udp
        .datagrams
        .context("the UDP test has no datagram count")?;
    let received = datagrams.saturating_sub(lost);
    Ok(Measured {
        tcp_gbps: tcp.bits_per_second / 1e9,
        udp_pps: if udp.interval > 0.0 {
            received as f64 / udp.interval
        } else {
            0.0
        },
        udp_datagrams: datagrams,
        udp_lost: lost,
    })
}

/// One iperf3 summary line.
#[derive(Debug, PartialEq)]
struct Summary {
    /// Length of the interval, in seconds.
    interval: f64,
    bits_per_second: f64,
    /// UDP's lost/total datagrams.
    datagrams: Option<(u64, u64)>,
}

/// Reads an iperf3 summary line:
/// `[  5]   0.00-2.01   sec   275 MBytes  1.15 Gbits/sec                  receiver`, or with
/// UDP `… 5.93 Mbits/sec  0.131 ms  5639/28860 (20%)  receiver`.
fn parse_receiver_line(line: &str) -> anyhow::Result<Summary> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let bad = || format!("unexpected iperf3 line {line:?}");
    let sec = words.iter().position(|w| *w == "sec").with_context(bad)?;
    let (start, end) = sec
        .checked_sub(1)
        .and_then(|i| words[i].split_once('-'))
        .and_then(|(start, end)| Some((start.parse::<f64>().ok()?, end.parse::<f64>().ok()?)))
        .with_context(bad)?;
    let rate = words
        .iter()
        .position(|w| w.ends_with("bits/sec"))
        .with_context(bad)?;
    let scale = match words[rate].trim_end_matches("bits/sec") {
        "" => 1.0,
        "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        _ => bail!(bad()),
    };
    let value = rate
        .checked_sub(1)
        .and_then(|i| words[i].parse::<f64>().ok())
        .with_context(bad)?;
    let datagrams = words[rate + 1..].iter().find_map(|w| {
        let (lost, total) = w.split_once('/')?;
        Some((lost.parse().ok()?, total.parse().ok()?))
    });
    Ok(Summary {
        interval: end - start,
        bits_per_second: value * scale,
        datagrams,
    })
}

/// guestnet's side: a network in a private directory and a `guestnet vhost-user` backend
/// serving one socket per guest; undone when dropped.
struct GuestnetLab {
    backend: Option<Console>,
    network: Option<Network>,
    sockets: [PathBuf; 2],
    workspace: Workspace,
}

impl GuestnetLab {
    fn build(ring_slots: u32, interrupt: &Interrupt) -> anyhow::Result<GuestnetLab> {
        let workspace = Workspace::create()?;
        let network = workspace.create_network(ring_slots)?;
        let sockets = [0, 1].map(|i| workspace.path().join(format!("vm{i}.sock")));
        let mut lab = GuestnetLab {
            backend: None,
            network: Some(network),
            sockets,
            workspace,
        };
        let mut command = Command::new(std::env::current_exe().context("find own executable")?);
        command
            .arg("--dir")
            .arg(lab.workspace.path())
            .args(["vhost-user", NETWORK]);
        for socket in &lab.sockets {
            command.arg("--socket").arg(socket);
        }
        let backend = lab.backend.insert(Console::spawn(
            command,
            "vhost-user backend",
            Stderr::Inherit,
            &interrupt.children,
        )?);
        interrupt.check()?;
        // "listening on PATH", one line per socket, in order.
        for socket in &lab.sockets {
            let line = backend.expect("listening", Instant::now() + BACKEND_TIMEOUT)?;
            if !line.ends_with(&socket.display().to_string()) {
                bail!(
                    "the vhost-user backend said {line:?}, not that it listens on {}",
                    socket.display()
                );
            }
        }
        Ok(lab)
    }

    /// QEMU's arguments for guest `i`'s netdev `n0`.
    fn netdev(&self, i: usize) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!("socket,id=c0,path={}", self.sockets[i].display()),
            "-netdev".into(),
            "vhost-user,id=n0,chardev=c0".into(),
        ]
    }

    /// The drop counters of the network's peers, summed by reason.
    fn drops(&self) -> BTreeMap<String, u64> {
        super::netns::drops_by_reason(self.network.as_ref())
    }
}

impl Drop for GuestnetLab {
    fn drop(&mut self) {
        if let Some(backend) = self.backend.take()
            && let Err(e) = backend.terminate(BACKEND_TIMEOUT)
        {
            eprintln!("guestnet bench: warning: {e:#}");
        }
        if let Some(network) = self.network.take() {
            let name = network.name().to_string();
            drop(network);
            let _ = Network::destroy(
                self.workspace.path(),
                &name,
                crate::network::DestroyOptions { force: true },
            );
        }
        // The workspace's own guard removes the directory.
    }
}

/// The anchor's side: a namespace of the run's own holding a bridge and one TAP device per
/// guest; deleting the namespace removes them all.
struct BridgeLab {
    namespace: String,
}

/// The bridge and the TAP devices, inside the lab's namespace.
const BRIDGE: &str = "br0";
const TAPS: [&str; 2] = ["tap0", "tap1"];

impl BridgeLab {
    fn build(interrupt: &Interrupt) -> anyhow::Result<BridgeLab> {
        let namespace = format!("gn-bench-{}-vm", std::process::id());
        ip(&["netns", "add", &namespace])?;
        let lab = BridgeLab { namespace };
        let namespace = lab.namespace.as_str();
        ip(&["-n", namespace, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", namespace, "link", "set", BRIDGE, "up"])?;
        for tap in TAPS {
            interrupt.check()?;
            ip(&["-n", namespace, "tuntap", "add", "dev", tap, "mode", "tap"])?;
            ip(&["-n", namespace, "link", "set", tap, "master", BRIDGE, "up"])?;
        }
        Ok(lab)
    }

    /// QEMU's arguments for guest `i`'s netdev `n0`.
    fn netdev(&self, i: usize) -> Vec<String> {
        vec![
            "-netdev".into(),
            format!(
                "tap,id=n0,ifname={},script=no,downscript=no,vhost=off",
                TAPS[i]
            ),
        ]
    }
}

impl Drop for BridgeLab {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.namespace]) {
            eprintln!(
                "guestnet bench: warning: cannot remove namespace {}: {e:#}",
                self.namespace
            );
        }
    }
}

fn print_table(result: &VmResult, command: &str) {
    println!(
        "guestnet bench --vm: QEMU guest → guest, {} MiB and 1 vCPU each, iperf3 {} s per test",
        result.guest_memory_mib, result.seconds
    );
    println!(
        "accelerator: {} ({})",
        result.accelerator.to_uppercase(),
        result.accelerator_reason
    );
    println!("machine:  {}", result.machine);
    println!("command:  {command}");
    println!(
        "guestnet: vhost-user ports of one network ({} ring slots per peer)",
        result.ring_slots
    );
    println!("anchor:   TAP devices (vhost=off) on a Linux bridge");
    println!();
    println!(
        "{:<9} {:>13} {:>26}",
        "",
        "TCP, 1 stream",
        format!("UDP {}-byte, received", result.udp_payload)
    );
    for (name, m) in [("guestnet", &result.guestnet), ("bridge", &result.bridge)] {
        let loss = if m.udp_datagrams > 0 {
            100.0 * m.udp_lost as f64 / m.udp_datagrams as f64
        } else {
            0.0
        };
        println!(
            "{name:<9} {:>8.2} Gb/s {:>15} ({loss:.1}% lost)",
            m.tcp_gbps,
            packet_rate(m.udp_pps)
        );
    }
    println!(
        "{:<9} {:>11.2}×  {:>14.2}×",
        "ratio", result.tcp_ratio, result.udp_ratio
    );
    if !result.guestnet_drops.is_empty() {
        let drops: Vec<String> = result
            .guestnet_drops
            .iter()
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        println!("guestnet drops: {}", drops.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_receiver_line_gives_interval_and_rate() {
        let line = "[  5]   0.00-2.01   sec   275 MBytes  1.15 Gbits/sec                  receiver";
        let summary = parse_receiver_line(line).expect("parses");
        assert!((summary.interval - 2.01).abs() < 1e-9, "{summary:?}");
        assert!(
            (summary.bits_per_second - 1.15e9).abs() < 1.0,
            "{summary:?}"
        );
        assert_eq!(summary.datagrams, None);
    }

    #[test]
    fn udp_receiver_line_gives_lost_and_total_datagrams() {
        let line = "[  5]   0.00-2.01   sec  1.42 MBytes  5.93 Mbits/sec  0.131 ms  5639/28860 (20%)  receiver";
        let summary = parse_receiver_line(line).expect("parses");
        assert!(
            (summary.bits_per_second - 5.93e6).abs() < 1.0,
            "{summary:?}"
        );
        assert_eq!(summary.datagrams, Some((5639, 28860)));
        assert!(parse_receiver_line("[  5] garbage receiver").is_err());
        assert!(parse_receiver_line("[  5] 0.00-1.00 sec 1 MBytes 5 Xbits/sec receiver").is_err());
    }

    #[test]
    fn report_takes_the_receiver_line_after_each_marker() {
        let console: Vec<String> = [
            "GUESTNET-READY 52:54:00:76:6d:02 10.79.0.2/24",
            TCP_BEGINS,
            "[ ID] Interval           Transfer     Bitrate         Retr",
            "[  5]   0.00-2.00   sec   277 MBytes  1.16 Gbits/sec    0             sender",
            "[  5]   0.00-2.00   sec   275 MBytes  1.10 Gbits/sec                  receiver",
            UDP_BEGINS,
            "[  5]   0.00-2.00   sec  1.77 MBytes  7.41 Mbits/sec  0.000 ms  0/28960 (0%)  sender",
            "[  5]   0.00-2.00   sec  1.42 MBytes  5.93 Mbits/sec  0.131 ms  8000/28000 (28%)  receiver",
            "GUESTNET-DONE rc=0",
        ]
        .map(String::from)
        .to_vec();
        let m = parse_report(&console).expect("parses");
        assert!((m.tcp_gbps - 1.10).abs() < 1e-9, "{m:?}");
        // 20000 of 28000 arrived in 2 s.
        assert!((m.udp_pps - 10_000.0).abs() < 1e-9, "{m:?}");
        assert_eq!((m.udp_lost, m.udp_datagrams), (8000, 28000));
        assert!(parse_report(&console[..5]).is_err(), "no UDP result");
    }
}
