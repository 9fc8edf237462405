//! The vhost-user port: virtual machines as guests, through their own virtio-net driver.
//!
//! A VMM that speaks vhost-user (QEMU's `-netdev vhost-user`, cloud-hypervisor's
//! `--net vhost_user=true`) keeps the virtio-net device model but hands its data path to
//! another process: over a unix socket it shares the guest's memory (memfds) and, per
//! virtqueue, the ring addresses and two eventfds — *kick* (the guest added buffers) and
//! *call* (we used some; interrupt the guest). This port is that other process. Each
//! socket serves one VM, and each VM is one peer of the network: frames go from the
//! guest's transmit rings straight into receivers' rings, and from our ring straight into
//! the guest's receive buffers; between two VMs of one port process, straight from one
//! guest's frame into the other's buffers (see `engine`). No kernel, no TAP, no bridge on
//! the way.
//!
//! **Layers.** [`crate::wire::vhost_user`] parses messages (pure bytes); `memory` maps
//! the guest's regions and translates the frontend's addresses; `datapath` moves frames
//! between virtqueues and the network, checking every descriptor, and `vring` is a
//! virtqueue as the port keeps it between rounds; `connection` is the
//! message loop of one frontend, `requests` its message handler (one method per request)
//! and `refusal` the reasons it refuses one; `engine` is the data path of the whole port
//! and `rx` the receiving half of each of its lanes. Connections and the engine meet in
//! `state` (a connection's queues, guest memory and negotiation), never in each other;
//! `status` is what `guestnet status` shows of a socket, its counters included. `split`
//! walks the rings themselves (found once per round, every entry and descriptor read with
//! one checked load), `regions` copies to and from the guest's buffers; `virtio-queue`'s
//! `Queue` keeps a ring's addresses and indices. Guest memory is mapped and found through
//! `vm-memory`; the data path's loads, stores and copies in it go through
//! [`crate::shm::guest::GuestSpan`] (one bounds check each, where `vm-memory`'s slices
//! made several), so this port holds no `unsafe`.
//!
//! **Threads.** One *engine* thread moves the frames of every VM the process serves, run to
//! completion: per VM, a budgeted round of each transmit queue goes to the network as one
//! batch, then the peer's ring goes into the guest's receive queues; each queue's used
//! index moves, and the guest is signalled (if it asked to be), once per round. While
//! frames flow the engine polls, with the guests told not to kick, and makes no system
//! call of its own; after 100 µs without a frame it turns kicks back on, looks once more,
//! and sleeps in one `poll` on every kick eventfd, so an idle port costs nothing. Beside
//! it, per VM, a *connection* thread sleeps on the socket and answers messages, and a
//! *ring watch* sleeps on the peer's ring while the engine sleeps and wakes it when frames
//! arrive; under load neither runs. When the guest has no buffers posted, its lane keeps
//! the frames it took (at most one round) and the engine waits for the receive queue's
//! kick instead; frames behind those stay in the network's ring, where senders count them
//! as `ring_full` once it fills. While no receive queue runs (before the driver loaded,
//! after a reset) the peer's link is down, so senders count `link_down` rather than
//! filling a ring nobody reads.
//!
//! **Negotiation.** QEMU sends `SET_VRING_ENABLE` before `SET_FEATURES`; this handler
//! takes it whenever it comes, since `PROTOCOL_FEATURES` is always offered (QEMU
//! refuses a backend without it). The MAC is QEMU's business (config space), so the peer
//! publishes `--mac` or learns the guest's from its first frames. Offloads follow the
//! negotiation: `GUEST_CSUM`/`GUEST_TSO4`/`GUEST_TSO6` become the peer's advertised
//! offloads (super-frames from TAPs and other VMs arrive whole), `CSUM`/`HOST_TSO*` let the
//! guest send them. `IN_ORDER` is offered because every queue's buffers are used in the
//! order the guest made them available (bad chains included): a driver that takes it, as
//! DPDK's virtio-user does by default, then finds its used buffers by position and skips
//! its free-list bookkeeping, which makes it, and a request/response loop through the
//! switch, faster.
//!
//! **A hostile guest.** A chain that points outside guest memory, loops, has descriptors of
//! the wrong direction, or carries a frame too long or with an offload that was not
//! negotiated is returned unused and counted by reason (see [`Counters`]); the frame is
//! dropped. More than [`QUARANTINE_FAULTS`] such chains within a second quarantine the
//! port until that frontend disconnects: its queues are no longer read and frames to it
//! are dropped (and counted) by their senders. A malformed message closes the connection
//! (the byte stream cannot be trusted after it); a well-formed one that makes no sense now
//! is refused and counted by why, and answered with a failure when the frontend asked for
//! a reply. Nothing a frontend sends makes this process panic.
//!
//! **Restarts.** In server mode (the default) each socket takes the next frontend when one
//! disconnects, so a QEMU with `reconnect-ms=` comes back after this process restarts. A
//! frontend that connects while the last one is still served waits up to a second for it
//! to go (a reconnecting QEMU's old connection may be seen to end after its new one
//! knocks) before it is taken for a second VM on the socket and turned away;
//! with `--client` the port connects to a listening QEMU and reconnects after it restarts.
//! Either way the new connection starts from what QEMU tells it (`SET_VRING_BASE`), and the
//! guest keeps running.

