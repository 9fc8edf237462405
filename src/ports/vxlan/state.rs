//! What the port's two threads share, and what `status` shows of it: the table of remote
//! addresses, the remote endpoints, and the counters of each remote, of each segment (VNI)
//! and of the port.
//!
//! One mutex guards it all ([`lock`]). The serving thread takes it once per round of
//! datagrams, the sending thread once per round of frames to decide their targets and once
//! to add up what it counted, and a [`StatusHandle`] whenever `status` asks; nobody holds
//! it across a system call.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::network::monotonic_ns;
use crate::ports::counters::counters;
use crate::wire::MacAddress;

use super::segments::{Segment, Segments};
use super::table::RemoteTable;

/// Most senders a port on a multicast group takes as remotes at once.
pub const MAX_GROUP_REMOTES: usize = 1024;

counters! {
    /// The counters of a remote endpoint, or of the whole port.
    ///
    /// Every datagram or frame the port refuses bumps exactly one `rx_*`/`tx_*` drop counter
    /// here. `rx_unknown_remote`, `rx_bad_outer`, `rx_fragmented`, `tx_too_big` and
    /// `tx_unmapped_vlan` are counted on the port only (the first has no remote; the next
    /// two are refused before their sender is looked at; the last two before any remote is
    /// chosen).
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
    /// Dropped: another VNI (with `--vni-map`, one the map does not name).
    rx_foreign_vni,
    /// Dropped: the inner frame broke the network's rules (runt, giant, multicast source).
    rx_invalid_inner,
    /// Dropped: from an address that is not a configured remote.
    rx_unknown_remote,
    /// Dropped (packet socket only): outer IPv4 or UDP headers that do not hold together
    /// (version, lengths, checksums), or a packet whose unfinished segmentation the kernel
    /// could not describe.
    rx_bad_outer,
    /// Dropped (packet socket only): a fragmented datagram, counted once (by its first
    /// fragment). The sender's underlay MTU is too small for its inner MTU; lower the
    /// latter, as RFC 7348 lets a VTEP discard fragments and this one never sends any.
    rx_fragmented,
    /// Dropped: a new inner source address, and the table of remote addresses was full.
    rx_too_many_sources,
    /// Dropped: too big for the underlay's MTU once encapsulated.
    tx_too_big,
    /// Dropped (with `--vni-map`): the inner frame already carried an 802.1Q tag, where
    /// the port would add the tag of its segment's VLAN.
    rx_tagged_inner,
    /// Dropped (with `--vni-map`): a frame from the network untagged or in a VLAN the map
    /// does not name. The port is a trunk of exactly the mapped VLANs, so the network
    /// never hands it one; counted all the same.
    tx_unmapped_vlan,
    /// Dropped: the socket refused the send.
    tx_errors,
    /// Senders on a multicast group retired after the ageing time without a datagram
    /// (counted on the port only). What they had counted stays in the port's totals.
    remotes_aged,
}

counters! {
    /// The traffic of one segment (VNI) of the port, over every remote. Datagrams are
    /// counted as the remotes count them, so a flooded frame sent to three remotes is
    /// three `tx_packets` here too, and the segments' counts add up to the port's.
    pub struct VniCounters;
    /// Datagrams of this VNI accepted and handed to the network.
    rx_packets,
    /// Inner-frame bytes of those, as they arrived (without the tag the port adds).
    rx_bytes,
    /// Datagrams of this VNI sent.
    tx_packets,
    /// Inner-frame bytes of those, as sent (without the tag the port removed).
    tx_bytes,
}

/// A segment as `status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SegmentStatus {
    /// Its VNI.
    pub vni: u32,
    /// The VLAN it is in the network, with `--vni-map`; without, frames cross as they are.
    pub vlan: Option<u16>,
    /// Its traffic.
    pub counters: VniCounters,
    /// Inner addresses learned in it, behind any remote.
    pub learned: Vec<MacAddress>,
}

