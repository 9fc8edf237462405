//! The virtio-net header: the small record that travels in front of every frame between a
//! guest's virtio-net driver (or a TAP device opened with `IFF_VNET_HDR`) and its backend.
//!
//! It tells the backend what work the sender left unfinished. A guest with checksum
//! offload hands over TCP and UDP packets whose checksum field holds only the folded
//! pseudo-header sum ([`FLAG_NEEDS_CSUM`], with [`csum_start`](VirtioNetHdr::csum_start)
//! and [`csum_offset`](VirtioNetHdr::csum_offset) saying where the sum begins and where the
//! result goes); a guest with TSO or USO hands over one packet of up to 64 KiB that must
//! still be cut into segments of [`gso_size`](VirtioNetHdr::gso_size) payload bytes
//! ([`GsoType`]). guestnet carries the header unchanged between peers that both take
//! offloads, and [`offload`](super::offload) finishes the work for peers that do not.
//!
//! Layout (virtio 1.x, section 5.1.6 "Device Operation"), all fields little-endian:
//!
//! | offset | field         | size |
//! |--------|---------------|------|
//! | 0      | `flags`       | u8   |
//! | 1      | `gso_type`    | u8   |
//! | 2      | `hdr_len`     | u16  |
//! | 4      | `gso_size`    | u16  |
//! | 6      | `csum_start`  | u16  |
//! | 8      | `csum_offset` | u16  |
//! | 10     | `num_buffers` | u16  |
//!
//! The 10-byte legacy form ends before `num_buffers`; it is what a legacy device without
//! `VIRTIO_NET_F_MRG_RXBUF` uses, and what `TUNSETVNETHDRSZ` defaults to. Every header
//! value is written by the guest, so nothing here trusts one: [`VirtioNetHdr`] is a plain
//! copy of the bytes, and whoever acts on the offsets bounds-checks them.

use super::ethernet::WireError;

/// Length of the modern header (virtio 1.x, or legacy with `VIRTIO_NET_F_MRG_RXBUF`).
pub const HEADER_LEN: usize = 12;

/// Length of the legacy header without `num_buffers`.
pub const LEGACY_HEADER_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum from `csum_start` to the end of the frame
/// is still to be computed and stored at `csum_start + csum_offset`.
pub const FLAG_NEEDS_CSUM: u8 = 1;

/// `VIRTIO_NET_HDR_F_DATA_VALID`: (receive side) the device already validated the checksum.
pub const FLAG_DATA_VALID: u8 = 2;

/// `VIRTIO_NET_HDR_F_RSC_INFO`: (receive side) the packet was coalesced, and
/// `csum_start`/`csum_offset` hold the number of coalesced segments and duplicate ACKs.
pub const FLAG_RSC_INFO: u8 = 4;

/// `VIRTIO_NET_HDR_GSO_ECN`: the bit of `gso_type` saying the TCP stream uses ECN, so the
/// CWR flag of the large packet must survive segmentation (on the first segment only).
pub const GSO_ECN: u8 = 0x80;

/// What segmentation the sender left to the receiver: the low seven bits of `gso_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GsoType {
    /// `VIRTIO_NET_HDR_GSO_NONE` (0): a frame of its final size.
    #[default]
    None,
    /// `VIRTIO_NET_HDR_GSO_TCPV4` (1): TCP over IPv4, to be cut into `gso_size` segments.
    TcpV4,
    /// `VIRTIO_NET_HDR_GSO_UDP` (3): UDP fragmentation offload (UFO), to be cut into IP
    /// fragments. Deprecated by Linux; [`offload`](super::offload) refuses it.
    Udp,
    /// `VIRTIO_NET_HDR_GSO_TCPV6` (4): TCP over IPv6.
    TcpV6,
    /// `VIRTIO_NET_HDR_GSO_UDP_L4` (5): UDP segmentation offload (USO), to be cut into
    /// datagrams of `gso_size` payload bytes each.
    UdpL4,
    /// Any other value, kept so that the header round-trips.
    Unknown(u8),
}

