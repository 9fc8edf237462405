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
//! (`rx_malformed`), the I flag clear (`rx_instance_flag_clear`), another VNI
//! (`rx_foreign_vni`), an inner frame that breaks the network's rules (`rx_invalid_inner`;
//! also counted as `invalid` on the port's peer, so the network's own counters agree). The
//! inner source address of an accepted frame is learned against its remote, and the frame
//! goes into the network, which learns the same address behind the uplink peer.
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
//!   comes back as entries age out.
//! * Entries age out after [`VxlanOptions::ageing`] without traffic, as a bridge's do.
//!
//! **Multicast underlay** ([`VxlanOptions::group`]). Instead of a list of remotes, the
//! port joins an IPv4 multicast group on one interface, as the Linux device's
//! `group ... dev ...` does: broadcast, multicast and unknown unicast are sent once, to
//! the group, and the underlay copies them. The group is the membership, so a datagram
//! from any sender is accepted, and each new sender becomes a remote (at most
//! [`MAX_GROUP_REMOTES`]; past that, `rx_unknown_remote`) to which learned unicast goes
//! directly. The port's own datagrams are not looped back to it. In `status`, remote 0 is
//! the group itself and counts what was sent to it.
//!
//! Counters live in memory in the port process; a [`StatusHandle`] reads them while the
//! port serves, and the command writes them to a status file that `guestnet status` shows.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::SendFlags;
use serde::Serialize;

use crate::network::counters::DropReason;
use crate::network::{JoinOptions, Network, PortKind, monotonic_ns};
use crate::network::{Receiver, Sender};
use crate::wire::ethernet::{HEADER_LEN as ETHERNET_HEADER_LEN, validate_frame};
use crate::wire::ipv4::{self, Ipv4Packet, Ipv4Repr};
use crate::wire::udp::{self, UdpPacket, UdpRepr};
use crate::wire::vxlan::{
    self, HEADER_LEN, OVERHEAD_IPV4, OVERHEAD_IPV6, VxlanError, VxlanPacket, VxlanRepr,
};
use crate::wire::{EthernetFrame, MacAddress};

use super::socket::{DatagramBatch, Doorbell, FrameBatch, PortError, io_error};

/// Most datagrams taken from the socket per round.
pub const RECEIVE_BATCH: usize = 64;

/// Frames taken from the peer's ring per round.
const SEND_BUDGET: usize = 64;

/// Longest the sending thread sleeps on its ring before it looks whether the port stops.
const SENDER_WAIT: Duration = Duration::from_millis(200);

/// Longest the serving thread sleeps before it ages the table.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// Default bound on learned remote addresses.
pub const DEFAULT_MAX_LEARNED: usize = 4096;

/// Default ageing time of a learned address (as the Linux bridge and vxlan device).
pub const DEFAULT_AGEING: Duration = Duration::from_secs(300);

/// Most senders a port on a multicast group takes as remotes.
pub const MAX_GROUP_REMOTES: usize = 1024;

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
    /// The VXLAN network identifier (24 bits).
    pub vni: u32,
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
    /// How long a learned address lives without traffic.
    pub ageing: Duration,
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

/// The counters of a remote endpoint, or of the whole port.
///
/// Every datagram or frame the port refuses bumps exactly one `rx_*`/`tx_*` drop counter
/// here. `rx_unknown_remote` and `tx_too_big` are counted on the port only (the first has
/// no remote; the second is refused before any remote is chosen).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct VxlanCounters {
    /// Datagrams accepted and handed to the network.
    pub rx_packets: u64,
    /// Inner-frame bytes of those.
    pub rx_bytes: u64,
    /// Datagrams sent.
    pub tx_packets: u64,
    /// Inner-frame bytes of those.
    pub tx_bytes: u64,
    /// Dropped: shorter than the VXLAN header.
    pub rx_malformed: u64,
    /// Dropped: the I flag was clear.
    pub rx_instance_flag_clear: u64,
    /// Dropped: another VNI.
    pub rx_foreign_vni: u64,
    /// Dropped: the inner frame broke the network's rules (runt, giant, multicast source).
    pub rx_invalid_inner: u64,
    /// Dropped: from an address that is not a configured remote.
    pub rx_unknown_remote: u64,
    /// Dropped: a new inner source address, and the table of remote addresses was full.
    pub rx_too_many_sources: u64,
    /// Dropped: too big for the underlay's MTU once encapsulated.
    pub tx_too_big: u64,
    /// Dropped: the socket refused the send.
    pub tx_errors: u64,
}

impl VxlanCounters {
    fn add(&mut self, other: &VxlanCounters) {
        self.rx_packets += other.rx_packets;
        self.rx_bytes += other.rx_bytes;
        self.tx_packets += other.tx_packets;
        self.tx_bytes += other.tx_bytes;
        self.rx_malformed += other.rx_malformed;
        self.rx_instance_flag_clear += other.rx_instance_flag_clear;
        self.rx_foreign_vni += other.rx_foreign_vni;
        self.rx_invalid_inner += other.rx_invalid_inner;
        self.rx_unknown_remote += other.rx_unknown_remote;
        self.rx_too_many_sources += other.rx_too_many_sources;
        self.tx_too_big += other.tx_too_big;
        self.tx_errors += other.tx_errors;
    }
}

