//! The underlay: the sockets the port's datagrams come in and leave by.
//!
//! Datagrams arrive on one UDP socket, bound to the local address (or, on a multicast
//! group, to every address: a socket bound to a unicast address does not receive what is
//! sent to a group). They leave by a [`WayOut`]: over IPv4, if the process may have one, a
//! send-only raw socket for which this file writes the outer IPv4 and UDP headers with a
//! per-flow source port; otherwise the UDP socket itself. Either way fragmentation is
//! forbidden, so a datagram too big for a link fails rather than leaving in pieces.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::OwnedFd;

use rustix::net::SendFlags;

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

    /// Sends `datagram` — [`OUTER_HEADROOM`] bytes of room, then the VXLAN header and
    /// `frame` — to `endpoint`. Over the raw socket the outer headers are written into the
    /// room, with a source port hashed from `frame`; the UDP socket skips the room.
    pub(super) fn send(
        &self,
        datagram: &mut [u8],
        frame: &[u8],
        endpoint: SocketAddr,
    ) -> std::io::Result<()> {
        match (self, endpoint) {
            (WayOut::Raw { socket, source }, SocketAddr::V4(destination)) => {
                let vxlan_len = datagram.len() - OUTER_HEADROOM;
                let mut headroom = [0u8; OUTER_HEADROOM];
                emit_outer_headers(
                    &mut headroom,
                    *source,
                    destination,
                    vxlan::source_port(frame),
                    vxlan_len,
                );
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