impl From<u8> for GsoType {
    /// Decodes the low seven bits; the [`GSO_ECN`] bit is not part of the type.
    fn from(value: u8) -> Self {
        match value & !GSO_ECN {
            0 => GsoType::None,
            1 => GsoType::TcpV4,
            3 => GsoType::Udp,
            4 => GsoType::TcpV6,
            5 => GsoType::UdpL4,
            other => GsoType::Unknown(other),
        }
    }
}

impl From<GsoType> for u8 {
    /// The wire value without the [`GSO_ECN`] bit.
    fn from(value: GsoType) -> Self {
        match value {
            GsoType::None => 0,
            GsoType::TcpV4 => 1,
            GsoType::Udp => 3,
            GsoType::TcpV6 => 4,
            GsoType::UdpL4 => 5,
            GsoType::Unknown(other) => other & !GSO_ECN,
        }
    }
}

/// Byte ranges of the header fields.
mod field {
    use core::ops::Range;

    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Range<usize> = 2..4;
    pub const GSO_SIZE: Range<usize> = 4..6;
    pub const CSUM_START: Range<usize> = 6..8;
    pub const CSUM_OFFSET: Range<usize> = 8..10;
    pub const NUM_BUFFERS: Range<usize> = 10..12;
}

/// A read/write view of a virtio-net header at the start of any buffer, in the modern
/// (12-byte) or legacy (10-byte) layout.
///
/// **The rule:** once [`check_len`](Self::check_len) has succeeded — which
/// [`new_checked`](Self::new_checked) does for you — no accessor or setter panics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioNetPacket<T: AsRef<[u8]>> {
    buffer: T,
    header_len: usize,
}

impl<T: AsRef<[u8]>> VirtioNetPacket<T> {
    /// A view over `buffer` whose header is `header_len` bytes long, without any check.
    pub const fn new_unchecked(buffer: T, header_len: usize) -> Self {
        VirtioNetPacket { buffer, header_len }
    }

