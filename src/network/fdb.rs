//! The learned forwarding table: source address → peer, with ageing.
//!
//! A fixed open-addressing hash table in the region. An address hashes to a home bucket
//! and may sit in any of the [`PROBE`] buckets from there. Each entry is two words: `key`
//! (MAC in the low 48 bits, peer index + 1 in the top 16; zero when empty) and `seen_ms`,
//! the monotonic millisecond it was last confirmed. An entry older than [`AGE_MS`] counts
//! as absent and may be taken over.
//!
//! Senders learn their own frames' source addresses (the sender knows who it is, so a peer
//! cannot learn addresses for another) and look destinations up without locks. Concurrent
//! learners race with compare-and-swap on `key`; the loser simply tries the next bucket
//! or finds the winner's entry. A reader that sees a fresh key with a stale time treats
//! the address as unknown for that frame and floods it, which is harmless.

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

fn key(mac: MacAddress, peer: u16) -> u64 {
    (mac.to_u64() & MAC_MASK) | ((peer as u64 + 1) << 48)
}

fn split(key: u64) -> Option<(MacAddress, u16)> {
    let owner = key >> 48;
    if owner == 0 {
        return None;
    }
    Some((MacAddress::from_u64(key & MAC_MASK), (owner - 1) as u16))
}

fn home(mac: MacAddress) -> u64 {
    mac.to_u64().wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32
}

/// How far ahead of a reader's clock an entry's time may be: senders read the clock once
/// per batch, so one may legitimately be a little ahead of another.
const CLOCK_SLACK_MS: u64 = 1_000;

fn fresh(entry: &FdbEntry, now_ms: u64) -> bool {
    let seen = entry.seen_ms.load(Ordering::Relaxed);
    // A time from the future (a scribbler's) would otherwise never age out.
    seen <= now_ms.saturating_add(CLOCK_SLACK_MS) && now_ms.saturating_sub(seen) <= AGE_MS
}

/// The peer `mac` was learned behind, if it is known and fresh.
pub fn lookup(table: Strided<'_, FdbEntry>, mac: MacAddress, now_ms: u64) -> Option<u16> {
    let start = home(mac);
    for i in 0..PROBE {
        let entry = table.at(start.wrapping_add(i));
        let Some((found, peer)) = split(entry.key.load(Ordering::Acquire)) else {
            continue;
        };
        if found == mac {
            return fresh(entry, now_ms).then_some(peer);
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

/// Records that `mac` is behind `peer` at `now_ms`.
pub fn learn(table: Strided<'_, FdbEntry>, mac: MacAddress, peer: u16, now_ms: u64) -> Learned {
    let start = home(mac);
    let wanted = key(mac, peer);
    let mut vacancy = None;
    for i in 0..PROBE {
        let entry = table.at(start.wrapping_add(i));
        let seen = entry.key.load(Ordering::Acquire);
        match split(seen) {
            Some((found, owner)) if found == mac => {
                entry.seen_ms.store(now_ms, Ordering::Relaxed);
                if owner == peer {
                    return Learned::Refreshed;
                }
                return match entry.key.compare_exchange(
                    seen,
                    wanted,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => Learned::Moved,
                    // Someone else moved it at the same moment; their word stands until
                    // our next refresh.
                    Err(_) => Learned::Refreshed,
                };
            }
            Some(_) if fresh(entry, now_ms) => {}
            _ => {
                if vacancy.is_none() {
                    vacancy = Some((entry, seen));
                }
            }
        }
    }
    let Some((entry, seen)) = vacancy else {
        return Learned::TableFull;
    };
    // Time first, key second: a reader that sees the new key must not see it expired.
    entry.seen_ms.store(now_ms, Ordering::Relaxed);
    match entry
        .key
        .compare_exchange(seen, wanted, Ordering::AcqRel, Ordering::Relaxed)
    {
        Ok(_) => Learned::Inserted,
        Err(_) => Learned::TableFull,
    }
}

/// Forgets every address learned behind `peer` (it left or died); returns how many.
pub fn forget_peer(table: Strided<'_, FdbEntry>, peer: u16) -> usize {
    let mut forgotten = 0;
    for i in 0..table.count() {
        let entry = table.at(i);
        let seen = entry.key.load(Ordering::Acquire);
        if split(seen).is_some_and(|(_, owner)| owner == peer)
            && entry
                .key
                .compare_exchange(seen, 0, Ordering::AcqRel, Ordering::Relaxed)
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
    /// The peer it is behind.
    pub peer: u16,
    /// Milliseconds since it was last seen.
    pub age_ms: u64,
}

/// Every fresh entry, sorted by peer then address.
pub fn entries(table: Strided<'_, FdbEntry>, now_ms: u64) -> Vec<LearnedAddress> {
    let mut list: Vec<LearnedAddress> = (0..table.count())
        .filter_map(|i| {
            let entry = table.at(i);
            let (mac, peer) = split(entry.key.load(Ordering::Acquire))?;
            fresh(entry, now_ms).then(|| LearnedAddress {
                mac,
                peer,
                age_ms: now_ms.saturating_sub(entry.seen_ms.load(Ordering::Relaxed)),
            })
        })
        .collect();
    list.sort_by_key(|e| (e.peer, e.mac));
    list
}
