//! What the port's two threads share, and what `status` shows of it: the table of remote
//! addresses, the remote endpoints, and the counters of each remote and of the port.
//!
//! One mutex guards it all ([`lock`]). The serving thread takes it once per round of
//! datagrams, the sending thread once per round of frames to decide their targets and once
//! to add up what it counted, and a [`StatusHandle`] whenever `status` asks; nobody holds
//! it across a system call.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::network::monotonic_ns;
use crate::ports::counters::counters;
use crate::wire::MacAddress;

use super::table::RemoteTable;

/// Most senders a port on a multicast group takes as remotes.
pub const MAX_GROUP_REMOTES: usize = 1024;

counters! {
    /// The counters of a remote endpoint, or of the whole port.
    ///
    /// Every datagram or frame the port refuses bumps exactly one `rx_*`/`tx_*` drop counter
    /// here. `rx_unknown_remote` and `tx_too_big` are counted on the port only (the first has
    /// no remote; the second is refused before any remote is chosen).
    pub struct VxlanCounters;
    /// Datagrams accepted and handed to the network.
    rx_packets,
    /// Inner-frame bytes of those.
    rx_bytes,
    /// Datagrams sent.
    tx_packets,
    /// Inner-frame bytes of those.
    tx_bytes,
    /// Dropped: shorter than the VXLAN header.
    rx_malformed,
    /// Dropped: the I flag was clear.
    rx_instance_flag_clear,
    /// Dropped: another VNI.
    rx_foreign_vni,
    /// Dropped: the inner frame broke the network's rules (runt, giant, multicast source).
    rx_invalid_inner,
    /// Dropped: from an address that is not a configured remote.
    rx_unknown_remote,
    /// Dropped: a new inner source address, and the table of remote addresses was full.
    rx_too_many_sources,
    /// Dropped: too big for the underlay's MTU once encapsulated.
    tx_too_big,
    /// Dropped: the socket refused the send.
    tx_errors,
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
pub(super) struct State {
    pub(super) table: RemoteTable,
    pub(super) remotes: Remotes,
    /// What is counted on no remote.
    pub(super) port: VxlanCounters,
}

impl State {
    /// An empty table, the remotes, and every counter zero.
    pub(super) fn new(table: RemoteTable, remotes: Remotes) -> State {
        State {
            table,
            remotes,
            port: VxlanCounters::default(),
        }
    }
}

/// The remote endpoints and their counters. Indices are stable: remotes are only ever
/// added (on a multicast group), never removed, so the table and the sending thread may
/// hold an index across the lock.
#[derive(Debug)]
pub(super) struct Remotes {
    pub(super) endpoints: Vec<SocketAddr>,
    pub(super) counters: Vec<VxlanCounters>,
    /// On a multicast group: remote 0 is the group, and senders are admitted as they come.
    group: bool,
    /// The port's own address, never admitted as a remote.
    own: IpAddr,
    /// The UDP port admitted senders are sent to.
    port: u16,
}

impl Remotes {
    /// A fixed list of remotes, for a port bound to `local`.
    pub(super) fn configured(endpoints: Vec<SocketAddr>, local: SocketAddr) -> Remotes {
        Remotes::with(endpoints, false, local)
    }

    /// The multicast group `group` alone, at the local port; senders are admitted as they
    /// come.
    pub(super) fn on_group(group: Ipv4Addr, local: SocketAddr) -> Remotes {
        let endpoints = vec![SocketAddr::new(IpAddr::V4(group), local.port())];
        Remotes::with(endpoints, true, local)
    }

    fn with(endpoints: Vec<SocketAddr>, group: bool, local: SocketAddr) -> Remotes {
        Remotes {
            counters: vec![VxlanCounters::default(); endpoints.len()],
            endpoints,
            group,
            own: local.ip(),
            port: local.port(),
        }
    }

    /// The remote a datagram from `from` came from; on a group, a new sender is admitted
    /// while there is room.
    pub(super) fn find_or_admit(&mut self, from: IpAddr) -> Option<usize> {
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
    pub(super) fn flood(&self) -> Range<usize> {
        if self.group {
            0..1
        } else {
            0..self.endpoints.len()
        }
    }
}

/// A handle that reads a running port's status from another thread.
#[derive(Debug, Clone)]
pub struct StatusHandle {
    state: Arc<Mutex<State>>,
    template: VxlanStatus,
}

impl StatusHandle {
    /// A handle on `state`; `template` holds what does not change while the port serves.
    pub(super) fn new(state: Arc<Mutex<State>>, template: VxlanStatus) -> StatusHandle {
        StatusHandle { state, template }
    }

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
pub(super) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SocketAddr {
        "10.99.0.1:4789".parse().unwrap()
    }

    #[test]
    fn configured_remotes_are_matched_by_address_and_strangers_refused() {
        let remotes = vec![
            "10.99.0.2:4789".parse().unwrap(),
            "10.99.0.3:4789".parse().unwrap(),
        ];
        let mut remotes = Remotes::configured(remotes, local());
        // VTEPs send from a hashed port: the address alone names the remote.
        assert_eq!(remotes.find_or_admit("10.99.0.3".parse().unwrap()), Some(1));
        assert_eq!(remotes.find_or_admit("10.99.0.9".parse().unwrap()), None);
        assert_eq!(remotes.endpoints.len(), 2);
        assert_eq!(remotes.flood(), 0..2);
    }

    #[test]
    fn on_a_group_senders_become_remotes_up_to_the_limit() {
        let mut remotes = Remotes::on_group(Ipv4Addr::new(239, 1, 1, 1), local());
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
    fn counters_keep_their_json_names_and_add_up() {
        let mut total = VxlanCounters {
            rx_packets: 1,
            tx_errors: 2,
            ..VxlanCounters::default()
        };
        let once = total;
        total.add(&once);
        assert_eq!((total.rx_packets, total.tx_errors), (2, 4));
        // The status file and the tests read these names.
        let json = serde_json::to_value(total).unwrap();
        let mut names: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        let mut expected = vec![
            "rx_packets",
            "rx_bytes",
            "tx_packets",
            "tx_bytes",
            "rx_malformed",
            "rx_instance_flag_clear",
            "rx_foreign_vni",
            "rx_invalid_inner",
            "rx_unknown_remote",
            "rx_too_many_sources",
            "tx_too_big",
            "tx_errors",
        ];
        expected.sort_unstable();
        assert_eq!(names, expected);
    }
}
