//! Ethernet II frames: addresses, the fourteen-byte header, and the network's frame rules.
//!
//! guestnet is a layer-2 network, so the only part of a frame it ever interprets is the
//! header: destination and source MAC and the EtherType. Everything after that is the
//! guest's business and is copied untouched. This module therefore offers three things:
//!
//! * [`MacAddress`], with the bit tests the delivery rules need (multicast, broadcast,
//!   locally administered) and the default address scheme inherited from lguest
//!   ([`MacAddress::for_slot`]);
//! * [`EthernetFrame`], a zero-copy view over any buffer — a slice of a shared ring, a
//!   `Vec`, an array — in the style of smoltcp's packet types;
//! * [`EthernetRepr`] and [`validate_frame`], the checked summary the forwarding code
//!   works from. A frame that passes [`validate_frame`] obeys the design's rule 3.5: at
//!   least a header long, no longer than the network allows, and not claiming a multicast
//!   source (no real interface owns one, and a learning bridge must never learn one).
//!
//! The frame check sequence is not part of any frame here: TAP devices, virtio-net, QEMU's
//! stream sockets and pcap files all carry frames without it, so neither do we.

use core::fmt;
use core::str::FromStr;

/// Length of the Ethernet II header: destination, source, EtherType.
pub const HEADER_LEN: usize = 14;

/// Length of one IEEE 802.1Q tag (TPID 0x8100 plus the 16-bit tag control field).
pub const VLAN_TAG_LEN: usize = 4;

/// Length of a MAC address in bytes.
const MAC_LEN: usize = 6;

/// Errors found while reading or checking wire formats.
///
/// They are small and `Copy` because they are produced on the data path, where the caller's
/// usual answer is to bump a counter and drop the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the format requires (a runt frame, a cut-off header).
    #[error("truncated")]
    Truncated,
    /// The frame is longer than the network's maximum frame length.
    #[error("too long")]
    TooLong,
    /// A MAC address string did not have the form `aa:bb:cc:dd:ee:ff`.
    #[error("bad mac address")]
    BadMacAddress,
    /// The source address has the multicast bit set; no interface can send from it.
    #[error("multicast source address")]
    MulticastSource,
    /// A header length that is none of the format's layouts (the virtio-net header is 10
    /// or 12 bytes).
    #[error("bad header length")]
    BadHeaderLength,
}

