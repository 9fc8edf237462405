//! The DHCP port: addresses and names for the guests of a network, from a peer on it.
//!
//! `guestnet dhcp NET` joins the network as one more peer and answers DHCPv4 (RFC 2131
//! and 2132) for its guests, and, given a domain, DNS queries for their names. It plays
//! the part dnsmasq plays on libvirt's default network, without a bridge or a host
//! interface: the server is a station of the segment with its own MAC and IPv4 address
//! (by default the last host address of the subnet, never the router's, never in the
//! range), and it answers ARP for that address only.
//!
//! The layers, each testable alone:
//!
//! - [`config`]: the options, checked against each other once;
//! - [`server`]: the state machine, `handle(message, now) -> actions`, with the lease
//!   table ([`leases`]) it keeps and saves atomically to its file, ARP probes modelled
//!   as pending offers timed by the `now` passed in, expiry, RELEASE, DECLINE, INFORM;
//! - [`dns`]: the authoritative answers for `NAME.DOMAIN` and the subnet's reverse zone,
//!   and REFUSED for everything else;
//! - [`endpoint`]: frames in, frames out: Ethernet, ARP, IPv4, UDP and ICMP through the
//!   checked views of [`crate::wire`], the DHCP payload through `dhcproto` and the DNS
//!   payload through `hickory-proto`;
//! - this module: the peer that moves frames between the network and the endpoint, and
//!   the lease file.
//!
//! Guests are untrusted: every message is decoded by a maintained crate and then checked
//! (hardware type and length before the client address is read, host names against RFC
//! 1123), and whatever is refused is counted in [`DhcpCounters`], which `status` and
//! `/metrics` show.

pub mod config;
pub mod counters;
pub mod dns;
pub mod endpoint;
pub mod leases;
pub mod server;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::counters::DhcpCounters;
use self::endpoint::Endpoint;
use self::leases::{LeaseFileError, Leases};
use self::server::Server;
use crate::network::{self, JoinOptions, Network, Peer, PortKind, VlanMembership, unix_ns};
use crate::wire::MacAddress;

/// Frames taken from the ring per round.
pub const BATCH: usize = 64;

/// Errors of the DHCP port.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// Joining the network failed.
    #[error("cannot join the network")]
    Join(#[source] network::Error),
    /// The lease file could not be read or written.
    #[error(transparent)]
    Leases(#[from] LeaseFileError),
    /// The domain does not make a DNS zone.
    #[error("{0}")]
    Zone(String),
}

/// What `status` shows of a DHCP port.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DhcpStatus {
    /// The network's name.
    pub network: String,
    /// The process.
    pub pid: u32,
    /// The peer's slot.
    pub slot: u16,
    /// The server's hardware address.
    pub mac: MacAddress,
    /// The server's address.
    pub address: std::net::Ipv4Addr,
    /// The subnet, as given.
    pub subnet: String,
    /// The range, `FIRST-LAST`.
    pub range: String,
    /// The domain served, if any.
    pub domain: Option<String>,
    /// Leases bound and not expired.
    pub leases: u64,
    /// What it did and refused.
    pub counters: DhcpCounters,
}

/// A running DHCP server: its peer, its endpoint, its lease file.
#[derive(Debug)]
pub struct DhcpPort {
    peer: Peer,
    endpoint: Endpoint,
    leases_path: PathBuf,
}

/// The wall-clock time, as the server takes it: leases outlive the process.
pub fn now() -> Duration {
    Duration::from_nanos(unix_ns())
}

impl DhcpPort {
    /// Loads the leases from `leases_path` and joins `network` with the label `label`, in
    /// the VLANs `vlans`.
    pub fn start(
        network: &Network,
        config: config::Config,
        leases_path: &Path,
        label: String,
        vlans: VlanMembership,
    ) -> Result<DhcpPort, DhcpError> {
        let leases = Leases::load(leases_path)?;
        let server = Server::new(config, leases);
        let peer = network
            .join(JoinOptions {
                kind: PortKind::Process,
                label,
                vlans,
                ..JoinOptions::default()
            })
            .map_err(DhcpError::Join)?;
        let endpoint = Endpoint::new(peer.mac(), server).map_err(DhcpError::Zone)?;
        let port = DhcpPort {
            peer,
            endpoint,
            leases_path: leases_path.to_path_buf(),
        };
        // Records the configuration no longer allows were dropped: write that down.
        port.save()?;
        Ok(port)
    }

    /// The endpoint (state machine and counters).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The peer's slot.
    pub fn index(&self) -> u16 {
        self.peer.index()
    }

    /// The status `status` shows, at `now`.
    pub fn status(&self, network: &str, now: Duration) -> DhcpStatus {
        let config = self.endpoint.server().config();
        DhcpStatus {
            network: network.to_string(),
            pid: std::process::id(),
            slot: self.peer.index(),
            mac: self.endpoint.mac(),
            address: config.address,
            subnet: config.subnet.to_string(),
            range: format!("{}-{}", config.range.first, config.range.last),
            domain: config.domain.clone(),
            leases: self.endpoint.server().leases().active_count(now.as_secs()) as u64,
            counters: *self.endpoint.counters(),
        }
    }

    /// One round: takes up to [`BATCH`] frames, answers them, sends the offers whose
    /// probes ended, and saves the leases if they changed. Returns how many frames it took.
    pub fn step(&mut self, now: Duration) -> Result<usize, DhcpError> {
        let mut out = Vec::new();
        let endpoint = &mut self.endpoint;
        let taken = self
            .peer
            .receive(BATCH, |frame| out.extend(endpoint.receive(frame, now)));
        out.extend(self.endpoint.poll(now));
        for frame in &out {
            match self.peer.send(frame) {
                network::Sent::Routed { delivered, .. } if delivered > 0 => {}
                _ => self.endpoint.count_send_failure(),
            }
        }
        if self.endpoint.take_leases_changed() {
            self.save()?;
        }
        Ok(taken)
    }

    /// Sleeps until a frame arrives, a probe's wait ends, or `longest` has passed.
    pub fn wait(&mut self, now: Duration, longest: Duration) {
        let timeout = match self.endpoint.next_deadline() {
            Some(deadline) => deadline.saturating_sub(now).min(longest),
            None => longest,
        };
        if !timeout.is_zero() {
            self.peer.wait(timeout);
        }
    }

    fn save(&self) -> Result<(), DhcpError> {
        Ok(self.endpoint.server().leases().save(&self.leases_path)?)
    }
}
