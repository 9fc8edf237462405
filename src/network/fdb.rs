//! The learned forwarding table: (VLAN, source address) → peer, with ageing.
//!
//! A fixed open-addressing hash table in the region. A (VLAN, address) pair hashes to a
//! home bucket and may sit in any of the [`PROBE`] buckets from there. Each entry is two
//! words: `key` (MAC in the low 48 bits, VLAN in the next 12, a set top bit; zero when
//! empty) and `owner_seen` (peer index + 1 in the top 16 bits, 0 for nobody, and below it
//! the monotonic millisecond the address was last confirmed). An entry older than
//! [`AGE_MS`], or owned by nobody, counts as absent and may be taken over. Addresses are
//! learned per VLAN, as an 802.1Q bridge does: the same MAC may sit behind one peer in
//! VLAN 10 and another in VLAN 20.
//!
//! Senders learn their own frames' source addresses (the sender knows who it is, so a peer
//! cannot learn addresses for another) and look destinations up without locks. Owner and
//! time live in one word, so a move to another peer is a single store. Concurrent
//! learners race with compare-and-swap on `key`; the loser simply tries the next bucket
//! or finds the winner's entry. The winner writes the owner after the key: a reader that
//! sees the new key with the previous occupant's stale word treats the address as unknown
//! for that frame and floods it (within its VLAN), which is harmless.

use std::sync::atomic::Ordering;

use crate::shm::Strided;
use crate::shm::layout::FdbEntry;
use crate::wire::MacAddress;

/// Buckets an address may occupy from its home bucket.
pub const PROBE: u64 = 8;
/// An address not confirmed for this long is forgotten (the Linux bridge default).
pub const AGE_MS: u64 = 300_000;
/// A sender refreshes an entry at most this often, to keep the table's cache lines quiet.
pub const REFRESH_MS: u64 = 1_000;

const MAC_MASK: u64 = (1 << 48) - 1;
const USED: u64 = 1 << 63;
const TIME_MASK: u64 = (1 << 48) - 1;

fn key(vid: u16, mac: MacAddress) -> u64 {
    USED | (u64::from(vid & 0x0fff) << 48) | (mac.to_u64() & MAC_MASK)
}

fn split(key: u64) -> Option<(u16, MacAddress)> {
    if key & USED == 0 {
        return None;
    }
    Some((
        ((key >> 48) & 0x0fff) as u16,
        MacAddress::from_u64(key & MAC_MASK),
    ))
}

fn owner_seen(peer: u16, now_ms: u64) -> u64 {
    ((u64::from(peer) + 1) << 48) | (now_ms & TIME_MASK)
}

/// The owner of an entry's `owner_seen` word, and when it was last seen.
fn owner_of(word: u64) -> Option<(u16, u64)> {
    let owner = word >> 48;
    (owner != 0).then(|| ((owner - 1) as u16, word & TIME_MASK))
}

fn home(vid: u16, mac: MacAddress) -> u64 {
    (key(vid, mac) & !USED).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32
}

/// How far ahead of a reader's clock an entry's time may be: senders read the clock once
/// per batch, so one may legitimately be a little ahead of another.
const CLOCK_SLACK_MS: u64 = 1_000;

fn fresh(seen: u64, now_ms: u64) -> bool {
    // A time from the future (a scribbler's) would otherwise never age out.
    seen <= now_ms.saturating_add(CLOCK_SLACK_MS) && now_ms.saturating_sub(seen) <= AGE_MS
}

/// The owner of an entry, if it has one and is fresh.
fn fresh_owner(entry: &FdbEntry, now_ms: u64) -> Option<u16> {
    owner_of(entry.owner_seen.load(Ordering::Relaxed))
        .and_then(|(peer, seen)| fresh(seen, now_ms).then_some(peer))
}