/// What became of an address offered to the [`RemoteTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A new entry.
    New,
    /// Known behind the same remote; its age was reset.
    Refreshed,
    /// Known behind another remote; it moved.
    Moved,
    /// New, but the table is full: not learned.
    Full,
}

/// Which remote each inner MAC address sits behind, with ageing and a size bound.
///
/// Time comes in as an argument (monotonic nanoseconds), so tests drive it.
#[derive(Debug, Clone)]
pub struct RemoteTable {
    entries: HashMap<MacAddress, Entry>,
    limit: usize,
    ageing_ns: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    remote: usize,
    seen_ns: u64,
}

impl RemoteTable {
    /// An empty table of at most `limit` entries that live `ageing` without traffic.
    pub fn new(limit: usize, ageing: Duration) -> RemoteTable {
        RemoteTable {
            entries: HashMap::new(),
            limit,
            ageing_ns: u64::try_from(ageing.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Records that `mac` was seen behind `remote` at `now_ns`.
    pub fn learn(&mut self, mac: MacAddress, remote: usize, now_ns: u64) -> Learned {
        if let Some(entry) = self.entries.get_mut(&mac) {
            let moved = entry.remote != remote;
            *entry = Entry {
                remote,
                seen_ns: now_ns,
            };
            return if moved {
                Learned::Moved
            } else {
                Learned::Refreshed
            };
        }
        if self.entries.len() >= self.limit {
            // Full of live entries? Make room from expired ones first.
            self.expire(now_ns);
            if self.entries.len() >= self.limit {
                return Learned::Full;
            }
        }
        self.entries.insert(
            mac,
            Entry {
                remote,
                seen_ns: now_ns,
            },
        );
        Learned::New
    }

    /// The remote `mac` sits behind, unless unknown or expired.
    pub fn lookup(&self, mac: MacAddress, now_ns: u64) -> Option<usize> {
        self.entries
            .get(&mac)
            .filter(|entry| !self.expired(entry, now_ns))
            .map(|entry| entry.remote)
    }

    /// Forgets expired entries.
    pub fn expire(&mut self, now_ns: u64) {
        let ageing_ns = self.ageing_ns;
        self.entries
            .retain(|_, entry| now_ns.saturating_sub(entry.seen_ns) < ageing_ns);
    }

    /// Number of entries (expired ones included until the next [`expire`](Self::expire)).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The live addresses behind each of `remotes` remotes, sorted; one pass over the
    /// table, so `status` costs the same however many remotes there are.
    pub fn by_remote(&self, remotes: usize, now_ns: u64) -> Vec<Vec<MacAddress>> {
        let mut lists = vec![Vec::new(); remotes];
        for (mac, entry) in &self.entries {
            if let Some(list) = lists.get_mut(entry.remote)
                && !self.expired(entry, now_ns)
            {
                list.push(*mac);
            }
        }
        for list in &mut lists {
            list.sort();
        }
        lists
    }

    fn expired(&self, entry: &Entry, now_ns: u64) -> bool {
        now_ns.saturating_sub(entry.seen_ns) >= self.ageing_ns
    }
}

/// A remote endpoint as `status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RemoteStatus {
    /// Address and destination port.
    pub endpoint: SocketAddr,
    /// Its counters.
    pub counters: VxlanCounters,
    /// Inner addresses learned behind it.
    pub learned: Vec<MacAddress>,
}

/// The port as `status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct VxlanStatus {
    /// The network's name.
    pub network: String,
    /// The port's peer slot.
    pub slot: u16,
    /// The VNI.
    pub vni: u32,
    /// The bound local address.
    pub local: SocketAddr,
    /// The underlay's MTU.
    pub underlay_mtu: usize,
    /// The largest inner MTU that fits the underlay.
    pub inner_mtu: usize,
    /// The bound on learned addresses.
    pub max_learned: usize,
    /// Whether datagrams leave from a source port hashed from the inner frame (a raw
    /// socket) or from the bound port (a UDP socket; no `CAP_NET_RAW`, or IPv6).
    pub hashed_source_ports: bool,
    /// The multicast group, if the port uses one; it is then remote 0.
    pub group: Option<SocketAddr>,
    /// Counters of the whole port (the remotes' summed, plus what has no remote).
    pub counters: VxlanCounters,
    /// The remotes.
    pub remotes: Vec<RemoteStatus>,
}

/// What both threads share: the table, the remotes and the counters.
#[derive(Debug)]
struct State {
    table: RemoteTable,
    remotes: Remotes,
    /// What is counted on no remote.
    port: VxlanCounters,
}

/// The remote endpoints and their counters. Indices are stable: remotes are only ever
/// added (on a multicast group), never removed, so the table and the sending thread may
/// hold an index across the lock.
#[derive(Debug)]
struct Remotes {
    endpoints: Vec<SocketAddr>,
    counters: Vec<VxlanCounters>,
    /// On a multicast group: remote 0 is the group, and senders are admitted as they come.
    group: bool,
    /// The port's own address, never admitted as a remote.
    own: IpAddr,
    /// The UDP port admitted senders are sent to.
    port: u16,
}

impl Remotes {
    /// The configured remotes, or the group alone.
    fn new(options: &VxlanOptions) -> Remotes {
        let endpoints = match &options.group {
            Some(group) => vec![SocketAddr::new(
                IpAddr::V4(group.address),
                options.local.port(),
            )],
            None => options.remotes.clone(),
        };
        Remotes {
            counters: vec![VxlanCounters::default(); endpoints.len()],
            endpoints,
            group: options.group.is_some(),
            own: options.local.ip(),
            port: options.local.port(),
        }
    }

