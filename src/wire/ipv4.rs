//! The IPv4 header (RFC 791), as the VXLAN port writes it in front of its datagrams.
//!
//! ```text
//!  0                   1                   2                   3
//! |Version|  IHL  |   DSCP/ECN    |          Total Length         |
//! |         Identification        |Flags|     Fragment Offset     |
//! |  Time to Live |    Protocol   |        Header Checksum        |
//! |                        Source Address                         |
//! |                     Destination Address                       |
//! |                    Options (IHL above 5)                      |
//! ```
//!
//! Over an IPv4 underlay the VXLAN port sends through a raw socket and writes this header
//! itself, so that it can choose the UDP source port (see [`crate::ports::vxlan`]). Linux
//! fills in the checksum, and the identification when it is zero, of every header written
//! to such a socket (raw(7)), so [`Ipv4Repr::emit`] leaves both zero;
//! [`Ipv4Packet::fill_checksum`] finishes a header that nobody else will.
//!
//! [`Ipv4Repr`] describes the headers this project writes: no options, not a fragment. A
//! header with options parses (they are skipped); a fragment is refused, since the `Repr`
//! could not say which piece of which datagram it holds.

use core::net::Ipv4Addr;

use super::offload::checksum;

/// Length of a header without options.
pub const HEADER_LEN: usize = 20;

/// The protocol number of ICMP.
pub const PROTOCOL_ICMP: u8 = 1;

/// The protocol number of UDP.
pub const PROTOCOL_UDP: u8 = 17;

/// The version this header carries.
const VERSION: u8 = 4;

/// Flag: the packet must not be fragmented on the way.
const DONT_FRAGMENT: u16 = 0x4000;

/// Flag and offset together: set in every fragment, clear in a whole datagram.
const FRAGMENT_BITS: u16 = 0x3fff;

/// Errors of an IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ipv4Error {
    /// The buffer ends before the header, or before the total length says the packet does.
    #[error("shorter than its IPv4 header or total length")]
    Truncated,
    /// The header length is below 20 bytes or above the total length.
    #[error("IPv4 header length out of range")]
    BadHeaderLength,
    /// The version field is not 4.
    #[error("not IPv4")]
    NotVersion4,
    /// The header checksum does not add up.
    #[error("wrong IPv4 header checksum")]
    BadChecksum,
    /// The packet is a fragment (more-fragments flag or a fragment offset).
    #[error("IPv4 fragment")]
    Fragment,
}

/// Byte ranges of the header fields.
mod field {
    use core::ops::Range;

    pub const VERSION_AND_HEADER_LEN: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const TOTAL_LEN: Range<usize> = 2..4;
    pub const IDENTIFICATION: Range<usize> = 4..6;
    pub const FLAGS_AND_FRAGMENT_OFFSET: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SOURCE: Range<usize> = 12..16;
    pub const DESTINATION: Range<usize> = 16..20;
}

