//! The Prometheus text exposition (format 0.0.4) of networks' status: a pure function
//! from what `status --json` shows to the body of `GET /metrics`, so that its exact output
//! is tested without a server.
//!
//! Every figure comes from [`NetworkStatus`] and [`PortStatuses`] as they are, so a scrape
//! and `status --json` taken at the same moment agree number for number. The format asks
//! that all samples of one metric follow its `# HELP` and `# TYPE` lines together, so the
//! text is written metric by metric, each over every network, peer or port; a metric with
//! no sample at all (no VXLAN port anywhere) is left out.
//!
//! Drops appear as `status` shows them: a `(direction, reason)` pair gets its series the
//! first time it counts a drop.

use std::fmt::Write;

use crate::cli::port_status::PortStatuses;
use crate::network::{NetworkStatus, PeerStatus};
use crate::ports::dhcp::DhcpStatus;
use crate::ports::vhost_user::{SocketStatus, State};
use crate::ports::vxlan::{RemoteStatus, SegmentStatus, VxlanStatus};

/// One network as a scrape sees it.
#[derive(Debug)]
pub struct NetworkMetrics {
    /// The network's own status (peers, learned addresses, retired totals).
    pub status: NetworkStatus,
    /// What its live ports say about themselves.
    pub ports: PortStatuses,
}

/// The body of `GET /metrics` for `networks`, and for `unopened`: the networks in the
/// directory that would not open (damaged, or removed while being read), shown as
/// `guestnet_network_open 0` so that monitoring sees them rather than a gap.
pub fn render(networks: &[NetworkMetrics], unopened: &[String]) -> String {
    let mut out = Exposition::default();
    render_networks(&mut out, networks, unopened);
    render_peers(&mut out, networks);
    render_vhost_user(&mut out, networks);
    render_vxlan(&mut out, networks);
    render_dhcp(&mut out, networks);
    out.text
}

/// What a metric is, for its `# TYPE` line.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Only ever grows (until its process or peer starts again); named `…_total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// A sample's labels, in the order they are written.
type Labels = Vec<(&'static str, String)>;

/// The text being written.
#[derive(Debug, Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// Writes one metric: its `# HELP` and `# TYPE` lines and then its samples, or nothing
    /// when it has no sample.
    fn metric(&mut self, name: &str, kind: Kind, help: &str, samples: Vec<(Labels, u64)>) {
        if samples.is_empty() {
            return;
        }
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        // Writing into a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.text.push_str(name);
            if !labels.is_empty() {
                let pairs: Vec<String> = labels
                    .iter()
                    .map(|(label, value)| format!("{label}=\"{}\"", escape_label_value(value)))
                    .collect();
                let _ = write!(self.text, "{{{}}}", pairs.join(","));
            }
            let _ = writeln!(self.text, " {value}");
        }
    }
}

/// A label value as the format writes it: backslash, double quote and line feed escaped.
fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A help text as the format writes it: backslash and line feed escaped.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The labels of a network's own metrics.
fn network_labels(network: &NetworkMetrics) -> Labels {
    vec![("network", network.status.name.clone())]
}

/// The labels that name a peer: which network, which slot, and who is in it.
fn peer_labels(network: &NetworkStatus, peer: &PeerStatus) -> Labels {
    vec![
        ("network", network.name.clone()),
        ("slot", peer.slot.to_string()),
        ("mac", peer.mac.to_string()),
        ("kind", peer.kind.name().to_string()),
        ("label", peer.label.clone()),
    ]
}

/// `status`'s drop names (`tx_ring_full`) as labels: `direction="tx"`, `reason="ring_full"`.
fn drop_samples<'a>(
    labels: &Labels,
    drops: impl IntoIterator<Item = (&'a String, &'a u64)>,
) -> Vec<(Labels, u64)> {
    drops
        .into_iter()
        .map(|(name, &count)| {
            let (direction, reason) = name.split_once('_').unwrap_or(("", name));
            let mut labels = labels.clone();
            labels.push(("direction", direction.to_string()));
            labels.push(("reason", reason.to_string()));
            (labels, count)
        })
        .collect()
}

