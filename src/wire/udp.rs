//! The UDP header (RFC 768), as the VXLAN port writes it in front of its datagrams.
//!
//! ```text
//!  0                   1                   2                   3
//! |          Source Port          |       Destination Port        |
//! |            Length             |           Checksum            |
//! ```
//!
//! The length covers header and payload. The checksum covers an IPv4 pseudo-header
//! (addresses, protocol, length) as well; over IPv4 a checksum of zero means "none", which
//! is what RFC 7348 recommends a VXLAN sender write, and what [`UdpRepr::emit`] writes.

use core::net::Ipv4Addr;

use super::ipv4::PROTOCOL_UDP;
use super::offload::{checksum, partial_sum};

/// Length of the header.
pub const HEADER_LEN: usize = 8;

/// Errors of a UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UdpError {
    /// The buffer ends before the header, or before the length field says it does.
    #[error("shorter than its UDP header or length")]
    Truncated,
    /// The length field is below the header's 8 bytes.
    #[error("UDP length below the header")]
    BadLength,
    /// A checksum is present and does not add up.
    #[error("wrong UDP checksum")]
    BadChecksum,
}

/// Byte ranges of the header fields.
mod field {
    use core::ops::Range;

    pub const SOURCE_PORT: Range<usize> = 0..2;
    pub const DESTINATION_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
    pub const PAYLOAD: usize = 8;
}

/// A read/write view of a UDP datagram held in any buffer.
///
/// **The rule:** once [`check_len`](Self::check_len) has succeeded — which
/// [`new_checked`](Self::new_checked) does — no accessor or setter panics. Setters of the
/// header fields need only [`HEADER_LEN`] bytes, so a header can be written into an
/// 8-byte buffer through [`new_unchecked`](Self::new_unchecked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// A view over `buffer` without checking its length.
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// A view over `buffer`, refusing one whose length field does not fit it.
    pub fn new_checked(buffer: T) -> Result<Self, UdpError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds the header and as many bytes as the length field
    /// says, and that the length covers at least the header.
    pub fn check_len(&self) -> Result<(), UdpError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(UdpError::Truncated);
        }
        let datagram_len = usize::from(self.length());
        if datagram_len < HEADER_LEN {
            return Err(UdpError::BadLength);
        }
        if len < datagram_len {
            return Err(UdpError::Truncated);
        }
        Ok(())
    }

    /// The source port.
    pub fn source_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SOURCE_PORT)
    }

    /// The destination port.
    pub fn destination_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DESTINATION_PORT)
    }

    /// The length field: header and payload.
    pub fn length(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The checksum field (zero: none).
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The payload, up to the length field.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..usize::from(self.length())]
    }

    /// Whether the checksum is absent (zero) or adds up over the IPv4 pseudo-header of
    /// `source` and `destination`, the header and the payload.
    pub fn verify_checksum(&self, source: Ipv4Addr, destination: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let datagram = &self.buffer.as_ref()[..usize::from(self.length())];
        checksum(
            datagram,
            pseudo_header_sum(source, destination, self.length()),
        ) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the source port.
    pub fn set_source_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SOURCE_PORT, port);
    }

    /// Sets the destination port.
    pub fn set_destination_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DESTINATION_PORT, port);
    }

    /// Sets the length field.
    pub fn set_length(&mut self, length: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, length);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Computes and writes the checksum over the IPv4 pseudo-header of `source` and
    /// `destination`, the header and the payload up to the length field. A sum of zero is
    /// written as 0xffff, since zero on the wire means "no checksum" (RFC 768).
    pub fn fill_checksum(&mut self, source: Ipv4Addr, destination: Ipv4Addr) {
        self.set_checksum(0);
        let length = self.length();
        // A length beyond the buffer (set wrongly by the caller) is clamped, not trusted.
        let end = usize::from(length).min(self.buffer.as_ref().len());
        let datagram = &self.buffer.as_ref()[..end];
        let sum = checksum(datagram, pseudo_header_sum(source, destination, length));
        self.set_checksum(if sum == 0 { 0xffff } else { sum });
    }
}

/// The one's-complement sum of the IPv4 pseudo-header a UDP checksum covers.
fn pseudo_header_sum(source: Ipv4Addr, destination: Ipv4Addr, udp_len: u16) -> u32 {
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&source.octets());
    pseudo[4..8].copy_from_slice(&destination.octets());
    pseudo[9] = PROTOCOL_UDP;
    pseudo[10..12].copy_from_slice(&udp_len.to_be_bytes());
    partial_sum(&pseudo, 0)
}

/// The checked meaning of a UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr {
    /// The source port.
    pub source_port: u16,
    /// The destination port.
    pub destination_port: u16,
    /// The payload's length.
    pub payload_len: usize,
}

impl UdpRepr {
    /// Reads a header carried over IPv4 from `source` to `destination`, refusing a
    /// checksum that is present and wrong.
    pub fn parse<T: AsRef<[u8]>>(
        packet: &UdpPacket<T>,
        source: Ipv4Addr,
        destination: Ipv4Addr,
    ) -> Result<UdpRepr, UdpError> {
        packet.check_len()?;
        if !packet.verify_checksum(source, destination) {
            return Err(UdpError::BadChecksum);
        }
        Ok(UdpRepr {
            source_port: packet.source_port(),
            destination_port: packet.destination_port(),
            payload_len: packet.payload().len(),
        })
    }

