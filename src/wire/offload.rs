//! Finishing a sender's offloads in software: checksums and segmentation.
//!
//! A guest that negotiated checksum offload or TSO/USO hands its backend frames that are not
//! yet valid on a wire (see [`virtio_net`](super::virtio_net)): a TCP or UDP checksum field
//! holding only the pseudo-header sum, or one 64 KiB "super-packet" that must still be cut
//! into MSS-sized segments. Between two peers that both take offloads guestnet passes such
//! frames through untouched, which is what makes guest-to-guest TCP fast. A peer that cannot
//! take them — a plain socket, a capture file, a network with a smaller MTU — needs the work
//! done first, and that is what this module does:
//!
//! * [`complete_checksum`] computes the checksum a `NEEDS_CSUM` frame left open, exactly as
//!   Linux's `skb_checksum_help` would: the Internet checksum from `csum_start` to the end of
//!   the frame, stored at `csum_start + csum_offset`;
//! * [`segment`] (and [`Segmenter`], which keeps its scratch buffer between calls) performs
//!   GSO: TCP over IPv4 or IPv6 and UDP segmentation offload, each segment with its own
//!   lengths, IPv4 identification and header checksum, TCP sequence number and flags, and a
//!   full transport checksum;
//! * [`checksum`] and [`partial_sum`], the RFC 1071 Internet checksum those are built on.
//!
//! Every number in a virtio-net header and in the frame is written by the guest. Nothing
//! here indexes with an unchecked offset: a bad offset, a truncated header, a length field
//! pointing past the frame become an [`OffloadError`] for the caller to count. For
//! segmentation, `hdr_len` and `csum_start` are not trusted at all: the headers are found by
//! parsing the frame, so a lying header cannot make a segment carry the wrong bytes.
//!
//! What is refused rather than guessed at: IPv4 fragments, IPv6 extension headers (Linux
//! does not produce GSO packets with them short of BIG TCP's jumbo option), more than one
//! VLAN tag, and UFO ([`GsoType::Udp`]), which Linux itself deprecated.
//!
//! ## Cost
//!
//! This runs once per frame at line rate, so it is written to be cheap and predictable:
//!
//! * the checksum loop reads the data once, four bytes at a time into a 64-bit accumulator
//!   (no carry handling inside the loop; the carries are folded once at the end), which
//!   the compiler turns into vector code. Measured on the development machine (release
//!   build, data in cache): about 5 µs for 64 KiB, 12 GB/s;
//! * segmentation copies the headers once per call, then per segment copies that segment's
//!   payload into the scratch buffer, patches a handful of fields and checksums the segment
//!   — one pass over each payload byte for the copy and one for the sum. A 64 KB TSO
//!   packet becomes 44 segments of 1460 bytes in about 8 µs (8 GB/s, some 60 Gbit/s per
//!   core);
//! * nothing allocates per segment. [`Segmenter`] keeps its buffer, so after the first
//!   large packet nothing allocates per call either; the free function [`segment`]
//!   allocates one buffer per call.

use super::ethernet::{HEADER_LEN as ETHERNET_HEADER_LEN, VLAN_TAG_LEN};
use super::virtio_net::{GsoType, VirtioNetHdr};

/// Why a frame's offloads could not be finished.
///
/// Small and `Copy` because they are produced on the data path, where the answer is to
/// count the frame and drop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// `csum_start + csum_offset` (plus the two bytes of the field) lies beyond the frame.
    #[error("checksum position outside the frame")]
    ChecksumOutOfBounds,
    /// `csum_start` lies inside the Ethernet header (or its VLAN tag): the checksum would
    /// be written over the addresses the frame was routed on.
    #[error("checksum starts inside the Ethernet header")]
    ChecksumInEthernetHeader,
    /// The frame ends inside a header it needs, or an IP length points past its end.
    #[error("frame truncated inside its headers")]
    Truncated,
    /// A GSO frame whose (inner) EtherType is neither IPv4 nor IPv6.
    #[error("not an IP frame (EtherType {0:#06x})")]
    NotIp(u16),
    /// The GSO type does not fit the packet: TCPV4 on an IPv6 packet, TCP segmentation of
    /// a UDP packet, and the like.
    #[error("GSO type does not match the packet")]
    GsoTypeMismatch,
    /// An IP header that cannot be right: wrong version, IPv4 header length below 20 or
    /// above the total length.
    #[error("malformed IP header")]
    BadIpHeader,
    /// An IPv4 packet that is a fragment; fragments cannot be segmented.
    #[error("IPv4 fragment")]
    Ipv4Fragment,
    /// An IPv6 packet with extension headers before the transport header.
    #[error("IPv6 extension headers are not supported")]
    Ipv6ExtensionHeaders,
    /// A TCP header whose data offset is below five words.
    #[error("malformed TCP header")]
    BadTcpHeader,
    /// A GSO type this module does not perform (UFO, or an unknown value); the raw type.
    #[error("unsupported GSO type {0}")]
    UnsupportedGsoType(u8),
    /// A GSO frame with `gso_size` 0, or a caller's `mss_limit` of 0.
    #[error("segment size is zero")]
    ZeroSegmentSize,
}

/// The RFC 1071 Internet checksum of `data`, with `initial` a partial sum to include (for
/// example a pseudo-header sum from [`partial_sum`]; 0 for none).
///
/// The result is the value to store in the checksum field, in host order: write it with
/// `to_be_bytes`. Data of odd length is summed as if padded with one zero byte.
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    !fold(sum_words(data, u64::from(initial)))
}

/// The one's-complement sum of `data` as big-endian 16-bit words plus `initial`, folded to
/// 16 bits and not complemented: the form a partial checksum is kept in, and the form
/// Linux leaves in the checksum field of a `NEEDS_CSUM` packet.
pub fn partial_sum(data: &[u8], initial: u32) -> u32 {
    u32::from(fold(sum_words(data, u64::from(initial))))
}

