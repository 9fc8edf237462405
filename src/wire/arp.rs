//! ARP for IPv4 over Ethernet (RFC 826), as the DHCP port speaks it.
//!
//! ```text
//!  0                   1                   2                   3
//! |        Hardware type (1)      |     Protocol type (0x0800)    |
//! | HW len (6)    | Proto len (4) |          Operation            |
//! |                  Sender hardware address (6)                  |
//! |                  Sender protocol address (4)                  |
//! |                  Target hardware address (6)                  |
//! |                  Target protocol address (4)                  |
//! ```
//!
//! The DHCP port answers requests for its own address and probes an address before it
//! offers it ([`crate::ports::dhcp`]). Only the Ethernet/IPv4 form exists on a guestnet
//! network, so [`ArpRepr::parse`] refuses every other hardware or protocol type and
//! every other length: a guest writes these bytes.

use core::net::Ipv4Addr;

use super::ethernet::MacAddress;

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;

/// Hardware type: Ethernet.
const HARDWARE_ETHERNET: u16 = 1;

/// Protocol type: IPv4 (the EtherType).
const PROTOCOL_IPV4: u16 = 0x0800;

/// Errors of an ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ArpError {
    /// The buffer is shorter than an Ethernet/IPv4 ARP packet.
    #[error("shorter than an ARP packet")]
    Truncated,
    /// Another hardware type, protocol type or address length than Ethernet and IPv4.
    #[error("ARP for another hardware or protocol than Ethernet and IPv4")]
    NotEthernetIpv4,
    /// An operation other than request (1) or reply (2).
    #[error("ARP operation {0} is neither request nor reply")]
    UnknownOperation(u16),
}

/// Byte ranges of the fields.
mod field {
    use core::ops::Range;

    pub const HARDWARE_TYPE: Range<usize> = 0..2;
    pub const PROTOCOL_TYPE: Range<usize> = 2..4;
    pub const HARDWARE_LEN: usize = 4;
    pub const PROTOCOL_LEN: usize = 5;
    pub const OPERATION: Range<usize> = 6..8;
    pub const SENDER_HARDWARE: Range<usize> = 8..14;
    pub const SENDER_PROTOCOL: Range<usize> = 14..18;
    pub const TARGET_HARDWARE: Range<usize> = 18..24;
    pub const TARGET_PROTOCOL: Range<usize> = 24..28;
}

/// A read/write view of an ARP packet in any buffer.
///
/// **The rule:** once [`check_len`](Self::check_len) has succeeded (which
/// [`new_checked`](Self::new_checked) does), no accessor or setter panics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// A view without checking the length.
    pub const fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    /// A view, refusing a buffer shorter than [`PACKET_LEN`].
    pub fn new_checked(buffer: T) -> Result<Self, ArpError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds a whole Ethernet/IPv4 packet; bytes after it (the
    /// padding of a minimum-size frame) are allowed.
    pub fn check_len(&self) -> Result<(), ArpError> {
        if self.buffer.as_ref().len() < PACKET_LEN {
            Err(ArpError::Truncated)
        } else {
            Ok(())
        }
    }

    fn u16_at(&self, at: core::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[at];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn mac_at(&self, at: core::ops::Range<usize>) -> MacAddress {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.buffer.as_ref()[at]);
        MacAddress(mac)
    }

    fn ip_at(&self, at: core::ops::Range<usize>) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[at];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// The hardware type.
    pub fn hardware_type(&self) -> u16 {
        self.u16_at(field::HARDWARE_TYPE)
    }

    /// The protocol type.
    pub fn protocol_type(&self) -> u16 {
        self.u16_at(field::PROTOCOL_TYPE)
    }

    /// The hardware address length.
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HARDWARE_LEN]
    }

    /// The protocol address length.
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL_LEN]
    }

    /// The operation code.
    pub fn operation(&self) -> u16 {
        self.u16_at(field::OPERATION)
    }

    /// The sender's hardware address.
    pub fn sender_hardware(&self) -> MacAddress {
        self.mac_at(field::SENDER_HARDWARE)
    }

    /// The sender's protocol address.
    pub fn sender_protocol(&self) -> Ipv4Addr {
        self.ip_at(field::SENDER_PROTOCOL)
    }

    /// The target's hardware address.
    pub fn target_hardware(&self) -> MacAddress {
        self.mac_at(field::TARGET_HARDWARE)
    }

    /// The target's protocol address.
    pub fn target_protocol(&self) -> Ipv4Addr {
        self.ip_at(field::TARGET_PROTOCOL)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    fn set_u16(&mut self, at: core::ops::Range<usize>, value: u16) {
        self.buffer.as_mut()[at].copy_from_slice(&value.to_be_bytes());
    }

    /// Writes every field of an Ethernet/IPv4 packet.
    fn fill(&mut self, repr: &ArpRepr) {
        self.set_u16(field::HARDWARE_TYPE, HARDWARE_ETHERNET);
        self.set_u16(field::PROTOCOL_TYPE, PROTOCOL_IPV4);
        let bytes = self.buffer.as_mut();
        bytes[field::HARDWARE_LEN] = 6;
        bytes[field::PROTOCOL_LEN] = 4;
        self.set_u16(field::OPERATION, repr.operation.code());
        let bytes = self.buffer.as_mut();
        bytes[field::SENDER_HARDWARE].copy_from_slice(&repr.sender_hardware.octets());
        bytes[field::SENDER_PROTOCOL].copy_from_slice(&repr.sender_protocol.octets());
        bytes[field::TARGET_HARDWARE].copy_from_slice(&repr.target_hardware.octets());
        bytes[field::TARGET_PROTOCOL].copy_from_slice(&repr.target_protocol.octets());
    }
}