/// A read/write view of an IPv4 packet held in any buffer.
///
/// **The rule:** once [`check_len`](Self::check_len) has succeeded — which
/// [`new_checked`](Self::new_checked) does — no accessor or setter panics. Setters of the
/// fixed header fields need only [`HEADER_LEN`] bytes, so a header can be written into a
/// 20-byte buffer through [`new_unchecked`](Self::new_unchecked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// A view over `buffer` without checking its length.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// A view over `buffer`, refusing one whose lengths do not hold together.
    pub fn new_checked(buffer: T) -> Result<Self, Ipv4Error> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds the fixed header, that the header length lies between
    /// it and the total length, and that the buffer holds the total length (it may hold
    /// more: an Ethernet frame's padding).
    pub fn check_len(&self) -> Result<(), Ipv4Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Ipv4Error::Truncated);
        }
        let header_len = self.header_len();
        let total_len = usize::from(self.total_len());
        if header_len < HEADER_LEN || header_len > total_len {
            return Err(Ipv4Error::BadHeaderLength);
        }
        if len < total_len {
            return Err(Ipv4Error::Truncated);
        }
        Ok(())
    }

    /// The version field.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION_AND_HEADER_LEN] >> 4
    }

    /// The header length in bytes (the IHL field counts 4-byte words).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VERSION_AND_HEADER_LEN] & 0x0f) * 4
    }

    /// The DSCP and ECN bits.
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// The total length: header and payload.
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TOTAL_LEN)
    }

    /// The identification field.
    pub fn identification(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENTIFICATION)
    }

    /// Whether the Don't Fragment flag is set.
    pub fn dont_fragment(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLAGS_AND_FRAGMENT_OFFSET) & DONT_FRAGMENT != 0
    }

    /// Whether this is a fragment: the More Fragments flag or a fragment offset.
    pub fn is_fragment(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLAGS_AND_FRAGMENT_OFFSET) & FRAGMENT_BITS != 0
    }

    /// The time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// The protocol of the payload.
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// The header checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The source address.
    pub fn source(&self) -> Ipv4Addr {
        read_address(self.buffer.as_ref(), field::SOURCE)
    }

    /// The destination address.
    pub fn destination(&self) -> Ipv4Addr {
        read_address(self.buffer.as_ref(), field::DESTINATION)
    }

    /// Whether the header, options included, sums to the one's-complement zero.
    pub fn verify_checksum(&self) -> bool {
        checksum(&self.buffer.as_ref()[..self.header_len()], 0) == 0
    }

    /// The payload: from the end of the header to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets the version and the header length (in bytes, a multiple of 4 up to 60).
    pub fn set_version_and_header_len(&mut self, version: u8, header_len: usize) {
        let words = (header_len / 4) as u8 & 0x0f;
        self.buffer.as_mut()[field::VERSION_AND_HEADER_LEN] = (version << 4) | words;
    }

    /// Sets the DSCP and ECN bits.
    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = value;
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::TOTAL_LEN, value);
    }

    /// Sets the identification field.
    pub fn set_identification(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::IDENTIFICATION, value);
    }

    /// Marks a whole datagram: no fragment offset, no More Fragments, and Don't Fragment
    /// as given.
    pub fn set_unfragmented(&mut self, dont_fragment: bool) {
        let flags = if dont_fragment { DONT_FRAGMENT } else { 0 };
        write_u16(
            self.buffer.as_mut(),
            field::FLAGS_AND_FRAGMENT_OFFSET,
            flags,
        );
    }

    /// Sets the time to live.
    pub fn set_ttl(&mut self, value: u8) {
        self.buffer.as_mut()[field::TTL] = value;
    }

    /// Sets the protocol of the payload.
    pub fn set_protocol(&mut self, value: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = value;
    }

    /// Sets the header checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Sets the source address.
    pub fn set_source(&mut self, address: Ipv4Addr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&address.octets());
    }

    /// Sets the destination address.
    pub fn set_destination(&mut self, address: Ipv4Addr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&address.octets());
    }

    /// Computes the header checksum over the header (options included) and stores it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum(&self.buffer.as_ref()[..self.header_len()], 0);
        self.set_checksum(sum);
    }
}

/// The checked meaning of an IPv4 header that is not a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    /// The source address.
    pub source: Ipv4Addr,
    /// The destination address.
    pub destination: Ipv4Addr,
    /// The protocol of the payload ([`PROTOCOL_UDP`], …).
    pub protocol: u8,
    /// The payload's length.
    pub payload_len: usize,
    /// The time to live.
    pub ttl: u8,
    /// Whether routers must refuse to fragment the packet.
    pub dont_fragment: bool,
}

impl Ipv4Repr {
    /// Reads a header, refusing another version, a wrong checksum and a fragment. The
    /// identification, DSCP/ECN and options are ignored.
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Ipv4Repr, Ipv4Error> {
        packet.check_len()?;
        if packet.version() != VERSION {
            return Err(Ipv4Error::NotVersion4);
        }
        if !packet.verify_checksum() {
            return Err(Ipv4Error::BadChecksum);
        }
        if packet.is_fragment() {
            return Err(Ipv4Error::Fragment);
        }
        Ok(Ipv4Repr {
            source: packet.source(),
            destination: packet.destination(),
            protocol: packet.protocol(),
            payload_len: packet.payload().len(),
            ttl: packet.ttl(),
            dont_fragment: packet.dont_fragment(),
        })
    }