/// The peer `mac` was learned behind in VLAN `vid`, if it is known and fresh.
pub fn lookup(table: Strided<'_, FdbEntry>, vid: u16, mac: MacAddress, now_ms: u64) -> Option<u16> {
    let start = home(vid, mac);
    let wanted = key(vid, mac);
    for i in 0..PROBE {
        let entry = table.at(start.wrapping_add(i));
        if entry.key.load(Ordering::Acquire) == wanted
            && let Some(peer) = fresh_owner(entry, now_ms)
        {
            return Some(peer);
        }
    }
    None
}

/// What [`learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// The entry existed for this peer; its time was refreshed.
    Refreshed,
    /// A new entry was made.
    Inserted,
    /// The address moved from another peer to this one.
    Moved,
    /// Every bucket it may use holds a fresh entry for another address.
    TableFull,
}

/// Records that `mac` is behind `peer` in VLAN `vid` at `now_ms`.
pub fn learn(
    table: Strided<'_, FdbEntry>,
    vid: u16,
    mac: MacAddress,
    peer: u16,
    now_ms: u64,
) -> Learned {
    let start = home(vid, mac);
    let wanted = key(vid, mac);
    let mut vacancy = None;
    for i in 0..PROBE {
        let entry = table.at(start.wrapping_add(i));
        let seen = entry.key.load(Ordering::Acquire);
        if seen == wanted {
            let previous = fresh_owner(entry, now_ms);
            entry
                .owner_seen
                .store(owner_seen(peer, now_ms), Ordering::Release);
            return match previous {
                Some(owner) if owner == peer => Learned::Refreshed,
                Some(_) => Learned::Moved,
                None => Learned::Inserted,
            };
        }
        if (split(seen).is_none() || fresh_owner(entry, now_ms).is_none()) && vacancy.is_none() {
            vacancy = Some((entry, seen));
        }
    }
    let Some((entry, seen)) = vacancy else {
        return Learned::TableFull;
    };
    // Key first, owner second: a reader that sees the new key with the old (stale or
    // empty) owner word takes the address as unknown, never as someone else's.
    match entry
        .key
        .compare_exchange(seen, wanted, Ordering::AcqRel, Ordering::Relaxed)
    {
        Ok(_) => {
            entry
                .owner_seen
                .store(owner_seen(peer, now_ms), Ordering::Release);
            Learned::Inserted
        }
        Err(_) => Learned::TableFull,
    }
}

/// Forgets every address learned behind `peer` (it left or died); returns how many.
pub fn forget_peer(table: Strided<'_, FdbEntry>, peer: u16) -> usize {
    let mut forgotten = 0;
    for i in 0..table.count() {
        let entry = table.at(i);
        let word = entry.owner_seen.load(Ordering::Acquire);
        if owner_of(word).is_some_and(|(owner, _)| owner == peer)
            && entry
                .owner_seen
                .compare_exchange(word, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            forgotten += 1;
        }
    }
    forgotten
}

/// One fresh entry, for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnedAddress {
    /// The address.
    pub mac: MacAddress,
    /// The VLAN it was learned in.
    pub vlan: u16,
    /// The peer it is behind.
    pub peer: u16,
    /// Milliseconds since it was last seen.
    pub age_ms: u64,
}

/// Every fresh entry, sorted by peer, then VLAN, then address.
pub fn entries(table: Strided<'_, FdbEntry>, now_ms: u64) -> Vec<LearnedAddress> {
    let mut list: Vec<LearnedAddress> = (0..table.count())
        .filter_map(|i| {
            let entry = table.at(i);
            let (vlan, mac) = split(entry.key.load(Ordering::Acquire))?;
            let (peer, seen) = owner_of(entry.owner_seen.load(Ordering::Relaxed))?;
            fresh(seen, now_ms).then(|| LearnedAddress {
                mac,
                vlan,
                peer,
                age_ms: now_ms.saturating_sub(seen),
            })
        })
        .collect();
    list.sort_by_key(|e| (e.peer, e.vlan, e.mac));
    list
}
