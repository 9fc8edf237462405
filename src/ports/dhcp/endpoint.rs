//! Frames in, frames out: the DHCP server's station on the segment.
//!
//! [`Endpoint`] is what the server looks like on the wire, still without I/O: it takes
//! a frame and the time and returns the frames to send. It owns the server's state
//! machine ([`Server`]) and its DNS zone ([`Zone`]), and speaks the station's part:
//!
//! - ARP: answers requests for the server's own address, and no other (it is no proxy);
//!   sends the probes the state machine asks for; tells it who answers for what;
//! - IPv4/UDP port 67, to the broadcast address or to the server: DHCP, from a client
//!   whose hardware address in the message is the frame's source;
//! - IPv4/UDP port 53, to the server: DNS, when it serves a domain;
//! - ICMP echo to the server: answered, so `ping` can check that it is there.
//!
//! Every header is read through the checked views of [`crate::wire`]; the DHCP payload is
//! decoded by `dhcproto` and the DNS payload by `hickory-proto`. What fails is counted
//! ([`DhcpCounters`]) and dropped, never answered with a guess.

use core::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::{Decodable, Decoder, Encodable, Encoder, v4};

use super::counters::DhcpCounters;
use super::dns::{Outcome, Zone};
use super::server::{Action, Destination, Server};
use crate::wire::arp::{self, ArpOperation, ArpPacket, ArpRepr};
use crate::wire::icmp::{EchoRepr, IcmpPacket};
use crate::wire::ipv4::{self, Ipv4Packet, Ipv4Repr};
use crate::wire::udp::{self, UdpPacket, UdpRepr};
use crate::wire::{EtherType, EthernetFrame, MacAddress, ethernet};

/// The DHCP server's UDP port.
pub const SERVER_PORT: u16 = 67;

/// The DHCP client's UDP port.
pub const CLIENT_PORT: u16 = 68;

/// The DNS port.
pub const DNS_PORT: u16 = 53;

/// The shortest Ethernet frame without its FCS; shorter frames are padded to it.
const MIN_FRAME: usize = 60;

/// Time to live of the datagrams the server sends.
const TTL: u8 = 64;

/// The server as a station: its addresses, its state machine and its zone.
#[derive(Debug)]
pub struct Endpoint {
    mac: MacAddress,
    server: Server,
    zone: Option<Zone>,
    leases_changed: bool,
}

impl Endpoint {
    /// A station at `mac` running `server`.
    pub fn new(mac: MacAddress, server: Server) -> Result<Endpoint, String> {
        let zone = match &server.config().domain {
            Some(domain) => Some(Zone::new(domain, server.config().subnet)?),
            None => None,
        };
        Ok(Endpoint {
            mac,
            server,
            zone,
            leases_changed: false,
        })
    }

    /// The state machine.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The counters.
    pub fn counters(&self) -> &DhcpCounters {
        self.server.counters()
    }

    /// The station's hardware address.
    pub fn mac(&self) -> MacAddress {
        self.mac
    }

    /// Whether the lease table changed since the last call (it should be saved).
    pub fn take_leases_changed(&mut self) -> bool {
        std::mem::take(&mut self.leases_changed)
    }

    /// Counts a reply the network refused.
    pub fn count_send_failure(&mut self) {
        self.counters_mut().send_failures += 1;
    }

