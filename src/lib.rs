//! # guestnet: a shared virtual Ethernet for the guests of one host
//!
//! guestnet lets VMs, network namespaces and plain processes on one machine share an
//! Ethernet segment without a bridge, without root and without a switch process in the
//! data path. It descends from the guest network of lguest (Linux 2.6.23, 2007), where
//! guests shared a page of peer slots, each holding a MAC, and a sender found its
//! receiver by MAC and copied the frame straight into the receiver's buffers. guestnet
//! keeps that shape — one copy, forwarding done by the sender, a peer table anyone can
//! read — and mends what lguest's authors and reviewers listed as missing or wrong.
//!
//! ## The network
//!
//! A network is one file on a memory file system (`/dev/shm/guestnet/NAME` by default)
//! that every member maps. It holds, in this order (see [`shm::layout`]):
//!
//! - a **header**: magic, layout version and geometry (max peers, ring slots, MTU); a
//!   region of another version or whose size disagrees with its geometry is refused;
//! - the **peer table**: per slot a published MAC, flags (promiscuous, all-multicast,
//!   uplink, link down, quarantined), the owner's identity and its counters;
//! - the **VLAN table**: per slot the 802.1Q VLANs the peer is in ([`network::vlan`]);
//! - the **learned table**: (VLAN, source MAC) → peer, with ageing, so that VMs whose MAC
//!   nobody told us, and uplinks that front many MACs, are reached directly
//!   ([`network::fdb`]);
//! - one **receive ring** per peer: a multi-producer, single-consumer ring of fixed-size
//!   slots whose per-slot state word is claimed by compare-and-swap ([`network::ring`]).
//!
//! ## Forwarding happens in the sender
//!
//! To send, a peer checks the frame ([`wire::ethernet::validate_frame`]), learns its
//! source address, resolves the receivers from its cached view of the peer table
//! ([`network::forward::resolve`]: unicast to the owner of the address, broadcast and
//! multicast to every peer whose filter takes it, unknown unicast flooded or dropped,
//! promiscuous peers see everything, never back to the sender) and copies the frame once
//! into each receiver's ring, asking as it does for the next slot's cache lines writable
//! ([`shm::prefetch`]), so that the next copy does not wait on the receiver's core. There
//! is no switch process to fail or to saturate; the network scales with its senders.
//!
//! The network is a VLAN-aware bridge (IEEE 802.1Q). Each frame gets one VLAN as it
//! enters, from its sender's port (access or trunk, [`network::vlan`]); every rule above
//! then holds within that VLAN, and each receiver's copy is written tagged or untagged as
//! its port wants. A peer that names no VLAN is a trunk of all of them with native VLAN
//! 1, so a network nobody configures VLANs on behaves as a plain Ethernet segment.
//!
//! ## Receiving, NAPI-style
//!
//! A receiver drains its ring up to a budget without any system call and sleeps on a
//! futex in the ring when it runs dry. A sender wakes a receiver only if it found it
//! asleep, once per batch, so under load there are far fewer wake-ups than frames, and
//! an idle network costs nothing ([`network::receive`]).
//!
//! ## Nothing is lost without a count, and nobody can wedge the others
//!
//! Every frame a peer accepts is either delivered to each receiver or counted with a
//! reason on both sides ([`network::counters::DropReason`]). A full ring refuses the new
//! frame and never overwrites an unread one. Every member holds a lock on its own byte of
//! the region file; when a process dies, even halfway through writing a frame, the kernel
//! drops its lock and the next liveness sweep (a few per second, by whoever gets there
//! first) reclaims its slot, marks its half-written frames abandoned and forgets its
//! addresses. Everything read from the region is treated as untrusted: lengths are
//! clamped, indices are reduced into checked ranges, frames are copied out before they
//! are checked, and every loop over shared data is bounded.
//!
//! ## Ports
//!
//! Every way in is a peer ([`ports`]): a Rust process through this library, a VM through
//! vhost-user (its own virtio-net driver; the port reads and writes the guest's rings in
//! its shared memory, so a frame goes from guest buffers into a receiver's ring in one
//! copy), QEMU's `-netdev stream` and `-netdev dgram` sockets, a pcap capture, a TAP device
//! in a network namespace, a VXLAN tunnel to other hosts (one uplink peer standing for all
//! of them). One port process may host many peers, one per connection, VM or device;
//! between the guests of one process (VMs of a vhost-user port, namespaces of a TAP port)
//! a frame skips the network's ring and goes straight from one to the other, after the
//! same routing, checks and accounting as any copy ([`network::send::Shortcut`]).
//! One port is a service rather than a way in: the DHCP server ([`ports::dhcp`]), a
//! station of its own on the segment that gives the guests addresses and, with a
//! domain, answers DNS for their names.
//!
//! A port is where untrusted input arrives, and each treats it as the region is treated:
//! a guest's descriptors, a frontend's messages, a socket's lengths are parsed through
//! checked views, and what fails is counted by reason and dropped; a peer that keeps
//! failing is quarantined, never allowed to stall or crash the port's other peers.
//!
//! ## Offloads
//!
//! A frame may carry a virtio-net header ([`wire::virtio_net`]) that leaves work to the
//! receiver: a checksum to complete, a 64 KiB TCP super-frame to cut into segments. Peers
//! advertise which of these they can take (a TAP hands them to its kernel, a VM to its
//! driver, as negotiated); frames travel
//! whole between such peers, in per-ring large buffers, and are finished in software
//! ([`wire::offload`]) for everyone else, so stream ports and captures always see
//! ordinary, MTU-sized frames with correct checksums.
//!
//! ## Layers
//!
//! Each layer uses only the ones above it in this table.
//!
//! | module | deals with |
//! | --- | --- |
//! | [`wire`] | byte formats, no I/O, no clock: [`wire::ethernet`], [`wire::virtio_net`] headers and [`wire::offload`] (software checksums and segmentation), [`wire::stream`] framing, [`wire::pcap`], [`wire::ipv4`], [`wire::udp`], [`wire::icmp`] and [`wire::vxlan`] headers, [`wire::arp`], [`wire::vhost_user`] messages |
//! | [`testframe`] | the numbered, checksummed test frames that `pktgen`, `sink`, `bench` and the tests send |
//! | [`shm`] | the only `unsafe` code: mapping the region, checked access, file locks, cache-line prefetches, checked access to a guest's memory; [`shm::layout`] is the region byte for byte |
//! | [`network`] | the region and its peers: [`network::ring`], [`network::forward`], [`network::fdb`], [`network::send`], [`network::receive`], [`network::peer`], [`network::offloads`], [`network::counters`], [`network::status`], [`network::check`] |
//! | [`ports`] | adapters from sockets, devices and VMs to peers: [`ports::stream`], [`ports::dgram`], [`ports::capture`], [`ports::tap`] (with [`ports::rtnetlink`]), [`ports::vhost_user`], [`ports::vxlan`], [`ports::dhcp`]; their shared pieces [`ports::socket`], [`ports::doorbell`], [`ports::error`] |
//! | [`bench`](mod@bench) | what the benchmarks measure and report, independent of how they are run |
//! | [`cli`] | (the default feature `cli`) the `guestnet` command, one module per subcommand ([`cli::admin`] for create, status, destroy…; [`cli::up`] runs and supervises what a TOML file declares, each port as the command's own subcommand in a child process), and its shared pieces [`cli::format`], [`cli::port_status`], [`cli::child`], [`cli::guest`] |
//!
//! ## Example
//!
//! ```
//! use guestnet::network::{CreateOptions, JoinOptions, Network};
//! use guestnet::wire::MacAddress;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?; // usually guestnet::network::default_dir()
//! let net = Network::create(dir.path(), "lab", CreateOptions::default())?;
//! let mut alice = net.join(JoinOptions::default())?;
//! let mut bob = net.join(JoinOptions::default())?;
//!
//! // An Ethernet frame from Alice to Bob: destination, source, EtherType, payload.
//! let mut frame = Vec::new();
//! frame.extend_from_slice(&bob.mac().octets());
//! frame.extend_from_slice(&alice.mac().octets());
//! frame.extend_from_slice(&[0x88, 0xb5]);
//! frame.extend_from_slice(b"hello, bob");
//! alice.send(&frame);
//!
//! let mut received = Vec::new();
//! bob.receive(64, |f| received.push(f.to_vec()));
//! assert_eq!(received, vec![frame]);
//! assert_eq!(bob.counters().rx_packets, 1);
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]
// The table above names the command's modules, which a build without the `cli` feature
// (the fuzz targets', a library user's) leaves out: their links resolve only with it.
#![cfg_attr(not(feature = "cli"), allow(rustdoc::broken_intra_doc_links))]

pub mod bench;
#[cfg(feature = "cli")]
pub mod cli;
pub mod network;
pub mod ports;
pub mod shm;
pub mod testframe;
pub mod wire;
