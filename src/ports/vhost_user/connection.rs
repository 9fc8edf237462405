//! One frontend connection: the message handler and the transmit loop.
//!
//! The connection thread owns the socket. It sleeps in `poll` on the socket, the stop
//! doorbell and the kick eventfds of the transmit queues; a message is read whole
//! (header, descriptors, payload), parsed by [`crate::wire::vhost_user`], and applied to
//! the [`Shared`] state the receive thread also reads; a kick drains that transmit queue
//! in budgeted rounds. The receive thread ([`super::rx`]) is started here and stopped when
//! the connection ends, before the peer leaves.

use std::io::{IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use virtio_queue::QueueT;

use super::datapath::{self, TxBatch, TxRules, Vring, feature};
use super::memory::{GuestMemory, MAX_MEM_SLOTS};
use super::state::{Negotiated, Shared, Socket, drain_eventfd, is_eventfd, lock};
use super::status::Counters;
use crate::network::counters::DropReason;
use crate::network::monotonic_ns;
use crate::network::{Peer, Sender};
use crate::ports::socket::{Doorbell, MacLearner};
use crate::wire::vhost_user::{
    self as protocol, HEADER_LEN, MAX_FDS, MessageError, MessageHeader, Request, code,
};

/// Chains taken from one transmit queue per round before the loop looks at the others.
const TX_BUDGET: usize = 256;

/// How long a second frontend may wait for the one being served to go. A frontend that
/// reconnects closes its old connection first, but the old connection's end can reach us
/// after the new one's knock: any process that forked meanwhile holds the old socket until
/// it execs. Past this, the newcomer is taken for a second VM on the same socket.
pub const NEWCOMER_GRACE: Duration = Duration::from_secs(1);

/// How long the rest of a message may take to arrive once its first bytes have.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a connection starts from.
pub struct Setup<'a> {
    /// The connected socket.
    pub stream: UnixStream,
    /// The VM's peer.
    pub peer: Peer,
    /// Status and counters.
    pub socket: &'a Socket,
    /// Queue pairs offered.
    pub queue_pairs: u16,
    /// Offer offloads.
    pub offload: bool,
    /// Publish the guest's MAC from its first frames.
    pub learn_mac: bool,
    /// The network's largest frame.
    pub max_frame: usize,
    /// Port label for logs.
    pub label: String,
}

/// What a request amounts to.
enum Answer {
    /// A reply of the request's own.
    Reply(Vec<u8>),
    /// Done; a `REPLY_ACK` status 0 if asked for.
    Done,
    /// Refused; status 1 if asked for.
    Refused(String),
}

/// A message as read: header, payload, and the descriptors that came with it.
type Message = (MessageHeader, Vec<u8>, Vec<OwnedFd>);

/// Why the connection ended.
enum End {
    Disconnected,
    Stopped,
    Broken(String),
}

/// The connection thread's own state.
struct Connection<'s, 'a> {
    stream: UnixStream,
    shared: &'s Shared<'a>,
    offered: u64,
    offered_protocol: u64,
    queue_pairs: u16,
    offload: bool,
    max_frame: usize,
    sender: Sender,
    learner: MacLearner,
    label: String,
    batch: TxBatch,
    /// Transmit queues with work left over from the last round.
    tx_pending: Vec<bool>,
    /// Duplicates of the transmit queues' kick descriptors, for `poll`.
    tx_kicks: Vec<(usize, OwnedFd)>,
    /// The receive thread, woken when the queues change.
    rx_thread: std::thread::Thread,
    /// The unsealed-memory warning was given.
    warned_unsealed: bool,
    /// A frontend that connected while this one is served, and since when it waits.
    newcomer: Option<(UnixStream, std::time::Instant)>,
}

