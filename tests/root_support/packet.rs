//! A raw `AF_PACKET` socket on one interface of a network namespace: what a test uses to
//! speak 802.1Q where the kernel has no VLAN devices.
//!
//! Frames are sent as written, tag included. On receive the kernel has already moved a
//! frame's outer tag into the packet's metadata (the frame's bytes arrive untagged), so
//! the socket asks for that metadata with `PACKET_AUXDATA` and reads the tag back from
//! `tpacket_auxdata` (`tp_vlan_tci`, valid when `tp_status` has `TP_STATUS_VLAN_VALID`).
//!
//! rustix covers the socket, its timeout, the namespace switch and sending; binding to a
//! `sockaddr_ll`, the `PACKET_AUXDATA` option and `recvmsg` with a foreign control
//! message are not in its safe API, so those three calls go to libc directly.

use std::fs::File;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::net::{AddressFamily, SendFlags, SocketType, sockopt};
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

/// The 802.1Q tag protocol identifier.
pub const TPID_8021Q: u16 = 0x8100;

/// One frame read from the socket.
#[derive(Debug, Clone)]
pub struct Received {
    /// The frame's bytes, as the kernel hands them over (its outer tag removed).
    pub frame: Vec<u8>,
    /// The tag control information of the tag the frame arrived with, if any.
    pub tci: Option<u16>,
    /// The tag's protocol identifier, when the kernel reports one.
    pub tpid: Option<u16>,
    /// The frame's length on the wire before the kernel took its tag off.
    pub wire_len: usize,
}

impl Received {
    /// The VLAN identifier of the frame's tag, if it had one.
    pub fn vid(&self) -> Option<u16> {
        self.tci.map(|tci| tci & 0x0fff)
    }
}

/// A raw packet socket bound to one interface.
pub struct PacketSocket {
    fd: OwnedFd,
    /// The interface's index in its namespace.
    pub ifindex: u32,
}