    /// When [`poll`](Self::poll) next has something to do, if a probe runs.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.server.next_deadline()
    }

    /// Handles one frame received at `now`; returns the frames to send.
    pub fn receive(&mut self, frame: &[u8], now: Duration) -> Vec<Vec<u8>> {
        let Ok(ethernet) = EthernetFrame::new_checked(frame) else {
            self.counters_mut().bad_headers += 1;
            return Vec::new();
        };
        let destination = ethernet.destination();
        if destination != self.mac && !destination.is_broadcast() {
            self.counters_mut().ignored += 1;
            return Vec::new();
        }
        let source = ethernet.source();
        match ethernet.ethertype() {
            EtherType::Arp => self.arp(ethernet.payload(), now),
            EtherType::Ipv4 => self.ipv4(source, ethernet.payload(), now),
            _ => {
                self.counters_mut().ignored += 1;
                Vec::new()
            }
        }
    }

    /// Lets time pass: offers whose probe ended.
    pub fn poll(&mut self, now: Duration) -> Vec<Vec<u8>> {
        let actions = self.server.poll(now);
        self.perform(actions)
    }

    fn counters_mut(&mut self) -> &mut DhcpCounters {
        self.server.counters_mut()
    }

    fn address(&self) -> Ipv4Addr {
        self.server.config().address
    }

    fn arp(&mut self, payload: &[u8], now: Duration) -> Vec<Vec<u8>> {
        let Ok(repr) = ArpPacket::new_checked(payload).and_then(|p| ArpRepr::parse(&p)) else {
            self.counters_mut().bad_headers += 1;
            return Vec::new();
        };
        let mut out = Vec::new();
        if !repr.sender_protocol.is_unspecified() && repr.sender_hardware != self.mac {
            let actions =
                self.server
                    .address_in_use(repr.sender_protocol, repr.sender_hardware, now);
            out = self.perform(actions);
        }
        if repr.operation == ArpOperation::Request && repr.target_protocol == self.address() {
            self.counters_mut().arp_replies += 1;
            out.push(self.arp_frame(ArpRepr {
                operation: ArpOperation::Reply,
                sender_hardware: self.mac,
                sender_protocol: self.address(),
                target_hardware: repr.sender_hardware,
                target_protocol: repr.sender_protocol,
            }));
        } else if out.is_empty() {
            self.counters_mut().ignored += 1;
        }
        out
    }

    fn ipv4(&mut self, source_mac: MacAddress, payload: &[u8], now: Duration) -> Vec<Vec<u8>> {
        let Ok(packet) = Ipv4Packet::new_checked(payload) else {
            self.counters_mut().bad_headers += 1;
            return Vec::new();
        };
        let Ok(ip) = Ipv4Repr::parse(&packet) else {
            self.counters_mut().bad_headers += 1;
            return Vec::new();
        };
        let to_me = ip.destination == self.address();
        match ip.protocol {
            ipv4::PROTOCOL_UDP if to_me || ip.destination.is_broadcast() => {
                self.udp(source_mac, ip, packet.payload(), now)
            }
            ipv4::PROTOCOL_ICMP if to_me => self.icmp(source_mac, ip, packet.payload()),
            _ => {
                self.counters_mut().ignored += 1;
                Vec::new()
            }
        }
    }

    fn udp(
        &mut self,
        source_mac: MacAddress,
        ip: Ipv4Repr,
        payload: &[u8],
        now: Duration,
    ) -> Vec<Vec<u8>> {
        let Ok(packet) = UdpPacket::new_checked(payload) else {
            self.counters_mut().bad_headers += 1;
            return Vec::new();
        };
        let Ok(udp) = UdpRepr::parse(&packet, ip.source, ip.destination) else {
            self.counters_mut().bad_headers += 1;
            return Vec::new();
        };
        match udp.destination_port {
            SERVER_PORT => self.dhcp(source_mac, packet.payload(), now),
            DNS_PORT if ip.destination == self.address() => self.dns(
                source_mac,
                ip.source,
                udp.source_port,
                packet.payload(),
                now,
            ),
            _ => {
                self.counters_mut().ignored += 1;
                Vec::new()
            }
        }
    }

    fn dhcp(&mut self, source_mac: MacAddress, payload: &[u8], now: Duration) -> Vec<Vec<u8>> {
        let Some(message) = decode_dhcp(payload) else {
            self.counters_mut().undecodable += 1;
            return Vec::new();
        };
        // A guest asks for itself: the client hardware address must be the frame's
        // source, so a guest cannot take leases in other MACs' names (and, on a port that
        // locks its MAC, holds one lease at most). The length is checked first, since
        // chaddr() slices by it (the state machine counts a wrong one).
        if message.hlen() == 6 && message.chaddr() != source_mac.octets() {
            self.counters_mut().chaddr_mismatch += 1;
            return Vec::new();
        }
        let actions = self.server.handle(&message, now);
        self.perform(actions)
    }

    fn dns(
        &mut self,
        source_mac: MacAddress,
        source: Ipv4Addr,
        source_port: u16,
        payload: &[u8],
        now: Duration,
    ) -> Vec<Vec<u8>> {
        let Some(zone) = &self.zone else {
            self.counters_mut().dns_disabled += 1;
            return Vec::new();
        };
        let names = self.server.names(now);
        let outcome = zone.answer(payload, &names);
        let counters = self.server.counters_mut();
        let reply = match outcome {
            Outcome::Answered(reply) => {
                counters.dns_answers += 1;
                Some(reply)
            }
            Outcome::NoSuchName(reply) => {
                counters.dns_nxdomain += 1;
                Some(reply)
            }
            Outcome::Refused(reply) => {
                counters.dns_refused += 1;
                Some(reply)
            }
            Outcome::Malformed(reply) => {
                counters.dns_malformed += 1;
                reply
            }
        };
        reply
            .map(|reply| self.udp_frame(source_mac, source, DNS_PORT, source_port, &reply))
            .into_iter()
            .collect()
    }

    fn icmp(&mut self, source_mac: MacAddress, ip: Ipv4Repr, payload: &[u8]) -> Vec<Vec<u8>> {
        let Ok(packet) = IcmpPacket::new_checked(payload) else {
            self.counters_mut().bad_headers += 1;
            return Vec::new();
        };
        let Ok(Some(echo)) = EchoRepr::parse_request(&packet) else {
            self.counters_mut().ignored += 1;
            return Vec::new();
        };
        self.counters_mut().echo_replies += 1;
        let reply_len = echo.reply_len();
        let mut frame = self.ipv4_frame(source_mac, ip.source, ipv4::PROTOCOL_ICMP, reply_len);
        let at = ethernet::HEADER_LEN + ipv4::HEADER_LEN;
        echo.emit_reply(&mut IcmpPacket::new_unchecked(
            &mut frame[at..at + reply_len],
        ));
        pad(&mut frame);
        vec![frame]
    }

    fn perform(&mut self, actions: Vec<Action>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for action in actions {
            match action {
                Action::Reply(message, destination) => {
                    let mut bytes = Vec::new();
                    if message.encode(&mut Encoder::new(&mut bytes)).is_err() {
                        continue;
                    }
                    let (mac, ip) = match destination {
                        Destination::Broadcast => (MacAddress::BROADCAST, Ipv4Addr::BROADCAST),
                        Destination::Unicast(ip, mac) => (mac, ip),
                    };
                    out.push(self.udp_frame(mac, ip, SERVER_PORT, CLIENT_PORT, &bytes));
                }
                Action::Probe(address) => out.push(self.arp_frame(ArpRepr {
                    operation: ArpOperation::Request,
                    sender_hardware: self.mac,
                    sender_protocol: self.address(),
                    target_hardware: MacAddress::ZERO,
                    target_protocol: address,
                })),
                Action::SaveLeases => self.leases_changed = true,
            }
        }
        out
    }

    fn arp_frame(&self, repr: ArpRepr) -> Vec<u8> {
        let destination = match repr.operation {
            ArpOperation::Request => MacAddress::BROADCAST,
            ArpOperation::Reply => repr.target_hardware,
        };
        let mut frame = self.ethernet_frame(destination, EtherType::Arp, arp::PACKET_LEN);
        repr.emit(&mut ArpPacket::new_unchecked(
            &mut frame[ethernet::HEADER_LEN..],
        ));
        pad(&mut frame);
        frame
    }

    fn ethernet_frame(
        &self,
        destination: MacAddress,
        ethertype: EtherType,
        payload_len: usize,
    ) -> Vec<u8> {
        let mut frame = vec![0u8; ethernet::HEADER_LEN + payload_len];
        let mut view = EthernetFrame::new_unchecked(&mut frame[..]);
        view.set_destination(destination);
        view.set_source(self.mac);
        view.set_ethertype(ethertype);
        frame
    }

    /// An Ethernet frame with an IPv4 header from the server to `ip` and room for
    /// `payload_len` bytes after it.
    fn ipv4_frame(
        &self,
        mac: MacAddress,
        ip: Ipv4Addr,
        protocol: u8,
        payload_len: usize,
    ) -> Vec<u8> {
        let mut frame = self.ethernet_frame(mac, EtherType::Ipv4, ipv4::HEADER_LEN + payload_len);
        let repr = Ipv4Repr {
            source: self.address(),
            destination: ip,
            protocol,
            payload_len,
            ttl: TTL,
            dont_fragment: false,
        };
        let mut packet = Ipv4Packet::new_unchecked(&mut frame[ethernet::HEADER_LEN..]);
        repr.emit(&mut packet);
        packet.fill_checksum();
        frame
    }

    fn udp_frame(
        &self,
        mac: MacAddress,
        ip: Ipv4Addr,
        source_port: u16,
        destination_port: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let udp_len = udp::HEADER_LEN + payload.len();
        let mut frame = self.ipv4_frame(mac, ip, ipv4::PROTOCOL_UDP, udp_len);
        let at = ethernet::HEADER_LEN + ipv4::HEADER_LEN;
        let mut packet = UdpPacket::new_unchecked(&mut frame[at..]);
        UdpRepr {
            source_port,
            destination_port,
            payload_len: payload.len(),
        }
        .emit(&mut packet);
        frame[at + udp::HEADER_LEN..].copy_from_slice(payload);
        UdpPacket::new_unchecked(&mut frame[at..]).fill_checksum(self.address(), ip);
        pad(&mut frame);
        frame
    }
}

