//! `demo`: guestnet at work in one command, for a newcomer (as root).
//!
//! It builds a small lab — a network in a private directory, two network namespaces each
//! on a TAP port served by this very process — then shows real TCP/IP crossing it: ping
//! both ways, a TCP throughput test (iperf3 when installed, else a built-in stream), a
//! short capture, and the status table. Everything it made is removed at the end, also on
//! failure and on Ctrl-C: the `Lab` guard undoes it in `Drop`, and SIGINT/SIGTERM only
//! ring a doorbell that every step watches, so the guard always gets to run.
//!
//! The hidden `__tcp-send` and `__tcp-recv` subcommands are the built-in TCP stream: run
//! inside a namespace with `ip netns exec`, they move a deterministic pseudo-random byte
//! stream and each print its length and CRC-32, so whoever started them can check that
//! what arrived is what was sent. The tests use them too.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::netns::{self, StreamReport, TcpTest, have_iperf3, ip, run_in};

use crate::network::{CreateOptions, Network};
use crate::ports::capture::{Capture, CaptureOptions};
use crate::ports::socket::Doorbell;
use crate::ports::tap::{DeviceMode, TapOptions, TapPort};
use crate::shm::layout::Geometry;
use crate::wire::pcap::{MAX_SNAPLEN, PcapReader};
use crate::wire::{EthernetFrame, ethernet::EtherType};

/// The demo's addresses: a private /24 inside namespaces the demo itself made.
const ADDRESSES: [&str; 2] = ["10.77.0.1", "10.77.0.2"];
/// The interface name in each namespace.
const IFNAME: &str = "gn0";
/// TCP port of the throughput test.
const TCP_PORT: u16 = 5201;
/// Frames the capture keeps.
const CAPTURE_FRAMES: u64 = 8;

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Needs root (network namespaces, TAP devices) and `ip` (iproute2); uses iperf3 when installed.
Everything it creates is removed when it ends, also on Ctrl-C.")]
pub struct DemoArgs {
    /// Seconds of the TCP throughput test.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub seconds: u64,
    /// Use the built-in TCP stream even if iperf3 is installed.
    #[arg(long)]
    pub no_iperf: bool,
}

/// Runs `demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    netns::preflight("guestnet demo")?;
    let stop = Arc::new(Doorbell::new().context("create the stop pipe")?);
    stop.ring_on_signals(&[libc::SIGINT, libc::SIGTERM])
        .context("install signal handlers")?;
    let mut lab = Lab::new(Arc::clone(&stop));
    let result = demo(&mut lab, &args);
    if stop.is_rung() {
        println!("interrupted");
    }
    drop(lab);
    result
}

/// Everything the demo makes, undone in `Drop` in reverse order.
struct Lab {
    stop: Arc<Doorbell>,
    /// Private directory of the network (under /dev/shm).
    dir: Option<PathBuf>,
    network: Option<Network>,
    namespaces: Vec<String>,
    ports: Vec<JoinHandle<()>>,
    capture_stop: Arc<AtomicBool>,
    capture: Option<JoinHandle<anyhow::Result<u64>>>,
}

impl Lab {
    fn new(stop: Arc<Doorbell>) -> Lab {
        Lab {
            stop,
            dir: None,
            network: None,
            namespaces: Vec::new(),
            ports: Vec::new(),
            capture_stop: Arc::new(AtomicBool::new(false)),
            capture: None,
        }
    }

    fn check_interrupted(&self) -> anyhow::Result<()> {
        if self.stop.is_rung() {
            bail!("interrupted");
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        println!("cleaning up");
        self.capture_stop.store(true, Ordering::Relaxed);
        if let Some(capture) = self.capture.take() {
            let _ = capture.join();
        }
        self.stop.ring();
        for port in self.ports.drain(..) {
            let _ = port.join();
        }
        for namespace in self.namespaces.drain(..) {
            if let Err(e) = ip(&["netns", "del", &namespace]) {
                eprintln!("guestnet: warning: cannot remove namespace {namespace}: {e:#}");
            }
        }
        if let (Some(network), Some(dir)) = (self.network.take(), self.dir.as_ref()) {
            let name = network.name().to_string();
            drop(network);
            let _ = Network::destroy(dir, &name, crate::network::DestroyOptions { force: true });
        }
        if let Some(dir) = self.dir.take()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            eprintln!(
                "guestnet: warning: cannot remove {}: {e}",
                dir.to_string_lossy()
            );
        }
    }
}

fn step(number: u32, text: &str) {
    println!("[{number}/9] {text}");
    let _ = std::io::stdout().flush();
}

