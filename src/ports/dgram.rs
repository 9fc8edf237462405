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
//! its frames on; they are dropped with a warning and counted on the port
//! ([`DgramCounters`]).
//!
//! **How many, and for how long.** Nothing ends a datagram sender's stay on its own, so
//! the port bounds both (the sender table, `dgram/senders.rs`): it serves at most [`DgramOptions::max_clients`]
//! senders at once (a further one's datagrams are dropped and counted,
//! `refused_over_limit`), and a sender not heard from for [`DgramOptions::idle_timeout`]
//! leaves, freeing its slot, as does one whose address stops answering; either comes back
//! as a new peer with its next datagram. The serving thread sleeps until the next sender is
//! due to expire, so an idle port still costs nothing.

mod answerer;
mod senders;

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::net::SocketAddrUnix;

use crate::network::Sender;
use crate::network::counters::DropReason;
use crate::network::{JoinOptions, Network, PortKind, monotonic_ns};
use crate::wire::MacAddress;

use super::batch::{DatagramBatch, FrameBatch};
use super::counters::counters;
use super::doorbell::Doorbell;
use super::error::{PortError, io_error};
use super::label::label;
use super::mac::{MacLearner, check_mac};
use super::socket::{SocketPath, SocketType};
use super::wait;
use answerer::Answerer;
pub use answerer::WRITER_WAIT;
use senders::SenderTable;

/// Most datagrams taken from the socket per round.
pub const RECEIVE_BATCH: usize = 64;

/// A client the network refused (full, MAC in use) is not asked again sooner than this,
/// so that its datagrams do not each take the network's control lock.
const REFUSAL_BACKOFF_NS: u64 = 1_000_000_000;

/// Bound on remembered refusals (a flood of distinct addresses must not grow memory).
const REFUSALS_LIMIT: usize = 1024;

/// Senders a datagram port serves at once unless told otherwise (as for the stream port,
/// [`stream::DEFAULT_MAX_CLIENTS`](super::stream::DEFAULT_MAX_CLIENTS)).
pub const DEFAULT_MAX_CLIENTS: usize = super::stream::DEFAULT_MAX_CLIENTS;

/// How long a sender may stay silent before it leaves, unless told otherwise. A running
/// guest is rarely silent that long (ARP and neighbour refreshes, DHCP renewals); one that
/// is, comes back with its next datagram.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Options of a datagram port.
#[derive(Debug, Clone)]
pub struct DgramOptions {
    /// MAC to publish for the client; by default it is learned from its first frame.
    /// Only one client at a time can publish a given MAC.
    pub mac: Option<MacAddress>,
    /// Most senders served at once; datagrams from further ones are dropped and counted
    /// (`refused_over_limit`).
    pub max_clients: usize,
    /// A sender not heard from for this long leaves; `None` (or zero): never.
    pub idle_timeout: Option<Duration>,
    /// What the port enforces for its guests (`--lock-mac`, `--isolated`).
    pub policy: crate::ports::policy::PortPolicy,
}

impl Default for DgramOptions {
    fn default() -> Self {
        DgramOptions {
            mac: None,
            max_clients: DEFAULT_MAX_CLIENTS,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            policy: crate::ports::policy::PortPolicy::default(),
        }
    }
}

counters! {
    /// The datagram port's own counters, over all its senders. Frames are counted on each
    /// sender's peer as for any peer; these count what only the port sees, including the
    /// datagrams of senders that have no peer to count them on.
    pub struct DgramCounters;
    /// A copy of [`DgramCounters`].
    pub struct DgramCounterValues;
    /// Senders made peers.
    senders_admitted,
    /// Senders that left after [`DgramOptions::idle_timeout`] without a datagram.
    senders_expired,
    /// Senders that left because their address stopped answering.
    senders_gone,
    /// Datagrams dropped because [`DgramOptions::max_clients`] senders were served
    /// already and theirs was not one of them.
    refused_over_limit,
    /// Datagrams dropped because the network refused their sender a peer (full, or the
    /// `--mac` taken).
    refused_by_network,
    /// Datagrams dropped because the port could not serve their sender (no thread or
    /// socket for it, or no stand-in peer for unbound senders).
    refused_unserved,
}

