//! The DHCP server driven by made-up messages, frames and times: every branch of the
//! state machine, the lease file across a restart, and the station's answers on the wire.

use core::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::v4::{self, DhcpOption, Flags, HType, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use proptest::prelude::*;

use super::config::{Config, ConfigOptions};
use super::endpoint::{CLIENT_PORT, DNS_PORT, Endpoint, SERVER_PORT};
use super::leases::Leases;
use super::server::{Action, Destination, MAX_PROBES, PROBE_WAIT, SET_ASIDE_TIME, Server};
use crate::wire::arp::{ArpOperation, ArpPacket, ArpRepr};
use crate::wire::ipv4::{self, Ipv4Packet, Ipv4Repr};
use crate::wire::udp::{UdpPacket, UdpRepr};
use crate::wire::{EtherType, EthernetFrame, MacAddress, ethernet};

/// Some moment in 2027, in seconds since the epoch.
const T0: Duration = Duration::from_secs(1_800_000_000);

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
const SERVER_MAC: MacAddress = MacAddress([2, 0xaa, 0, 0, 0, 1]);
const ALICE: MacAddress = MacAddress([2, 0, 0, 0, 0, 1]);
const BOB: MacAddress = MacAddress([2, 0, 0, 0, 0, 2]);
const CAROL: MacAddress = MacAddress([2, 0, 0, 0, 0, 3]);
const DAVE: MacAddress = MacAddress([2, 0, 0, 0, 0, 4]);
const STRANGER: MacAddress = MacAddress([2, 0, 0, 0, 0, 0x99]);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

fn options() -> ConfigOptions {
    ConfigOptions {
        subnet: "10.0.0.0/24".into(),
        range: "10.0.0.10-10.0.0.12".into(),
        router: Some(ip(1)),
        domain: Some("lab.internal".into()),
        lease_time: Some("1h".into()),
        ..ConfigOptions::default()
    }
}

fn server() -> Server {
    Server::new(Config::new(&options()).unwrap(), Leases::new())
}

fn message(mac: MacAddress, kind: MessageType) -> v4::Message {
    let mut m = v4::Message::new_with_id(
        0x5eed,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac.octets(),
    );
    m.set_opcode(Opcode::BootRequest);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

fn discover(mac: MacAddress, name: Option<&str>) -> v4::Message {
    let mut m = message(mac, MessageType::Discover);
    if let Some(name) = name {
        m.opts_mut().insert(DhcpOption::Hostname(name.into()));
    }
    m
}

fn selecting(
    mac: MacAddress,
    address: Ipv4Addr,
    server_id: Ipv4Addr,
    name: Option<&str>,
) -> v4::Message {
    let mut m = discover(mac, name);
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(address));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(server_id));
    m
}

fn init_reboot(mac: MacAddress, address: Ipv4Addr) -> v4::Message {
    let mut m = message(mac, MessageType::Request);
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(address));
    m
}

fn renewing(mac: MacAddress, address: Ipv4Addr) -> v4::Message {
    let mut m = message(mac, MessageType::Request);
    m.set_ciaddr(address);
    m
}

fn releasing(mac: MacAddress, address: Ipv4Addr) -> v4::Message {
    let mut m = message(mac, MessageType::Release);
    m.set_ciaddr(address);
    m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    m
}

fn declining(mac: MacAddress, address: Ipv4Addr) -> v4::Message {
    let mut m = message(mac, MessageType::Decline);
    m.opts_mut().insert(DhcpOption::RequestedIpAddress(address));
    m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    m
}

/// The replies among `actions`, with where they go.
fn replies(actions: &[Action]) -> Vec<(v4::Message, Destination)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Reply(m, d) => Some(((**m).clone(), *d)),
            _ => None,
        })
        .collect()
}

fn probes(actions: &[Action]) -> Vec<Ipv4Addr> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Probe(address) => Some(*address),
            _ => None,
        })
        .collect()
}