    /// The remote a datagram from `from` came from; on a group, a new sender is admitted
    /// while there is room.
    fn find_or_admit(&mut self, from: IpAddr) -> Option<usize> {
        // On a group, remote 0 is the group address, which never sends.
        let first = usize::from(self.group);
        if let Some(found) = self.endpoints[first.min(self.endpoints.len())..]
            .iter()
            .position(|endpoint| endpoint.ip() == from)
        {
            return Some(first + found);
        }
        // No host sends from a multicast or unspecified address; the first cannot be
        // answered, and admitting either would let a forged datagram claim the group.
        let impossible = from.is_multicast() || from.is_unspecified();
        if !self.group || impossible || from == self.own || self.endpoints.len() > MAX_GROUP_REMOTES
        {
            return None;
        }
        self.endpoints.push(SocketAddr::new(from, self.port));
        self.counters.push(VxlanCounters::default());
        Some(self.endpoints.len() - 1)
    }

    /// The remotes a flooded frame goes to: the group, or every remote.
    fn flood(&self) -> Range<usize> {
        if self.group {
            0..1
        } else {
            0..self.endpoints.len()
        }
    }
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
    options: VxlanOptions,
    sender: Sender,
    receiver: Receiver,
    state: Arc<Mutex<State>>,
}

/// A handle that reads a running port's status from another thread.
#[derive(Debug, Clone)]
pub struct StatusHandle {
    state: Arc<Mutex<State>>,
    template: VxlanStatus,
}

impl StatusHandle {
    /// The port's status now.
    pub fn status(&self) -> VxlanStatus {
        let now = monotonic_ns();
        let state = lock(&self.state);
        let mut status = self.template.clone();
        status.counters = state.port;
        let remotes = &state.remotes;
        let learned = state.table.by_remote(remotes.endpoints.len(), now);
        for ((&endpoint, counters), learned) in
            remotes.endpoints.iter().zip(&remotes.counters).zip(learned)
        {
            status.counters.add(counters);
            status.remotes.push(RemoteStatus {
                endpoint,
                counters: *counters,
                learned,
            });
        }
        status
    }
}

/// Takes the lock even if the other thread panicked while holding it: the counters stay
/// usable, and a panic there is reported by the thread's join.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl VxlanPort {
    /// Checks the options, binds the socket and joins the network as an uplink peer.
    pub fn open(network: &Network, options: VxlanOptions) -> Result<VxlanPort, VxlanPortError> {
        if options.vni > vxlan::MAX_VNI {
            return Err(VxlanPortError::BadOptions(format!(
                "VNI {} does not fit in 24 bits",
                options.vni
            )));
        }
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
            join_group(&socket, raw.as_ref(), group, *local.ip()).map_err(io_error(format!(
                "join {} on {}",
                group.address, group.interface
            )))?;
        }
        let options = VxlanOptions { local, ..options };
        let peer = network
            .join(JoinOptions {
                kind: PortKind::Vxlan,
                uplink: true,
                label: super::socket::label("vxlan ", &format!("vni {} {}", options.vni, local)),
                ..JoinOptions::default()
            })
            .map_err(PortError::from)?;
        let (sender, receiver) = peer.split();
        let state = State {
            table: RemoteTable::new(options.max_learned, options.ageing),
            remotes: Remotes::new(&options),
            port: VxlanCounters::default(),
        };
        Ok(VxlanPort {
            network_name: network.name().to_string(),
            network_mtu: network.geometry().mtu as usize,
            max_frame_len: network.max_frame_len(),
            socket,
            raw,
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
        StatusHandle {
            state: Arc::clone(&self.state),
            template: VxlanStatus {
                network: self.network_name.clone(),
                slot: self.index(),
                vni: self.options.vni,
                local: self.options.local,
                underlay_mtu: self.options.underlay_mtu,
                inner_mtu: self.inner_mtu(),
                max_learned: self.options.max_learned,
                hashed_source_ports: self.raw.is_some(),
                group: self.options.group.as_ref().map(|group| {
                    SocketAddr::new(IpAddr::V4(group.address), self.options.local.port())
                }),
                counters: VxlanCounters::default(),
                remotes: Vec::new(),
            },
        }
    }

    /// Serves until `stop` rings; the peer has left when this returns.
    pub fn serve(self, stop: &Doorbell) -> Result<(), VxlanPortError> {
        let VxlanPort {
            network_mtu,
            max_frame_len,
            socket,
            raw,
            options,
            mut sender,
            receiver,
            state,
            ..
        } = self;
        let way_out = match raw {
            Some(raw) => WayOut::Raw {
                socket: raw,
                source: match options.local {
                    SocketAddr::V4(local) => *local.ip(),
                    SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
                },
            },
            None => WayOut::Udp(
                socket
                    .try_clone()
                    .map_err(io_error("clone the UDP socket"))?,
            ),
        };
        let stopping = AtomicBool::new(false);
        let max_inner = options.underlay_mtu - overhead(&options.local) + ETHERNET_HEADER_LEN;
        std::thread::scope(|scope| {
            let encapsulator = Encapsulator {
                receiver,
                way_out,
                vni: options.vni,
                max_inner,
                state: &state,
                stopping: &stopping,
            };
            let sending = scope.spawn(move || encapsulator.run());
            let mut decapsulator = Decapsulator {
                sender: &mut sender,
                socket: &socket,
                vni: options.vni,
                network_mtu,
                state: &state,
                // A slot holds the largest valid datagram; a longer one is cut and flagged.
                round: DatagramBatch::new(RECEIVE_BATCH, max_frame_len + HEADER_LEN),
                batch: FrameBatch::default(),
            };
            let result = decapsulator.run(stop);
            stopping.store(true, Ordering::Relaxed);
            if sending.join().is_err() {
                tracing::error!("the VXLAN sending thread panicked");
            }
            result
        })
    }
}

/// Sets "don't fragment" on the UDP socket: a datagram too big for the route fails
/// (`EMSGSIZE`, counted as a send error) instead of leaving in pieces.
fn forbid_fragmentation(socket: &UdpSocket, local: &SocketAddr) -> std::io::Result<()> {
    use rustix::net::sockopt::{
        Ipv4PathMtuDiscovery, Ipv6PathMtuDiscovery, set_ip_mtu_discover, set_ipv6_mtu_discover,
    };
    match local {
        SocketAddr::V4(_) => set_ip_mtu_discover(socket, Ipv4PathMtuDiscovery::DO)?,
        SocketAddr::V6(_) => set_ipv6_mtu_discover(socket, Ipv6PathMtuDiscovery::DO)?,
    }
    Ok(())
}

/// Joins `group` on its interface, sends to it through that interface, and keeps the
/// port's own datagrams to the group from coming back to it.
fn join_group(
    socket: &UdpSocket,
    raw: Option<&OwnedFd>,
    group: &MulticastGroup,
    local: Ipv4Addr,
) -> std::io::Result<()> {
    use rustix::net::sockopt::{
        set_ip_add_membership_with_ifindex, set_ip_multicast_if_with_ifindex, set_ip_multicast_loop,
    };
    let ifindex = rustix::net::netdevice::name_to_index(socket, &group.interface)?;
    set_ip_add_membership_with_ifindex(socket, &group.address, &local, ifindex)?;
    set_ip_multicast_if_with_ifindex(socket, &group.address, &local, ifindex)?;
    set_ip_multicast_loop(socket, false)?;
    if let Some(raw) = raw {
        set_ip_multicast_if_with_ifindex(raw, &group.address, &local, ifindex)?;
        set_ip_multicast_loop(raw, false)?;
    }
    Ok(())
}

/// A send-only IPv4 raw socket, or `None` (with a note in the log) if the process may
/// not have one.
fn open_raw_socket() -> Option<OwnedFd> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, ipproto};
    match rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        Some(ipproto::RAW),
    ) {
        Ok(socket) => Some(socket),
        Err(e) => {
            tracing::info!(error = %e, "no raw socket: datagrams leave from the bound UDP port, not a per-flow source port");
            None
        }
    }
}