fn render_networks(out: &mut Exposition, networks: &[NetworkMetrics], unopened: &[String]) {
    let per_network = |value: &dyn Fn(&NetworkStatus) -> u64| -> Vec<(Labels, u64)> {
        networks
            .iter()
            .map(|network| (network_labels(network), value(&network.status)))
            .collect()
    };
    let open = networks
        .iter()
        .map(|network| (network_labels(network), 1))
        .chain(
            unopened
                .iter()
                .map(|name| (vec![("network", name.clone())], 0)),
        )
        .collect();
    out.metric(
        "guestnet_network_open",
        Kind::Gauge,
        "Whether the network's region opened for this scrape (0: damaged or just removed).",
        open,
    );
    out.metric(
        "guestnet_network_peers_up",
        Kind::Gauge,
        "Peers on the network.",
        per_network(&|status| status.peers.len() as u64),
    );
    out.metric(
        "guestnet_network_max_peers",
        Kind::Gauge,
        "Peer slots of the network.",
        per_network(&|status| u64::from(status.max_peers)),
    );
    out.metric(
        "guestnet_network_learned_addresses",
        Kind::Gauge,
        "Addresses in the network's forwarding table.",
        per_network(&|status| status.learned.len() as u64),
    );
    out.metric(
        "guestnet_network_ring_queued_frames",
        Kind::Gauge,
        "Frames waiting in the peers' receive rings, added up.",
        per_network(&|status| status.peers.iter().map(|peer| peer.rx_queued).sum()),
    );
    out.metric(
        "guestnet_network_resident_bytes",
        Kind::Gauge,
        "Memory the network's region takes (its file is sparse).",
        per_network(&|status| status.resident_bytes),
    );
    out.metric(
        "guestnet_retired_tx_packets_total",
        Kind::Counter,
        "Frames sent by the peers that have left the network or were reclaimed.",
        per_network(&|status| status.retired.tx_packets),
    );
    out.metric(
        "guestnet_retired_tx_deliveries_total",
        Kind::Counter,
        "Copies delivered into receivers' rings by the peers that have left.",
        per_network(&|status| status.retired.tx_deliveries),
    );
    out.metric(
        "guestnet_retired_rx_packets_total",
        Kind::Counter,
        "Frames received by the peers that have left.",
        per_network(&|status| status.retired.rx_packets),
    );
    out.metric(
        "guestnet_retired_drops_total",
        Kind::Counter,
        "Drops of the peers that have left, by direction and reason, with the frames discarded unread from their rings (rx peer_gone).",
        networks
            .iter()
            .flat_map(|network| drop_samples(&network_labels(network), &network.status.retired.drops))
            .collect(),
    );
}

/// A figure of every peer: its name in the metric's, its help, and how to read it.
type PeerFigure = (&'static str, &'static str, fn(&PeerStatus) -> u64);

fn render_peers(out: &mut Exposition, networks: &[NetworkMetrics]) {
    let per_peer = |value: fn(&PeerStatus) -> u64| -> Vec<(Labels, u64)> {
        networks
            .iter()
            .flat_map(|network| {
                network
                    .status
                    .peers
                    .iter()
                    .map(|peer| (peer_labels(&network.status, peer), value(peer)))
            })
            .collect()
    };
    let counters: [PeerFigure; 8] = [
        ("rx_packets", "Frames the peer received.", |p| p.rx_packets),
        ("rx_bytes", "Bytes the peer received.", |p| p.rx_bytes),
        ("tx_packets", "Frames the peer sent.", |p| p.tx_packets),
        ("tx_bytes", "Bytes the peer sent.", |p| p.tx_bytes),
        (
            "tx_deliveries",
            "Copies of the peer's frames delivered into receivers' rings.",
            |p| p.tx_deliveries,
        ),
        ("wakeups", "Times the peer was woken to receive.", |p| {
            p.wakeups
        }),
        (
            "learn_refused",
            "Source addresses of the peer not learned: its learning quota was full.",
            |p| p.learn_refused,
        ),
        (
            "held_back",
            "Unicast frames of the peer that waited for room in a full ring, then went in.",
            |p| p.held_back,
        ),
    ];
    for (name, help, value) in counters {
        out.metric(
            &format!("guestnet_peer_{name}_total"),
            Kind::Counter,
            help,
            per_peer(value),
        );
    }
    out.metric(
        "guestnet_peer_drops_total",
        Kind::Counter,
        "Frames, or copies of them, the peer did not send (tx) or receive (rx), by reason.",
        networks
            .iter()
            .flat_map(|network| {
                network
                    .status
                    .peers
                    .iter()
                    .flat_map(|peer| drop_samples(&peer_labels(&network.status, peer), &peer.drops))
            })
            .collect(),
    );
    let gauges: [PeerFigure; 3] = [
        (
            "rx_queued_frames",
            "Frames waiting in the peer's receive ring.",
            |p| p.rx_queued,
        ),
        (
            "quarantined",
            "Whether the peer is quarantined for misbehaviour.",
            |p| u64::from(p.quarantined),
        ),
        ("link_down", "Whether the peer's link is down.", |p| {
            u64::from(p.link_down)
        }),
    ];
    for (name, help, value) in gauges {
        out.metric(
            &format!("guestnet_peer_{name}"),
            Kind::Gauge,
            help,
            per_peer(value),
        );
    }
    out.metric(
        "guestnet_peer_policy_info",
        Kind::Gauge,
        "The peer's segment and policy as labels (always 1): its VLANs, native VLAN, isolation and MAC lock.",
        networks
            .iter()
            .flat_map(|network| {
                network.status.peers.iter().map(|peer| {
                    let mut labels = peer_labels(&network.status, peer);
                    labels.extend([
                        ("vlan_mode", peer.vlan_mode.clone()),
                        ("vlans", peer.vlans.clone()),
                        ("native", peer.native.map_or_else(String::new, |vid| vid.to_string())),
                        ("isolated", peer.isolated.to_string()),
                        ("lock_mac", peer.lock_mac.to_string()),
                    ]);
                    (labels, 1)
                })
            })
            .collect(),
    );
    out.metric(
        "guestnet_peer_rate_limit_bytes_per_second",
        Kind::Gauge,
        "The limit on what the peer sends (--rate, given in bits per second), in bytes per second; 0: none.",
        per_peer(|p| p.rate / 8),
    );
}