/// The message's bytes, as a client sends them.
fn encoded(m: &v4::Message) -> Vec<u8> {
    let mut bytes = Vec::new();
    m.encode(&mut Encoder::new(&mut bytes)).unwrap();
    bytes
}

fn kind(m: &v4::Message) -> MessageType {
    m.opts().msg_type().unwrap()
}

/// DISCOVER, probe wait, OFFER, REQUEST, ACK: the address bound at `now`.
fn lease(server: &mut Server, mac: MacAddress, name: Option<&str>, now: Duration) -> Ipv4Addr {
    let actions = server.handle(&discover(mac, name), now);
    let offered = if let [(offer, _)] = &replies(&actions)[..] {
        offer.yiaddr()
    } else {
        let [_] = probes(&actions)[..] else {
            panic!("neither an offer nor one probe: {actions:?}")
        };
        let actions = server.poll(now + PROBE_WAIT);
        let [(offer, _)] = &replies(&actions)[..] else {
            panic!("no offer after the probe: {actions:?}")
        };
        offer.yiaddr()
    };
    let actions = server.handle(&selecting(mac, offered, SERVER, name), now + PROBE_WAIT);
    let [(ack, _)] = &replies(&actions)[..] else {
        panic!("no reply to the request: {actions:?}")
    };
    assert_eq!(kind(ack), MessageType::Ack);
    ack.yiaddr()
}

#[test]
fn a_discover_is_offered_only_once_its_probe_went_unanswered() {
    let mut s = server();
    let actions = s.handle(&discover(ALICE, Some("vm1")), T0);
    assert_eq!(actions, vec![Action::Probe(ip(10))]);
    assert!(s.poll(T0 + PROBE_WAIT / 2).is_empty());
    // A retransmission while the probe runs is absorbed into it.
    assert!(
        s.handle(&discover(ALICE, Some("vm1")), T0 + PROBE_WAIT / 2)
            .is_empty()
    );
    assert_eq!(s.next_deadline(), Some(T0 + PROBE_WAIT));
    let actions = s.poll(T0 + PROBE_WAIT);
    let [(offer, destination)] = &replies(&actions)[..] else {
        panic!("{actions:?}")
    };
    assert!(actions.contains(&Action::SaveLeases));
    assert_eq!(kind(offer), MessageType::Offer);
    assert_eq!(offer.opcode(), Opcode::BootReply);
    assert_eq!(offer.xid(), 0x5eed);
    assert_eq!(offer.yiaddr(), ip(10));
    assert_eq!(*destination, Destination::Unicast(ip(10), ALICE));
    let opts = offer.opts();
    assert_eq!(
        opts.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(
        opts.get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    assert_eq!(
        opts.get(OptionCode::Renewal),
        Some(&DhcpOption::Renewal(1800))
    );
    assert_eq!(
        opts.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        opts.get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![ip(1)]))
    );
    assert_eq!(
        opts.get(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![SERVER]))
    );
    assert_eq!(
        opts.get(OptionCode::DomainName),
        Some(&DhcpOption::DomainName("lab.internal".into()))
    );
    assert_eq!(s.counters().offers, 1);
    assert_eq!(s.counters().discovers, 2);
}

#[test]
fn a_probe_started_before_the_clock_was_set_back_still_ends() {
    let mut s = server();
    s.handle(&discover(ALICE, None), T0);
    let earlier = T0 - Duration::from_secs(3600);
    assert_eq!(replies(&s.poll(earlier)).len(), 1);
}

#[test]
fn a_client_asking_for_broadcast_gets_broadcast() {
    let mut s = server();
    let mut d = discover(ALICE, None);
    d.set_flags(Flags::default().set_broadcast());
    s.handle(&d, T0);
    let [(offer, destination)] = &replies(&s.poll(T0 + PROBE_WAIT))[..] else {
        panic!()
    };
    assert!(offer.flags().broadcast());
    assert_eq!(*destination, Destination::Broadcast);
}