mod connection;
pub mod datapath;
mod engine;
mod memory;
pub mod mock;
mod refusal;
mod regions;
mod requests;
mod rx;
pub mod split;
mod state;
mod status;
mod vring;

use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::network::{JoinOptions, Network, PortKind};
use crate::ports::socket::{Doorbell, PortError, SocketPath, SocketType, check_mac, io_error};
use crate::wire::MacAddress;
use engine::Engine;
use state::{Info, Socket};

pub use datapath::{MAX_QUEUE_SIZE, feature};

/// The `tracing` target of the warning that a frontend's guest memory is not sealed against
/// shrinking (once per connection), so that a filter can pick it out: `guestnet bench
/// --vhost-user` leaves it out, since DPDK's frontends never seal theirs and the run's
/// memory is its own.
pub const UNSEALED_MEMORY: &str = "guestnet::unsealed_memory";
pub use memory::MAX_MEM_SLOTS;
pub use state::QUARANTINE_FAULTS;
pub use status::{
    CounterValues, Counters, QueueCounters, QueueFrames, RefusalCounterValues, RefusalCounters,
    SocketStatus, State,
};

/// Most queue pairs a port offers.
pub const MAX_QUEUE_PAIRS: u16 = 16;

/// How often a client retries connecting.
const CONNECT_RETRY: Duration = Duration::from_millis(500);

/// How the port runs.
#[derive(Debug, Clone)]
pub struct VhostUserOptions {
    /// One socket per VM.
    pub sockets: Vec<PathBuf>,
    /// MACs to publish, the i-th for the i-th socket; the others learn their guest's.
    pub macs: Vec<MacAddress>,
    /// Queue pairs offered (MQ when more than one).
    pub queue_pairs: u16,
    /// Connect to listening frontends instead of listening.
    pub client: bool,
    /// Offer checksum and segmentation offloads.
    pub offload: bool,
    /// What the port enforces for its guests (`--lock-mac`, `--isolated`).
    pub policy: crate::ports::policy::PortPolicy,
    /// Which receive queue a frame from another VM of the port takes (`--steering`).
    pub steering: Steering,
}

/// With several queue pairs: which of a guest's receive queues a frame sent straight from
/// another VM served by the same port goes to. (Frames that come through the network's
/// ring, from other processes, carry no queue and always go by their flow.) Either way a
/// queue takes a transmit queue's or a flow's frames in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Steering {
    /// The queue of the same number as the transmit queue it was sent on (modulo the
    /// receiving guest's count), as DPDK's forwarding and OVS-DPDK's default steering do:
    /// a transmit batch goes to one receive queue. A guest's driver keeps a flow on one
    /// transmit queue (Linux picks it by the sending CPU), so flows stay in order, and
    /// spread over the receiver's queues as the sender's CPUs do.
    #[default]
    Queue,
    /// The queue its flow hashes to (addresses and ports, see
    /// [`crate::wire::flow::flow_hash`]), as Linux's TUN picks one: a single sending CPU's
    /// flows spread too, but every transmit batch may touch every receive queue, which
    /// costs the switch a quarter of its rate with two pairs.
    Flow,
}