    /// Length of the header [`emit`](Self::emit) writes.
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes a 20-byte header: no options, DSCP/ECN zero, identification and checksum
    /// zero (for the kernel to fill in, or for [`Ipv4Packet::fill_checksum`]).
    ///
    /// A payload too long for the 16-bit total length saturates it; such a packet cannot
    /// leave a host anyway, and the send fails.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        let total_len = u16::try_from(HEADER_LEN + self.payload_len).unwrap_or(u16::MAX);
        packet.set_version_and_header_len(VERSION, HEADER_LEN);
        packet.set_dscp_ecn(0);
        packet.set_total_len(total_len);
        packet.set_identification(0);
        packet.set_unfragmented(self.dont_fragment);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_checksum(0);
        packet.set_source(self.source);
        packet.set_destination(self.destination);
    }
}

fn read_u16(bytes: &[u8], at: core::ops::Range<usize>) -> u16 {
    let b = &bytes[at];
    u16::from_be_bytes([b[0], b[1]])
}

fn write_u16(bytes: &mut [u8], at: core::ops::Range<usize>, value: u16) {
    bytes[at].copy_from_slice(&value.to_be_bytes());
}

fn read_address(bytes: &[u8], at: core::ops::Range<usize>) -> Ipv4Addr {
    let b = &bytes[at];
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// An outer header of a VXLAN datagram, checksum computed by hand: 10.99.0.1 →
    /// 10.99.0.2, identification 0x1c46, Don't Fragment, TTL 64, UDP, total length 36;
    /// then its 16 bytes of payload (a UDP header and a VXLAN header).
    #[rustfmt::skip]
    const DATAGRAM: [u8; 36] = [
        0x45, 0x00, 0x00, 0x24, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x11, 0x09, 0xbb,
        0x0a, 0x63, 0x00, 0x01, 0x0a, 0x63, 0x00, 0x02,
        0xc3, 0x50, 0x12, 0xb5, 0x00, 0x10, 0xe2, 0xff,
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x00,
    ];

    fn repr() -> Ipv4Repr {
        Ipv4Repr {
            source: Ipv4Addr::new(10, 99, 0, 1),
            destination: Ipv4Addr::new(10, 99, 0, 2),
            protocol: PROTOCOL_UDP,
            payload_len: 16,
            ttl: 64,
            dont_fragment: true,
        }
    }

    #[test]
    fn a_known_header_parses_to_its_fields() {
        let packet = Ipv4Packet::new_checked(&DATAGRAM[..]).unwrap();
        assert!(packet.verify_checksum());
        assert_eq!(packet.identification(), 0x1c46);
        assert_eq!(packet.checksum(), 0x09bb);
        assert_eq!(Ipv4Repr::parse(&packet), Ok(repr()));
        assert_eq!(packet.payload(), &DATAGRAM[20..]);
    }

    #[test]
    fn emit_then_fill_checksum_rebuilds_the_known_header() {
        let mut bytes = [0xffu8; HEADER_LEN];
        let mut packet = Ipv4Packet::new_unchecked(&mut bytes[..]);
        repr().emit(&mut packet);
        // The kernel's fields, for a raw socket: left zero.
        assert_eq!(packet.identification(), 0);
        assert_eq!(packet.checksum(), 0);
        packet.set_identification(0x1c46);
        packet.fill_checksum();
        assert_eq!(bytes, DATAGRAM[..HEADER_LEN]);
    }

    #[test]
    fn parse_and_emit_round_trip() {
        let mut bytes = [0u8; HEADER_LEN + 16];
        let mut packet = Ipv4Packet::new_unchecked(&mut bytes[..]);
        let multicast = Ipv4Repr {
            destination: Ipv4Addr::new(239, 1, 1, 1),
            ttl: 1,
            dont_fragment: false,
            ..repr()
        };
        multicast.emit(&mut packet);
        packet.fill_checksum();
        let packet = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&packet), Ok(multicast));
    }

    #[test]
    fn options_are_skipped_and_padding_after_the_total_length_ignored() {
        let mut bytes = vec![0x46, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0];
        bytes.extend_from_slice(&DATAGRAM[12..20]);
        bytes.extend_from_slice(&[1, 1, 1, 0]); // four bytes of options (NOPs, end)
        bytes.extend_from_slice(&[0xaa; 4]); // payload
        bytes.extend_from_slice(&[0; 6]); // Ethernet padding
        let mut packet = Ipv4Packet::new_unchecked(&mut bytes[..]);
        packet.fill_checksum();
        let packet = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(packet.header_len(), 24);
        assert_eq!(packet.payload(), &[0xaa; 4]);
        assert_eq!(Ipv4Repr::parse(&packet).unwrap().payload_len, 4);
    }

    #[test]
    fn truncated_input_is_refused_before_any_access() {
        for len in 0..DATAGRAM.len() {
            assert_eq!(
                Ipv4Packet::new_checked(&DATAGRAM[..len]).err(),
                Some(Ipv4Error::Truncated),
                "{len} bytes"
            );
        }
    }

    #[test]
    fn header_lengths_that_do_not_fit_are_refused() {
        let mut short_header = DATAGRAM;
        short_header[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&short_header[..]).err(),
            Some(Ipv4Error::BadHeaderLength)
        );
        let mut past_total = DATAGRAM;
        past_total[2..4].copy_from_slice(&[0, 19]);
        assert_eq!(
            Ipv4Packet::new_checked(&past_total[..]).err(),
            Some(Ipv4Error::BadHeaderLength)
        );
    }

    #[test]
    fn another_version_a_wrong_checksum_and_fragments_are_refused() {
        let parse = |bytes: &[u8]| Ipv4Repr::parse(&Ipv4Packet::new_unchecked(bytes));
        let mut version_6 = DATAGRAM;
        version_6[0] = 0x65;
        assert_eq!(parse(&version_6), Err(Ipv4Error::NotVersion4));
        let mut corrupted = DATAGRAM;
        corrupted[8] = 63;
        assert_eq!(parse(&corrupted), Err(Ipv4Error::BadChecksum));
        for flags in [[0x20, 0x00], [0x00, 0x01]] {
            let mut fragment = DATAGRAM;
            fragment[6..8].copy_from_slice(&flags);
            let mut packet = Ipv4Packet::new_unchecked(&mut fragment[..]);
            packet.fill_checksum();
            assert_eq!(parse(&fragment), Err(Ipv4Error::Fragment));
        }
    }

    #[test]
    fn etherparse_reads_what_emit_writes() {
        let mut bytes = [0u8; HEADER_LEN + 16];
        let mut packet = Ipv4Packet::new_unchecked(&mut bytes[..]);
        repr().emit(&mut packet);
        packet.fill_checksum();
        let (header, _) = etherparse::Ipv4Header::from_slice(&bytes).unwrap();
        assert_eq!(header.source, [10, 99, 0, 1]);
        assert_eq!(header.destination, [10, 99, 0, 2]);
        assert_eq!(header.protocol, etherparse::IpNumber::UDP);
        assert_eq!(header.total_len, 36);
        assert_eq!(header.time_to_live, 64);
        assert!(header.dont_fragment);
        assert_eq!(header.header_checksum, header.calc_header_checksum());
    }

    proptest! {
        #[test]
        fn after_check_len_no_accessor_panics(
            mut bytes in proptest::collection::vec(any::<u8>(), 0..80),
            total_len in 0u16..100,
        ) {
            // A random total length would almost never fit the buffer; this one often does.
            if let Some(field) = bytes.get_mut(field::TOTAL_LEN) {
                field.copy_from_slice(&total_len.to_be_bytes());
            }
            if let Ok(packet) = Ipv4Packet::new_checked(&bytes[..]) {
                let _ = (packet.version(), packet.dscp_ecn(), packet.identification());
                let _ = (packet.is_fragment(), packet.verify_checksum(), packet.payload());
                let _ = Ipv4Repr::parse(&packet);
            }
        }
    }
}
