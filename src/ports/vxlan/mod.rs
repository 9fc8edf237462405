//! The VXLAN port: one network on several hosts, over the standard overlay (RFC 7348).
//!
//! The port joins the network as a single **uplink** peer and stands for everything on
//! the other hosts. It binds a UDP socket on the underlay and exchanges VXLAN datagrams
//! with a fixed list of remote endpoints (`--remote`) or over a multicast group (see
//! below). The other ends may be guestnet ports or any VTEP that speaks RFC 7348: the
//! Linux kernel's `vxlan` device, Open vSwitch.
//!
//! **Underlay → network** (the serving thread). Datagrams are taken in rounds of up to
//! [`RECEIVE_BATCH`]. Each is checked in order, and each refusal is counted by reason, on
//! the port and on the remote it came from: a datagram from an address that is not a
//! configured remote (`rx_unknown_remote`, see below), a header shorter than 8 bytes
//! (`rx_malformed`), the I flag clear (`rx_instance_flag_clear`), a VNI the port does not
//! carry (`rx_foreign_vni`), an inner frame that breaks the network's rules
//! (`rx_invalid_inner`; also counted as `invalid` on the port's peer, so the network's own
//! counters agree), and on a port with a VNI map an inner frame already tagged
//! (`rx_tagged_inner`). The inner source address of an accepted frame is learned against
//! its remote in its VNI, and the frame goes into the network, which learns the same
//! address behind the uplink peer.
//!
//! **How datagrams arrive.** A sender on this host — a container or a namespace behind a
//! Linux `vxlan` device over veth — leaves its inner TCP and UDP checksums to "hardware"
//! and sends TSO super-frames, and veth finishes neither: the datagrams cross with a
//! checksum field holding only the pseudo-header sum, and 64 KiB long. A UDP socket cannot
//! tell, and every such TCP segment would be dropped at the far end for its checksum. Over
//! IPv4 the port therefore reads what arrives over Ethernet links from a packet socket
//! (`AF_PACKET` with `PACKET_VNET_HDR`, which needs `CAP_NET_RAW`), where the kernel says
//! before each packet which checksum is still to compute and which segmentation still to
//! do; the port checks the outer headers itself and hands that work to the network as the
//! frame's virtio-net header (`NEEDS_CSUM`, GSO), which passes it on to receivers that take
//! those offloads and finishes it in software for the others (`inbound`). Datagrams over
//! other links (WireGuard, IP-in-IP), and all of them over IPv6 or without the capability,
//! come from the UDP socket as before, and `status` says which (`receives_offloads`). What
//! the packet socket sees are packets, not datagrams: a fragmented datagram is dropped
//! and counted (`rx_fragmented`), as RFC 7348 allows; the UDP socket gets it reassembled.
//!
//! **Network → underlay** (a second thread). Frames the uplink peer receives are looked
//! up in the port's table of remote addresses: a unicast address learned behind a remote
//! goes to that remote only; broadcast, multicast and unknown unicast are copied to every
//! remote (head-end replication). A frame that would not fit the underlay's MTU once
//! encapsulated is dropped and counted (`tx_too_big`), never fragmented: the inner MTU is
//! the underlay's minus 50 bytes (70 over IPv6). The UDP source port is a hash of the
//! inner frame's addresses ([`vxlan::source_port`]), so that underlay routers that spread
//! flows over several paths keep each inner conversation on one.
//!
//! **How datagrams leave.** A UDP socket sends every datagram from its one bound port, so
//! it cannot vary the source port per flow. Over IPv4 the port therefore sends through a
//! send-only raw socket (`IPPROTO_RAW`) and writes the outer IPv4 and UDP headers itself:
//! the hashed source port, the UDP checksum zero as RFC 7348 recommends, and Don't
//! Fragment set, so a datagram too big for a link on the way is refused rather than
//! fragmented. That needs `CAP_NET_RAW`; without it, or over IPv6, the port sends from its
//! UDP socket (source port = the bound port, fragmentation forbidden with
//! `IP_MTU_DISCOVER`) and `status` says so (`hashed_source_ports: false`).
//!
//! **Decisions where RFC 7348 leaves a choice.**
//! * Datagrams from addresses that are not configured remotes are dropped. The Linux
//!   device accepts them and learns their senders, but then anyone who can reach the
//!   underlay port can inject frames; a fixed peer list is what a user who typed it
//!   expects. Remotes are matched by IP address only, since VTEPs send from a hashed
//!   source port.
//! * The table of remote addresses holds at most `max_learned` entries. A frame from a new
//!   source address past the limit is dropped (`rx_too_many_sources`), as a switch port
//!   with a MAC limit does: delivering it would let a flood of made-up addresses fill the
//!   network's own learned table too. Addresses already learned keep working, and room
//!   comes back as entries age out. The default, [`DEFAULT_MAX_LEARNED`], is what the
//!   network itself learns behind one uplink peer, so that every address the port lets
//!   in is one the network can answer without flooding.
//! * Entries age out after [`VxlanOptions::ageing`] without traffic, as a bridge's do.
//!
//! **Several segments on one uplink** ([`Segments::Map`], `--vni-map 10=1010,20=1020`).
//! The port may carry one VNI, or map each of several 802.1Q VLANs to a VNI of its own: it
//! then joins the network as a trunk of exactly the mapped VLANs, sends a frame tagged VID
//! untagged in VNI map\[VID\], and gives a frame arriving in VNI v the tag of the VLAN that
//! maps to v (`segments`). Learned addresses are keyed by (VNI, MAC), so the same address
//! in two segments is two entries, and a flood stays in its VNI; the remotes (or the
//! group) are shared by every segment, as one underlay connects the hosts. Each segment's
//! traffic is counted on its own (`segments` in `status`).
//!
//! **Multicast underlay** ([`VxlanOptions::group`]). Instead of a list of remotes, the
//! port joins an IPv4 multicast group on one interface, as the Linux device's
//! `group ... dev ...` does: broadcast, multicast and unknown unicast are sent once, to
//! the group, and the underlay copies them. The group is the membership, so a datagram
//! from any sender is accepted, and each new sender becomes a remote (at most
//! [`MAX_GROUP_REMOTES`]; past that, `rx_unknown_remote`) to which learned unicast goes
//! directly. A sender heard from no more for [`VxlanOptions::ageing`] is retired, as the
//! addresses learned behind it have aged out by then (`remotes_aged`; its counts stay in
//! the port's totals), and its place goes to the next new sender: without that, senders
//! that came and went would hold the places for ever, and the group would refuse
//! newcomers once [`MAX_GROUP_REMOTES`] had ever spoken. The port's own datagrams are not
//! looped back to it. In `status`, remote 0 is the group itself and counts what was sent
//! to it.
//!
//! Counters live in memory in the port process; a [`StatusHandle`] reads them while the
//! port serves, and the command writes them to a status file that `guestnet status` shows.
//!
//! **Files.** `segments` is the VNI map and what it does to a frame's tag; `table` the
//! table of remote addresses (per VNI); `state` what the two threads
//! share and what `status` shows of it (remotes, counters); `underlay` the sockets, the
//! packet socket's filter, and the outer headers written for the raw one; `inbound` what
//! the serving thread reads from the sockets, and the outer headers it checks; `decap` the
//! serving thread (underlay → network); `encap` the sending thread (network → underlay). This file checks the
//! options, opens the port and starts the two threads.

