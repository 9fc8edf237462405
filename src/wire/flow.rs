//! The flow a frame belongs to, as a hash: what spreads conversations over a VM's receive
//! queues and over VXLAN's UDP source ports (RFC 7348 §5 asks for a hash of the inner
//! frame's headers), while every frame of one flow takes the same queue or port.

/// Where the fields [`flow_hash`] hashes lie, in an Ethernet frame and the headers after it.
mod field {
    use core::ops::Range;

    /// Destination, source and EtherType.
    pub const ETHERNET: Range<usize> = 0..14;
    pub const ETHERTYPE: Range<usize> = 12..14;
    /// The EtherType after an 802.1Q tag.
    pub const TAGGED_ETHERTYPE: Range<usize> = 16..18;
    pub const UNTAGGED_PAYLOAD: usize = 14;
    pub const TAGGED_PAYLOAD: usize = 18;
    /// IPv4, from its header's start.
    pub const IPV4_VERSION_AND_HEADER_LEN: usize = 0;
    pub const IPV4_FLAGS_AND_FRAGMENT_OFFSET: Range<usize> = 6..8;
    pub const IPV4_PROTOCOL: usize = 9;
    pub const IPV4_ADDRESSES: Range<usize> = 12..20;
    /// IPv6, from its header's start: the next header, the addresses, the payload.
    pub const IPV6_NEXT_HEADER: usize = 6;
    pub const IPV6_ADDRESSES: Range<usize> = 8..40;
    pub const IPV6_PAYLOAD: usize = 40;
    /// TCP's and UDP's source and destination ports, from their header's start.
    pub const PORTS: Range<usize> = 0..4;
}

const ETHERTYPE_VLAN: [u8; 2] = [0x81, 0x00];
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_IPV6: [u8; 2] = [0x86, 0xdd];
const PROTOCOL_TCP: u8 = 6;
const PROTOCOL_UDP: u8 = 17;
/// IPv4's more-fragments flag and fragment offset.
const IPV4_FRAGMENT_BITS: u16 = 0x3fff;

/// A hash of `frame`'s flow, for spreading flows over queues or VXLAN source ports while
/// keeping each flow on one. The flow is its Ethernet header (addresses and EtherType; a
/// frame shorter than that hashes what it has); for IPv4 and IPv6, after at most one
/// 802.1Q tag, also the addresses and protocol; for TCP and UDP also the ports, except in
/// an IPv4 fragment (later fragments carry none, and all of a packet's fragments must
/// take one path) or behind IPv6 extension headers (not followed). Whatever the bytes,
/// this only reads what is there.
pub fn flow_hash(frame: &[u8]) -> u32 {
    let mut hash = Mix::default();
    let Some(header) = frame.get(field::ETHERNET) else {
        hash.bytes(frame);
        return hash.finish();
    };
    hash.bytes(header);
    let (ethertype, l3) = match frame.get(field::ETHERTYPE) {
        Some(t) if t == ETHERTYPE_VLAN => {
            (frame.get(field::TAGGED_ETHERTYPE), field::TAGGED_PAYLOAD)
        }
        t => (t, field::UNTAGGED_PAYLOAD),
    };
    let ip = frame.get(l3..).unwrap_or_default();
    let ports_at = match ethertype {
        Some(t) if t == ETHERTYPE_IPV4 => {
            let (Some(&version_and_len), Some(&protocol), Some(addresses), Some(fragment)) = (
                ip.get(field::IPV4_VERSION_AND_HEADER_LEN),
                ip.get(field::IPV4_PROTOCOL),
                ip.get(field::IPV4_ADDRESSES),
                ip.get(field::IPV4_FLAGS_AND_FRAGMENT_OFFSET),
            ) else {
                return hash.finish();
            };
            hash.bytes(addresses);
            hash.word(u64::from(protocol));
            let fragment = u16::from_be_bytes([fragment[0], fragment[1]]);
            let header_len = usize::from(version_and_len & 0x0f) * 4;
            (fragment & IPV4_FRAGMENT_BITS == 0).then_some((protocol, header_len))
        }
        Some(t) if t == ETHERTYPE_IPV6 => {
            let (Some(&next_header), Some(addresses)) = (
                ip.get(field::IPV6_NEXT_HEADER),
                ip.get(field::IPV6_ADDRESSES),
            ) else {
                return hash.finish();
            };
            hash.bytes(addresses);
            hash.word(u64::from(next_header));
            Some((next_header, field::IPV6_PAYLOAD))
        }
        _ => None,
    };
    if let Some((protocol, offset)) = ports_at
        && (protocol == PROTOCOL_TCP || protocol == PROTOCOL_UDP)
        && let Some(ports) = ip.get(offset..).and_then(|l4| l4.get(field::PORTS))
    {
        hash.bytes(ports);
    }
    hash.finish()
}