#[test]
fn a_probe_answered_by_another_station_sets_the_address_aside_and_probes_the_next() {
    let mut s = server();
    assert_eq!(probes(&s.handle(&discover(ALICE, None), T0)), vec![ip(10)]);
    // The client itself answering is no conflict.
    assert!(s.address_in_use(ip(10), ALICE, T0).is_empty());
    let actions = s.address_in_use(ip(10), STRANGER, T0);
    assert_eq!(probes(&actions), vec![ip(11)]);
    assert_eq!(s.counters().probe_conflicts, 1);
    let [(offer, _)] = &replies(&s.poll(T0 + PROBE_WAIT))[..] else {
        panic!()
    };
    assert_eq!(offer.yiaddr(), ip(11));
    // Set aside for a while: the next client is not offered .10 either, until the time is over.
    assert_eq!(
        probes(&s.handle(&discover(BOB, None), T0 + PROBE_WAIT)),
        vec![ip(12)]
    );
    let later = T0 + SET_ASIDE_TIME + Duration::from_secs(1);
    assert!(s.poll(later).contains(&Action::SaveLeases));
    assert_eq!(
        probes(&s.handle(&discover(CAROL, None), later)),
        vec![ip(10)]
    );
}

#[test]
fn a_discover_whose_every_probe_is_answered_gets_nothing_and_is_counted() {
    let mut s = Server::new(
        Config::new(&ConfigOptions {
            range: "10.0.0.10-10.0.0.30".into(),
            ..options()
        })
        .unwrap(),
        Leases::new(),
    );
    let mut probed = probes(&s.handle(&discover(ALICE, None), T0));
    for _ in 0..MAX_PROBES {
        let address = *probed.last().unwrap();
        probed = probes(&s.address_in_use(address, STRANGER, T0));
    }
    assert!(probed.is_empty());
    assert_eq!(s.counters().probe_conflicts, MAX_PROBES as u64);
    assert_eq!(s.counters().no_free_address, 1);
    assert!(replies(&s.poll(T0 + PROBE_WAIT)).is_empty());
}

#[test]
fn a_request_for_the_offer_is_acked_and_names_the_guest() {
    let mut s = server();
    assert_eq!(lease(&mut s, ALICE, Some("VM1"), T0), ip(10));
    assert_eq!(s.names(T0), vec![("vm1".to_string(), ip(10))]);
    assert_eq!(s.leases().active_count(T0.as_secs()), 1);
    assert_eq!(s.counters().acks, 1);
}

#[test]
fn a_request_naming_another_server_withdraws_the_offer() {
    let mut s = server();
    s.handle(&discover(ALICE, None), T0);
    s.poll(T0 + PROBE_WAIT);
    let actions = s.handle(&selecting(ALICE, ip(10), ip(200), None), T0 + PROBE_WAIT);
    assert_eq!(actions, vec![Action::SaveLeases]);
    assert!(s.leases().get(ALICE).is_none());
}

#[test]
fn a_request_for_another_address_than_offered_or_anothers_is_naked() {
    let mut s = server();
    lease(&mut s, ALICE, None, T0);
    s.handle(&discover(BOB, None), T0);
    s.poll(T0 + PROBE_WAIT);
    for request in [
        selecting(BOB, ip(12), SERVER, None),
        init_reboot(BOB, ip(10)),
        init_reboot(BOB, ip(50)),
        renewing(BOB, ip(10)),
        init_reboot(BOB, Ipv4Addr::new(192, 168, 1, 5)),
    ] {
        let [(nak, destination)] = &replies(&s.handle(&request, T0 + PROBE_WAIT))[..] else {
            panic!()
        };
        assert_eq!(kind(nak), MessageType::Nak);
        assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(*destination, Destination::Broadcast);
        assert!(nak.opts().get(OptionCode::AddressLeaseTime).is_none());
    }
    assert_eq!(s.counters().naks, 5);
}

