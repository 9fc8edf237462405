//! A mock vhost-user frontend: the part of QEMU that a vhost-user backend talks to, small
//! enough to read, and able to misbehave on purpose.
//!
//! It has three layers, each usable on its own so that a test can break exactly one rule:
//!
//! * [`GuestMemory`]: "guest RAM" in a memfd, mapped here with `vm-memory` and handed to
//!   the backend over the socket. Each region is announced with a made-up frontend virtual
//!   address that differs from its guest-physical address, as QEMU's would, so a backend
//!   that confuses the two reads the wrong bytes.
//! * [`Frontend`]: the unix-socket protocol. [`Frontend::send`] writes any header, payload
//!   and file descriptors (malformed ones too); [`Frontend::setup`] replays QEMU 10's
//!   start-up sequence.
//! * [`Virtqueue`]: a split virtqueue driver (virtio 1.x, 2.7 "Split Virtqueues") that lays
//!   out the descriptor table, available and used rings in guest memory, posts transmit
//!   frames and receive buffers, kicks and waits for the call eventfd. Raw descriptor and
//!   index writes are public, for building bad chains.
//!
//! And the harness around it: [`Backend`] runs `guestnet vhost-user` as a child that is
//! killed however the test ends, and [`vhost_status`] reads its counters back from
//! `guestnet status --json`.
//!
//! Protocol facts (vhost-user spec, "Message Specification"): every message is a header of
//! three native-endian `u32`s (request, flags, payload size) and the payload; flags hold the
//! version (1) in bits 0–1, "reply" in bit 2, and "need reply" in bit 3. File descriptors
//! travel as `SCM_RIGHTS` ancillary data with the message that needs them.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};

/// How long any single expected event may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Request codes (vhost-user spec, "Front-end message types").
pub mod request {
    /// `VHOST_USER_GET_FEATURES`: the virtio feature bits the backend offers.
    pub const GET_FEATURES: u32 = 1;
    /// `VHOST_USER_SET_FEATURES`: the bits the frontend acks.
    pub const SET_FEATURES: u32 = 2;
    /// `VHOST_USER_SET_OWNER`: this connection now owns the device.
    pub const SET_OWNER: u32 = 3;
    /// `VHOST_USER_SET_MEM_TABLE`: all memory regions at once, one fd each.
    pub const SET_MEM_TABLE: u32 = 5;
    /// `VHOST_USER_SET_VRING_NUM`: the size of a ring.
    pub const SET_VRING_NUM: u32 = 8;
    /// `VHOST_USER_SET_VRING_ADDR`: where a ring's three parts are (frontend addresses).
    pub const SET_VRING_ADDR: u32 = 9;
    /// `VHOST_USER_SET_VRING_BASE`: the next available index the backend will read.
    pub const SET_VRING_BASE: u32 = 10;
    /// `VHOST_USER_GET_VRING_BASE`: stops a ring and returns its next available index.
    pub const GET_VRING_BASE: u32 = 11;
    /// `VHOST_USER_SET_VRING_KICK`: the eventfd the frontend writes to kick a ring.
    pub const SET_VRING_KICK: u32 = 12;
    /// `VHOST_USER_SET_VRING_CALL`: the eventfd the backend writes to interrupt the guest.
    pub const SET_VRING_CALL: u32 = 13;
    /// `VHOST_USER_GET_PROTOCOL_FEATURES`.
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    /// `VHOST_USER_SET_PROTOCOL_FEATURES`.
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    /// `VHOST_USER_GET_QUEUE_NUM` (with the `MQ` protocol feature): how many virtqueues
    /// the backend serves (two per queue pair).
    pub const GET_QUEUE_NUM: u32 = 17;
    /// `VHOST_USER_SET_VRING_ENABLE`: start or stop one ring.
    pub const SET_VRING_ENABLE: u32 = 18;
    /// `VHOST_USER_GET_MAX_MEM_SLOTS`: how many regions `ADD_MEM_REG` may add.
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
    /// `VHOST_USER_ADD_MEM_REG`: one memory region, one fd.
    pub const ADD_MEM_REG: u32 = 37;
    /// `VHOST_USER_REM_MEM_REG`: one memory region less.
    pub const REM_MEM_REG: u32 = 38;
}

/// Header flag values.
pub mod flags {
    /// Protocol version 1, in the low two bits of every header.
    pub const VERSION: u32 = 1;
    /// Set on the backend's replies.
    pub const REPLY: u32 = 1 << 2;
    /// Asks for an ack (with `REPLY_ACK` negotiated).
    pub const NEED_REPLY: u32 = 1 << 3;
}

/// Virtio feature bits (virtio 1.x, 5.1.3 and 6).
pub mod feature {
    /// `VIRTIO_NET_F_MRG_RXBUF`: a received frame may span several buffers.
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// `VIRTIO_RING_F_INDIRECT_DESC`.
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// `VIRTIO_RING_F_EVENT_IDX`: `used_event` / `avail_event` suppress notifications.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// `VHOST_USER_F_PROTOCOL_FEATURES`.
    pub const PROTOCOL_FEATURES: u64 = 1 << 30;
    /// `VIRTIO_F_VERSION_1`.
    pub const VERSION_1: u64 = 1 << 32;
}

