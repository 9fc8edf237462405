//! The rate test of `bench --netns --rate`: iperf3 TCP and UDP from a namespace whose TAP
//! port has the limit, against the bridge lab with tc tbf on the sender's veth.

use super::*;

/// How far a rate-limited TCP stream may stray from its limit (issue 13: within 15 %).
const RATE_TOLERANCE: f64 = 0.15;

/// tbf's `latency`: the longest a frame may wait in the anchor's queue before tbf drops
/// it. TCP's small queues keep far less than this queued, so it only bounds the queue.
const TBF_LATENCY: &str = "50ms";

/// The UDP part of the rate test offers this many times the limit…
const UDP_OVERLOAD: u64 = 2;

/// …in datagrams of this many bytes, which fit one 1500-byte frame.
const UDP_DATAGRAM_BYTES: u64 = 1400;

/// What the anchor of the rate test is, as printed and in the JSON.
const RATE_ANCHOR: &str = "tc tbf on the sending namespace's veth (latency 50ms), same burst";

/// A rate-limited sender through guestnet and through the bridge.
#[derive(Debug, Serialize)]
pub(super) struct RateComparison {
    /// The limit, bits per second.
    rate_bps: u64,
    /// The bucket's (and tbf's) burst, bytes.
    burst_bytes: u64,
    /// How far from the limit the achieved rate may be (0.15: within 15 %).
    tolerance: f64,
    /// How the anchor limits its sender.
    anchor: &'static str,
    /// TCP through each lab.
    guestnet: RateMeasured,
    bridge: RateMeasured,
    /// guestnet's drop counters over the TCP measurement, summed over its two TAP peers.
    guestnet_drops: BTreeMap<String, u64>,
    /// UDP offered faster than the limit, which does not slow down when held back.
    udp: UdpComparison,
}

/// UDP at `offered_bps` through each rate-limited lab.
#[derive(Debug, Serialize)]
struct UdpComparison {
    /// What iperf3 offered, bits per second (`-b`).
    offered_bps: u64,
    /// Bytes of each datagram's payload (`-l`).
    datagram_bytes: u64,
    guestnet: UdpMeasured,
    bridge: UdpMeasured,
    /// guestnet's drop counters over the UDP measurement.
    guestnet_drops: BTreeMap<String, u64>,
}

/// One lab's UDP stream under the limit.
#[derive(Debug, Serialize)]
struct UdpMeasured {
    /// What the receiver received, Mbit/s.
    mbps: f64,
    /// Received ÷ the limit.
    ratio: f64,
    /// Whether the ratio is within the tolerance of 1.
    within_target: bool,
    /// Datagrams sent but not received, percent (held back past what the sender's kernel
    /// queues, or dropped by the limiter).
    lost_percent: f64,
    /// Frames the limiter dropped, as for TCP.
    rate_limited: u64,
    /// Frames the sender's interface dropped on transmit, as for TCP.
    device_dropped: u64,
}

/// One lab's rate-limited TCP stream.
#[derive(Debug, Serialize)]
struct RateMeasured {
    /// What the receiver received, Mbit/s.
    mbps: f64,
    /// Received ÷ the limit.
    ratio: f64,
    /// Whether the ratio is within the tolerance of 1.
    within_target: bool,
    /// TCP retransmissions iperf3's sender counted.
    retransmits: u64,
    /// Frames the limiter dropped: guestnet's `rate_limited` counter (as its senders
    /// counted it), or the anchor's tbf `drops`.
    rate_limited: u64,
    /// Frames the sender's interface (guestnet's TAP, the anchor's veth) dropped on
    /// transmit, as `ip -s link` counts them: a full TAP queue while the port holds back.
    device_dropped: u64,
}

/// What the limiter and the sender's interface dropped over a measurement.
#[derive(Debug, Clone, Copy, Default)]
struct Dropped {
    rate_limited: u64,
    device: u64,
}

impl RateMeasured {
    fn new(stream: IperfStream, rate_bps: u64, dropped: Dropped) -> RateMeasured {
        let ratio = stream.bits_per_second / rate_bps as f64;
        RateMeasured {
            mbps: stream.bits_per_second / 1e6,
            ratio,
            within_target: (ratio - 1.0).abs() <= RATE_TOLERANCE,
            retransmits: stream.retransmits,
            rate_limited: dropped.rate_limited,
            device_dropped: dropped.device,
        }
    }
}