fn demo(lab: &mut Lab, args: &DemoArgs) -> anyhow::Result<()> {
    let pid = std::process::id();
    let namespaces = [format!("gn-demo-{pid}-a"), format!("gn-demo-{pid}-b")];

    let dir = PathBuf::from(format!("/dev/shm/guestnet-demo-{pid}"));
    step(1, &format!("create network \"demo\" in {}", dir.display()));
    std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
    lab.dir = Some(dir.clone());
    let network = Network::create(
        &dir,
        "demo",
        CreateOptions {
            geometry: Geometry {
                ring_slots: super::bench::TAP_RING_SLOTS,
                ..Geometry::default()
            },
            ..CreateOptions::default()
        },
    )?;

    step(
        2,
        &format!("create namespaces {} and {}", namespaces[0], namespaces[1]),
    );
    for namespace in &namespaces {
        ip(&["netns", "add", namespace])?;
        lab.namespaces.push(namespace.clone());
        ip(&["-n", namespace, "link", "set", "lo", "up"])?;
    }

    step(3, &format!("start a TAP port ({IFNAME}) in each namespace"));
    let mut ports = Vec::with_capacity(namespaces.len());
    for namespace in &namespaces {
        let port = TapPort::open(
            &network,
            &TapOptions {
                ifname: IFNAME.into(),
                netns: Some(namespace.clone()),
                mac: None,
                mode: DeviceMode::Create,
                offload: true,
                policy: Default::default(),
            },
        )
        .with_context(|| format!("TAP {IFNAME} in {namespace}"))?;
        println!(
            "      {namespace}: {IFNAME} is peer {} with MAC {}",
            port.index(),
            port.mac()
        );
        ports.push(port);
    }
    // Served together, as `guestnet tap --ifname … --ifname …` does: frames between the
    // two devices go straight from one to the other.
    lab.ports
        .push(netns::serve_taps(ports, Arc::clone(&lab.stop), "guestnet"));

    step(4, "assign addresses");
    for (namespace, address) in namespaces.iter().zip(ADDRESSES) {
        netns::add_address(namespace, IFNAME, address)?;
        println!("      {namespace}: {address}/24");
    }

    let capture_file = dir.join("demo.pcap");
    step(
        5,
        &format!(
            "start a capture of {CAPTURE_FRAMES} frames into {}",
            capture_file.display()
        ),
    );
    let mut capture = Capture::start(
        &network,
        File::create(&capture_file).context("create the capture file")?,
        CaptureOptions {
            snaplen: MAX_SNAPLEN,
            limit: Some(CAPTURE_FRAMES),
            label: "demo capture".into(),
            vlans: crate::network::VlanMembership::default(),
        },
    )?;
    let capture_stop = Arc::clone(&lab.capture_stop);
    lab.capture = Some(std::thread::spawn(move || {
        capture.run(&capture_stop)?;
        Ok(capture.finish()?.captured)
    }));
    lab.network = Some(network);

    step(6, "ping both ways");
    let mut rtts = Vec::new();
    for (from, to) in [(0, 1), (1, 0)] {
        lab.check_interrupted()?;
        let output = run_in(
            &lab.stop,
            &namespaces[from],
            &["ping", "-c", "3", "-i", "0.2", "-W", "1", ADDRESSES[to]],
            Duration::from_secs(10),
        )
        .with_context(|| format!("ping {} from {}", ADDRESSES[to], namespaces[from]))?;
        let rtt = ping_average_ms(&output);
        match rtt {
            Some(ms) => println!(
                "      {} -> {}: 3/3 replies, average RTT {ms:.3} ms",
                ADDRESSES[from], ADDRESSES[to]
            ),
            None => println!(
                "      {} -> {}: replies received",
                ADDRESSES[from], ADDRESSES[to]
            ),
        }
        rtts.extend(rtt);
    }

    lab.check_interrupted()?;
    let use_iperf = !args.no_iperf && have_iperf3();
    step(
        7,
        &format!(
            "TCP throughput {} -> {} for {} s ({})",
            ADDRESSES[0],
            ADDRESSES[1],
            args.seconds,
            if use_iperf {
                "iperf3"
            } else {
                "built-in stream"
            }
        ),
    );
    let gbits = if use_iperf {
        iperf3(lab, &namespaces, args.seconds)?
    } else {
        builtin_stream(lab, &namespaces, args.seconds)?
    };
    println!("      {gbits:.2} Gbit/s");

    step(8, "what the capture saw");
    lab.capture_stop.store(true, Ordering::Relaxed);
    if let Some(capture) = lab.capture.take() {
        let captured = capture
            .join()
            .map_err(|_| anyhow::anyhow!("the capture thread panicked"))??;
        println!("      {captured} frames captured");
    }
    for line in summarise_capture(&capture_file)? {
        println!("      {line}");
    }

    step(9, "network status");
    if let Some(network) = &lab.network {
        super::admin::print_status(&network.status());
    }
    println!();
    let rtt = if rtts.is_empty() {
        "n/a".to_string()
    } else {
        format!("{:.3} ms", rtts.iter().sum::<f64>() / rtts.len() as f64)
    };
    println!("figures: ping average RTT {rtt}; TCP throughput {gbits:.2} Gbit/s");
    Ok(())
}