mod decap;
mod encap;
mod inbound;
mod segments;
mod state;
mod table;
mod underlay;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::network::{JoinOptions, Network, PortKind};
use crate::network::{Receiver, Sender};
use crate::ports::socket::{Doorbell, PortError, io_error, label};
use crate::wire::ethernet::HEADER_LEN as ETHERNET_HEADER_LEN;
use crate::wire::vxlan;

use decap::Decapsulator;
use encap::Encapsulator;
use inbound::Inbound;
use state::{Remotes, State};
use underlay::{
    WayOut, forbid_fragmentation, join_group, leave_ethernet_to_packet_socket, open_packet_socket,
    open_raw_socket, overhead,
};

pub use decap::{RxDrop, Verdict, classify};
pub use inbound::{OuterFault, RECEIVE_BATCH};
pub use segments::{Outbound, Segment, Segments, VniMap, check_vni};
pub use state::{
    MAX_GROUP_REMOTES, RemoteStatus, SegmentStatus, StatusHandle, VniCounters, VxlanCounters,
    VxlanStatus,
};
pub use table::{DEFAULT_AGEING, DEFAULT_MAX_LEARNED, Learned, RemoteTable};

/// A multicast underlay: the group and the interface to join it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MulticastGroup {
    /// The IPv4 multicast group.
    pub address: Ipv4Addr,
    /// The interface to join it on and to send to it through.
    pub interface: String,
}