/// vhost-user protocol feature bits.
pub mod protocol_feature {
    /// `VHOST_USER_PROTOCOL_F_MQ`: `GET_QUEUE_NUM` is answered.
    pub const MQ: u64 = 1;
    /// `VHOST_USER_PROTOCOL_F_REPLY_ACK`: `NEED_REPLY` gets a `u64` ack (0 = success).
    pub const REPLY_ACK: u64 = 1 << 3;
    /// `VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS`: `ADD_MEM_REG` / `REM_MEM_REG`.
    pub const CONFIGURE_MEM_SLOTS: u64 = 1 << 15;
}

/// Split-ring descriptor flags (virtio 1.x, 2.7.5).
pub mod desc_flags {
    /// `VIRTQ_DESC_F_NEXT`: the chain continues at `next`.
    pub const NEXT: u16 = 1;
    /// `VIRTQ_DESC_F_WRITE`: the device writes this buffer (receive side).
    pub const WRITE: u16 = 2;
    /// `VIRTQ_DESC_F_INDIRECT`: the buffer is a table of descriptors.
    pub const INDIRECT: u16 = 4;
}

/// Length of the virtio-net header with `VERSION_1` or `MRG_RXBUF`.
pub const NET_HEADER_LEN: usize = 12;

/// The queue index of a pair's receive queue (backend → guest); transmit is the next one.
pub const RX_QUEUE: u32 = 0;
/// The queue index of the first pair's transmit queue (guest → backend).
pub const TX_QUEUE: u32 = 1;

/// What frontend virtual address sits this far above a region's guest-physical address:
/// far enough that no region's two addresses can be confused.
const USER_ADDRESS_OFFSET: u64 = 0x7f3a_0000_0000;

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// One guest memory region as the vhost-user memory table describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Guest-physical address, what descriptors point at.
    pub guest_address: u64,
    /// Length in bytes.
    pub size: u64,
    /// Frontend virtual address, what `SET_VRING_ADDR` points at.
    pub user_address: u64,
    /// Where the region starts in the shared file.
    pub mmap_offset: u64,
}

impl Region {
    /// The region's 32-byte wire form (guest address, size, user address, mmap offset).
    pub fn to_bytes(self) -> [u8; 32] {
        let mut bytes = [0u8; 32];
        for (i, v) in [
            self.guest_address,
            self.size,
            self.user_address,
            self.mmap_offset,
        ]
        .into_iter()
        .enumerate()
        {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
        }
        bytes
    }
}

/// Guest RAM: one memfd holding every region back to back, mapped here through
/// `vm-memory`'s checked accessors and shared with the backend by fd.
pub struct GuestMemory {
    memory: GuestMemoryMmap,
    file: Arc<File>,
    regions: Vec<Region>,
}

/// The guest's memory map as `(guest-physical address, size)`: a small region for the rings
/// at 0, and the buffers in a second region above 4 GiB, so a backend must translate
/// through both regions (the second one at a non-zero file offset).
pub const LAYOUT: [(u64, u64); 2] = [(0, 256 << 10), (0x1_0000_0000, 2 << 20)];

impl GuestMemory {
    /// Creates guest memory laid out as [`LAYOUT`].
    pub fn new() -> io::Result<GuestMemory> {
        let total: u64 = LAYOUT.iter().map(|&(_, size)| size).sum();
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd =
            rustix::fs::memfd_create("guest-ram", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, total)?;
        // Sealed as QEMU's memfd backend does by default: the backend can then trust the
        // size (a frontend could otherwise shrink the file under its mappings).
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let file = Arc::new(File::from(fd));
        let mut regions = Vec::with_capacity(LAYOUT.len());
        let mut offset = 0;
        for (guest_address, size) in LAYOUT {
            regions.push(Region {
                guest_address,
                size,
                user_address: guest_address + USER_ADDRESS_OFFSET,
                mmap_offset: offset,
            });
            offset += size;
        }
        let ranges: Vec<_> = regions
            .iter()
            .map(|r| {
                (
                    GuestAddress(r.guest_address),
                    r.size as usize,
                    Some(FileOffset::from_arc(Arc::clone(&file), r.mmap_offset)),
                )
            })
            .collect();
        let memory = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(io::Error::other)?;
        Ok(GuestMemory {
            memory,
            file,
            regions,
        })
    }

    /// The regions, as the memory table announces them.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The memfd behind every region.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The frontend virtual address of guest-physical `address`.
    pub fn user_address(&self, address: u64) -> u64 {
        address + USER_ADDRESS_OFFSET
    }

    /// Writes `bytes` at guest-physical `address`.
    pub fn write(&self, address: u64, bytes: &[u8]) {
        self.memory
            .write_slice(bytes, GuestAddress(address))
            .expect("the test writes inside guest memory");
    }