/// Adds `data` to `acc` as big-endian words, without folding.
///
/// Summing 32-bit words is the same as summing 16-bit words modulo 0xffff, because 2^16 is
/// 1 modulo 0xffff; the 64-bit accumulator cannot overflow before 2^32 words (16 GiB), so
/// the loop has no carry handling and vectorises.
fn sum_words(data: &[u8], mut acc: u64) -> u64 {
    let (words, tail) = data.as_chunks::<4>();
    for word in words {
        acc += u64::from(u32::from_be_bytes(*word));
    }
    let (pair, odd) = tail.as_chunks::<2>();
    for word in pair {
        acc += u64::from(u16::from_be_bytes(*word));
    }
    if let [last] = odd {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds the carries of a sum into 16 bits (end-around carry). At most four rounds.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Computes the checksum a `NEEDS_CSUM` frame left open, in place.
///
/// The checksum covers `frame[csum_start..]`, whose checksum field already holds the
/// pseudo-header sum as Linux leaves it, and is stored big-endian at
/// `csum_start + csum_offset`. A result of 0 is stored as 0xffff, which is the same number
/// in one's complement and the only form UDP accepts (0 there means "no checksum").
///
/// A header without `NEEDS_CSUM` leaves the frame alone. Fails, touching nothing, where
/// [`checksum_field`] does.
pub fn complete_checksum(frame: &mut [u8], hdr: &VirtioNetHdr) -> Result<(), OffloadError> {
    if !hdr.needs_checksum() {
        return Ok(());
    }
    let field = checksum_field(frame, hdr)?;
    let value = nonzero_checksum(checksum(&frame[usize::from(hdr.csum_start)..], 0));
    frame[field..field + 2].copy_from_slice(&value.to_be_bytes());
    Ok(())
}

/// Where the checksum field of a `NEEDS_CSUM` header lies in `frame`: its offset,
/// `csum_start + csum_offset`, once the two bytes there are known to lie inside the frame
/// ([`OffloadError::ChecksumOutOfBounds`] otherwise) and the sum to start after the
/// Ethernet header and its VLAN tag, if any ([`OffloadError::ChecksumInEthernetHeader`]).
///
/// The second rule is the network's, not Linux's: a frame is routed, and its source
/// learned, on its Ethernet header before anyone completes its checksum, so a sum that
/// covered the header and a field written into it would change the frame's addresses or
/// VLAN after the fact — a multicast source, another peer's address. A real stack starts
/// the sum at the transport header, well beyond.
pub fn checksum_field(frame: &[u8], hdr: &VirtioNetHdr) -> Result<usize, OffloadError> {
    let start = usize::from(hdr.csum_start);
    // Both are u16, so the sum cannot overflow a usize.
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > frame.len() {
        return Err(OffloadError::ChecksumOutOfBounds);
    }
    let tagged = frame.get(12..14) == Some(&0x8100u16.to_be_bytes()[..]);
    let link_header = ETHERNET_HEADER_LEN + if tagged { VLAN_TAG_LEN } else { 0 };
    if start < link_header {
        return Err(OffloadError::ChecksumInEthernetHeader);
    }
    Ok(field)
}

/// Maps a computed checksum of 0 to its one's-complement twin 0xffff.
fn nonzero_checksum(value: u16) -> u16 {
    if value == 0 { 0xffff } else { value }
}

/// Performs the GSO and checksum offloads of `frame` in software, calling `out` once per
/// finished frame, and returns how many frames it produced. See [`Segmenter::segment`];
/// this allocates one scratch buffer per call, so a hot loop should keep a [`Segmenter`].
pub fn segment(
    frame: &[u8],
    hdr: &VirtioNetHdr,
    mss_limit: usize,
    out: &mut impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    Segmenter::new().segment(frame, hdr, mss_limit, out)
}

/// The largest segment payload that keeps every segment of `frame` within an IP MTU of
/// `mtu`: `mtu` minus the IP and TCP/UDP headers the segments will carry. Pass it as
/// `mss_limit` to [`segment`] when the receiving network is smaller than the sender assumed.
///
/// Returns 0 when even the headers exceed `mtu` (which [`segment`] then refuses). Only for
/// GSO frames: a header of [`GsoType::None`] gets [`OffloadError::UnsupportedGsoType`],
/// as such a frame is never cut.
pub fn mss_for_mtu(frame: &[u8], hdr: &VirtioNetHdr, mtu: usize) -> Result<usize, OffloadError> {
    let layout = Layout::parse(frame, expectation(hdr.gso_type)?)?;
    Ok(mtu.saturating_sub(layout.payload - layout.l3))
}

/// Software GSO with a scratch buffer that lives as long as the segmenter, so that after
/// the first large packet nothing allocates.
#[derive(Debug, Default)]
pub struct Segmenter {
    /// The segment being built: the headers, then one segment's payload.
    scratch: Vec<u8>,
}

impl Segmenter {
    /// A segmenter with an empty scratch buffer; it grows to one segment on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// Performs the offloads `hdr` asks for on `frame` (a bare Ethernet frame, the
    /// virtio-net header already removed), calling `out` with each finished frame, and
    /// returns how many frames it produced.
    ///
    /// * [`GsoType::None`]: the frame itself, with its checksum completed when
    ///   `NEEDS_CSUM` is set (see [`complete_checksum`]). One frame.
    /// * [`GsoType::TcpV4`], [`GsoType::TcpV6`]: the TCP payload is cut into pieces of
    ///   `min(gso_size, mss_limit)` bytes. Each segment carries a copy of the headers with
    ///   its own IPv4 total length, identification (the original plus the segment's index)
    ///   and header checksum, or IPv6 payload length; its sequence number; FIN and PSH only
    ///   on the last segment, CWR only on the first; and a TCP checksum computed in full.
    ///   One optional 802.1Q tag, IPv4 options and TCP options are carried along.
    /// * [`GsoType::UdpL4`]: the UDP payload is cut the same way into datagrams, each with
    ///   its own UDP length and full checksum (never 0).
    ///
    /// `mss_limit` is the largest payload the receiving side takes per segment (see
    /// [`mss_for_mtu`]); with `usize::MAX` the sender's `gso_size` alone decides. A packet
    /// whose payload already fits, or is empty, yields one segment. Bytes after the end the
    /// IP length gives (Ethernet padding) are not copied into segments.
    ///
    /// Nothing is emitted unless the whole frame checks out, so an error never leaves the
    /// receiver with half a packet.
    pub fn segment(
        &mut self,
        frame: &[u8],
        hdr: &VirtioNetHdr,
        mss_limit: usize,
        out: &mut impl FnMut(&[u8]),
    ) -> Result<usize, OffloadError> {
        if hdr.gso_type == GsoType::None {
            if hdr.needs_checksum() {
                self.scratch.clear();
                self.scratch.extend_from_slice(frame);
                complete_checksum(&mut self.scratch, hdr)?;
                out(&self.scratch);
            } else {
                out(frame);
            }
            return Ok(1);
        }
        let expected = expectation(hdr.gso_type)?;
        let segment_size = usize::from(hdr.gso_size).min(mss_limit);
        if segment_size == 0 {
            return Err(OffloadError::ZeroSegmentSize);
        }
        let layout = Layout::parse(frame, expected)?;
        Ok(self.cut(frame, &layout, segment_size, out))
    }

    /// The segmentation loop proper, over a frame whose layout has been checked.
    fn cut(
        &mut self,
        frame: &[u8],
        layout: &Layout,
        segment_size: usize,
        out: &mut impl FnMut(&[u8]),
    ) -> usize {
        let headers_len = layout.payload;
        let payload = &frame[layout.payload..layout.end];
        self.scratch.clear();
        self.scratch.extend_from_slice(&frame[..headers_len]);
        self.scratch
            .resize(headers_len + segment_size.min(payload.len()), 0);

        let l3 = layout.l3;
        let l4 = layout.l4;
        // The address part of the pseudo-header is the same for every segment.
        let (addresses, ip_header_len) = match layout.ip {
            IpVersion::V4 => (&frame[l3 + 12..l3 + 20], l4 - l3),
            IpVersion::V6 => (&frame[l3 + 8..l3 + 40], IPV6_HEADER_LEN),
        };
        let address_sum = sum_words(addresses, 0);
        let first_id = read_u16(frame, l3 + 4);

        let mut offset = 0;
        let mut index: usize = 0;
        loop {
            let len = segment_size.min(payload.len() - offset);
            let last = offset + len == payload.len();
            let segment = &mut self.scratch[..headers_len + len];
            segment[headers_len..].copy_from_slice(&payload[offset..offset + len]);

            // Every length below is at most the frame's own IP length field, so it fits
            // in the u16 it is written to.
            let l4_len = segment.len() - l4;
            match layout.ip {
                IpVersion::V4 => {
                    write_u16(segment, l3 + 2, (ip_header_len + l4_len) as u16);
                    // Linux numbers the segments of one packet consecutively, wrapping.
                    write_u16(segment, l3 + 4, first_id.wrapping_add(index as u16));
                    write_u16(segment, l3 + 10, 0);
                    let sum = checksum(&segment[l3..l4], 0);
                    write_u16(segment, l3 + 10, sum);
                }
                IpVersion::V6 => write_u16(segment, l3 + 4, l4_len as u16),
            }
            let checksum_field = match layout.transport {
                Transport::Tcp => {
                    let first_seq = read_u32(frame, l4 + 4);
                    write_u32(segment, l4 + 4, first_seq.wrapping_add(offset as u32));
                    let mut flags = frame[l4 + 13];
                    if !last {
                        flags &= !(TCP_FIN | TCP_PSH);
                    }
                    if index > 0 {
                        flags &= !TCP_CWR;
                    }
                    segment[l4 + 13] = flags;
                    l4 + 16
                }
                Transport::Udp => {
                    write_u16(segment, l4 + 4, l4_len as u16);
                    l4 + 6
                }
            };
            write_u16(segment, checksum_field, 0);
            let pseudo = address_sum + u64::from(layout.transport.protocol()) + l4_len as u64;
            let sum = !fold(sum_words(&segment[l4..], pseudo));
            let sum = match layout.transport {
                Transport::Tcp => sum,
                Transport::Udp => nonzero_checksum(sum),
            };
            write_u16(segment, checksum_field, sum);

            out(segment);
            index += 1;
            offset += len;
            if last {
                return index;
            }
        }
    }
}

/// Length of the fixed IPv6 header.
const IPV6_HEADER_LEN: usize = 40;
/// Length of a TCP header without options.
const TCP_MIN_HEADER_LEN: usize = 20;
/// Length of the UDP header.
const UDP_HEADER_LEN: usize = 8;
/// TCP flag bits in byte 13 of the header.
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;
/// IP protocol numbers.
const PROTOCOL_TCP: u8 = 6;
const PROTOCOL_UDP: u8 = 17;

/// IP version of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IpVersion {
    V4,
    V6,
}

/// Transport protocol being segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    const fn protocol(self) -> u8 {
        match self {
            Transport::Tcp => PROTOCOL_TCP,
            Transport::Udp => PROTOCOL_UDP,
        }
    }
}