/// A 48-bit IEEE 802 MAC address, stored in transmission order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// The broadcast address, `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddress = MacAddress([0xff; 6]);

    /// The all-zero address, which guestnet (like lguest) uses to mean "no address".
    pub const ZERO: MacAddress = MacAddress([0; 6]);

    /// An address from its six octets in transmission order.
    pub const fn new(bytes: [u8; 6]) -> Self {
        MacAddress(bytes)
    }

    /// An address from the first six bytes of `b`, or `None` if `b` is shorter than that.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        let octets: [u8; MAC_LEN] = b.get(..MAC_LEN)?.try_into().ok()?;
        Some(MacAddress(octets))
    }

    /// The six octets in transmission order.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Whether this is `ff:ff:ff:ff:ff:ff`.
    pub const fn is_broadcast(&self) -> bool {
        self.to_u64() == MacAddress::BROADCAST.to_u64()
    }

    /// Whether the group bit (0x01 of the first octet) is set. Broadcast is multicast too.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Whether this addresses a single interface (the group bit is clear).
    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// Whether this is `00:00:00:00:00:00`.
    pub const fn is_zero(&self) -> bool {
        self.to_u64() == 0
    }

    /// Whether the locally-administered bit (0x02 of the first octet) is set, i.e. the
    /// address was assigned by software rather than burned in by a vendor.
    pub const fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// The address packed big-endian into the low 48 bits of a `u64`:
    /// `02:00:00:00:00:01` becomes `0x0200_0000_0001`.
    ///
    /// Handy as a compact key, and it orders the same way as the octets do.
    pub const fn to_u64(&self) -> u64 {
        let o = self.0;
        u64::from_be_bytes([0, 0, o[0], o[1], o[2], o[3], o[4], o[5]])
    }

    /// The inverse of [`to_u64`](Self::to_u64). The upper 16 bits of `v` are ignored.
    pub const fn from_u64(v: u64) -> Self {
        let b = v.to_be_bytes();
        MacAddress([b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// The default address of the peer in slot `slot` of a network tagged `network_tag`.
    ///
    /// lguest gave guest `id` the address `02:00:<id, 2 bytes little-endian>:00:00`. We keep
    /// that shape — locally administered, unicast, slot number in octets 2 and 3 little-endian
    /// — and put a per-network tag (big-endian) into the last two octets, which lguest left
    /// zero, so that peers of two different networks bridged together do not collide.
    ///
    /// `for_slot(1, 0)` is `02:00:01:00:00:00`, exactly lguest's address for guest 1.
    pub const fn for_slot(slot: u16, network_tag: u16) -> Self {
        let s = slot.to_le_bytes();
        let t = network_tag.to_be_bytes();
        MacAddress([0x02, 0x00, s[0], s[1], t[0], t[1]])
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

// Debug prints the same text as Display: `MacAddress([2, 0, 0, 0, 0, 1])` in a log or a
// failed assertion is much harder to read than the address itself.
impl fmt::Debug for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The value of one ASCII hex digit, or `None`.
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl FromStr for MacAddress {
    type Err = WireError;

    /// Parses `aa:bb:cc:dd:ee:ff` or `aa-bb-cc-dd-ee-ff`, in either case. Every octet must
    /// be exactly two hex digits and the separators must all be the same character; looser
    /// forms are more often a typo than an intent.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Work on bytes: a multi-byte UTF-8 character simply fails the checks below, so no
        // string slicing can land inside one.
        let bytes = s.as_bytes();
        if bytes.len() != 17 {
            return Err(WireError::BadMacAddress);
        }
        let separator = bytes[2];
        if separator != b':' && separator != b'-' {
            return Err(WireError::BadMacAddress);
        }
        let mut octets = [0u8; MAC_LEN];
        for (i, chunk) in bytes.chunks(3).enumerate() {
            let (Some(&hi), Some(&lo)) = (chunk.first(), chunk.get(1)) else {
                return Err(WireError::BadMacAddress);
            };
            if chunk.get(2).is_some_and(|&c| c != separator) {
                return Err(WireError::BadMacAddress);
            }
            let (Some(hi), Some(lo)) = (hex_digit(hi), hex_digit(lo)) else {
                return Err(WireError::BadMacAddress);
            };
            let Some(slot) = octets.get_mut(i) else {
                return Err(WireError::BadMacAddress);
            };
            *slot = (hi << 4) | lo;
        }
        Ok(MacAddress(octets))
    }
}

impl serde::Serialize for MacAddress {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddress {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MacVisitor;

        impl serde::de::Visitor<'_> for MacVisitor {
            type Value = MacAddress;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a MAC address such as \"02:00:00:00:00:01\"")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MacAddress, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(MacVisitor)
    }
}

/// The EtherType field: what protocol the payload carries.
///
/// [`EtherType::Unknown`] holds every value without a named variant. `From<u16>` never
/// produces `Unknown` for a named value, so comparisons between converted values are sound;
/// do not construct `Unknown(0x0800)` by hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtherType {
    /// IPv4, 0x0800.
    Ipv4,
    /// ARP, 0x0806.
    Arp,
    /// An IEEE 802.1Q VLAN tag, 0x8100; the real EtherType follows the 4-byte tag.
    Vlan,
    /// IPv6, 0x86DD.
    Ipv6,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(value: u16) -> Self {
        match value {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x8100 => EtherType::Vlan,
            0x86dd => EtherType::Ipv6,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(value: EtherType) -> Self {
        match value {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Vlan => 0x8100,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Unknown(other) => other,
        }
    }
}

/// Byte ranges of the header fields.
mod field {
    use core::ops::Range;

    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: usize = 14;
    /// The tag control information of an 802.1Q tag, right after the outer EtherType.
    pub const VLAN_TCI: Range<usize> = 14..16;
}

/// A read/write view of an Ethernet II frame held in any buffer.
///
/// The view does not copy: it borrows or owns `T` and reads fields out of it on demand.
///
/// **The rule:** once [`check_len`](Self::check_len) has succeeded — which
/// [`new_checked`](Self::new_checked) does for you — no accessor or setter panics, whatever
/// the buffer holds. A view made with [`new_unchecked`](Self::new_unchecked) over a buffer
/// shorter than [`HEADER_LEN`] may panic on access; use that constructor only for buffers
/// whose length you sized yourself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// A view over `buffer` without checking its length.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// A view over `buffer`, refusing one too short to hold a header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Checks that the buffer holds at least a full header ([`HEADER_LEN`] bytes).
    ///
    /// After this succeeds, no accessor of this view panics.
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The destination address.
    pub fn destination(&self) -> MacAddress {
        self.mac_at(field::DESTINATION.start)
    }

    /// The source address.
    pub fn source(&self) -> MacAddress {
        self.mac_at(field::SOURCE.start)
    }

    /// The (outer) EtherType. For a VLAN-tagged frame this is [`EtherType::Vlan`].
    pub fn ethertype(&self) -> EtherType {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        EtherType::from(u16::from_be_bytes([b[0], b[1]]))
    }

    /// The 12-bit VLAN identifier of an 802.1Q-tagged frame, or `None` if the frame is not
    /// tagged or too short to hold the tag. Never panics after `check_len`.
    pub fn vlan_id(&self) -> Option<u16> {
        if self.ethertype() != EtherType::Vlan {
            return None;
        }
        let tci = self.buffer.as_ref().get(field::VLAN_TCI)?;
        Some(u16::from_be_bytes([tci[0], tci[1]]) & 0x0fff)
    }

    /// Everything after the 14-byte header (for a tagged frame, starting with the tag).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }

    /// Total length of the frame in bytes, header included.
    pub fn len(&self) -> usize {
        self.buffer.as_ref().len()
    }

    /// Whether the buffer is empty (such a view never passes `check_len`).
    pub fn is_empty(&self) -> bool {
        self.buffer.as_ref().is_empty()
    }

    fn mac_at(&self, start: usize) -> MacAddress {
        let mut octets = [0u8; MAC_LEN];
        octets.copy_from_slice(&self.buffer.as_ref()[start..start + MAC_LEN]);
        MacAddress(octets)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination address.
    pub fn set_destination(&mut self, mac: MacAddress) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&mac.0);
    }

    /// Sets the source address.
    pub fn set_source(&mut self, mac: MacAddress) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&mac.0);
    }

    /// Sets the (outer) EtherType.
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        let value = u16::from(ethertype).to_be_bytes();
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&value);
    }

    /// Everything after the 14-byte header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for EthernetFrame<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// Validated summary of a frame for the network's delivery rules.
