//! The wire layer: the byte formats guestnet reads and writes, and nothing else.
//!
//! Everything in here is a pure function of bytes. No module opens a file, touches a socket
//! or reads the clock: a timestamp arrives as an argument, a stream arrives as slices the
//! caller already read. That keeps the formats testable with byte literals and property
//! tests, and lets the same code serve every host — the shared-memory network, the port
//! programs, the fuzz targets — without any of them dragging the others' I/O along.
//!
//! Twelve modules live here:
//!
//! * [`ethernet`] — the frames themselves. The network moves bare Ethernet frames and looks
//!   at only their first fourteen bytes, so this module is a thin, checked view over a
//!   buffer ([`EthernetFrame`]) plus a small validated summary ([`EthernetRepr`]) that the
//!   delivery rules are written against. [`ethernet::validate_frame`] is the one place the
//!   length and source-address rules of the design are spelled out.
//! * [`vlan`] — the 802.1Q tag after a frame's addresses ([`vlan::VlanTag`],
//!   [`vlan::VlanTci`]), and [`vlan::retag_parts`], which removes, replaces or adds it as a
//!   frame leaves a VLAN-aware port, as parts for a gather write.
//! * [`flow`] — a hash of the flow a frame belongs to (addresses, protocol, ports), which
//!   spreads conversations over a VM's receive queues and over VXLAN source ports.
//! * [`stream`] — QEMU's `-netdev stream` framing: a 4-byte big-endian length before each
//!   frame. A byte stream arrives in arbitrary pieces and a guest controls the lengths, so
//!   the decoder is incremental, bounded, and refuses to guess once a length is absurd.
//! * [`pcap`] — the classic libpcap capture file, so a capture port can write files that
//!   Wireshark and tcpdump open, and tests can read them back.
//! * [`virtio_net`] — the virtio-net header a guest (or a TAP device with `IFF_VNET_HDR`)
//!   puts in front of each frame to say which offloads — checksum, TSO, USO — it left
//!   undone. Its numbers are the guest's, so the header is only ever a plain copy.
//! * [`offload`] — finishing those offloads in software for a peer that cannot take them:
//!   completing a partial checksum, and cutting a 64 KiB TCP or UDP super-packet into
//!   segments, without trusting any offset the guest wrote.
//! * [`vhost_user`] — the messages a VMM sends a vhost-user backend over its socket: a
//!   12-byte header, then a payload whose layout the request code decides; a frontend is
//!   untrusted, so the header is checked alone before the payload is read, and each
//!   payload against the request it claims to be.
//! * [`ipv4`] and [`udp`] — the outer headers of a VXLAN datagram, which the VXLAN port
//!   writes itself when it sends through a raw socket (to choose the UDP source port per
//!   flow), and of the DHCP and DNS messages the DHCP port exchanges with guests. Each
//!   field is a named byte range; the ports never write an offset of their own.
//! * [`vxlan`] — the 8-byte VXLAN header (RFC 7348) that carries a frame between hosts in
//!   a UDP datagram, the UDP source port hashed from the inner frame, and the overhead
//!   that decides whether a frame fits the underlay.
//!
//! * [`arp`] — ARP for IPv4 over Ethernet, which the DHCP port answers for its own
//!   address and sends to probe an address before offering it, and [`icmp`] echo, which
//!   it answers so that `ping` finds it.
//!
//! Every view follows one rule, borrowed from smoltcp: construct it with `new_checked` (or
//! call `check_len` yourself) and after that no accessor panics, whatever the bytes are.
//! Guests and peers write these bytes; a malformed frame must become an error value that
//! the caller counts, never a crash.

pub mod arp;
pub mod ethernet;
pub mod flow;
pub mod icmp;
pub mod ipv4;
pub mod offload;
pub mod pcap;
pub mod stream;
pub mod udp;
pub mod vhost_user;
pub mod virtio_net;
pub mod vlan;
pub mod vxlan;

pub use ethernet::{EtherType, EthernetFrame, EthernetRepr, MacAddress, WireError};
pub use offload::{OffloadError, Segmenter};
pub use virtio_net::{GsoType, VirtioNetHdr};
