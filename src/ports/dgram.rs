//! The datagram port: QEMU's `-netdev dgram` on a unix datagram socket.
//!
//! QEMU sends one bare Ethernet frame per datagram from the socket it bound at
//! `local.path`, to the port's socket at `remote.path`, and expects frames back at its own
//! address. There is no connection: the port tells its clients apart by the address each
//! datagram comes from, and each distinct address becomes a peer on its first datagram.
//!
//! **Into the network.** One thread (the caller of [`DgramPort::serve`]) waits for
//! datagrams, then takes every datagram already queued (up to [`RECEIVE_BATCH`]) without
//! waiting again, and sends each client's frames of that round as one batch, in the order
//! they came. Frames are checked by the network as any peer's are; a datagram longer than
//! the largest frame is counted as invalid here, since the socket cut it short.
//!
//! **Out of the network.** Each client has a thread that sleeps on its peer's ring and
//! sends what arrives to the client's address. A client that stops reading fills its
//! socket queue; the send then waits (at most [`WRITER_WAIT`] at a time, to notice a stop)
//! and the client's ring fills behind it, so senders count `ring_full` and nobody else
//! waits. A client whose address is gone (`ECONNREFUSED`, `ENOENT`) leaves: its thread
//! ends and rings a bell, and the serving thread drops the peer, freeing the slot.
//!
//! **Senders that cannot be answered.** A datagram from an unbound socket carries no
//! address to reply to, so its sender cannot be a peer: it could send but never receive,
//! not even an ARP reply. Such frames are refused, and they are counted on one peer that
//! stands for all of them, labelled `dgram unnamed`, which the port quarantines: the
//! network itself then refuses everything it sends (`tx_quarantined`) and delivers
//! nothing to it; copies other peers flood or broadcast towards it are counted as
//! quarantined drops on their side, which is true (one destination refused them) but
//! noisy. It is joined on the first such datagram and stays until the port stops.
//! A sender the network refuses (it is full, or `--mac` is taken) has no peer to count
//! its frames on; they are dropped with a warning.
//! A client that vanishes without ever being sent anything keeps its peer until the port
//! stops, since only a failed send reveals that it is gone.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{SendFlags, SocketAddrUnix};

use crate::network::counters::DropReason;
use crate::network::{JoinOptions, Network, PortKind, monotonic_ns};
use crate::network::{Receiver, Sender};
use crate::wire::MacAddress;

use super::batch::{DatagramBatch, FrameBatch};
use super::doorbell::Doorbell;
use super::error::{PortError, io_error};
use super::label::label;
use super::mac::{MacLearner, check_mac};
use super::socket::{SocketPath, SocketType};
use super::wait;

/// Most datagrams taken from the socket per round.
pub const RECEIVE_BATCH: usize = 64;

/// Longest a client's thread waits, in its ring or in a blocked send, before it looks
/// whether the port is stopping (see [`stream::WRITER_WAIT`](super::stream::WRITER_WAIT)).
pub const WRITER_WAIT: Duration = super::stream::WRITER_WAIT;

/// Frames a client's thread takes from its ring per round.
const WRITE_BUDGET: usize = 64;

/// A client the network refused (full, MAC in use) is not asked again sooner than this,
/// so that its datagrams do not each take the network's control lock.
const REFUSAL_BACKOFF_NS: u64 = 1_000_000_000;

/// Bound on remembered refusals (a flood of distinct addresses must not grow memory).
const REFUSALS_LIMIT: usize = 1024;

/// Options of a datagram port.
#[derive(Debug, Clone, Default)]
pub struct DgramOptions {
    /// MAC to publish for the client; by default it is learned from its first frame.
    /// Only one client at a time can publish a given MAC.
    pub mac: Option<MacAddress>,
}

/// A datagram port bound to its socket, ready to serve.
#[derive(Debug)]
pub struct DgramPort {
    network: Network,
    socket: UnixDatagram,
    path: SocketPath,
    options: DgramOptions,
}

/// One client: the sending half of its peer (the receiving half lives on its thread).
#[derive(Debug)]
struct Client {
    sender: Sender,
    learner: MacLearner,
    label: String,
    /// Set by the client's thread when the address stopped answering.
    gone: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What woke the serving thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The stop bell rang.
    Stop,
    /// A client's thread found its address gone.
    ClientGone,
    /// Datagrams wait.
    Datagrams,
}

