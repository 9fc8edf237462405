//! `guestnet bench --netns`: TCP throughput and ping latency between two network
//! namespaces through guestnet, against a Linux bridge measured in the same run.
//!
//! Two labs are built side by side, each with two namespaces of its own:
//!
//! * **guestnet**: a network in a private directory under `/dev/shm` and a TAP port
//!   (`gn0`, 10.78.1.x) in each namespace, served by this process as the demo does;
//! * **the anchor**: what people use today, a veth pair from each namespace (`eth0`,
//!   10.78.2.x) into a Linux bridge. The bridge and the veths' other ends live in a fifth
//!   namespace, so nothing of the run ever appears in the host's own namespace, and
//!   deleting the namespaces removes every device.
//!
//! Each lab is measured twice: with offloads (guestnet's TAPs speak the virtio-net header
//! and take TSO and partial checksums; the veths keep the kernel's defaults) and without
//! them (TAPs opened plainly; on both labs' interfaces `ethtool -K … tso off gso off gro
//! off tx off rx off`, so both kernels build, checksum and hand over every 1500-byte frame
//! one by one). A measurement is a warm-up ping (which also resolves ARP), 20 pings
//! 50 ms apart, then a TCP test: iperf3 when it is installed, otherwise the built-in
//! checksummed stream. The project's targets (the README's Performance section) are printed beside the
//! ratios: at least 0.5 × the bridge without offloads and 0.8 × with them.
//!
//! guestnet's drop counters over each measurement are printed with the figures: a TCP
//! sender outrunning the receiving TAP's writer fills the receiver's ring, and every
//! frame lost there costs a retransmission (`--ring-slots` sets the rings' size).
//!
//! With `--rate RATE` the run also measures a rate limit, between the offloads-on and
//! the offloads-off comparisons (so both labs still have the kernel's default offloads):
//! iperf3 TCP for `--seconds` from the first namespace, whose TAP port is opened with the
//! rate as `guestnet tap --rate` would, and from the first anchor namespace, whose veth
//! gets `tc qdisc add dev eth0 root tbf rate RATE burst BURST latency 50ms`. A tbf on the
//! sender's own interface is the comparable anchor: like the TAP port, which stops reading
//! the device while the bucket is empty, it holds the sender's frames back in its kernel
//! (TCP sees a queue, not loss), and it limits what the sender puts on the wire into the
//! bridge. (An ingress policer on the bridge port would drop instead, which is what
//! guestnet does only for ports that cannot wait.) Both use the same burst. One difference
//! remains: tbf counts every segment's headers of a TSO super-frame, guestnet's bucket the
//! super-frame as it arrives (one set of headers), so at the same limit guestnet's TCP
//! goodput may come out a few percent higher. Then the same with UDP offered at twice the
//! limit in 1400-byte datagrams, which shows the limit holding against a sender that does
//! not slow down: what neither limiter passes is lost in the sender's kernel (TAP) or
//! dropped by the limiter (tbf). Reported per side: the received Mbit/s, its ratio to the
//! limit (the project's target: within 15 %), iperf3's retransmissions (TCP) or lost
//! datagrams (UDP), and what the limiter dropped (guestnet's `rate_limited` counter;
//! tbf's `drops`).
//!
//! Everything the run made — TAP ports, namespaces (and with them the bridge and veths),
//! the network and its directory — is undone by the [`Lab`] guard on every way out; SIGINT
//! and SIGTERM ring a doorbell that every wait watches, so Ctrl-C ends the run promptly
//! and the guard still runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;

use super::args::BenchArgs;
use super::process::{Workspace, machine};

mod rate;

use crate::cli::netns::{self, TcpTest, ip, run_in};
use crate::network::Network;
use crate::network::rate::default_burst;
use crate::ports::policy::PortPolicy;
use crate::ports::socket::Doorbell;
use crate::ports::tap::{DeviceMode, TapOptions, TapPort};
use rate::{RateComparison, print_rate_limit};

