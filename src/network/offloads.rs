//! Offloads a peer can take from the network, and how an offload header rides in a slot.
//!
//! A frame may come with a virtio-net header asking for work still to be done (a checksum
//! to complete, a super-frame to cut into segments). Peers advertise the kinds of work
//! they take; a sender hands a frame as it is to those that take what it needs and
//! finishes it in software for the others. In the ring the header travels as three
//! 32-bit words of the slot's header, all zero for a plain frame.

use crate::wire::virtio_net::{self, GsoType, VirtioNetHdr};

/// Frames whose TCP/UDP checksum is still to be completed (`NEEDS_CSUM`).
pub const CHECKSUM: u32 = 1 << 0;
/// TCP over IPv4 super-frames (TSO4).
pub const TSO4: u32 = 1 << 1;
/// TCP over IPv6 super-frames (TSO6).
pub const TSO6: u32 = 1 << 2;
/// UDP super-frames cut into datagrams (USO).
pub const USO: u32 = 1 << 3;
/// Everything guestnet can carry.
pub const ALL: u32 = CHECKSUM | TSO4 | TSO6 | USO;

/// The offloads a receiver needs to take a frame with this header as it is, or `None`
/// for work guestnet does not do (UFO, unknown GSO types).
pub(crate) fn needed_offloads(hdr: &VirtioNetHdr) -> Option<u32> {
    let checksum = if hdr.needs_checksum() { CHECKSUM } else { 0 };
    match hdr.gso_type {
        GsoType::None => Some(checksum),
        GsoType::TcpV4 => Some(checksum | TSO4),
        GsoType::TcpV6 => Some(checksum | TSO6),
        GsoType::UdpL4 => Some(checksum | USO),
        GsoType::Udp | GsoType::Unknown(_) => None,
    }
}

/// The header as the three words a slot carries.
pub(crate) fn header_words(hdr: &VirtioNetHdr) -> [u32; 3] {
    if hdr.is_plain() {
        return [0; 3];
    }
    let bytes = hdr.to_bytes();
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    [word(0), word(4), word(8)]
}

/// The header back from a slot's words (all zeros: a plain frame).
pub(crate) fn header_from_words(words: [u32; 3]) -> VirtioNetHdr {
    if words == [0; 3] {
        return VirtioNetHdr::default();
    }
    let mut bytes = [0u8; virtio_net::HEADER_LEN];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    VirtioNetHdr::parse(&bytes, virtio_net::HEADER_LEN).unwrap_or_default()
}
