//! The DHCP server's state machine (RFC 2131): messages and time in, actions out.
//!
//! [`Server::handle`] takes one decoded client message and the current time and returns
//! what to do: replies to send, addresses to probe, a lease table to save.
//! [`Server::poll`] does the same when only time has passed: a probe whose wait is over
//! becomes an offer. [`Server::address_in_use`] tells it that some station answered for
//! an address. Nothing here reads a clock or touches a socket, so the tests drive it with
//! made-up times and check every branch.
//!
//! ## Allocation
//!
//! A client is its hardware address. It gets, in this order of preference: its static
//! address (`--host`); the address its record holds, even an expired one, as long as no
//! one else took it since; the address it asks for, if free; the first address of the
//! range no record has ever held; the address of the record that expired longest ago.
//! Free means in the range, not the server's or router's, not another's static address,
//! not held by another's active lease or offer, and not set aside.
//!
//! ## Probing before offering
//!
//! Before offering an address the client does not hold already, the server asks by ARP
//! who has it and waits [`PROBE_WAIT`]. The probe is a pending offer: the DISCOVER is kept
//! and answered by [`Server::poll`] once the wait is over. If a station other than the
//! client answers meanwhile, the address is set aside for [`SET_ASIDE_TIME`] and the next
//! candidate is probed, up to [`MAX_PROBES`] per DISCOVER. Retransmitted DISCOVERs while a
//! probe runs are absorbed into it.
//!
//! ## Replies
//!
//! A REQUEST naming another server withdraws the offer. One naming this server, or none
//! (INIT-REBOOT, RENEWING, REBINDING), is ACKed when the address is the client's or free
//! for it, NAKed when it is another's or outside what this server hands out. RELEASE ends
//! the lease but keeps the record, so the client gets the address back. DECLINE sets the
//! address aside. INFORM gets the options without an address.

use core::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode};

use super::config::{Config, is_host_label};
use super::counters::DhcpCounters;
use super::leases::{Lease, Leases};
use crate::wire::MacAddress;

/// How long a probe waits for an answer before the address is offered.
pub const PROBE_WAIT: Duration = Duration::from_millis(300);

/// How many addresses one DISCOVER may probe before the server gives up on it.
pub const MAX_PROBES: usize = 4;

/// How long an offered address stays reserved for the client it was offered to.
pub const OFFER_HOLD: Duration = Duration::from_secs(60);

/// How long an address declined or found in use is not handed out.
pub const SET_ASIDE_TIME: Duration = Duration::from_secs(600);

/// Probes running at once; more DISCOVERs are dropped (counted) until some end.
pub const MAX_PENDING: usize = 64;

/// Where a reply goes (RFC 2131 section 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// To everyone: the client asked for broadcast, or has no address to take unicast.
    Broadcast,
    /// To this address at the client's hardware address.
    Unicast(Ipv4Addr, MacAddress),
}

/// What the server wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this reply.
    Reply(Box<Message>, Destination),
    /// Ask by ARP who has this address.
    Probe(Ipv4Addr),
    /// The lease table changed: save it.
    SaveLeases,
}

/// A DISCOVER waiting for its probe.
#[derive(Debug, Clone)]
struct PendingOffer {
    mac: MacAddress,
    address: Ipv4Addr,
    request: Message,
    host_name: Option<String>,
    deadline: Duration,
    probes: usize,
}

/// The server: configuration, leases, probes in flight, counters.
#[derive(Debug)]
pub struct Server {
    config: Config,
    leases: Leases,
    pending: Vec<PendingOffer>,
    counters: DhcpCounters,
}

/// Seconds since the epoch, for lease times.
fn seconds(now: Duration) -> u64 {
    now.as_secs()
}