/// Room before the VXLAN header for the outer IPv4 and UDP headers the raw socket needs.
const OUTER_HEADROOM: usize = ipv4::HEADER_LEN + udp::HEADER_LEN;

/// Writes the outer IPv4 and UDP headers in front of a VXLAN datagram for a raw
/// (`IP_HDRINCL`) socket. The kernel fills in the IPv4 checksum and identification
/// (raw(7)); the UDP checksum is zero, as RFC 7348 recommends over IPv4.
fn emit_outer_headers(
    headroom: &mut [u8; OUTER_HEADROOM],
    source: Ipv4Addr,
    destination: SocketAddrV4,
    source_port: u16,
    vxlan_len: usize,
) {
    // As the Linux device: one hop to a multicast group (the underlay segment), the usual
    // default otherwise.
    let ttl = if destination.ip().is_multicast() {
        1
    } else {
        64
    };
    let udp = UdpRepr {
        source_port,
        destination_port: destination.port(),
        payload_len: vxlan_len,
    };
    let ip = Ipv4Repr {
        source,
        destination: *destination.ip(),
        protocol: ipv4::PROTOCOL_UDP,
        payload_len: udp.header_len() + vxlan_len,
        ttl,
        // A datagram too big for a link on the way is refused, never fragmented.
        dont_fragment: true,
    };
    let (ip_header, udp_header) = headroom.split_at_mut(ipv4::HEADER_LEN);
    ip.emit(&mut Ipv4Packet::new_unchecked(ip_header));
    udp.emit(&mut UdpPacket::new_unchecked(udp_header));
}

/// The encapsulation overhead for the underlay's address family.
fn overhead(local: &SocketAddr) -> usize {
    if local.is_ipv4() {
        OVERHEAD_IPV4
    } else {
        OVERHEAD_IPV6
    }
}

/// Underlay → network, on the serving thread.
struct Decapsulator<'a> {
    sender: &'a mut Sender,
    socket: &'a UdpSocket,
    vni: u32,
    network_mtu: usize,
    state: &'a Mutex<State>,
    /// The round's datagrams, one slot each, with the address they came from.
    round: DatagramBatch<SocketAddr>,
    batch: FrameBatch,
}

/// What one datagram turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// An inner frame to deliver, from remote `remote`.
    Deliver { remote: usize },
    /// From no configured remote.
    UnknownRemote,
    /// Refused, counted on `remote`.
    Refused { remote: usize, reason: RxDrop },
}