/// A remote endpoint as `status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RemoteStatus {
    /// Address and destination port.
    pub endpoint: SocketAddr,
    /// Its counters.
    pub counters: VxlanCounters,
    /// Inner addresses learned behind it (each once, whichever VNIs it was learned in).
    pub learned: Vec<MacAddress>,
}

/// The port as `status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct VxlanStatus {
    /// The network's name.
    pub network: String,
    /// The port's peer slot.
    pub slot: u16,
    /// The VNI, or the map of VLANs to VNIs (`{"10": 1010, …}`).
    pub vni: Segments,
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
    /// Whether datagrams arrive on a packet socket, which tells the checksums and the
    /// segmentation a sender on this host left undone so that they go into the network as
    /// offloads, or on the UDP socket (no `CAP_NET_RAW`, or IPv6), which cannot tell.
    #[serde(default)]
    pub receives_offloads: bool,
    /// The multicast group, if the port uses one; it is then remote 0.
    pub group: Option<SocketAddr>,
    /// Counters of the whole port (the remotes' summed, plus what has no remote, plus what
    /// retired remotes had counted).
    pub counters: VxlanCounters,
    /// The remotes (on a group: the group, and the senders heard within the ageing time).
    pub remotes: Vec<RemoteStatus>,
    /// Each segment's traffic and learned addresses: the one VNI, or each of the map's in
    /// VLAN order.
    #[serde(default)]
    pub segments: Vec<SegmentStatus>,
}

/// What both threads share: the table, the remotes and the counters.
#[derive(Debug)]
pub(super) struct State {
    pub(super) table: RemoteTable,
    pub(super) remotes: Remotes,
    /// What is counted on no remote, and what retired remotes had counted.
    pub(super) port: VxlanCounters,
    /// The segments, by index ([`Segments::list`]), and the traffic of each.
    pub(super) segments: Vec<(Segment, VniCounters)>,
}

impl State {
    /// An empty table, the remotes, the segments, and every counter zero.
    pub(super) fn new(table: RemoteTable, remotes: Remotes, segments: &Segments) -> State {
        State {
            table,
            remotes,
            port: VxlanCounters::default(),
            segments: segments
                .list()
                .into_iter()
                .map(|segment| (segment, VniCounters::default()))
                .collect(),
        }
    }

    /// The remote a datagram from `from`, arriving at `now_ns`, came from. On a group a new
    /// sender is admitted while there is room; when there is none, senders silent for the
    /// ageing time are retired first, as the table makes room from expired addresses.
    pub(super) fn find_or_admit(&mut self, from: IpAddr, now_ns: u64) -> Option<usize> {
        if let Some(found) = self.remotes.find(from) {
            self.remotes.heard(found, now_ns);
            return Some(found);
        }
        if !self.remotes.admits(from) {
            return None;
        }
        if self.remotes.is_full() {
            self.retire_silent_remotes(now_ns);
        }
        self.remotes.admit(from, now_ns)
    }

    /// Forgets what has gone silent by `now_ns`: learned addresses past their ageing, and
    /// on a group the senders heard from no more for as long.
    pub(super) fn expire(&mut self, now_ns: u64) {
        self.table.expire(now_ns);
        self.retire_silent_remotes(now_ns);
    }

    /// Retires the group's senders silent for the ageing time. Their counts move to the
    /// port's, so the totals never go back, and the addresses learned behind them are
    /// forgotten, so that a sender later given the same slot inherits none of them (they
    /// have aged out by then anyway: they were learned from the retired sender's datagrams).
    fn retire_silent_remotes(&mut self, now_ns: u64) {
        for remote in self.remotes.admitted() {
            if let Some(counters) = self.remotes.retire_if_silent(remote, now_ns) {
                self.port.add(&counters);
                self.port.remotes_aged += 1;
                self.table.forget_remote(remote);
            }
        }
    }
}