/// What iperf3's JSON report says of a TCP test.
#[derive(Debug, Clone, Copy, PartialEq)]
struct IperfStream {
    /// Received, bits per second.
    bits_per_second: f64,
    /// The sender's retransmissions.
    retransmits: u64,
}

/// What iperf3's JSON report says of a UDP test: received bits per second, and the
/// percentage of datagrams lost.
fn parse_udp(report: &str) -> anyhow::Result<(f64, f64)> {
    let report: serde_json::Value =
        serde_json::from_str(report).context("read iperf3's JSON report")?;
    let received = &report["end"]["sum_received"];
    let bits = received["bits_per_second"]
        .as_f64()
        .context("iperf3's report has no received throughput")?;
    let lost = received["lost_percent"]
        .as_f64()
        .or_else(|| report["end"]["sum"]["lost_percent"].as_f64())
        .context("iperf3's report has no loss")?;
    Ok((bits, lost))
}

impl UdpMeasured {
    fn new((bits_per_second, lost_percent): (f64, f64), rate_bps: u64, dropped: Dropped) -> Self {
        let ratio = bits_per_second / rate_bps as f64;
        UdpMeasured {
            mbps: bits_per_second / 1e6,
            ratio,
            within_target: (ratio - 1.0).abs() <= RATE_TOLERANCE,
            lost_percent,
            rate_limited: dropped.rate_limited,
            device_dropped: dropped.device,
        }
    }
}

/// The counts of `after` minus those of `before`, the ones that grew.
fn grown(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(reason, &count)| {
            let grew = count.saturating_sub(before.get(reason).copied().unwrap_or(0));
            (grew > 0).then(|| (reason.clone(), grew))
        })
        .collect()
}

impl IperfStream {
    fn parse(report: &str) -> anyhow::Result<IperfStream> {
        let report: serde_json::Value =
            serde_json::from_str(report).context("read iperf3's JSON report")?;
        let end = &report["end"];
        Ok(IperfStream {
            bits_per_second: end["sum_received"]["bits_per_second"]
                .as_f64()
                .context("iperf3's report has no received throughput")?,
            retransmits: end["sum_sent"]["retransmits"]
                .as_u64()
                .context("iperf3's report has no retransmission count")?,
        })
    }
}

/// What an iperf3 test sends.
#[derive(Debug, Clone, Copy)]
enum Traffic {
    /// One TCP stream.
    Tcp,
    /// UDP at a fixed rate, bits per second.
    Udp { offered_bps: u64 },
}

/// The `drops` of the tbf qdisc in `tc -s -j qdisc show` output.
fn tbf_drops(json: &str) -> Option<u64> {
    let qdiscs: serde_json::Value = serde_json::from_str(json).ok()?;
    qdiscs
        .as_array()?
        .iter()
        .find(|q| q["kind"] == "tbf")?
        .get("drops")?
        .as_u64()
}

/// The transmit drops in `ip -s -j link show` output of one device.
fn tx_dropped(json: &str) -> Option<u64> {
    let links: serde_json::Value = serde_json::from_str(json).ok()?;
    links.as_array()?.first()?["stats64"]["tx"]["dropped"].as_u64()
}

/// A rate in bits per second as `200 Mbit/s`.
fn mbit(bps: u64) -> String {
    format!("{} Mbit/s", bps as f64 / 1e6)
}

pub(super) fn print_rate_limit(r: &RateComparison) {
    println!();
    println!(
        "rate limit {} (burst {} B), iperf3, offloads on; target: within {:.0} % of the limit",
        mbit(r.rate_bps),
        r.burst_bytes,
        r.tolerance * 100.0
    );
    println!("anchor:   {}", r.anchor);
    println!(
        "UDP:      {} offered in {}-byte datagrams",
        mbit(r.udp.offered_bps),
        r.udp.datagram_bytes
    );
    println!(
        "{:<12} {:>15} {:>7}  {:<6} {:>16} {:>13} {:>14}",
        "", "achieved", "× limit", "target", "retransmits/lost", "rate_limited", "device dropped"
    );
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    for (name, side) in [("guestnet", &r.guestnet), ("bridge", &r.bridge)] {
        println!(
            "{:<12} {:>8.1} Mbit/s {:>6.2}×  {:<6} {:>16} {:>13} {:>14}",
            format!("{name} TCP"),
            side.mbps,
            side.ratio,
            verdict(side.within_target),
            side.retransmits,
            side.rate_limited,
            side.device_dropped
        );
    }
    for (name, side) in [("guestnet", &r.udp.guestnet), ("bridge", &r.udp.bridge)] {
        println!(
            "{:<12} {:>8.1} Mbit/s {:>6.2}×  {:<6} {:>16} {:>13} {:>14}",
            format!("{name} UDP"),
            side.mbps,
            side.ratio,
            verdict(side.within_target),
            format!("{:.1} %", side.lost_percent),
            side.rate_limited,
            side.device_dropped
        );
    }
    for (protocol, drops) in [("TCP", &r.guestnet_drops), ("UDP", &r.udp.guestnet_drops)] {
        if !drops.is_empty() {
            let drops: Vec<String> = drops
                .iter()
                .map(|(reason, count)| format!("{reason} {count}"))
                .collect();
            println!(
                "guestnet drops under the rate limit, {protocol}: {}",
                drops.join(", ")
            );
        }
    }
}

