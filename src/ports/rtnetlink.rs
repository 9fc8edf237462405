//! Link events from the kernel: what `ip link set …` changes on an interface.
//!
//! A TAP port must follow what the administrator does to its kernel interface — bring it
//! down or up, make it promiscuous, give it a new MAC — and publish that on the network.
//! The kernel announces every such change as an `RTM_NEWLINK` message to the members of
//! the `RTMGRP_LINK` group of a routing netlink socket, and its removal as `RTM_DELLINK`;
//! listening there costs nothing while nothing changes, where polling the interface's
//! flags would wake up forever.
//!
//! A netlink socket belongs to the network namespace it was created in, so a port whose
//! interface lives in another namespace opens its [`LinkMonitor`] from a thread that
//! entered that namespace; afterwards the socket can be read from anywhere.
//!
//! Messages come from the kernel, yet they are parsed as untrusted bytes all the same:
//! every length is checked against what was received, and a malformed message ends the
//! parse of its datagram instead of a panic. Only the fields the port needs are read:
//! the interface flags, the promiscuity count (`tcpdump` raises it without setting the
//! `IFF_PROMISC` flag an administrator sets) and the hardware address.
//!
//! Only the kernel speaks for the interface. Any process in the namespace, privileged or
//! not, may send a datagram to our socket's port id, and a forged `RTM_NEWLINK` would
//! otherwise take the peer's link down or publish a MAC of the forger's choosing. So each
//! datagram's sender address is read with it, and one whose port id is not the kernel's
//! ([`KERNEL_PORT_ID`]) is ignored and counted ([`LinkMonitor::foreign_datagrams`]).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::SocketAddrAny;
use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use crate::wire::MacAddress;

/// `struct nlmsghdr`: length, type, flags, sequence, port id.
const NLMSG_HEADER_LEN: usize = 16;
/// `struct ifinfomsg`: family, pad, type, index, flags, change.
const IFINFO_LEN: usize = 16;
/// `struct rtattr`: length, type.
const RTA_HEADER_LEN: usize = 4;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const NLM_F_REQUEST: u16 = 1;
const RTMGRP_LINK: u32 = 1;

const IFLA_ADDRESS: u16 = 1;
const IFLA_PROMISCUITY: u16 = 30;
/// The top two bits of an attribute type are flags (nested, byte order).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// `IFF_UP`: the administrator brought the interface up.
pub const IFF_UP: u32 = 0x1;
/// `IFF_PROMISC`: the administrator asked for promiscuous mode.
pub const IFF_PROMISC: u32 = 0x100;
/// `IFF_ALLMULTI`: the interface takes every multicast frame.
pub const IFF_ALLMULTI: u32 = 0x200;

/// The netlink port id the kernel sends from; every process's socket has another.
pub const KERNEL_PORT_ID: u32 = 0;

/// Link messages are a few hundred bytes to a few KiB (they carry statistics); this holds
/// a datagram of several.
const RECEIVE_BUFFER: usize = 32 * 1024;

/// What a link message says about the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    /// `IFF_*` flags.
    pub flags: u32,
    /// How many users asked for promiscuous mode, when the kernel says.
    pub promiscuity: Option<u32>,
    /// The hardware address, when the kernel says.
    pub mac: Option<MacAddress>,
}

impl LinkState {
    /// The administrator brought the interface up.
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }

    /// Someone wants every frame: `ip link set … promisc on`, or a packet capture.
    pub fn is_promiscuous(&self) -> bool {
        self.flags & IFF_PROMISC != 0 || self.promiscuity.is_some_and(|count| count > 0)
    }
}

/// A change to the watched interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// Its state now (after any change, or in answer to a request).
    Changed(LinkState),
    /// It was deleted or moved to another namespace.
    Removed,
}

/// A routing netlink socket that hears the link changes of one interface.
#[derive(Debug)]
pub struct LinkMonitor {
    socket: OwnedFd,
    ifindex: u32,
    sequence: u32,
    buffer: Vec<u8>,
    /// Datagrams ignored because a process, not the kernel, sent them.
    foreign_datagrams: u64,
}

