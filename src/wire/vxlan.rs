//! The VXLAN header (RFC 7348), which carries an Ethernet frame inside a UDP datagram.
//!
//! A VXLAN datagram's payload is an 8-byte header followed by the inner Ethernet frame:
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//!
//! The I flag (0x08 in the first byte) must be set for the VNI to be valid; the other
//! flag bits and reserved fields are sent as zero and ignored on receipt (RFC 7348,
//! section 5). Everything here is a pure function of bytes; the datagram's addresses and
//! the socket belong to the port ([`crate::ports::vxlan`]).
//!
//! The module also holds the two numbers the port derives from an inner frame: the UDP
//! source port, which RFC 7348 recommends taking from a hash of the inner headers (so that
//! underlay routers spreading flows over several paths keep each flow on one), and the
//! encapsulation overhead that decides whether a frame fits the underlay's MTU.

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;

/// The I flag: the VNI field is valid.
pub const FLAG_INSTANCE: u8 = 0x08;

/// The IANA-assigned VXLAN UDP port.
pub const DEFAULT_PORT: u16 = 4789;

/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// Bytes an IPv4 underlay adds to an inner frame's MTU: outer Ethernet (14), IPv4 (20),
/// UDP (8) and VXLAN (8) headers — the "50 bytes" of RFC 7348's MTU discussion.
pub const OVERHEAD_IPV4: usize = 50;

/// The same over IPv6, whose header is 40 bytes.
pub const OVERHEAD_IPV6: usize = 70;

/// The range RFC 7348 recommends for the UDP source port (the dynamic/private ports).
pub const SOURCE_PORTS: core::ops::RangeInclusive<u16> = 49152..=65535;

/// Errors of a VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VxlanError {
    /// Shorter than the 8-byte header.
    #[error("shorter than a VXLAN header")]
    Truncated,
    /// The I flag is clear, so the VNI means nothing.
    #[error("the I flag is clear")]
    InstanceFlagClear,
}

/// Byte ranges of the header fields.
mod field {
    use core::ops::Range;

    pub const FLAGS: usize = 0;
    pub const VNI: Range<usize> = 4..7;
    pub const PAYLOAD: usize = 8;
}

/// A read/write view of a VXLAN datagram payload held in any buffer.
///
/// **The rule:** once [`check_len`](Self::check_len) has succeeded — which
/// [`new_checked`](Self::new_checked) does — no accessor or setter panics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// A view over `buffer` without checking its length.
    pub const fn new_unchecked(buffer: T) -> Self {
        VxlanPacket { buffer }
    }

    /// A view over `buffer`, refusing one too short to hold the header.
    pub fn new_checked(buffer: T) -> Result<Self, VxlanError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds at least the header.
    pub fn check_len(&self) -> Result<(), VxlanError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(VxlanError::Truncated)
        } else {
            Ok(())
        }
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The 24-bit VNI field (meaningful only with the I flag set).
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2])
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Sets the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the VNI field; bits above 24 are ignored.
    pub fn set_vni(&mut self, vni: u32) {
        let bytes = vni.to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&bytes[1..4]);
    }

    /// Zeroes the reserved fields, as RFC 7348 asks of a sender.
    pub fn clear_reserved(&mut self) {
        let buffer = self.buffer.as_mut();
        buffer[1..4].fill(0);
        buffer[7] = 0;
    }
}

/// The checked meaning of a VXLAN header: its VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    /// The VXLAN network identifier.
    pub vni: u32,
}

impl VxlanRepr {
    /// Reads a header, refusing one whose I flag is clear. Reserved bits are ignored.
    pub fn parse<T: AsRef<[u8]>>(packet: &VxlanPacket<T>) -> Result<VxlanRepr, VxlanError> {
        packet.check_len()?;
        if packet.flags() & FLAG_INSTANCE == 0 {
            return Err(VxlanError::InstanceFlagClear);
        }
        Ok(VxlanRepr { vni: packet.vni() })
    }

    /// Writes the header: the I flag, the VNI, every reserved bit zero.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VxlanPacket<T>) {
        packet.set_flags(FLAG_INSTANCE);
        packet.clear_reserved();
        packet.set_vni(self.vni);
    }
}

/// The UDP source port for an inner frame: a hash of its flow ([`super::flow::flow_hash`])
/// folded into [`SOURCE_PORTS`], so one conversation always takes the same port and
/// different conversations spread over the range.
pub fn source_port(frame: &[u8]) -> u16 {
    let span = usize::from(SOURCE_PORTS.end() - SOURCE_PORTS.start()) + 1;
    // The choice is below 16384, so the sum stays within u16.
    let port = super::flow::choose(super::flow::flow_hash(frame), span);
    *SOURCE_PORTS.start() + u16::try_from(port).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as RFC 7348 section 5 lays it out: flags 0x08, 24 reserved bits, VNI 42
    /// (0x00002a), 8 reserved bits; then the first bytes of an inner frame.
    const VNI_42: [u8; 10] = [0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, 0x00, 0xff, 0xff];

    #[test]
    fn a_header_with_the_i_flag_parses_to_its_vni() {
        let packet = VxlanPacket::new_checked(&VNI_42[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&packet), Ok(VxlanRepr { vni: 42 }));
        assert_eq!(packet.payload(), &[0xff, 0xff]);
    }

    #[test]
    fn the_vni_takes_all_24_bits_and_reserved_bits_are_ignored() {
        let bytes = [0x0f, 0xaa, 0xbb, 0xcc, 0x12, 0x34, 0x56, 0x77];
        let packet = VxlanPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&packet), Ok(VxlanRepr { vni: 0x12_3456 }));
        assert!(packet.payload().is_empty());
    }

    #[test]
    fn a_clear_i_flag_is_refused() {
        let mut bytes = VNI_42;
        bytes[0] = 0x00;
        let packet = VxlanPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            VxlanRepr::parse(&packet),
            Err(VxlanError::InstanceFlagClear)
        );
    }

    #[test]
    fn short_buffers_are_refused_before_any_access() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                VxlanPacket::new_checked(&VNI_42[..len]).err(),
                Some(VxlanError::Truncated)
            );
        }
    }

    #[test]
    fn emit_writes_the_rfc_layout_with_zero_reserved_fields() {
        let mut bytes = [0xffu8; 8];
        let mut packet = VxlanPacket::new_unchecked(&mut bytes[..]);
        VxlanRepr { vni: 0x00ab_cdef }.emit(&mut packet);
        assert_eq!(bytes, [0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
    }

    #[test]
    fn source_ports_stay_in_the_dynamic_range_and_follow_the_flow() {
        let mut frame = [0u8; 60];
        frame[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
        let port = source_port(&frame);
        assert!(SOURCE_PORTS.contains(&port));
        // The payload does not move a flow to another port.
        frame[40] = 0x55;
        assert_eq!(source_port(&frame), port);
        // Different conversations spread over several ports.
        let ports: std::collections::HashSet<u16> = (0..64u8)
            .map(|i| {
                frame[5] = i;
                source_port(&frame)
            })
            .collect();
        assert!(ports.len() > 32, "{} distinct ports", ports.len());
        assert!(ports.iter().all(|p| SOURCE_PORTS.contains(p)));
        assert!(SOURCE_PORTS.contains(&source_port(&[])));
    }
}