    /// Reads `len` bytes at guest-physical `address`.
    pub fn read(&self, address: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0; len];
        self.memory
            .read_slice(&mut bytes, GuestAddress(address))
            .expect("the test reads inside guest memory");
        bytes
    }

    /// Stores a little-endian ring index with `order`, as the driver publishes indices.
    fn store_u16(&self, address: u64, value: u16, order: Ordering) {
        self.memory
            .store(value.to_le(), GuestAddress(address), order)
            .expect("ring index inside guest memory");
    }

    /// Loads a little-endian ring index with `order`.
    fn load_u16(&self, address: u64, order: Ordering) -> u16 {
        let raw: u16 = self
            .memory
            .load(GuestAddress(address), order)
            .expect("ring index inside guest memory");
        u16::from_le(raw)
    }
}

/// A reply from the backend.
#[derive(Debug)]
pub struct Reply {
    /// The request it answers.
    pub request: u32,
    /// Its header flags.
    pub flags: u32,
    /// Its payload.
    pub payload: Vec<u8>,
}

impl Reply {
    /// The payload as one `u64` (features, acks), if it is one.
    pub fn u64(&self) -> io::Result<u64> {
        let bytes: [u8; 8] = self
            .payload
            .as_slice()
            .try_into()
            .map_err(|_| invalid(format!("{}-byte payload, not a u64", self.payload.len())))?;
        Ok(u64::from_ne_bytes(bytes))
    }
}

/// A `u64` payload.
pub fn u64_payload(value: u64) -> Vec<u8> {
    value.to_ne_bytes().to_vec()
}

/// A vring state payload: ring index and a number (size, base, enable).
pub fn vring_state(index: u32, num: u32) -> Vec<u8> {
    let mut p = index.to_ne_bytes().to_vec();
    p.extend_from_slice(&num.to_ne_bytes());
    p
}

/// A vring address payload: index, flags, then the descriptor table, used ring, available
/// ring and log addresses, all frontend virtual addresses.
pub fn vring_address(index: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
    let mut p = index.to_ne_bytes().to_vec();
    p.extend_from_slice(&0u32.to_ne_bytes());
    for v in [desc, used, avail, 0] {
        p.extend_from_slice(&v.to_ne_bytes());
    }
    p
}

/// A memory table payload: region count, padding, then the regions.
pub fn memory_table(regions: &[Region]) -> Vec<u8> {
    let mut p = (regions.len() as u32).to_ne_bytes().to_vec();
    p.extend_from_slice(&0u32.to_ne_bytes());
    for region in regions {
        p.extend_from_slice(&region.to_bytes());
    }
    p
}

/// An `ADD_MEM_REG` payload: 8 bytes of padding, then one region.
pub fn single_region(region: Region) -> Vec<u8> {
    let mut p = vec![0u8; 8];
    p.extend_from_slice(&region.to_bytes());
    p
}

/// How [`Frontend::setup`] hands over guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryMessages {
    /// One `SET_MEM_TABLE` with every region.
    SetMemTable,
    /// `GET_MAX_MEM_SLOTS`, then one `ADD_MEM_REG` per region (what QEMU does once
    /// `CONFIGURE_MEM_SLOTS` is negotiated).
    AddMemReg,
}

/// What [`Frontend::setup`] negotiates.
#[derive(Debug, Clone, Copy)]
pub struct SetupOptions {
    /// Virtio features wanted (acked if offered).
    pub features: u64,
    /// How memory is announced.
    pub memory: MemoryMessages,
    /// Ring size of every queue.
    pub queue_size: u16,
}

impl Default for SetupOptions {
    fn default() -> Self {
        SetupOptions {
            features: feature::VERSION_1
                | feature::MRG_RXBUF
                | feature::EVENT_IDX
                | feature::INDIRECT_DESC
                | feature::PROTOCOL_FEATURES,
            memory: MemoryMessages::SetMemTable,
            queue_size: 256,
        }
    }
}

/// The frontend's end of one vhost-user connection.
pub struct Frontend {
    stream: UnixStream,
    /// `PROTOCOL_FEATURES` was negotiated (`REPLY_ACK` always among them): acks are asked
    /// for, and rings start disabled until `SET_VRING_ENABLE`.
    protocol_negotiated: bool,
    /// The features acked by the last [`setup`](Frontend::setup) (or [`negotiate`](Frontend::negotiate)).
    pub acked_features: u64,
}

impl Frontend {
    /// Connects to a backend's socket.
    pub fn connect(path: &Path) -> io::Result<Frontend> {
        Frontend::over(UnixStream::connect(path)?)
    }