impl Server {
    /// A server with `leases` loaded from its file (records the configuration no
    /// longer allows are dropped).
    pub fn new(config: Config, mut leases: Leases) -> Server {
        leases.keep_only_valid(&config);
        Server {
            config,
            leases,
            pending: Vec::new(),
            counters: DhcpCounters::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The lease table.
    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// The counters.
    pub fn counters(&self) -> &DhcpCounters {
        &self.counters
    }

    /// The counters, for the port to count what it drops before the server sees it.
    pub fn counters_mut(&mut self) -> &mut DhcpCounters {
        &mut self.counters
    }

    /// Host names and addresses of the bound, active leases at `now`, for DNS.
    pub fn names(&self, now: Duration) -> Vec<(String, Ipv4Addr)> {
        let now = seconds(now);
        self.leases
            .iter()
            .filter(|(_, l)| l.bound && l.is_active(now))
            .filter_map(|(_, l)| l.host_name.clone().map(|name| (name, l.address)))
            .collect()
    }

    /// Handles one client message received at `now`.
    pub fn handle(&mut self, request: &Message, now: Duration) -> Vec<Action> {
        if request.opcode() != Opcode::BootRequest {
            self.counters.not_a_request += 1;
            return Vec::new();
        }
        // chaddr() slices by the message's hlen, which the client wrote: check it first.
        if request.htype() != HType::Eth || request.hlen() != 6 {
            self.counters.not_ethernet += 1;
            return Vec::new();
        }
        let Some(mac) = MacAddress::from_slice(request.chaddr()) else {
            self.counters.not_ethernet += 1;
            return Vec::new();
        };
        if !mac.is_unicast() || mac.is_zero() {
            self.counters.not_ethernet += 1;
            return Vec::new();
        }
        if !request.giaddr().is_unspecified() {
            self.counters.relayed += 1;
            return Vec::new();
        }
        let kind = request.opts().msg_type();
        match kind {
            Some(MessageType::Discover) => self.discover(mac, request, now),
            Some(MessageType::Request) => self.request(mac, request, now),
            Some(MessageType::Release) => self.release(mac, request, now),
            Some(MessageType::Decline) => self.decline(mac, request, now),
            Some(MessageType::Inform) => self.inform(mac, request),
            _ => {
                self.counters.unknown_message_type += 1;
                Vec::new()
            }
        }
    }

    /// Lets time pass: probes whose wait is over become offers; set-aside addresses
    /// whose time is over are forgotten.
    pub fn poll(&mut self, now: Duration) -> Vec<Action> {
        let mut actions = Vec::new();
        // A deadline further away than a whole wait means the wall clock was set back
        // since the probe began: the wait is over all the same, rather than stretched.
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.deadline <= now || p.deadline > now + PROBE_WAIT);
        self.pending = waiting;
        for pending in due {
            actions.extend(self.offer(pending, now));
        }
        if self.leases.forget_expired_set_asides(seconds(now)) {
            actions.push(Action::SaveLeases);
        }
        actions
    }

    /// When the next probe's wait ends, if one runs.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.pending.iter().map(|p| p.deadline).min()
    }

    /// Some station with hardware address `mac` said (by ARP) it holds `address`. A
    /// probe for that address on behalf of another client fails: the address is set
    /// aside and the next candidate probed. Without a probe, an address of the range
    /// that no client holds is set aside all the same: someone uses it without a lease.
    pub fn address_in_use(
        &mut self,
        address: Ipv4Addr,
        mac: MacAddress,
        now: Duration,
    ) -> Vec<Action> {
        let Some(at) = self
            .pending
            .iter()
            .position(|p| p.address == address && p.mac != mac)
        else {
            return self.claimed_without_lease(address, mac, now);
        };
        let mut pending = self.pending.swap_remove(at);
        self.counters.probe_conflicts += 1;
        self.leases
            .set_aside(address, seconds(now + SET_ASIDE_TIME));
        if self
            .leases
            .get(pending.mac)
            .is_some_and(|l| l.address == address)
        {
            self.leases.remove(pending.mac);
        }
        let mut actions = vec![Action::SaveLeases];
        if pending.probes >= MAX_PROBES {
            self.counters.no_free_address += 1;
            return actions;
        }
        let Some(next) = self.choose(pending.mac, None, now) else {
            self.counters.no_free_address += 1;
            return actions;
        };
        pending.address = next;
        pending.probes += 1;
        pending.deadline = now + PROBE_WAIT;
        actions.push(Action::Probe(next));
        self.pending.push(pending);
        actions
    }

    /// `mac` uses `address` and no probe runs for it: set it aside if it is ours to
    /// give and not `mac`'s own (a client keeps its address, expired or not).
    fn claimed_without_lease(
        &mut self,
        address: Ipv4Addr,
        mac: MacAddress,
        now: Duration,
    ) -> Vec<Action> {
        if self.pending.iter().any(|p| p.address == address) {
            // The client a probe runs for answers for its own address.
            return Vec::new();
        }
        let ours = self.config.range.contains(address)
            || self.config.hosts.iter().any(|h| h.address == address);
        let holder = self.leases.holder(address);
        let its_own = holder.is_some_and(|(holder, _)| holder == mac);
        let held = holder.is_some_and(|(_, l)| l.is_active(seconds(now)));
        let fixed_for_it = self.config.static_address(mac) == Some(address);
        if !ours || its_own || held || fixed_for_it {
            return Vec::new();
        }
        let fresh = !self.leases.is_set_aside(address, seconds(now));
        self.leases
            .set_aside(address, seconds(now + SET_ASIDE_TIME));
        if !fresh {
            return Vec::new();
        }
        self.counters.claimed_without_lease += 1;
        vec![Action::SaveLeases]
    }

