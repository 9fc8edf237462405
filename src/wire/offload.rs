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
//!   (no carry handling inside the loop; the carries are folded once at the end). It
//!   compiles to vector code and is limited by memory bandwidth: a 64 KiB checksum costs a
//!   few microseconds at most, about what copying the same bytes costs;
//! * segmentation copies the headers once per call, then per segment copies that segment's
//!   payload into the scratch buffer, patches a handful of fields and checksums the segment
//!   — one pass over each payload byte for the copy and one for the sum. A 64 KiB TSO
//!   packet becomes 45 segments of 1448 bytes for about twice the cost of copying it;
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
/// A header without `NEEDS_CSUM` leaves the frame alone. Fails with
/// [`OffloadError::ChecksumOutOfBounds`], touching nothing, if the field does not lie
/// wholly inside the frame.
pub fn complete_checksum(frame: &mut [u8], hdr: &VirtioNetHdr) -> Result<(), OffloadError> {
    if !hdr.needs_checksum() {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    // Both are u16, so the sum cannot overflow a usize.
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > frame.len() {
        return Err(OffloadError::ChecksumOutOfBounds);
    }
    let value = nonzero_checksum(checksum(&frame[start..], 0));
    frame[field..field + 2].copy_from_slice(&value.to_be_bytes());
    Ok(())
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
/// Returns 0 when even the headers exceed `mtu` (which [`segment`] then refuses).
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