    /// Waits (bounded by [`DEADLINE`]) for a backend in client mode to connect to
    /// `listener`, as QEMU with `server=on` does.
    pub fn accept(listener: &UnixListener) -> io::Result<Frontend> {
        let timeout = rustix::time::Timespec::try_from(DEADLINE).map_err(io::Error::other)?;
        let mut fds = [PollFd::new(listener, PollFlags::IN)];
        if rustix::event::poll(&mut fds, Some(&timeout))? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no backend connected",
            ));
        }
        Frontend::over(listener.accept()?.0)
    }

    fn over(stream: UnixStream) -> io::Result<Frontend> {
        stream.set_read_timeout(Some(DEADLINE))?;
        stream.set_write_timeout(Some(DEADLINE))?;
        Ok(Frontend {
            stream,
            protocol_negotiated: false,
            acked_features: 0,
        })
    }

    /// Sends one message with exactly these header fields, payload and fds. The size field
    /// is the payload's length; [`send_bytes`](Frontend::send_bytes) can lie about it.
    pub fn send(
        &mut self,
        request: u32,
        header_flags: u32,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(12 + payload.len());
        bytes.extend_from_slice(&request.to_ne_bytes());
        bytes.extend_from_slice(&header_flags.to_ne_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
        bytes.extend_from_slice(payload);
        self.send_bytes(&bytes, fds)
    }

    /// Sends raw bytes, with `fds` attached to the first of them.
    pub fn send_bytes(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let mut space =
            vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(invalid("no room for the fds"));
        }
        let sent = rustix::net::sendmsg(
            &self.stream,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        )?;
        // The fds went with the first byte; the rest of a short write goes plainly.
        self.stream.write_all(&bytes[sent..])
    }

    /// Reads one reply (bounded by [`DEADLINE`]).
    pub fn recv_reply(&mut self) -> io::Result<Reply> {
        let mut header = [0u8; 12];
        self.stream.read_exact(&mut header)?;
        let word =
            |i: usize| u32::from_ne_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (request, flags, size) = (word(0), word(4), word(8));
        if size > 4096 {
            return Err(invalid(format!("reply to {request} claims {size} bytes")));
        }
        let mut payload = vec![0; size as usize];
        self.stream.read_exact(&mut payload)?;
        Ok(Reply {
            request,
            flags,
            payload,
        })
    }

    /// Reads a reply to `request` and checks its header.
    fn expect_reply(&mut self, request: u32) -> io::Result<Reply> {
        let reply = self
            .recv_reply()
            .map_err(|e| io::Error::new(e.kind(), format!("reply to request {request}: {e}")))?;
        if reply.request != request || reply.flags & 0x7 != (flags::VERSION | flags::REPLY) {
            return Err(invalid(format!(
                "reply {} flags {:#x} to request {request}",
                reply.request, reply.flags
            )));
        }
        Ok(reply)
    }

    /// Sends a request that has a reply of its own (the `GET_*` family) and returns the
    /// reply's `u64`.
    pub fn get_u64(&mut self, request: u32) -> io::Result<u64> {
        self.send(request, flags::VERSION, &[], &[])?;
        self.expect_reply(request)?.u64()
    }

    /// Sends `request` with `NEED_REPLY` and returns the ack value (0 = success).
    pub fn request_ack(
        &mut self,
        request: u32,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<u64> {
        self.send(request, flags::VERSION | flags::NEED_REPLY, payload, fds)?;
        self.expect_reply(request)?.u64()
    }

    /// Sends a request that has no reply of its own; with `REPLY_ACK` negotiated it asks for
    /// an ack and fails on a non-zero one, as QEMU does.
    pub fn request(
        &mut self,
        request: u32,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<()> {
        if !self.protocol_negotiated {
            return self.send(request, flags::VERSION, payload, fds);
        }
        match self.request_ack(request, payload, fds)? {
            0 => Ok(()),
            nack => Err(invalid(format!("request {request} refused with {nack}"))),
        }
    }

    /// Whether the backend closes the connection within [`DEADLINE`] (replies before the
    /// close are skipped).
    pub fn closed_by_backend(&mut self) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    /// The first half of QEMU's sequence: features and protocol features. Returns the
    /// offered features and the backend's virtqueue count; `REPLY_ACK` is used from here
    /// on.
    pub fn negotiate(&mut self, memory: MemoryMessages) -> io::Result<(u64, u64)> {
        let offered = self.get_u64(request::GET_FEATURES)?;
        if offered & feature::PROTOCOL_FEATURES == 0 {
            return Err(invalid("the backend does not offer PROTOCOL_FEATURES"));
        }
        let offered_protocol = self.get_u64(request::GET_PROTOCOL_FEATURES)?;
        let mut wanted = protocol_feature::REPLY_ACK | protocol_feature::MQ;
        if memory == MemoryMessages::AddMemReg {
            wanted |= protocol_feature::CONFIGURE_MEM_SLOTS;
        }
        let acked_protocol = offered_protocol & wanted;
        if acked_protocol != wanted {
            return Err(invalid(format!(
                "protocol features {offered_protocol:#x} lack {wanted:#x}"
            )));
        }
        self.send(
            request::SET_PROTOCOL_FEATURES,
            flags::VERSION,
            &u64_payload(acked_protocol),
            &[],
        )?;
        self.protocol_negotiated = true;
        let queues = self.get_u64(request::GET_QUEUE_NUM)?;
        Ok((offered, queues))
    }

    /// Hands guest memory over the way `options` says.
    pub fn send_memory(&mut self, memory: &GuestMemory, how: MemoryMessages) -> io::Result<()> {
        match how {
            MemoryMessages::SetMemTable => {
                let fds: Vec<_> = memory.regions().iter().map(|_| memory.fd()).collect();
                self.request(
                    request::SET_MEM_TABLE,
                    &memory_table(memory.regions()),
                    &fds,
                )
            }
            MemoryMessages::AddMemReg => {
                let slots = self.get_u64(request::GET_MAX_MEM_SLOTS)?;
                if slots < memory.regions().len() as u64 {
                    return Err(invalid(format!("only {slots} memory slots")));
                }
                for &region in memory.regions() {
                    self.request(request::ADD_MEM_REG, &single_region(region), &[memory.fd()])?;
                }
                Ok(())
            }
        }
    }

    /// Stops queue `index` as QEMU does when the guest resets it (`GET_VRING_BASE`);
    /// returns the backend's next available index.
    pub fn stop_queue(&mut self, index: u32) -> io::Result<u32> {
        self.send(
            request::GET_VRING_BASE,
            flags::VERSION,
            &vring_state(index, 0),
            &[],
        )?;
        let reply = self.expect_reply(request::GET_VRING_BASE)?;
        match reply.payload[..] {
            [i0, i1, i2, i3, n0, n1, n2, n3] if u32::from_ne_bytes([i0, i1, i2, i3]) == index => {
                Ok(u32::from_ne_bytes([n0, n1, n2, n3]))
            }
            _ => Err(invalid(format!("vring state reply {:?}", reply.payload))),
        }
    }

    /// Tells the backend where queue `queue`'s rings and eventfds are, and enables it.
    pub fn start_queue(&mut self, memory: &GuestMemory, queue: &Virtqueue) -> io::Result<()> {
        let i = queue.index;
        self.request(
            request::SET_VRING_NUM,
            &vring_state(i, u32::from(queue.size)),
            &[],
        )?;
        self.request(request::SET_VRING_BASE, &vring_state(i, 0), &[])?;
        let address = vring_address(
            i,
            memory.user_address(queue.desc),
            memory.user_address(queue.used),
            memory.user_address(queue.avail),
        );
        self.request(request::SET_VRING_ADDR, &address, &[])?;
        self.request(
            request::SET_VRING_KICK,
            &u64_payload(u64::from(i)),
            &[queue.kick.as_fd()],
        )?;
        self.request(
            request::SET_VRING_CALL,
            &u64_payload(u64::from(i)),
            &[queue.call.as_fd()],
        )?;
        if self.protocol_negotiated {
            self.request(request::SET_VRING_ENABLE, &vring_state(i, 1), &[])?;
        }
        Ok(())
    }

    /// QEMU 10's whole start-up sequence for one queue pair, in its order: features,
    /// protocol features, queue count, owner, call fds, early ring enable (before
    /// `SET_FEATURES`), features, memory, then each ring. Without `PROTOCOL_FEATURES` in
    /// `options.features`, the legacy sequence (no protocol features, no ring enabling).
    /// Returns the receive and transmit queues.
    pub fn setup(
        &mut self,
        memory: &GuestMemory,
        options: SetupOptions,
    ) -> io::Result<(Virtqueue, Virtqueue)> {
        // Without PROTOCOL_FEATURES the frontend is a legacy one: no protocol features, no
        // ring enabling (rings run once kicked), no acks.
        let offered = if options.features & feature::PROTOCOL_FEATURES != 0 {
            let (offered, queues) = self.negotiate(options.memory)?;
            if queues < 2 {
                return Err(invalid(format!("{queues} virtqueues: not even one pair")));
            }
            offered
        } else {
            self.get_u64(request::GET_FEATURES)?
        };
        let mut rx = Virtqueue::new(RX_QUEUE, options.queue_size)?;
        let mut tx = Virtqueue::new(TX_QUEUE, options.queue_size)?;
        self.request(request::SET_OWNER, &[], &[])?;
        for queue in [&rx, &tx] {
            let index = u64::from(queue.index);
            self.request(
                request::SET_VRING_CALL,
                &u64_payload(index),
                &[queue.call.as_fd()],
            )?;
        }
        if self.protocol_negotiated {
            for queue in [&rx, &tx] {
                self.request(request::SET_VRING_ENABLE, &vring_state(queue.index, 1), &[])?;
            }
        }
        let acked = offered & options.features;
        self.request(request::SET_FEATURES, &u64_payload(acked), &[])?;
        self.acked_features = acked;
        self.send_memory(memory, options.memory)?;
        for queue in [&mut rx, &mut tx] {
            queue.event_idx = acked & feature::EVENT_IDX != 0;
            queue.lay_out(memory);
            self.start_queue(memory, queue)?;
        }
        Ok((rx, tx))
    }
}

/// One split-ring descriptor (16 bytes: address, length, flags, next).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Its length.
    pub len: u32,
    /// [`desc_flags`].
    pub flags: u16,
    /// Next descriptor of the chain, with [`desc_flags::NEXT`].
    pub next: u16,
}