impl Steering {
    /// Its name as `--steering` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Steering::Queue => "queue",
            Steering::Flow => "flow",
        }
    }
}

/// Reads the sockets' status from another thread (for the status file).
#[derive(Debug, Clone)]
pub struct StatusHandle {
    sockets: Vec<Arc<Socket>>,
    queue_pairs: u16,
    changed: Arc<Doorbell>,
}

impl StatusHandle {
    /// Every socket's status, in command-line order.
    pub fn status(&self) -> Vec<SocketStatus> {
        self.sockets
            .iter()
            .map(|socket| socket.status(self.queue_pairs))
            .collect()
    }

    /// Sleeps until a socket's state changes or `timeout` passes.
    pub fn wait_for_change(&self, timeout: Duration) {
        if self.changed.wait(timeout) {
            self.changed.drain();
        }
    }
}

/// How a socket reaches its frontend.
#[derive(Debug)]
enum Endpoint {
    /// Listening (server mode).
    Listen {
        listener: UnixListener,
        /// Removes the socket file when the port ends.
        _path: SocketPath,
    },
    /// Connecting to a frontend that listens.
    Connect,
}

/// A vhost-user backend serving one VM per socket.
#[derive(Debug)]
pub struct VhostUserPort {
    sockets: Vec<(Arc<Socket>, Endpoint)>,
    options: VhostUserOptions,
    changed: Arc<Doorbell>,
}

/// What one frontend connection needs from the port.
struct Serving<'e, 'a> {
    network: &'a Network,
    socket: &'a Socket,
    options: &'a VhostUserOptions,
    /// The port's data path.
    engine: &'e Engine<'a>,
}

impl VhostUserPort {
    /// Opens the port: in server mode, binds every socket (replacing stale socket files).
    pub fn open(options: VhostUserOptions) -> Result<VhostUserPort, PortError> {
        let invalid = |message: String| {
            crate::ports::socket::io_error(message)(std::io::Error::from(
                std::io::ErrorKind::InvalidInput,
            ))
        };
        if options.sockets.is_empty() {
            return Err(invalid("no --socket given".into()));
        }
        if options.macs.len() > options.sockets.len() {
            return Err(invalid(format!(
                "{} MACs for {} sockets",
                options.macs.len(),
                options.sockets.len()
            )));
        }
        if options.queue_pairs == 0 || options.queue_pairs > MAX_QUEUE_PAIRS {
            return Err(invalid(format!(
                "--queues must be 1 to {MAX_QUEUE_PAIRS}, not {}",
                options.queue_pairs
            )));
        }
        for mac in &options.macs {
            check_mac(Some(*mac))?;
        }
        let changed = Arc::new(Doorbell::new().map_err(io_error("create a doorbell"))?);
        let mut sockets = Vec::new();
        for (i, path) in options.sockets.iter().enumerate() {
            let endpoint = if options.client {
                Endpoint::Connect
            } else {
                SocketPath::clear_stale(path, SocketType::Stream)?;
                let listener = UnixListener::bind(path)
                    .map_err(io_error(format!("listen on {}", path.display())))?;
                Endpoint::Listen {
                    listener,
                    _path: SocketPath::bound(path, SocketType::Stream),
                }
            };
            let socket = Socket {
                path: path.clone(),
                mac: options.macs.get(i).copied(),
                info: Mutex::new(Info::LISTENING),
                counters: Counters::default(),
                queues: (0..options.queue_pairs)
                    .map(|_| QueueCounters::default())
                    .collect(),
                changed: Arc::clone(&changed),
            };
            sockets.push((Arc::new(socket), endpoint));
        }
        Ok(VhostUserPort {
            sockets,
            options,
            changed,
        })
    }

    /// A handle for reading the status from another thread.
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle {
            sockets: self.sockets.iter().map(|(s, _)| Arc::clone(s)).collect(),
            queue_pairs: self.options.queue_pairs,
            changed: Arc::clone(&self.changed),
        }
    }

    /// The socket paths, in order.
    pub fn socket_paths(&self) -> impl Iterator<Item = &Path> {
        self.sockets.iter().map(|(s, _)| s.path.as_path())
    }

    /// Serves every socket on `network` until `stop` rings.
    pub fn serve(&self, network: &Network, stop: &Doorbell) -> Result<(), PortError> {
        let engine = Engine::new(self.options.steering)
            .map_err(io_error("create the data path's doorbell"))?;
        let engine = &engine;
        std::thread::scope(|scope| {
            scope.spawn(|| engine.run(stop));
            for (socket, endpoint) in &self.sockets {
                let serving = Serving {
                    network,
                    socket,
                    options: &self.options,
                    engine,
                };
                scope.spawn(move || match endpoint {
                    Endpoint::Listen { listener, .. } => serving.listen(listener, stop),
                    Endpoint::Connect => serving.connect(stop),
                });
            }
        });
        Ok(())
    }
}