/// Where a DHCP message's options start: after the fixed BOOTP fields and the magic
/// cookie (RFC 2131 section 3).
const OPTIONS_AT: usize = 240;

/// Decodes a DHCP message a guest sent.
///
/// dhcproto 0.15 checks the lengths of a few options only with `debug_assert!`s, or
/// subtracts from them unchecked (rapid commit, client FQDN, client network interface,
/// bulk lease query times and status), so in a build with debug assertions a guest's
/// malformed option panics inside the decoder; release builds decode on and fail
/// cleanly. [`option_lengths_fit`] refuses those lengths before the crate sees them, so
/// every build holds to the rule: a message the crate cannot decode is counted and
/// dropped, whatever its bytes. Any other panic in the decoder is caught as a last line
/// of defence (a fuzzer, whose panic hook aborts, still reports it).
fn decode_dhcp(payload: &[u8]) -> Option<v4::Message> {
    if !option_lengths_fit(payload) {
        return None;
    }
    std::panic::catch_unwind(|| v4::Message::decode(&mut Decoder::new(payload)).ok())
        .ok()
        .flatten()
}

/// Whether the options whose length dhcproto trusts have a length their code allows.
/// Consecutive options of one code count as one (RFC 3396), as the crate joins them; a
/// pad between them ends the run, as it does in the crate.
/// Reading stops at the end option or the end of the bytes; every step advances.
pub(super) fn option_lengths_fit(payload: &[u8]) -> bool {
    let allowed = |code: u8, length: usize| match code {
        80 => length == 0,
        81 => length >= 3,
        94 => length == 3,
        151 => length >= 1,
        152..=155 => length == 4,
        _ => true,
    };
    let mut at = OPTIONS_AT;
    let mut run: Option<(u8, usize)> = None;
    while let Some(&code) = payload.get(at) {
        match code {
            // A pad ends a run: the crate decodes the option before it on its own.
            0 => {
                if let Some((code, total)) = run.take()
                    && !allowed(code, total)
                {
                    return false;
                }
                at += 1;
            }
            255 => break,
            _ => {
                let Some(&length) = payload.get(at + 1) else {
                    break;
                };
                let length = usize::from(length);
                run = match run {
                    Some((same, total)) if same == code => Some((code, total + length)),
                    Some((other, total)) if !allowed(other, total) => return false,
                    _ => Some((code, length)),
                };
                at += 2 + length;
            }
        }
    }
    run.is_none_or(|(code, total)| allowed(code, total))
}

/// Pads a frame to the Ethernet minimum.
fn pad(frame: &mut Vec<u8>) {
    if frame.len() < MIN_FRAME {
        frame.resize(MIN_FRAME, 0);
    }
}