impl LinkMonitor {
    /// Subscribes to link changes in the calling thread's network namespace and keeps
    /// those of interface `ifindex`. The socket is non-blocking: poll it, then
    /// [`read`](LinkMonitor::read).
    pub fn open(ifindex: u32) -> io::Result<LinkMonitor> {
        let socket = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            // NETLINK_ROUTE is protocol 0, the default.
            None,
        )?;
        rustix::net::bind(&socket, &SocketAddrNetlink::new(0, RTMGRP_LINK))?;
        Ok(LinkMonitor {
            socket,
            ifindex,
            sequence: 0,
            buffer: vec![0; RECEIVE_BUFFER],
            foreign_datagrams: 0,
        })
    }

    /// Asks the kernel for the interface's current state; the answer arrives as a
    /// [`LinkEvent::Changed`] like any change. Used at start and after the socket
    /// overflowed (`ENOBUFS`), when changes may have been missed.
    pub fn request_state(&mut self) -> io::Result<()> {
        self.sequence = self.sequence.wrapping_add(1);
        let request = link_request(self.ifindex, self.sequence);
        rustix::net::sendto(
            &self.socket,
            &request,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )?;
        Ok(())
    }

    /// Reads one datagram and appends the events about our interface to `events`; a
    /// datagram a process sent instead of the kernel is counted and adds none.
    /// `WouldBlock` when nothing waits; `ENOBUFS` (as an `io::Error`) when the kernel
    /// dropped messages: call [`request_state`](LinkMonitor::request_state) then.
    pub fn read(&mut self, events: &mut Vec<LinkEvent>) -> io::Result<()> {
        let (len, _, from) =
            rustix::net::recvfrom(&self.socket, &mut self.buffer[..], RecvFlags::empty())?;
        let len = len.min(self.buffer.len());
        let sender = port_id(from);
        if !parse_from(sender, &self.buffer[..len], self.ifindex, events) {
            self.foreign_datagrams += 1;
            if self.foreign_datagrams == 1 {
                tracing::warn!(
                    sender = ?sender,
                    "ignoring link messages from a process instead of the kernel"
                );
            }
        }
        Ok(())
    }

    /// Datagrams ignored so far because a process, not the kernel, sent them.
    pub fn foreign_datagrams(&self) -> u64 {
        self.foreign_datagrams
    }
}

/// The netlink port id of a datagram's sender, if it came with a netlink address.
fn port_id(from: Option<SocketAddrAny>) -> Option<u32> {
    from.and_then(|address| SocketAddrNetlink::try_from(address).ok())
        .map(|address| address.pid())
}

