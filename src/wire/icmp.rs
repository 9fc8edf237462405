//! ICMP echo (RFC 792), the one ICMP message the DHCP port answers, so that `ping`
//! tells whether the server is there.
//!
//! ```text
//! |     Type      |     Code      |          Checksum             |
//! |           Identifier          |        Sequence Number        |
//! |     Data ...
//! ```

use super::offload::checksum;

/// Length of an echo header.
pub const HEADER_LEN: usize = 8;

/// Type of an echo request.
const ECHO_REQUEST: u8 = 8;

/// Type of an echo reply.
const ECHO_REPLY: u8 = 0;

/// Errors of an ICMP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IcmpError {
    /// Shorter than the 8-byte header.
    #[error("shorter than an ICMP header")]
    Truncated,
    /// The checksum does not add up.
    #[error("wrong ICMP checksum")]
    BadChecksum,
}

/// Byte ranges of the fields.
mod field {
    use core::ops::Range;

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const IDENTIFIER: Range<usize> = 4..6;
    pub const SEQUENCE: Range<usize> = 6..8;
    pub const DATA: usize = 8;
}

/// A read/write view of an ICMP message; the buffer is the whole IPv4 payload.
///
/// **The rule:** once [`check_len`](Self::check_len) has succeeded, no accessor or
/// setter panics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// A view without checking the length.
    pub const fn new_unchecked(buffer: T) -> Self {
        IcmpPacket { buffer }
    }

    /// A view, refusing a buffer shorter than the header.
    pub fn new_checked(buffer: T) -> Result<Self, IcmpError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the header is there.
    pub fn check_len(&self) -> Result<(), IcmpError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(IcmpError::Truncated)
        } else {
            Ok(())
        }
    }

    /// The message type.
    pub fn message_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// The code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// The echo identifier.
    pub fn identifier(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::IDENTIFIER];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The echo sequence number.
    pub fn sequence(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::SEQUENCE];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The data after the header.
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DATA..]
    }

    /// Whether the checksum over the whole message adds up.
    pub fn verify_checksum(&self) -> bool {
        checksum(self.buffer.as_ref(), 0) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    /// Computes and stores the checksum over the whole message.
    pub fn fill_checksum(&mut self) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&[0, 0]);
        let sum = checksum(self.buffer.as_ref(), 0);
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&sum.to_be_bytes());
    }
}

/// A checked echo request: what a reply must repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoRepr {
    /// The identifier.
    pub identifier: u16,
    /// The sequence number.
    pub sequence: u16,
    /// The data, repeated in the reply.
    pub data: Vec<u8>,
}

impl EchoRepr {
    /// Reads an echo request; `Ok(None)` for any other ICMP message.
    pub fn parse_request<T: AsRef<[u8]>>(
        packet: &IcmpPacket<T>,
    ) -> Result<Option<EchoRepr>, IcmpError> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(IcmpError::BadChecksum);
        }
        if packet.message_type() != ECHO_REQUEST || packet.code() != 0 {
            return Ok(None);
        }
        Ok(Some(EchoRepr {
            identifier: packet.identifier(),
            sequence: packet.sequence(),
            data: packet.data().to_vec(),
        }))
    }

    /// Length of the reply.
    pub fn reply_len(&self) -> usize {
        HEADER_LEN + self.data.len()
    }

    /// Writes the reply into a buffer of exactly [`reply_len`](Self::reply_len) bytes.
    pub fn emit_reply<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut IcmpPacket<T>) {
        let bytes = packet.buffer.as_mut();
        bytes[field::TYPE] = ECHO_REPLY;
        bytes[field::CODE] = 0;
        bytes[field::IDENTIFIER].copy_from_slice(&self.identifier.to_be_bytes());
        bytes[field::SEQUENCE].copy_from_slice(&self.sequence.to_be_bytes());
        bytes[field::DATA..field::DATA + self.data.len()].copy_from_slice(&self.data);
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo request, identifier 0x1234, sequence 1, data "hi", checksum by hand.
    const REQUEST: [u8; 10] = [8, 0, 0x7d, 0x61, 0x12, 0x34, 0x00, 0x01, b'h', b'i'];

    #[test]
    fn a_request_parses_and_its_reply_repeats_it_with_a_good_checksum() {
        let packet = IcmpPacket::new_checked(&REQUEST[..]).unwrap();
        let echo = EchoRepr::parse_request(&packet).unwrap().unwrap();
        assert_eq!(
            (echo.identifier, echo.sequence, &echo.data[..]),
            (0x1234, 1, &b"hi"[..])
        );
        let mut reply = vec![0u8; echo.reply_len()];
        echo.emit_reply(&mut IcmpPacket::new_unchecked(&mut reply[..]));
        let reply = IcmpPacket::new_checked(&reply[..]).unwrap();
        assert_eq!(reply.message_type(), ECHO_REPLY);
        assert!(reply.verify_checksum());
        assert_eq!(reply.data(), b"hi");
    }

    #[test]
    fn a_short_or_corrupt_message_is_refused_and_a_reply_is_no_request() {
        assert_eq!(
            IcmpPacket::new_checked(&REQUEST[..7]).unwrap_err(),
            IcmpError::Truncated
        );
        let mut corrupt = REQUEST;
        corrupt[9] ^= 1;
        let packet = IcmpPacket::new_checked(&corrupt[..]).unwrap();
        assert_eq!(
            EchoRepr::parse_request(&packet),
            Err(IcmpError::BadChecksum)
        );
        let mut reply = REQUEST;
        reply[0] = ECHO_REPLY;
        reply[2..4].copy_from_slice(&[0x85, 0x61]);
        let packet = IcmpPacket::new_checked(&reply[..]).unwrap();
        assert_eq!(EchoRepr::parse_request(&packet), Ok(None));
    }
}