impl Lab {
    pub(super) fn limit_rate(
        &mut self,
        rate: u64,
        burst: u64,
        seconds: u64,
    ) -> anyhow::Result<RateComparison> {
        let limit = format!("rate limit {}", mbit(rate));
        let offered = rate.saturating_mul(UDP_OVERLOAD);
        let udp = Traffic::Udp {
            offered_bps: offered,
        };
        let rate_limited =
            |drops: &BTreeMap<String, u64>| drops.get("tx_rate_limited").copied().unwrap_or(0);
        progress(&format!(
            "{limit}: guestnet, TCP then UDP, {seconds} s each"
        ));
        self.start_ports(true, Some((rate, burst)))?;
        let sender = &self.guestnet[0];
        let guestnet_tcp =
            self.stream(&self.guestnet, GUESTNET_ADDRESSES, seconds, Traffic::Tcp)?;
        let guestnet_drops = self.drops();
        let tap_tcp = self.tx_dropped(sender, TAP_IFNAME)?;
        let guestnet_udp = self.stream(&self.guestnet, GUESTNET_ADDRESSES, seconds, udp)?;
        let udp_drops = grown(&self.drops(), &guestnet_drops);
        let tap_udp = self.tx_dropped(sender, TAP_IFNAME)?.saturating_sub(tap_tcp);
        self.ports = None;
        let guestnet = RateMeasured::new(
            IperfStream::parse(&guestnet_tcp)?,
            rate,
            Dropped {
                rate_limited: rate_limited(&guestnet_drops),
                device: tap_tcp,
            },
        );
        let guestnet_udp = UdpMeasured::new(
            parse_udp(&guestnet_udp)?,
            rate,
            Dropped {
                rate_limited: rate_limited(&udp_drops),
                device: tap_udp,
            },
        );

        progress(&format!(
            "{limit}: Linux bridge with tc tbf, TCP then UDP, {seconds} s each"
        ));
        let sender = &self.bridge[0];
        let (rate_text, burst_text) = (format!("{rate}bit"), burst.to_string());
        self.tc(
            sender,
            &[
                "qdisc",
                "add",
                "dev",
                VETH_IFNAME,
                "root",
                "tbf",
                "rate",
                &rate_text,
                "burst",
                &burst_text,
                "latency",
                TBF_LATENCY,
            ],
        )?;
        let bridge_tcp = self.stream(&self.bridge, BRIDGE_ADDRESSES, seconds, Traffic::Tcp)?;
        let tcp_dropped = Dropped {
            rate_limited: self.tbf_drops(sender)?,
            device: self.tx_dropped(sender, VETH_IFNAME)?,
        };
        let bridge_udp = self.stream(&self.bridge, BRIDGE_ADDRESSES, seconds, udp)?;
        let udp_dropped = Dropped {
            rate_limited: self
                .tbf_drops(sender)?
                .saturating_sub(tcp_dropped.rate_limited),
            device: self
                .tx_dropped(sender, VETH_IFNAME)?
                .saturating_sub(tcp_dropped.device),
        };
        // The offloads-off comparison measures the bridge unlimited again.
        self.tc(sender, &["qdisc", "del", "dev", VETH_IFNAME, "root"])?;
        Ok(RateComparison {
            rate_bps: rate,
            burst_bytes: burst,
            tolerance: RATE_TOLERANCE,
            anchor: RATE_ANCHOR,
            guestnet,
            bridge: RateMeasured::new(IperfStream::parse(&bridge_tcp)?, rate, tcp_dropped),
            guestnet_drops,
            udp: UdpComparison {
                offered_bps: offered,
                datagram_bytes: UDP_DATAGRAM_BYTES,
                guestnet: guestnet_udp,
                bridge: UdpMeasured::new(parse_udp(&bridge_udp)?, rate, udp_dropped),
                guestnet_drops: udp_drops,
            },
        })
    }