/// The labels that name a vhost-user socket: its network and its path.
fn socket_labels(network: &str, socket: &SocketStatus) -> Labels {
    vec![
        ("network", network.to_string()),
        ("socket", socket.socket.display().to_string()),
    ]
}

/// The name `status --json` gives a socket's state.
fn state_name(state: State) -> &'static str {
    match state {
        State::Listening => "listening",
        State::Connected => "connected",
        State::Running => "running",
        State::Quarantined => "quarantined",
    }
}

fn render_vhost_user(out: &mut Exposition, networks: &[NetworkMetrics]) {
    let sockets: Vec<(&str, &SocketStatus)> = networks
        .iter()
        .flat_map(|network| {
            let name = network.status.name.as_str();
            network
                .ports
                .vhost_user
                .iter()
                .map(move |socket| (name, socket))
        })
        .collect();
    let Some((_, first)) = sockets.first() else {
        return;
    };
    let states = [
        State::Listening,
        State::Connected,
        State::Running,
        State::Quarantined,
    ];
    out.metric(
        "guestnet_vhost_user_state",
        Kind::Gauge,
        "Where the socket's frontend stands: 1 for its state, 0 for the others.",
        sockets
            .iter()
            .flat_map(|&(network, socket)| {
                states.iter().map(move |&state| {
                    let mut labels = socket_labels(network, socket);
                    labels.push(("state", state_name(state).to_string()));
                    (labels, u64::from(socket.state == state))
                })
            })
            .collect(),
    );
    out.metric(
        "guestnet_vhost_user_queue_pairs",
        Kind::Gauge,
        "Queue pairs the socket offers.",
        sockets
            .iter()
            .map(|&(network, socket)| {
                (
                    socket_labels(network, socket),
                    u64::from(socket.queue_pairs),
                )
            })
            .collect(),
    );
    // One metric per counter of the port's own list, so a counter added there shows
    // here without a change.
    for (index, (name, _)) in first.counters.named().into_iter().enumerate() {
        out.metric(
            &format!("guestnet_vhost_user_{name}_total"),
            Kind::Counter,
            &format!("The vhost-user socket's {name} counter, as status --json shows it."),
            sockets
                .iter()
                .map(|&(network, socket)| {
                    let value = socket.counters.named()[index].1;
                    (socket_labels(network, socket), value)
                })
                .collect(),
        );
    }
    out.metric(
        "guestnet_vhost_user_refused_messages_total",
        Kind::Counter,
        "Well-formed messages the socket refused, by reason; they add up to rejected_messages.",
        sockets
            .iter()
            .flat_map(|&(network, socket)| {
                socket
                    .counters
                    .refused
                    .named()
                    .into_iter()
                    .map(move |(reason, value)| {
                        let mut labels = socket_labels(network, socket);
                        labels.push(("reason", reason.to_string()));
                        (labels, value)
                    })
            })
            .collect(),
    );
}

/// The labels that name a VXLAN port: its network, its slot and its VNI (or its map of
/// VLANs to VNIs, as `10=1010,20=1020`).
fn vxlan_labels(port: &VxlanStatus) -> Labels {
    vec![
        ("network", port.network.clone()),
        ("slot", port.slot.to_string()),
        ("vni", port.vni.to_string()),
    ]
}