impl DgramPort {
    /// Binds a datagram socket at `path`, replacing a stale socket file nobody is bound
    /// to; fails if a program is bound there or the path is not a socket.
    pub fn bind(
        network: Network,
        path: &Path,
        options: DgramOptions,
    ) -> Result<DgramPort, PortError> {
        check_mac(options.mac)?;
        SocketPath::clear_stale(path, SocketType::Datagram)?;
        let socket =
            UnixDatagram::bind(path).map_err(io_error(format!("bind {}", path.display())))?;
        let path = SocketPath::bound(path, SocketType::Datagram);
        // A send to a client whose queue is full waits at most this long, then the client's
        // thread looks whether the port is stopping and tries again.
        socket
            .set_write_timeout(Some(WRITER_WAIT))
            .map_err(io_error("set the send timeout"))?;
        Ok(DgramPort {
            network,
            socket,
            path,
            options,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        self.path.path()
    }

    /// Serves clients until `stop` rings, then stops their threads; every peer has left
    /// when this returns.
    pub fn serve(self, stop: &Doorbell) -> Result<(), PortError> {
        let mut server = Server {
            clients: Clients {
                port: &self,
                by_address: HashMap::new(),
                refusals: HashMap::new(),
                unanswerable: None,
                stopping: Arc::new(AtomicBool::new(false)),
                client_gone: Arc::new(Doorbell::new().map_err(io_error("create a pipe"))?),
            },
            round: DatagramBatch::new(RECEIVE_BATCH, self.network.max_frame_len()),
            order: Vec::with_capacity(RECEIVE_BATCH),
            batch: FrameBatch::default(),
        };
        let result = loop {
            match wait_for_event(&self.socket, stop, &server.clients.client_gone) {
                Ok(Event::Stop) => break Ok(()),
                Ok(Event::ClientGone) => server.clients.prune(),
                Ok(Event::Datagrams) => server.receive_round(),
                Err(e) => break Err(io_error("wait for datagrams")(e)),
            }
        };
        server.clients.stop();
        tracing::info!(path = %self.path().display(), "datagram port stopped");
        result
    }
}

/// The serving thread's state: the clients, and the datagrams of the current round.
struct Server<'a> {
    clients: Clients<'a>,
    /// The round's datagrams, one maximal frame each, with their sender, or `None` for
    /// one that cannot be answered (unbound).
    round: DatagramBatch<Option<SocketAddrUnix>>,
    /// Indices into the round's datagrams, grouped by sender.
    order: Vec<usize>,
    batch: FrameBatch,
}

/// The port's clients, by address.
struct Clients<'a> {
    port: &'a DgramPort,
    by_address: HashMap<SocketAddrUnix, Client>,
    /// Clients the network refused, with when.
    refusals: HashMap<SocketAddrUnix, u64>,
    /// The peer that counts frames from senders that cannot be answered.
    unanswerable: Option<Sender>,
    stopping: Arc<AtomicBool>,
    client_gone: Arc<Doorbell>,
}

impl Server<'_> {
    /// Takes the datagrams waiting (without waiting for more) and sends them on, one
    /// batch per client.
    fn receive_round(&mut self) {
        self.round.receive(&self.clients.port.socket, |from| {
            Some(
                from.and_then(|a| SocketAddrUnix::try_from(a).ok())
                    .filter(|a| !a.is_unnamed()),
            )
        });
        // Group by sender; the sort is stable, so each sender's frames keep their order.
        self.order.clear();
        let datagrams = self.round.datagrams();
        self.order.extend(0..datagrams.len());
        self.order
            .sort_by(|&a, &b| datagrams[a].from.cmp(&datagrams[b].from));
        let mut first = 0;
        while first < self.order.len() {
            let datagrams = self.round.datagrams();
            let from = datagrams[self.order[first]].from.clone();
            let mut last = first + 1;
            while last < self.order.len() && datagrams[self.order[last]].from == from {
                last += 1;
            }
            self.send_group(from, first..last);
            first = last;
        }
    }

    /// Sends one sender's datagrams of the round (`order[range]`) as one batch.
    fn send_group(&mut self, from: Option<SocketAddrUnix>, range: std::ops::Range<usize>) {
        let Server {
            clients,
            round,
            order,
            batch,
        } = self;
        let Some((sender, mut learner, label)) = clients.sender_for(from) else {
            return;
        };
        batch.clear();
        let mut counted = false;
        for &index in &order[range] {
            let datagram = &round.datagrams()[index];
            if datagram.oversize {
                tracing::debug!(port = %label, "dropping a datagram longer than the largest frame");
                sender.count_drop(DropReason::Invalid);
                counted = true;
                continue;
            }
            let frame = round.bytes(datagram);
            if let Some(learner) = learner.as_deref_mut() {
                learner.observe(|| sender.control(), frame, label);
            }
            batch.push(frame);
        }
        if !batch.is_empty() {
            sender.send_batch(batch.iter());
        } else if counted {
            sender.flush();
        }
    }
}