    fn tx_dropped(&self, namespace: &str, ifname: &str) -> anyhow::Result<u64> {
        let stats = run_in(
            &self.stop,
            namespace,
            &["ip", "-s", "-j", "link", "show", "dev", ifname],
            Duration::from_secs(10),
        )?;
        tx_dropped(&stats)
            .with_context(|| format!("ip -s link shows no tx drops of {ifname}: {stats}"))
    }

    fn tbf_drops(&self, namespace: &str) -> anyhow::Result<u64> {
        let stats = self.tc(
            namespace,
            &["-s", "-j", "qdisc", "show", "dev", VETH_IFNAME],
        )?;
        tbf_drops(&stats).with_context(|| format!("tc shows no tbf in {namespace}: {stats}"))
    }

    fn tc(&self, namespace: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut command = vec!["tc"];
        command.extend(args);
        run_in(&self.stop, namespace, &command, Duration::from_secs(10))
            .with_context(|| format!("{} in {namespace}", command.join(" ")))
    }

    fn stream(
        &self,
        namespaces: &[String; 2],
        addresses: [&str; 2],
        seconds: u64,
        traffic: Traffic,
    ) -> anyhow::Result<String> {
        self.first_ping(namespaces, addresses)?;
        self.check_interrupted()?;
        let port = TCP_PORT.to_string();
        let (server, server_output) = netns::start_server(
            &namespaces[1],
            &[
                "iperf3",
                "-s",
                "-1",
                "--forceflush",
                "-B",
                addresses[1],
                "-p",
                &port,
            ],
            "listening",
        )?;
        let seconds_text = seconds.to_string();
        let offered;
        let length = UDP_DATAGRAM_BYTES.to_string();
        let mut client = vec![
            "iperf3",
            "-c",
            addresses[1],
            "-p",
            &port,
            "-t",
            &seconds_text,
            "-J",
        ];
        if let Traffic::Udp { offered_bps } = traffic {
            offered = offered_bps.to_string();
            client.extend(["-u", "-b", &offered, "-l", &length]);
        }
        let report = run_in(
            &self.stop,
            &namespaces[0],
            &client,
            Duration::from_secs(seconds + 15),
        )?;
        netns::finish(
            &self.stop,
            server,
            server_output,
            Duration::from_secs(5),
            "iperf3 server",
        )?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3_and_tc_reports_give_rate_retransmissions_and_drops() {
        let report = r#"{"end": {"sum_sent": {"bits_per_second": 2.1e8, "retransmits": 7},
            "sum_received": {"bits_per_second": 1.9e8}}}"#;
        let stream = IperfStream::parse(report).expect("parsed");
        assert_eq!(
            stream,
            IperfStream {
                bits_per_second: 1.9e8,
                retransmits: 7
            }
        );
        let measured = RateMeasured::new(stream, 200_000_000, Dropped::default());
        assert!((measured.ratio - 0.95).abs() < 1e-9 && measured.within_target);
        assert!(!RateMeasured::new(stream, 250_000_000, Dropped::default()).within_target);
        let udp = r#"{"end": {"sum": {"lost_percent": 49.5},
            "sum_received": {"bits_per_second": 1.95e8}}}"#;
        assert_eq!(parse_udp(udp).expect("parsed"), (1.95e8, 49.5));
        assert!(IperfStream::parse(r#"{"end": {}}"#).is_err());

        let tc = r#"[{"kind":"tbf","handle":"8001:","root":true,"bytes":90,"packets":1,
            "drops":4,"overlimits":0}]"#;
        assert_eq!(tbf_drops(tc), Some(4));
        assert_eq!(tbf_drops(r#"[{"kind":"noqueue","drops":0}]"#), None);
        let link = r#"[{"ifname":"gn0","stats64":{"rx":{"dropped":0},"tx":{"dropped":12}}}]"#;
        assert_eq!(tx_dropped(link), Some(12));

        let before = BTreeMap::from([("tx_ring_full".to_string(), 2)]);
        let after = BTreeMap::from([("tx_ring_full".to_string(), 5), ("rx_stale".to_string(), 1)]);
        let grew = grown(&after, &before);
        assert_eq!(grew.get("tx_ring_full"), Some(&3));
        assert_eq!(grew.get("rx_stale"), Some(&1));
        assert!(grown(&before, &before).is_empty());
    }
}