/// A datagram port bound to its socket, ready to serve.
#[derive(Debug)]
pub struct DgramPort {
    network: Network,
    socket: UnixDatagram,
    path: SocketPath,
    options: DgramOptions,
    counters: Arc<DgramCounters>,
}

/// One client: the sending half of its peer (the receiving half lives on its thread).
#[derive(Debug)]
struct Client {
    sender: Sender,
    learner: MacLearner,
    label: String,
    /// Set by the client's thread when the address stopped answering.
    gone: Arc<AtomicBool>,
    /// Set by the serving thread to end the client's thread (it expired).
    retired: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A dismissed (expired) client whose thread has been told to end but may not have yet.
/// The sending half of its peer is gone already; the thread holds the receiving half, so
/// the peer leaves when the thread ends (within [`WRITER_WAIT`]), whether or not it has
/// been joined yet.
#[derive(Debug)]
struct Retiring {
    address: SocketAddrUnix,
    label: String,
    thread: Option<JoinHandle<()>>,
}

/// Why a sender's datagrams are dropped rather than sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// `max_clients` senders are served already.
    OverLimit,
    /// The network refused it a peer.
    ByNetwork,
    /// The port could not serve it.
    Unserved,
}

/// A refused sender, remembered so that its next datagrams are dropped without asking
/// again (and without logging again) for a while.
#[derive(Debug, Clone, Copy)]
struct Refusal {
    since_ns: u64,
    reason: Refused,
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
    /// A sender is due to expire.
    IdleSenderDue,
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
            counters: Arc::default(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        self.path.path()
    }

    /// The port's counters, to read while it serves.
    pub fn counters(&self) -> Arc<DgramCounters> {
        Arc::clone(&self.counters)
    }

    /// Serves clients until `stop` rings, then stops their threads; every peer has left
    /// when this returns.
    pub fn serve(self, stop: &Doorbell) -> Result<(), PortError> {
        let mut server = Server {
            clients: Clients {
                port: &self,
                senders: SenderTable::new(self.options.max_clients, self.options.idle_timeout),
                retiring: Vec::new(),
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
            // Expiry is looked at on every turn, not only when its deadline wakes the loop:
            // a busy socket would otherwise always win the wait. It walks the senders,
            // which are few (max_clients) next to a round of datagrams.
            let now = monotonic_ns();
            server.clients.expire_idle(now);
            let until_expiry = server
                .clients
                .senders
                .next_expiry_ns()
                .map(|at| Duration::from_nanos(at.saturating_sub(now)));
            let event = wait_for_event(
                &self.socket,
                stop,
                &server.clients.client_gone,
                until_expiry,
            );
            match event {
                Ok(Event::Stop) => break Ok(()),
                Ok(Event::ClientGone) => server.clients.prune(),
                Ok(Event::Datagrams) => server.receive_round(),
                Ok(Event::IdleSenderDue) => {}
                Err(e) => break Err(io_error("wait for datagrams")(e)),
            }
        };
        server.clients.stop();
        tracing::info!(
            path = %self.path().display(),
            counters = ?self.counters.values(),
            "datagram port stopped"
        );
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
    senders: SenderTable<SocketAddrUnix, Client>,
    /// Expired clients whose threads are ending.
    retiring: Vec<Retiring>,
    /// Senders refused, with when and why.
    refusals: HashMap<SocketAddrUnix, Refusal>,
    /// The peer that counts frames from senders that cannot be answered.
    unanswerable: Option<Sender>,
    stopping: Arc<AtomicBool>,
    client_gone: Arc<Doorbell>,
}

impl Server<'_> {
    /// Takes the datagrams waiting (without waiting for more) and sends them on, one
    /// batch per client.
    fn receive_round(&mut self) {
        let now = monotonic_ns();
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
            self.send_group(from, first..last, now);
            first = last;
        }
    }