impl Descriptor {
    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// Where each queue's rings and buffers live in the [`LAYOUT`]: queue `i`'s rings
/// at `i * RING_STRIDE` in the first region, its buffers at `BUFFER_BASE + i * BUFFER_STRIDE`.
const RING_STRIDE: u64 = 0x8000;
const BUFFER_BASE: u64 = LAYOUT[1].0;
const BUFFER_STRIDE: u64 = 1 << 20;

/// The driver side of one split virtqueue (virtio 1.x, 2.7).
///
/// Ring layout: the descriptor table (16 bytes × size, 16-aligned); the available ring
/// (`flags: u16, idx: u16, ring: [u16; size], used_event: u16`, 2-aligned); the used ring
/// (`flags: u16, idx: u16, ring: [{id: u32, len: u32}; size], avail_event: u16`,
/// 4-aligned). All little-endian.
pub struct Virtqueue {
    /// The vhost-user queue index.
    pub index: u32,
    /// Ring size.
    pub size: u16,
    /// Guest-physical address of the descriptor table.
    pub desc: u64,
    /// Guest-physical address of the available ring.
    pub avail: u64,
    /// Guest-physical address of the used ring.
    pub used: u64,
    kick: OwnedFd,
    call: OwnedFd,
    event_idx: bool,
    next_desc: u16,
    next_avail: u16,
    last_used: u16,
    buffer_next: u64,
    /// Receive buffers posted and not yet used: head → (address, length).
    posted: std::collections::HashMap<u16, (u64, u32)>,
    /// Used entries read from the ring and not yet handed out by `receive`.
    received: std::collections::VecDeque<Used>,
    /// How many times the call eventfd was found signalled.
    pub calls: u64,
}

/// One used-ring element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Head of the chain the backend returned.
    pub id: u32,
    /// Bytes it wrote into the chain.
    pub len: u32,
}