    fn discover(&mut self, mac: MacAddress, request: &Message, now: Duration) -> Vec<Action> {
        self.counters.discovers += 1;
        let host_name = self.host_name(request);
        if let Some(pending) = self.pending.iter_mut().find(|p| p.mac == mac) {
            // A retransmission: answer the newest transaction when the probe ends.
            pending.request = request.clone();
            pending.host_name = host_name;
            return Vec::new();
        }
        let requested = requested_address(request);
        let Some(address) = self.choose(mac, requested, now) else {
            self.counters.no_free_address += 1;
            return Vec::new();
        };
        let pending = PendingOffer {
            mac,
            address,
            request: request.clone(),
            host_name,
            deadline: now + PROBE_WAIT,
            probes: 1,
        };
        // The client's own active lease needs no probe: if it answers, it is the client.
        let holds = self
            .leases
            .get(mac)
            .is_some_and(|l| l.address == address && l.bound && l.is_active(seconds(now)));
        if holds {
            return self.offer(pending, now);
        }
        if self.pending.len() >= MAX_PENDING {
            self.counters.too_many_probes += 1;
            return Vec::new();
        }
        self.pending.push(pending);
        vec![Action::Probe(address)]
    }

    fn offer(&mut self, pending: PendingOffer, now: Duration) -> Vec<Action> {
        let PendingOffer {
            mac,
            address,
            request,
            host_name,
            ..
        } = pending;
        // The address may have gone while the probe ran (another client's REQUEST).
        if !self.is_free_for(address, mac, now) {
            self.counters.no_free_address += 1;
            return Vec::new();
        }
        let now_s = seconds(now);
        let keep = self
            .leases
            .get(mac)
            .filter(|l| l.address == address && l.bound && l.is_active(now_s))
            .cloned();
        let lease = keep.unwrap_or(Lease {
            address,
            expires: now_s + OFFER_HOLD.as_secs(),
            bound: false,
            host_name: host_name.clone(),
        });
        self.leases.set(mac, lease);
        self.counters.offers += 1;
        let reply = self.reply(&request, MessageType::Offer, address, true);
        vec![
            Action::Reply(Box::new(reply), destination(&request, address, mac)),
            Action::SaveLeases,
        ]
    }

    fn request(&mut self, mac: MacAddress, request: &Message, now: Duration) -> Vec<Action> {
        self.counters.requests += 1;
        let server_id = server_identifier(request);
        if server_id.is_some_and(|id| id != self.config.address) {
            // The client took another server's offer: release ours.
            if self.leases.get(mac).is_some_and(|l| !l.bound) {
                self.leases.remove(mac);
                return vec![Action::SaveLeases];
            }
            return Vec::new();
        }
        let ciaddr = request.ciaddr();
        let Some(address) =
            requested_address(request).or((!ciaddr.is_unspecified()).then_some(ciaddr))
        else {
            self.counters.malformed += 1;
            return Vec::new();
        };
        let now_s = seconds(now);
        if server_id.is_some() {
            // SELECTING: it must be what we offered (or what it holds).
            let offered = self
                .leases
                .get(mac)
                .is_some_and(|l| l.address == address && l.is_active(now_s));
            if !offered {
                return self.nak(request, "not the address offered");
            }
        }
        if !self.is_allowed_for(address, mac) {
            return self.nak(request, "not an address this server gives this client");
        }
        if !self.is_free_for(address, mac, now) {
            return self.nak(request, "the address is another client's");
        }
        if server_id.is_none() {
            // INIT-REBOOT, RENEWING, REBINDING: only for a lease this server gave; of a
            // client it has no record of, it knows nothing and stays silent (RFC 2131
            // section 4.3.2), and the client falls back to DISCOVER.
            let its_lease = self
                .leases
                .get(mac)
                .is_some_and(|l| l.address == address && l.bound);
            if !its_lease && self.config.static_address(mac) != Some(address) {
                self.counters.unknown_lease += 1;
                return Vec::new();
            }
        }
        let host_name = self
            .host_name(request)
            .or_else(|| self.leases.get(mac).and_then(|l| l.host_name.clone()));
        let host_name = host_name.filter(|name| !self.name_taken(name, mac, now_s));
        self.leases.set(
            mac,
            Lease {
                address,
                expires: now_s + self.config.lease_time.as_secs(),
                bound: true,
                host_name,
            },
        );
        self.counters.acks += 1;
        let reply = self.reply(request, MessageType::Ack, address, true);
        vec![
            Action::Reply(Box::new(reply), destination(request, address, mac)),
            Action::SaveLeases,
        ]
    }