/// Options of a VXLAN port.
#[derive(Debug, Clone)]
pub struct VxlanOptions {
    /// The VXLAN network identifier (24 bits), or a map of VLANs to VNIs.
    pub segments: Segments,
    /// The local address and UDP port to bind.
    pub local: SocketAddr,
    /// The remote endpoints (address and destination UDP port).
    pub remotes: Vec<SocketAddr>,
    /// A multicast group instead of `remotes`.
    pub group: Option<MulticastGroup>,
    /// The underlay's MTU.
    pub underlay_mtu: usize,
    /// Bound on the table of remote addresses.
    pub max_learned: usize,
    /// How long a learned address lives without traffic, and on a group how long a
    /// sender stays a remote without a datagram.
    pub ageing: Duration,
    /// The 802.1Q VLAN the tunnel is an access port of (frames cross it untagged); by
    /// default it is a trunk of all VLANs with native VLAN 1, tags crossing as they are.
    /// Only with one VNI: a map names the port's VLANs itself.
    pub vlan: Option<u16>,
}

/// What the port's peer label says after `vxlan `: its VNI, or that it maps VLANs (the
/// map would not fit the label's 32 bytes; `status` shows the VLANs beside it, and the
/// map under the port), and its address.
fn label_detail(segments: &Segments, local: SocketAddr) -> String {
    match segments {
        Segments::One(vni) => format!("vni {vni} {local}"),
        Segments::Map(_) => format!("vni-map {local}"),
    }
}