/// Why a datagram from a known remote was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxDrop {
    Malformed,
    InstanceFlagClear,
    ForeignVni,
    InvalidInner,
}

/// What woke the serving thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Stop,
    Datagrams,
    Housekeeping,
}

impl Decapsulator<'_> {
    fn run(&mut self, stop: &Doorbell) -> Result<(), VxlanPortError> {
        loop {
            match wait_for_event(self.socket, stop).map_err(io_error("wait for datagrams"))? {
                Event::Stop => return Ok(()),
                Event::Datagrams => self.receive_round(),
                Event::Housekeeping => lock(self.state).table.expire(monotonic_ns()),
            }
        }
    }

    /// Takes the datagrams waiting, checks each, and sends the good frames as one batch.
    fn receive_round(&mut self) {
        self.round.receive(self.socket, |from| {
            from.and_then(|a| SocketAddr::try_from(a).ok())
        });
        let now = monotonic_ns();
        let mut state = lock(self.state);
        self.batch.clear();
        let mut refused_inner = false;
        for datagram in self.round.datagrams() {
            let bytes = self.round.bytes(datagram);
            let remote = state.remotes.find_or_admit(datagram.from.ip());
            let verdict = classify(remote, self.vni, self.network_mtu, bytes, datagram.oversize);
            match state.account(verdict, bytes, now) {
                Some(inner) => self.batch.push(inner),
                None if matches!(
                    verdict,
                    Verdict::Refused {
                        reason: RxDrop::InvalidInner,
                        ..
                    }
                ) =>
                {
                    // The network's own counters should agree with ours.
                    self.sender.count_drop(DropReason::Invalid);
                    refused_inner = true;
                }
                None => {}
            }
        }
        drop(state);
        if !self.batch.is_empty() {
            self.sender.send_batch(self.batch.iter());
        } else if refused_inner {
            self.sender.flush();
        }
    }
}

impl State {
    /// Counts a judged datagram, learns its inner source if it is delivered, and returns
    /// the inner frame to deliver, if any.
    fn account<'d>(
        &mut self,
        verdict: Verdict,
        datagram: &'d [u8],
        now_ns: u64,
    ) -> Option<&'d [u8]> {
        let (remote, reason) = match verdict {
            Verdict::UnknownRemote => {
                self.port.rx_unknown_remote += 1;
                return None;
            }
            Verdict::Refused { remote, reason } => (remote, reason),
            Verdict::Deliver { remote } => {
                let inner = datagram.get(HEADER_LEN..)?;
                let source = EthernetFrame::new_checked(inner).ok()?.source();
                let learned = self.table.learn(source, remote, now_ns);
                let counters = self.remotes.counters.get_mut(remote)?;
                if learned == Learned::Full {
                    counters.rx_too_many_sources += 1;
                    return None;
                }
                counters.rx_packets += 1;
                counters.rx_bytes += inner.len() as u64;
                return Some(inner);
            }
        };
        let counters = self.remotes.counters.get_mut(remote)?;
        match reason {
            RxDrop::Malformed => counters.rx_malformed += 1,
            RxDrop::InstanceFlagClear => counters.rx_instance_flag_clear += 1,
            RxDrop::ForeignVni => counters.rx_foreign_vni += 1,
            RxDrop::InvalidInner => counters.rx_invalid_inner += 1,
        }
        None
    }
}

/// Decides what one datagram from `remote` (`None`: no remote of ours) is. `oversize`:
/// the socket cut it short.
fn classify(
    remote: Option<usize>,
    vni: u32,
    network_mtu: usize,
    datagram: &[u8],
    oversize: bool,
) -> Verdict {
    let Some(remote) = remote else {
        return Verdict::UnknownRemote;
    };
    let refused = |reason| Verdict::Refused { remote, reason };
    let packet = match VxlanPacket::new_checked(datagram) {
        Ok(packet) => packet,
        Err(_) => return refused(RxDrop::Malformed),
    };
    match VxlanRepr::parse(&packet) {
        Err(VxlanError::Truncated) => return refused(RxDrop::Malformed),
        Err(VxlanError::InstanceFlagClear) => return refused(RxDrop::InstanceFlagClear),
        Ok(repr) if repr.vni != vni => return refused(RxDrop::ForeignVni),
        Ok(_) => {}
    }
    if oversize || validate_frame(packet.payload(), network_mtu).is_err() {
        return refused(RxDrop::InvalidInner);
    }
    Verdict::Deliver { remote }
}

/// Network → underlay, on its own thread.
struct Encapsulator<'a> {
    receiver: Receiver,
    way_out: WayOut,
    vni: u32,
    /// Longest inner frame that fits the underlay.
    max_inner: usize,
    state: &'a Mutex<State>,
    stopping: &'a AtomicBool,
}

/// The socket datagrams leave by.
enum WayOut {
    /// A raw IPv4 socket: we write the outer headers, with a per-flow source port.
    Raw {
        socket: OwnedFd,
        /// The outer source address (unspecified: the kernel picks it).
        source: Ipv4Addr,
    },
    /// The bound UDP socket: the source port is the bound one.
    Udp(UdpSocket),
}

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// To one remote: its address was learned there.
    One(usize),
    /// To every remote.
    All,
    /// Nowhere: too big for the underlay.
    TooBig,
}

