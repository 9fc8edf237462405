//! The underlay: the sockets the port's datagrams come in and leave by.
//!
//! The port binds one UDP socket to the local address (or, on a multicast group, to every
//! address: a socket bound to a unicast address does not receive what is sent to a
//! group). Over IPv4, if the process may have one, datagrams that arrive over Ethernet
//! (and loopback) links are read instead from a packet socket ([`open_packet_socket`])
//! that reports the checksum state of each, behind a filter that lets through only UDP to
//! the port's address and port. The UDP socket then still holds the port (no "port
//! unreachable" answers) and the group membership, and a filter leaves to it only what
//! came over other links (a WireGuard or IP-in-IP underlay, whose packets have no Ethernet
//! header for the packet socket to step over), so that no datagram is read twice
//! ([`leave_ethernet_to_packet_socket`]). They leave by a [`WayOut`]: over IPv4, if the
//! process may have one, a send-only raw socket for which this file writes the outer IPv4
//! and UDP headers with a per-flow source port; otherwise the UDP socket itself. Either way
//! fragmentation is forbidden, so a datagram too big for a link fails rather than leaving
//! in pieces.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::SendFlags;

use crate::shm;
use crate::shm::socket::FilterInstruction;
use crate::wire::ipv4::{self, Ipv4Packet, Ipv4Repr};
use crate::wire::udp::{self, UdpPacket, UdpRepr};
use crate::wire::vxlan::{self, OVERHEAD_IPV4, OVERHEAD_IPV6};

/// Sets "don't fragment" on the UDP socket: a datagram too big for the route fails
/// (`EMSGSIZE`, counted as a send error) instead of leaving in pieces.
pub(super) fn forbid_fragmentation(socket: &UdpSocket, local: &SocketAddr) -> std::io::Result<()> {
    use rustix::net::sockopt::{
        Ipv4PathMtuDiscovery, Ipv6PathMtuDiscovery, set_ip_mtu_discover, set_ipv6_mtu_discover,
    };
    match local {
        SocketAddr::V4(_) => set_ip_mtu_discover(socket, Ipv4PathMtuDiscovery::DO)?,
        SocketAddr::V6(_) => set_ipv6_mtu_discover(socket, Ipv6PathMtuDiscovery::DO)?,
    }
    Ok(())
}

/// Joins `group` on `interface`, sends to it through that interface, and keeps the
/// port's own datagrams to the group from coming back to it.
pub(super) fn join_group(
    socket: &UdpSocket,
    raw: Option<&OwnedFd>,
    group: Ipv4Addr,
    interface: &str,
    local: Ipv4Addr,
) -> std::io::Result<()> {
    use rustix::net::sockopt::{
        set_ip_add_membership_with_ifindex, set_ip_multicast_if_with_ifindex, set_ip_multicast_loop,
    };
    let ifindex = rustix::net::netdevice::name_to_index(socket, interface)?;
    set_ip_add_membership_with_ifindex(socket, &group, &local, ifindex)?;
    set_ip_multicast_if_with_ifindex(socket, &group, &local, ifindex)?;
    set_ip_multicast_loop(socket, false)?;
    if let Some(raw) = raw {
        set_ip_multicast_if_with_ifindex(raw, &group, &local, ifindex)?;
        set_ip_multicast_loop(raw, false)?;
    }
    Ok(())
}

/// A send-only IPv4 raw socket, or `None` (with a note in the log) if the process may
/// not have one.
pub(super) fn open_raw_socket() -> Option<OwnedFd> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, ipproto};
    match rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        Some(ipproto::RAW),
    ) {
        Ok(socket) => Some(socket),
        Err(e) => {
            tracing::info!(error = %e, "no raw socket: datagrams leave from the bound UDP port, not a per-flow source port");
            None
        }
    }
}

/// What the packet socket's kernel buffer holds: some sixty 64 KiB super-frames, so that a
/// sender's burst of TSO segments is not dropped while the serving thread is busy.
const PACKET_SOCKET_BUFFER: usize = 4 << 20;