    /// Sends one sender's datagrams of the round (`order[range]`), heard at `now_ns`, as
    /// one batch.
    fn send_group(
        &mut self,
        from: Option<SocketAddrUnix>,
        range: std::ops::Range<usize>,
        now_ns: u64,
    ) {
        let Server {
            clients,
            round,
            order,
            batch,
        } = self;
        let counters = &clients.port.counters;
        let (sender, mut learner, label) = match clients.sender_for(from, now_ns) {
            Ok(found) => found,
            Err(reason) => {
                let refused = match reason {
                    Refused::OverLimit => &counters.refused_over_limit,
                    Refused::ByNetwork => &counters.refused_by_network,
                    Refused::Unserved => &counters.refused_unserved,
                };
                refused.fetch_add(range.len() as u64, Ordering::Relaxed);
                return;
            }
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
    /// The sending half for datagrams from `from`, heard at `now_ns`, joining a peer for
    /// a new client.
    fn sender_for(
        &mut self,
        from: Option<SocketAddrUnix>,
        now_ns: u64,
    ) -> Result<(&mut Sender, Option<&mut MacLearner>, &str), Refused> {
        let Some(address) = from else {
            let sender = self.unanswerable_sender().ok_or(Refused::Unserved)?;
            return Ok((sender, None, UNANSWERABLE_LABEL));
        };
        if self
            .senders
            .get(&address)
            .is_some_and(|c| c.gone.load(Ordering::Relaxed))
        {
            // Its thread found the address gone, yet here it is again (a restarted VM
            // bound the same path): start afresh with a new peer.
            self.remove_client(&address);
        }
        if self.senders.get(&address).is_none() {
            let client = self.admit(&address, now_ns)?;
            // admit() refuses when the table is full, so this insert succeeds; should it
            // not, the new client leaves again.
            if let Err(client) = self.senders.insert(address.clone(), client, now_ns) {
                self.retire(address, client);
                return Err(Refused::OverLimit);
            }
        }
        let client = self
            .senders
            .heard(&address, now_ns)
            .ok_or(Refused::Unserved)?;
        Ok((
            &mut client.sender,
            Some(&mut client.learner),
            client.label.as_str(),
        ))
    }

    /// Makes a new sender a peer with a thread of its own; refusals are logged and counted,
    /// and not retried for a while.
    fn admit(&mut self, address: &SocketAddrUnix, now: u64) -> Result<Client, Refused> {
        if let Some(&refusal) = self.refusals.get(address) {
            let recent = now.saturating_sub(refusal.since_ns) < REFUSAL_BACKOFF_NS;
            // The network is not asked again for a while (that takes its control lock);
            // a place under the limit is cheap to look for, so it is taken as soon as free.
            let still_refused = match refusal.reason {
                Refused::OverLimit => self.senders.is_full(),
                Refused::ByNetwork | Refused::Unserved => true,
            };
            if recent && still_refused {
                return Err(refusal.reason);
            }
            self.refusals.remove(address);
        }
        let name = label("dgram ", &describe(address));
        if self.senders.is_full() {
            tracing::warn!(
                port = %name,
                served = self.senders.len(),
                max_clients = self.senders.max_senders(),
                "refusing a sender: --max-clients are served; its datagrams are dropped"
            );
            self.remember_refusal(address, now, Refused::OverLimit);
            return Err(Refused::OverLimit);
        }
        // An expired client at this address may still be ending: let it finish, so that
        // its peer has left (and given up its MAC) before the new one joins.
        if let Some(index) = self.retiring.iter().position(|r| &r.address == address) {
            let retiring = self.retiring.swap_remove(index);
            join_thread(retiring.thread, &retiring.label);
        }
        let options = JoinOptions {
            kind: PortKind::Dgram,
            mac: self.port.options.mac,
            label: name.clone(),
            vlans: self.port.options.policy.vlans,
            ..JoinOptions::default()
        };
        let peer = match self.port.network.join(options).and_then(|peer| {
            self.port.options.policy.apply(&peer.control())?;
            Ok(peer)
        }) {
            Ok(peer) => peer,
            Err(e) => {
                tracing::warn!(port = %name, error = %e, "refusing a sender; its datagrams are dropped");
                self.remember_refusal(address, now, Refused::ByNetwork);
                return Err(Refused::ByNetwork);
            }
        };
        let socket = match self.port.socket.try_clone() {
            Ok(socket) => socket,
            Err(e) => {
                tracing::warn!(port = %name, error = %e, "cannot serve a sender");
                self.remember_refusal(address, now, Refused::Unserved);
                return Err(Refused::Unserved);
            }
        };
        tracing::info!(
            port = %name,
            slot = peer.index(),
            mac = %peer.mac(),
            senders = self.senders.len() + 1,
            "new sender"
        );
        let (sender, receiver) = peer.split();
        let gone = Arc::new(AtomicBool::new(false));
        let retired = Arc::new(AtomicBool::new(false));
        let answerer = Answerer {
            receiver,
            socket,
            address: address.clone(),
            label: name.clone(),
            gone: Arc::clone(&gone),
            retired: Arc::clone(&retired),
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
                self.remember_refusal(address, now, Refused::Unserved);
                return Err(Refused::Unserved);
            }
        };
        self.port
            .counters
            .senders_admitted
            .fetch_add(1, Ordering::Relaxed);
        Ok(Client {
            sender,
            learner: MacLearner::new(self.port.options.mac.is_some()),
            label: name,
            gone,
            retired,
            thread: Some(thread),
        })
    }

    fn remember_refusal(&mut self, address: &SocketAddrUnix, now: u64, reason: Refused) {
        // A flood of distinct addresses must not grow memory: forget them all at once.
        if self.refusals.len() >= REFUSALS_LIMIT {
            self.refusals.clear();
        }
        let refusal = Refusal {
            since_ns: now,
            reason,
        };
        self.refusals.insert(address.clone(), refusal);
    }

    /// Lets go of the senders not heard from for the idle timeout at `now`: each one's
    /// thread is told to end, and its peer leaves when it has. Joins the threads of those
    /// expired earlier that have ended.
    fn expire_idle(&mut self, now: u64) {
        for (address, client) in self.senders.expire(now) {
            tracing::info!(
                port = %client.label,
                idle_timeout = ?self.port.options.idle_timeout,
                "sender idle too long; its peer leaves"
            );
            self.port
                .counters
                .senders_expired
                .fetch_add(1, Ordering::Relaxed);
            self.retire(address, client);
        }
        self.join_retired();
    }

    /// Tells a client's thread to end, and lets go of the sending half of its peer now.
    fn retire(&mut self, address: SocketAddrUnix, client: Client) {
        client.retired.store(true, Ordering::Relaxed);
        let Client { label, thread, .. } = client;
        self.retiring.push(Retiring {
            address,
            label,
            thread,
        });
    }

    /// Joins the threads of expired clients that have ended.
    fn join_retired(&mut self) {
        self.retiring.retain_mut(|retiring| {
            let ended = retiring.thread.as_ref().is_none_or(JoinHandle::is_finished);
            if ended {
                join_thread(retiring.thread.take(), &retiring.label);
            }
            !ended
        });
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

    /// Lets go of clients whose address went away, and of expired clients whose threads
    /// have ended.
    fn prune(&mut self) {
        self.client_gone.drain();
        for address in self
            .senders
            .addresses_where(|c| c.gone.load(Ordering::Relaxed))
        {
            self.remove_client(&address);
        }
        self.join_retired();
    }

    fn remove_client(&mut self, address: &SocketAddrUnix) {
        if let Some(mut client) = self.senders.remove(address) {
            tracing::info!(port = %client.label, "sender went away; its peer leaves");
            self.port
                .counters
                .senders_gone
                .fetch_add(1, Ordering::Relaxed);
            client.join_thread();
        }
    }

    /// Stops every client's thread; the peers leave as their halves drop.
    fn stop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        for (_, mut client) in self.senders.drain() {
            client.join_thread();
        }
        for retiring in self.retiring.drain(..) {
            join_thread(retiring.thread, &retiring.label);
        }
        self.unanswerable = None;
    }
}

impl Client {
    fn join_thread(&mut self) {
        join_thread(self.thread.take(), &self.label);
    }
}

fn join_thread(thread: Option<JoinHandle<()>>, label: &str) {
    if let Some(thread) = thread
        && thread.join().is_err()
    {
        tracing::error!(port = %label, "a sender's thread panicked");
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

/// Sleeps until something happens, or until `until_expiry` has passed (a sender is due to
/// expire); `None`: no limit.
fn wait_for_event(
    socket: &UnixDatagram,
    stop: &Doorbell,
    client_gone: &Doorbell,
    until_expiry: Option<Duration>,
) -> std::io::Result<Event> {
    let sources = [
        (stop.as_fd(), Event::Stop),
        (client_gone.as_fd(), Event::ClientGone),
        (socket.as_fd(), Event::Datagrams),
    ];
    loop {
        match wait::first_ready(sources, until_expiry)? {
            Some(event) => return Ok(event),
            None if until_expiry.is_some() => return Ok(Event::IdleSenderDue),
            None => {}
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