/// What a GSO type promises about the packet: the IP version (`None`: either) and the
/// transport protocol.
fn expectation(gso_type: GsoType) -> Result<(Option<IpVersion>, Transport), OffloadError> {
    match gso_type {
        GsoType::TcpV4 => Ok((Some(IpVersion::V4), Transport::Tcp)),
        GsoType::TcpV6 => Ok((Some(IpVersion::V6), Transport::Tcp)),
        GsoType::UdpL4 => Ok((None, Transport::Udp)),
        other => Err(OffloadError::UnsupportedGsoType(u8::from(other))),
    }
}

/// Where the headers of a frame lie, each offset checked against the frame.
///
/// Invariant after [`Layout::parse`]: `l3 < l4 < payload <= end <= frame.len()`, the IP
/// header fits in `l3..l4` and the transport header in `l4..payload`.
#[derive(Debug, Clone, Copy)]
struct Layout {
    ip: IpVersion,
    transport: Transport,
    /// Start of the IP header.
    l3: usize,
    /// Start of the TCP or UDP header.
    l4: usize,
    /// Start of the transport payload, which is also the length of all headers.
    payload: usize,
    /// End of the IP packet as its length field gives it.
    end: usize,
}

impl Layout {
    fn parse(
        frame: &[u8],
        (want_ip, transport): (Option<IpVersion>, Transport),
    ) -> Result<Self, OffloadError> {
        let mut l3 = ETHERNET_HEADER_LEN;
        let mut ethertype = read_u16_checked(frame, 12)?;
        if ethertype == 0x8100 {
            ethertype = read_u16_checked(frame, ETHERNET_HEADER_LEN + 2)?;
            l3 += VLAN_TAG_LEN;
        }
        let (ip, l4, end, protocol) = match ethertype {
            0x0800 => parse_ipv4(frame, l3)?,
            0x86dd => parse_ipv6(frame, l3)?,
            other => return Err(OffloadError::NotIp(other)),
        };
        if want_ip.is_some_and(|want| want != ip) || protocol != transport.protocol() {
            return Err(OffloadError::GsoTypeMismatch);
        }
        let header_len = match transport {
            Transport::Tcp => {
                let data_offset = frame
                    .get(l4 + 12)
                    .filter(|_| l4 + TCP_MIN_HEADER_LEN <= end)
                    .ok_or(OffloadError::Truncated)?;
                let len = usize::from(data_offset >> 4) * 4;
                if len < TCP_MIN_HEADER_LEN {
                    return Err(OffloadError::BadTcpHeader);
                }
                len
            }
            Transport::Udp => UDP_HEADER_LEN,
        };
        let payload = l4 + header_len;
        if payload > end {
            return Err(OffloadError::Truncated);
        }
        Ok(Layout {
            ip,
            transport,
            l3,
            l4,
            payload,
            end,
        })
    }
}