    /// A view over `buffer` whose header is `header_len` bytes long ([`HEADER_LEN`] or
    /// [`LEGACY_HEADER_LEN`]).
    pub fn new_checked(buffer: T, header_len: usize) -> Result<Self, WireError> {
        let packet = Self::new_unchecked(buffer, header_len);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the header length is one of the two layouts
    /// ([`WireError::BadHeaderLength`] if not) and that the buffer holds a whole header
    /// ([`WireError::Truncated`] if not). After this succeeds, no accessor panics.
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.header_len != HEADER_LEN && self.header_len != LEGACY_HEADER_LEN {
            return Err(WireError::BadHeaderLength);
        }
        if self.buffer.as_ref().len() < self.header_len {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Length of the header in this layout: 12 or 10.
    pub const fn header_len(&self) -> usize {
        self.header_len
    }

    /// The `flags` byte ([`FLAG_NEEDS_CSUM`], [`FLAG_DATA_VALID`], [`FLAG_RSC_INFO`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The raw `gso_type` byte, [`GSO_ECN`] bit included.
    pub fn gso_type_raw(&self) -> u8 {
        self.buffer.as_ref()[field::GSO_TYPE]
    }

    /// The `hdr_len` field: the sender's claim of how long the headers are. Only a hint.
    pub fn hdr_len(&self) -> u16 {
        self.u16_at(field::HDR_LEN.start)
    }

    /// The `gso_size` field: payload bytes per segment.
    pub fn gso_size(&self) -> u16 {
        self.u16_at(field::GSO_SIZE.start)
    }

    /// The `csum_start` field: where the checksummed range begins, from the frame start.
    pub fn csum_start(&self) -> u16 {
        self.u16_at(field::CSUM_START.start)
    }

    /// The `csum_offset` field: where, from `csum_start`, the checksum is stored.
    pub fn csum_offset(&self) -> u16 {
        self.u16_at(field::CSUM_OFFSET.start)
    }

    /// The `num_buffers` field, or `None` in the legacy layout that lacks it.
    pub fn num_buffers(&self) -> Option<u16> {
        (self.header_len == HEADER_LEN).then(|| self.u16_at(field::NUM_BUFFERS.start))
    }

    /// Everything after the header: the Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len..]
    }

    fn u16_at(&self, start: usize) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_le_bytes([b[start], b[start + 1]])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VirtioNetPacket<T> {
    /// Sets the `flags` byte.
    pub fn set_flags(&mut self, value: u8) {
        self.buffer.as_mut()[field::FLAGS] = value;
    }

    /// Sets the raw `gso_type` byte.
    pub fn set_gso_type_raw(&mut self, value: u8) {
        self.buffer.as_mut()[field::GSO_TYPE] = value;
    }

    /// Sets `hdr_len`.
    pub fn set_hdr_len(&mut self, value: u16) {
        self.set_u16_at(field::HDR_LEN.start, value);
    }

    /// Sets `gso_size`.
    pub fn set_gso_size(&mut self, value: u16) {
        self.set_u16_at(field::GSO_SIZE.start, value);
    }

    /// Sets `csum_start`.
    pub fn set_csum_start(&mut self, value: u16) {
        self.set_u16_at(field::CSUM_START.start, value);
    }

    /// Sets `csum_offset`.
    pub fn set_csum_offset(&mut self, value: u16) {
        self.set_u16_at(field::CSUM_OFFSET.start, value);
    }

    /// Sets `num_buffers`; does nothing in the legacy layout, which has no such field.
    pub fn set_num_buffers(&mut self, value: u16) {
        if self.header_len == HEADER_LEN {
            self.set_u16_at(field::NUM_BUFFERS.start, value);
        }
    }

    /// Everything after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len;
        &mut self.buffer.as_mut()[start..]
    }

    fn set_u16_at(&mut self, start: usize, value: u16) {
        self.buffer.as_mut()[start..start + 2].copy_from_slice(&value.to_le_bytes());
    }
}

/// The decoded header: a plain copy of the guest's numbers, none of them trusted yet.
///
/// `Default` is the header of a frame with nothing left to do ([`is_plain`](Self::is_plain)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VirtioNetHdr {
    /// [`FLAG_NEEDS_CSUM`], [`FLAG_DATA_VALID`], [`FLAG_RSC_INFO`]; other bits are kept.
    pub flags: u8,
    /// The segmentation still to do (the low seven bits of the `gso_type` byte).
    pub gso_type: GsoType,
    /// The [`GSO_ECN`] bit of the `gso_type` byte.
    pub ecn: bool,
    /// The sender's claim of the length of all headers (Ethernet to TCP/UDP). A hint only:
    /// [`offload`](super::offload) finds the headers itself.
    pub hdr_len: u16,
    /// Payload bytes per segment, for GSO.
    pub gso_size: u16,
    /// Offset, from the start of the frame, of the first byte the checksum covers.
    pub csum_start: u16,
    /// Offset, from `csum_start`, of the 16-bit checksum field.
    pub csum_offset: u16,
    /// Number of receive buffers a merged frame spans (0 in the legacy layout, and on
    /// transmit, where the spec says the driver must write 0).
    pub num_buffers: u16,
}

impl VirtioNetHdr {
    /// Reads a header of `header_len` bytes (12, or 10 for the legacy layout) from the
    /// start of `bytes`.
    ///
    /// Fails with [`WireError::BadHeaderLength`] for any other `header_len` and with
    /// [`WireError::Truncated`] when `bytes` is shorter than the header.
    pub fn parse(bytes: &[u8], header_len: usize) -> Result<Self, WireError> {
        let packet = VirtioNetPacket::new_checked(bytes, header_len)?;
        Ok(Self::from_packet(&packet))
    }

