//! The datagram port's table of senders: whom it serves, and when each was last heard from.
//!
//! A datagram socket has no connections, so nothing ends a sender's stay on its own: a VM
//! that is switched off simply falls silent. Two rules keep one socket client — or a stream
//! of forged sender addresses — from taking every slot of the network:
//!
//! * at most `max_senders` are served at once; [`SenderTable::insert`] refuses more;
//! * a sender not heard from for `idle_timeout` leaves: [`SenderTable::expire`] hands it
//!   back to the caller, which lets its peer go.
//!
//! The table does no I/O and reads no clock: the serving thread passes the time in
//! (monotonic nanoseconds), so the rules are tested directly, without sleeping.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

/// The senders being served, by address.
#[derive(Debug)]
pub(super) struct SenderTable<Address, Client> {
    entries: HashMap<Address, Entry<Client>>,
    max_senders: usize,
    /// `None`: senders never expire.
    idle_timeout_ns: Option<u64>,
}

#[derive(Debug)]
struct Entry<Client> {
    client: Client,
    last_heard_ns: u64,
}

impl<Address: Hash + Eq + Clone, Client> SenderTable<Address, Client> {
    /// An empty table serving at most `max_senders` at once, each until it has been silent
    /// for `idle_timeout` (`None`, or zero: for ever).
    pub(super) fn new(max_senders: usize, idle_timeout: Option<Duration>) -> Self {
        SenderTable {
            entries: HashMap::new(),
            max_senders,
            // A zero timeout would expire every sender on arrival and make the serving
            // thread wake without pause; it can only mean "never".
            idle_timeout_ns: idle_timeout
                .filter(|timeout| !timeout.is_zero())
                .map(|timeout| u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX)),
        }
    }

    /// How many senders are served.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether a new sender would be refused.
    pub(super) fn is_full(&self) -> bool {
        self.entries.len() >= self.max_senders
    }

    /// The most senders served at once.
    pub(super) fn max_senders(&self) -> usize {
        self.max_senders
    }

    /// The sender at `address`, if it is served.
    pub(super) fn get(&self, address: &Address) -> Option<&Client> {
        self.entries.get(address).map(|entry| &entry.client)
    }

    /// The sender at `address`, noting that it was heard from at `now_ns`.
    pub(super) fn heard(&mut self, address: &Address, now_ns: u64) -> Option<&mut Client> {
        let entry = self.entries.get_mut(address)?;
        entry.last_heard_ns = entry.last_heard_ns.max(now_ns);
        Some(&mut entry.client)
    }

    /// Serves a new sender, heard from at `now_ns`; hands it back if the table is full or
    /// the address is served already.
    pub(super) fn insert(
        &mut self,
        address: Address,
        client: Client,
        now_ns: u64,
    ) -> Result<(), Client> {
        if self.is_full() || self.entries.contains_key(&address) {
            return Err(client);
        }
        let entry = Entry {
            client,
            last_heard_ns: now_ns,
        };
        self.entries.insert(address, entry);
        Ok(())
    }

    /// Stops serving the sender at `address`.
    pub(super) fn remove(&mut self, address: &Address) -> Option<Client> {
        self.entries.remove(address).map(|entry| entry.client)
    }

    /// The addresses of the senders for which `test` holds.
    pub(super) fn addresses_where(&self, test: impl Fn(&Client) -> bool) -> Vec<Address> {
        self.addresses_where_entry(|entry| test(&entry.client))
    }

    /// Removes, and hands back, every sender not heard from for the idle timeout at
    /// `now_ns`.
    pub(super) fn expire(&mut self, now_ns: u64) -> Vec<(Address, Client)> {
        let Some(timeout) = self.idle_timeout_ns else {
            return Vec::new();
        };
        let idle = self
            .addresses_where_entry(|entry| now_ns.saturating_sub(entry.last_heard_ns) >= timeout);
        idle.into_iter()
            .filter_map(|address| {
                let client = self.remove(&address)?;
                Some((address, client))
            })
            .collect()
    }

    /// When (in the same clock as the times passed in) the next sender will have been
    /// silent for the idle timeout; `None` if no sender can expire.
    pub(super) fn next_expiry_ns(&self) -> Option<u64> {
        let timeout = self.idle_timeout_ns?;
        self.entries
            .values()
            .map(|entry| entry.last_heard_ns.saturating_add(timeout))
            .min()
    }

    /// Removes every sender.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = (Address, Client)> + '_ {
        self.entries
            .drain()
            .map(|(address, entry)| (address, entry.client))
    }

    fn addresses_where_entry(&self, test: impl Fn(&Entry<Client>) -> bool) -> Vec<Address> {
        self.entries
            .iter()
            .filter(|(_, entry)| test(entry))
            .map(|(address, _)| address.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn table(max_senders: usize, idle_seconds: u64) -> SenderTable<&'static str, u32> {
        SenderTable::new(max_senders, Some(Duration::from_secs(idle_seconds)))
    }

    fn sorted(mut expired: Vec<(&'static str, u32)>) -> Vec<(&'static str, u32)> {
        expired.sort();
        expired
    }

    #[test]
    fn sender_beyond_the_limit_is_refused_until_one_leaves() {
        let mut senders = table(2, 300);
        assert_eq!(senders.insert("a", 1, 0), Ok(()));
        assert_eq!(senders.insert("b", 2, 0), Ok(()));
        assert!(senders.is_full());
        assert_eq!(senders.insert("c", 3, 0), Err(3));
        assert_eq!(senders.len(), 2);
        assert_eq!(senders.remove(&"a"), Some(1));
        assert_eq!(senders.insert("c", 3, 0), Ok(()));
        assert_eq!(senders.get(&"c"), Some(&3));
    }

    #[test]
    fn an_address_served_already_is_not_inserted_twice() {
        let mut senders = table(2, 300);
        assert_eq!(senders.insert("a", 1, 0), Ok(()));
        assert_eq!(senders.insert("a", 9, 0), Err(9));
        assert_eq!(senders.get(&"a"), Some(&1));
    }

    #[test]
    fn sender_silent_for_the_idle_timeout_expires_and_frees_its_place() {
        let mut senders = table(2, 300);
        senders.insert("quiet", 1, 0).unwrap();
        senders.insert("chatty", 2, 0).unwrap();
        assert_eq!(senders.next_expiry_ns(), Some(300 * SECOND));
        // The chatty one keeps talking; the quiet one does not.
        assert!(senders.heard(&"chatty", 200 * SECOND).is_some());
        assert_eq!(senders.expire(300 * SECOND - 1), vec![]);
        assert_eq!(senders.expire(300 * SECOND), vec![("quiet", 1)]);
        assert_eq!(senders.len(), 1);
        assert_eq!(senders.next_expiry_ns(), Some(500 * SECOND));
        // Its place is free for a newcomer.
        assert_eq!(senders.insert("new", 3, 300 * SECOND), Ok(()));
        assert_eq!(
            sorted(senders.expire(600 * SECOND)),
            vec![("chatty", 2), ("new", 3)]
        );
        assert_eq!(senders.next_expiry_ns(), None);
    }

    #[test]
    fn a_time_older_than_the_last_one_heard_does_not_turn_the_clock_back() {
        let mut senders = table(1, 10);
        senders.insert("a", 1, 100 * SECOND).unwrap();
        senders.heard(&"a", 50 * SECOND);
        assert_eq!(senders.next_expiry_ns(), Some(110 * SECOND));
    }

    #[test]
    fn without_an_idle_timeout_nobody_expires() {
        for never in [None, Some(Duration::ZERO)] {
            let mut senders: SenderTable<&str, u32> = SenderTable::new(4, never);
            senders.insert("a", 1, 0).unwrap();
            assert_eq!(senders.expire(u64::MAX), vec![]);
            assert_eq!(senders.next_expiry_ns(), None);
        }
    }

    #[test]
    fn a_huge_idle_timeout_saturates_instead_of_wrapping() {
        let mut senders: SenderTable<&str, u32> = SenderTable::new(1, Some(Duration::MAX));
        senders.insert("a", 1, 5).unwrap();
        assert_eq!(senders.next_expiry_ns(), Some(u64::MAX));
        assert_eq!(senders.expire(u64::MAX - 1), vec![]);
    }

    #[test]
    fn heard_and_get_ignore_unknown_addresses() {
        let mut senders = table(1, 10);
        assert!(senders.heard(&"nobody", 1).is_none());
        assert!(senders.get(&"nobody").is_none());
        assert_eq!(senders.remove(&"nobody"), None);
    }
}
