//! Fuzz target `dhcp_station`: any frame a guest sends to the DHCP port.
//!
//! A guest chooses every byte of what reaches `guestnet dhcp`: ARP, DHCP messages (which
//! the `dhcproto` crate decodes) and DNS queries (which `hickory-proto` decodes). The
//! station never panics on them, and everything it sends back is well formed: an
//! Ethernet frame from its own MAC carrying ARP, or IPv4 with a right header checksum
//! and UDP with a right checksum, or ICMP.
//!
//! Input: `[how][bytes]`. `how & 3`: 0, `bytes` is a whole frame; 1, a DHCP message in a
//! broadcast UDP datagram to port 67; 2, a DNS query in a UDP datagram to the server's
//! port 53; 3, an ARP packet broadcast. A DHCP message comes from the hardware address
//! it names (bytes 28 to 33), as the station drops one that asks in another's name. Bit 2: let the probe wait pass afterwards, so an
//! offer goes out.
#![no_main]

use std::net::Ipv4Addr;
use std::time::Duration;

use guestnet::ports::dhcp::config::{Config, ConfigOptions};
use guestnet::ports::dhcp::endpoint::{CLIENT_PORT, DNS_PORT, Endpoint, SERVER_PORT};
use guestnet::ports::dhcp::leases::Leases;
use guestnet::ports::dhcp::server::{PROBE_WAIT, Server};
use guestnet::wire::arp::{ArpPacket, ArpRepr};
use guestnet::wire::ipv4::{self, Ipv4Packet, Ipv4Repr};
use guestnet::wire::udp::{self, UdpPacket, UdpRepr};
use guestnet::wire::{EtherType, EthernetFrame, MacAddress, ethernet};
use libfuzzer_sys::fuzz_target;

const SERVER_MAC: MacAddress = MacAddress([2, 0xaa, 0, 0, 0, 1]);
const GUEST_MAC: MacAddress = MacAddress([2, 0, 0, 0, 0, 1]);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
const NOW: Duration = Duration::from_secs(1_800_000_000);

fn station() -> Endpoint {
    let config = Config::new(&ConfigOptions {
        subnet: "10.0.0.0/24".into(),
        range: "10.0.0.10-10.0.0.20".into(),
        router: Some(Ipv4Addr::new(10, 0, 0, 1)),
        domain: Some("lab.internal".into()),
        ..ConfigOptions::default()
    })
    .expect("the fuzz configuration is valid");
    Endpoint::new(SERVER_MAC, Server::new(config, Leases::new())).expect("zone")
}

fn ethernet_frame(
    source: MacAddress,
    destination: MacAddress,
    ethertype: EtherType,
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = vec![0u8; ethernet::HEADER_LEN];
    let mut view = EthernetFrame::new_unchecked(&mut frame[..]);
    view.set_destination(destination);
    view.set_source(source);
    view.set_ethertype(ethertype);
    frame.extend_from_slice(payload);
    frame
}

fn udp_frame(
    source_mac: MacAddress,
    destination: (MacAddress, Ipv4Addr),
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = udp::HEADER_LEN + payload.len();
    let mut packet = vec![0u8; ipv4::HEADER_LEN + udp_len];
    let source = Ipv4Addr::new(10, 0, 0, 10);
    let mut ip = Ipv4Packet::new_unchecked(&mut packet[..]);
    Ipv4Repr {
        source,
        destination: destination.1,
        protocol: ipv4::PROTOCOL_UDP,
        payload_len: udp_len,
        ttl: 64,
        dont_fragment: false,
    }
    .emit(&mut ip);
    ip.fill_checksum();
    let mut datagram = UdpPacket::new_unchecked(&mut packet[ipv4::HEADER_LEN..]);
    UdpRepr {
        source_port: ports.0,
        destination_port: ports.1,
        payload_len: payload.len(),
    }
    .emit(&mut datagram);
    packet[ipv4::HEADER_LEN + udp::HEADER_LEN..].copy_from_slice(payload);
    UdpPacket::new_unchecked(&mut packet[ipv4::HEADER_LEN..]).fill_checksum(source, destination.1);
    ethernet_frame(source_mac, destination.0, EtherType::Ipv4, &packet)
}

/// Everything the station sends is a frame it could have been taught to write.
fn check_sent(frame: &[u8]) {
    let eth = EthernetFrame::new_checked(frame).expect("a whole Ethernet header");
    assert_eq!(eth.source(), SERVER_MAC);
    match eth.ethertype() {
        EtherType::Arp => {
            let arp = ArpPacket::new_checked(eth.payload()).expect("a whole ARP packet");
            ArpRepr::parse(&arp).expect("well-formed ARP");
        }
        EtherType::Ipv4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).expect("a whole IPv4 packet");
            let header = Ipv4Repr::parse(&ip).expect("a right IPv4 header");
            assert_eq!(header.source, SERVER);
            if header.protocol == ipv4::PROTOCOL_UDP {
                let datagram = UdpPacket::new_checked(ip.payload()).expect("a whole UDP datagram");
                UdpRepr::parse(&datagram, header.source, header.destination)
                    .expect("a right UDP checksum");
            } else {
                assert_eq!(header.protocol, ipv4::PROTOCOL_ICMP);
            }
        }
        other => panic!("the station sent {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&how, bytes)) = data.split_first() else {
        return;
    };
    // The client hardware address, as the frame's source.
    let client = bytes
        .get(28..34)
        .and_then(MacAddress::from_slice)
        .unwrap_or(GUEST_MAC);
    let frame = match how & 3 {
        0 => bytes.to_vec(),
        1 => udp_frame(
            client,
            (MacAddress::BROADCAST, Ipv4Addr::BROADCAST),
            (CLIENT_PORT, SERVER_PORT),
            bytes,
        ),
        2 => udp_frame(GUEST_MAC, (SERVER_MAC, SERVER), (40000, DNS_PORT), bytes),
        _ => ethernet_frame(GUEST_MAC, MacAddress::BROADCAST, EtherType::Arp, bytes),
    };
    let mut station = station();
    for sent in station.receive(&frame, NOW) {
        check_sent(&sent);
    }
    if how & 4 != 0 {
        for sent in station.poll(NOW + PROBE_WAIT) {
            check_sent(&sent);
        }
    }
});