/// Which of `count` queues (or ports) the flow with `hash` takes: the hash scaled to
/// `count` by a multiplication (its high bits decide), not reduced by a division, which
/// costs a few tens of cycles per frame.
pub fn choose(hash: u32, count: usize) -> usize {
    ((u64::from(hash) * count as u64) >> 32) as usize
}

/// The state of a [`flow_hash`]: the fields taken eight bytes at a time, each step a
/// rotation and an exclusive or (no multiply chained from one field to the next, which
/// is what a byte-wise hash such as FNV-1a costs: a multiply per byte, each waiting for
/// the last, about 80 cycles for an IPv4 frame), and mixed once at the end. Nothing here
/// needs to resist an adversary: a guest can only crowd its own queues.
#[derive(Default)]
struct Mix(u64);

impl Mix {
    fn word(&mut self, word: u64) {
        self.0 = self.0.rotate_left(23) ^ word;
    }

    /// `bytes` in words of eight, the last one padded with zeros, and then their count
    /// (so that fields of different lengths are told apart).
    fn bytes(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in words.by_ref() {
            let mut w = [0; 8];
            w.copy_from_slice(word);
            self.word(u64::from_le_bytes(w));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = [0; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(w));
        }
        self.word(bytes.len() as u64);
    }

    /// The words mixed so that every bit of them moves every bit of the hash (the
    /// finaliser of MurmurHash3's 64-bit variant), folded to 32 bits.
    fn finish(self) -> u32 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        (h ^ (h >> 32)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_for(frame: &[u8], count: usize) -> usize {
        choose(flow_hash(frame), count)
    }

    /// An untagged IPv4/UDP frame from 10.0.0.`host` port `port` to 10.0.0.1 port 9.
    fn udp4(host: u8, port: u16, fragment: u16) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        f.extend_from_slice(&[0x45, 0, 0, 28, 0, 0]);
        f.extend_from_slice(&fragment.to_be_bytes());
        f.extend_from_slice(&[64, PROTOCOL_UDP, 0, 0, 10, 0, 0, host, 10, 0, 0, 1]);
        f.extend_from_slice(&port.to_be_bytes());
        f.extend_from_slice(&[0, 9, 0, 8, 0, 0]);
        f
    }

    fn spread(frames: impl Iterator<Item = Vec<u8>>) -> [usize; 2] {
        let mut per_queue = [0; 2];
        for f in frames {
            per_queue[queue_for(&f, 2)] += 1;
        }
        per_queue
    }

    #[test]
    fn conversations_between_the_same_two_macs_spread_over_the_queues() {
        let by_address = spread((1..=64).map(|host| udp4(host, 9, 0)));
        let by_port = spread((1..=64).map(|port| udp4(2, 1000 + port, 0)));
        for per_queue in [by_address, by_port] {
            assert!(per_queue.iter().all(|&n| n >= 16), "{per_queue:?}");
        }
    }

    #[test]
    fn a_flow_keeps_its_queue_and_a_fragmented_packet_keeps_one_queue() {
        let first = queue_for(&udp4(7, 4000, 0), 4);
        assert_eq!(queue_for(&udp4(7, 4000, 0), 4), first);
        // More fragments, then a later fragment (whose "ports" are payload bytes).
        let fragments = [udp4(7, 4000, 0x2000), udp4(7, 1234, 0x0010)];
        assert_eq!(queue_for(&fragments[0], 4), queue_for(&fragments[1], 4));
    }

    #[test]
    fn truncated_and_odd_frames_get_a_queue_without_panicking() {
        let whole = udp4(3, 5000, 0);
        for len in 0..=whole.len() {
            assert!(queue_for(&whole[..len], 3) < 3);
        }
        let mut tagged = whole[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        tagged.extend_from_slice(&whole[12..]);
        for len in 0..=tagged.len() {
            assert!(queue_for(&tagged[..len], 2) < 2);
        }
        let mut v6 = [0u8; 14 + 40 + 4];
        v6[12..14].copy_from_slice(&ETHERTYPE_IPV6);
        v6[14 + field::IPV6_NEXT_HEADER] = PROTOCOL_TCP;
        for len in 0..=v6.len() {
            assert!(queue_for(&v6[..len], 5) < 5);
        }
    }
}