/// The remote endpoints and their counters, in slots.
///
/// A remote keeps its slot for as long as it is one, so the table and the sending thread
/// may hold an index across the lock. Configured remotes are never removed. On a multicast
/// group a sender silent for the ageing time is retired: its slot empties (`None`) and the
/// next new sender takes it. The sending thread therefore checks, when it adds up what it
/// sent, that a slot still holds the endpoint it sent to.
#[derive(Debug)]
pub(super) struct Remotes {
    pub(super) endpoints: Vec<Option<SocketAddr>>,
    pub(super) counters: Vec<VxlanCounters>,
    /// When each remote was last heard from (monotonic nanoseconds).
    heard_ns: Vec<u64>,
    /// On a multicast group: remote 0 is the group, and senders are admitted as they come.
    group: bool,
    /// The port's own address, never admitted as a remote.
    own: IpAddr,
    /// The UDP port admitted senders are sent to.
    port: u16,
    /// How long an admitted sender stays a remote without a datagram.
    ageing_ns: u64,
}

impl Remotes {
    /// A fixed list of remotes, for a port bound to `local`.
    pub(super) fn configured(endpoints: Vec<SocketAddr>, local: SocketAddr) -> Remotes {
        Remotes::with(endpoints, false, local, Duration::MAX)
    }

    /// The multicast group `group` alone, at the local port; senders are admitted as they
    /// come, and retired after `ageing` without a datagram.
    pub(super) fn on_group(group: Ipv4Addr, local: SocketAddr, ageing: Duration) -> Remotes {
        let endpoints = vec![SocketAddr::new(IpAddr::V4(group), local.port())];
        Remotes::with(endpoints, true, local, ageing)
    }

