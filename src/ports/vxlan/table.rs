//! The table of remote addresses: which remote endpoint each inner MAC address sits
//! behind, learned from the inner source address of every accepted datagram.
//!
//! Entries are keyed by (VNI, MAC), as the network's own are by (VLAN, MAC): on a port
//! that carries several segments the same address in two of them is two hosts, or one
//! host in two places, and each entry lives and moves on its own.
//!
//! It is bounded and ages, as a bridge's forwarding table does, and it takes time as an
//! argument (monotonic nanoseconds), so tests drive its clock. It knows nothing of sockets
//! or threads: a remote is an index into the port's list of remotes.

use std::collections::HashMap;
use std::time::Duration;

use crate::network::send::UPLINK_LEARN_QUOTA;
use crate::wire::MacAddress;

/// Default bound on learned remote addresses: as many as the network learns behind one
/// uplink peer. A larger table would let in frames from addresses the network then does
/// not learn, so that every reply to them is flooded; a smaller one would refuse hosts
/// the network could still serve.
pub const DEFAULT_MAX_LEARNED: usize = UPLINK_LEARN_QUOTA;

/// Default ageing time of a learned address (as the Linux bridge and vxlan device).
pub const DEFAULT_AGEING: Duration = Duration::from_secs(300);

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
    entries: HashMap<(u32, MacAddress), Entry>,
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

    /// Records that `mac` was seen in VNI `vni` behind `remote` at `now_ns`.
    pub fn learn(&mut self, vni: u32, mac: MacAddress, remote: usize, now_ns: u64) -> Learned {
        if let Some(entry) = self.entries.get_mut(&(vni, mac)) {
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
            (vni, mac),
            Entry {
                remote,
                seen_ns: now_ns,
            },
        );
        Learned::New
    }

    /// The remote `mac` sits behind in VNI `vni`, unless unknown or expired.
    pub fn lookup(&self, vni: u32, mac: MacAddress, now_ns: u64) -> Option<usize> {
        self.entries
            .get(&(vni, mac))
            .filter(|entry| !self.expired(entry, now_ns))
            .map(|entry| entry.remote)
    }

    /// Forgets expired entries.
    pub fn expire(&mut self, now_ns: u64) {
        let ageing_ns = self.ageing_ns;
        self.entries
            .retain(|_, entry| now_ns.saturating_sub(entry.seen_ns) < ageing_ns);
    }

    /// Forgets every address learned behind `remote`, which has just stopped being one.
    pub fn forget_remote(&mut self, remote: usize) {
        self.entries.retain(|_, entry| entry.remote != remote);
    }

    /// Number of entries (expired ones included until the next [`expire`](Self::expire)).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The live addresses behind each of `remotes` remotes, sorted, an address learned in
    /// several VNIs listed once; one pass over the table, so `status` costs the same
    /// however many remotes there are.
    pub fn by_remote(&self, remotes: usize, now_ns: u64) -> Vec<Vec<MacAddress>> {
        let mut lists = vec![Vec::new(); remotes];
        for (&(_, mac), entry) in &self.entries {
            if let Some(list) = lists.get_mut(entry.remote)
                && !self.expired(entry, now_ns)
            {
                list.push(mac);
            }
        }
        for list in &mut lists {
            list.sort();
            list.dedup();
        }
        lists
    }

    /// The live addresses learned in each of `vnis`, sorted, in the same order; one pass
    /// over the table.
    pub fn by_vni(&self, vnis: &[u32], now_ns: u64) -> Vec<Vec<MacAddress>> {
        let mut lists = vec![Vec::new(); vnis.len()];
        for (&(vni, mac), entry) in &self.entries {
            if let Some(list) = vnis
                .iter()
                .position(|&v| v == vni)
                .and_then(|index| lists.get_mut(index))
                && !self.expired(entry, now_ns)
            {
                list.push(mac);
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

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn mac(last: u8) -> MacAddress {
        MacAddress::new([0x02, 0, 0, 0, 0, last])
    }

    const VNI: u32 = 42;

    #[test]
    fn learned_addresses_age_out() {
        let mut table = RemoteTable::new(16, Duration::from_secs(10));
        assert_eq!(table.learn(VNI, mac(1), 0, 0), Learned::New);
        assert_eq!(table.lookup(VNI, mac(1), 9 * SECOND), Some(0));
        assert_eq!(table.lookup(VNI, mac(1), 10 * SECOND), None);
        // Traffic refreshes the age.
        assert_eq!(table.learn(VNI, mac(1), 0, 9 * SECOND), Learned::Refreshed);
        assert_eq!(table.lookup(VNI, mac(1), 18 * SECOND), Some(0));
        table.expire(19 * SECOND);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn an_address_moves_to_the_remote_it_last_came_from() {
        let mut table = RemoteTable::new(16, DEFAULT_AGEING);
        table.learn(VNI, mac(1), 0, 0);
        assert_eq!(table.learn(VNI, mac(1), 2, SECOND), Learned::Moved);
        assert_eq!(table.lookup(VNI, mac(1), SECOND), Some(2));
        assert_eq!(
            table.by_remote(3, SECOND),
            vec![Vec::new(), Vec::new(), vec![mac(1)]]
        );
        // Expired entries are not listed, and a remote index past the list is ignored.
        table.learn(VNI, mac(2), 7, SECOND);
        assert_eq!(
            table.by_remote(1, DEFAULT_AGEING.as_nanos() as u64 + SECOND),
            vec![Vec::new()]
        );
    }

    #[test]
    fn a_flood_of_new_addresses_stops_at_the_limit_and_keeps_the_old_ones() {
        let mut table = RemoteTable::new(4, Duration::from_secs(10));
        for i in 0..4 {
            assert_eq!(table.learn(VNI, mac(i), 0, 0), Learned::New);
        }
        for i in 4..100 {
            assert_eq!(table.learn(VNI, mac(i), 1, SECOND), Learned::Full);
        }
        assert_eq!(table.len(), 4);
        assert_eq!(table.lookup(VNI, mac(0), SECOND), Some(0));
        assert_eq!(table.learn(VNI, mac(0), 0, SECOND), Learned::Refreshed);
        // Once old entries expire, new addresses find room again.
        assert_eq!(table.learn(VNI, mac(200), 1, 10 * SECOND), Learned::New);
        assert_eq!(table.lookup(VNI, mac(200), 10 * SECOND), Some(1));
        assert_eq!(table.lookup(VNI, mac(1), 10 * SECOND), None);
    }

    #[test]
    fn the_same_address_in_two_vnis_is_two_entries_that_live_and_move_apart() {
        let mut table = RemoteTable::new(16, Duration::from_secs(10));
        assert_eq!(table.learn(1010, mac(1), 0, 0), Learned::New);
        assert_eq!(table.learn(1020, mac(1), 1, 0), Learned::New);
        assert_eq!(table.len(), 2);
        assert_eq!(table.lookup(1010, mac(1), 0), Some(0));
        assert_eq!(table.lookup(1020, mac(1), 0), Some(1));
        assert_eq!(table.lookup(1030, mac(1), 0), None);
        // Moving in one VNI leaves the other alone, and so does ageing.
        assert_eq!(table.learn(1010, mac(1), 1, 5 * SECOND), Learned::Moved);
        assert_eq!(table.lookup(1020, mac(1), 5 * SECOND), Some(1));
        assert_eq!(table.lookup(1020, mac(1), 10 * SECOND), None);
        assert_eq!(table.lookup(1010, mac(1), 10 * SECOND), Some(1));
        // Per remote an address is listed once; per VNI, in each of its VNIs.
        assert_eq!(table.by_remote(2, 0), vec![Vec::new(), vec![mac(1)]]);
        assert_eq!(
            table.by_vni(&[1020, 1010, 7], 0),
            vec![vec![mac(1)], vec![mac(1)], Vec::new()]
        );
    }

    #[test]
    fn a_retired_remote_takes_its_addresses_with_it() {
        let mut table = RemoteTable::new(16, DEFAULT_AGEING);
        table.learn(VNI, mac(1), 1, 0);
        table.learn(VNI, mac(2), 2, 0);
        table.learn(VNI, mac(3), 1, 0);
        table.forget_remote(1);
        assert_eq!(table.len(), 1);
        assert_eq!(table.lookup(VNI, mac(2), 0), Some(2));
        assert_eq!(table.lookup(VNI, mac(1), 0), None);
    }
}