/// Serves one frontend until it disconnects, breaks the protocol, or `stop` rings.
///
/// Returns the frontend that knocked while this one was served and was kept waiting, if
/// this one ended within [`NEWCOMER_GRACE`] of the knock: it is the one to serve next.
pub fn run(
    setup: Setup<'_>,
    stop: &Doorbell,
    listener: Option<&UnixListener>,
) -> Option<UnixStream> {
    let Setup {
        stream,
        peer,
        socket,
        queue_pairs,
        offload,
        learn_mac,
        max_frame,
        label,
    } = setup;
    let control = peer.control();
    // No receive queue runs yet: senders count link_down instead of filling our ring.
    if let Err(e) = control.set_link_down(true) {
        tracing::warn!(error = %e, "cannot mark the link down");
    }
    let vrings = match (0..usize::from(queue_pairs) * 2)
        .map(|_| Vring::new().map(Mutex::new))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(vrings) => vrings,
        Err(e) => {
            tracing::error!(error = %e, "cannot create the virtqueues");
            return None;
        }
    };
    let shared = Shared::new(vrings, control, socket);
    let (sender, receiver) = peer.split();
    let mut offered = feature::VERSION_1
        | feature::MRG_RXBUF
        | feature::EVENT_IDX
        | feature::INDIRECT_DESC
        | feature::PROTOCOL_FEATURES;
    if offload {
        offered |= feature::CSUM
            | feature::GUEST_CSUM
            | feature::GUEST_TSO4
            | feature::GUEST_TSO6
            | feature::HOST_TSO4
            | feature::HOST_TSO6;
    }
    if queue_pairs > 1 {
        offered |= feature::MQ;
    }
    let end = std::thread::scope(|scope| {
        let rx = scope.spawn(|| super::rx::run(&shared, receiver));
        let mut connection = Connection {
            stream,
            shared: &shared,
            offered,
            offered_protocol: protocol::protocol::MQ
                | protocol::protocol::REPLY_ACK
                | protocol::protocol::CONFIGURE_MEM_SLOTS,
            queue_pairs,
            offload,
            max_frame,
            sender,
            learner: MacLearner::new(!learn_mac),
            label,
            batch: TxBatch::default(),
            tx_pending: vec![false; usize::from(queue_pairs) * 2],
            tx_kicks: Vec::new(),
            rx_thread: rx.thread().clone(),
            warned_unsealed: false,
            newcomer: None,
        };
        let end = connection.serve(stop, listener);
        shared.closing.store(true, Ordering::Release);
        rx.thread().unpark();
        (end, connection.newcomer.take())
    });
    let (end, newcomer) = end;
    match end {
        End::Disconnected | End::Stopped => {}
        End::Broken(why) => {
            tracing::warn!(socket = %socket.path.display(), "closing the connection: {why}")
        }
    }
    newcomer.map(|(stream, _)| stream)
}