/// Checks an IPv4 header at `l3`; returns the version, the transport offset, the packet's
/// end and the protocol.
fn parse_ipv4(frame: &[u8], l3: usize) -> Result<(IpVersion, usize, usize, u8), OffloadError> {
    let header = frame.get(l3..l3 + 20).ok_or(OffloadError::Truncated)?;
    if header[0] >> 4 != 4 {
        return Err(OffloadError::BadIpHeader);
    }
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if header_len < 20 || total_len < header_len {
        return Err(OffloadError::BadIpHeader);
    }
    let end = l3 + total_len;
    if end > frame.len() {
        return Err(OffloadError::Truncated);
    }
    // More-fragments bit or a fragment offset.
    if u16::from_be_bytes([header[6], header[7]]) & 0x3fff != 0 {
        return Err(OffloadError::Ipv4Fragment);
    }
    Ok((IpVersion::V4, l3 + header_len, end, header[9]))
}

/// Checks an IPv6 header at `l3`; same results as [`parse_ipv4`].
fn parse_ipv6(frame: &[u8], l3: usize) -> Result<(IpVersion, usize, usize, u8), OffloadError> {
    let header = frame
        .get(l3..l3 + IPV6_HEADER_LEN)
        .ok_or(OffloadError::Truncated)?;
    if header[0] >> 4 != 6 {
        return Err(OffloadError::BadIpHeader);
    }
    let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let l4 = l3 + IPV6_HEADER_LEN;
    let end = l4 + payload_len;
    if end > frame.len() {
        return Err(OffloadError::Truncated);
    }
    let next_header = header[6];
    // Hop-by-hop, routing, fragment, ESP, AH, destination options, mobility, HIP, shim6,
    // and the two experimental numbers: the extension headers of RFC 7045.
    if matches!(
        next_header,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    ) {
        return Err(OffloadError::Ipv6ExtensionHeaders);
    }
    Ok((IpVersion::V6, l4, end, next_header))
}

fn read_u16_checked(frame: &[u8], at: usize) -> Result<u16, OffloadError> {
    match frame.get(at..at + 2) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(OffloadError::Truncated),
    }
}

/// Reads a big-endian u16 at an offset [`Layout::parse`] has checked.
fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// Reads a big-endian u32 at an offset [`Layout::parse`] has checked.
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn write_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