impl Virtqueue {
    /// A queue with fresh kick and call eventfds; rings are laid out by `lay_out`.
    fn new(index: u32, size: u16) -> io::Result<Virtqueue> {
        if !size.is_power_of_two() || size > 1024 {
            // Larger rings would not fit in their RING_STRIDE slot.
            return Err(invalid(format!("ring size {size}")));
        }
        let eventfd = || rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK);
        let base = u64::from(index) * RING_STRIDE;
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4);
        Ok(Virtqueue {
            index,
            size,
            desc,
            avail,
            used,
            kick: eventfd()?,
            call: eventfd()?,
            event_idx: false,
            next_desc: 0,
            next_avail: 0,
            last_used: 0,
            buffer_next: 0,
            posted: std::collections::HashMap::new(),
            received: std::collections::VecDeque::new(),
            calls: 0,
        })
    }

    /// Starts the queue over, as a guest driver does after a device reset: empty rings and
    /// every index back at 0. The backend must be told again ([`Frontend::start_queue`]).
    pub fn reset(&mut self, memory: &GuestMemory) {
        self.lay_out(memory);
        self.next_desc = 0;
        self.next_avail = 0;
        self.last_used = 0;
        self.posted.clear();
        self.received.clear();
    }

    /// Zeroes the rings in guest memory.
    fn lay_out(&self, memory: &GuestMemory) {
        let end = self.used + 6 + 8 * u64::from(self.size);
        memory.write(self.desc, &vec![0; (end - self.desc) as usize]);
    }

    /// Writes descriptor `i` of the table (`i` may be out of range on purpose).
    pub fn write_descriptor(&self, memory: &GuestMemory, i: u16, d: Descriptor) {
        memory.write(self.desc + 16 * u64::from(i), &d.to_bytes());
    }

    /// Takes the next descriptor slot, round robin (tests post far fewer chains than the
    /// ring holds before the backend returns them).
    pub fn take_descriptor(&mut self) -> u16 {
        let i = self.next_desc;
        self.next_desc = (self.next_desc + 1) % self.size;
        i
    }

    /// Takes `len` bytes (16-aligned) of this queue's buffer area, wrapping around.
    pub fn take_buffer(&mut self, len: usize) -> u64 {
        let len = (len as u64).next_multiple_of(16);
        if self.buffer_next + len > BUFFER_STRIDE {
            self.buffer_next = 0;
        }
        let address = BUFFER_BASE + u64::from(self.index) * BUFFER_STRIDE + self.buffer_next;
        self.buffer_next += len;
        address
    }

    /// Puts `head` in the next available slot and publishes the new index.
    pub fn publish(&mut self, memory: &GuestMemory, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.next_avail % self.size);
        memory.write(slot, &head.to_le_bytes());
        self.next_avail = self.next_avail.wrapping_add(1);
        self.set_avail_index(memory, self.next_avail);
    }

    /// Stores `idx` as the available index without touching the ring: the backend reads
    /// entries up to it. Release, so the entries written before are visible first.
    pub fn set_avail_index(&self, memory: &GuestMemory, idx: u16) {
        memory.store_u16(self.avail + 2, idx, Ordering::Release);
    }

    /// The next available index this driver will publish.
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// Writes `packet` (header and frame) into `pieces` buffers and chains them, through an
    /// indirect table if asked; returns the head without publishing it.
    pub fn chain_tx(
        &mut self,
        memory: &GuestMemory,
        packet: &[u8],
        pieces: usize,
        indirect: bool,
    ) -> u16 {
        let piece_len = packet.len().div_ceil(pieces.max(1)).max(1);
        let lengths: Vec<usize> = packet.chunks(piece_len).map(<[u8]>::len).collect();
        self.chain_tx_cut(memory, packet, &lengths, indirect)
    }

    /// [`chain_tx`](Virtqueue::chain_tx) with the length of each piece given (they must
    /// add up to the packet's), to cut where a test wants, e.g. inside the header.
    pub fn chain_tx_cut(
        &mut self,
        memory: &GuestMemory,
        packet: &[u8],
        lengths: &[usize],
        indirect: bool,
    ) -> u16 {
        assert_eq!(
            lengths.iter().sum::<usize>(),
            packet.len(),
            "pieces cover the packet"
        );
        let mut chunks = Vec::with_capacity(lengths.len());
        let mut rest = packet;
        for &len in lengths {
            let (chunk, tail) = rest.split_at(len);
            chunks.push(chunk);
            rest = tail;
        }
        let mut descriptors = Vec::with_capacity(chunks.len());
        for chunk in &chunks {
            let addr = self.take_buffer(chunk.len());
            memory.write(addr, chunk);
            descriptors.push(Descriptor {
                addr,
                len: chunk.len() as u32,
                flags: 0,
                next: 0,
            });
        }
        if indirect {
            let table = self.take_buffer(16 * descriptors.len());
            for (i, d) in descriptors.iter().enumerate() {
                let last = i + 1 == descriptors.len();
                let d = Descriptor {
                    flags: if last { 0 } else { desc_flags::NEXT },
                    next: if last { 0 } else { i as u16 + 1 },
                    ..*d
                };
                memory.write(table + 16 * i as u64, &d.to_bytes());
            }
            let head = self.take_descriptor();
            let d = Descriptor {
                addr: table,
                len: 16 * descriptors.len() as u32,
                flags: desc_flags::INDIRECT,
                next: 0,
            };
            self.write_descriptor(memory, head, d);
            return head;
        }
        let slots: Vec<u16> = descriptors.iter().map(|_| self.take_descriptor()).collect();
        for (i, d) in descriptors.iter().enumerate() {
            let next = slots.get(i + 1).copied();
            let d = Descriptor {
                flags: if next.is_some() { desc_flags::NEXT } else { 0 },
                next: next.unwrap_or(0),
                ..*d
            };
            self.write_descriptor(memory, slots[i], d);
        }
        slots[0]
    }

    /// Posts a transmit packet (see [`chain_tx`](Virtqueue::chain_tx)) and kicks.
    pub fn send(
        &mut self,
        memory: &GuestMemory,
        packet: &[u8],
        pieces: usize,
        indirect: bool,
    ) -> u16 {
        let head = self.chain_tx(memory, packet, pieces, indirect);
        self.publish(memory, head);
        self.kick();
        head
    }

    /// Posts `count` device-writable receive buffers of `len` bytes and kicks.
    pub fn post_rx(&mut self, memory: &GuestMemory, count: usize, len: u32) {
        for _ in 0..count {
            let addr = self.take_buffer(len as usize);
            let head = self.take_descriptor();
            let d = Descriptor {
                addr,
                len,
                flags: desc_flags::WRITE,
                next: 0,
            };
            self.write_descriptor(memory, head, d);
            self.posted.insert(head, (addr, len));
            self.publish(memory, head);
        }
        self.kick();
    }

    /// Writes the kick eventfd.
    pub fn kick(&self) {
        rustix::io::write(&self.kick, &1u64.to_ne_bytes()).expect("write the kick eventfd");
    }

    /// Waits up to `timeout` for the call eventfd, and resets it.
    pub fn wait_call(&mut self, timeout: Duration) -> bool {
        let timeout = rustix::time::Timespec::try_from(timeout).expect("small timeout");
        let mut fds = [PollFd::new(&self.call, PollFlags::IN)];
        let ready = rustix::event::poll(&mut fds, Some(&timeout)).unwrap_or(0) > 0;
        if ready {
            let mut counter = [0u8; 8];
            if rustix::io::read(&self.call, &mut counter).is_ok() {
                self.calls += 1;
            }
        }
        ready
    }

    /// The used entries the backend added since the last call. With `EVENT_IDX`, also asks
    /// for a call on the next one (`used_event`).
    pub fn take_used(&mut self, memory: &GuestMemory) -> Vec<Used> {
        // Acquire: the entries (and the buffers they describe) are written before the index.
        let idx = memory.load_u16(self.used + 2, Ordering::Acquire);
        let mut entries = Vec::new();
        while self.last_used != idx {
            let at = self.used + 4 + 8 * u64::from(self.last_used % self.size);
            let b = memory.read(at, 8);
            entries.push(Used {
                id: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                len: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            });
            self.last_used = self.last_used.wrapping_add(1);
        }
        if self.event_idx {
            let used_event = self.avail + 4 + 2 * u64::from(self.size);
            memory.store_u16(used_event, self.last_used, Ordering::SeqCst);
        }
        entries
    }

    /// Waits (bounded by [`DEADLINE`]) until the backend returns chain `head`; returns its
    /// used length. Entries for other chains are passed over.
    pub fn wait_used(&mut self, memory: &GuestMemory, head: u16) -> Option<u32> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(u) = self
                .take_used(memory)
                .into_iter()
                .find(|u| u.id == u32::from(head))
            {
                return Some(u.len);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            // The used index is checked again after every call or 50 ms, so a missed call
            // shows up as a slow test rather than a hang.
            self.wait_call(left.min(Duration::from_millis(50)));
        }
    }

    /// Waits (bounded by [`DEADLINE`]) for the next used receive buffer: its used length
    /// and the bytes the backend wrote into it. A frame merged over several buffers takes
    /// one call per buffer.
    pub fn receive(&mut self, memory: &GuestMemory) -> Option<(u32, Vec<u8>)> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let used = self.take_used(memory);
            self.received.extend(used);
            while let Some(u) = self.received.pop_front() {
                // A chain the test posted by hand (a bad one the backend gave back) is
                // not a received frame.
                let Some((addr, len)) = self.posted.remove(&(u.id as u16)) else {
                    continue;
                };
                let written = u.len.min(len) as usize;
                return Some((u.len, memory.read(addr, written)));
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.wait_call(left.min(Duration::from_millis(50)));
        }
    }
}

