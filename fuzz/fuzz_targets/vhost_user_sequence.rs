//! Fuzz target `vhost_user_sequence`: any sequence of messages a vhost-user frontend sends.
//!
//! The frontend is untrusted, and what it can do wrong is mostly a matter of order and
//! combination: rings addressed before memory, memory replaced under running rings, queues
//! reset, kicked and stopped in any order. The target runs a real vhost-user port in this
//! process, on a small network with one other peer, and plays each input to it over its
//! unix socket as one connection, with real descriptors: a memfd of guest memory for each
//! region a `SET_MEM_TABLE` or `ADD_MEM_REG` announces (filled with the input's memory
//! image, so rings and frames can be laid out in it), an eventfd for each kick, call and
//! error ring. Then it asks `GET_FEATURES` and waits for the answer, so that the port has
//! applied the whole sequence; kicks every kick eventfd; has the other peer broadcast a
//! frame, and gives the receive thread a moment to place it if a receive ring runs; and
//! sends a last `GET_FEATURES` and closes its end.
//!
//! Whatever the sequence: nothing panics in any of the port's threads; every reply is a
//! well-formed reply, and a `GET_FEATURES` (`GET_PROTOCOL_FEATURES`) is always answered
//! with what the port offers; the connection either handles every message and answers
//! the last `GET_FEATURES`, or counts exactly one malformed message and closes; within a
//! few seconds of the frontend leaving, the socket listens again and the VM's peer has
//! left the network; and the refusal counters add up to `rejected_messages`.
//!
//! Input: `[image length: u16 LE][memory image][message]…`, each message a 12-byte header
//! (request, flags, payload size; little endian) and that many payload bytes (zeros past
//! the input's end). A header whose size is over the limit is sent alone, and ends the
//! sequence: the port closes the connection on it.
#![no_main]

use std::io::{IoSlice, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use guestnet::network::{CreateOptions, JoinOptions, Network, Peer, PortKind};
use guestnet::ports::doorbell::Doorbell;
use guestnet::ports::vhost_user::{
    SocketStatus, State, StatusHandle, VhostUserOptions, VhostUserPort,
};
use guestnet::shm::layout::Geometry;
use guestnet::wire::vhost_user::{
    FLAG_REPLY, HEADER_LEN, MAX_MEM_TABLE_REGIONS, MAX_PAYLOAD, MessageHeader, VERSION,
    VRING_NOFD_MASK, code,
};
use guestnet::wire::{MacAddress, ethernet};
use libfuzzer_sys::fuzz_target;
use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// Length of every memfd of guest memory: enough for small rings and their buffers.
const GUEST_MEMORY: u64 = 256 * 1024;
/// Most messages played per input.
const MAX_MESSAGES: usize = 64;
/// How long the port may take to answer, or to be listening again, before the target
/// calls it a hang.
const DEADLINE: Duration = Duration::from_secs(5);

struct Bench {
    _dir: PathBuf,
    network: &'static Network,
    socket: PathBuf,
    status: StatusHandle,
    /// The other peer: broadcasts a frame to the VM, receives what the VM sends.
    other: Peer,
    offered_features: u64,
    offered_protocol: u64,
}

fn bench() -> &'static Mutex<Bench> {
    static BENCH: OnceLock<Mutex<Bench>> = OnceLock::new();
    BENCH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!(
            "guestnet-fuzz-vhost-user-sequence-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the workspace");
        let geometry = Geometry {
            max_peers: 4,
            ring_slots: 64,
            mtu: 1500,
            gso_buffers: 2,
        };
        let options = CreateOptions {
            geometry,
            ..CreateOptions::default()
        };
        // The port serves for the life of the process, so what it borrows lives as long.
        let network: &'static Network = Box::leak(Box::new(
            Network::create(&dir, "vhost", options).expect("create network"),
        ));
        let other = network.join(JoinOptions::default()).expect("join");
        let socket = dir.join("vm.sock");
        let port: &'static VhostUserPort = Box::leak(Box::new(
            VhostUserPort::open(VhostUserOptions {
                sockets: vec![socket.clone()],
                macs: Vec::new(),
                queue_pairs: 2,
                client: false,
                offload: true,
                policy: Default::default(),
                steering: Default::default(),
            })
            .expect("open the port"),
        ));
        let stop: &'static Doorbell = Box::leak(Box::new(Doorbell::new().expect("doorbell")));
        let status = port.status_handle();
        std::thread::spawn(move || port.serve(network, stop));
        let (offered_features, offered_protocol) = offers(&socket, &status);
        Mutex::new(Bench {
            _dir: dir,
            network,
            socket,
            status,
            other,
            offered_features,
            offered_protocol,
        })
    })
}