impl Clients<'_> {
    /// The sending half for datagrams from `from`, joining a peer for a new client.
    fn sender_for(
        &mut self,
        from: Option<SocketAddrUnix>,
    ) -> Option<(&mut Sender, Option<&mut MacLearner>, &str)> {
        let Some(address) = from else {
            let sender = self.unanswerable_sender()?;
            return Some((sender, None, UNANSWERABLE_LABEL));
        };
        if self
            .by_address
            .get(&address)
            .is_some_and(|c| c.gone.load(Ordering::Relaxed))
        {
            // Its thread found the address gone, yet here it is again (a restarted VM
            // bound the same path): start afresh with a new peer.
            self.remove_client(&address);
        }
        if !self.by_address.contains_key(&address) {
            let client = self.admit(&address)?;
            self.by_address.insert(address.clone(), client);
        }
        let client = self.by_address.get_mut(&address)?;
        Some((
            &mut client.sender,
            Some(&mut client.learner),
            client.label.as_str(),
        ))
    }

    /// Makes a new sender a peer with a thread of its own; refusals are logged, and not
    /// retried for a while.
    fn admit(&mut self, address: &SocketAddrUnix) -> Option<Client> {
        let now = monotonic_ns();
        if let Some(&when) = self.refusals.get(address) {
            if now.saturating_sub(when) < REFUSAL_BACKOFF_NS {
                return None;
            }
            self.refusals.remove(address);
        }
        let name = label("dgram ", &describe(address));
        let options = JoinOptions {
            kind: PortKind::Dgram,
            mac: self.port.options.mac,
            label: name.clone(),
            ..JoinOptions::default()
        };
        let peer = match self.port.network.join(options) {
            Ok(peer) => peer,
            Err(e) => {
                tracing::warn!(port = %name, error = %e, "refusing a sender; its datagrams are dropped");
                if self.refusals.len() >= REFUSALS_LIMIT {
                    self.refusals.clear();
                }
                self.refusals.insert(address.clone(), now);
                return None;
            }
        };
        let socket = match self.port.socket.try_clone() {
            Ok(socket) => socket,
            Err(e) => {
                tracing::warn!(port = %name, error = %e, "cannot serve a sender");
                return None;
            }
        };
        tracing::info!(port = %name, slot = peer.index(), mac = %peer.mac(), "new sender");
        let (sender, receiver) = peer.split();
        let gone = Arc::new(AtomicBool::new(false));
        let answerer = Answerer {
            receiver,
            socket,
            address: address.clone(),
            label: name.clone(),
            gone: Arc::clone(&gone),
            stopping: Arc::clone(&self.stopping),
            client_gone: Arc::clone(&self.client_gone),
        };
        let thread = std::thread::Builder::new()
            .name("dgram-client".into())
            .spawn(move || answerer.run());
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                tracing::warn!(port = %name, error = %e, "cannot start a thread for a sender");
                return None;
            }
        };
        Some(Client {
            sender,
            learner: MacLearner::new(self.port.options.mac.is_some()),
            label: name,
            gone,
            thread: Some(thread),
        })
    }

    /// The peer standing for unbound senders, joined (and quarantined) on first use.
    fn unanswerable_sender(&mut self) -> Option<&mut Sender> {
        if self.unanswerable.is_none() {
            tracing::warn!(
                path = %self.port.path().display(),
                "a sender without an address (an unbound socket) cannot be answered; its frames are dropped and counted on the peer labelled {UNANSWERABLE_LABEL:?}"
            );
            let options = JoinOptions {
                kind: PortKind::Dgram,
                all_multicast: false,
                label: UNANSWERABLE_LABEL.to_string(),
                ..JoinOptions::default()
            };
            let joined = self.port.network.join(options).and_then(|peer| {
                peer.control().set_quarantined(true)?;
                Ok(peer)
            });
            match joined {
                Ok(peer) => self.unanswerable = Some(peer.split().0),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot count frames of unbound senders");
                    return None;
                }
            }
        }
        self.unanswerable.as_mut()
    }

    /// Lets go of clients whose address went away.
    fn prune(&mut self) {
        self.client_gone.drain();
        let gone: Vec<SocketAddrUnix> = self
            .by_address
            .iter()
            .filter(|(_, c)| c.gone.load(Ordering::Relaxed))
            .map(|(a, _)| a.clone())
            .collect();
        for address in gone {
            self.remove_client(&address);
        }
    }

    fn remove_client(&mut self, address: &SocketAddrUnix) {
        if let Some(mut client) = self.by_address.remove(address) {
            tracing::info!(port = %client.label, "sender went away; its peer leaves");
            client.join_thread();
        }
    }

    /// Stops every client's thread; the peers leave as their halves drop.
    fn stop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        for (_, mut client) in self.by_address.drain() {
            client.join_thread();
        }
        self.unanswerable = None;
    }
}