///
/// Holding one means the header was complete and the source was not a multicast address;
/// the forwarding code needs nothing else from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    /// The source address; never multicast.
    pub src: MacAddress,
    /// The destination address.
    pub dst: MacAddress,
    /// The outer EtherType.
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Reads and checks the header of `frame`.
    ///
    /// Fails with [`WireError::Truncated`] if the frame is shorter than a header and with
    /// [`WireError::MulticastSource`] if the source has the group bit set. It does not
    /// check the maximum length, which depends on the network; see [`validate_frame`].
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<Self, WireError> {
        frame.check_len()?;
        let src = frame.source();
        if src.is_multicast() {
            return Err(WireError::MulticastSource);
        }
        Ok(EthernetRepr {
            src,
            dst: frame.destination(),
            ethertype: frame.ethertype(),
        })
    }

    /// Length of the header this summary emits: always [`HEADER_LEN`].
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes this header into the first 14 bytes of `frame`, leaving the payload alone.
    ///
    /// # Panics
    ///
    /// If the frame's buffer is shorter than [`HEADER_LEN`]; size the buffer (or call
    /// `check_len`) first. The buffer is the caller's own, never peer input.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_destination(self.dst);
        frame.set_source(self.src);
        frame.set_ethertype(self.ethertype);
    }
}