/// What the port offers, asked over a connection of its own.
fn offers(socket: &Path, status: &StatusHandle) -> (u64, u64) {
    let mut stream = UnixStream::connect(socket).expect("connect to the port");
    for request in [code::GET_FEATURES, code::GET_PROTOCOL_FEATURES] {
        send(&stream, &header(request, 0), &[], &[]).expect("send a request");
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut replies = Vec::new();
    read_replies(&mut stream, &mut replies, None);
    wait_listening(status);
    match replies.as_slice() {
        [
            (code::GET_FEATURES, features),
            (code::GET_PROTOCOL_FEATURES, protocol),
        ] => (*features, *protocol),
        other => panic!("unexpected answers to the first requests: {other:x?}"),
    }
}

fn header(request: u32, size: u32) -> [u8; HEADER_LEN] {
    MessageHeader {
        request,
        flags: VERSION,
        size,
    }
    .to_bytes()
}

/// Sends one message with its descriptors; an error means the port closed the connection.
fn send(
    stream: &UnixStream,
    header: &[u8],
    payload: &[u8],
    fds: &[OwnedFd],
) -> rustix::io::Result<()> {
    let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_MEM_TABLE_REGIONS))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() {
        assert!(ancillary.push(SendAncillaryMessage::ScmRights(&borrowed)));
    }
    let mut message = header.to_vec();
    message.extend_from_slice(payload);
    // NOSIGNAL: a closed connection is an answer here, not a reason to die of SIGPIPE.
    let mut sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&message)],
        &mut ancillary,
        SendFlags::NOSIGNAL,
    )?;
    while sent < message.len() {
        sent += rustix::net::send(stream, &message[sent..], SendFlags::NOSIGNAL)?;
    }
    Ok(())
}

/// Reads replies, each checked to be well formed, into `replies` (request code and value)
/// until the port closes the connection or, with `features`, until that many
/// `GET_FEATURES` have been answered; returns whether the connection is still open.
fn read_replies(
    stream: &mut UnixStream,
    replies: &mut Vec<(u32, u64)>,
    features: Option<usize>,
) -> bool {
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("set a read timeout");
    loop {
        let answered = replies
            .iter()
            .filter(|&&(request, _)| request == code::GET_FEATURES)
            .count();
        if features.is_some_and(|wanted| answered >= wanted) {
            return true;
        }
        let mut header = [0u8; HEADER_LEN];
        match read_all(stream, &mut header) {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => panic!("the port neither answered nor closed within {DEADLINE:?}: {e}"),
        }
        let request = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let flags = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        assert_eq!(flags, VERSION | FLAG_REPLY, "reply to {request}: flags");
        // Every answer this port gives is a u64 or a ring state (two u32): 8 bytes.
        assert_eq!(size, 8, "reply to {request}: payload size");
        let mut payload = [0u8; 8];
        match read_all(stream, &mut payload) {
            Ok(true) => {}
            Ok(false) => panic!("a reply to {request} cut short"),
            Err(e) => panic!("a reply to {request} cut short: {e}"),
        }
        replies.push((request, u64::from_le_bytes(payload)));
    }
}