/// The labels that name one segment of a VXLAN port: its network, its slot, the segment's
/// VNI and, with a map, its VLAN.
fn segment_labels(port: &VxlanStatus, segment: &SegmentStatus) -> Labels {
    let mut labels = vec![
        ("network", port.network.clone()),
        ("slot", port.slot.to_string()),
        ("vni", segment.vni.to_string()),
    ];
    if let Some(vid) = segment.vlan {
        labels.push(("vlan", vid.to_string()));
    }
    labels
}

/// The labels that name a remote of a VXLAN port.
fn remote_labels(port: &VxlanStatus, remote: &RemoteStatus) -> Labels {
    let mut labels = vxlan_labels(port);
    labels.push(("remote", remote.endpoint.to_string()));
    labels
}

fn render_vxlan(out: &mut Exposition, networks: &[NetworkMetrics]) {
    let ports: Vec<&VxlanStatus> = networks
        .iter()
        .flat_map(|network| &network.ports.vxlan)
        .collect();
    let Some(first) = ports.first() else {
        return;
    };
    out.metric(
        "guestnet_vxlan_remotes",
        Kind::Gauge,
        "Remote endpoints of the VXLAN port.",
        ports
            .iter()
            .map(|port| (vxlan_labels(port), port.remotes.len() as u64))
            .collect(),
    );
    for (index, (name, _)) in first.counters.named().into_iter().enumerate() {
        out.metric(
            &format!("guestnet_vxlan_{name}_total"),
            Kind::Counter,
            &format!("The VXLAN port's {name} counter (all its remotes and what has none), as status --json shows it."),
            ports
                .iter()
                .map(|port| (vxlan_labels(port), port.counters.named()[index].1))
                .collect(),
        );
    }
    render_vxlan_segments(out, &ports);
    let remotes: Vec<(&VxlanStatus, &RemoteStatus)> = ports
        .iter()
        .flat_map(|&port| port.remotes.iter().map(move |remote| (port, remote)))
        .collect();
    let Some((_, first_remote)) = remotes.first() else {
        return;
    };
    for (index, (name, _)) in first_remote.counters.named().into_iter().enumerate() {
        out.metric(
            &format!("guestnet_vxlan_remote_{name}_total"),
            Kind::Counter,
            &format!("A VXLAN remote's {name} counter, as status --json shows it."),
            remotes
                .iter()
                .map(|&(port, remote)| {
                    (
                        remote_labels(port, remote),
                        remote.counters.named()[index].1,
                    )
                })
                .collect(),
        );
    }
    out.metric(
        "guestnet_vxlan_remote_learned_addresses",
        Kind::Gauge,
        "Inner addresses learned behind the VXLAN remote.",
        remotes
            .iter()
            .map(|&(port, remote)| (remote_labels(port, remote), remote.learned.len() as u64))
            .collect(),
    );
}

/// Each VXLAN segment's traffic (every port has at least its one VNI) and the addresses
/// learned in it.
fn render_vxlan_segments(out: &mut Exposition, ports: &[&VxlanStatus]) {
    let segments: Vec<(&VxlanStatus, &SegmentStatus)> = ports
        .iter()
        .flat_map(|&port| port.segments.iter().map(move |segment| (port, segment)))
        .collect();
    let Some((_, first)) = segments.first() else {
        return;
    };
    for (index, (name, _)) in first.counters.named().into_iter().enumerate() {
        out.metric(
            &format!("guestnet_vxlan_vni_{name}_total"),
            Kind::Counter,
            &format!("A VXLAN port's {name} counter in one VNI (with --vni-map, one VLAN), as status --json shows it."),
            segments
                .iter()
                .map(|&(port, segment)| {
                    (
                        segment_labels(port, segment),
                        segment.counters.named()[index].1,
                    )
                })
                .collect(),
        );
    }
    out.metric(
        "guestnet_vxlan_vni_learned_addresses",
        Kind::Gauge,
        "Inner addresses the VXLAN port learned in the VNI.",
        segments
            .iter()
            .map(|&(port, segment)| (segment_labels(port, segment), segment.learned.len() as u64))
            .collect(),
    );
}

/// The labels that name a DHCP server: its network and its slot.
fn dhcp_labels(server: &DhcpStatus) -> Labels {
    vec![
        ("network", server.network.clone()),
        ("slot", server.slot.to_string()),
    ]
}