    fn nak(&mut self, request: &Message, why: &str) -> Vec<Action> {
        self.counters.naks += 1;
        tracing::debug!(xid = request.xid(), why, "DHCPNAK");
        let mut reply = self.reply(request, MessageType::Nak, Ipv4Addr::UNSPECIFIED, false);
        reply.set_ciaddr(Ipv4Addr::UNSPECIFIED);
        vec![Action::Reply(Box::new(reply), Destination::Broadcast)]
    }

    fn release(&mut self, mac: MacAddress, request: &Message, now: Duration) -> Vec<Action> {
        self.counters.releases += 1;
        if server_identifier(request).is_some_and(|id| id != self.config.address) {
            return Vec::new();
        }
        let now_s = seconds(now);
        match self.leases.get(mac) {
            Some(lease) if lease.address == request.ciaddr() && lease.is_active(now_s) => {
                // Keep the record: the same client gets the address back.
                let mut lease = lease.clone();
                lease.expires = now_s;
                lease.bound = false;
                self.leases.set(mac, lease);
                vec![Action::SaveLeases]
            }
            _ => {
                self.counters.unknown_lease += 1;
                Vec::new()
            }
        }
    }

    fn decline(&mut self, mac: MacAddress, request: &Message, now: Duration) -> Vec<Action> {
        self.counters.declines += 1;
        if server_identifier(request).is_some_and(|id| id != self.config.address) {
            return Vec::new();
        }
        let Some(address) = requested_address(request) else {
            self.counters.malformed += 1;
            return Vec::new();
        };
        if self.leases.get(mac).is_none_or(|l| l.address != address) {
            self.counters.unknown_lease += 1;
            return Vec::new();
        }
        self.leases.remove(mac);
        self.leases
            .set_aside(address, seconds(now + SET_ASIDE_TIME));
        vec![Action::SaveLeases]
    }

    fn inform(&mut self, mac: MacAddress, request: &Message) -> Vec<Action> {
        self.counters.informs += 1;
        let ciaddr = request.ciaddr();
        if ciaddr.is_unspecified() || !self.config.subnet.contains(&ciaddr) {
            self.counters.malformed += 1;
            return Vec::new();
        }
        let reply = self.reply(request, MessageType::Ack, Ipv4Addr::UNSPECIFIED, false);
        self.counters.acks += 1;
        vec![Action::Reply(
            Box::new(reply),
            Destination::Unicast(ciaddr, mac),
        )]
    }

    /// The address to offer `mac`, by the preference order of the module doc.
    fn choose(
        &self,
        mac: MacAddress,
        requested: Option<Ipv4Addr>,
        now: Duration,
    ) -> Option<Ipv4Addr> {
        if let Some(fixed) = self.config.static_address(mac) {
            return self.is_free_for(fixed, mac, now).then_some(fixed);
        }
        let pending_for_another = |address: Ipv4Addr| {
            self.pending
                .iter()
                .any(|p| p.address == address && p.mac != mac)
        };
        let usable = |address: Ipv4Addr| {
            self.is_allowed_for(address, mac)
                && self.is_free_for(address, mac, now)
                && !pending_for_another(address)
        };
        if let Some(lease) = self.leases.get(mac)
            && usable(lease.address)
        {
            return Some(lease.address);
        }
        if let Some(address) = requested
            && usable(address)
        {
            return Some(address);
        }
        // The first address without a record is at most as many steps in as there are
        // records, set-aside addresses and probes; each step is a lookup in an index.
        if let Some(address) = self
            .config
            .range
            .iter()
            .find(|&a| self.leases.holder(a).is_none() && usable(a))
        {
            return Some(address);
        }
        // Every address has had a client: the record that expired longest ago gives way.
        // Each record holds its own address, so "free" is only "expired" here.
        let now_s = seconds(now);
        self.leases
            .iter()
            .filter(|&(_, l)| {
                !l.is_active(now_s)
                    && self.is_allowed_for(l.address, mac)
                    && !self.leases.is_set_aside(l.address, now_s)
                    && !pending_for_another(l.address)
            })
            .min_by_key(|&(_, l)| l.expires)
            .map(|(_, l)| l.address)
    }