    /// Copies the fields out of a checked view.
    pub fn from_packet<T: AsRef<[u8]>>(packet: &VirtioNetPacket<T>) -> Self {
        let gso_raw = packet.gso_type_raw();
        VirtioNetHdr {
            flags: packet.flags(),
            gso_type: GsoType::from(gso_raw),
            ecn: gso_raw & GSO_ECN != 0,
            hdr_len: packet.hdr_len(),
            gso_size: packet.gso_size(),
            csum_start: packet.csum_start(),
            csum_offset: packet.csum_offset(),
            num_buffers: packet.num_buffers().unwrap_or(0),
        }
    }

    /// The raw `gso_type` byte: the type plus the [`GSO_ECN`] bit.
    pub fn gso_type_raw(&self) -> u8 {
        let ecn = if self.ecn { GSO_ECN } else { 0 };
        u8::from(self.gso_type) | ecn
    }

    /// Writes the header into a checked view, in that view's layout (the legacy layout
    /// drops `num_buffers`).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VirtioNetPacket<T>) {
        packet.set_flags(self.flags);
        packet.set_gso_type_raw(self.gso_type_raw());
        packet.set_hdr_len(self.hdr_len);
        packet.set_gso_size(self.gso_size);
        packet.set_csum_start(self.csum_start);
        packet.set_csum_offset(self.csum_offset);
        packet.set_num_buffers(self.num_buffers);
    }

    /// The 12-byte modern encoding. For the legacy layout, send the first
    /// [`LEGACY_HEADER_LEN`] bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        self.emit(&mut VirtioNetPacket::new_unchecked(
            &mut bytes[..],
            HEADER_LEN,
        ));
        bytes
    }

    /// Whether the checksum still needs computing ([`FLAG_NEEDS_CSUM`]).
    pub const fn needs_checksum(&self) -> bool {
        self.flags & FLAG_NEEDS_CSUM != 0
    }

    /// Whether the frame is finished as it stands: no checksum to compute, nothing to
    /// segment. Such a frame can go to any peer, offloads or not.
    pub fn is_plain(&self) -> bool {
        !self.needs_checksum() && self.gso_type == GsoType::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What Linux puts in front of a TSO packet of an IPv4 TCP connection with timestamps:
    /// NEEDS_CSUM, TCPV4, hdr_len 66 (14 + 20 + 32), MSS 1448, checksum at 34 + 16.
    const TSO_HEADER: [u8; 12] = [
        0x01, 0x01, 0x42, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn a_linux_tso_header_decodes() {
        let hdr = VirtioNetHdr::parse(&TSO_HEADER, HEADER_LEN).unwrap();
        assert_eq!(
            hdr,
            VirtioNetHdr {
                flags: FLAG_NEEDS_CSUM,
                gso_type: GsoType::TcpV4,
                ecn: false,
                hdr_len: 66,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16,
                num_buffers: 0,
            }
        );
        assert!(hdr.needs_checksum());
        assert!(!hdr.is_plain());
        assert_eq!(hdr.to_bytes(), TSO_HEADER);
    }

    #[test]
    fn fields_are_little_endian_at_their_offsets() {
        let hdr = VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM | FLAG_DATA_VALID | FLAG_RSC_INFO,
            gso_type: GsoType::UdpL4,
            ecn: true,
            hdr_len: 0x0102,
            gso_size: 0x0304,
            csum_start: 0x0506,
            csum_offset: 0x0708,
            num_buffers: 0x090a,
        };
        assert_eq!(
            hdr.to_bytes(),
            [
                0x07, 0x85, 0x02, 0x01, 0x04, 0x03, 0x06, 0x05, 0x08, 0x07, 0x0a, 0x09
            ]
        );
    }

    #[test]
    fn legacy_layout_has_no_num_buffers() {
        // Two bytes of frame follow the 10-byte header; they must not be read as a field.
        let bytes = [0, 0x04, 0x4a, 0, 0x94, 0x05, 0x36, 0, 0x10, 0, 0xaa, 0xbb];
        let hdr = VirtioNetHdr::parse(&bytes, LEGACY_HEADER_LEN).unwrap();
        assert_eq!(hdr.gso_type, GsoType::TcpV6);
        assert_eq!(hdr.gso_size, 1428);
        assert_eq!(hdr.num_buffers, 0);
        let view = VirtioNetPacket::new_checked(&bytes[..], LEGACY_HEADER_LEN).unwrap();
        assert_eq!(view.num_buffers(), None);
        assert_eq!(view.payload(), &[0xaa, 0xbb]);

        // Emitting into the legacy layout leaves the frame bytes alone.
        let mut out = [0x55u8; 12];
        let mut view = VirtioNetPacket::new_checked(&mut out[..], LEGACY_HEADER_LEN).unwrap();
        VirtioNetHdr {
            num_buffers: 7,
            ..hdr
        }
        .emit(&mut view);
        assert_eq!(view.payload_mut(), &mut [0x55, 0x55]);
        assert_eq!(&out[..10], &bytes[..10]);
    }

    #[test]
    fn bad_lengths_are_refused() {
        assert_eq!(
            VirtioNetHdr::parse(&TSO_HEADER[..11], HEADER_LEN),
            Err(WireError::Truncated)
        );
        assert_eq!(
            VirtioNetHdr::parse(&TSO_HEADER[..9], LEGACY_HEADER_LEN),
            Err(WireError::Truncated)
        );
        for len in [0, 8, 11, 20] {
            assert_eq!(
                VirtioNetHdr::parse(&TSO_HEADER, len),
                Err(WireError::BadHeaderLength)
            );
        }
        assert!(VirtioNetHdr::parse(&TSO_HEADER[..10], LEGACY_HEADER_LEN).is_ok());
    }

    #[test]
    fn gso_types_and_the_ecn_bit() {
        for (raw, ty) in [
            (0, GsoType::None),
            (1, GsoType::TcpV4),
            (3, GsoType::Udp),
            (4, GsoType::TcpV6),
            (5, GsoType::UdpL4),
            (2, GsoType::Unknown(2)),
            (0x7f, GsoType::Unknown(0x7f)),
        ] {
            assert_eq!(GsoType::from(raw), ty);
            assert_eq!(GsoType::from(raw | GSO_ECN), ty);
            assert_eq!(u8::from(ty), raw);
        }
        let mut bytes = [0u8; 12];
        bytes[1] = 0x81;
        let hdr = VirtioNetHdr::parse(&bytes, HEADER_LEN).unwrap();
        assert_eq!((hdr.gso_type, hdr.ecn), (GsoType::TcpV4, true));
        assert_eq!(hdr.gso_type_raw(), 0x81);
    }

    #[test]
    fn plain_means_nothing_left_to_do() {
        assert!(VirtioNetHdr::default().is_plain());
        let valid = VirtioNetHdr {
            flags: FLAG_DATA_VALID,
            ..Default::default()
        };
        assert!(valid.is_plain());
        let csum = VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            ..Default::default()
        };
        assert!(!csum.is_plain());
        let gso = VirtioNetHdr {
            gso_type: GsoType::TcpV6,
            ..Default::default()
        };
        assert!(!gso.is_plain());
    }

    proptest! {
        #[test]
        fn round_trips(bytes in any::<[u8; 12]>()) {
            let hdr = VirtioNetHdr::parse(&bytes, HEADER_LEN).unwrap();
            prop_assert_eq!(hdr.to_bytes(), bytes);
            let legacy = VirtioNetHdr::parse(&bytes, LEGACY_HEADER_LEN).unwrap();
            prop_assert_eq!(&legacy.to_bytes()[..10], &bytes[..10]);
            prop_assert_eq!(legacy, VirtioNetHdr { num_buffers: 0, ..hdr });
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16),
                              len in 0usize..16) {
            match VirtioNetHdr::parse(&bytes, len) {
                Ok(_) => prop_assert!((len == 10 || len == 12) && bytes.len() >= len),
                Err(_) => prop_assert!((len != 10 && len != 12) || bytes.len() < len),
            }
        }
    }
}
