//! A mock vhost-user frontend: the part of QEMU that a vhost-user backend talks to, small
//! enough to read, and able to misbehave on purpose.
//!
//! The guest itself is the library's mock ([`guestnet::ports::vhost_user::mock`]): its
//! memory, in a memfd handed to the backend, and the driver's side of its split
//! virtqueues, whose raw descriptor and index writes are public for building bad chains.
//! Around that guest, in layers that can each be used alone so that a test can break
//! exactly one rule:
//!
//! * [`Frontend`]: the unix-socket protocol. [`Frontend::send`] writes any header, payload
//!   and file descriptors (malformed ones too); [`Frontend::setup`] replays QEMU 10's
//!   start-up sequence. Each memory region is announced with a made-up frontend virtual
//!   address that differs from its guest-physical address, as QEMU's would, so a backend
//!   that confuses the two reads the wrong bytes.
//! * [`Virtqueue`]: one of the guest's queues with its vhost-user notifications: it kicks
//!   through the kick eventfd and waits (bounded) for the call eventfd.
//!
//! And the process harness: [`Backend`] runs `guestnet vhost-user` as a child that is
//! killed however the test ends, and [`vhost_status`] reads its counters back from
//! `guestnet status --json`.
//!
//! Protocol facts (vhost-user spec, "Message Specification"): every message is a header of
//! three native-endian `u32`s (request, flags, payload size) and the payload; flags hold the
//! version (1) in bits 0–1, "reply" in bit 2, and "need reply" in bit 3. File descriptors
//! travel as `SCM_RIGHTS` ancillary data with the message that needs them.

use std::io::{self, IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guestnet::ports::vhost_user::mock::{GuestMemory, GuestQueue, Layout, Region};
use rustix::event::{EventfdFlags, PollFd, PollFlags};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

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

/// The guest's memory map as `(guest-physical address, size)`: a small region for the rings
/// at 0, and the buffers in a second region above 4 GiB, so a backend must translate
/// through both regions (the second one at a non-zero file offset).
pub const LAYOUT: [(u64, u64); 2] = [(0, 256 << 10), (0x1_0000_0000, 2 << 20)];

/// Guest memory laid out as [`LAYOUT`], in a memfd to hand to the backend.
pub fn guest_memory() -> io::Result<GuestMemory> {
    GuestMemory::shared(&LAYOUT)
}

/// The memfd behind guest memory made by [`guest_memory`].
pub fn memory_fd(memory: &GuestMemory) -> BorrowedFd<'_> {
    memory
        .fd()
        .expect("guest memory made by guest_memory() is shared")
}

/// The frontend virtual address of guest-physical `address`.
pub fn user_address(address: u64) -> u64 {
    address + USER_ADDRESS_OFFSET
}

/// A region's 32-byte wire form in the memory table (guest address, size, frontend
/// virtual address, mmap offset).
pub fn region_bytes(region: Region) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    for (i, v) in [
        region.guest_address,
        region.size,
        user_address(region.guest_address),
        region.file_offset,
    ]
    .into_iter()
    .enumerate()
    {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
    }
    bytes
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
        p.extend_from_slice(&region_bytes(*region));
    }
    p
}

/// An `ADD_MEM_REG` payload: 8 bytes of padding, then one region.
pub fn single_region(region: Region) -> Vec<u8> {
    let mut p = vec![0u8; 8];
    p.extend_from_slice(&region_bytes(region));
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
                let fds: Vec<_> = memory.regions().iter().map(|_| memory_fd(memory)).collect();
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
                    self.request(
                        request::ADD_MEM_REG,
                        &single_region(region),
                        &[memory_fd(memory)],
                    )?;
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
    pub fn start_queue(&mut self, queue: &Virtqueue) -> io::Result<()> {
        let i = queue.index;
        let rings = queue.ring.layout();
        self.request(
            request::SET_VRING_NUM,
            &vring_state(i, u32::from(rings.size)),
            &[],
        )?;
        self.request(request::SET_VRING_BASE, &vring_state(i, 0), &[])?;
        let address = vring_address(
            i,
            user_address(rings.desc),
            user_address(rings.used),
            user_address(rings.avail),
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
            queue.ring.set_event_idx(acked & feature::EVENT_IDX != 0);
            queue.ring.lay_out(memory);
            self.start_queue(queue)?;
        }
        Ok((rx, tx))
    }
}

/// Where each queue's rings and buffers live in the [`LAYOUT`]: queue `i`'s rings
/// at `i * RING_STRIDE` in the first region, its buffers at `BUFFER_BASE + i * BUFFER_STRIDE`.
const RING_STRIDE: u64 = 0x8000;
const BUFFER_BASE: u64 = LAYOUT[1].0;
const BUFFER_STRIDE: u64 = 1 << 20;

/// One of the guest's virtqueues and its vhost-user notifications.
pub struct Virtqueue {
    /// The vhost-user queue index.
    pub index: u32,
    /// The driver's side of the ring, in guest memory.
    pub ring: GuestQueue,
    kick: OwnedFd,
    call: OwnedFd,
    /// How many times the call eventfd was found signalled.
    pub calls: u64,
}

impl Virtqueue {
    /// A queue with fresh kick and call eventfds; its rings are laid out by `setup`.
    fn new(index: u32, size: u16) -> io::Result<Virtqueue> {
        if !size.is_power_of_two() || size > 1024 {
            // Larger rings would not fit in their RING_STRIDE slot.
            return Err(invalid(format!("ring size {size}")));
        }
        let eventfd = || rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK);
        let buffers = BUFFER_BASE + u64::from(index) * BUFFER_STRIDE;
        let layout = Layout::packed(
            size,
            u64::from(index) * RING_STRIDE,
            buffers..buffers + BUFFER_STRIDE,
        );
        Ok(Virtqueue {
            index,
            ring: GuestQueue::new(layout),
            kick: eventfd()?,
            call: eventfd()?,
            calls: 0,
        })
    }

    /// Posts a transmit packet (see [`GuestQueue::chain_tx`]) and kicks.
    pub fn send(
        &mut self,
        memory: &GuestMemory,
        packet: &[u8],
        pieces: usize,
        indirect: bool,
    ) -> u16 {
        let head = self.ring.chain_tx(memory, packet, pieces, indirect);
        self.ring.publish(memory, head);
        self.kick();
        head
    }

    /// Posts `count` device-writable receive buffers of `len` bytes and kicks.
    pub fn post_rx(&mut self, memory: &GuestMemory, count: usize, len: u32) {
        for _ in 0..count {
            self.ring.post_receive_buffer(memory, len);
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

    /// Waits (bounded by [`DEADLINE`]) until the backend returns chain `head`; returns its
    /// used length. Entries for other chains are passed over.
    pub fn wait_used(&mut self, memory: &GuestMemory, head: u16) -> Option<u32> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(u) = self
                .ring
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
    /// and the bytes the backend wrote into it (see [`GuestQueue::next_received`]).
    pub fn receive(&mut self, memory: &GuestMemory) -> Option<(u32, Vec<u8>)> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(received) = self.ring.next_received(memory) {
                return Some(received);
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