#[test]
fn a_renewal_extends_the_lease_and_goes_to_the_clients_address() {
    let mut s = server();
    lease(&mut s, ALICE, Some("vm1"), T0);
    let half = T0 + Duration::from_secs(1800);
    let [(ack, destination)] = &replies(&s.handle(&renewing(ALICE, ip(10)), half))[..] else {
        panic!()
    };
    assert_eq!(kind(ack), MessageType::Ack);
    assert_eq!(ack.ciaddr(), ip(10));
    assert_eq!(*destination, Destination::Unicast(ip(10), ALICE));
    assert_eq!(
        s.leases().get(ALICE).unwrap().expires,
        half.as_secs() + 3600
    );
    // The name sent at first stays.
    assert_eq!(s.names(half), vec![("vm1".to_string(), ip(10))]);
}

#[test]
fn an_init_reboot_for_its_own_address_is_acked() {
    let mut s = server();
    lease(&mut s, ALICE, None, T0);
    let [(ack, _)] =
        &replies(&s.handle(&init_reboot(ALICE, ip(10)), T0 + Duration::from_secs(10)))[..]
    else {
        panic!()
    };
    assert_eq!(kind(ack), MessageType::Ack);
}

#[test]
fn a_request_without_a_server_of_a_client_without_a_lease_is_not_answered() {
    let mut s = server();
    assert!(s.handle(&init_reboot(ALICE, ip(10)), T0).is_empty());
    assert!(s.handle(&renewing(ALICE, ip(11)), T0).is_empty());
    assert_eq!(s.counters().unknown_lease, 2);
    assert!(s.leases().get(ALICE).is_none());
}

#[test]
fn an_address_used_without_a_lease_is_set_aside() {
    let mut s = server();
    assert_eq!(
        s.address_in_use(ip(10), STRANGER, T0),
        vec![Action::SaveLeases]
    );
    // Seen again: kept aside, nothing new to save.
    assert!(s.address_in_use(ip(10), STRANGER, T0).is_empty());
    assert!(
        s.address_in_use(Ipv4Addr::new(192, 168, 0, 1), STRANGER, T0)
            .is_empty()
    );
    assert_eq!(s.counters().claimed_without_lease, 1);
    assert_eq!(lease(&mut s, ALICE, None, T0), ip(11));
    // A client's own address, expired or not, stays its own.
    assert!(
        s.address_in_use(ip(11), ALICE, T0 + Duration::from_secs(7200))
            .is_empty()
    );
    assert_eq!(
        lease(&mut s, ALICE, None, T0 + Duration::from_secs(7200)),
        ip(11)
    );
}

#[test]
fn a_released_address_comes_back_to_the_same_client() {
    let mut s = server();
    lease(&mut s, ALICE, Some("vm1"), T0);
    assert_eq!(
        s.handle(&releasing(ALICE, ip(10)), T0 + Duration::from_secs(5)),
        vec![Action::SaveLeases]
    );
    assert_eq!(s.leases().active_count(T0.as_secs() + 5), 0);
    assert!(s.names(T0 + Duration::from_secs(5)).is_empty());
    // Another client gets a fresh address; the released one waits for its owner.
    assert_eq!(
        lease(&mut s, BOB, None, T0 + Duration::from_secs(6)),
        ip(11)
    );
    assert_eq!(
        lease(&mut s, ALICE, None, T0 + Duration::from_secs(7)),
        ip(10)
    );
    // A release of what it does not hold is counted.
    assert!(s.handle(&releasing(CAROL, ip(12)), T0).is_empty());
    assert_eq!(s.counters().unknown_lease, 1);
}

#[test]
fn a_declined_address_is_set_aside_and_the_client_gets_another() {
    let mut s = server();
    lease(&mut s, ALICE, None, T0);
    assert_eq!(
        s.handle(&declining(ALICE, ip(10)), T0),
        vec![Action::SaveLeases]
    );
    assert_eq!(s.counters().declines, 1);
    assert_eq!(
        lease(&mut s, ALICE, None, T0 + Duration::from_secs(1)),
        ip(11)
    );
}