/// The longest frame a network of MTU `mtu` carries: the 14-byte header plus `mtu`, plus 4
/// when the frame carries one 802.1Q tag.
///
/// With the classic MTU of 1500 that is 1514 bytes untagged (lguest's receive buffer size)
/// and 1518 tagged. Saturates instead of overflowing for absurd MTUs.
pub const fn max_frame_len(mtu: usize, vlan_tagged: bool) -> usize {
    let untagged = HEADER_LEN.saturating_add(mtu);
    if vlan_tagged {
        untagged.saturating_add(VLAN_TAG_LEN)
    } else {
        untagged
    }
}

/// Checks a whole frame against a network's rules and returns its summary.
///
/// * shorter than [`HEADER_LEN`] → [`WireError::Truncated`] (a runt);
/// * EtherType 0x8100 (one 802.1Q tag) but too short to hold the tag → `Truncated`;
/// * longer than [`max_frame_len`]`(mtu, tagged)` → [`WireError::TooLong`] (a giant),
///   where a frame counts as tagged when its outer EtherType is 0x8100, so a tagged frame
///   may be four bytes longer than an untagged one;
/// * source address multicast → [`WireError::MulticastSource`].
///
/// Length problems are reported before address problems, so a counter of giants counts
/// every giant.
pub fn validate_frame(frame: &[u8], mtu: usize) -> Result<EthernetRepr, WireError> {
    let view = EthernetFrame::new_checked(frame)?;
    let tagged = view.ethertype() == EtherType::Vlan;
    if tagged && frame.len() < HEADER_LEN + VLAN_TAG_LEN {
        return Err(WireError::Truncated);
    }
    // Under a tag, another tag must be whole too: a port that takes the outer one off
    // would otherwise hand on a frame that claims a tag it does not hold.
    let inner = HEADER_LEN + VLAN_TAG_LEN - 2;
    if tagged
        && EtherType::from(u16::from_be_bytes([frame[inner], frame[inner + 1]])) == EtherType::Vlan
        && frame.len() < HEADER_LEN + 2 * VLAN_TAG_LEN
    {
        return Err(WireError::Truncated);
    }
    if frame.len() > max_frame_len(mtu, tagged) {
        return Err(WireError::TooLong);
    }
    EthernetRepr::parse(&view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A real ARP request as a Linux host sends it: "who has 192.168.1.1? tell 192.168.1.10",
    /// padded to the 60-byte minimum by the sender.
    const ARP_REQUEST: [u8; 60] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // destination: broadcast
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // source: a QEMU NIC
        0x08, 0x06, // EtherType: ARP
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // Ethernet/IPv4, request
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0xc0, 0xa8, 0x01, 0x0a, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0xa8, 0x01, 0x01, // target
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // padding
    ];

    /// The start of an 802.1Q-tagged IPv4 frame on VLAN 100, priority 5.
    const TAGGED_IPV4: [u8; 38] = [
        0x02, 0x00, 0x02, 0x00, 0x00, 0x00, // destination
        0x02, 0x00, 0x01, 0x00, 0x00, 0x00, // source
        0x81, 0x00, // TPID: 802.1Q
        0xa0, 0x64, // PCP 5, DEI 0, VID 100
        0x08, 0x00, // inner EtherType: IPv4
        0x45, 0x00, 0x00, 0x14, 0x00, 0x00, 0x40, 0x00, 0x40, 0x00, // IPv4 header...
        0x00, 0x00, 0x0a, 0x00, 0x00, 0x01, 0x0a, 0x00, 0x00, 0x02, // ...addresses
    ];

    /// An IPv6 all-nodes multicast header (destination 33:33:00:00:00:01).
    const IPV6_ALL_NODES: [u8; 14] = [
        0x33, 0x33, 0x00, 0x00, 0x00, 0x01, 0x52, 0x54, 0x00, 0xab, 0xcd, 0xef, 0x86, 0xdd,
    ];

    fn frame_of_len(len: usize, ethertype: u16) -> Vec<u8> {
        let mut f = vec![0u8; len];
        if len >= HEADER_LEN {
            f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
            f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
            f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        }
        f
    }

    #[test]
    fn arp_request_parses() {
        let frame = EthernetFrame::new_checked(&ARP_REQUEST[..]).unwrap();
        assert_eq!(frame.destination(), MacAddress::BROADCAST);
        assert_eq!(
            frame.source(),
            MacAddress::new([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
        );
        assert_eq!(frame.ethertype(), EtherType::Arp);
        assert_eq!(frame.vlan_id(), None);
        assert_eq!(frame.len(), 60);
        assert_eq!(&frame.payload()[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        let repr = validate_frame(&ARP_REQUEST, 1500).unwrap();
        assert!(repr.dst.is_broadcast());
        assert_eq!(repr.ethertype, EtherType::Arp);
    }

    #[test]
    fn tagged_frame_parses() {
        let frame = EthernetFrame::new_checked(&TAGGED_IPV4[..]).unwrap();
        assert_eq!(frame.ethertype(), EtherType::Vlan);
        assert_eq!(frame.vlan_id(), Some(100));
        assert_eq!(&frame.payload()[2..4], &[0x08, 0x00]);
        let repr = validate_frame(&TAGGED_IPV4, 1500).unwrap();
        assert_eq!(repr.src, MacAddress::for_slot(1, 0));
        assert_eq!(repr.dst, MacAddress::for_slot(2, 0));
    }

    #[test]
    fn ipv6_multicast_destination() {
        let repr = validate_frame(&IPV6_ALL_NODES, 1500).unwrap();
        assert_eq!(repr.ethertype, EtherType::Ipv6);
        assert!(repr.dst.is_multicast());
        assert!(!repr.dst.is_broadcast());
        assert!(!repr.dst.is_unicast());
        assert_eq!(repr.dst.to_string(), "33:33:00:00:00:01");
    }

    #[test]
    fn multicast_source_is_refused() {
        let mut f = ARP_REQUEST;
        f[6] |= 0x01;
        assert_eq!(validate_frame(&f, 1500), Err(WireError::MulticastSource));
        let view = EthernetFrame::new_unchecked(&f[..]);
        assert_eq!(EthernetRepr::parse(&view), Err(WireError::MulticastSource));
    }

    #[test]
    fn parse_checks_length_even_when_unchecked() {
        let view = EthernetFrame::new_unchecked(&ARP_REQUEST[..13]);
        assert_eq!(EthernetRepr::parse(&view), Err(WireError::Truncated));
        assert_eq!(
            EthernetFrame::new_checked(&[0u8; 0][..]).err(),
            Some(WireError::Truncated)
        );
    }

    #[test]
    fn emit_then_parse_round_trips() {
        let repr = EthernetRepr {
            src: MacAddress::for_slot(7, 0xbeef),
            dst: MacAddress::BROADCAST,
            ethertype: EtherType::Unknown(0x88b5),
        };
        let mut frame = EthernetFrame::new_checked(vec![0u8; 20]).unwrap();
        repr.emit(&mut frame);
        frame.payload_mut().copy_from_slice(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(EthernetRepr::parse(&frame), Ok(repr));
        assert_eq!(repr.header_len(), 14);
        let bytes = frame.into_inner();
        assert_eq!(
            &bytes[..14],
            &[
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x07, 0x00, 0xbe, 0xef, 0x88, 0xb5
            ]
        );
        assert_eq!(&bytes[14..], &[1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn validate_frame_length_boundaries() {
        let ipv4 = 0x0800;
        let vlan = 0x8100;
        assert_eq!(
            validate_frame(&frame_of_len(13, ipv4), 1500),
            Err(WireError::Truncated)
        );
        assert!(validate_frame(&frame_of_len(14, ipv4), 1500).is_ok());
        assert!(validate_frame(&frame_of_len(1514, ipv4), 1500).is_ok());
        assert_eq!(
            validate_frame(&frame_of_len(1515, ipv4), 1500),
            Err(WireError::TooLong)
        );
        // A tagged frame gets four more bytes, and must at least hold its tag.
        assert_eq!(
            validate_frame(&frame_of_len(17, vlan), 1500),
            Err(WireError::Truncated)
        );
        assert!(validate_frame(&frame_of_len(18, vlan), 1500).is_ok());
        assert!(validate_frame(&frame_of_len(1518, vlan), 1500).is_ok());
        // Under a tag another tag must be whole as well (a port may take the outer one
        // off and hand the rest on).
        let mut double = frame_of_len(21, vlan);
        double[16..18].copy_from_slice(&[0x81, 0x00]);
        assert_eq!(validate_frame(&double, 1500), Err(WireError::Truncated));
        double.push(0);
        assert!(validate_frame(&double, 1500).is_ok());
        assert_eq!(
            validate_frame(&frame_of_len(1519, vlan), 1500),
            Err(WireError::TooLong)
        );
        // Jumbo frames follow the MTU.
        assert!(validate_frame(&frame_of_len(9014, ipv4), 9000).is_ok());
        assert_eq!(max_frame_len(1500, false), 1514);
        assert_eq!(max_frame_len(1500, true), 1518);
        assert_eq!(max_frame_len(usize::MAX, true), usize::MAX);
    }

    #[test]
    fn a_giant_is_reported_before_a_bad_source() {
        let mut f = frame_of_len(1515, 0x0800);
        f[6] = 0x01;
        assert_eq!(validate_frame(&f, 1500), Err(WireError::TooLong));
    }

    #[test]
    fn mac_display_and_parse() {
        let mac = MacAddress::new([0x02, 0, 0, 0, 0, 1]);
        assert_eq!(mac.to_string(), "02:00:00:00:00:01");
        assert_eq!(format!("{mac:?}"), "02:00:00:00:00:01");
        assert_eq!("02:00:00:00:00:01".parse::<MacAddress>(), Ok(mac));
        assert_eq!(
            "AA-bb-CC-dd-EE-ff".parse::<MacAddress>(),
            Ok(MacAddress::new([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]))
        );
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:",
            "02:00:00:00:00:0g",
            "02:00-00:00:00:01",
            "02.00.00.00.00.01",
            "2:0:0:0:0:1",
            "02:00:00:00:00:é",
            " 02:00:00:00:00:1",
            "+2:00:00:00:00:01",
        ] {
            assert_eq!(
                bad.parse::<MacAddress>(),
                Err(WireError::BadMacAddress),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn mac_serde_uses_the_text_form() {
        let mac = MacAddress::for_slot(3, 0x0102);
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"02:00:03:00:01:02\"");
        let back: MacAddress = serde_json::from_str(&json).unwrap();
        assert_eq!(back, mac);
        assert!(serde_json::from_str::<MacAddress>("\"nonsense\"").is_err());
    }

    #[test]
    fn mac_bits() {
        assert!(MacAddress::BROADCAST.is_broadcast());
        assert!(MacAddress::BROADCAST.is_multicast());
        assert!(MacAddress::ZERO.is_zero());
        assert!(MacAddress::ZERO.is_unicast());
        assert!(!MacAddress::ZERO.is_locally_administered());
        assert_eq!(MacAddress::default(), MacAddress::ZERO);
        let m = MacAddress::new([0x01, 0x00, 0x5e, 0, 0, 1]);
        assert!(m.is_multicast() && !m.is_broadcast());
        assert!(MacAddress::for_slot(0, 0).is_locally_administered());
        assert!(MacAddress::for_slot(u16::MAX, u16::MAX).is_unicast());
        assert_eq!(MacAddress::from_slice(&[1, 2, 3, 4, 5]), None);
        assert_eq!(
            MacAddress::from_slice(&[1, 2, 3, 4, 5, 6, 7]),
            Some(MacAddress::new([1, 2, 3, 4, 5, 6]))
        );
    }

    #[test]
    fn for_slot_examples() {
        // lguest's own addresses: 02:00:<id LE>:00:00.
        assert_eq!(MacAddress::for_slot(1, 0).to_string(), "02:00:01:00:00:00");
        assert_eq!(
            MacAddress::for_slot(0x0102, 0).to_string(),
            "02:00:02:01:00:00"
        );
        assert_eq!(
            MacAddress::for_slot(5, 0xabcd).to_string(),
            "02:00:05:00:ab:cd"
        );
    }

    #[test]
    fn u64_packing() {
        assert_eq!(
            MacAddress::new([0x02, 0, 0, 0, 0, 1]).to_u64(),
            0x0200_0000_0001
        );
        assert_eq!(MacAddress::BROADCAST.to_u64(), 0xffff_ffff_ffff);
        assert_eq!(
            MacAddress::from_u64(0xdead_0200_0000_0001),
            MacAddress::new([0x02, 0, 0, 0, 0, 1])
        );
    }

    #[test]
    fn ethertype_conversions() {
        for (value, ty) in [
            (0x0800, EtherType::Ipv4),
            (0x0806, EtherType::Arp),
            (0x8100, EtherType::Vlan),
            (0x86dd, EtherType::Ipv6),
            (0x88cc, EtherType::Unknown(0x88cc)),
        ] {
            assert_eq!(EtherType::from(value), ty);
            assert_eq!(u16::from(ty), value);
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                              mtu in 0usize..2000) {
            let _ = validate_frame(&bytes, mtu);
            if let Ok(frame) = EthernetFrame::new_checked(&bytes[..]) {
                let _ = (frame.destination(), frame.source(), frame.ethertype());
                let _ = (frame.payload(), frame.vlan_id(), frame.len());
                let _ = EthernetRepr::parse(&frame);
            } else {
                prop_assert!(bytes.len() < HEADER_LEN);
            }
        }

        #[test]
        fn u64_round_trip(octets in any::<[u8; 6]>(), high in any::<u16>()) {
            let mac = MacAddress::new(octets);
            prop_assert_eq!(MacAddress::from_u64(mac.to_u64()), mac);
            prop_assert!(mac.to_u64() < 1 << 48);
            let v = mac.to_u64() | (u64::from(high) << 48);
            prop_assert_eq!(MacAddress::from_u64(v), mac);
        }

        #[test]
        fn text_round_trip(octets in any::<[u8; 6]>()) {
            let mac = MacAddress::new(octets);
            prop_assert_eq!(mac.to_string().parse::<MacAddress>(), Ok(mac));
            let dashed = mac.to_string().replace(':', "-").to_uppercase();
            prop_assert_eq!(dashed.parse::<MacAddress>(), Ok(mac));
        }

        #[test]
        fn mac_parse_never_panics(s in "\\PC{0,20}") {
            let _ = s.parse::<MacAddress>();
        }
    }
}