/// The socket to poll.
impl AsFd for LinkMonitor {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// An `RTM_GETLINK` request for one interface (host byte order, as netlink is).
fn link_request(ifindex: u32, sequence: u32) -> [u8; NLMSG_HEADER_LEN + IFINFO_LEN] {
    let mut request = [0u8; NLMSG_HEADER_LEN + IFINFO_LEN];
    request[0..4].copy_from_slice(&((NLMSG_HEADER_LEN + IFINFO_LEN) as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    request[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    request[8..12].copy_from_slice(&sequence.to_ne_bytes());
    // ifinfomsg: family AF_UNSPEC (0), then the index at offset 4.
    request[NLMSG_HEADER_LEN + 4..NLMSG_HEADER_LEN + 8].copy_from_slice(&ifindex.to_ne_bytes());
    request
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let field = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes([field[0], field[1]]))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let field = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([field[0], field[1], field[2], field[3]]))
}

/// Netlink aligns messages and attributes to 4 bytes.
fn align4(len: usize) -> usize {
    len.saturating_add(3) & !3
}

/// Appends the events of a datagram from netlink port `sender` (`None`: it came with no
/// netlink address) that concern interface `ifindex`, and returns true; or, when the
/// sender is not the kernel ([`KERNEL_PORT_ID`]), appends nothing and returns false.
pub fn parse_from(
    sender: Option<u32>,
    datagram: &[u8],
    ifindex: u32,
    events: &mut Vec<LinkEvent>,
) -> bool {
    if sender != Some(KERNEL_PORT_ID) {
        return false;
    }
    parse(datagram, ifindex, events);
    true
}

/// Appends the events of a datagram that concern interface `ifindex`, whoever sent it
/// (see [`parse_from`]). Stops at the first message whose length does not fit what was
/// received.
pub fn parse(datagram: &[u8], ifindex: u32, events: &mut Vec<LinkEvent>) {
    let mut offset = 0;
    // Each step advances by at least a header, so the loop ends.
    while let Some(len) = u32_at(datagram, offset) {
        let len = len as usize;
        let Some(end) = offset.checked_add(len) else {
            return;
        };
        if len < NLMSG_HEADER_LEN || end > datagram.len() {
            return;
        }
        let message = &datagram[offset..end];
        if let Some(event) = link_event(message, ifindex) {
            events.push(event);
        }
        offset = offset.saturating_add(align4(len));
    }
}

/// The event one message carries, if it is a link message about `ifindex`.
fn link_event(message: &[u8], ifindex: u32) -> Option<LinkEvent> {
    let kind = u16_at(message, 4)?;
    if kind != RTM_NEWLINK && kind != RTM_DELLINK {
        return None;
    }
    let info = message.get(NLMSG_HEADER_LEN..NLMSG_HEADER_LEN + IFINFO_LEN)?;
    if u32_at(info, 4)? != ifindex {
        return None;
    }
    if kind == RTM_DELLINK {
        return Some(LinkEvent::Removed);
    }
    let mut state = LinkState {
        flags: u32_at(info, 8)?,
        promiscuity: None,
        mac: None,
    };
    let mut attributes = &message[NLMSG_HEADER_LEN + IFINFO_LEN..];
    while let (Some(len), Some(kind)) = (u16_at(attributes, 0), u16_at(attributes, 2)) {
        let len = len as usize;
        if len < RTA_HEADER_LEN || len > attributes.len() {
            break;
        }
        let payload = &attributes[RTA_HEADER_LEN..len];
        match kind & NLA_TYPE_MASK {
            IFLA_ADDRESS => state.mac = MacAddress::from_slice(payload),
            IFLA_PROMISCUITY => state.promiscuity = u32_at(payload, 0),
            _ => {}
        }
        attributes = attributes.get(align4(len)..).unwrap_or(&[]);
    }
    Some(LinkEvent::Changed(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((RTA_HEADER_LEN + payload.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(align4(out.len()), 0);
        out
    }

    fn message(kind: u16, ifindex: u32, flags: u32, attributes: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![0u8; IFINFO_LEN];
        body[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        body[8..12].copy_from_slice(&flags.to_ne_bytes());
        for attribute in attributes {
            body.extend_from_slice(attribute);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSG_HEADER_LEN + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(&body);
        out
    }

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];

    #[test]
    fn a_new_link_message_gives_flags_address_and_promiscuity() {
        let datagram = message(
            RTM_NEWLINK,
            7,
            IFF_UP | IFF_ALLMULTI,
            &[
                attribute(3, b"gn0\0"),
                attribute(IFLA_ADDRESS, &MAC),
                attribute(IFLA_PROMISCUITY, &1u32.to_ne_bytes()),
            ],
        );
        let mut events = Vec::new();
        parse(&datagram, 7, &mut events);
        let expected = LinkState {
            flags: IFF_UP | IFF_ALLMULTI,
            promiscuity: Some(1),
            mac: Some(MacAddress(MAC)),
        };
        assert_eq!(events, vec![LinkEvent::Changed(expected)]);
        assert!(expected.is_up());
        assert!(expected.is_promiscuous(), "a capture's promiscuity counts");
    }

    #[test]
    fn other_interfaces_and_other_messages_are_ignored() {
        let mut datagram = message(RTM_NEWLINK, 8, IFF_UP, &[]);
        datagram.extend(message(RTM_NEWLINK + 4, 7, IFF_UP, &[]));
        datagram.extend(message(RTM_DELLINK, 7, 0, &[]));
        let mut events = Vec::new();
        parse(&datagram, 7, &mut events);
        assert_eq!(events, vec![LinkEvent::Removed]);
    }

    #[test]
    fn lengths_that_overrun_the_datagram_end_the_parse_without_panic() {
        let good = message(RTM_NEWLINK, 7, 0, &[attribute(IFLA_ADDRESS, &MAC)]);
        // An attribute claiming more bytes than its message holds is skipped.
        let mut lying_attribute = good.clone();
        lying_attribute[NLMSG_HEADER_LEN + IFINFO_LEN..][..2]
            .copy_from_slice(&200u16.to_ne_bytes());
        let mut events = Vec::new();
        parse(&lying_attribute, 7, &mut events);
        assert_eq!(
            events,
            vec![LinkEvent::Changed(LinkState {
                flags: 0,
                promiscuity: None,
                mac: None
            })]
        );
        // A message claiming more bytes than the datagram, or fewer than a header.
        for claimed in [u32::MAX, good.len() as u32 + 1, 3] {
            let mut lying = good.clone();
            lying[0..4].copy_from_slice(&claimed.to_ne_bytes());
            events.clear();
            parse(&lying, 7, &mut events);
            assert!(events.is_empty(), "claimed length {claimed}");
        }
        // Every truncation of a valid datagram.
        for cut in 0..good.len() {
            events.clear();
            parse(&good[..cut], 7, &mut events);
            assert!(events.is_empty());
        }
    }

    #[test]
    fn only_the_kernel_speaks_for_the_interface() {
        let datagram = message(RTM_NEWLINK, 7, IFF_UP, &[attribute(IFLA_ADDRESS, &MAC)]);
        let mut events = Vec::new();
        for forger in [Some(1), Some(4242), Some(u32::MAX), None] {
            assert!(!parse_from(forger, &datagram, 7, &mut events));
            assert!(events.is_empty(), "believed port {forger:?}");
        }
        assert!(parse_from(Some(KERNEL_PORT_ID), &datagram, 7, &mut events));
        assert_eq!(events.len(), 1);
    }

    /// Waits, at most a few seconds, for the monitor's socket to have a datagram.
    fn wait_readable(monitor: &LinkMonitor) {
        use rustix::event::{PollFd, PollFlags, poll};
        let timeout = rustix::time::Timespec {
            tv_sec: 5,
            tv_nsec: 0,
        };
        let mut fds = [PollFd::new(monitor, PollFlags::IN)];
        let ready = poll(&mut fds, Some(&timeout)).unwrap();
        assert_eq!(ready, 1, "no datagram within 5 s");
    }

    #[test]
    fn a_link_message_a_process_forges_is_ignored_and_counted() {
        // The loopback interface has index 1 in every namespace.
        let mut monitor = LinkMonitor::open(1).unwrap();
        let ours = rustix::net::getsockname(&monitor.socket).unwrap();
        let ours = SocketAddrNetlink::try_from(ours).unwrap();
        let forger = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None).unwrap();
        // "lo is down, and its address is ours": what a forger in the namespace could send.
        let forged = message(RTM_NEWLINK, 1, 0, &[attribute(IFLA_ADDRESS, &MAC)]);
        rustix::net::sendto(&forger, &forged, SendFlags::empty(), &ours).unwrap();
        wait_readable(&monitor);
        let mut events = Vec::new();
        monitor.read(&mut events).unwrap();
        assert!(events.is_empty(), "believed {events:?}");
        assert_eq!(monitor.foreign_datagrams(), 1);

        // The kernel's own answer is still believed.
        monitor.request_state().unwrap();
        wait_readable(&monitor);
        monitor.read(&mut events).unwrap();
        assert!(
            matches!(events.as_slice(), [LinkEvent::Changed(_)]),
            "{events:?}"
        );
        assert_eq!(monitor.foreign_datagrams(), 1);
    }

    #[test]
    fn the_request_names_the_interface() {
        let request = link_request(42, 9);
        assert_eq!(u32_at(&request, 0), Some(32));
        assert_eq!(u16_at(&request, 4), Some(RTM_GETLINK));
        assert_eq!(u32_at(&request, 8), Some(9));
        assert_eq!(u32_at(&request, NLMSG_HEADER_LEN + 4), Some(42));
    }
}