#[test]
fn an_inform_gets_the_options_without_a_lease() {
    let mut s = server();
    let mut inform = message(ALICE, MessageType::Inform);
    inform.set_ciaddr(ip(77));
    let [(ack, destination)] = &replies(&s.handle(&inform, T0))[..] else {
        panic!()
    };
    assert_eq!(kind(ack), MessageType::Ack);
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(*destination, Destination::Unicast(ip(77), ALICE));
    assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(ack.opts().get(OptionCode::DomainNameServer).is_some());
    assert!(s.leases().get(ALICE).is_none());
}

#[test]
fn an_expired_lease_frees_its_address_and_its_name_only_when_the_range_is_used_up() {
    let mut s = server();
    assert_eq!(lease(&mut s, ALICE, Some("vm1"), T0), ip(10));
    assert_eq!(lease(&mut s, BOB, None, T0), ip(11));
    assert_eq!(lease(&mut s, CAROL, None, T0), ip(12));
    s.handle(&discover(DAVE, None), T0);
    assert_eq!(s.counters().no_free_address, 1);
    let expired = T0 + Duration::from_secs(3601);
    assert!(s.names(expired).is_empty());
    // Bob and Carol renewed; Alice did not.
    s.handle(&renewing(BOB, ip(11)), T0 + Duration::from_secs(1800));
    s.handle(&renewing(CAROL, ip(12)), T0 + Duration::from_secs(1800));
    assert_eq!(lease(&mut s, DAVE, None, expired), ip(10));
    assert!(s.leases().get(ALICE).is_none());
}

#[test]
fn a_large_range_full_of_records_still_answers_at_once() {
    // 65,000 expired records in a /16: choosing must not look up every address against
    // every record.
    let config = Config::new(&ConfigOptions {
        subnet: "10.1.0.0/16".into(),
        range: "10.1.0.10-10.1.254.100".into(),
        ..ConfigOptions::default()
    })
    .unwrap();
    let mut leases = Leases::new();
    for (i, address) in config.range.iter().enumerate() {
        let n = i as u64;
        let mac = MacAddress::from_u64(0x0200_0000_0000 | n);
        leases.set(
            mac,
            super::leases::Lease {
                address,
                expires: T0.as_secs() - 1 - n % 7,
                bound: true,
                host_name: None,
            },
        );
    }
    let mut s = Server::new(config, leases);
    let started = std::time::Instant::now();
    let actions = s.handle(&discover(STRANGER, None), T0);
    assert_eq!(probes(&actions).len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn leases_survive_a_restart_the_same_mac_gets_the_same_address() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lab.leases");
    let mut s = server();
    lease(&mut s, ALICE, Some("vm1"), T0);
    lease(&mut s, BOB, Some("vm2"), T0);
    s.leases().save(&path).unwrap();
    let config = Config::new(&options()).unwrap();
    let mut restarted = Server::new(config, Leases::load(&path).unwrap());
    assert_eq!(restarted.names(T0).len(), 2);
    // Bob comes first this time, and still gets his own address, without a probe.
    let later = T0 + Duration::from_secs(60);
    let actions = restarted.handle(&discover(BOB, Some("vm2")), later);
    assert!(probes(&actions).is_empty());
    assert_eq!(replies(&actions)[0].0.yiaddr(), ip(11));
    assert_eq!(lease(&mut restarted, ALICE, Some("vm1"), later), ip(10));
}

#[test]
fn a_static_host_gets_its_address_and_nobody_else_does() {
    let mut s = Server::new(
        Config::new(&ConfigOptions {
            hosts: vec![format!("{CAROL}=10.0.0.10"), format!("{DAVE}=10.0.0.100")],
            ..options()
        })
        .unwrap(),
        Leases::new(),
    );
    assert_eq!(lease(&mut s, ALICE, None, T0), ip(11));
    assert_eq!(lease(&mut s, DAVE, None, T0), ip(100));
    assert_eq!(lease(&mut s, CAROL, None, T0), ip(10));
    let [(nak, _)] = &replies(&s.handle(&init_reboot(BOB, ip(100)), T0))[..] else {
        panic!()
    };
    assert_eq!(kind(nak), MessageType::Nak);
}

#[test]
fn host_names_are_checked_and_not_shared() {
    let mut s = server();
    lease(&mut s, ALICE, Some("vm1.example.com"), T0);
    lease(&mut s, BOB, Some("bad_name"), T0);
    lease(&mut s, CAROL, Some("VM1"), T0);
    assert_eq!(s.counters().bad_host_names, 2);
    assert_eq!(s.names(T0), vec![("vm1".to_string(), ip(10))]);
}

#[test]
fn the_fqdn_option_names_the_guest() {
    use dhcproto::v4::fqdn::{ClientFQDN, FqdnFlags};
    let mut s = server();
    let mut d = discover(ALICE, None);
    let name = hickory_proto::rr::Name::from_ascii("web.lab.internal.").unwrap();
    d.opts_mut().insert(DhcpOption::ClientFQDN(ClientFQDN::new(
        FqdnFlags::default(),
        name,
    )));
    s.handle(&d, T0);
    s.poll(T0 + PROBE_WAIT);
    let mut r = d.clone();
    r.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip(10)));
    r.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    s.handle(&r, T0 + PROBE_WAIT);
    assert_eq!(s.names(T0 + PROBE_WAIT), vec![("web".to_string(), ip(10))]);
}