/// guestnet's interface in each of its namespaces.
const TAP_IFNAME: &str = "gn0";
/// Ring slots of the benchmark's network: a TAP's writer hands each frame to the kernel's
/// whole receive path in one `write`, so bursts need more room than between processes.
pub const TAP_RING_SLOTS: u32 = 1024;
/// The veth end in each of the anchor's namespaces.
const VETH_IFNAME: &str = "eth0";
/// The bridge, in the anchor's switch namespace.
const BRIDGE: &str = "br0";
/// guestnet's subnet (a private /24 inside namespaces the run made).
const GUESTNET_ADDRESSES: [&str; 2] = ["10.78.1.1", "10.78.1.2"];
/// The anchor's subnet.
const BRIDGE_ADDRESSES: [&str; 2] = ["10.78.2.1", "10.78.2.2"];
/// TCP port of the throughput test.
const TCP_PORT: u16 = 5201;
/// Pings per latency measurement, and their spacing (ping's `-i`, in seconds).
const PINGS: u32 = 20;
const PING_INTERVAL: &str = "0.05";
/// What `ethtool -K` turns off for the "offloads off" measurement.
const OFFLOADS_OFF: [&str; 10] = [
    "tso", "off", "gso", "off", "gro", "off", "tx", "off", "rx", "off",
];
/// The design's targets: guestnet's throughput as a share of the bridge's.
const TARGET_WITH_OFFLOADS: f64 = 0.8;
const TARGET_WITHOUT_OFFLOADS: f64 = 0.5;
/// The whole result, as `--json` prints it.
#[derive(Debug, Serialize)]
struct NetnsResult {
    mode: &'static str,
    /// Seconds of each TCP test.
    seconds: u64,
    /// What measured throughput: "iperf3" or "built-in stream".
    tool: &'static str,
    /// Slots of each peer's ring in guestnet's network.
    ring_slots: u32,
    machine: String,
    /// Offloads on, then off.
    results: Vec<Comparison>,
    /// With `--rate`: the rate limit measured on both labs.
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateComparison>,
}

/// guestnet and the bridge with one offload setting.
#[derive(Debug, Serialize)]
struct Comparison {
    offload: bool,
    guestnet_gbps: f64,
    bridge_gbps: f64,
    /// guestnet ÷ bridge throughput.
    ratio: f64,
    /// The design's least acceptable ratio.
    target: f64,
    guestnet_rtt_us: Rtt,
    bridge_rtt_us: Rtt,
    /// guestnet's drop counters over the measurement, summed over its two TAP peers
    /// (`tx_…` as the senders counted them, `rx_…` as the receivers did).
    guestnet_drops: BTreeMap<String, u64>,
}

/// Round-trip times of the pings, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct Rtt {
    avg: f64,
    p50: f64,
}

/// One path's figures.
struct Measured {
    gbps: f64,
    rtt: Rtt,
}