    fn with(
        endpoints: Vec<SocketAddr>,
        group: bool,
        local: SocketAddr,
        ageing: Duration,
    ) -> Remotes {
        Remotes {
            counters: vec![VxlanCounters::default(); endpoints.len()],
            heard_ns: vec![0; endpoints.len()],
            endpoints: endpoints.into_iter().map(Some).collect(),
            group,
            own: local.ip(),
            port: local.port(),
            ageing_ns: u64::try_from(ageing.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// The slots of admitted senders: on a group, every slot but the group's own (remote
    /// 0, which never sends); with configured remotes, none.
    fn admitted(&self) -> Range<usize> {
        if self.group {
            1..self.endpoints.len()
        } else {
            0..0
        }
    }

    /// The remote whose address is `from`. Remotes are matched by address alone, since
    /// VTEPs send from hashed source ports.
    fn find(&self, from: IpAddr) -> Option<usize> {
        // On a group, remote 0 is the group address, which never sends.
        let first = usize::from(self.group).min(self.endpoints.len());
        self.endpoints[first..]
            .iter()
            .position(|endpoint| endpoint.is_some_and(|endpoint| endpoint.ip() == from))
            .map(|found| first + found)
    }

    /// Records that `remote` sent a datagram at `now_ns`.
    fn heard(&mut self, remote: usize, now_ns: u64) {
        if let Some(heard) = self.heard_ns.get_mut(remote) {
            *heard = now_ns;
        }
    }

    /// Whether a sender at `from`, not a remote yet, may become one.
    fn admits(&self, from: IpAddr) -> bool {
        // No host sends from a multicast or unspecified address; the first cannot be
        // answered, and admitting either would let a forged datagram claim the group.
        let impossible = from.is_multicast() || from.is_unspecified();
        self.group && !impossible && from != self.own
    }

    /// Whether every slot a sender may take is taken.
    fn is_full(&self) -> bool {
        self.vacant().is_none() && self.endpoints.len() > MAX_GROUP_REMOTES
    }

    /// The first empty slot, left by a retired sender.
    fn vacant(&self) -> Option<usize> {
        let admitted = self.admitted();
        let first = admitted.start;
        self.endpoints[admitted]
            .iter()
            .position(Option::is_none)
            .map(|found| first + found)
    }

    /// Makes the sender at `from`, heard at `now_ns`, a remote in an empty slot or a new
    /// one; `None` if every slot is taken.
    fn admit(&mut self, from: IpAddr, now_ns: u64) -> Option<usize> {
        let endpoint = Some(SocketAddr::new(from, self.port));
        let remote = match self.vacant() {
            Some(vacant) => vacant,
            None if self.endpoints.len() <= MAX_GROUP_REMOTES => {
                self.endpoints.push(None);
                self.counters.push(VxlanCounters::default());
                self.heard_ns.push(0);
                self.endpoints.len() - 1
            }
            None => return None,
        };
        self.endpoints[remote] = endpoint;
        self.counters[remote] = VxlanCounters::default();
        self.heard_ns[remote] = now_ns;
        Some(remote)
    }

    /// Empties `remote`'s slot if it is an admitted sender silent for the ageing time by
    /// `now_ns`; returns what it had counted.
    fn retire_if_silent(&mut self, remote: usize, now_ns: u64) -> Option<VxlanCounters> {
        let heard_ns = *self.heard_ns.get(remote)?;
        let endpoint = self.endpoints.get_mut(remote)?;
        if endpoint.is_none() || now_ns.saturating_sub(heard_ns) < self.ageing_ns {
            return None;
        }
        *endpoint = None;
        self.counters.get_mut(remote).map(std::mem::take)
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
        let vnis: Vec<u32> = state
            .segments
            .iter()
            .map(|(segment, _)| segment.vni)
            .collect();
        let learned = state.table.by_vni(&vnis, now);
        status.segments = state
            .segments
            .iter()
            .zip(learned)
            .map(
                |(&(Segment { vni, vlan }, counters), learned)| SegmentStatus {
                    vni,
                    vlan,
                    counters,
                    learned,
                },
            )
            .collect();
        let remotes = &state.remotes;
        let learned = state.table.by_remote(remotes.endpoints.len(), now);
        for ((endpoint, counters), learned) in
            remotes.endpoints.iter().zip(&remotes.counters).zip(learned)
        {
            // A retired sender's counts are in the port's already; its slot shows nothing.
            let Some(endpoint) = *endpoint else {
                continue;
            };
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

pub(super) use crate::ports::locks::lock;

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn local() -> SocketAddr {
        "10.99.0.1:4789".parse().unwrap()
    }

    fn address(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn endpoint(text: &str) -> Option<SocketAddr> {
        Some(text.parse().unwrap())
    }

    /// A port on group 239.1.1.1 whose senders and addresses age after ten seconds.
    fn on_group() -> State {
        let ageing = Duration::from_secs(10);
        State::new(
            RemoteTable::new(16, ageing),
            Remotes::on_group(Ipv4Addr::new(239, 1, 1, 1), local(), ageing),
            &Segments::One(42),
        )
    }

    #[test]
    fn configured_remotes_are_matched_by_address_and_strangers_refused() {
        let remotes = vec![
            "10.99.0.2:4789".parse().unwrap(),
            "10.99.0.3:4789".parse().unwrap(),
        ];
        let mut state = State::new(
            RemoteTable::new(16, Duration::from_secs(10)),
            Remotes::configured(remotes, local()),
            &Segments::One(42),
        );
        // VTEPs send from a hashed port: the address alone names the remote.
        assert_eq!(state.find_or_admit(address("10.99.0.3"), 0), Some(1));
        assert_eq!(state.find_or_admit(address("10.99.0.9"), 0), None);
        assert_eq!(state.remotes.endpoints.len(), 2);
        assert_eq!(state.remotes.flood(), 0..2);
        // Configured remotes are what the user typed: silence never retires them.
        state.expire(3600 * SECOND);
        assert_eq!(
            state.find_or_admit(address("10.99.0.2"), 3600 * SECOND),
            Some(0)
        );
        assert_eq!(state.remotes.endpoints.iter().flatten().count(), 2);
        assert_eq!(state.port.remotes_aged, 0);
    }

    #[test]
    fn on_a_group_senders_become_remotes_up_to_the_limit() {
        let mut state = on_group();
        assert_eq!(state.remotes.endpoints, vec![endpoint("239.1.1.1:4789")]);
        assert_eq!(state.remotes.flood(), 0..1);
        let sender = address("10.99.0.2");
        assert_eq!(state.find_or_admit(sender, 0), Some(1));
        assert_eq!(state.find_or_admit(sender, 0), Some(1));
        assert_eq!(state.remotes.endpoints[1], endpoint("10.99.0.2:4789"));
        // Our own datagrams are never a remote, and the group never sends.
        assert_eq!(state.find_or_admit(address("10.99.0.1"), 0), None);
        assert_eq!(state.find_or_admit(address("239.1.1.1"), 0), None);
        for i in 0..2000u32 {
            let address = Ipv4Addr::from(0x0a63_1000 + i);
            state.find_or_admit(IpAddr::V4(address), 0);
        }
        assert_eq!(state.remotes.endpoints.len(), MAX_GROUP_REMOTES + 1);
        assert_eq!(state.remotes.counters.len(), state.remotes.endpoints.len());
        assert_eq!(state.remotes.flood(), 0..1);
    }

    #[test]
    fn on_a_group_a_sender_silent_for_the_ageing_time_is_retired_and_its_slot_reused() {
        let mut state = on_group();
        let (early, late) = (address("10.99.0.2"), address("10.99.0.3"));
        assert_eq!(state.find_or_admit(early, 0), Some(1));
        assert_eq!(state.find_or_admit(late, 5 * SECOND), Some(2));
        state
            .table
            .learn(42, MacAddress::new([2, 0, 0, 0, 0, 1]), 1, 0);
        state.remotes.counters[1].rx_packets = 3;
        // Not yet: ten seconds of silence, not nine.
        state.expire(9 * SECOND);
        assert_eq!(state.port.remotes_aged, 0);
        assert_eq!(state.find_or_admit(early, 9 * SECOND), Some(1));
        // Heard at 9 s and 5 s: at 15 s the later sender has been silent for ten.
        state.expire(15 * SECOND);
        assert_eq!(state.port.remotes_aged, 1);
        assert_eq!(state.remotes.endpoints[2], None);
        // Silent at 19 s too; its counts stay in the port's, and what was learned behind it
        // goes with it.
        state.expire(19 * SECOND);
        assert_eq!(state.port.remotes_aged, 2);
        assert_eq!(state.port.rx_packets, 3);
        assert!(state.table.is_empty());
        // A new sender takes the first empty slot, with its own counters; a retired one
        // that speaks again is a new sender too.
        assert_eq!(
            state.find_or_admit(address("10.99.0.4"), 20 * SECOND),
            Some(1)
        );
        assert_eq!(state.remotes.endpoints[1], endpoint("10.99.0.4:4789"));
        assert_eq!(state.remotes.counters[1], VxlanCounters::default());
        assert_eq!(state.find_or_admit(late, 20 * SECOND), Some(2));
        assert_eq!(state.remotes.endpoints.len(), 3);
    }

    #[test]
    fn a_full_group_makes_room_from_silent_senders_when_a_new_one_arrives() {
        let mut state = on_group();
        for i in 0..MAX_GROUP_REMOTES as u32 {
            let address = Ipv4Addr::from(0x0a63_1000 + i);
            assert!(state.find_or_admit(IpAddr::V4(address), 0).is_some());
        }
        let newcomer = address("10.99.200.1");
        assert_eq!(state.find_or_admit(newcomer, 9 * SECOND), None, "full");
        // Once the others have been silent for the ageing time, no housekeeping is needed
        // for the newcomer to get in.
        assert_eq!(state.find_or_admit(newcomer, 10 * SECOND), Some(1));
        assert_eq!(state.port.remotes_aged, MAX_GROUP_REMOTES as u64);
        assert_eq!(state.remotes.endpoints.len(), MAX_GROUP_REMOTES + 1);
    }

    #[test]
    fn status_leaves_out_retired_senders_and_keeps_their_counts_in_the_totals() {
        let state = Arc::new(Mutex::new(on_group()));
        {
            let mut state = lock(&state);
            state.find_or_admit(address("10.99.0.2"), 0);
            state.remotes.counters[1].rx_packets = 3;
        }
        let handle = StatusHandle::new(Arc::clone(&state), template(Segments::One(42)));
        assert_eq!(handle.status().remotes.len(), 2);
        lock(&state).expire(monotonic_ns() + 10 * SECOND);
        let status = handle.status();
        assert_eq!(status.remotes.len(), 1);
        assert_eq!(
            status.remotes[0].endpoint,
            "239.1.1.1:4789".parse().unwrap()
        );
        assert_eq!(status.counters.rx_packets, 3);
        assert_eq!(status.counters.remotes_aged, 1);
    }

    /// What a port on group 239.1.1.1 carrying `segments` shows before it counts.
    fn template(segments: Segments) -> VxlanStatus {
        VxlanStatus {
            network: "lab".into(),
            slot: 0,
            vni: segments,
            local: local(),
            underlay_mtu: 1550,
            inner_mtu: 1500,
            max_learned: 16,
            hashed_source_ports: true,
            receives_offloads: true,
            group: endpoint("239.1.1.1:4789"),
            counters: VxlanCounters::default(),
            remotes: Vec::new(),
            segments: Vec::new(),
        }
    }

    #[test]
    fn status_shows_each_segment_with_its_vlan_counters_and_addresses() {
        let map = Segments::Map("20=1020,10=1010".parse().unwrap());
        let ageing = Duration::from_secs(10);
        let group = Ipv4Addr::new(239, 1, 1, 1);
        let mut state = State::new(
            RemoteTable::new(16, ageing),
            Remotes::on_group(group, local(), ageing),
            &map,
        );
        let mac = MacAddress::new([2, 0, 0, 0, 0, 1]);
        state.find_or_admit(address("10.99.0.2"), monotonic_ns());
        state.table.learn(1010, mac, 1, monotonic_ns());
        state.table.learn(1020, mac, 1, monotonic_ns());
        state.segments[1].1.tx_packets = 5;
        let state = Arc::new(Mutex::new(state));
        let status = StatusHandle::new(state, template(map)).status();
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["vni"], serde_json::json!({"10": 1010, "20": 1020}));
        assert_eq!(json["segments"][0]["vni"], 1010);
        assert_eq!(json["segments"][0]["vlan"], 10);
        assert_eq!(json["segments"][0]["learned"][0], mac.to_string());
        assert_eq!(json["segments"][1]["vni"], 1020);
        assert_eq!(json["segments"][1]["counters"]["tx_packets"], 5);
        assert_eq!(json["segments"][1]["learned"][0], mac.to_string());
        // Behind its remote the address is listed once.
        assert_eq!(status.remotes[1].learned, vec![mac]);
        // A status file written before segments existed still reads.
        let mut old = json;
        old.as_object_mut().unwrap().remove("segments");
        old["vni"] = serde_json::json!(42);
        let read: VxlanStatus = serde_json::from_value(old).unwrap();
        assert_eq!(read.vni, Segments::One(42));
        assert!(read.segments.is_empty());
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
            "rx_bad_outer",
            "rx_fragmented",
            "rx_too_many_sources",
            "tx_too_big",
            "tx_errors",
            "remotes_aged",
            "rx_tagged_inner",
            "tx_unmapped_vlan",
        ];
        expected.sort_unstable();
        assert_eq!(names, expected);
    }
}