/// Errors of the port's control path.
#[derive(Debug, thiserror::Error)]
pub enum VxlanPortError {
    /// The options cannot work.
    #[error("{0}")]
    BadOptions(String),
    /// A socket or the network failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// A VXLAN port bound to its socket and joined to the network.
#[derive(Debug)]
pub struct VxlanPort {
    network_name: String,
    network_mtu: usize,
    /// The network's largest frame (with a VLAN tag).
    max_frame_len: usize,
    socket: UdpSocket,
    /// The send-only raw socket, if the port may have one (IPv4 and `CAP_NET_RAW`).
    raw: Option<OwnedFd>,
    /// The packet socket datagrams arrive on, if the port may have one (IPv4 and
    /// `CAP_NET_RAW`); otherwise they arrive on `socket`.
    packet: Option<OwnedFd>,
    options: VxlanOptions,
    sender: Sender,
    receiver: Receiver,
    state: Arc<Mutex<State>>,
}

impl VxlanPort {
    /// Checks the options, binds the socket and joins the network as an uplink peer.
    pub fn open(network: &Network, options: VxlanOptions) -> Result<VxlanPort, VxlanPortError> {
        options
            .segments
            .check()
            .map_err(VxlanPortError::BadOptions)?;
        let vlans = options
            .segments
            .membership(options.vlan)
            .map_err(VxlanPortError::BadOptions)?;
        match (&options.group, options.remotes.is_empty()) {
            (None, true) => {
                return Err(VxlanPortError::BadOptions(
                    "give at least one --remote, or a --group".into(),
                ));
            }
            (Some(_), false) => {
                return Err(VxlanPortError::BadOptions(
                    "--group and --remote exclude each other".into(),
                ));
            }
            (Some(group), true) if !group.address.is_multicast() || !options.local.is_ipv4() => {
                return Err(VxlanPortError::BadOptions(format!(
                    "{} is not an IPv4 multicast group, or the local address is not IPv4",
                    group.address
                )));
            }
            _ => {}
        }
        if options
            .remotes
            .iter()
            .any(|r| r.is_ipv4() != options.local.is_ipv4())
        {
            return Err(VxlanPortError::BadOptions(
                "the remotes and the local address must all be IPv4 or all IPv6".into(),
            ));
        }
        let mut addresses: Vec<IpAddr> = options.remotes.iter().map(SocketAddr::ip).collect();
        addresses.sort();
        addresses.dedup();
        if addresses.len() != options.remotes.len() {
            // Datagrams are told apart by their sender's address alone (VTEPs send from
            // hashed ports), so two remotes on one address could not be.
            return Err(VxlanPortError::BadOptions(
                "two remotes share an address; give each address once".into(),
            ));
        }
        let overhead = overhead(&options.local);
        if options.underlay_mtu < overhead + 68 {
            return Err(VxlanPortError::BadOptions(format!(
                "an underlay MTU of {} leaves no room for frames after the {overhead}-byte overhead",
                options.underlay_mtu
            )));
        }
        // On a group the socket listens on every address: a socket bound to a unicast
        // address does not receive datagrams sent to a group.
        let bind = match options.group {
            Some(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), options.local.port()),
            None => options.local,
        };
        let socket = UdpSocket::bind(bind).map_err(io_error(format!("bind UDP {bind}")))?;
        let bound = socket
            .local_addr()
            .map_err(io_error("read the bound address"))?;
        let local = SocketAddr::new(options.local.ip(), bound.port());
        forbid_fragmentation(&socket, &local).map_err(io_error("forbid fragmentation"))?;
        let raw = match local {
            SocketAddr::V4(_) => open_raw_socket(),
            SocketAddr::V6(_) => None,
        };
        if let (Some(group), SocketAddr::V4(local)) = (&options.group, local) {
            join_group(
                &socket,
                raw.as_ref(),
                group.address,
                &group.interface,
                *local.ip(),
            )
            .map_err(io_error(format!(
                "join {} on {}",
                group.address, group.interface
            )))?;
        }
        let packet = match local {
            SocketAddr::V4(local) => {
                open_packet_socket(local, options.group.as_ref().map(|group| group.address))
            }
            SocketAddr::V6(_) => None,
        };
        if packet.is_some() {
            // A datagram that arrived before this is queued on both sockets and will be
            // read twice: at most the few that come while the port opens.
            leave_ethernet_to_packet_socket(&socket).map_err(io_error("filter the UDP socket"))?;
        }
        let options = VxlanOptions { local, ..options };
        let peer = network
            .join(JoinOptions {
                kind: PortKind::Vxlan,
                uplink: true,
                label: label("vxlan ", &label_detail(&options.segments, local)),
                vlans,
                ..JoinOptions::default()
            })
            .map_err(PortError::from)?;
        let (sender, receiver) = peer.split();
        let remotes = match &options.group {
            Some(group) => Remotes::on_group(group.address, options.local, options.ageing),
            None => Remotes::configured(options.remotes.clone(), options.local),
        };
        let state = State::new(
            RemoteTable::new(options.max_learned, options.ageing),
            remotes,
            &options.segments,
        );
        Ok(VxlanPort {
            network_name: network.name().to_string(),
            network_mtu: network.geometry().mtu as usize,
            max_frame_len: network.max_frame_len(),
            socket,
            raw,
            packet,
            options,
            sender,
            receiver,
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// The bound local address (with the port the system chose, if it was 0).
    pub fn local(&self) -> SocketAddr {
        self.options.local
    }

    /// The peer's slot.
    pub fn index(&self) -> u16 {
        self.sender.control().index()
    }

    /// The largest inner MTU that fits the underlay.
    pub fn inner_mtu(&self) -> usize {
        self.options.underlay_mtu - overhead(&self.options.local)
    }

    /// A handle to read the status while the port serves.
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle::new(
            Arc::clone(&self.state),
            VxlanStatus {
                network: self.network_name.clone(),
                slot: self.index(),
                vni: self.options.segments.clone(),
                local: self.options.local,
                underlay_mtu: self.options.underlay_mtu,
                inner_mtu: self.inner_mtu(),
                max_learned: self.options.max_learned,
                hashed_source_ports: self.raw.is_some(),
                receives_offloads: self.packet.is_some(),
                group: self.options.group.as_ref().map(|group| {
                    SocketAddr::new(IpAddr::V4(group.address), self.options.local.port())
                }),
                counters: VxlanCounters::default(),
                remotes: Vec::new(),
                segments: Vec::new(),
            },
        )
    }

    /// Serves until `stop` rings; the peer has left when this returns.
    pub fn serve(self, stop: &Doorbell) -> Result<(), VxlanPortError> {
        let VxlanPort {
            network_mtu,
            max_frame_len,
            socket,
            raw,
            packet,
            options,
            mut sender,
            receiver,
            state,
            ..
        } = self;
        let way_out =
            WayOut::new(raw, &socket, options.local).map_err(io_error("clone the UDP socket"))?;
        let stopping = AtomicBool::new(false);
        let max_inner = options.underlay_mtu - overhead(&options.local) + ETHERNET_HEADER_LEN;
        std::thread::scope(|scope| {
            let segments = &options.segments;
            let encapsulator =
                Encapsulator::new(receiver, way_out, segments, max_inner, &state, &stopping);
            let sending = scope.spawn(move || encapsulator.run());
            // A slot holds the largest valid datagram; a longer one is cut and flagged.
            let inbound = Inbound::new(packet.as_ref(), &socket, max_frame_len + vxlan::HEADER_LEN);
            let mut decapsulator =
                Decapsulator::new(&mut sender, inbound, segments, network_mtu, &state);
            let result = decapsulator.run(stop);
            stopping.store(true, Ordering::Relaxed);
            if sending.join().is_err() {
                tracing::error!("the VXLAN sending thread panicked");
            }
            result.map_err(VxlanPortError::from)
        })
    }
}
