//! One frontend connection: its poll loop and its messages.
//!
//! The connection thread owns the socket. It sleeps in `poll` on the socket and the stop
//! doorbell; a message is read whole (header, descriptors, payload), parsed by
//! [`crate::wire::vhost_user`], and applied by the [`RequestHandler`] to the [`Shared`]
//! state, after which the port's data path ([`Engine`]) is told to look at it again. The
//! frames themselves are the engine's: the connection hands it the peer's halves as a
//! [`Lane`] when it starts, and its ring watch ([`engine::watch`]) runs here beside it.
//! When the connection ends, it waits for the engine to let go of the lane before the
//! peer leaves.

use std::io::{IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};

use super::datapath::Vring;
use super::engine::{self, Engine, Lane};
use super::requests::{Answer, RequestHandler};
use super::state::{Released, Shared, Socket};
use super::status::Counters;
use crate::network::Peer;
use crate::ports::socket::Doorbell;
use crate::wire::vhost_user::{
    self as protocol, HEADER_LEN, MAX_FDS, MessageError, MessageHeader, Request,
};

/// How long a second frontend may wait for the one being served to go. A frontend that
/// reconnects closes its old connection first, but the old connection's end can reach us
/// after the new one's knock: any process that forked meanwhile holds the old socket until
/// it execs. Past this, the newcomer is taken for a second VM on the same socket.
pub const NEWCOMER_GRACE: Duration = Duration::from_secs(1);

/// How long the rest of a message may take to arrive once its first bytes have.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a connection that ended waits for the engine to let go of its lane before it
/// says so in the log (and waits on: the peer must not leave while the engine sends as it).
/// The engine lets go at its next round, microseconds away.
const RELEASE_PATIENCE: Duration = Duration::from_secs(1);

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

/// A message as read: header, payload, and the descriptors that came with it.
type Message = (MessageHeader, Vec<u8>, Vec<OwnedFd>);

/// What the connection thread sleeps on, in the order it attends to them once awake:
/// stopping first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The stop doorbell rang: the process is ending.
    Stop,
    /// A message, or the frontend's hang-up, on the socket.
    Message,
    /// Another frontend connected to the listening socket.
    Knock,
}

/// The descriptors of one `poll`, each with the event it stands for.
struct PollSet<'f> {
    events: Vec<Event>,
    fds: Vec<PollFd<'f>>,
}

impl<'f> PollSet<'f> {
    fn with_capacity(capacity: usize) -> PollSet<'f> {
        PollSet {
            events: Vec::with_capacity(capacity),
            fds: Vec::with_capacity(capacity),
        }
    }

    /// Adds `source`, readable when `event` happened.
    fn add(&mut self, event: Event, source: &'f impl AsFd) {
        self.events.push(event);
        self.fds.push(PollFd::new(source, PollFlags::IN));
    }

    /// Sleeps until a source is ready or `wait` passes. A signal ends the sleep early,
    /// which is no error: the loop looks again.
    fn poll(&mut self, wait: Duration) -> rustix::io::Result<()> {
        let timeout = crate::network::timespec(wait);
        match rustix::event::poll(&mut self.fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The events whose sources are ready, in the order they were added.
    fn ready(&self) -> impl Iterator<Item = Event> + '_ {
        self.events
            .iter()
            .zip(&self.fds)
            .filter(|(_, fd)| !fd.revents().is_empty())
            .map(|(&event, _)| event)
    }
}

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
    /// Applies the messages.
    handler: RequestHandler<'s, 'a>,
    /// Told after every message.
    engine: &'s Engine<'a>,
    label: String,
    /// A frontend that connected while this one is served, and since when it waits.
    newcomer: Option<(UnixStream, std::time::Instant)>,
}

/// Serves one frontend until it disconnects, breaks the protocol, or `stop` rings.
///
/// Returns the frontend that knocked while this one was served and was kept waiting, if
/// this one ended within [`NEWCOMER_GRACE`] of the knock: it is the one to serve next.
pub fn run<'a>(
    setup: Setup<'a>,
    engine: &Engine<'a>,
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
    let shared = Arc::new(Shared::new(vrings, control, socket));
    let released = Arc::new(Released::default());
    let (sender, receiver) = peer.split();
    let ring = receiver.watch();
    let end = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| engine::watch(&shared, ring, engine.bell()));
        engine.attach(Lane::new(
            Arc::clone(&shared),
            Arc::clone(&released),
            (sender, receiver),
            learn_mac,
            label.clone(),
            max_frame,
            watcher.thread().clone(),
        ));
        let mut connection = Connection {
            stream,
            shared: &shared,
            handler: RequestHandler::new(&shared, queue_pairs, offload, label.clone()),
            engine,
            label,
            newcomer: None,
        };
        let end = connection.serve(stop, listener);
        shared.closing.store(true, Ordering::Release);
        engine.notify(&shared);
        watcher.thread().unpark();
        while !released.wait(RELEASE_PATIENCE) {
            tracing::warn!(socket = %socket.path.display(), "the data path has not let go of the connection yet; waiting");
        }
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
    /// The poll loop: sleeps on the event sources and attends to those that are ready in
    /// the order [`Event`] lists them.
    fn serve(&mut self, stop: &Doorbell, listener: Option<&UnixListener>) -> End {
        let mut ready = Vec::new();
        loop {
            let mut wait = Duration::from_secs(1);
            if let Some((_, since)) = &self.newcomer {
                wait = wait.min(NEWCOMER_GRACE.saturating_sub(since.elapsed()));
            }
            let mut sources = PollSet::with_capacity(3);
            sources.add(Event::Stop, stop);
            sources.add(Event::Message, &self.stream);
            if let Some(listener) = listener {
                sources.add(Event::Knock, listener);
            }
            if let Err(e) = sources.poll(wait) {
                return End::Broken(format!("poll: {e}"));
            }
            ready.clear();
            ready.extend(sources.ready());
            drop(sources);
            for &event in &ready {
                match event {
                    Event::Stop => return End::Stopped,
                    Event::Message => match self.handle_message() {
                        Ok(true) => {}
                        Ok(false) => return End::Disconnected,
                        Err(why) => return End::Broken(why),
                    },
                    Event::Knock => self.knock(listener),
                }
            }
            self.expire_newcomer();
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
        let answer = self.handler.handle(request, fds);
        let reply_ack = self.shared.negotiated().protocol & protocol::protocol::REPLY_ACK != 0
            && header.needs_reply();
        let bytes = match answer {
            Ok(Answer::Reply(bytes)) => Some(bytes),
            Ok(Answer::Done) => reply_ack.then(|| protocol::reply_u64(header.request, 0)),
            Err(refusal) => {
                refusal.count(counters);
                tracing::warn!(port = %self.label, request = header.request, "refused: {refusal}");
                reply_ack.then(|| protocol::reply_u64(header.request, 1))
            }
        };
        // Before the answer: once the frontend has it, a started receive ring has its
        // link up, and the engine has been told to look at the queues again. The change
        // is counted first, so the engine's word on the link from before it is passed
        // over (`Shared::engine_link`).
        self.engine.notify(self.shared);
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
}