    /// Whether this server may give `address` to `mac` at all: its static address, or
    /// (for a client without one) an address of the range nobody has as static.
    fn is_allowed_for(&self, address: Ipv4Addr, mac: MacAddress) -> bool {
        match self.config.static_address(mac) {
            Some(fixed) => fixed == address,
            None => {
                self.config.range.contains(address)
                    && !self.config.is_static_for_another(address, mac)
                    && address != self.config.address
                    && Some(address) != self.config.router
            }
        }
    }

    /// Whether nobody else holds `address` now and it is not set aside.
    fn is_free_for(&self, address: Ipv4Addr, mac: MacAddress, now: Duration) -> bool {
        let now_s = seconds(now);
        let held_by_another = self
            .leases
            .holder(address)
            .is_some_and(|(holder, l)| holder != mac && l.is_active(now_s));
        !held_by_another && !self.leases.is_set_aside(address, now_s)
    }

    /// Whether another active client already answers to `name`.
    fn name_taken(&self, name: &str, mac: MacAddress, now_s: u64) -> bool {
        self.leases.iter().any(|(other, l)| {
            other != mac && l.bound && l.is_active(now_s) && l.host_name.as_deref() == Some(name)
        })
    }

    /// The host name a client sent: option 81's first label, else option 12's; checked
    /// (RFC 1123 label) and lower-cased, or none (counted).
    fn host_name(&mut self, request: &Message) -> Option<String> {
        let sent = match request.opts().get(OptionCode::ClientFQDN) {
            Some(DhcpOption::ClientFQDN(fqdn)) => fqdn
                .domain()
                .iter()
                .next()
                .map(|label| String::from_utf8_lossy(label).into_owned()),
            _ => None,
        }
        .or_else(|| match request.opts().get(OptionCode::Hostname) {
            Some(DhcpOption::Hostname(name)) => {
                Some(name.split('.').next().unwrap_or_default().to_string())
            }
            _ => None,
        })?;
        let name = sent.to_ascii_lowercase();
        if is_host_label(&name) {
            Some(name)
        } else {
            self.counters.bad_host_names += 1;
            None
        }
    }

    /// A reply to `request` of `kind`, for `address`, with the lease options when
    /// `lease` is set (OFFER and ACK of an address; not NAK nor the ACK of an INFORM).
    fn reply(
        &self,
        request: &Message,
        kind: MessageType,
        address: Ipv4Addr,
        lease: bool,
    ) -> Message {
        let mut reply = Message::default();
        reply
            .set_opcode(Opcode::BootReply)
            .set_htype(HType::Eth)
            .set_xid(request.xid())
            .set_flags(Flags::new(u16::from(request.flags()) & 0x8000))
            .set_ciaddr(request.ciaddr())
            .set_yiaddr(address)
            .set_giaddr(request.giaddr())
            .set_chaddr(request.chaddr());
        let opts = reply.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(self.config.address));
        if kind == MessageType::Nak {
            return reply;
        }
        if lease {
            let seconds = u32::try_from(self.config.lease_time.as_secs()).unwrap_or(u32::MAX);
            opts.insert(DhcpOption::AddressLeaseTime(seconds));
            opts.insert(DhcpOption::Renewal(seconds / 2));
            opts.insert(DhcpOption::Rebinding(seconds / 8 * 7));
        }
        opts.insert(DhcpOption::SubnetMask(self.config.subnet.netmask()));
        opts.insert(DhcpOption::BroadcastAddr(self.config.subnet.broadcast()));
        if let Some(router) = self.config.router {
            opts.insert(DhcpOption::Router(vec![router]));
        }
        if !self.config.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(self.config.dns.clone()));
        }
        if let Some(domain) = &self.config.domain {
            opts.insert(DhcpOption::DomainName(domain.clone()));
        }
        reply
    }
}

/// Option 50.
fn requested_address(request: &Message) -> Option<Ipv4Addr> {
    match request.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(address)) => Some(*address),
        _ => None,
    }
}

/// Option 54.
fn server_identifier(request: &Message) -> Option<Ipv4Addr> {
    match request.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(address)) => Some(*address),
        _ => None,
    }
}

/// Where an OFFER or ACK of `address` goes (RFC 2131 section 4.1): to the client's
/// address if it has one (renewing), by broadcast if it asked, else to the new address
/// at its hardware address.
fn destination(request: &Message, address: Ipv4Addr, mac: MacAddress) -> Destination {
    let ciaddr = request.ciaddr();
    if !ciaddr.is_unspecified() {
        Destination::Unicast(ciaddr, mac)
    } else if request.flags().broadcast() {
        Destination::Broadcast
    } else {
        Destination::Unicast(address, mac)
    }
}