#[test]
fn messages_a_client_gets_wrong_are_counted_and_unanswered() {
    let mut s = server();
    let mut reply = discover(ALICE, None);
    reply.set_opcode(Opcode::BootReply);
    assert!(s.handle(&reply, T0).is_empty());
    let mut relayed = discover(ALICE, None);
    relayed.set_giaddr(ip(99));
    assert!(s.handle(&relayed, T0).is_empty());
    let mut untyped = discover(ALICE, None);
    untyped.opts_mut().remove(OptionCode::MessageType);
    assert!(s.handle(&untyped, T0).is_empty());
    let mut token_ring = discover(ALICE, None);
    token_ring.set_htype(HType::Unknown(6));
    assert!(s.handle(&token_ring, T0).is_empty());
    let multicast = discover(MacAddress([1, 0, 0x5e, 0, 0, 1]), None);
    assert!(s.handle(&multicast, T0).is_empty());
    let no_address = message(ALICE, MessageType::Request);
    assert!(s.handle(&no_address, T0).is_empty());
    let c = s.counters();
    assert_eq!(
        (
            c.not_a_request,
            c.relayed,
            c.unknown_message_type,
            c.not_ethernet,
            c.malformed
        ),
        (1, 1, 1, 2, 1)
    );
}

#[test]
fn a_chaddr_length_beyond_the_field_is_refused_not_sliced() {
    // dhcproto slices chaddr by the hlen the client wrote; 17 and up would panic there.
    let mut bytes = encoded(&discover(ALICE, None));
    bytes[2] = 200;
    let m = v4::Message::decode(&mut Decoder::new(&bytes)).unwrap();
    let mut s = server();
    assert!(s.handle(&m, T0).is_empty());
    assert_eq!(s.counters().not_ethernet, 1);
}

/// One step of a client population, for the property below.
#[derive(Debug, Clone)]
enum Step {
    Discover(usize),
    Request(usize),
    Renew(usize),
    Release(usize),
    Decline(usize),
    Conflict(u8),
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..5usize).prop_map(Step::Discover),
        (0..5usize).prop_map(Step::Request),
        (0..5usize).prop_map(Step::Renew),
        (0..5usize).prop_map(Step::Release),
        (0..5usize).prop_map(Step::Decline),
        (10..13u8).prop_map(Step::Conflict),
        (0..4000u64).prop_map(Step::Wait),
    ]
}