fn iperf3(lab: &Lab, namespaces: &[String; 2], seconds: u64) -> anyhow::Result<f64> {
    netns::iperf3(&lab.stop, tcp_test(namespaces, seconds))
}

fn builtin_stream(lab: &Lab, namespaces: &[String; 2], seconds: u64) -> anyhow::Result<f64> {
    let received = netns::builtin_stream(&lab.stop, tcp_test(namespaces, seconds))?;
    println!(
        "      {} MiB arrived intact (crc32 {:08x})",
        received.bytes >> 20,
        received.crc
    );
    Ok(received.gbits())
}

/// The throughput test: from the first namespace to the second.
fn tcp_test(namespaces: &[String; 2], seconds: u64) -> TcpTest<'_> {
    TcpTest {
        client: &namespaces[0],
        server: &namespaces[1],
        address: ADDRESSES[1],
        port: TCP_PORT,
        seconds,
    }
}

/// The average RTT in milliseconds from ping's summary line.
fn ping_average_ms(output: &str) -> Option<f64> {
    // "rtt min/avg/max/mdev = 0.041/0.052/0.067/0.010 ms"
    let line = output.lines().find(|line| line.contains("min/avg/max"))?;
    let values = line.split('=').nth(1)?;
    values.trim().split('/').nth(1)?.parse().ok()
}

/// One line per captured frame: addresses and what it carries.
fn summarise_capture(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut reader = PcapReader::new(BufReader::new(file))?;
    let mut lines = Vec::new();
    while let Some(record) = reader.next_record()? {
        let Ok(frame) = EthernetFrame::new_checked(&record.data[..]) else {
            lines.push(format!(
                "{} bytes (not an Ethernet frame)",
                record.data.len()
            ));
            continue;
        };
        let what = match frame.ethertype() {
            EtherType::Arp => describe_arp(frame.payload()),
            EtherType::Ipv4 => describe_ipv4(frame.payload()),
            EtherType::Ipv6 => "IPv6".to_string(),
            EtherType::Vlan => "VLAN-tagged".to_string(),
            EtherType::Unknown(value) => format!("EtherType {value:#06x}"),
        };
        lines.push(format!(
            "{} -> {}  {:>4} bytes  {what}",
            frame.source(),
            frame.destination(),
            record.orig_len
        ));
    }
    Ok(lines)
}

fn ipv4(bytes: &[u8]) -> Option<std::net::Ipv4Addr> {
    let octets: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    Some(octets.into())
}

fn describe_arp(payload: &[u8]) -> String {
    // Ethernet/IPv4 ARP: operation at 6, sender IP at 14, target IP at 24.
    let operation = payload.get(6..8).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match (
        operation,
        ipv4(payload.get(14..).unwrap_or(&[])),
        ipv4(payload.get(24..).unwrap_or(&[])),
    ) {
        (Some(1), Some(sender), Some(target)) => format!("ARP who has {target}? tell {sender}"),
        (Some(2), Some(sender), Some(_)) => format!("ARP {sender} is here"),
        _ => "ARP".to_string(),
    }
}

fn describe_ipv4(payload: &[u8]) -> String {
    let (Some(source), Some(destination)) = (
        ipv4(payload.get(12..).unwrap_or(&[])),
        ipv4(payload.get(16..).unwrap_or(&[])),
    ) else {
        return "IPv4 (truncated)".to_string();
    };
    let protocol = match payload.get(9) {
        Some(1) => {
            let header = usize::from(payload[0] & 0x0f) * 4;
            match payload.get(header) {
                Some(8) => "ICMP echo request",
                Some(0) => "ICMP echo reply",
                _ => "ICMP",
            }
        }
        Some(6) => "TCP",
        Some(17) => "UDP",
        _ => "IP",
    };
    format!("IPv4 {source} -> {destination} {protocol}")
}

/// Arguments of the hidden `__tcp-recv`.
#[derive(Debug, clap::Args)]
pub struct TcpRecvArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,
}