impl Encapsulator<'_> {
    fn run(mut self) {
        let mut batch = FrameBatch::default();
        let mut targets = Vec::with_capacity(SEND_BUDGET);
        let mut datagram = Vec::new();
        // Copies of the remotes, taken under the lock each round, so that sends need none.
        let mut endpoints = Vec::new();
        let mut flood = 0..0;
        let mut counted = Vec::new();
        while !self.stopping.load(Ordering::Relaxed) {
            if !self.receiver.wait(SENDER_WAIT) {
                continue;
            }
            batch.clear();
            self.receiver
                .receive(SEND_BUDGET, |frame| batch.push(frame));
            // Decide under the lock, send without it: the serving thread learns meanwhile.
            targets.clear();
            let now = monotonic_ns();
            {
                let state = lock(self.state);
                targets.extend(
                    batch
                        .iter()
                        .map(|frame| target(&state.table, self.max_inner, frame, now)),
                );
                endpoints.clone_from(&state.remotes.endpoints);
                flood = state.remotes.flood();
            }
            let mut too_big = 0;
            counted.clear();
            counted.resize(endpoints.len(), VxlanCounters::default());
            for (frame, &target) in batch.iter().zip(&targets) {
                let remotes = match target {
                    Target::TooBig => {
                        too_big += 1;
                        continue;
                    }
                    Target::One(remote) => remote..remote + 1,
                    Target::All => flood.clone(),
                };
                for remote in remotes {
                    if let (Some(&endpoint), Some(counters)) =
                        (endpoints.get(remote), counted.get_mut(remote))
                    {
                        self.send(&mut datagram, frame, endpoint, counters);
                    }
                }
            }
            let mut state = lock(self.state);
            state.port.tx_too_big += too_big;
            for (total, round) in state.remotes.counters.iter_mut().zip(&counted) {
                total.add(round);
            }
        }
    }

    /// Encapsulates `frame` and sends it to `endpoint`, counting the outcome.
    ///
    /// `datagram` is scratch space: outer headroom, VXLAN header, frame.
    fn send(
        &self,
        datagram: &mut Vec<u8>,
        frame: &[u8],
        endpoint: SocketAddr,
        counters: &mut VxlanCounters,
    ) {
        datagram.clear();
        datagram.resize(OUTER_HEADROOM + HEADER_LEN, 0);
        VxlanRepr { vni: self.vni }.emit(&mut VxlanPacket::new_unchecked(
            &mut datagram[OUTER_HEADROOM..],
        ));
        datagram.extend_from_slice(frame);
        let sent = match (&self.way_out, endpoint) {
            (WayOut::Raw { socket, source }, SocketAddr::V4(destination)) => {
                let vxlan_len = datagram.len() - OUTER_HEADROOM;
                let mut headroom = [0u8; OUTER_HEADROOM];
                emit_outer_headers(
                    &mut headroom,
                    *source,
                    destination,
                    vxlan::source_port(frame),
                    vxlan_len,
                );
                datagram[..OUTER_HEADROOM].copy_from_slice(&headroom);
                // A raw socket's address carries no port: the UDP header has it.
                let to = SocketAddrV4::new(*destination.ip(), 0);
                rustix::net::sendto(socket, datagram, SendFlags::empty(), &to)
                    .map(drop)
                    .map_err(std::io::Error::from)
            }
            (WayOut::Raw { .. }, SocketAddr::V6(_)) => Err(std::io::Error::other(
                "an IPv6 remote on an IPv4 raw socket",
            )),
            (WayOut::Udp(socket), endpoint) => socket
                .send_to(&datagram[OUTER_HEADROOM..], endpoint)
                .map(drop),
        };
        match sent {
            Ok(()) => {
                counters.tx_packets += 1;
                counters.tx_bytes += frame.len() as u64;
            }
            Err(e) => {
                tracing::debug!(%endpoint, error = %e, "sending a VXLAN datagram failed");
                counters.tx_errors += 1;
            }
        }
    }
}

/// Where `frame` goes: the remote its destination was learned behind, or every remote.
fn target(table: &RemoteTable, max_inner: usize, frame: &[u8], now_ns: u64) -> Target {
    if frame.len() > max_inner {
        return Target::TooBig;
    }
    let Ok(view) = EthernetFrame::new_checked(frame) else {
        // The ring hands only checked frames; a short one is still not worth a crash.
        return Target::TooBig;
    };
    let destination = view.destination();
    if destination.is_multicast() {
        return Target::All;
    }
    match table.lookup(destination, now_ns) {
        Some(remote) => Target::One(remote),
        None => Target::All,
    }
}