/// Runs `actions` through a segment where `strangers` hold some addresses: every probe
/// for one of them is answered, as their owner's kernel would, until no probe is left.
fn answer_probes(
    s: &mut Server,
    mut actions: Vec<Action>,
    strangers: &[Ipv4Addr],
    now: Duration,
) -> Vec<Action> {
    let mut all = Vec::new();
    for _ in 0..=MAX_PROBES {
        let answered: Vec<Ipv4Addr> = probes(&actions)
            .into_iter()
            .filter(|a| strangers.contains(a))
            .collect();
        all.append(&mut actions);
        for address in answered {
            actions.extend(s.address_in_use(address, STRANGER, now));
        }
        if actions.is_empty() {
            break;
        }
    }
    all
}

proptest! {
    /// Whatever clients do, and whichever addresses other stations take: no two clients
    /// hold one address, every lease is in the range, and an address another station
    /// answers for is never offered.
    #[test]
    fn no_address_is_handed_out_twice_nor_while_in_use(steps in proptest::collection::vec(step(), 1..80)) {
        let macs: Vec<MacAddress> = (1..=5u8).map(|i| MacAddress([2, 0, 0, 0, 0, i])).collect();
        let mut s = server();
        let mut now = T0;
        let mut offered: Vec<Option<Ipv4Addr>> = vec![None; 5];
        let mut strangers: Vec<Ipv4Addr> = Vec::new();
        for step in steps {
            let actions = match step {
                Step::Discover(i) => s.handle(&discover(macs[i], None), now),
                Step::Request(i) => match offered[i] {
                    Some(a) => s.handle(&selecting(macs[i], a, SERVER, None), now),
                    None => Vec::new(),
                },
                Step::Renew(i) => match offered[i] {
                    Some(a) => s.handle(&renewing(macs[i], a), now),
                    None => Vec::new(),
                },
                Step::Release(i) => match offered[i] {
                    Some(a) => s.handle(&releasing(macs[i], a), now),
                    None => Vec::new(),
                },
                Step::Decline(i) => match offered[i] {
                    Some(a) => s.handle(&declining(macs[i], a), now),
                    None => Vec::new(),
                },
                Step::Conflict(last) => {
                    // A station takes a free address (one no client holds now).
                    let held = s.leases().holder(ip(last)).is_some_and(|(_, l)| l.is_active(now.as_secs()));
                    if held || strangers.contains(&ip(last)) {
                        Vec::new()
                    } else {
                        // It announces the address (RFC 5227), as it would answer probes.
                        strangers.push(ip(last));
                        s.address_in_use(ip(last), STRANGER, now)
                    }
                }
                Step::Wait(seconds) => {
                    now += Duration::from_secs(seconds);
                    let mut actions = s.poll(now);
                    // Stations that use an address keep speaking ARP from it.
                    for &address in &strangers {
                        actions.extend(s.address_in_use(address, STRANGER, now));
                    }
                    actions
                }
            };
            let actions = answer_probes(&mut s, actions, &strangers, now);
            for (reply, _) in replies(&actions) {
                if kind(&reply) == MessageType::Offer {
                    let client = macs.iter().position(|m| m.octets()[..] == reply.chaddr()[..]).unwrap();
                    offered[client] = Some(reply.yiaddr());
                    prop_assert!(!strangers.contains(&reply.yiaddr()), "offered {}, which another station holds", reply.yiaddr());
                }
            }
            let mut active: Vec<Ipv4Addr> = s
                .leases()
                .iter()
                .filter(|(_, l)| l.is_active(now.as_secs()))
                .map(|(_, l)| l.address)
                .collect();
            for address in &active {
                prop_assert!((10..=12).contains(&address.octets()[3]));
            }
            let count = active.len();
            active.sort();
            active.dedup();
            prop_assert_eq!(active.len(), count);
        }
    }
}

mod wire;