impl Serving<'_, '_> {
    /// Takes one frontend after another on `listener`.
    fn listen(&self, listener: &UnixListener, stop: &Doorbell) {
        // A frontend that knocked while the last one was served, and waited for it.
        let mut next: Option<UnixStream> = None;
        while !stop.is_rung() {
            if let Some(stream) = next.take() {
                next = self.serve_frontend(stream, stop, Some(listener));
                continue;
            }
            match wait_readable(listener, stop) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::error!(socket = %self.socket.path.display(), error = %e, "poll failed");
                    return;
                }
            }
            match listener.accept() {
                Ok((stream, _)) => next = Some(stream),
                Err(e) => {
                    tracing::warn!(socket = %self.socket.path.display(), error = %e, "accept failed");
                    if stop.wait(CONNECT_RETRY) {
                        return;
                    }
                }
            }
        }
    }

    /// Connects to a listening frontend, again after each disconnect.
    fn connect(&self, stop: &Doorbell) {
        while !stop.is_rung() {
            match UnixStream::connect(&self.socket.path) {
                Ok(stream) => {
                    // A client has no listener, so nobody waits behind its frontend.
                    let _ = self.serve_frontend(stream, stop, None);
                }
                Err(e) => {
                    tracing::debug!(socket = %self.socket.path.display(), error = %e, "frontend not there yet");
                    if stop.wait(CONNECT_RETRY) {
                        return;
                    }
                }
            }
        }
    }

    /// Serves one connected frontend as one peer, until it goes or `stop` rings; returns
    /// the frontend that knocked meanwhile and waited for it, if any.
    fn serve_frontend(
        &self,
        stream: UnixStream,
        stop: &Doorbell,
        listener: Option<&UnixListener>,
    ) -> Option<UnixStream> {
        let socket = self.socket;
        Counters::add(&socket.counters.connections, 1);
        let label = format!("vhost-user {}", socket.path.display());
        let peer = match self.network.join(JoinOptions {
            kind: PortKind::VhostUser,
            mac: socket.mac,
            label: label.clone(),
            vlans: self.options.policy.vlans,
            ..JoinOptions::default()
        }) {
            Ok(peer) => peer,
            Err(e) => {
                tracing::error!(socket = %socket.path.display(), error = %e, "cannot join the network; closing the connection");
                return None;
            }
        };
        if let Err(e) = self.options.policy.apply(&peer.control()) {
            tracing::error!(socket = %socket.path.display(), error = %e, "cannot apply the port's policy to the peer; closing the connection");
            return None;
        }
        let slot = peer.index();
        tracing::info!(socket = %socket.path.display(), slot, "frontend connected");
        socket.update(|info| {
            info.slot = Some(slot);
            info.state = State::Connected;
        });
        let next = connection::run(
            connection::Setup {
                stream,
                peer,
                socket,
                queue_pairs: self.options.queue_pairs,
                offload: self.options.offload,
                learn_mac: socket.mac.is_none(),
                max_frame: self.network.max_frame_len(),
                label,
            },
            self.engine,
            stop,
            listener,
        );
        tracing::info!(socket = %socket.path.display(), slot, "frontend gone");
        socket.update(|info| {
            *info = Info::LISTENING;
        });
        next
    }
}

/// Sleeps until `source` is readable (true) or `stop` rings (false).
fn wait_readable(source: &impl AsFd, stop: &Doorbell) -> std::io::Result<bool> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Ready {
        Stop,
        Source,
    }
    let ready = crate::ports::wait::first_ready(
        [(stop.as_fd(), Ready::Stop), (source.as_fd(), Ready::Source)],
        None,
    )?;
    Ok(ready == Some(Ready::Source))
}
