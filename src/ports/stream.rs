//! The stream port: QEMU's `-netdev stream` on a unix socket.
//!
//! QEMU (or any program) connects to the socket and speaks a byte stream of 4-byte
//! big-endian lengths, each followed by a bare Ethernet frame
//! ([`wire::stream`](crate::wire::stream)). Every accepted connection joins the network
//! as a peer of its own, so one listener serves many VMs; when the connection closes, the
//! peer leaves and its slot is free again.
//!
//! Each connection runs on two threads, one per direction, so that neither waits on the
//! other:
//!
//! * the **reader** reads whatever the socket holds, decodes it, and sends every frame of
//!   one read into the network as one batch (one wake-up of each receiver per read, not
//!   per frame). A runt (a length under 14) costs the client that one frame, counted as
//!   invalid. So does a giant (a frame longer than the network's MTU allows, up to
//!   [`LARGEST_SKIPPED`](crate::wire::stream::LARGEST_SKIPPED)), whose body is skipped as
//!   it arrives: a guest configured with too large an MTU loses those frames, not its
//!   link. A length beyond any frame means the stream is out of step and cannot be
//!   trusted, so it is counted and the connection is closed; QEMU reconnects with
//!   `reconnect-ms=`. Both are also counted on the port ([`StreamCounters`]).
//! * the **writer** sleeps on the peer's ring, drains a budget of frames into one buffer,
//!   and writes it with one `write_all`. A client that stops reading blocks only its own
//!   writer: its ring fills and the senders count `ring_full`, as for any slow peer.
//!
//! Either thread that meets the end of the connection closes the socket for both, so the
//! other wakes up (a blocked `read` or `write` returns; the writer's sleep is bounded by
//! [`WRITER_WAIT`]) and the peer leaves once both have let go of it.
//!
//! **How many.** One program connecting again and again must not take every slot of the
//! network: the port serves at most [`StreamOptions::max_clients`] connections at a time
//! (16 unless told otherwise) and closes further ones at once, counted and logged, until
//! one of those it serves ends. A connection needs no idle expiry: it lasts as long as its
//! client keeps the socket open, and ends the moment the client closes it.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::network::counters::DropReason;
use crate::network::{Error as NetworkError, JoinOptions, Network, PortKind};
use crate::network::{Receiver, Sender};
use crate::wire::MacAddress;
use crate::wire::stream::{Decoded, StreamDecoder, encode_header};

use super::batch::FrameBatch;
use super::counters::counters;
use super::doorbell::Doorbell;
use super::error::{PortError, io_error};
use super::label::label;
use super::mac::{MacLearner, check_mac};
use super::socket::{SocketPath, SocketType};
use super::wait;

/// Longest sleep of a writer before it looks whether its connection has closed. The
/// network's own receivers wake this often anyway to take part in liveness sweeps, so a
/// shorter bound would add wake-ups and a longer one would delay freeing the slot.
pub const WRITER_WAIT: Duration = Duration::from_millis(250);

/// Frames a writer takes from the ring per write.
const WRITE_BUDGET: usize = 64;

counters! {
    /// The stream port's own counters, over all its connections. Frames are counted on each
    /// connection's peer as for any peer; these count what only the port sees.
    pub struct StreamCounters;
    /// A copy of [`StreamCounters`].
    pub struct StreamCounterValues;
    /// Connections made peers.
    connections_accepted,
    /// Connections closed at once because [`StreamOptions::max_clients`] were served.
    refused_over_limit,
    /// Connections closed at once because the network refused them a peer (full, or the
    /// `--mac` taken).
    refused_by_network,
    /// Frames longer than the network's largest, skipped (each also counted as its
    /// peer's `invalid` drop).
    giants_skipped,
    /// Connections closed because a length was beyond any frame, so the stream was out of
    /// step (each also counted as its peer's `invalid` drop).
    closed_out_of_step,
}