/// A packet socket that receives the Ethernet frames of UDP datagrams to `local`'s port
/// and address (or, on a multicast group, to `group` as well; an unspecified `local`
/// address: to any), each behind a virtio-net header, or `None` (with a note in the log)
/// if the process may not have one.
pub(super) fn open_packet_socket(local: SocketAddrV4, group: Option<Ipv4Addr>) -> Option<OwnedFd> {
    match try_open_packet_socket(local, group) {
        Ok(socket) => Some(socket),
        Err(e) => {
            tracing::info!(error = %e, "no packet socket: datagrams are read from the UDP socket, which cannot tell a checksum the sender left to hardware");
            None
        }
    }
}

fn try_open_packet_socket(
    local: SocketAddrV4,
    group: Option<Ipv4Addr>,
) -> std::io::Result<OwnedFd> {
    use rustix::net::sockopt::{set_socket_recv_buffer_size, set_socket_recv_buffer_size_force};
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    // Raw mode, link-layer header included: the kernel gives virtio-net headers to no other.
    // Protocol "none" until the bind below, so that nothing is queued before the filter is
    // in place.
    let socket = rustix::net::socket_with(
        AddressFamily::PACKET,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        None,
    )?;
    shm::socket::attach_filter(socket.as_fd(), &port_filter(local, group))?;
    shm::socket::enable_vnet_header(socket.as_fd())?;
    // Past the system's limit if the process may (CAP_NET_ADMIN), up to it otherwise.
    if set_socket_recv_buffer_size_force(&socket, PACKET_SOCKET_BUFFER).is_err() {
        set_socket_recv_buffer_size(&socket, PACKET_SOCKET_BUFFER)?;
    }
    shm::socket::bind_packet_socket(socket.as_fd(), ETHERTYPE_IPV4)?;
    Ok(socket)
}

/// Keeps `socket` (the UDP socket, once the packet socket reads what arrives over Ethernet)
/// from queueing a second copy of those datagrams. The kernel counts what the filter
/// refuses among the UDP receive errors (`InErrors` in `/proc/net/snmp`), one per datagram.
pub(super) fn leave_ethernet_to_packet_socket(socket: &UdpSocket) -> std::io::Result<()> {
    let program = [
        statement(BPF_LD | BPF_W | BPF_ABS, LINK_TYPE),
        jump(BPF_JMP | BPF_JEQ | BPF_K, ETHERNET_LINK, 2, 0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, LOOPBACK_LINK, 1, 0),
        statement(BPF_RET | BPF_K, ACCEPT),
        statement(BPF_RET | BPF_K, REFUSE),
    ];
    shm::socket::attach_filter(socket.as_fd(), &program)
}

/// The EtherType of IPv4.
const ETHERTYPE_IPV4: u16 = 0x0800;

// Classic BPF, as packet(7) and socket(7) run it: an accumulator A, an index register X,
// loads from the packet, jumps forward by instruction counts, and a return value that is
// the number of bytes to keep (0: refuse the packet).
use libc::{
    BPF_ABS, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_LDX, BPF_MSH,
    BPF_RET, BPF_W,
};

/// A filter's answer that keeps the whole packet.
const ACCEPT: u32 = u32::MAX;
/// A filter's answer that refuses the packet.
const REFUSE: u32 = 0;

// "Ancillary" loads: negative offsets that the kernel answers itself. The link's type and
// the packet's (for this host, from it, for another host) come from the kernel's records;
// offsets from the network header read the IPv4 header wherever the link header ends.
const LINK_TYPE: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_HATYPE) as u32;
const PACKET_TYPE: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32;
const fn from_network_header(offset: i32) -> u32 {
    (libc::SKF_NET_OFF + offset) as u32
}

/// The link types whose frames carry an Ethernet header, which the port steps over.
const ETHERNET_LINK: u32 = libc::ARPHRD_ETHER as u32;
const LOOPBACK_LINK: u32 = libc::ARPHRD_LOOPBACK as u32;