/// A `guestnet vhost-user` process, killed and reaped however the test ends.
pub struct Backend {
    child: Child,
    /// Its sockets, in `--socket` order.
    pub sockets: Vec<PathBuf>,
}

impl Backend {
    /// Starts `guestnet --dir DIR vhost-user NETWORK --socket DIR/S … EXTRA…` and waits
    /// for one `listening on PATH` line per socket (`connecting to PATH` with `--client`).
    pub fn start(dir: &Path, network: &str, sockets: &[&str], extra: &[&str]) -> Backend {
        let sockets: Vec<PathBuf> = sockets.iter().map(|s| dir.join(s)).collect();
        let mut command = Command::new(env!("CARGO_BIN_EXE_guestnet"));
        command.arg("--dir").arg(dir).args(["vhost-user", network]);
        for socket in &sockets {
            command.arg("--socket").arg(socket);
        }
        command.args(extra);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start guestnet vhost-user");
        let stdout = child.stdout.take().expect("piped stdout");
        let backend = Backend { child, sockets };
        let (lines, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in io::BufReader::new(stdout).lines() {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        for socket in &backend.sockets {
            let line = received
                .recv_timeout(DEADLINE)
                .expect("the backend announces each socket in time")
                .expect("readable stdout");
            let verb = if extra.contains(&"--client") {
                "connecting to"
            } else {
                "listening on"
            };
            assert_eq!(line, format!("{verb} {}", socket.display()));
        }
        backend
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Sends SIGTERM and waits (bounded by [`DEADLINE`]) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the backend did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `vhost_user` entry for `socket` in `guestnet status NETWORK --json`, if there is one.
pub fn vhost_status(dir: &Path, network: &str, socket: &Path) -> Option<serde_json::Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_guestnet"))
        .arg("--dir")
        .arg(dir)
        .args(["status", network, "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("run guestnet status");
    assert!(
        output.status.success(),
        "guestnet status: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("status json");
    report
        .get("vhost_user")?
        .as_array()?
        .iter()
        .find(|entry| entry["socket"].as_str() == socket.to_str())
        .cloned()
}

/// A counter of a `vhost_user` status entry.
pub fn counter(entry: &serde_json::Value, name: &str) -> u64 {
    entry["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {entry}"))
}

/// A `vhost_user` status entry's count of refusals of one kind (`counters.refused`).
pub fn refusals(entry: &serde_json::Value, kind: &str) -> u64 {
    entry["counters"]["refused"][kind]
        .as_u64()
        .unwrap_or_else(|| panic!("no refusal counter {kind} in {entry}"))
}

/// Polls the status of `socket` until `condition` holds (failing after [`DEADLINE`]) and
/// returns the entry that satisfied it. The backend rewrites its status file every second
/// and on state changes, so a change takes up to about a second to show.
pub fn wait_for_status(
    dir: &Path,
    network: &str,
    socket: &Path,
    what: &str,
    mut condition: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + DEADLINE;
    let mut last = None;
    loop {
        if let Some(entry) = vhost_status(dir, network, socket) {
            if condition(&entry) {
                return entry;
            }
            last = Some(entry);
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}; last status: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