/// Connections a stream port serves at once unless told otherwise: enough for a lab of
/// VMs, and a quarter of a default network's slots, so that one program connecting again
/// and again leaves room for everyone else.
pub const DEFAULT_MAX_CLIENTS: usize = 16;

/// Options of a stream port.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// MAC to publish for each connection; by default it is learned from the first frame.
    /// Only one connection at a time can publish a given MAC.
    pub mac: Option<MacAddress>,
    /// Most connections served at once; further ones are closed at once and counted
    /// (`refused_over_limit`).
    pub max_clients: usize,
    /// What the port enforces for its guests (`--lock-mac`, `--isolated`).
    pub policy: crate::ports::policy::PortPolicy,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            mac: None,
            max_clients: DEFAULT_MAX_CLIENTS,
            policy: crate::ports::policy::PortPolicy::default(),
        }
    }
}

/// A stream port bound to its socket, ready to serve.
#[derive(Debug)]
pub struct StreamPort {
    network: Network,
    listener: UnixListener,
    socket: SocketPath,
    options: StreamOptions,
    counters: Arc<StreamCounters>,
}

/// One accepted connection, shared by its reader, its writer and the accept loop (which
/// closes every connection when the port stops).
#[derive(Debug)]
struct Connection {
    stream: UnixStream,
    closed: AtomicBool,
    label: String,
}