    /// Length of the header [`emit`](Self::emit) writes.
    pub const fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header with a zero checksum ("none"; RFC 7348 recommends it for VXLAN
    /// over IPv4, and it spares summing every payload byte).
    ///
    /// A payload too long for the 16-bit length saturates it; such a datagram cannot leave
    /// a host anyway, and the send fails.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut UdpPacket<T>) {
        let len = u16::try_from(HEADER_LEN + self.payload_len).unwrap_or(u16::MAX);
        packet.set_source_port(self.source_port);
        packet.set_destination_port(self.destination_port);
        packet.set_length(len);
        packet.set_checksum(0);
    }
}

fn read_u16(bytes: &[u8], at: core::ops::Range<usize>) -> u16 {
    let b = &bytes[at];
    u16::from_be_bytes([b[0], b[1]])
}

fn write_u16(bytes: &mut [u8], at: core::ops::Range<usize>, value: u16) {
    bytes[at].copy_from_slice(&value.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SOURCE: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    const DESTINATION: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

    /// A VXLAN datagram from 10.99.0.1:50000 to 10.99.0.2:4789, length 16, its checksum
    /// computed by hand over the pseudo-header; the payload is a VXLAN header for VNI 42.
    #[rustfmt::skip]
    const DATAGRAM: [u8; 16] = [
        0xc3, 0x50, 0x12, 0xb5, 0x00, 0x10, 0xe2, 0xff,
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x00,
    ];

    fn repr() -> UdpRepr {
        UdpRepr {
            source_port: 50000,
            destination_port: 4789,
            payload_len: 8,
        }
    }

    #[test]
    fn a_known_datagram_parses_and_its_checksum_adds_up() {
        let packet = UdpPacket::new_checked(&DATAGRAM[..]).unwrap();
        assert!(packet.verify_checksum(SOURCE, DESTINATION));
        assert_eq!(UdpRepr::parse(&packet, SOURCE, DESTINATION), Ok(repr()));
        assert_eq!(packet.payload(), &DATAGRAM[8..]);
    }

    #[test]
    fn fill_checksum_writes_the_known_sum() {
        let mut bytes = DATAGRAM;
        let mut packet = UdpPacket::new_checked(&mut bytes[..]).unwrap();
        packet.set_checksum(0);
        packet.fill_checksum(SOURCE, DESTINATION);
        assert_eq!(bytes, DATAGRAM);
    }

    #[test]
    fn a_wrong_checksum_is_refused_and_a_zero_one_means_none() {
        let parse =
            |bytes: &[u8]| UdpRepr::parse(&UdpPacket::new_unchecked(bytes), SOURCE, DESTINATION);
        // The same datagram between other addresses: the pseudo-header no longer matches.
        let packet = UdpPacket::new_checked(&DATAGRAM[..]).unwrap();
        assert!(!packet.verify_checksum(SOURCE, Ipv4Addr::new(10, 99, 0, 3)));
        let mut corrupted = DATAGRAM;
        corrupted[15] = 1;
        assert_eq!(parse(&corrupted), Err(UdpError::BadChecksum));
        corrupted[6..8].fill(0);
        assert_eq!(parse(&corrupted), Ok(repr()));
    }

    #[test]
    fn emit_writes_the_ports_the_length_and_no_checksum() {
        let mut bytes = [0xffu8; HEADER_LEN];
        repr().emit(&mut UdpPacket::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, [0xc3, 0x50, 0x12, 0xb5, 0x00, 0x10, 0x00, 0x00]);
    }

    #[test]
    fn parse_and_emit_round_trip() {
        let mut bytes = DATAGRAM;
        repr().emit(&mut UdpPacket::new_unchecked(&mut bytes[..]));
        let packet = UdpPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(UdpRepr::parse(&packet, SOURCE, DESTINATION), Ok(repr()));
    }

    #[test]
    fn truncated_input_is_refused_before_any_access() {
        for len in 0..DATAGRAM.len() {
            assert_eq!(
                UdpPacket::new_checked(&DATAGRAM[..len]).err(),
                Some(UdpError::Truncated),
                "{len} bytes"
            );
        }
        let mut below_header = DATAGRAM;
        below_header[4..6].copy_from_slice(&[0, 7]);
        assert_eq!(
            UdpPacket::new_checked(&below_header[..]).err(),
            Some(UdpError::BadLength)
        );
    }

    proptest! {
        #[test]
        fn after_check_len_no_accessor_panics(
            mut bytes in proptest::collection::vec(any::<u8>(), 0..40),
            length in 0u16..50,
        ) {
            // A random length would almost never fit the buffer; this one often does.
            if let Some(field) = bytes.get_mut(field::LENGTH) {
                field.copy_from_slice(&length.to_be_bytes());
            }
            if let Ok(packet) = UdpPacket::new_checked(&bytes[..]) {
                let _ = (packet.source_port(), packet.destination_port(), packet.payload());
                let _ = UdpRepr::parse(&packet, SOURCE, DESTINATION);
            }
        }
    }
}