impl Client {
    fn join_thread(&mut self) {
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(port = %self.label, "a sender's thread panicked");
        }
    }
}

/// Label of the peer that counts frames from unbound senders.
pub const UNANSWERABLE_LABEL: &str = "dgram unnamed";

/// An address for labels and logs: its path, or `@name` for an abstract address.
fn describe(address: &SocketAddrUnix) -> String {
    if let Some(path) = address.path_bytes() {
        String::from_utf8_lossy(path).into_owned()
    } else if let Some(name) = address.abstract_name() {
        format!("@{}", String::from_utf8_lossy(name))
    } else {
        "unnamed".to_string()
    }
}

fn wait_for_event(
    socket: &UnixDatagram,
    stop: &Doorbell,
    client_gone: &Doorbell,
) -> std::io::Result<Event> {
    let sources = [
        (stop.as_fd(), Event::Stop),
        (client_gone.as_fd(), Event::ClientGone),
        (socket.as_fd(), Event::Datagrams),
    ];
    loop {
        if let Some(event) = wait::first_ready(sources, None)? {
            return Ok(event);
        }
    }
}

/// A client's thread: network → its address.
struct Answerer {
    receiver: Receiver,
    socket: UnixDatagram,
    address: SocketAddrUnix,
    label: String,
    gone: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    client_gone: Arc<Doorbell>,
}

/// What became of one frame sent to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Sent,
    /// The address no longer answers.
    Gone,
    /// The port is stopping.
    Stopping,
}

impl Answerer {
    fn run(mut self) {
        let mut batch = FrameBatch::default();
        while !self.stopping.load(Ordering::Relaxed) {
            if !self.receiver.wait(WRITER_WAIT) {
                continue;
            }
            batch.clear();
            self.receiver
                .receive(WRITE_BUDGET, |frame| batch.push(frame));
            for frame in batch.iter() {
                match self.deliver(frame) {
                    Delivery::Sent => {}
                    Delivery::Stopping => return,
                    Delivery::Gone => {
                        self.gone.store(true, Ordering::Relaxed);
                        self.client_gone.ring();
                        return;
                    }
                }
            }
        }
    }

    fn deliver(&self, frame: &[u8]) -> Delivery {
        // Bounded by the stop flag: each blocked attempt lasts at most WRITER_WAIT.
        loop {
            match rustix::net::sendto(&self.socket, frame, SendFlags::NOSIGNAL, &self.address) {
                Ok(_) => return Delivery::Sent,
                // The send timed out on a full queue (the client is not reading), or a
                // signal interrupted it: try again unless the port is stopping.
                Err(Errno::AGAIN | Errno::INTR) => {
                    if self.stopping.load(Ordering::Relaxed) {
                        return Delivery::Stopping;
                    }
                }
                Err(Errno::CONNREFUSED | Errno::NOENT) => return Delivery::Gone,
                Err(e) => {
                    tracing::warn!(port = %self.label, error = %e, "cannot send to the client; its peer leaves");
                    return Delivery::Gone;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_described_by_path_or_abstract_name() {
        let path = SocketAddrUnix::new("/tmp/vm0.sock").unwrap();
        assert_eq!(describe(&path), "/tmp/vm0.sock");
        let name = SocketAddrUnix::new_abstract_name(b"qemu").unwrap();
        assert_eq!(describe(&name), "@qemu");
    }
}