/// Arguments of the hidden `__tcp-send`.
#[derive(Debug, clap::Args)]
pub struct TcpSendArgs {
    /// Address to connect to.
    #[arg(long)]
    pub connect: SocketAddr,
    /// Bytes to send.
    #[arg(long, conflicts_with = "seconds", required_unless_present = "seconds")]
    pub bytes: Option<u64>,
    /// Send for this many seconds instead.
    #[arg(long)]
    pub seconds: Option<u64>,
}

/// Bytes per write, and per block of the pattern.
const BLOCK: usize = 128 * 1024;

/// Fills `block` with the pattern of block number `index`: xorshift64 seeded by the index,
/// so a lost, repeated or reordered block changes the checksum.
fn fill_block(block: &mut [u8], index: u64) {
    let mut state = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in block.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Runs `__tcp-recv`: accepts one connection, reads it to its end, prints the report.
pub fn tcp_recv(args: TcpRecvArgs) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("listen on {}", args.listen))?;
    println!("listening on {}", args.listen);
    std::io::stdout().flush()?;
    let (mut stream, _) = listener.accept().context("accept a connection")?;
    let start = Instant::now();
    let mut buffer = vec![0u8; BLOCK];
    let mut hasher = crc32fast::Hasher::new();
    let mut bytes = 0u64;
    loop {
        let n = match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read the stream"),
        };
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    let report = StreamReport {
        bytes,
        crc: hasher.finalize(),
        seconds: start.elapsed().as_secs_f64(),
    };
    println!("{}", report.line("received"));
    Ok(())
}

/// Runs `__tcp-send`: connects, sends the pattern, prints the report.
pub fn tcp_send(args: TcpSendArgs) -> anyhow::Result<()> {
    let mut stream =
        TcpStream::connect(args.connect).with_context(|| format!("connect to {}", args.connect))?;
    let start = Instant::now();
    let until = args
        .seconds
        .map(|seconds| start + Duration::from_secs(seconds));
    let limit = args.bytes.unwrap_or(u64::MAX);
    let mut block = vec![0u8; BLOCK];
    let mut hasher = crc32fast::Hasher::new();
    let mut bytes = 0u64;
    let mut index = 0u64;
    while bytes < limit && until.is_none_or(|until| Instant::now() < until) {
        fill_block(&mut block, index);
        index += 1;
        let take = usize::try_from(limit - bytes).unwrap_or(BLOCK).min(BLOCK);
        stream
            .write_all(&block[..take])
            .context("write the stream")?;
        hasher.update(&block[..take]);
        bytes += take as u64;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .context("close the stream")?;
    // Wait for the receiver to close, so the time covers delivery, not only queuing.
    let mut rest = [0u8; 64];
    while matches!(stream.read(&mut rest), Ok(n) if n > 0) {}
    let report = StreamReport {
        bytes,
        crc: hasher.finalize(),
        seconds: start.elapsed().as_secs_f64(),
    };
    println!("{}", report.line("sent"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_differ_so_reordering_changes_the_checksum() {
        let (mut a, mut b) = (vec![0u8; 64], vec![0u8; 64]);
        fill_block(&mut a, 0);
        fill_block(&mut b, 1);
        assert_ne!(a, b);
        assert_ne!(
            crc32fast::hash(&[a.clone(), b.clone()].concat()),
            crc32fast::hash(&[b, a].concat())
        );
    }

    #[test]
    fn ping_summary_gives_the_average() {
        let output = "3 packets transmitted, 3 received\nrtt min/avg/max/mdev = 0.041/0.052/0.067/0.010 ms\n";
        assert_eq!(ping_average_ms(output), Some(0.052));
        assert_eq!(ping_average_ms("100% packet loss"), None);
    }

    #[test]
    fn captured_frames_are_described() {
        let mut arp = vec![0u8; 28];
        arp[6..8].copy_from_slice(&1u16.to_be_bytes());
        arp[14..18].copy_from_slice(&[10, 77, 0, 1]);
        arp[24..28].copy_from_slice(&[10, 77, 0, 2]);
        assert_eq!(describe_arp(&arp), "ARP who has 10.77.0.2? tell 10.77.0.1");
        assert_eq!(describe_arp(&arp[..10]), "ARP");
        let mut ip = vec![0u8; 28];
        ip[0] = 0x45;
        ip[9] = 1;
        ip[12..16].copy_from_slice(&[10, 77, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 77, 0, 2]);
        ip[20] = 8;
        assert_eq!(
            describe_ipv4(&ip),
            "IPv4 10.77.0.1 -> 10.77.0.2 ICMP echo request"
        );
        assert_eq!(describe_ipv4(&ip[..15]), "IPv4 (truncated)");
    }
}