impl Connection<'_, '_> {
    fn serve(&mut self, stop: &Doorbell, listener: Option<&UnixListener>) -> End {
        loop {
            let busy = self.tx_pending.iter().any(|&p| p);
            let mut fds = Vec::with_capacity(3 + self.tx_kicks.len());
            fds.push(PollFd::new(&self.stream, PollFlags::IN));
            fds.push(PollFd::new(stop, PollFlags::IN));
            if let Some(listener) = listener {
                fds.push(PollFd::new(listener, PollFlags::IN));
            }
            let kicks_at = fds.len();
            for (_, kick) in &self.tx_kicks {
                fds.push(PollFd::new(kick, PollFlags::IN));
            }
            let mut wait = if busy {
                Duration::ZERO
            } else {
                Duration::from_secs(1)
            };
            if let Some((_, since)) = &self.newcomer {
                wait = wait.min(NEWCOMER_GRACE.saturating_sub(since.elapsed()));
            }
            let timeout = rustix::time::Timespec {
                tv_sec: wait.as_secs() as i64,
                tv_nsec: i64::from(wait.subsec_nanos()),
            };
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return End::Broken(format!("poll: {e}")),
            }
            let socket_ready = !fds[0].revents().is_empty();
            let stopped = !fds[1].revents().is_empty();
            let knocking = listener.is_some() && !fds[2].revents().is_empty();
            let kicked: Vec<usize> = fds[kicks_at..]
                .iter()
                .zip(&self.tx_kicks)
                .filter(|(fd, _)| !fd.revents().is_empty())
                .map(|(_, (index, _))| *index)
                .collect();
            drop(fds);
            if stopped {
                return End::Stopped;
            }
            for index in kicked {
                if let Some((_, kick)) = self.tx_kicks.iter().find(|(i, _)| *i == index) {
                    drain_eventfd(kick);
                }
                self.tx_pending[index] = true;
            }
            if socket_ready {
                match self.handle_message() {
                    Ok(true) => {}
                    Ok(false) => return End::Disconnected,
                    Err(why) => return End::Broken(why),
                }
            }
            if knocking {
                self.knock(listener);
            }
            self.expire_newcomer();
            for index in 0..self.tx_pending.len() {
                if self.tx_pending[index] {
                    self.tx_pending[index] = self.transmit(index);
                }
            }
        }
    }

    /// Another frontend connected while this one is served: it waits (its messages queue
    /// in its socket) in case this one is about to go; a third is turned away at once.
    fn knock(&mut self, listener: Option<&UnixListener>) {
        let Some(Ok((stream, _))) = listener.map(UnixListener::accept) else {
            return;
        };
        if self.newcomer.is_none() {
            self.newcomer = Some((stream, std::time::Instant::now()));
        } else {
            self.turn_away(stream);
        }
    }

    /// Turns away a newcomer that waited [`NEWCOMER_GRACE`] while this frontend stayed.
    fn expire_newcomer(&mut self) {
        if self
            .newcomer
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() >= NEWCOMER_GRACE)
            && let Some((stream, _)) = self.newcomer.take()
        {
            self.turn_away(stream);
        }
    }

    /// A second frontend on a socket that serves one: closed, so it is not left hanging.
    fn turn_away(&self, stream: UnixStream) {
        tracing::warn!(socket = %self.shared.socket.path.display(), "a second frontend connected; this socket serves one at a time");
        drop(stream);
    }

    /// Drains one round of transmit queue `index` into the network; returns whether work
    /// is left.
    fn transmit(&mut self, index: usize) -> bool {
        if index.is_multiple_of(2) || self.shared.quarantined.load(Ordering::Acquire) {
            return false;
        }
        let negotiated = self.shared.negotiated();
        let (Some(features), Some(memory)) = (negotiated.features, self.shared.memory()) else {
            return false;
        };
        let Some(vring) = self.shared.vrings.get(index) else {
            return false;
        };
        let rules = TxRules {
            header_len: Negotiated::header_len(features),
            max_frame: self.max_frame,
            features,
        };
        let mem = memory.memory();
        let mut faults = Vec::new();
        self.batch.clear();
        let more = {
            let mut vring = lock(vring);
            if !vring.running(negotiated.enabled_by_default()) {
                return false;
            }
            let _ = vring.queue.disable_notification(mem);
            let taken =
                datapath::transmit(&mut vring, mem, &rules, TX_BUDGET, &mut self.batch, |f| {
                    faults.push(f)
                });
            // Budget spent: come back at once, notifications still off. Else turn them
            // back on and look once more, so a frame added meanwhile is not missed.
            let more = taken == TX_BUDGET
                || (vring.started && vring.queue.enable_notification(mem).unwrap_or(false));
            if taken > 0 {
                vring.signal(mem);
            }
            more
        };
        let now = monotonic_ns();
        for fault in &faults {
            self.shared.fault(true, *fault, now);
            self.sender.count_drop(DropReason::Invalid);
        }
        if !faults.is_empty() {
            self.sender.flush();
        }
        if !self.batch.is_empty() {
            let sender = &self.sender;
            for (_, frame) in self.batch.iter() {
                self.learner
                    .observe(|| sender.control(), frame, &self.label);
            }
            Counters::add(
                &self.shared.socket.counters.tx_frames,
                self.batch.len() as u64,
            );
            self.sender.send_batch_offloaded(self.batch.iter());
        }
        more
    }

    /// Reads and applies one message; `Ok(false)` when the frontend closed the connection.
    fn handle_message(&mut self) -> Result<bool, String> {
        let counters = &self.shared.socket.counters;
        let (header, payload, fds) = match self.read_message() {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(false),
            Err(why) => {
                Counters::add(&counters.bad_messages, 1);
                return Err(why);
            }
        };
        let request = match Request::parse(&header, &payload, fds.len()) {
            Ok(request) => request,
            Err(e) => {
                Counters::add(&counters.bad_messages, 1);
                return Err(format!("malformed message: {e}"));
            }
        };
        Counters::add(&counters.messages, 1);
        tracing::debug!(port = %self.label, ?request, "message");
        let answer = self.apply(request.clone(), fds);
        let reply_ack = self.shared.negotiated().protocol & protocol::protocol::REPLY_ACK != 0
            && header.needs_reply();
        let bytes = match answer {
            Answer::Reply(bytes) => Some(bytes),
            Answer::Done => reply_ack.then(|| protocol::reply_u64(header.request, 0)),
            Answer::Refused(why) => {
                if matches!(request, Request::Unknown(_)) {
                    Counters::add(&counters.unknown_requests, 1);
                } else {
                    Counters::add(&counters.rejected_messages, 1);
                }
                tracing::warn!(port = %self.label, request = header.request, "refused: {why}");
                reply_ack.then(|| protocol::reply_u64(header.request, 1))
            }
        };
        // Before the answer: once the frontend has it, a started receive ring has its
        // link up.
        self.shared.refresh_state();
        if let Some(bytes) = bytes {
            self.stream
                .write_all(&bytes)
                .map_err(|e| format!("write a reply: {e}"))?;
        }
        Ok(true)
    }

    /// Reads one whole message: header (with any descriptors beside it), then payload.
    fn read_message(&mut self) -> Result<Option<Message>, String> {
        let mut header = [0u8; HEADER_LEN];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut ancillary = RecvAncillaryBuffer::new(&mut space);
        let received = loop {
            match rustix::net::recvmsg(
                &self.stream,
                &mut [IoSliceMut::new(&mut header)],
                &mut ancillary,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(received) => break received,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(format!("read a message: {e}")),
            }
        };
        let mut fds = Vec::new();
        for message in ancillary.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = message {
                fds.extend(rights);
            }
        }
        if received.bytes == 0 {
            return Ok(None);
        }
        if received.flags.contains(ReturnFlags::CTRUNC) {
            return Err(format!(
                "more than {MAX_FDS} file descriptors with one message"
            ));
        }
        self.stream
            .set_read_timeout(Some(MESSAGE_TIMEOUT))
            .map_err(|e| format!("set a read timeout: {e}"))?;
        let rest = self
            .stream
            .read_exact(&mut header[received.bytes..])
            .map_err(|e| format!("a cut-off message header: {e}"));
        rest?;
        let header = MessageHeader::parse(&header).map_err(|e: MessageError| e.to_string())?;
        let mut payload = vec![0u8; header.size as usize];
        self.stream
            .read_exact(&mut payload)
            .map_err(|e| format!("a cut-off message payload: {e}"))?;
        self.stream
            .set_read_timeout(None)
            .map_err(|e| format!("clear the read timeout: {e}"))?;
        Ok(Some((header, payload, fds)))
    }

    /// Says once per connection that the frontend could crash this process by shrinking
    /// the guest's memory file under it.
    fn warn_if_unsealed(&mut self, memory: &GuestMemory) {
        if !memory.sealed() && !self.warned_unsealed {
            self.warned_unsealed = true;
            tracing::warn!(
                port = %self.label,
                "the guest's memory file is not sealed against shrinking: the frontend could \
                 make this process fault, and every VM it serves lose its network; QEMU's \
                 memfd backend seals by default, or run one port process per VM"
            );
        }
    }

    /// The vring `index`, if the frontend may use it.
    fn vring(&self, index: u32) -> Result<&Mutex<Vring>, String> {
        self.shared.vrings.get(index as usize).ok_or_else(|| {
            format!(
                "queue {index} out of range: this port offers {} queue pairs; start it with a \
                 larger --queues or give the frontend fewer queues",
                self.queue_pairs
            )
        })
    }

    /// Applies a request to the connection's state.
    fn apply(&mut self, request: Request, mut fds: Vec<OwnedFd>) -> Answer {
        let shared = self.shared;
        match request {
            Request::GetFeatures => {
                Answer::Reply(protocol::reply_u64(code::GET_FEATURES, self.offered))
            }
            Request::SetFeatures(features) => {
                if features & !self.offered != 0 {
                    return Answer::Refused(format!(
                        "features {:#x} were not offered",
                        features & !self.offered
                    ));
                }
                shared.set_features(features);
                for vring in &shared.vrings {
                    lock(vring)
                        .queue
                        .set_event_idx(features & feature::EVENT_IDX != 0);
                }
                let offloads = if self.offload {
                    datapath::guest_offloads(features)
                } else {
                    0
                };
                if let Err(e) = shared.control.set_offloads(offloads) {
                    tracing::warn!(error = %e, "cannot set the peer's offloads");
                }
                self.rx_thread.unpark();
                Answer::Done
            }
            Request::SetOwner => Answer::Done,
            Request::ResetOwner => {
                for vring in &shared.vrings {
                    match Vring::new() {
                        Ok(fresh) => *lock(vring) = fresh,
                        Err(e) => return Answer::Refused(format!("reset a queue: {e}")),
                    }
                }
                shared.set_memory(None);
                shared.forget_negotiation();
                self.tx_kicks.clear();
                self.rx_thread.unpark();
                Answer::Done
            }
            Request::SetMemTable(regions) => match GuestMemory::from_table(&regions, fds) {
                Ok(memory) => {
                    self.warn_if_unsealed(&memory);
                    shared.set_memory(Some(memory));
                    self.rx_thread.unpark();
                    Answer::Done
                }
                Err(e) => Answer::Refused(format!("memory table: {e}")),
            },
            Request::GetMaxMemSlots => Answer::Reply(protocol::reply_u64(
                code::GET_MAX_MEM_SLOTS,
                MAX_MEM_SLOTS as u64,
            )),
            Request::AddMemReg(region) => {
                let Some(fd) = fds.pop() else {
                    return Answer::Refused("ADD_MEM_REG without a descriptor".into());
                };
                let current = shared.memory();
                let added = match &current {
                    Some(memory) => memory.with_region(region, fd),
                    None => GuestMemory::single(region, fd),
                };
                match added {
                    Ok(memory) => {
                        self.warn_if_unsealed(&memory);
                        shared.set_memory(Some(memory));
                        self.rx_thread.unpark();
                        Answer::Done
                    }
                    Err(e) => Answer::Refused(format!("add a memory region: {e}")),
                }
            }
            Request::RemMemReg(region) => {
                let Some(current) = shared.memory() else {
                    return Answer::Refused("REM_MEM_REG without memory".into());
                };
                match current.without_region(region) {
                    Ok(memory) => {
                        shared.set_memory(memory);
                        Answer::Done
                    }
                    Err(e) => Answer::Refused(format!("remove a memory region: {e}")),
                }
            }
            Request::SetVringNum { index, num } => {
                let vring = match self.vring(index) {
                    Ok(vring) => vring,
                    Err(why) => return Answer::Refused(why),
                };
                let size = u16::try_from(num).unwrap_or(0);
                match lock(vring).queue.try_set_size(size) {
                    Ok(()) => Answer::Done,
                    Err(_) => Answer::Refused(format!(
                        "ring size {num} is not a power of two up to {}",
                        datapath::MAX_QUEUE_SIZE
                    )),
                }
            }
            Request::SetVringAddr(addr) => {
                let vring = match self.vring(addr.index) {
                    Ok(vring) => vring,
                    Err(why) => return Answer::Refused(why),
                };
                let Some(memory) = shared.memory() else {
                    return Answer::Refused(
                        "ring addresses before any guest memory was shared: is the VM's memory \
                         shared? (QEMU: -object memory-backend-memfd,id=mem,size=…,share=on \
                         -machine memory-backend=mem)"
                            .into(),
                    );
                };
                let mut vring = lock(vring);
                let size = u64::from(vring.queue.size());
                // The ring's three parts, each with its length, must lie in guest memory.
                let parts = [
                    (addr.desc, 16 * size),
                    (addr.avail, 6 + 2 * size),
                    (addr.used, 6 + 8 * size),
                ];
                let mut guest = [vm_memory::GuestAddress(0); 3];
                for (slot, (address, len)) in guest.iter_mut().zip(parts) {
                    match memory.frontend_to_guest(address, len) {
                        Some(gpa) => *slot = gpa,
                        None => {
                            return Answer::Refused(format!(
                                "ring address {address:#x} (+{len}) is outside guest memory"
                            ));
                        }
                    }
                }
                let set = vring
                    .queue
                    .try_set_desc_table_address(guest[0])
                    .and_then(|()| vring.queue.try_set_avail_ring_address(guest[1]))
                    .and_then(|()| vring.queue.try_set_used_ring_address(guest[2]));
                match set {
                    Ok(()) => {
                        vring.addressed = true;
                        Answer::Done
                    }
                    Err(e) => {
                        vring.addressed = false;
                        Answer::Refused(format!("ring addresses: {e}"))
                    }
                }
            }
            Request::SetVringBase { index, num } => {
                let vring = match self.vring(index) {
                    Ok(vring) => vring,
                    Err(why) => return Answer::Refused(why),
                };
                let mut vring = lock(vring);
                // Split rings: the low 16 bits are the next available index.
                vring.queue.set_next_avail(num as u16);
                vring.queue.set_next_used(num as u16);
                Answer::Done
            }
            Request::GetVringBase { index } => {
                let vring = match self.vring(index) {
                    Ok(vring) => vring,
                    Err(why) => return Answer::Refused(why),
                };
                let next = {
                    let mut vring = lock(vring);
                    vring.started = false;
                    vring.queue.set_ready(false);
                    vring.queue.next_avail()
                };
                self.tx_kicks.retain(|(i, _)| *i != index as usize);
                self.rx_thread.unpark();
                Answer::Reply(protocol::reply_state(
                    code::GET_VRING_BASE,
                    index,
                    u32::from(next),
                ))
            }
            Request::SetVringKick(which) => {
                let vring = match self.vring(which.index) {
                    Ok(vring) => vring,
                    Err(why) => return Answer::Refused(why),
                };
                let Some(kick) = fds.pop().filter(|_| which.has_fd) else {
                    return Answer::Refused(
                        "polled rings (no kick descriptor) are not supported".into(),
                    );
                };
                if !is_eventfd(&kick) {
                    return Answer::Refused("the kick descriptor is not an eventfd".into());
                }
                let index = which.index as usize;
                let duplicate = kick.try_clone();
                {
                    let mut vring = lock(vring);
                    vring.kick = Some(kick);
                    vring.started = true;
                    vring.queue.set_ready(true);
                }
                self.tx_kicks.retain(|(i, _)| *i != index);
                if index % 2 == 1 {
                    match duplicate {
                        Ok(duplicate) => self.tx_kicks.push((index, duplicate)),
                        Err(e) => {
                            return Answer::Refused(format!("duplicate the kick descriptor: {e}"));
                        }
                    }
                    // The guest may have queued frames before it could kick.
                    self.tx_pending[index] = true;
                }
                self.rx_thread.unpark();
                Answer::Done
            }
            Request::SetVringCall(which) => {
                let vring = match self.vring(which.index) {
                    Ok(vring) => vring,
                    Err(why) => return Answer::Refused(why),
                };
                let call = fds.pop().filter(|_| which.has_fd);
                if call.as_ref().is_some_and(|fd| !is_eventfd(fd)) {
                    return Answer::Refused("the call descriptor is not an eventfd".into());
                }
                lock(vring).call = call;
                Answer::Done
            }
            Request::SetVringErr(which) => match self.vring(which.index) {
                // Errors are reported in the counters; the descriptor is not kept.
                Ok(_) => Answer::Done,
                Err(why) => Answer::Refused(why),
            },
            Request::GetProtocolFeatures => Answer::Reply(protocol::reply_u64(
                code::GET_PROTOCOL_FEATURES,
                self.offered_protocol,
            )),
            Request::SetProtocolFeatures(features) => {
                if features & !self.offered_protocol != 0 {
                    return Answer::Refused(format!(
                        "protocol features {:#x} were not offered",
                        features & !self.offered_protocol
                    ));
                }
                shared.set_protocol_features(features);
                Answer::Done
            }
            // Virtqueues, not pairs, as the specification counts them (cloud-hypervisor
            // compares its queue count with this; QEMU compares pairs, which are fewer).
            Request::GetQueueNum => Answer::Reply(protocol::reply_u64(
                code::GET_QUEUE_NUM,
                u64::from(self.queue_pairs) * 2,
            )),
            // Accepted whenever it comes: QEMU sends it before SET_FEATURES.
            Request::SetVringEnable { index, enable } => {
                let vring = match self.vring(index) {
                    Ok(vring) => vring,
                    Err(why) => return Answer::Refused(why),
                };
                lock(vring).enabled = enable;
                if enable && index % 2 == 1 {
                    self.tx_pending[index as usize] = true;
                }
                self.rx_thread.unpark();
                Answer::Done
            }
            Request::Unknown(request) => {
                Answer::Refused(format!("request {request} is not implemented"))
            }
        }
    }
}