impl Connection {
    /// Closes the connection for both threads: a blocked `read` returns 0, a blocked
    /// `write` fails, and the writer sees the flag after its next wait.
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

impl StreamPort {
    /// Binds a listening socket at `path`, replacing a stale socket file nobody listens
    /// on; fails if a program listens there or the path is not a socket.
    pub fn bind(
        network: Network,
        path: &Path,
        options: StreamOptions,
    ) -> Result<StreamPort, PortError> {
        check_mac(options.mac)?;
        SocketPath::clear_stale(path, SocketType::Stream)?;
        let listener =
            UnixListener::bind(path).map_err(io_error(format!("listen on {}", path.display())))?;
        let socket = SocketPath::bound(path, SocketType::Stream);
        // Non-blocking so that a connection that vanished between poll and accept does not
        // block the loop; accepted sockets are made blocking again.
        listener
            .set_nonblocking(true)
            .map_err(io_error("make the listener non-blocking"))?;
        Ok(StreamPort {
            network,
            listener,
            socket,
            options,
            counters: Arc::default(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        self.socket.path()
    }

    /// The port's counters, to read while it serves.
    pub fn counters(&self) -> Arc<StreamCounters> {
        Arc::clone(&self.counters)
    }

    /// Serves connections until `stop` rings, then closes them all and waits for their
    /// threads; every peer has left when this returns.
    pub fn serve(self, stop: &Doorbell) -> Result<(), PortError> {
        let connections: Mutex<Vec<Weak<Connection>>> = Mutex::new(Vec::new());
        let result = std::thread::scope(|scope| {
            let mut accepted: u64 = 0;
            // Whether the refusals of the current spell at the limit have been logged
            // as a warning already: a client retrying in a loop must not flood the log.
            let mut warned_over_limit = false;
            let result = loop {
                match wait_for_connection(&self.listener, stop) {
                    Ok(Event::Stop) => break Ok(()),
                    Ok(Event::Connection) => {}
                    Err(e) => break Err(io_error("wait for connections")(e)),
                }
                let stream = match self.listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(e) => match classify_accept_error(&e) {
                        AcceptError::Passing => continue,
                        AcceptError::Exhausted => {
                            // The connection stays queued and poll would report it at
                            // once: pause instead of spinning, but stay stoppable.
                            tracing::warn!(error = %e, "cannot accept a connection now; retrying shortly");
                            stop.wait(ACCEPT_BACKOFF);
                            continue;
                        }
                        AcceptError::Fatal => break Err(io_error("accept a connection")(e)),
                    },
                };
                accepted += 1;
                let name = label(
                    &format!("stream#{accepted} "),
                    &self.path().to_string_lossy(),
                );
                let served = {
                    let mut list = connections.lock().unwrap_or_else(|p| p.into_inner());
                    list.retain(|c| c.strong_count() > 0);
                    list.len()
                };
                if served >= self.options.max_clients {
                    let refused = 1 + self
                        .counters
                        .refused_over_limit
                        .fetch_add(1, Ordering::Relaxed);
                    if warned_over_limit {
                        tracing::debug!(port = %name, refused, "refusing a connection over the limit");
                    } else {
                        tracing::warn!(
                            port = %name,
                            served,
                            max_clients = self.options.max_clients,
                            refused,
                            "refusing a connection: --max-clients are connected (further refusals are logged at debug level until one leaves)"
                        );
                        warned_over_limit = true;
                    }
                    // Dropping the stream closes it; the client sees the end at once.
                    continue;
                }
                let Some((connection, sender, receiver)) = self.admit(stream, name) else {
                    continue;
                };
                warned_over_limit = false;
                {
                    let mut list = connections.lock().unwrap_or_else(|p| p.into_inner());
                    list.push(Arc::downgrade(&connection));
                }
                let reader = Reader {
                    connection: Arc::clone(&connection),
                    decoder: StreamDecoder::new(self.network.max_frame_len()),
                    batch: FrameBatch::default(),
                    sender,
                    learner: MacLearner::new(self.options.mac.is_some()),
                    counters: &self.counters,
                    giants: 0,
                };
                scope.spawn(move || reader.run());
                scope.spawn(move || write_loop(connection, receiver));
            };
            // Stopping (or failing): close every connection so their threads end; the
            // scope then waits for them, and each peer leaves as its halves drop.
            let list = connections.lock().unwrap_or_else(|p| p.into_inner());
            for connection in list.iter().filter_map(Weak::upgrade) {
                connection.close();
            }
            result
        });
        tracing::info!(
            path = %self.path().display(),
            counters = ?self.counters.values(),
            "stream port stopped"
        );
        result
    }

    /// Makes an accepted socket a peer. Refusals (network full, MAC in use) are logged
    /// and close that connection only.
    fn admit(
        &self,
        stream: UnixStream,
        label: String,
    ) -> Option<(Arc<Connection>, Sender, Receiver)> {
        if let Err(e) = stream.set_nonblocking(false) {
            tracing::warn!(port = %label, error = %e, "cannot use the connection; closing it");
            return None;
        }
        let options = JoinOptions {
            kind: PortKind::Stream,
            mac: self.options.mac,
            label: label.clone(),
            vlans: self.options.policy.vlans,
            ..JoinOptions::default()
        };
        let peer = match self.network.join(options).and_then(|peer| {
            self.options.policy.apply(&peer.control())?;
            Ok(peer)
        }) {
            Ok(peer) => peer,
            Err(e) => {
                self.counters
                    .refused_by_network
                    .fetch_add(1, Ordering::Relaxed);
                if let NetworkError::MacInUse { .. } = e {
                    tracing::warn!(port = %label, error = %e, "refusing a connection: --mac serves one client at a time");
                } else {
                    tracing::warn!(port = %label, error = %e, "refusing a connection");
                }
                return None;
            }
        };
        self.counters
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(port = %label, slot = peer.index(), mac = %peer.mac(), "client connected");
        let (sender, receiver) = peer.split();
        let connection = Arc::new(Connection {
            stream,
            closed: AtomicBool::new(false),
            label,
        });
        Some((connection, sender, receiver))
    }
}

/// What woke the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The stop bell rang.
    Stop,
    /// The listener has a connection waiting (or says so).
    Connection,
}

fn wait_for_connection(listener: &UnixListener, stop: &Doorbell) -> io::Result<Event> {
    let sources = [
        (stop.as_fd(), Event::Stop),
        (listener.as_fd(), Event::Connection),
    ];
    loop {
        if let Some(event) = wait::first_ready(sources, None)? {
            return Ok(event);
        }
    }
}

/// Pause after `accept` failed for lack of file descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What a failed `accept` means for the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptError {
    /// Concerns one connection, or nothing (spurious wake-up): carry on.
    Passing,
    /// Out of file descriptors or memory: carry on after a pause.
    Exhausted,
    /// The listener itself is broken.
    Fatal,
}

fn classify_accept_error(error: &io::Error) -> AcceptError {
    match (error.kind(), error.raw_os_error()) {
        (io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted, _)
        | (io::ErrorKind::ConnectionAborted, _)
        | (_, Some(libc::EPROTO)) => AcceptError::Passing,
        (_, Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) => {
            AcceptError::Exhausted
        }
        _ => AcceptError::Fatal,
    }
}

/// What one read from the client came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadOutcome {
    /// Carry on reading.
    Open,
    /// The client closed the connection or it failed.
    Ended,
    /// The client sent a length beyond any frame: the stream cannot be trusted any more.
    OutOfStep,
}