/// What an ARP packet asks or tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOperation {
    /// Who has the target protocol address? (1)
    Request,
    /// The sender has the sender protocol address. (2)
    Reply,
}

impl ArpOperation {
    /// The operation code on the wire.
    pub const fn code(self) -> u16 {
        match self {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
        }
    }
}

/// The checked meaning of an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    /// Request or reply.
    pub operation: ArpOperation,
    /// Who sends.
    pub sender_hardware: MacAddress,
    /// The address the sender holds (0.0.0.0 in a probe, RFC 5227).
    pub sender_protocol: Ipv4Addr,
    /// Whom it is for (zero in a request).
    pub target_hardware: MacAddress,
    /// The address asked about, or the requester's in a reply.
    pub target_protocol: Ipv4Addr,
}

impl ArpRepr {
    /// Reads a packet, refusing other hardware and protocols and unknown operations.
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<ArpRepr, ArpError> {
        packet.check_len()?;
        if packet.hardware_type() != HARDWARE_ETHERNET
            || packet.protocol_type() != PROTOCOL_IPV4
            || packet.hardware_len() != 6
            || packet.protocol_len() != 4
        {
            return Err(ArpError::NotEthernetIpv4);
        }
        let operation = match packet.operation() {
            1 => ArpOperation::Request,
            2 => ArpOperation::Reply,
            other => return Err(ArpError::UnknownOperation(other)),
        };
        Ok(ArpRepr {
            operation,
            sender_hardware: packet.sender_hardware(),
            sender_protocol: packet.sender_protocol(),
            target_hardware: packet.target_hardware(),
            target_protocol: packet.target_protocol(),
        })
    }

    /// Writes the packet into the first [`PACKET_LEN`] bytes of `packet`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        packet.fill(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "Who has 10.0.0.254? Tell 10.0.0.1", from 02:00:00:00:00:01.
    #[rustfmt::skip]
    const REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 10, 0, 0, 1,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 10, 0, 0, 254,
    ];

    fn request() -> ArpRepr {
        ArpRepr {
            operation: ArpOperation::Request,
            sender_hardware: MacAddress([2, 0, 0, 0, 0, 1]),
            sender_protocol: Ipv4Addr::new(10, 0, 0, 1),
            target_hardware: MacAddress::ZERO,
            target_protocol: Ipv4Addr::new(10, 0, 0, 254),
        }
    }

    #[test]
    fn a_known_request_parses_and_emits_the_same_bytes() {
        let packet = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(ArpRepr::parse(&packet), Ok(request()));
        let mut bytes = [0u8; PACKET_LEN];
        request().emit(&mut ArpPacket::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, REQUEST);
    }

    #[test]
    fn a_short_packet_another_protocol_and_an_unknown_operation_are_refused() {
        assert_eq!(
            ArpPacket::new_checked(&REQUEST[..27]).unwrap_err(),
            ArpError::Truncated
        );
        let mut ipv6 = REQUEST;
        ipv6[2..4].copy_from_slice(&[0x86, 0xdd]);
        let packet = ArpPacket::new_checked(&ipv6[..]).unwrap();
        assert_eq!(ArpRepr::parse(&packet), Err(ArpError::NotEthernetIpv4));
        let mut rarp = REQUEST;
        rarp[7] = 3;
        let packet = ArpPacket::new_checked(&rarp[..]).unwrap();
        assert_eq!(ArpRepr::parse(&packet), Err(ArpError::UnknownOperation(3)));
    }

    proptest::proptest! {
        #[test]
        fn no_bytes_make_parsing_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            if let Ok(packet) = ArpPacket::new_checked(&bytes[..]) {
                let _ = ArpRepr::parse(&packet);
            }
        }
    }
}