/// Runs `bench --netns`.
pub(super) fn run(args: &BenchArgs) -> anyhow::Result<()> {
    netns::preflight("guestnet bench --netns")?;
    if !netns::have("ethtool", "--version") {
        bail!(
            "guestnet bench --netns needs `ethtool` (package ethtool) to turn the Linux \
             bridge's offloads off for the anchor; install it and try again"
        );
    }
    // iperf3 and the built-in stream count whole seconds.
    let seconds = args.seconds.ceil().max(1.0) as u64;
    let rate = args
        .rate
        .map(|rate| (rate, args.burst.unwrap_or_else(|| default_burst(rate))));
    if rate.is_some() {
        if !netns::have_iperf3() {
            bail!(
                "guestnet bench --netns --rate needs iperf3 (package iperf3): its report \
                 counts the retransmissions; install it and try again"
            );
        }
        if !netns::have("tc", "-V") {
            bail!(
                "guestnet bench --netns --rate needs `tc` (package iproute2, which also has \
                 `ip`) to limit the Linux bridge's sender for the anchor; install it and \
                 try again"
            );
        }
    }
    let use_iperf = !args.no_iperf && netns::have_iperf3();
    let tool = if use_iperf {
        "iperf3"
    } else {
        "built-in stream"
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let stop = Arc::new(Doorbell::new().context("create the stop pipe")?);
    stop.ring_on_signals(&[libc::SIGINT, libc::SIGTERM])
        .context("install signal handlers")?;
    let mut lab = Lab::new(Arc::clone(&stop), args.ring_slots.unwrap_or(TAP_RING_SLOTS));
    let result = lab.build().and_then(|()| {
        let mut results = Vec::new();
        let mut rate_limit = None;
        for offload in [true, false] {
            results.push(lab.compare(offload, seconds, use_iperf)?);
            // While both labs still have the kernel's default offloads.
            if let (true, Some((rate, burst))) = (offload, rate) {
                rate_limit = Some(lab.limit_rate(rate, burst, seconds)?);
            }
        }
        Ok(NetnsResult {
            mode: "netns",
            seconds,
            tool,
            ring_slots: args.ring_slots.unwrap_or(TAP_RING_SLOTS),
            machine: machine(),
            results,
            rate_limit,
        })
    });
    if stop.is_rung() {
        eprintln!("guestnet bench: interrupted; cleaning up");
    }
    drop(lab);
    let result = result?;
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

/// guestnet's TAP ports of one measurement, served by threads of this process.
struct Ports {
    stop: Arc<Doorbell>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Ports {
    /// Stops the ports and waits for them: their devices (and addresses) are gone after.
    fn drop(&mut self) {
        self.stop.ring();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Everything the run makes, undone in `Drop` in reverse order.
struct Lab {
    /// Rung on SIGINT or SIGTERM.
    stop: Arc<Doorbell>,
    workspace: Option<Workspace>,
    network: Option<Network>,
    /// Every namespace made, to delete; the bridge and the veths go with them.
    namespaces: Vec<String>,
    /// guestnet's two namespaces.
    guestnet: [String; 2],
    /// The anchor's two end namespaces and its switch namespace.
    bridge: [String; 2],
    switch: String,
    ports: Option<Ports>,
    /// Slots of each peer's ring in the network (`--ring-slots`).
    ring_slots: u32,
}

impl Lab {
    fn new(stop: Arc<Doorbell>, ring_slots: u32) -> Lab {
        let pid = std::process::id();
        let name = |what: &str| format!("gn-bench-{pid}-{what}");
        Lab {
            stop,
            workspace: None,
            network: None,
            namespaces: Vec::new(),
            guestnet: [name("g0"), name("g1")],
            bridge: [name("b0"), name("b1")],
            switch: name("sw"),
            ports: None,
            ring_slots,
        }
    }

    fn check_interrupted(&self) -> anyhow::Result<()> {
        if self.stop.is_rung() {
            bail!("interrupted");
        }
        Ok(())
    }

    /// Makes the network, the namespaces and the bridge.
    fn build(&mut self) -> anyhow::Result<()> {
        let workspace = Workspace::create()?;
        progress(&format!(
            "network in {}, namespaces {}, {}, {}, {}, {}",
            workspace.path().display(),
            self.guestnet[0],
            self.guestnet[1],
            self.bridge[0],
            self.bridge[1],
            self.switch
        ));
        let network = workspace.create_network(self.ring_slots)?;
        self.workspace = Some(workspace);
        self.network = Some(network);
        let all: Vec<String> = self
            .guestnet
            .iter()
            .chain(&self.bridge)
            .chain([&self.switch])
            .cloned()
            .collect();
        for namespace in all {
            self.check_interrupted()?;
            ip(&["netns", "add", &namespace])?;
            self.namespaces.push(namespace.clone());
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        }
        let switch = self.switch.as_str();
        ip(&["-n", switch, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", switch, "link", "set", BRIDGE, "up"])?;
        for (i, (namespace, address)) in self.bridge.iter().zip(BRIDGE_ADDRESSES).enumerate() {
            let port = format!("p{i}");
            ip(&[
                "-n",
                switch,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                VETH_IFNAME,
                "netns",
                namespace,
            ])?;
            ip(&["-n", switch, "link", "set", &port, "master", BRIDGE])?;
            ip(&["-n", switch, "link", "set", &port, "up"])?;
            netns::add_address(namespace, VETH_IFNAME, address)?;
            ip(&["-n", namespace, "link", "set", VETH_IFNAME, "up"])?;
        }
        Ok(())
    }

    /// Measures guestnet, then the bridge, with offloads on or off.
    fn compare(&mut self, offload: bool, seconds: u64, iperf: bool) -> anyhow::Result<Comparison> {
        let setting = if offload { "on" } else { "off" };
        progress(&format!("offloads {setting}: guestnet for {seconds} s"));
        self.start_ports(offload, None)?;
        if !offload {
            for namespace in &self.guestnet {
                self.ethtool_off(namespace, TAP_IFNAME)?;
            }
        }
        let guestnet = self.measure(&self.guestnet, GUESTNET_ADDRESSES, seconds, iperf)?;
        let guestnet_drops = self.drops();
        // Stopping the ports removes their devices; the next measurement makes new ones.
        self.ports = None;

        progress(&format!("offloads {setting}: Linux bridge for {seconds} s"));
        if !offload {
            for (i, namespace) in self.bridge.iter().enumerate() {
                self.ethtool_off(namespace, VETH_IFNAME)?;
                self.ethtool_off(&self.switch, &format!("p{i}"))?;
            }
        }
        let bridge = self.measure(&self.bridge, BRIDGE_ADDRESSES, seconds, iperf)?;
        Ok(Comparison {
            offload,
            guestnet_gbps: guestnet.gbps,
            bridge_gbps: bridge.gbps,
            ratio: if bridge.gbps > 0.0 {
                guestnet.gbps / bridge.gbps
            } else {
                0.0
            },
            target: if offload {
                TARGET_WITH_OFFLOADS
            } else {
                TARGET_WITHOUT_OFFLOADS
            },
            guestnet_rtt_us: guestnet.rtt,
            bridge_rtt_us: bridge.rtt,
            guestnet_drops,
        })
    }

    /// Opens a TAP port in each of guestnet's namespaces and gives it its address; the
    /// first one (the sender's) limited to `rate` (bits per second, burst bytes) if given.
    fn start_ports(&mut self, offload: bool, rate: Option<(u64, u64)>) -> anyhow::Result<()> {
        let network = self.network.as_ref().context("the network exists")?;
        // Both devices first: if the second cannot be made, the first closes unserved.
        let mut opened = Vec::new();
        for (i, namespace) in self.guestnet.iter().enumerate() {
            let policy = PortPolicy {
                rate: rate.filter(|_| i == 0),
                ..Default::default()
            };
            let port = TapPort::open(
                network,
                &TapOptions {
                    ifname: TAP_IFNAME.into(),
                    netns: Some(namespace.clone()),
                    mac: None,
                    mode: DeviceMode::Create,
                    offload,
                    policy,
                },
            )
            .with_context(|| format!("TAP {TAP_IFNAME} in {namespace}"))?;
            opened.push(port);
        }
        let mut ports = Ports {
            stop: Arc::new(Doorbell::new().context("create the ports' stop pipe")?),
            threads: Vec::new(),
        };
        // Served together, as `guestnet tap --ifname … --ifname …` and the demo do.
        ports.threads.push(netns::serve_taps(
            opened,
            Arc::clone(&ports.stop),
            "guestnet bench",
        ));
        self.ports = Some(ports);
        for (namespace, address) in self.guestnet.iter().zip(GUESTNET_ADDRESSES) {
            netns::add_address(namespace, TAP_IFNAME, address)?;
        }
        Ok(())
    }

    /// `ethtool -K` every offload off on an interface in a namespace.
    fn ethtool_off(&self, namespace: &str, ifname: &str) -> anyhow::Result<()> {
        let mut args = vec!["ethtool", "-K", ifname];
        args.extend(OFFLOADS_OFF);
        run_in(&self.stop, namespace, &args, Duration::from_secs(10))
            .with_context(|| format!("turn offloads off on {ifname} in {namespace}"))?;
        Ok(())
    }

    /// One ping from the first namespace to the second: it resolves ARP and shows the
    /// path works, and is not counted.
    fn first_ping(&self, namespaces: &[String; 2], addresses: [&str; 2]) -> anyhow::Result<()> {
        self.check_interrupted()?;
        run_in(
            &self.stop,
            &namespaces[0],
            &["ping", "-c", "1", "-W", "2", addresses[1]],
            Duration::from_secs(10),
        )
        .with_context(|| format!("ping {} from {}", addresses[1], namespaces[0]))?;
        Ok(())
    }

    /// Pings, then a TCP test, from the first namespace to the second.
    fn measure(
        &self,
        namespaces: &[String; 2],
        addresses: [&str; 2],
        seconds: u64,
        iperf: bool,
    ) -> anyhow::Result<Measured> {
        self.first_ping(namespaces, addresses)?;
        let count = PINGS.to_string();
        let output = run_in(
            &self.stop,
            &namespaces[0],
            &[
                "ping",
                "-c",
                &count,
                "-i",
                PING_INTERVAL,
                "-W",
                "1",
                addresses[1],
            ],
            Duration::from_secs(30),
        )
        .with_context(|| format!("ping {} from {}", addresses[1], namespaces[0]))?;
        let rtt = ping_rtt(&output).context("ping printed no round-trip times")?;
        self.check_interrupted()?;
        let test = TcpTest {
            client: &namespaces[0],
            server: &namespaces[1],
            address: addresses[1],
            port: TCP_PORT,
            seconds,
        };
        let gbps = if iperf {
            netns::iperf3(&self.stop, test)?
        } else {
            netns::builtin_stream(&self.stop, test)?.gbits()
        };
        Ok(Measured { gbps, rtt })
    }

    /// iperf3 TCP through each lab with its sender limited to `rate` bits per second.
    /// What `ifname` in `namespace` has dropped on transmit so far (`ip -s link`).
    /// What the tbf on the veth in `namespace` has dropped so far.
    /// `tc ARGS` in a namespace; returns its output.
    /// A ping (resolving ARP, showing the path works), then iperf3 from the first
    /// namespace to the second; returns iperf3's JSON report.
    /// The drop counters of guestnet's peers, summed by reason.
    fn drops(&self) -> BTreeMap<String, u64> {
        drops_by_reason(self.network.as_ref())
    }
}

/// The drop counters of a network's peers, summed by reason (none without a network).
pub(super) fn drops_by_reason(network: Option<&Network>) -> BTreeMap<String, u64> {
    let mut drops = BTreeMap::new();
    if let Some(network) = network {
        for peer in network.status().peers {
            for (reason, count) in peer.drops {
                *drops.entry(reason).or_insert(0) += count;
            }
        }
    }
    drops
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.ports = None;
        for namespace in self.namespaces.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &namespace]) {
                eprintln!("guestnet bench: warning: cannot remove namespace {namespace}: {e:#}");
            }
        }
        if let (Some(network), Some(workspace)) = (self.network.take(), self.workspace.as_ref()) {
            let name = network.name().to_string();
            drop(network);
            let _ = Network::destroy(
                workspace.path(),
                &name,
                crate::network::DestroyOptions { force: true },
            );
        }
        // The workspace's own guard removes the directory.
        self.workspace = None;
    }
}

/// Average and median round-trip time, in µs, from ping's per-reply lines
/// (`… time=0.052 ms`).
fn ping_rtt(output: &str) -> Option<Rtt> {
    let mut times: Vec<f64> = output
        .lines()
        .filter_map(|line| line.split("time=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    if times.is_empty() {
        return None;
    }
    times.sort_by(f64::total_cmp);
    let avg = times.iter().sum::<f64>() / times.len() as f64;
    let middle = times.len() / 2;
    let p50 = if times.len().is_multiple_of(2) {
        (times[middle - 1] + times[middle]) / 2.0
    } else {
        times[middle]
    };
    Some(Rtt { avg, p50 })
}

fn print_table(result: &NetnsResult, command: &str) {
    println!(
        "guestnet bench --netns: TCP namespace → namespace, {} s per test ({}); {PINGS} pings {PING_INTERVAL} s apart",
        result.seconds, result.tool
    );
    println!("machine:  {}", result.machine);
    println!("command:  {command}");
    println!(
        "guestnet: two namespaces on TAP ports of one network ({} ring slots per peer)",
        result.ring_slots
    );
    println!("anchor:   two namespaces on veth pairs into a Linux bridge");
    println!();
    println!(
        "{:<8} {:>11} {:>11} {:>6} {:>13}  {:>20}  {:>20}",
        "offloads",
        "guestnet",
        "bridge",
        "ratio",
        "target",
        "guestnet RTT avg/p50",
        "bridge RTT avg/p50"
    );
    for c in &result.results {
        let verdict = if c.ratio >= c.target { "met" } else { "MISSED" };
        println!(
            "{:<8} {:>6.2} Gb/s {:>6.2} Gb/s {:>5.2}× ≥{:.1}× {verdict:<6}  {:>9} µs  {:>9} µs",
            if c.offload { "on" } else { "off" },
            c.guestnet_gbps,
            c.bridge_gbps,
            c.ratio,
            c.target,
            format!("{:.0}/{:.0}", c.guestnet_rtt_us.avg, c.guestnet_rtt_us.p50),
            format!("{:.0}/{:.0}", c.bridge_rtt_us.avg, c.bridge_rtt_us.p50),
        );
    }
    if let Some(r) = &result.rate_limit {
        print_rate_limit(r);
    }
    for c in &result.results {
        if !c.guestnet_drops.is_empty() {
            let drops: Vec<String> = c
                .guestnet_drops
                .iter()
                .map(|(reason, count)| format!("{reason} {count}"))
                .collect();
            println!(
                "guestnet drops with offloads {}: {}",
                if c.offload { "on" } else { "off" },
                drops.join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_replies_give_average_and_median_in_microseconds() {
        let output = "PING 10.78.1.2 (10.78.1.2) 56(84) bytes of data.\n\
            64 bytes from 10.78.1.2: icmp_seq=1 ttl=64 time=0.100 ms\n\
            64 bytes from 10.78.1.2: icmp_seq=2 ttl=64 time=0.040 ms\n\
            64 bytes from 10.78.1.2: icmp_seq=3 ttl=64 time=0.060 ms\n\
            64 bytes from 10.78.1.2: icmp_seq=4 ttl=64 time=0.050 ms\n\n\
            rtt min/avg/max/mdev = 0.040/0.062/0.100/0.023 ms\n";
        let rtt = ping_rtt(output).expect("times");
        assert!((rtt.avg - 62.5).abs() < 1e-9, "{rtt:?}");
        assert!((rtt.p50 - 55.0).abs() < 1e-9, "{rtt:?}");
        assert_eq!(ping_rtt("100% packet loss"), None);
    }
}