/// Waits for the stop bell or datagrams, at most [`HOUSEKEEPING`].
fn wait_for_event(socket: &UdpSocket, stop: &Doorbell) -> std::io::Result<Event> {
    use rustix::event::{PollFd, PollFlags, poll};
    let timeout = rustix::time::Timespec {
        tv_sec: HOUSEKEEPING.as_secs() as i64,
        tv_nsec: 0,
    };
    loop {
        let mut fds = [
            PollFd::new(stop, PollFlags::IN),
            PollFd::new(socket, PollFlags::IN),
        ];
        let ready = match poll(&mut fds, Some(&timeout)) {
            Ok(ready) => ready,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if ready == 0 {
            return Ok(Event::Housekeeping);
        }
        if !fds[0].revents().is_empty() {
            return Ok(Event::Stop);
        }
        if !fds[1].revents().is_empty() {
            return Ok(Event::Datagrams);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn mac(last: u8) -> MacAddress {
        MacAddress::new([0x02, 0, 0, 0, 0, last])
    }

    #[test]
    fn learned_addresses_age_out() {
        let mut table = RemoteTable::new(16, Duration::from_secs(10));
        assert_eq!(table.learn(mac(1), 0, 0), Learned::New);
        assert_eq!(table.lookup(mac(1), 9 * SECOND), Some(0));
        assert_eq!(table.lookup(mac(1), 10 * SECOND), None);
        // Traffic refreshes the age.
        assert_eq!(table.learn(mac(1), 0, 9 * SECOND), Learned::Refreshed);
        assert_eq!(table.lookup(mac(1), 18 * SECOND), Some(0));
        table.expire(19 * SECOND);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn an_address_moves_to_the_remote_it_last_came_from() {
        let mut table = RemoteTable::new(16, DEFAULT_AGEING);
        table.learn(mac(1), 0, 0);
        assert_eq!(table.learn(mac(1), 2, SECOND), Learned::Moved);
        assert_eq!(table.lookup(mac(1), SECOND), Some(2));
        assert_eq!(
            table.by_remote(3, SECOND),
            vec![Vec::new(), Vec::new(), vec![mac(1)]]
        );
        // Expired entries are not listed, and a remote index past the list is ignored.
        table.learn(mac(2), 7, SECOND);
        assert_eq!(
            table.by_remote(1, DEFAULT_AGEING.as_nanos() as u64 + SECOND),
            vec![Vec::new()]
        );
    }

    #[test]
    fn a_flood_of_new_addresses_stops_at_the_limit_and_keeps_the_old_ones() {
        let mut table = RemoteTable::new(4, Duration::from_secs(10));
        for i in 0..4 {
            assert_eq!(table.learn(mac(i), 0, 0), Learned::New);
        }
        for i in 4..100 {
            assert_eq!(table.learn(mac(i), 1, SECOND), Learned::Full);
        }
        assert_eq!(table.len(), 4);
        assert_eq!(table.lookup(mac(0), SECOND), Some(0));
        assert_eq!(table.learn(mac(0), 0, SECOND), Learned::Refreshed);
        // Once old entries expire, new addresses find room again.
        assert_eq!(table.learn(mac(200), 1, 10 * SECOND), Learned::New);
        assert_eq!(table.lookup(mac(200), 10 * SECOND), Some(1));
        assert_eq!(table.lookup(mac(1), 10 * SECOND), None);
    }

    fn remotes() -> Vec<SocketAddr> {
        vec![
            "10.99.0.2:4789".parse().unwrap(),
            "10.99.0.3:4789".parse().unwrap(),
        ]
    }

    fn datagram(flags: u8, vni: [u8; 3], inner: &[u8]) -> Vec<u8> {
        let mut bytes = vec![flags, 0, 0, 0, vni[0], vni[1], vni[2], 0];
        bytes.extend_from_slice(inner);
        bytes
    }

    /// A 60-byte broadcast frame from 02:00:00:00:00:07.
    fn inner() -> Vec<u8> {
        let mut frame = vec![0u8; 60];
        frame[..6].fill(0xff);
        frame[6..12].copy_from_slice(&mac(7).octets());
        frame[12..14].copy_from_slice(&[0x08, 0x06]);
        frame
    }

    #[test]
    fn datagrams_are_classified_by_what_is_wrong_with_them() {
        let check = |remote, bytes: &[u8], oversize| classify(remote, 42, 1500, bytes, oversize);
        let good = datagram(0x08, [0, 0, 42], &inner());
        assert_eq!(check(Some(1), &good, false), Verdict::Deliver { remote: 1 });
        assert_eq!(check(None, &good, false), Verdict::UnknownRemote);
        let refused = |reason| Verdict::Refused { remote: 0, reason };
        assert_eq!(
            check(Some(0), &good[..7], false),
            refused(RxDrop::Malformed)
        );
        assert_eq!(
            check(Some(0), &datagram(0x00, [0, 0, 42], &inner()), false),
            refused(RxDrop::InstanceFlagClear)
        );
        assert_eq!(
            check(Some(0), &datagram(0x08, [0, 0, 43], &inner()), false),
            refused(RxDrop::ForeignVni)
        );
        assert_eq!(
            check(Some(0), &datagram(0x08, [0, 0, 42], &inner()[..13]), false),
            refused(RxDrop::InvalidInner)
        );
        let mut multicast_source = inner();
        multicast_source[6] = 0x01;
        assert_eq!(
            check(
                Some(0),
                &datagram(0x08, [0, 0, 42], &multicast_source),
                false
            ),
            refused(RxDrop::InvalidInner)
        );
        assert_eq!(check(Some(0), &good, true), refused(RxDrop::InvalidInner));
    }

    fn options(group: Option<MulticastGroup>, remotes: Vec<SocketAddr>) -> VxlanOptions {
        VxlanOptions {
            vni: 42,
            local: "10.99.0.1:4789".parse().unwrap(),
            remotes,
            group,
            underlay_mtu: 1500,
            max_learned: DEFAULT_MAX_LEARNED,
            ageing: DEFAULT_AGEING,
        }
    }

    #[test]
    fn configured_remotes_are_matched_by_address_and_strangers_refused() {
        let mut remotes = Remotes::new(&options(None, remotes()));
        // VTEPs send from a hashed port: the address alone names the remote.
        assert_eq!(remotes.find_or_admit("10.99.0.3".parse().unwrap()), Some(1));
        assert_eq!(remotes.find_or_admit("10.99.0.9".parse().unwrap()), None);
        assert_eq!(remotes.endpoints.len(), 2);
        assert_eq!(remotes.flood(), 0..2);
    }

    #[test]
    fn on_a_group_senders_become_remotes_up_to_the_limit() {
        let group = MulticastGroup {
            address: Ipv4Addr::new(239, 1, 1, 1),
            interface: "u0".into(),
        };
        let mut remotes = Remotes::new(&options(Some(group), Vec::new()));
        assert_eq!(remotes.endpoints, vec!["239.1.1.1:4789".parse().unwrap()]);
        assert_eq!(remotes.flood(), 0..1);
        let sender: IpAddr = "10.99.0.2".parse().unwrap();
        assert_eq!(remotes.find_or_admit(sender), Some(1));
        assert_eq!(remotes.find_or_admit(sender), Some(1));
        assert_eq!(remotes.endpoints[1], "10.99.0.2:4789".parse().unwrap());
        // Our own datagrams are never a remote, and the group never sends.
        assert_eq!(remotes.find_or_admit("10.99.0.1".parse().unwrap()), None);
        assert_eq!(remotes.find_or_admit("239.1.1.1".parse().unwrap()), None);
        for i in 0..2000u32 {
            let address = Ipv4Addr::from(0x0a63_1000 + i);
            remotes.find_or_admit(IpAddr::V4(address));
        }
        assert_eq!(remotes.endpoints.len(), MAX_GROUP_REMOTES + 1);
        assert_eq!(remotes.counters.len(), remotes.endpoints.len());
        assert_eq!(remotes.flood(), 0..1);
    }

    #[test]
    fn outer_headers_carry_the_hashed_port_and_forbid_fragmentation() {
        let mut headroom = [0xffu8; OUTER_HEADROOM];
        emit_outer_headers(
            &mut headroom,
            Ipv4Addr::new(10, 99, 0, 1),
            "10.99.0.2:4789".parse().unwrap(),
            50000,
            8 + 60,
        );
        #[rustfmt::skip]
        let expected = [
            0x45, 0x00, 0x00, 96, 0x00, 0x00, 0x40, 0x00, 64, 17, 0x00, 0x00, // IPv4, DF, TTL 64
            10, 99, 0, 1, 10, 99, 0, 2,
            0xc3, 0x50, 0x12, 0xb5, 0x00, 76, 0x00, 0x00, // UDP 50000 → 4789, len 76, csum 0
        ];
        assert_eq!(headroom, expected);
    }

    #[test]
    fn past_the_limit_frames_from_new_sources_are_dropped_and_known_ones_pass() {
        let mut state = State {
            table: RemoteTable::new(2, DEFAULT_AGEING),
            remotes: Remotes::new(&options(None, remotes())),
            port: VxlanCounters::default(),
        };
        let deliver = Verdict::Deliver { remote: 1 };
        for i in 0..5 {
            let mut frame = inner();
            frame[11] = i;
            let datagram = datagram(0x08, [0, 0, 42], &frame);
            let expected = if i < 2 { Some(&frame[..]) } else { None };
            assert_eq!(state.account(deliver, &datagram, 0), expected);
        }
        // A source already learned still passes.
        let mut known = inner();
        known[11] = 1;
        let again = datagram(0x08, [0, 0, 42], &known);
        assert_eq!(state.account(deliver, &again, 0), Some(&known[..]));
        assert_eq!(state.table.len(), 2);
        assert_eq!(state.remotes.counters[1].rx_packets, 3);
        assert_eq!(state.remotes.counters[1].rx_bytes, 3 * 60);
        assert_eq!(state.remotes.counters[1].rx_too_many_sources, 3);
        // Refusals are counted on their remote, or on the port when there is none.
        let good = datagram(0x08, [0, 0, 42], &inner());
        let refused = Verdict::Refused {
            remote: 0,
            reason: RxDrop::ForeignVni,
        };
        assert_eq!(state.account(refused, &good, 0), None);
        assert_eq!(state.account(Verdict::UnknownRemote, &good, 0), None);
        assert_eq!(state.remotes.counters[0].rx_foreign_vni, 1);
        assert_eq!(state.port.rx_unknown_remote, 1);
        assert_eq!(state.remotes.counters[0].rx_packets, 0);
    }

    #[test]
    fn known_unicast_goes_to_one_remote_and_the_rest_to_all() {
        let mut table = RemoteTable::new(16, DEFAULT_AGEING);
        table.learn(mac(1), 1, 0);
        let mut frame = inner();
        assert_eq!(target(&table, 1514, &frame, 0), Target::All);
        frame[..6].copy_from_slice(&mac(1).octets());
        assert_eq!(target(&table, 1514, &frame, 0), Target::One(1));
        frame[..6].copy_from_slice(&mac(2).octets());
        assert_eq!(target(&table, 1514, &frame, 0), Target::All);
        assert_eq!(target(&table, 59, &frame, 0), Target::TooBig);
    }
}