/// Socket → network for one connection: its reading thread's state.
struct Reader<'port> {
    connection: Arc<Connection>,
    decoder: StreamDecoder,
    batch: FrameBatch,
    sender: Sender,
    learner: MacLearner,
    counters: &'port StreamCounters,
    /// Giants this connection sent; only the first is logged as a warning, since a guest
    /// with a wrong MTU sends them all the time.
    giants: u64,
}

impl Reader<'_> {
    /// Reads until the connection ends, then closes it for the writer too.
    fn run(mut self) {
        while self.read_once() == ReadOutcome::Open {}
        tracing::info!(port = %self.connection.label, giants = self.giants, "client disconnected");
        self.connection.close();
        // The connection counts against --max-clients until both threads have let go of
        // it; let go before the peer half, so that once the peer has left, a client that
        // saw it leave finds its place free.
        let Reader {
            connection, sender, ..
        } = self;
        drop(connection);
        drop(sender);
    }

    /// One `read`, decoded and sent as one batch.
    fn read_once(&mut self) -> ReadOutcome {
        let read = (&self.connection.stream).read(self.decoder.spare());
        match read {
            Ok(0) => return ReadOutcome::Ended,
            Ok(n) => self.decoder.filled(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return ReadOutcome::Open,
            Err(e) => {
                if !self.connection.is_closed() {
                    tracing::info!(port = %self.connection.label, error = %e, "read failed");
                }
                return ReadOutcome::Ended;
            }
        }
        let Reader {
            connection,
            decoder,
            batch,
            sender,
            learner,
            counters,
            giants,
        } = self;
        let label = &connection.label;
        batch.clear();
        let mut outcome = ReadOutcome::Open;
        let mut counted = false;
        let max_frame = decoder.max_frame();
        while let Some(item) = decoder.next_item() {
            match item {
                Decoded::Frame(frame) => {
                    learner.observe(|| sender.control(), frame, label);
                    batch.push(frame);
                }
                Decoded::Runt { len } => {
                    tracing::debug!(port = %label, len, "dropping a runt");
                    sender.count_drop(DropReason::Invalid);
                    counted = true;
                }
                Decoded::Giant { len } => {
                    if *giants == 0 {
                        tracing::warn!(
                            port = %label,
                            len,
                            max = max_frame,
                            "skipping a frame longer than the network's MTU allows (is the guest's MTU larger?); further ones are logged at debug level"
                        );
                    } else {
                        tracing::debug!(port = %label, len, "skipping a giant");
                    }
                    *giants += 1;
                    counters.giants_skipped.fetch_add(1, Ordering::Relaxed);
                    sender.count_drop(DropReason::Invalid);
                    counted = true;
                }
                Decoded::OutOfStep { len } => {
                    tracing::warn!(
                        port = %label,
                        len,
                        "frame length beyond any frame: the stream is out of step; closing the connection"
                    );
                    counters.closed_out_of_step.fetch_add(1, Ordering::Relaxed);
                    sender.count_drop(DropReason::Invalid);
                    counted = true;
                    outcome = ReadOutcome::OutOfStep;
                    break;
                }
                Decoded::Desynchronised => {
                    outcome = ReadOutcome::OutOfStep;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            // The batch also writes the drops counted above.
            sender.send_batch(batch.iter());
        } else if counted {
            sender.flush();
        }
        outcome
    }
}

/// Network → socket, until the connection ends.
fn write_loop(connection: Arc<Connection>, mut receiver: Receiver) {
    let mut out = Vec::with_capacity(WRITE_BUDGET * 128);
    while !connection.is_closed() {
        if !receiver.wait(WRITER_WAIT) {
            continue;
        }
        out.clear();
        receiver.receive(WRITE_BUDGET, |frame| {
            out.extend_from_slice(&encode_header(frame.len()));
            out.extend_from_slice(frame);
        });
        if out.is_empty() {
            continue;
        }
        if let Err(e) = send_all(&connection.stream, &out) {
            if !connection.is_closed() {
                tracing::info!(port = %connection.label, error = %e, "write failed; closing the connection");
            }
            break;
        }
    }
    connection.close();
    // Before the peer half, as in the reader (see `Reader::run`).
    drop(connection);
    drop(receiver);
}

/// `write_all` with `MSG_NOSIGNAL`: a client that hung up must cost its connection, not
/// the whole process (a program embedding the port may not ignore `SIGPIPE`).
fn send_all(stream: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::net::send(stream, bytes, rustix::net::SendFlags::NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::CreateOptions;
    use crate::wire::stream::LENGTH_PREFIX;
    use std::io::Write;
    use std::time::Instant;

    fn frame(dst: MacAddress, src: MacAddress, fill: u8) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&[0x88, 0xb5]);
        f.resize(60, fill);
        f
    }

    fn read_frame(stream: &mut UnixStream) -> Vec<u8> {
        let mut prefix = [0u8; LENGTH_PREFIX];
        stream.read_exact(&mut prefix).expect("length prefix");
        let mut f = vec![0; u32::from_be_bytes(prefix) as usize];
        stream.read_exact(&mut f).expect("frame");
        f
    }

    /// The port in-process: a frame from a library peer reaches a stream client, the
    /// client's reply comes back and its MAC is published, and stopping frees the slot
    /// and the socket file.
    #[test]
    fn stream_client_talks_with_a_library_peer_and_stop_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let network = Network::create(dir.path(), "t", CreateOptions::default()).unwrap();
        let path = dir.path().join("s.sock");
        let port = StreamPort::bind(
            Network::open(dir.path(), "t").unwrap(),
            &path,
            StreamOptions::default(),
        )
        .unwrap();
        let stop = Doorbell::new().unwrap();
        std::thread::scope(|scope| {
            let server = scope.spawn(|| port.serve(&stop));
            let mut client = UnixStream::connect(&path).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let guest = MacAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
            let mut peer = network.join(JoinOptions::default()).unwrap();
            // The client speaks first, so the port learns its MAC.
            let hello = frame(peer.mac(), guest, 7);
            client.write_all(&encode_header(hello.len())).unwrap();
            client.write_all(&hello).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut got = Vec::new();
            while got.is_empty() && Instant::now() < deadline {
                peer.wait(Duration::from_millis(100));
                peer.receive(8, |f| got.push(f.to_vec()));
            }
            assert_eq!(got, vec![hello]);
            let status = network.status();
            assert!(status.peers.iter().any(|p| p.mac == guest));
            // A reply to the published MAC reaches the client.
            let reply = frame(guest, peer.mac(), 9);
            peer.send(&reply);
            assert_eq!(read_frame(&mut client), reply);
            stop.ring();
            server.join().unwrap().unwrap();
            let left: Vec<_> = network.status().peers.iter().map(|p| p.slot).collect();
            assert_eq!(left, vec![peer.index()], "only the library peer is left");
        });
        assert!(!path.exists(), "the socket file is removed on exit");
    }
}