fn statement(code: u32, k: u32) -> FilterInstruction {
    FilterInstruction {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, if_true: u8, if_false: u8) -> FilterInstruction {
    FilterInstruction {
        code: code as u16,
        jt: if_true,
        jf: if_false,
        k,
    }
}

/// The packet socket's filter: IPv4 packets over an Ethernet or loopback link that
/// arrived for this host (not ones it sends, nor ones for another host that a promiscuous
/// interface sees), carrying UDP to `local`'s port and address (or `group`'s), and not a
/// fragment past the first (which has no UDP header to read; the first is let through for
/// the port to count and drop).
fn port_filter(local: SocketAddrV4, group: Option<Ipv4Addr>) -> Vec<FilterInstruction> {
    let mut program = vec![
        statement(BPF_LD | BPF_W | BPF_ABS, PACKET_TYPE),
        jump(
            BPF_JMP | BPF_JEQ | BPF_K,
            u32::from(libc::PACKET_OUTGOING),
            0,
            1,
        ),
        statement(BPF_RET | BPF_K, REFUSE),
        jump(
            BPF_JMP | BPF_JEQ | BPF_K,
            u32::from(libc::PACKET_OTHERHOST),
            0,
            1,
        ),
        statement(BPF_RET | BPF_K, REFUSE),
        statement(BPF_LD | BPF_W | BPF_ABS, LINK_TYPE),
        jump(BPF_JMP | BPF_JEQ | BPF_K, ETHERNET_LINK, 2, 0),
        jump(BPF_JMP | BPF_JEQ | BPF_K, LOOPBACK_LINK, 1, 0),
        statement(BPF_RET | BPF_K, REFUSE),
        // The protocol byte.
        statement(BPF_LD | BPF_B | BPF_ABS, from_network_header(9)),
        jump(
            BPF_JMP | BPF_JEQ | BPF_K,
            u32::from(ipv4::PROTOCOL_UDP),
            1,
            0,
        ),
        statement(BPF_RET | BPF_K, REFUSE),
        // The fragment offset.
        statement(BPF_LD | BPF_H | BPF_ABS, from_network_header(6)),
        jump(BPF_JMP | BPF_JSET | BPF_K, 0x1fff, 0, 1),
        statement(BPF_RET | BPF_K, REFUSE),
        // X = the IPv4 header's length; then the UDP destination port after it.
        statement(BPF_LDX | BPF_B | BPF_MSH, from_network_header(0)),
        statement(BPF_LD | BPF_H | BPF_IND, from_network_header(2)),
        jump(BPF_JMP | BPF_JEQ | BPF_K, u32::from(local.port()), 1, 0),
        statement(BPF_RET | BPF_K, REFUSE),
    ];
    let mut destinations: Vec<Ipv4Addr> = Vec::new();
    if !local.ip().is_unspecified() {
        destinations.push(*local.ip());
        destinations.extend(group);
    }
    if !destinations.is_empty() {
        // The destination address; each match jumps to the ACCEPT after the REFUSE.
        program.push(statement(BPF_LD | BPF_W | BPF_ABS, from_network_header(16)));
        let count = destinations.len();
        for (i, destination) in destinations.into_iter().enumerate() {
            let to_accept = (count - i) as u8;
            program.push(jump(
                BPF_JMP | BPF_JEQ | BPF_K,
                u32::from(destination),
                to_accept,
                0,
            ));
        }
        program.push(statement(BPF_RET | BPF_K, REFUSE));
    }
    program.push(statement(BPF_RET | BPF_K, ACCEPT));
    program
}

/// The encapsulation overhead for the underlay's address family.
pub(super) fn overhead(local: &SocketAddr) -> usize {
    if local.is_ipv4() {
        OVERHEAD_IPV4
    } else {
        OVERHEAD_IPV6
    }
}

/// Room before the VXLAN header for the outer IPv4 and UDP headers the raw socket needs.
pub(super) const OUTER_HEADROOM: usize = ipv4::HEADER_LEN + udp::HEADER_LEN;

/// Writes the outer IPv4 and UDP headers in front of a VXLAN datagram for a raw
/// (`IP_HDRINCL`) socket. The kernel fills in the IPv4 checksum and identification
/// (raw(7)); the UDP checksum is zero, as RFC 7348 recommends over IPv4.
fn emit_outer_headers(
    headroom: &mut [u8; OUTER_HEADROOM],
    source: Ipv4Addr,
    destination: SocketAddrV4,
    source_port: u16,
    vxlan_len: usize,
) {
    // As the Linux device: one hop to a multicast group (the underlay segment), the usual
    // default otherwise.
    let ttl = if destination.ip().is_multicast() {
        1
    } else {
        64
    };
    let udp = UdpRepr {
        source_port,
        destination_port: destination.port(),
        payload_len: vxlan_len,
    };
    let ip = Ipv4Repr {
        source,
        destination: *destination.ip(),
        protocol: ipv4::PROTOCOL_UDP,
        payload_len: udp.header_len() + vxlan_len,
        ttl,
        // A datagram too big for a link on the way is refused, never fragmented.
        dont_fragment: true,
    };
    let (ip_header, udp_header) = headroom.split_at_mut(ipv4::HEADER_LEN);
    ip.emit(&mut Ipv4Packet::new_unchecked(ip_header));
    udp.emit(&mut UdpPacket::new_unchecked(udp_header));
}

/// The socket datagrams leave by.
pub(super) enum WayOut {
    /// A raw IPv4 socket: we write the outer headers, with a per-flow source port.
    Raw {
        socket: OwnedFd,
        /// The outer source address (unspecified: the kernel picks it).
        source: Ipv4Addr,
    },
    /// The bound UDP socket: the source port is the bound one.
    Udp(UdpSocket),
}

impl WayOut {
    /// The raw socket if there is one (its outer source address is the local one), else
    /// a copy of the UDP socket.
    pub(super) fn new(
        raw: Option<OwnedFd>,
        socket: &UdpSocket,
        local: SocketAddr,
    ) -> std::io::Result<WayOut> {
        Ok(match raw {
            Some(raw) => WayOut::Raw {
                socket: raw,
                source: match local {
                    SocketAddr::V4(local) => *local.ip(),
                    SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
                },
            },
            None => WayOut::Udp(socket.try_clone()?),
        })
    }

    /// Sends `datagram` — [`OUTER_HEADROOM`] bytes of room, then the VXLAN header and the
    /// inner frame — to `endpoint`. Over the raw socket the outer headers are written into
    /// the room, with a source port hashed from the inner frame as sent; the UDP socket
    /// skips the room.
    pub(super) fn send(&self, datagram: &mut [u8], endpoint: SocketAddr) -> std::io::Result<()> {
        match (self, endpoint) {
            (WayOut::Raw { socket, source }, SocketAddr::V4(destination)) => {
                let vxlan_len = datagram.len() - OUTER_HEADROOM;
                let inner = datagram
                    .get(OUTER_HEADROOM + vxlan::HEADER_LEN..)
                    .unwrap_or_default();
                let source_port = vxlan::source_port(inner);
                let mut headroom = [0u8; OUTER_HEADROOM];
                emit_outer_headers(&mut headroom, *source, destination, source_port, vxlan_len);
                datagram[..OUTER_HEADROOM].copy_from_slice(&headroom);
                // A raw socket's address carries no port: the UDP header has it.
                let to = SocketAddrV4::new(*destination.ip(), 0);
                rustix::net::sendto(socket, datagram, SendFlags::empty(), &to)
                    .map(drop)
                    .map_err(std::io::Error::from)
            }
            (WayOut::Raw { .. }, SocketAddr::V6(_)) => Err(std::io::Error::other(
                "an IPv6 remote on an IPv4 raw socket",
            )),
            (WayOut::Udp(socket), endpoint) => socket
                .send_to(&datagram[OUTER_HEADROOM..], endpoint)
                .map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outer_headers_carry_the_hashed_port_and_forbid_fragmentation() {
        let mut headroom = [0xffu8; OUTER_HEADROOM];
        emit_outer_headers(
            &mut headroom,
            Ipv4Addr::new(10, 99, 0, 1),
            "10.99.0.2:4789".parse().unwrap(),
            50000,
            8 + 60,
        );
        #[rustfmt::skip]
        let expected = [
            0x45, 0x00, 0x00, 96, 0x00, 0x00, 0x40, 0x00, 64, 17, 0x00, 0x00, // IPv4, DF, TTL 64
            10, 99, 0, 1, 10, 99, 0, 2,
            0xc3, 0x50, 0x12, 0xb5, 0x00, 76, 0x00, 0x00, // UDP 50000 → 4789, len 76, csum 0
        ];
        assert_eq!(headroom, expected);
    }
}