impl PacketSocket {
    /// Opens a socket on interface `ifname` of the named network namespace (`ip netns
    /// add`), receiving every protocol, with `PACKET_AUXDATA` on.
    pub fn open(netns: &str, ifname: &str) -> PacketSocket {
        let path = format!("/run/netns/{netns}");
        let namespace = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // A socket belongs to the namespace of the thread that creates it, for good: make
        // it on a thread of its own that moves into the namespace and then ends, so that
        // the test's threads stay where they are.
        let (fd, ifindex) = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    move_into_link_name_space(namespace.as_fd(), Some(LinkNameSpaceType::Network))
                        .unwrap_or_else(|e| panic!("setns into {netns}: {e}"));
                    // Protocol 0: the socket receives nothing until it is bound below,
                    // then only from its interface.
                    let fd = rustix::net::socket(AddressFamily::PACKET, SocketType::RAW, None)
                        .expect("an AF_PACKET socket");
                    let ifindex = rustix::net::netdevice::name_to_index(&fd, ifname)
                        .unwrap_or_else(|e| panic!("index of {ifname} in {netns}: {e}"));
                    (fd, ifindex)
                })
                .join()
                .expect("the namespace thread")
        });
        let socket = PacketSocket { fd, ifindex };
        socket.bind();
        socket.enable_auxdata();
        socket
    }

    fn bind(&self) {
        let address = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: (libc::ETH_P_ALL as u16).to_be(),
            sll_ifindex: i32::try_from(self.ifindex).expect("an ifindex fits an int"),
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        // SAFETY: `address` is a fully initialised sockaddr_ll that lives across the call,
        // and the length passed is its size; the descriptor is owned by `self`.
        let result = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&raw const address).cast::<libc::sockaddr>(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(
            result,
            0,
            "bind the packet socket to ifindex {}: {}",
            self.ifindex,
            std::io::Error::last_os_error()
        );
    }

    fn enable_auxdata(&self) {
        let on: libc::c_int = 1;
        // SAFETY: the option value points to a live c_int and the length is its size; the
        // descriptor is owned by `self`.
        let result = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_AUXDATA,
                (&raw const on).cast::<libc::c_void>(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(
            result,
            0,
            "PACKET_AUXDATA: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Sends `frame` out of the interface exactly as given (a tag, if any, in its bytes).
    pub fn send(&self, frame: &[u8]) {
        let sent = rustix::net::send(&self.fd, frame, SendFlags::empty())
            .unwrap_or_else(|e| panic!("send a {}-byte frame: {e}", frame.len()));
        assert_eq!(sent, frame.len(), "the frame went out whole");
    }

    /// The next frame that arrived on the interface (not one the namespace sent), or
    /// `None` once `deadline` has passed without one.
    pub fn recv_until(&self, deadline: Instant) -> Option<Received> {
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            // A zero timeout would mean "block forever".
            let left = left.max(Duration::from_millis(1));
            sockopt::set_socket_timeout(&self.fd, sockopt::Timeout::Recv, Some(left))
                .expect("SO_RCVTIMEO");
            match self.recv_once() {
                Ok(Some(received)) => return Some(received),
                Ok(None) => continue, // an outgoing frame: not what the test waits for
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("recvmsg on the packet socket: {e}"),
            }
        }
    }

    /// Reads frames until one satisfies `wanted`, failing the test after `limit`; the
    /// frames passed over are returned too, so that a test can check what else came.
    pub fn recv_matching(
        &self,
        what: &str,
        limit: Duration,
        mut wanted: impl FnMut(&Received) -> bool,
    ) -> (Received, Vec<Received>) {
        let deadline = Instant::now() + limit;
        let mut passed = Vec::new();
        loop {
            let received = self.recv_until(deadline).unwrap_or_else(|| {
                panic!(
                    "timed out after {limit:?} waiting for {what}; received instead: {}",
                    describe(&passed)
                )
            });
            if wanted(&received) {
                return (received, passed);
            }
            passed.push(received);
        }
    }

    /// One `recvmsg`: `Ok(None)` for a frame the namespace itself sent.
    fn recv_once(&self) -> std::io::Result<Option<Received>> {
        let mut buffer = vec![0u8; 65_536];
        let mut iov = libc::iovec {
            iov_base: buffer.as_mut_ptr().cast(),
            iov_len: buffer.len(),
        };
        let mut from = libc::sockaddr_ll {
            sll_family: 0,
            sll_protocol: 0,
            sll_ifindex: 0,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        // Room for one cmsghdr and a tpacket_auxdata, with alignment to spare; u64s keep
        // it aligned for the header.
        let mut control = [0u64; 16];
        let mut message = libc::msghdr {
            msg_name: (&raw mut from).cast(),
            msg_namelen: size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            msg_iov: &raw mut iov,
            msg_iovlen: 1,
            msg_control: control.as_mut_ptr().cast(),
            msg_controllen: size_of_val(&control),
            msg_flags: 0,
        };
        // MSG_TRUNC: the kernel returns the frame's full length even if it did not fit.
        let (fd, flags) = (self.fd.as_raw_fd(), libc::MSG_TRUNC);
        // SAFETY: every pointer in `message` points to a live buffer of the length given
        // with it (`buffer` through `iov`, `from`, `control`), all outliving the call, and
        // `fd` is owned by `self`.
        let length = unsafe { libc::recvmsg(fd, &raw mut message, flags) };
        if length < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let length = usize::try_from(length).expect("non-negative");
        assert!(
            length <= buffer.len(),
            "a {length}-byte frame did not fit the buffer"
        );
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            return Ok(None);
        }
        buffer.truncate(length);
        let control_len = message.msg_controllen.min(size_of_val(&control));
        let control_bytes: Vec<u8> = control.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let (tci, tpid) = vlan_from_control(&control_bytes[..control_len]);
        let wire_len = length + if tci.is_some() { 4 } else { 0 };
        Ok(Some(Received {
            frame: buffer,
            tci,
            tpid,
            wire_len,
        }))
    }
}

/// The tag the kernel reports in a `PACKET_AUXDATA` control message, parsed from the raw
/// control bytes (a `cmsghdr`, then its data at the header's aligned size).
fn vlan_from_control(mut control: &[u8]) -> (Option<u16>, Option<u16>) {
    let header = size_of::<libc::cmsghdr>();
    let align = size_of::<usize>();
    let data_offset = header.next_multiple_of(align);
    let u16_at = |bytes: &[u8], at: usize| u16::from_ne_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |bytes: &[u8], at: usize| {
        u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    };
    while control.len() >= header {
        let len_field = offset_of!(libc::cmsghdr, cmsg_len);
        let mut len_bytes = [0u8; size_of::<usize>()];
        len_bytes.copy_from_slice(&control[len_field..len_field + size_of::<usize>()]);
        let cmsg_len = usize::from_ne_bytes(len_bytes);
        let level = u32_at(control, offset_of!(libc::cmsghdr, cmsg_level)) as libc::c_int;
        let kind = u32_at(control, offset_of!(libc::cmsghdr, cmsg_type)) as libc::c_int;
        assert!(
            cmsg_len >= header && cmsg_len <= control.len(),
            "a malformed control message ({cmsg_len} bytes of {})",
            control.len()
        );
        if level == libc::SOL_PACKET && kind == libc::PACKET_AUXDATA {
            let data = &control[data_offset..cmsg_len];
            assert!(
                data.len() >= size_of::<libc::tpacket_auxdata>(),
                "a short tpacket_auxdata"
            );
            let status = u32_at(data, offset_of!(libc::tpacket_auxdata, tp_status));
            let tci = u16_at(data, offset_of!(libc::tpacket_auxdata, tp_vlan_tci));
            let tpid = u16_at(data, offset_of!(libc::tpacket_auxdata, tp_vlan_tpid));
            let tci = (status & libc::TP_STATUS_VLAN_VALID != 0).then_some(tci);
            let tpid =
                (tci.is_some() && status & libc::TP_STATUS_VLAN_TPID_VALID != 0).then_some(tpid);
            return (tci, tpid);
        }
        let next = cmsg_len.next_multiple_of(align);
        control = control.get(next..).unwrap_or(&[]);
    }
    panic!("recvmsg returned no PACKET_AUXDATA control message")
}

/// One line per frame, for failure messages.
pub fn describe(frames: &[Received]) -> String {
    if frames.is_empty() {
        return "nothing".to_string();
    }
    frames
        .iter()
        .map(|r| {
            let head: Vec<String> = r
                .frame
                .iter()
                .take(42)
                .map(|b| format!("{b:02x}"))
                .collect();
            format!(
                "\n  vid {:?}, {} bytes: {}",
                r.vid(),
                r.frame.len(),
                head.join("")
            )
        })
        .collect()
}
