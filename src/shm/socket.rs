//! The three socket calls of the VXLAN port's packet socket that rustix does not wrap.
//!
//! The port reads its datagrams from an `AF_PACKET` socket so that the kernel tells it, in
//! a virtio-net header before each one, which checksums the sending host left unfinished
//! (see `ports::vxlan`). That takes a classic BPF filter (`SO_ATTACH_FILTER`), the
//! `PACKET_VNET_HDR` option and a bind to a link-layer address (`sockaddr_ll`), none of
//! which rustix offers. Each is one system call on plain, fully initialised C structures
//! that live across the call; the kernel only reads them.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// A classic BPF instruction (`struct sock_filter`).
pub use libc::sock_filter as FilterInstruction;

/// Turns a `setsockopt`/`bind` return code into a result.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches `program` to `socket` (socket(7) `SO_ATTACH_FILTER`): the kernel runs it on
/// every packet the socket would receive and queues only those it accepts. The kernel
/// checks the program and keeps its own copy, so `program` need live only for the call.
pub fn attach_filter(socket: BorrowedFd<'_>, program: &[FilterInstruction]) -> io::Result<()> {
    let len = u16::try_from(program.len())
        .map_err(|_| io::Error::other("a filter program of more than 65535 instructions"))?;
    let fprog = libc::sock_fprog {
        len,
        // The kernel never writes through it; the C declaration just lacks `const`.
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: `socket` is a live descriptor borrowed for the call; `fprog` is a fully
    // initialised sock_fprog that lives across the call, whose `filter` points at `len`
    // instructions of `program`, borrowed for the call; the kernel only reads both.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    check(rc)
}

/// Asks a packet socket to put a 10-byte virtio-net header before each packet it
/// receives (packet(7) `PACKET_VNET_HDR`): checksum still to compute, segmentation still
/// to do, offsets from the start of the packet as the socket delivers it.
pub fn enable_vnet_header(socket: BorrowedFd<'_>) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: `socket` is a live descriptor borrowed for the call; `on` is an int that
    // lives across the call, and the length given is its size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_VNET_HDR,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(rc)
}

/// Binds a packet socket to the EtherType `protocol` (host order) on every interface:
/// from then on it receives those packets. A socket opened with protocol 0 receives
/// nothing before this, so a filter attached in between sees every packet.
pub fn bind_packet_socket(socket: BorrowedFd<'_>, protocol: u16) -> io::Result<()> {
    let address = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as libc::c_ushort,
        sll_protocol: protocol.to_be(),
        // 0: every interface.
        sll_ifindex: 0,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    };
    // SAFETY: `socket` is a live descriptor borrowed for the call; `address` is a fully
    // initialised sockaddr_ll that lives across the call, and the length given is its
    // size; the kernel only reads it.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const address).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    check(rc)
}