fn write_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::virtio_net::{FLAG_NEEDS_CSUM, GSO_ECN};
    use etherparse::{
        IpHeaders, IpNumber, Ipv4Header, Ipv6Header, NetHeaders, PacketBuilder, PacketHeaders,
        TcpOptionElement, TransportHeader,
    };
    use proptest::prelude::*;

    const SRC_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const DST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
    const SRC_V4: [u8; 4] = [192, 168, 1, 10];
    const DST_V4: [u8; 4] = [192, 168, 1, 20];
    const SRC_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const DST_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    /// The shape of a test packet.
    #[derive(Debug, Clone, Copy)]
    struct Spec {
        v6: bool,
        udp: bool,
        /// Insert one 802.1Q tag (VLAN 100).
        vlan: bool,
        /// IPv4 options (a 4-byte router alert) and TCP options (timestamps).
        options: bool,
        fin: bool,
        psh: bool,
        cwr: bool,
        seq: u32,
        ip_id: u16,
    }

    const TCP_V4: Spec = Spec {
        v6: false,
        udp: false,
        vlan: false,
        options: true,
        fin: false,
        psh: true,
        cwr: false,
        seq: 0x1000_0000,
        ip_id: 0x4242,
    };

    /// Builds a complete, valid frame with etherparse; the GSO input is such a frame whose
    /// payload is longer than one segment.
    fn build(spec: Spec, payload: &[u8]) -> Vec<u8> {
        let protocol = if spec.udp {
            IpNumber::UDP
        } else {
            IpNumber::TCP
        };
        let ip = if spec.v6 {
            IpHeaders::Ipv6(
                Ipv6Header {
                    next_header: protocol,
                    hop_limit: 64,
                    source: SRC_V6,
                    destination: DST_V6,
                    ..Default::default()
                },
                Default::default(),
            )
        } else {
            let mut header = Ipv4Header::new(0, 64, protocol, SRC_V4, DST_V4).unwrap();
            header.identification = spec.ip_id;
            header.dont_fragment = true;
            if spec.options {
                header.options = [0x94, 0x04, 0x00, 0x00].into();
            }
            IpHeaders::Ipv4(header, Default::default())
        };
        let builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC).ip(ip);
        let mut frame = Vec::new();
        if spec.udp {
            builder.udp(5000, 6000).write(&mut frame, payload).unwrap();
        } else {
            let mut tcp = builder.tcp(40000, 80, spec.seq, 501).ack(0x0bad_cafe);
            if spec.options {
                tcp = tcp
                    .options(&[
                        TcpOptionElement::Noop,
                        TcpOptionElement::Noop,
                        TcpOptionElement::Timestamp(0x0102_0304, 0x0506_0708),
                    ])
                    .unwrap();
            }
            if spec.fin {
                tcp = tcp.fin();
            }
            if spec.psh {
                tcp = tcp.psh();
            }
            if spec.cwr {
                tcp = tcp.cwr();
            }
            tcp.write(&mut frame, payload).unwrap();
        }
        if spec.vlan {
            frame.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
        }
        frame
    }

    fn gso_hdr(spec: Spec, gso_size: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: match (spec.udp, spec.v6) {
                (true, _) => GsoType::UdpL4,
                (false, false) => GsoType::TcpV4,
                (false, true) => GsoType::TcpV6,
            },
            gso_size,
            ..Default::default()
        }
    }

    fn collect(
        segmenter: &mut Segmenter,
        frame: &[u8],
        hdr: &VirtioNetHdr,
        mss_limit: usize,
    ) -> Result<Vec<Vec<u8>>, OffloadError> {
        let mut segments = Vec::new();
        let count = segmenter.segment(frame, hdr, mss_limit, &mut |s: &[u8]| {
            segments.push(s.to_vec())
        })?;
        assert_eq!(
            count,
            segments.len(),
            "returned count matches emitted frames"
        );
        Ok(segments)
    }

    /// Checks `segments` against the original packet with etherparse as the judge: every
    /// checksum valid, every length consistent, sequence numbers contiguous, IPv4 IDs
    /// consecutive, flags where they belong, and the payloads adding up to the original.
    fn check_segments(spec: Spec, payload: &[u8], segment_size: usize, segments: &[Vec<u8>]) {
        assert!(!segments.is_empty());
        let expected_count = payload.len().div_ceil(segment_size).max(1);
        assert_eq!(segments.len(), expected_count);
        let mut joined = Vec::new();
        for (index, bytes) in segments.iter().enumerate() {
            let first = index == 0;
            let last = index + 1 == segments.len();
            let parsed = PacketHeaders::from_ethernet_slice(bytes).unwrap();
            assert_eq!(parsed.link_exts.len(), usize::from(spec.vlan));
            let seg_payload = parsed.payload.slice();
            if last {
                assert!(seg_payload.len() <= segment_size);
            } else {
                assert_eq!(seg_payload.len(), segment_size);
            }
            let l2 = 14 + if spec.vlan { 4 } else { 0 };
            let transport = parsed.transport.clone().unwrap();
            let (checksum_ok, l4_len) = match (parsed.net.clone().unwrap(), &transport) {
                (NetHeaders::Ipv4(ip, _), t) => {
                    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
                    assert_eq!(usize::from(ip.total_len), bytes.len() - l2);
                    assert_eq!(ip.identification, spec.ip_id.wrapping_add(index as u16));
                    assert!(ip.dont_fragment && !ip.more_fragments);
                    assert_eq!(ip.options.len(), if spec.options { 4 } else { 0 });
                    let l4_len = bytes.len() - l2 - ip.header_len();
                    let ok = match t {
                        TransportHeader::Tcp(tcp) => {
                            tcp.checksum == tcp.calc_checksum_ipv4(&ip, seg_payload).unwrap()
                        }
                        TransportHeader::Udp(udp) => {
                            udp.checksum == udp.calc_checksum_ipv4(&ip, seg_payload).unwrap()
                        }
                        other => panic!("unexpected transport {other:?}"),
                    };
                    (ok, l4_len)
                }
                (NetHeaders::Ipv6(ip, _), t) => {
                    assert_eq!(usize::from(ip.payload_length), bytes.len() - l2 - 40);
                    let ok = match t {
                        TransportHeader::Tcp(tcp) => {
                            tcp.checksum == tcp.calc_checksum_ipv6(&ip, seg_payload).unwrap()
                        }
                        TransportHeader::Udp(udp) => {
                            udp.checksum == udp.calc_checksum_ipv6(&ip, seg_payload).unwrap()
                        }
                        other => panic!("unexpected transport {other:?}"),
                    };
                    (ok, usize::from(ip.payload_length))
                }
                other => panic!("unexpected network header {other:?}"),
            };
            assert!(checksum_ok, "transport checksum of segment {index}");
            match transport {
                TransportHeader::Tcp(tcp) => {
                    assert!(!spec.udp);
                    let offset = joined.len() as u32;
                    assert_eq!(tcp.sequence_number, spec.seq.wrapping_add(offset));
                    assert_eq!(tcp.acknowledgment_number, 0x0bad_cafe);
                    assert!(tcp.ack);
                    assert_eq!(tcp.fin, spec.fin && last, "FIN of segment {index}");
                    assert_eq!(tcp.psh, spec.psh && last, "PSH of segment {index}");
                    assert_eq!(tcp.cwr, spec.cwr && first, "CWR of segment {index}");
                    assert_eq!((tcp.source_port, tcp.destination_port), (40000, 80));
                    assert_eq!(tcp.options.len(), if spec.options { 12 } else { 0 });
                    assert_eq!(tcp.header_len() + seg_payload.len(), l4_len);
                }
                TransportHeader::Udp(udp) => {
                    assert!(spec.udp);
                    assert_eq!(usize::from(udp.length), 8 + seg_payload.len());
                    assert_eq!(usize::from(udp.length), l4_len);
                    assert_ne!(udp.checksum, 0, "a computed UDP checksum is never 0");
                }
                other => panic!("unexpected transport {other:?}"),
            }
            joined.extend_from_slice(seg_payload);
        }
        assert_eq!(
            joined, payload,
            "segments carry the original payload in order"
        );
    }

    /// A payload whose bytes differ from their neighbours, so misplaced data shows.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// The obvious checksum, 16 bits at a time, to judge the fast one by.
    fn naive_checksum(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(partial_sum(&data, 0), 0xddf2);
        assert_eq!(checksum(&data, 0), !0xddf2);
        // An odd byte is the high half of a last word; a partial sum carries over.
        assert_eq!(partial_sum(&[0xab], 0), 0xab00);
        assert_eq!(checksum(&data[..2], 0xddf1), !0xddf2);
        assert_eq!(checksum(&[], 0), 0xffff);
        // Carries fold around: 0xffff + 0x0001 is 0x0001 in one's complement.
        assert_eq!(partial_sum(&[0xff, 0xff, 0x00, 0x01], 0), 0x0001);
        assert_eq!(partial_sum(&[], 0xffff_ffff), 0xffff);
    }

    #[test]
    fn checksum_of_64_kib_matches_the_naive_sum() {
        let data = vec![0xffu8; 65535];
        assert_eq!(checksum(&data, 0), naive_checksum(&data));
        let data = pattern(65536);
        assert_eq!(checksum(&data, 0), naive_checksum(&data));
        assert_eq!(checksum(&data[1..], 0), naive_checksum(&data[1..]));
    }

    /// A TCP SYN from 10.0.0.1:1234 to 10.0.0.2:80 as it sits in a guest's transmit queue
    /// with checksum offload: the IPv4 header complete, the TCP checksum field holding the
    /// pseudo-header sum (0x0a00+0x0001+0x0a00+0x0002+0x0006+0x0014 = 0x141d).
    const SYN_PARTIAL: [u8; 54] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00,
        // IPv4: 20 bytes, total length 40, id 1, DF, TTL 64, TCP, checksum 0x26cd
        0x45, 0x00, 0x00, 0x28, 0x00, 0x01, 0x40, 0x00, 0x40, 0x06, 0x26, 0xcd, 0x0a, 0x00, 0x00,
        0x01, 0x0a, 0x00, 0x00, 0x02,
        // TCP: ports 1234 -> 80, seq 1, ack 0, offset 5, SYN, window 64240
        0x04, 0xd2, 0x00, 0x50, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x50, 0x02, 0xfa,
        0xf0, 0x14, 0x1d, 0x00, 0x00,
    ];

    #[test]
    fn completes_the_checksum_of_a_syn_in_place() {
        let mut frame = SYN_PARTIAL;
        let hdr = VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..Default::default()
        };
        complete_checksum(&mut frame, &hdr).unwrap();
        // By hand: TCP words 04d2+0050+0000+0001+0000+0000+5002+faf0+141d+0000
        // = 0x16432 -> 0x6433, so the checksum is !0x6433 = 0x9bcc.
        assert_eq!(&frame[50..52], &[0x9b, 0xcc]);
        assert_eq!(&frame[..50], &SYN_PARTIAL[..50], "nothing else changes");

        let parsed = PacketHeaders::from_ethernet_slice(&frame).unwrap();
        let (Some(NetHeaders::Ipv4(ip, _)), Some(TransportHeader::Tcp(tcp))) =
            (parsed.net, parsed.transport)
        else {
            panic!("not TCP/IPv4");
        };
        assert_eq!(ip.header_checksum, ip.calc_header_checksum());
        assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(&ip, &[]).unwrap());
    }

    #[test]
    fn completes_partial_checksums_linux_style() {
        for spec in [
            TCP_V4,
            Spec { v6: true, ..TCP_V4 },
            Spec {
                udp: true,
                ..TCP_V4
            },
            Spec {
                udp: true,
                v6: true,
                vlan: true,
                ..TCP_V4
            },
        ] {
            let payload = pattern(1001);
            let good = build(spec, &payload);
            let l2 = if spec.vlan { 18 } else { 14 };
            let l4 = l2 + if spec.v6 { 40 } else { 24 };
            let field = l4 + if spec.udp { 6 } else { 16 };
            // What Linux leaves behind: the pseudo-header sum, folded, not complemented.
            let (addresses, protocol) = if spec.v6 {
                (l2 + 8..l2 + 40, if spec.udp { 17 } else { 6 })
            } else {
                (l2 + 12..l2 + 20, if spec.udp { 17 } else { 6 })
            };
            let pseudo =
                !naive_checksum(&good[addresses]) as u32 + protocol + (good.len() - l4) as u32;
            let pseudo = (pseudo & 0xffff) + (pseudo >> 16);
            let mut frame = good.clone();
            frame[field..field + 2].copy_from_slice(&(pseudo as u16).to_be_bytes());
            let hdr = VirtioNetHdr {
                flags: FLAG_NEEDS_CSUM,
                csum_start: l4 as u16,
                csum_offset: (field - l4) as u16,
                ..Default::default()
            };
            complete_checksum(&mut frame, &hdr).unwrap();
            assert_eq!(frame, good, "{spec:?}");

            // The same through segment() with no GSO: one frame, checksum finished.
            let mut partial = good.clone();
            partial[field..field + 2].copy_from_slice(&(pseudo as u16).to_be_bytes());
            let out = collect(&mut Segmenter::new(), &partial, &hdr, 1).unwrap();
            assert_eq!(out, vec![good.clone()]);
        }
    }

    #[test]
    fn checksum_offsets_outside_the_frame_are_refused() {
        let frame = SYN_PARTIAL;
        for (start, offset) in [
            (34, 19), // field straddles the end
            (53, 0),  // field starts on the last byte
            (54, 0),  // start at the end
            (60, 0),  // start beyond the end
            (0, 53),  // only one byte of the field fits
            (u16::MAX, u16::MAX),
        ] {
            let mut copy = frame;
            let hdr = VirtioNetHdr {
                flags: FLAG_NEEDS_CSUM,
                csum_start: start,
                csum_offset: offset,
                ..Default::default()
            };
            assert_eq!(
                complete_checksum(&mut copy, &hdr),
                Err(OffloadError::ChecksumOutOfBounds)
            );
            assert_eq!(copy, frame, "a refused frame is left untouched");
            assert_eq!(
                segment(&frame, &hdr, usize::MAX, &mut |_: &[u8]| panic!("emitted")),
                Err(OffloadError::ChecksumOutOfBounds)
            );
        }
        // The last two bytes are a valid place for the field.
        let mut copy = frame;
        let hdr = VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: 50,
            csum_offset: 2,
            ..Default::default()
        };
        assert!(complete_checksum(&mut copy, &hdr).is_ok());
    }

    #[test]
    fn a_checksum_over_the_ethernet_header_is_refused() {
        // A guest that points the sum at the header would have the checksum rewrite the
        // addresses (here the source's first bytes) after the frame was routed on them.
        let frame = SYN_PARTIAL;
        for (start, offset) in [(0, 6), (6, 0), (0, 0), (12, 0), (13, 37)] {
            let mut copy = frame;
            let hdr = VirtioNetHdr {
                flags: FLAG_NEEDS_CSUM,
                csum_start: start,
                csum_offset: offset,
                ..Default::default()
            };
            assert_eq!(
                complete_checksum(&mut copy, &hdr),
                Err(OffloadError::ChecksumInEthernetHeader),
                "start {start}, offset {offset}"
            );
            assert_eq!(copy, frame, "a refused frame is left untouched");
            assert_eq!(
                segment(&frame, &hdr, usize::MAX, &mut |_: &[u8]| panic!("emitted")),
                Err(OffloadError::ChecksumInEthernetHeader)
            );
        }
        // Behind an 802.1Q tag the header is four bytes longer: the tag is refused too.
        let tagged = build(
            Spec {
                vlan: true,
                ..TCP_V4
            },
            &pattern(10),
        );
        let over_the_tag = VirtioNetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: 14,
            csum_offset: 0,
            ..Default::default()
        };
        assert_eq!(
            checksum_field(&tagged, &over_the_tag),
            Err(OffloadError::ChecksumInEthernetHeader)
        );
        let after_the_tag = VirtioNetHdr {
            csum_start: 18,
            ..over_the_tag
        };
        assert_eq!(checksum_field(&tagged, &after_the_tag), Ok(18));
    }

    #[test]
    fn plain_frames_pass_unchanged() {
        let frame = SYN_PARTIAL;
        let mut copy = frame;
        complete_checksum(&mut copy, &VirtioNetHdr::default()).unwrap();
        assert_eq!(copy, frame);
        let out = collect(&mut Segmenter::new(), &frame, &VirtioNetHdr::default(), 1).unwrap();
        assert_eq!(out, vec![frame.to_vec()]);
    }

    #[test]
    fn tso_ipv4_is_cut_at_gso_size() {
        let spec = Spec {
            fin: true,
            cwr: true,
            ..TCP_V4
        };
        let payload = pattern(4000);
        let mut frame = build(spec, &payload);
        // A guest leaves only the pseudo-header sum there; segmentation must not care.
        frame[34 + 4 + 16] ^= 0x5a;
        // Nor must the guest's hints: a wrong hdr_len and csum_start are ignored.
        let hdr = VirtioNetHdr {
            ecn: true,
            hdr_len: 7,
            csum_start: 9999,
            csum_offset: 3,
            ..gso_hdr(spec, 1448)
        };
        assert_eq!(hdr.gso_type_raw(), 1 | GSO_ECN);
        let segments = collect(&mut Segmenter::new(), &frame, &hdr, usize::MAX).unwrap();
        let lens: Vec<usize> = segments.iter().map(Vec::len).collect();
        // 14 + 24 (IPv4 with options) + 32 (TCP with timestamps) = 70 bytes of headers.
        assert_eq!(lens, [70 + 1448, 70 + 1448, 70 + 1104]);
        check_segments(spec, &payload, 1448, &segments);
    }

    #[test]
    fn tso_ipv6_with_a_vlan_tag() {
        let spec = Spec {
            v6: true,
            vlan: true,
            fin: true,
            cwr: true,
            ..TCP_V4
        };
        let payload = pattern(9000);
        let frame = build(spec, &payload);
        let segments = collect(
            &mut Segmenter::new(),
            &frame,
            &gso_hdr(spec, 1428),
            usize::MAX,
        )
        .unwrap();
        check_segments(spec, &payload, 1428, &segments);
        assert_eq!(&segments[0][12..16], &[0x81, 0x00, 0x00, 0x64], "tag kept");
    }

    #[test]
    fn uso_over_ipv4_and_ipv6() {
        for v6 in [false, true] {
            let spec = Spec {
                udp: true,
                v6,
                ..TCP_V4
            };
            let payload = pattern(3000);
            let frame = build(spec, &payload);
            let segments = collect(
                &mut Segmenter::new(),
                &frame,
                &gso_hdr(spec, 1200),
                usize::MAX,
            )
            .unwrap();
            check_segments(spec, &payload, 1200, &segments);
        }
    }

    #[test]
    fn the_smaller_network_mtu_wins_over_gso_size() {
        let spec = TCP_V4;
        let payload = pattern(20000);
        let frame = build(spec, &payload);
        let hdr = gso_hdr(spec, 8948);
        // IPv4 with options (24) and TCP with timestamps (32) leave 1444 of a 1500 MTU.
        let mss = mss_for_mtu(&frame, &hdr, 1500).unwrap();
        assert_eq!(mss, 1444);
        let segments = collect(&mut Segmenter::new(), &frame, &hdr, mss).unwrap();
        assert!(segments.iter().all(|s| s.len() <= 1514));
        assert_eq!(segments[0].len(), 1514);
        check_segments(spec, &payload, 1444, &segments);
        assert_eq!(mss_for_mtu(&frame, &hdr, 40), Ok(0));
        assert_eq!(
            collect(&mut Segmenter::new(), &frame, &hdr, 0),
            Err(OffloadError::ZeroSegmentSize)
        );
    }

    #[test]
    fn a_payload_that_fits_or_is_empty_is_one_segment() {
        for len in [0, 1, 1448] {
            let spec = Spec {
                fin: true,
                ..TCP_V4
            };
            let payload = pattern(len);
            let frame = build(spec, &payload);
            let segments = collect(
                &mut Segmenter::new(),
                &frame,
                &gso_hdr(spec, 1448),
                usize::MAX,
            )
            .unwrap();
            check_segments(spec, &payload, 1448, &segments);
            assert_eq!(
                segments,
                vec![frame],
                "a valid frame that fits is unchanged"
            );
        }
    }

    #[test]
    fn sequence_numbers_and_ip_ids_wrap() {
        let spec = Spec {
            seq: u32::MAX - 100,
            ip_id: u16::MAX,
            ..TCP_V4
        };
        let payload = pattern(1000);
        let frame = build(spec, &payload);
        let segments = collect(
            &mut Segmenter::new(),
            &frame,
            &gso_hdr(spec, 300),
            usize::MAX,
        )
        .unwrap();
        check_segments(spec, &payload, 300, &segments);
    }

    #[test]
    fn ethernet_padding_stays_out_of_segments() {
        let spec = TCP_V4;
        let payload = pattern(100);
        let mut frame = build(spec, &payload);
        frame.extend_from_slice(&[0xee; 6]);
        let segments = collect(
            &mut Segmenter::new(),
            &frame,
            &gso_hdr(spec, 40),
            usize::MAX,
        )
        .unwrap();
        check_segments(spec, &payload, 40, &segments);
    }

    #[test]
    fn one_segmenter_serves_many_frames() {
        // A large packet, then a small one: no bytes of the first may leak into the second.
        let mut segmenter = Segmenter::new();
        let big_spec = Spec { v6: true, ..TCP_V4 };
        let big = pattern(30000);
        let frame = build(big_spec, &big);
        let segments = collect(&mut segmenter, &frame, &gso_hdr(big_spec, 9000), 9000).unwrap();
        check_segments(big_spec, &big, 9000, &segments);
        let small_spec = Spec {
            udp: true,
            ..TCP_V4
        };
        let small = vec![0x11; 50];
        let frame = build(small_spec, &small);
        let segments = collect(&mut segmenter, &frame, &gso_hdr(small_spec, 20), 9000).unwrap();
        check_segments(small_spec, &small, 20, &segments);
    }

    /// Applies `edit` to a valid TSO frame and returns what segmentation says.
    fn segment_edited(
        spec: Spec,
        hdr: VirtioNetHdr,
        edit: impl FnOnce(&mut Vec<u8>),
    ) -> Result<usize, OffloadError> {
        let mut frame = build(spec, &pattern(3000));
        edit(&mut frame);
        segment(&frame, &hdr, usize::MAX, &mut |_: &[u8]| {})
    }

    #[test]
    fn malformed_gso_frames_are_refused() {
        use OffloadError::*;
        let v4 = TCP_V4;
        let hdr = gso_hdr(v4, 1000);
        let v6 = Spec { v6: true, ..TCP_V4 };
        let hdr6 = gso_hdr(v6, 1000);
        let cases: [(&str, Result<usize, OffloadError>); 14] = [
            ("valid", segment_edited(v4, hdr, |_| {})),
            ("fragment", segment_edited(v4, hdr, |f| f[20] |= 0x20)),
            ("fragment offset", segment_edited(v4, hdr, |f| f[21] = 1)),
            ("IP version", segment_edited(v4, hdr, |f| f[14] = 0x65)),
            ("IHL below 5", segment_edited(v4, hdr, |f| f[14] = 0x44)),
            (
                "total length past end",
                segment_edited(v4, hdr, |f| f.truncate(1000)),
            ),
            (
                "total length below IHL",
                segment_edited(v4, hdr, |f| f[16..18].copy_from_slice(&[0, 20])),
            ),
            (
                "TCP data offset below 5",
                segment_edited(v4, hdr, |f| f[38 + 12] = 0x40),
            ),
            (
                "TCP header past end",
                segment_edited(v4, hdr, |f| f[16..18].copy_from_slice(&[0, 40])),
            ),
            (
                "UDP packet under TCPV4",
                segment_edited(Spec { udp: true, ..v4 }, hdr, |_| {}),
            ),
            ("IPv6 under TCPV4", segment_edited(v6, hdr, |_| {})),
            ("IPv6 hop-by-hop", segment_edited(v6, hdr6, |f| f[20] = 0)),
            (
                "ARP",
                segment_edited(v4, hdr, |f| f[12..14].copy_from_slice(&[0x08, 0x06])),
            ),
            (
                "QinQ",
                segment_edited(v4, hdr, |f| {
                    f.splice(12..12, [0x88, 0xa8, 0, 1]).for_each(drop)
                }),
            ),
        ];
        let expected = [
            Ok(3),
            Err(Ipv4Fragment),
            Err(Ipv4Fragment),
            Err(BadIpHeader),
            Err(BadIpHeader),
            Err(Truncated),
            Err(BadIpHeader),
            Err(BadTcpHeader),
            Err(Truncated),
            Err(GsoTypeMismatch),
            Err(GsoTypeMismatch),
            Err(Ipv6ExtensionHeaders),
            Err(NotIp(0x0806)),
            Err(NotIp(0x88a8)),
        ];
        for ((name, got), want) in cases.into_iter().zip(expected) {
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn unsupported_gso_requests_are_refused() {
        let frame = build(TCP_V4, &pattern(3000));
        for (gso_type, gso_size, want) in [
            (GsoType::Udp, 1000, OffloadError::UnsupportedGsoType(3)),
            (
                GsoType::Unknown(9),
                1000,
                OffloadError::UnsupportedGsoType(9),
            ),
            (GsoType::TcpV4, 0, OffloadError::ZeroSegmentSize),
        ] {
            let hdr = VirtioNetHdr {
                gso_type,
                gso_size,
                ..Default::default()
            };
            assert_eq!(
                segment(&frame, &hdr, usize::MAX, &mut |_: &[u8]| panic!("emitted")),
                Err(want)
            );
            assert_eq!(
                mss_for_mtu(&frame, &hdr, 1500).err(),
                (gso_size != 0).then_some(want)
            );
        }
        for len in [0, 13, 15, 17] {
            assert_eq!(
                segment(
                    &frame[..len],
                    &gso_hdr(TCP_V4, 1000),
                    usize::MAX,
                    &mut |_: &[u8]| {}
                ),
                Err(OffloadError::Truncated)
            );
        }
    }

    fn any_spec() -> impl Strategy<Value = Spec> {
        (any::<[bool; 7]>(), any::<u32>(), any::<u16>()).prop_map(|(b, seq, ip_id)| Spec {
            v6: b[0],
            udp: b[1],
            vlan: b[2],
            options: b[3],
            fin: b[4],
            psh: b[5],
            cwr: b[6],
            seq,
            ip_id,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn segments_are_valid_and_add_up(
            spec in any_spec(),
            len in 0usize..12000,
            gso_size in 1u16..3000,
            mss_limit in 1usize..4000,
        ) {
            let payload = pattern(len);
            let frame = build(spec, &payload);
            let segments =
                collect(&mut Segmenter::new(), &frame, &gso_hdr(spec, gso_size), mss_limit)
                    .unwrap();
            check_segments(spec, &payload, usize::from(gso_size).min(mss_limit), &segments);
        }

        #[test]
        fn fast_checksum_equals_naive(data in proptest::collection::vec(any::<u8>(), 0..300),
                                      start in 0usize..8) {
            let data = &data[start.min(data.len())..];
            prop_assert_eq!(checksum(data, 0), naive_checksum(data));
            prop_assert_eq!(checksum(data, partial_sum(data, 0)), {
                let mut twice = data.to_vec();
                if twice.len() % 2 == 1 { twice.push(0); }
                twice.extend_from_slice(data);
                naive_checksum(&twice)
            });
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            raw in any::<[u8; 12]>(),
            mss_limit in 0usize..100,
        ) {
            let hdr = VirtioNetHdr::parse(&raw, 12).unwrap();
            let mut frame = bytes.clone();
            let _ = complete_checksum(&mut frame, &hdr);
            let _ = mss_for_mtu(&bytes, &hdr, 1500);
            let mut emitted = 0;
            if let Ok(count) = segment(&bytes, &hdr, mss_limit, &mut |_: &[u8]| emitted += 1) {
                prop_assert_eq!(count, emitted);
            }
        }

        #[test]
        fn damaged_frames_never_panic(
            spec in any_spec(),
            len in 0usize..600,
            damage in proptest::collection::vec((0usize..80, any::<u8>()), 1..6),
            cut in 0usize..700,
            gso_size in 0u16..200,
            csum in any::<(u16, u16)>(),
        ) {
            let mut frame = build(spec, &pattern(len));
            for (at, value) in damage {
                if let Some(byte) = frame.get_mut(at) {
                    *byte = value;
                }
            }
            frame.truncate(cut);
            let hdr = VirtioNetHdr {
                csum_start: csum.0,
                csum_offset: csum.1,
                ..gso_hdr(spec, gso_size)
            };
            let mut emitted = 0;
            if let Ok(count) = segment(&frame, &hdr, usize::MAX, &mut |_: &[u8]| emitted += 1) {
                prop_assert_eq!(count, emitted);
            }
            let _ = complete_checksum(&mut frame, &hdr);
        }
    }
}