fn render_dhcp(out: &mut Exposition, networks: &[NetworkMetrics]) {
    let servers: Vec<&DhcpStatus> = networks
        .iter()
        .flat_map(|network| &network.ports.dhcp)
        .collect();
    let Some(first) = servers.first() else {
        return;
    };
    out.metric(
        "guestnet_dhcp_leases",
        Kind::Gauge,
        "Leases the DHCP server holds bound and unexpired.",
        servers
            .iter()
            .map(|server| (dhcp_labels(server), server.leases))
            .collect(),
    );
    for (index, (name, _)) in first.counters.named().into_iter().enumerate() {
        out.metric(
            &format!("guestnet_dhcp_{name}_total"),
            Kind::Counter,
            &format!("The DHCP server's {name} counter, as status --json shows it."),
            servers
                .iter()
                .map(|server| (dhcp_labels(server), server.counters.named()[index].1))
                .collect(),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::network::{PortKind, RetiredStatus};
    use crate::ports::vhost_user::CounterValues;
    use crate::ports::vxlan::{Segments, VniCounters, VxlanCounters};
    use crate::wire::MacAddress;

    fn peer(slot: u16, label: &str) -> PeerStatus {
        PeerStatus {
            slot,
            mac: MacAddress([0x52, 0x54, 0, 0, 0, slot as u8]),
            kind: PortKind::Process,
            pid: 100,
            label: label.to_string(),
            generation: 1,
            promiscuous: false,
            all_multicast: false,
            link_down: false,
            quarantined: false,
            lock_mac: false,
            isolated: false,
            rate: 0,
            burst: 0,
            vlan_mode: "trunk".to_string(),
            vlans: "all".to_string(),
            native: Some(1),
            rx_packets: 8,
            rx_bytes: 800,
            tx_packets: 10,
            tx_bytes: 1000,
            tx_deliveries: 6,
            wakeups: 3,
            learn_refused: 0,
            held_back: 0,
            rx_queued: 2,
            drops: BTreeMap::from([("tx_ring_full".to_string(), 4), ("rx_stale".to_string(), 1)]),
        }
    }

    fn network(name: &str, peers: Vec<PeerStatus>) -> NetworkMetrics {
        NetworkMetrics {
            status: NetworkStatus {
                name: name.to_string(),
                path: format!("/dev/shm/guestnet/{name}"),
                mtu: 1500,
                max_peers: 64,
                ring_slots: 256,
                unknown_unicast: "flood",
                size_bytes: 1 << 20,
                resident_bytes: 4096,
                peers,
                learned: Vec::new(),
                reclaimed: Vec::new(),
                retired: RetiredStatus {
                    tx_packets: 5,
                    tx_deliveries: 4,
                    rx_packets: 3,
                    drops: BTreeMap::from([("rx_peer_gone".to_string(), 2)]),
                },
            },
            ports: PortStatuses::default(),
        }
    }

    #[test]
    fn a_network_and_its_peer_render_exactly() {
        let expected = r#"# HELP guestnet_network_open Whether the network's region opened for this scrape (0: damaged or just removed).
# TYPE guestnet_network_open gauge
guestnet_network_open{network="lab"} 1
# HELP guestnet_network_peers_up Peers on the network.
# TYPE guestnet_network_peers_up gauge
guestnet_network_peers_up{network="lab"} 1
# HELP guestnet_network_max_peers Peer slots of the network.
# TYPE guestnet_network_max_peers gauge
guestnet_network_max_peers{network="lab"} 64
# HELP guestnet_network_learned_addresses Addresses in the network's forwarding table.
# TYPE guestnet_network_learned_addresses gauge
guestnet_network_learned_addresses{network="lab"} 0
# HELP guestnet_network_ring_queued_frames Frames waiting in the peers' receive rings, added up.
# TYPE guestnet_network_ring_queued_frames gauge
guestnet_network_ring_queued_frames{network="lab"} 2
# HELP guestnet_network_resident_bytes Memory the network's region takes (its file is sparse).
# TYPE guestnet_network_resident_bytes gauge
guestnet_network_resident_bytes{network="lab"} 4096
# HELP guestnet_retired_tx_packets_total Frames sent by the peers that have left the network or were reclaimed.
# TYPE guestnet_retired_tx_packets_total counter
guestnet_retired_tx_packets_total{network="lab"} 5
# HELP guestnet_retired_tx_deliveries_total Copies delivered into receivers' rings by the peers that have left.
# TYPE guestnet_retired_tx_deliveries_total counter
guestnet_retired_tx_deliveries_total{network="lab"} 4
# HELP guestnet_retired_rx_packets_total Frames received by the peers that have left.
# TYPE guestnet_retired_rx_packets_total counter
guestnet_retired_rx_packets_total{network="lab"} 3
# HELP guestnet_retired_drops_total Drops of the peers that have left, by direction and reason, with the frames discarded unread from their rings (rx peer_gone).
# TYPE guestnet_retired_drops_total counter
guestnet_retired_drops_total{network="lab",direction="rx",reason="peer_gone"} 2
# HELP guestnet_peer_rx_packets_total Frames the peer received.
# TYPE guestnet_peer_rx_packets_total counter
guestnet_peer_rx_packets_total{network="lab",slot="0",mac="52:54:00:00:00:00",kind="process",label="a"} 8
# HELP guestnet_peer_rx_bytes_total Bytes the peer received.
# TYPE guestnet_peer_rx_bytes_total counter
guestnet_peer_rx_bytes_total{network="lab",slot="0",mac="52:54:00:00:00:00",kind="process",label="a"} 800
# HELP guestnet_peer_tx_packets_total Frames the peer sent.
# TYPE guestnet_peer_tx_packets_total counter
guestnet_peer_tx_packets_total{network="lab",slot="0",mac="52:54:00:00:00:00",kind="process",label="a"} 10
# HELP guestnet_peer_tx_bytes_total Bytes the peer sent.
# TYPE guestnet_peer_tx_bytes_total counter
guestnet_peer_tx_bytes_total{network="lab",slot="0",mac="52:54:00:00:00:00",kind="process",label="a"} 1000
# HELP guestnet_peer_tx_deliveries_total Copies of the peer's frames delivered into receivers' rings.
# TYPE guestnet_peer_tx_deliveries_total counter
guestnet_peer_tx_deliveries_total{network="lab",slot="0",mac="52:54:00:00:00:00",kind="process",label="a"} 6
# HELP guestnet_peer_wakeups_total Times the peer was woken to receive.
# TYPE guestnet_peer_wakeups_total counter
guestnet_peer_wakeups_total{network="lab",slot="0",mac="52:54:00:00:00:00",kind="process",label="a"} 3
# HELP guestnet_peer_learn_refused_total Source addresses of the peer not learned: its learning quota was full.
# TYPE guestnet_peer_learn_refused_total counter
guestnet_peer_learn_refused_total{network="lab",slot="0",mac="52:54:00:00:00:00",kind="process",label="a"} 0
# HELP guestnet_peer_held_back_total Unicast frames of the peer that waited for room in a full ring, then went in.
# TYPE guestnet_peer_held_back_total counter
guestnet_peer_held_back_total{network="lab",slot="0",mac="52:54:00:00:00:00",kind="process",label="a"} 0
# HELP guestnet_peer_drops_total Frames, or copies of them, the peer did not send (tx) or receive (rx), by reason.
# TYPE guestnet_peer_drops_total counter
guestnet_peer_drops_total{network="lab",slot="0",mac="52:54:00:00:00:00",kind="process",label="a",direction="rx",reason="stale"} 1
guestnet_peer_drops_total{network="lab",slot="0",mac="52:54:00:00:00:00",kind="process",label="a",direction="tx",reason="ring_full"} 4
# HELP guestnet_peer_rx_queued_frames Frames waiting in the peer's receive ring.
# TYPE guestnet_peer_rx_queued_frames gauge
guestnet_peer_rx_queued_frames{network="lab",slot="0",mac="52:54:00:00:00:00",kind="process",label="a"} 2
# HELP guestnet_peer_quarantined Whether the peer is quarantined for misbehaviour.
# TYPE guestnet_peer_quarantined gauge
guestnet_peer_quarantined{network="lab",slot="0",mac="52:54:00:00:00:00",kind="process",label="a"} 0
# HELP guestnet_peer_link_down Whether the peer's link is down.
# TYPE guestnet_peer_link_down gauge
guestnet_peer_link_down{network="lab",slot="0",mac="52:54:00:00:00:00",kind="process",label="a"} 0
# HELP guestnet_peer_policy_info The peer's segment and policy as labels (always 1): its VLANs, native VLAN, isolation and MAC lock.
# TYPE guestnet_peer_policy_info gauge
guestnet_peer_policy_info{network="lab",slot="0",mac="52:54:00:00:00:00",kind="process",label="a",vlan_mode="trunk",vlans="all",native="1",isolated="false",lock_mac="false"} 1
# HELP guestnet_peer_rate_limit_bytes_per_second The limit on what the peer sends (--rate, given in bits per second), in bytes per second; 0: none.
# TYPE guestnet_peer_rate_limit_bytes_per_second gauge
guestnet_peer_rate_limit_bytes_per_second{network="lab",slot="0",mac="52:54:00:00:00:00",kind="process",label="a"} 0
"#;
        assert_eq!(render(&[network("lab", vec![peer(0, "a")])], &[]), expected);
    }

    #[test]
    fn nothing_to_show_is_an_empty_body() {
        assert_eq!(render(&[], &[]), "");
    }

    #[test]
    fn a_network_that_would_not_open_shows_as_closed() {
        let text = render(&[network("lab", Vec::new())], &["broken".to_string()]);
        assert!(
            text.starts_with(
                "# HELP guestnet_network_open Whether the network's region opened for this scrape (0: damaged or just removed).\n\
                 # TYPE guestnet_network_open gauge\n\
                 guestnet_network_open{network=\"lab\"} 1\n\
                 guestnet_network_open{network=\"broken\"} 0\n\
                 # HELP guestnet_network_peers_up "
            ),
            "{text}"
        );
        // Nothing else is said of it: there is nothing else to know.
        assert_eq!(text.matches("\"broken\"").count(), 1, "{text}");
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("a\\b\nc \"d\""), "a\\\\b\\nc \"d\"");
        let text = render(&[network("lab", vec![peer(3, "tap \"x\"\\y\nz")])], &[]);
        assert!(
            text.contains(
                "guestnet_peer_rx_packets_total{network=\"lab\",slot=\"3\",mac=\"52:54:00:00:00:03\",kind=\"process\",label=\"tap \\\"x\\\"\\\\y\\nz\"} 8\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn each_metric_is_described_once_and_its_samples_follow_together() {
        let mut networks = vec![
            network("a", vec![peer(0, "one"), peer(1, "two")]),
            network("b", vec![peer(0, "three")]),
        ];
        networks[1].ports = ports();
        let text = render(&networks, &[]);
        let mut described = std::collections::HashSet::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(described.insert(name.to_string()), "{name} described twice");
                current = name.to_string();
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(name, current);
                assert_eq!(name.ends_with("_total"), kind == "counter", "{line}");
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "sample away from its metric: {line}");
            }
        }
        assert_eq!(text.matches("guestnet_peer_rx_packets_total{").count(), 3);
    }

    fn ports() -> PortStatuses {
        let mut counters = CounterValues {
            tx_frames: 7,
            rx_no_room: 2,
            rejected_messages: 1,
            ..CounterValues::default()
        };
        counters.refused.bad_ring_size = 1;
        let remote = RemoteStatus {
            endpoint: "192.0.2.2:4789".parse().unwrap(),
            counters: VxlanCounters {
                rx_packets: 4,
                tx_packets: 5,
                ..VxlanCounters::default()
            },
            learned: vec![MacAddress([2, 0, 0, 0, 0, 9])],
        };
        PortStatuses {
            vxlan: vec![VxlanStatus {
                network: "b".to_string(),
                slot: 1,
                vni: Segments::One(42),
                local: "192.0.2.1:4789".parse().unwrap(),
                underlay_mtu: 1500,
                inner_mtu: 1450,
                max_learned: 1024,
                hashed_source_ports: false,
                receives_offloads: false,
                group: None,
                counters: VxlanCounters {
                    rx_packets: 4,
                    tx_packets: 5,
                    rx_unknown_remote: 3,
                    ..VxlanCounters::default()
                },
                remotes: vec![remote],
                segments: vec![SegmentStatus {
                    vni: 42,
                    vlan: None,
                    counters: VniCounters {
                        rx_packets: 4,
                        tx_packets: 5,
                        ..VniCounters::default()
                    },
                    learned: vec![MacAddress([2, 0, 0, 0, 0, 9])],
                }],
            }],
            vhost_user: vec![SocketStatus {
                pid: 100,
                socket: "/run/vm0.sock".into(),
                slot: Some(2),
                state: State::Running,
                acked_features: 0,
                acked_protocol_features: 0,
                queue_pairs: 1,
                queues: Vec::new(),
                counters,
            }],
            dhcp: vec![DhcpStatus {
                network: "b".to_string(),
                pid: 100,
                slot: 3,
                mac: MacAddress([2, 0, 0, 0, 0, 3]),
                address: "10.0.0.254".parse().unwrap(),
                subnet: "10.0.0.0/24".to_string(),
                range: "10.0.0.10-10.0.0.99".to_string(),
                domain: Some("lab.internal".to_string()),
                leases: 2,
                counters: crate::ports::dhcp::DhcpCounters {
                    acks: 2,
                    dns_refused: 1,
                    ..Default::default()
                },
            }],
        }
    }

    #[test]
    fn dhcp_servers_show_their_leases_and_counters() {
        let mut lab = network("b", Vec::new());
        lab.ports.dhcp = ports().dhcp;
        let text = render(&[lab], &[]);
        let server = r#"network="b",slot="3""#;
        for line in [
            "# TYPE guestnet_dhcp_leases gauge".to_string(),
            format!("guestnet_dhcp_leases{{{server}}} 2"),
            format!("guestnet_dhcp_acks_total{{{server}}} 2"),
            format!("guestnet_dhcp_dns_refused_total{{{server}}} 1"),
            format!("guestnet_dhcp_naks_total{{{server}}} 0"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }

    #[test]
    fn vhost_user_sockets_show_their_state_counters_and_refusals() {
        let mut lab = network("b", Vec::new());
        lab.ports.vhost_user = ports().vhost_user;
        let text = render(&[lab], &[]);
        let socket = "network=\"b\",socket=\"/run/vm0.sock\"";
        for line in [
            "# TYPE guestnet_vhost_user_state gauge".to_string(),
            format!("guestnet_vhost_user_state{{{socket},state=\"listening\"}} 0"),
            format!("guestnet_vhost_user_state{{{socket},state=\"running\"}} 1"),
            format!("guestnet_vhost_user_queue_pairs{{{socket}}} 1"),
            "# TYPE guestnet_vhost_user_tx_frames_total counter".to_string(),
            format!("guestnet_vhost_user_tx_frames_total{{{socket}}} 7"),
            format!("guestnet_vhost_user_rx_no_room_total{{{socket}}} 2"),
            format!("guestnet_vhost_user_rejected_messages_total{{{socket}}} 1"),
            format!(
                "guestnet_vhost_user_refused_messages_total{{{socket},reason=\"bad_ring_size\"}} 1"
            ),
            format!(
                "guestnet_vhost_user_refused_messages_total{{{socket},reason=\"polled_ring\"}} 0"
            ),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("guestnet_vxlan"), "{text}");
    }

    #[test]
    fn vxlan_ports_show_their_own_and_their_remotes_counters() {
        let mut lab = network("b", Vec::new());
        lab.ports.vxlan = ports().vxlan;
        let text = render(&[lab], &[]);
        let port = "network=\"b\",slot=\"1\",vni=\"42\"";
        let remote = format!("{port},remote=\"192.0.2.2:4789\"");
        for line in [
            format!("guestnet_vxlan_remotes{{{port}}} 1"),
            "# TYPE guestnet_vxlan_rx_unknown_remote_total counter".to_string(),
            format!("guestnet_vxlan_rx_unknown_remote_total{{{port}}} 3"),
            format!("guestnet_vxlan_tx_packets_total{{{port}}} 5"),
            format!("guestnet_vxlan_remote_rx_packets_total{{{remote}}} 4"),
            format!("guestnet_vxlan_remote_tx_packets_total{{{remote}}} 5"),
            format!("guestnet_vxlan_remote_learned_addresses{{{remote}}} 1"),
            format!("guestnet_vxlan_vni_rx_packets_total{{{port}}} 4"),
            format!("guestnet_vxlan_vni_learned_addresses{{{port}}} 1"),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("guestnet_vhost_user"), "{text}");
    }

    #[test]
    fn a_vxlan_port_with_a_vni_map_shows_each_vni_with_its_vlan() {
        let mut lab = network("b", Vec::new());
        let mut port = ports().vxlan.remove(0);
        port.vni = Segments::Map("10=1010,20=1020".parse().unwrap());
        port.segments = [(10, 1010, 3), (20, 1020, 0)]
            .into_iter()
            .map(|(vlan, vni, tx_packets)| SegmentStatus {
                vni,
                vlan: Some(vlan),
                counters: VniCounters {
                    tx_packets,
                    tx_bytes: 100 * tx_packets,
                    ..VniCounters::default()
                },
                learned: Vec::new(),
            })
            .collect();
        lab.ports.vxlan = vec![port];
        let text = render(&[lab], &[]);
        let port = "network=\"b\",slot=\"1\"";
        for line in [
            format!("guestnet_vxlan_remotes{{{port},vni=\"10=1010,20=1020\"}} 1"),
            "# TYPE guestnet_vxlan_vni_tx_packets_total counter".to_string(),
            format!("guestnet_vxlan_vni_tx_packets_total{{{port},vni=\"1010\",vlan=\"10\"}} 3"),
            format!("guestnet_vxlan_vni_tx_bytes_total{{{port},vni=\"1010\",vlan=\"10\"}} 300"),
            format!("guestnet_vxlan_vni_tx_packets_total{{{port},vni=\"1020\",vlan=\"20\"}} 0"),
            format!("guestnet_vxlan_vni_learned_addresses{{{port},vni=\"1020\",vlan=\"20\"}} 0"),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