/// Fills `buffer`; false at the end of the stream before its first byte.
fn read_all(stream: &mut UnixStream, buffer: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buffer.len() {
        match stream.read(&mut buffer[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // The port may close with our last messages unread.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Waits until the socket listens again (its connection and the VM's peer gone).
fn wait_listening(status: &StatusHandle) -> SocketStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = status.status().remove(0);
        if now.state == State::Listening && now.slot.is_none() {
            return now;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the socket is not listening {DEADLINE:?} after the frontend left: {now:?}"
        );
        status.wait_for_change(left);
    }
}

/// A memfd of guest memory holding `image` at its start, sealed against shrinking as
/// QEMU's memfd backend seals it.
fn guest_memory(image: &[u8]) -> OwnedFd {
    let fd = rustix::fs::memfd_create("guest", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .expect("memfd_create");
    rustix::fs::ftruncate(&fd, GUEST_MEMORY).expect("size the memfd");
    let mut written = 0;
    while written < image.len() {
        written +=
            rustix::io::pwrite(&fd, &image[written..], written as u64).expect("fill the memfd");
    }
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).expect("seal");
    fd
}

fn new_eventfd() -> OwnedFd {
    eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).expect("eventfd")
}

/// The eventfds handed to the port that the target uses afterwards.
#[derive(Default)]
struct Kept {
    /// Every kick, to kick once the sequence is sent.
    kicks: Vec<OwnedFd>,
    /// The calls of receive queues, to wait for a frame to reach the guest.
    receive_calls: Vec<OwnedFd>,
}

/// The descriptors a message needs, made here; some eventfds are also kept.
fn descriptors(request: u32, payload: &[u8], image: &[u8], kept: &mut Kept) -> Vec<OwnedFd> {
    let u64_payload = payload
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    match request {
        code::SET_MEM_TABLE => {
            let regions = payload
                .get(..4)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
            (0..regions.min(MAX_MEM_TABLE_REGIONS))
                .map(|_| guest_memory(image))
                .collect()
        }
        code::ADD_MEM_REG => vec![guest_memory(image)],
        code::SET_VRING_KICK | code::SET_VRING_CALL | code::SET_VRING_ERR => match u64_payload {
            Some(word) if word & VRING_NOFD_MASK == 0 => {
                let fd = new_eventfd();
                let keep = match request {
                    code::SET_VRING_KICK => Some(&mut kept.kicks),
                    code::SET_VRING_CALL if word % 2 == 0 => Some(&mut kept.receive_calls),
                    _ => None,
                };
                if let (Some(keep), Ok(copy)) = (keep, fd.try_clone()) {
                    keep.push(copy);
                }
                vec![fd]
            }
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Gives the port's receive thread a moment to put a frame into the guest's buffers, when
/// it can: the VM's link is up (a receive ring runs) and a receive queue has a call
/// eventfd to signal. Only for coverage; nothing is asserted about it.
fn wait_for_delivery(network: &Network, receive_calls: &[OwnedFd]) {
    let link_up = network
        .status()
        .peers
        .iter()
        .any(|peer| peer.kind == PortKind::VhostUser && !peer.link_down);
    if !link_up || receive_calls.is_empty() {
        return;
    }
    let mut fds: Vec<PollFd<'_>> = receive_calls
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let timeout = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 20_000_000,
    };
    let _ = rustix::event::poll(&mut fds, Some(&timeout));
}

/// A broadcast ARP request from the other peer.
fn broadcast_from(peer: &Peer) -> Vec<u8> {
    let mut frame = Vec::with_capacity(60);
    frame.extend_from_slice(&MacAddress::BROADCAST.0);
    frame.extend_from_slice(&peer.mac().0);
    frame.extend_from_slice(&[0x08, 0x06]);
    frame.resize(60, 0);
    frame
}

fuzz_target!(|data: &[u8]| {
    let [l0, l1, rest @ ..] = data else {
        return;
    };
    let image_len = usize::from(u16::from_le_bytes([*l0, *l1]))
        .min(rest.len())
        .min(GUEST_MEMORY as usize);
    let (image, mut messages) = rest.split_at(image_len);

    let mut guard = bench().lock().unwrap_or_else(|p| p.into_inner());
    let bench = &mut *guard;
    let before = wait_listening(&bench.status).counters;
    let mut stream = UnixStream::connect(&bench.socket).expect("connect to the port");
    let mut kept = Kept::default();
    let mut sent = 0u64;
    let mut features_asked = 0;
    let mut open = true;
    while open && sent < MAX_MESSAGES as u64 && messages.len() >= HEADER_LEN {
        let (header, rest) = messages.split_at(HEADER_LEN);
        let request = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if size > MAX_PAYLOAD {
            // The port refuses the header alone; a payload this big is never read.
            open = send(&stream, header, &[], &[]).is_ok();
            break;
        }
        let size = size as usize;
        let mut payload = rest[..size.min(rest.len())].to_vec();
        payload.resize(size, 0);
        messages = &rest[size.min(rest.len())..];
        let fds = descriptors(request, &payload, image, &mut kept);
        open = send(&stream, header, &payload, &fds).is_ok();
        sent += 1;
        features_asked += usize::from(request == code::GET_FEATURES);
    }
    // A GET_FEATURES of our own, always answered: once it is, the port has applied
    // everything before it.
    let mut replies = Vec::new();
    sent += 1;
    features_asked += 1;
    if open && send(&stream, &header(code::GET_FEATURES, 0), &[], &[]).is_ok() {
        open = read_replies(&mut stream, &mut replies, Some(features_asked));
    }
    // Whatever the guest left on its transmit rings, and a frame for its receive rings.
    for kick in &kept.kicks {
        let _ = rustix::io::write(kick, &1u64.to_ne_bytes());
    }
    let frame = broadcast_from(&bench.other);
    bench.other.send(&frame);
    wait_for_delivery(bench.network, &kept.receive_calls);
    // The last message, answered if the connection is still sound.
    sent += 1;
    let answered = open && send(&stream, &header(code::GET_FEATURES, 0), &[], &[]).is_ok();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    read_replies(&mut stream, &mut replies, None);
    drop(stream);
    let after = wait_listening(&bench.status).counters;

    for &(request, value) in &replies {
        match request {
            code::GET_FEATURES => assert_eq!(value, bench.offered_features),
            code::GET_PROTOCOL_FEATURES => assert_eq!(value, bench.offered_protocol),
            _ => {}
        }
    }
    let bad = after.bad_messages - before.bad_messages;
    let handled = after.messages - before.messages;
    assert_eq!(after.connections - before.connections, 1);
    if bad == 0 {
        assert!(
            answered,
            "the port closed the connection without a malformed message"
        );
        assert_eq!(handled, sent, "messages handled");
        assert_eq!(
            replies.last().map(|&(request, _)| request),
            Some(code::GET_FEATURES),
            "the last GET_FEATURES went unanswered"
        );
    } else {
        assert_eq!(bad, 1, "a connection ends at its first malformed message");
        assert!(handled <= sent, "{handled} messages handled of {sent} sent");
    }
    let refused: u64 = after.refused.named().iter().map(|(_, n)| n).sum();
    assert_eq!(
        refused, after.rejected_messages,
        "refusals by why do not add up to rejected_messages"
    );
    // The VM's peer has left; the other peer takes whatever the guest sent, all valid.
    assert_eq!(
        bench.network.status().peers.len(),
        1,
        "the VM's peer stayed"
    );
    let mtu = bench.network.geometry().mtu as usize;
    bench.other.receive(usize::MAX, |frame| {
        assert!(ethernet::validate_frame(frame, mtu).is_ok());
    });
});
