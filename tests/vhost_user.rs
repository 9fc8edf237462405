//! The vhost-user port end to end: the real `guestnet vhost-user` process, driven by the
//! mock frontend of `vhost_support` (a QEMU stand-in with a virtqueue driver), and a
//! library peer on the same network at the other end.
//!
//! Tests come in five groups: frames crossing both ways; a guest that writes bad
//! descriptor chains (each test named after what it does wrong, and each checks the
//! contract's counter, that the backend lives on and that good frames still pass); a guest
//! that keeps misbehaving and gets quarantined; a frontend that sends malformed or
//! out-of-order protocol messages, after which a fresh connection must still work; and the
//! command's options and life cycle (status states, client mode, SIGTERM, stale sockets).
//!
//! Every wait is bounded ([`DEADLINE`]); the backend's status file lags by up to a second,
//! so counters are polled until they reach what the test expects.

mod vhost_support;

use std::path::Path;
use std::time::{Duration, Instant};

use guestnet::network::{CreateOptions, JoinOptions, Network, Peer, PortKind};
use guestnet::ports::vhost_user::mock::{Descriptor, GuestMemory, desc_flags};
use guestnet::shm::layout::Geometry;
use guestnet::wire::MacAddress;
use vhost_support::{
    Backend, DEADLINE, Frontend, MemoryMessages, NET_HEADER_LEN, SetupOptions, TX_QUEUE, Virtqueue,
    counter, feature, flags, guest_memory, memory_fd, memory_table, refusals, request,
    single_region, u64_payload, user_address, vring_address, vring_state, wait_for_status,
};

const NETWORK: &str = "lab";

/// The MAC the mock guest sends from (QEMU's default prefix).
const GUEST_MAC: MacAddress = MacAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

/// `VIRTIO_NET_F_MQ`.
const MQ: u64 = 1 << 22;
/// `CSUM`, `GUEST_CSUM`, `GUEST_TSO4`, `GUEST_TSO6`, `HOST_TSO4`, `HOST_TSO6`.
const OFFLOADS: u64 = (1 << 0) | (1 << 1) | (1 << 7) | (1 << 8) | (1 << 11) | (1 << 12);
/// `VIRTIO_F_IN_ORDER`.
const IN_ORDER: u64 = 1 << 35;

/// A network in a private directory, a backend on it, and a library peer to talk to.
struct Lab {
    dir: tempfile::TempDir,
    network: Network,
    peer: Peer,
    backend: Backend,
}

impl Lab {
    /// Creates the network and the peer, then starts a backend serving `sockets`.
    fn start(sockets: &[&str]) -> Lab {
        Lab::start_with(sockets, &[])
    }

    /// [`Lab::start`] with extra `vhost-user` options.
    fn start_with(sockets: &[&str], extra: &[&str]) -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        let network =
            Network::create(dir.path(), NETWORK, CreateOptions::default()).expect("create");
        let peer = network
            .join(JoinOptions {
                label: "test peer".into(),
                ..JoinOptions::default()
            })
            .expect("join");
        let backend = Backend::start(dir.path(), NETWORK, sockets, extra);
        Lab {
            dir,
            network,
            peer,
            backend,
        }
    }

    fn socket(&self, i: usize) -> &Path {
        &self.backend.sockets[i]
    }

    /// Waits until the status of socket `i` satisfies `condition`.
    fn wait_status(
        &self,
        i: usize,
        what: &str,
        condition: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for_status(self.dir.path(), NETWORK, self.socket(i), what, condition)
    }

    /// Waits until counter `name` of socket `i` reaches `at_least`.
    fn wait_counter(&self, i: usize, name: &str, at_least: u64) -> serde_json::Value {
        self.wait_status(i, &format!("{name} ≥ {at_least}"), |entry| {
            counter(entry, name) >= at_least
        })
    }

    /// Connects a guest to socket `i` with QEMU's whole start-up sequence.
    fn guest(&self, i: usize, options: SetupOptions) -> Guest {
        Guest::set_up(Frontend::connect(self.socket(i)).expect("connect"), options)
    }

    /// A frontend on socket `i` that has done the feature negotiation only.
    fn negotiated(&self, i: usize) -> Frontend {
        let mut frontend = Frontend::connect(self.socket(i)).expect("connect");
        frontend
            .negotiate(MemoryMessages::SetMemTable)
            .expect("negotiate");
        frontend
    }

    /// Checks that the vhost-user peer's link is up now, with no waiting: the backend
    /// raises it before it acknowledges the message that started the receive ring, so a
    /// frame sent as soon as the frontend's setup returns is not dropped as `link_down`.
    fn assert_link_up(&self) {
        let peers = self.network.status().peers;
        assert!(
            peers
                .iter()
                .any(|p| p.kind == PortKind::VhostUser && !p.link_down),
            "the guest's link is not up after its setup: {peers:?}"
        );
    }

    /// After a refused request: the answer was a failure, the refusal is counted as
    /// `rejected_messages` and as a refusal of `kind` (and of no other kind), and the socket
    /// still serves a fresh frontend properly. `why` says what should have been refused.
    fn refused(&mut self, frontend: Frontend, ack: u64, kind: &str, why: &str) {
        assert_ne!(ack, 0, "not refused: {why}");
        drop(frontend);
        self.fresh_connection_works(0);
        let entry = self.wait_status(0, &format!("a refusal of kind {kind}"), |entry| {
            counter(entry, "rejected_messages") >= 1 && refusals(entry, kind) >= 1
        });
        assert_eq!(
            refusals(&entry, kind),
            counter(&entry, "rejected_messages"),
            "every refusal counted as {kind}: {why}"
        );
    }

    /// After a malformed message: the backend hung up, counted it, and the socket still
    /// serves a fresh frontend properly.
    fn hung_up_on(&mut self, mut frontend: Frontend) {
        assert!(frontend.closed_by_backend(), "the backend hangs up");
        self.fresh_connection_works(0);
        self.wait_counter(0, "bad_messages", 1);
    }

    /// Checks that the backend process lives and that a good frame from `guest` reaches
    /// the peer; returns the frames the peer got before it.
    fn good_frame_passes(&mut self, guest: &mut Guest, tag: u8) -> Vec<Vec<u8>> {
        assert!(self.backend.is_alive(), "the backend died");
        let good = frame(self.peer.mac(), GUEST_MAC, 100, tag);
        let head = guest.tx.send(&guest.memory, &packet(&good), 1, false);
        let earlier = wait_for_frame(&mut self.peer, &good);
        assert!(
            guest.tx.wait_used(&guest.memory, head).is_some(),
            "the good chain comes back used"
        );
        earlier
    }

    /// Checks that the backend lives and a new frontend on socket `i` can set up and send.
    fn fresh_connection_works(&mut self, i: usize) {
        assert!(self.backend.is_alive(), "the backend died");
        let mut guest = self.guest(i, SetupOptions::default());
        self.good_frame_passes(&mut guest, 0xee);
    }
}

/// A connected mock guest: its frontend, memory and queue pair.
struct Guest {
    frontend: Frontend,
    memory: GuestMemory,
    rx: Virtqueue,
    tx: Virtqueue,
}

impl Guest {
    /// Runs QEMU's start-up sequence over `frontend` with fresh guest memory.
    fn set_up(mut frontend: Frontend, options: SetupOptions) -> Guest {
        let memory = guest_memory().expect("guest memory");
        let (rx, tx) = frontend.setup(&memory, options).expect("setup");
        Guest {
            frontend,
            memory,
            rx,
            tx,
        }
    }
}

/// An Ethernet frame of `len` bytes with a payload pattern that starts at `tag`.
fn frame(dst: MacAddress, src: MacAddress, len: usize, tag: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    f.extend((0..len.saturating_sub(14)).map(|i| tag.wrapping_add(i as u8)));
    f.truncate(len);
    f
}

/// A transmit packet: an all-zero virtio-net header (no offloads) and the frame.
fn packet(frame: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; NET_HEADER_LEN];
    p.extend_from_slice(frame);
    p
}

/// Waits (bounded) until `peer` receives `wanted`; returns the frames that came before it.
fn wait_for_frame(peer: &mut Peer, wanted: &[u8]) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + DEADLINE;
    let mut earlier = Vec::new();
    let mut found = false;
    while !found {
        peer.receive(usize::MAX, |f| {
            if found {
                return;
            }
            if f == wanted {
                found = true;
            } else {
                earlier.push(f.to_vec());
            }
        });
        if found {
            break;
        }
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("the frame reaches the peer in time");
        peer.wait(left.min(Duration::from_millis(100)));
    }
    earlier
}

/// The vhost-user peers the network has, as (slot, generation, MAC).
fn vhost_peers(network: &Network) -> Vec<(u16, u32, MacAddress)> {
    network
        .status()
        .peers
        .iter()
        .filter(|p| p.kind == PortKind::VhostUser)
        .map(|p| (p.slot, p.generation, p.mac))
        .collect()
}

/// Polls `condition` (bounded by [`DEADLINE`]).
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// --- Frames both ways -----------------------------------------------------------------

#[test]
fn frames_cross_both_ways_and_the_guest_mac_is_learned() {
    let mut lab = Lab::start(&["s"]);
    let mut guest = lab.guest(0, SetupOptions::default());
    guest.rx.post_rx(&guest.memory, 8, 2048);

    // Guest → peer, over a three-descriptor chain.
    let out = frame(lab.peer.mac(), GUEST_MAC, 342, 1);
    let head = guest.tx.send(&guest.memory, &packet(&out), 3, false);
    let earlier = wait_for_frame(&mut lab.peer, &out);
    assert!(earlier.is_empty(), "nothing but the frame: {earlier:?}");
    assert!(guest.tx.wait_used(&guest.memory, head).is_some());
    wait_until("the guest's MAC is learned", || {
        vhost_peers(&lab.network)
            .iter()
            .any(|&(_, _, mac)| mac == GUEST_MAC)
    });

    // Peer → guest, unicast to the learned MAC.
    let back = frame(GUEST_MAC, lab.peer.mac(), 200, 7);
    lab.assert_link_up();
    lab.peer.send(&back);
    let (used_len, bytes) = guest
        .rx
        .receive(&guest.memory)
        .expect("a frame for the guest");
    assert_eq!(used_len as usize, NET_HEADER_LEN + back.len());
    let num_buffers = u16::from_le_bytes([bytes[10], bytes[11]]);
    assert_eq!(num_buffers, 1, "MRG_RXBUF header says one buffer");
    assert_eq!(&bytes[NET_HEADER_LEN..], &back[..]);
    assert!(
        guest.rx.calls > 0 || guest.rx.wait_call(DEADLINE),
        "the guest is interrupted for the received frame"
    );

    let entry = lab.wait_status(0, "both frames counted", |e| {
        counter(e, "tx_frames") == 1 && counter(e, "rx_frames") == 1
    });
    assert_eq!(entry["state"], "running");
    assert_eq!(entry["acked_features"], guest.frontend.acked_features);
    assert_eq!(counter(&entry, "connections"), 1);
    assert_eq!(counter(&entry, "bad_messages"), 0);
    assert_eq!(counter(&entry, "rejected_messages"), 0);
}

#[test]
fn frames_pass_with_memory_added_region_by_region_and_indirect_chains() {
    let mut lab = Lab::start(&["s"]);
    let mut guest = lab.guest(
        0,
        SetupOptions {
            memory: MemoryMessages::AddMemReg,
            ..SetupOptions::default()
        },
    );
    guest.rx.post_rx(&guest.memory, 4, 2048);
    for (i, pieces) in [1, 4].into_iter().enumerate() {
        let out = frame(lab.peer.mac(), GUEST_MAC, 1514, i as u8);
        let head = guest.tx.send(&guest.memory, &packet(&out), pieces, true);
        wait_for_frame(&mut lab.peer, &out);
        assert!(guest.tx.wait_used(&guest.memory, head).is_some());
    }
    let back = frame(GUEST_MAC, lab.peer.mac(), 1514, 9);
    lab.assert_link_up();
    lab.peer.send(&back);
    let (used_len, bytes) = guest
        .rx
        .receive(&guest.memory)
        .expect("a frame for the guest");
    assert_eq!(used_len as usize, NET_HEADER_LEN + back.len());
    assert_eq!(&bytes[NET_HEADER_LEN..], &back[..]);
}

#[test]
fn frames_pass_for_a_frontend_without_protocol_features_or_event_idx() {
    let mut lab = Lab::start(&["s"]);
    let mut guest = lab.guest(
        0,
        SetupOptions {
            features: feature::VERSION_1 | feature::MRG_RXBUF,
            ..SetupOptions::default()
        },
    );
    assert_eq!(
        guest.frontend.acked_features,
        feature::VERSION_1 | feature::MRG_RXBUF
    );
    guest.rx.post_rx(&guest.memory, 4, 2048);
    lab.good_frame_passes(&mut guest, 1);
    lab.assert_link_up();
    let back = frame(GUEST_MAC, lab.peer.mac(), 300, 2);
    lab.peer.send(&back);
    let (used_len, bytes) = guest
        .rx
        .receive(&guest.memory)
        .expect("a frame for the guest");
    assert_eq!(used_len as usize, NET_HEADER_LEN + back.len());
    assert_eq!(&bytes[NET_HEADER_LEN..], &back[..]);
    assert!(
        guest.rx.calls > 0 || guest.rx.wait_call(DEADLINE),
        "without EVENT_IDX every used buffer interrupts"
    );
}

#[test]
fn large_frame_spans_several_merged_receive_buffers() {
    let mut lab = Lab::start(&["s"]);
    let mut guest = lab.guest(0, SetupOptions::default());
    guest.rx.post_rx(&guest.memory, 8, 256);
    let back = frame(GUEST_MAC, lab.peer.mac(), 1000, 3);
    lab.assert_link_up();
    lab.peer.send(&back);
    let (first_len, mut bytes) = guest.rx.receive(&guest.memory).expect("the first buffer");
    assert_eq!(first_len as usize, bytes.len());
    let num_buffers = u16::from_le_bytes([bytes[10], bytes[11]]);
    assert!(
        (2..=8).contains(&num_buffers),
        "{} bytes need several 256-byte buffers, not {num_buffers}",
        NET_HEADER_LEN + back.len()
    );
    for _ in 1..num_buffers {
        let (_, more) = guest.rx.receive(&guest.memory).expect("the next buffer");
        bytes.extend_from_slice(&more);
    }
    assert_eq!(bytes.len(), NET_HEADER_LEN + back.len());
    assert_eq!(&bytes[NET_HEADER_LEN..], &back[..]);
}

#[test]
fn receive_buffers_too_small_without_merging_are_counted() {
    let mut lab = Lab::start(&["s"]);
    let mut guest = lab.guest(
        0,
        SetupOptions {
            features: SetupOptions::default().features & !feature::MRG_RXBUF,
            ..SetupOptions::default()
        },
    );
    guest.rx.post_rx(&guest.memory, 4, 128);
    lab.assert_link_up();
    lab.peer.send(&frame(GUEST_MAC, lab.peer.mac(), 1000, 4));
    let entry = lab.wait_counter(0, "rx_no_room", 1);
    assert_eq!(entry["state"], "running");
    // A frame that fits still arrives (after, perhaps, a buffer given back empty).
    let small = frame(GUEST_MAC, lab.peer.mac(), 100, 5);
    lab.peer.send(&small);
    loop {
        let (len, bytes) = guest.rx.receive(&guest.memory).expect("the small frame");
        if len == 0 {
            continue;
        }
        assert_eq!(len as usize, NET_HEADER_LEN + small.len());
        assert_eq!(&bytes[NET_HEADER_LEN..], &small[..]);
        break;
    }
}

#[test]
fn header_split_across_descriptors_is_put_back_together() {
    let mut lab = Lab::start(&["s"]);
    let mut guest = lab.guest(0, SetupOptions::default());
    for (tag, indirect) in [(1, false), (2, true)] {
        let out = frame(lab.peer.mac(), GUEST_MAC, 200, tag);
        let packet = packet(&out);
        // Header cut after 5 bytes, then the rest of it with the first 3 frame bytes, then
        // one-byte and larger pieces: legal with VERSION_1 (no layout assumptions).
        let lengths = [5, 10, 1, 50, packet.len() - 66];
        let head = guest
            .tx
            .ring
            .chain_tx_cut(&guest.memory, &packet, &lengths, indirect);
        guest.tx.ring.publish(&guest.memory, head);
        guest.tx.kick();
        wait_for_frame(&mut lab.peer, &out);
        assert!(guest.tx.wait_used(&guest.memory, head).is_some());
    }
}

#[test]
fn tso_frame_from_the_guest_reaches_a_plain_peer_in_segments() {
    let mut lab = Lab::start(&["s"]);
    let mut guest = lab.guest(
        0,
        SetupOptions {
            features: SetupOptions::default().features | OFFLOADS,
            ..SetupOptions::default()
        },
    );
    assert_ne!(guest.frontend.acked_features & OFFLOADS, 0);
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(GUEST_MAC.0, lab.peer.mac().0)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(40000, 5201, 1000, 64000)
        .ack(7)
        .write(&mut frame, &payload)
        .expect("build the super-frame");
    // NEEDS_CSUM at the TCP checksum, TCPv4 segmentation into 1000-byte segments.
    let mut packet = vec![0u8; NET_HEADER_LEN];
    packet[0] = 1;
    packet[1] = 1;
    packet[2..4].copy_from_slice(&54u16.to_le_bytes());
    packet[4..6].copy_from_slice(&1000u16.to_le_bytes());
    packet[6..8].copy_from_slice(&34u16.to_le_bytes());
    packet[8..10].copy_from_slice(&16u16.to_le_bytes());
    packet.extend_from_slice(&frame);
    let head = guest.tx.send(&guest.memory, &packet, 2, false);
    assert!(guest.tx.wait_used(&guest.memory, head).is_some());

    let deadline = Instant::now() + DEADLINE;
    let mut joined = Vec::new();
    let mut segments = 0;
    while joined.len() < payload.len() {
        lab.peer.receive(usize::MAX, |segment| {
            segments += 1;
            assert!(segment.len() <= 1514, "segment of {} bytes", segment.len());
            let parsed = etherparse::SlicedPacket::from_ethernet(segment).expect("a TCP segment");
            let Some(etherparse::NetSlice::Ipv4(ip)) = parsed.net else {
                panic!("not IPv4")
            };
            let Some(etherparse::TransportSlice::Tcp(tcp)) = parsed.transport else {
                panic!("not TCP")
            };
            let expected = tcp
                .to_header()
                .calc_checksum_ipv4(&ip.header().to_header(), tcp.payload())
                .expect("checksum");
            assert_eq!(tcp.checksum(), expected, "a finished TCP checksum");
            assert_eq!(
                tcp.sequence_number(),
                1000 + joined.len() as u32,
                "segments in order"
            );
            joined.extend_from_slice(tcp.payload());
        });
        let left = deadline
            .checked_duration_since(Instant::now())
            .expect("every segment arrives in time");
        lab.peer.wait(left.min(Duration::from_millis(100)));
    }
    assert_eq!(joined, payload);
    assert_eq!(segments, 3);
}

// --- A guest that writes bad descriptor chains ------------------------------------------

/// Publishes the chain starting at `head` on the transmit queue and kicks.
fn publish_tx(guest: &mut Guest, head: u16) {
    guest.tx.ring.publish(&guest.memory, head);
    guest.tx.kick();
}

/// Runs one bad-transmit-chain test: `bad` builds and publishes the chain; then a good
/// frame must still pass, and the status must show the bad chain counted once under
/// `name` and only the good frame sent.
fn bad_tx_chain_is_counted(name: &str, bad: impl FnOnce(&mut Guest, &Lab)) {
    let mut lab = Lab::start(&["s"]);
    let mut guest = lab.guest(0, SetupOptions::default());
    bad(&mut guest, &lab);
    let earlier = lab.good_frame_passes(&mut guest, 0x42);
    assert!(
        earlier.is_empty(),
        "the bad chain sent nothing: {earlier:?}"
    );
    // The backend takes the queue's chains in order, so the good frame's arrival means the
    // bad chain was dealt with; the status file can lag by a second.
    let entry = lab.wait_status(0, &format!("{name} and tx_frames counted"), |e| {
        counter(e, "tx_frames") >= 1 && counter(e, name) >= 1
    });
    assert_eq!(counter(&entry, name), 1, "one bad chain, counted once");
    assert_eq!(counter(&entry, "tx_frames"), 1);
    assert_eq!(entry["state"], "running");
    wait_until("the drop shows on the vhost-user peer too", || {
        lab.network
            .status()
            .peers
            .iter()
            .any(|p| p.kind == PortKind::VhostUser && p.drops.values().sum::<u64>() >= 1)
    });
}

#[test]
fn descriptor_pointing_outside_guest_memory_is_counted() {
    bad_tx_chain_is_counted("tx_bad_chains", |guest, lab| {
        let out = packet(&frame(lab.peer.mac(), GUEST_MAC, 100, 1));
        let head = guest.tx.ring.take_descriptor();
        // Between the two regions: no memory there.
        let d = Descriptor {
            addr: 0x8000_0000,
            len: out.len() as u32,
            flags: 0,
            next: 0,
        };
        guest.tx.ring.write_descriptor(&guest.memory, head, d);
        publish_tx(guest, head);
    });
}

#[test]
fn descriptor_straddling_the_end_of_a_region_is_counted() {
    bad_tx_chain_is_counted("tx_bad_chains", |guest, _| {
        let head = guest.tx.ring.take_descriptor();
        let (base, size) = vhost_support::LAYOUT[1];
        let d = Descriptor {
            addr: base + size - 64,
            len: 200,
            flags: 0,
            next: 0,
        };
        guest.tx.ring.write_descriptor(&guest.memory, head, d);
        publish_tx(guest, head);
    });
}

#[test]
fn descriptor_loop_is_counted() {
    bad_tx_chain_is_counted("tx_bad_chains", |guest, lab| {
        let out = packet(&frame(lab.peer.mac(), GUEST_MAC, 100, 2));
        let addr = guest.tx.ring.take_buffer(out.len());
        guest.memory.write(addr, &out);
        let (a, b) = (
            guest.tx.ring.take_descriptor(),
            guest.tx.ring.take_descriptor(),
        );
        let len = out.len() as u32 / 2;
        let d = |next| Descriptor {
            addr,
            len,
            flags: desc_flags::NEXT,
            next,
        };
        guest.tx.ring.write_descriptor(&guest.memory, a, d(b));
        guest.tx.ring.write_descriptor(&guest.memory, b, d(a));
        publish_tx(guest, a);
    });
}

#[test]
fn write_only_descriptor_in_a_transmit_chain_is_refused() {
    bad_tx_chain_is_counted("tx_wrong_direction", |guest, lab| {
        let out = packet(&frame(lab.peer.mac(), GUEST_MAC, 100, 3));
        let head = guest.tx.ring.take_descriptor();
        let addr = guest.tx.ring.take_buffer(out.len());
        guest.memory.write(addr, &out);
        let d = Descriptor {
            addr,
            len: out.len() as u32,
            flags: desc_flags::WRITE,
            next: 0,
        };
        guest.tx.ring.write_descriptor(&guest.memory, head, d);
        publish_tx(guest, head);
    });
}

#[test]
fn transmit_frame_over_the_mtu_without_gso_is_dropped() {
    bad_tx_chain_is_counted("tx_bad_length", |guest, lab| {
        let too_long = frame(
            lab.peer.mac(),
            GUEST_MAC,
            lab.network.max_frame_len() + 1,
            4,
        );
        let head = guest
            .tx
            .ring
            .chain_tx(&guest.memory, &packet(&too_long), 2, false);
        publish_tx(guest, head);
    });
}

#[test]
fn transmit_frame_shorter_than_an_ethernet_header_is_dropped() {
    bad_tx_chain_is_counted("tx_bad_length", |guest, lab| {
        let short = &frame(lab.peer.mac(), GUEST_MAC, 60, 5)[..13];
        let head = guest
            .tx
            .ring
            .chain_tx(&guest.memory, &packet(short), 1, false);
        publish_tx(guest, head);
    });
}

#[test]
fn checksum_offload_request_without_csum_negotiated_is_refused() {
    bad_tx_chain_is_counted("tx_bad_header", |guest, lab| {
        let mut out = packet(&frame(lab.peer.mac(), GUEST_MAC, 100, 8));
        // NEEDS_CSUM, csum_start 34 (after IPv4), csum_offset 16 (TCP): asks the backend
        // for work this guest never negotiated (CSUM is not acked).
        out[0] = 1;
        out[6..8].copy_from_slice(&34u16.to_le_bytes());
        out[8..10].copy_from_slice(&16u16.to_le_bytes());
        let head = guest.tx.ring.chain_tx(&guest.memory, &out, 1, false);
        publish_tx(guest, head);
    });
}

#[test]
fn head_index_beyond_the_ring_is_counted() {
    bad_tx_chain_is_counted("tx_bad_chains", |guest, _| {
        let size = guest.tx.ring.size();
        publish_tx(guest, size + 3);
    });
}

#[test]
fn next_index_beyond_the_ring_is_counted() {
    bad_tx_chain_is_counted("tx_bad_chains", |guest, lab| {
        let out = packet(&frame(lab.peer.mac(), GUEST_MAC, 100, 6));
        let addr = guest.tx.ring.take_buffer(out.len());
        guest.memory.write(addr, &out);
        let head = guest.tx.ring.take_descriptor();
        let d = Descriptor {
            addr,
            len: 50,
            flags: desc_flags::NEXT,
            next: guest.tx.ring.size(),
        };
        guest.tx.ring.write_descriptor(&guest.memory, head, d);
        publish_tx(guest, head);
    });
}

#[test]
fn indirect_table_with_a_bad_length_is_counted() {
    bad_tx_chain_is_counted("tx_bad_chains", |guest, lab| {
        let out = packet(&frame(lab.peer.mac(), GUEST_MAC, 100, 7));
        let head = guest.tx.ring.chain_tx(&guest.memory, &out, 2, true);
        // Rewrite the head so its table length is not a whole number of descriptors.
        let table_addr = guest.tx.ring.read_descriptor(&guest.memory, head).addr;
        let d = Descriptor {
            addr: table_addr,
            len: 20,
            flags: desc_flags::INDIRECT,
            next: 0,
        };
        guest.tx.ring.write_descriptor(&guest.memory, head, d);
        publish_tx(guest, head);
    });
}

#[test]
fn available_index_more_than_a_ring_ahead_stops_the_ring_until_it_is_restarted() {
    let mut lab = Lab::start(&["s"]);
    let mut guest = lab.guest(0, SetupOptions::default());
    let bogus = guest
        .tx
        .ring
        .next_avail()
        .wrapping_add(guest.tx.ring.size() + 10);
    guest.tx.ring.set_avail_index(&guest.memory, bogus);
    guest.tx.kick();
    let entry = lab.wait_counter(0, "tx_bad_chains", 1);
    assert_eq!(counter(&entry, "tx_frames"), 0);
    assert!(lab.backend.is_alive());
    // Nothing in the ring can be trusted any more (as with Linux's vhost, the ring stops);
    // the guest resets the queue and QEMU stops and restarts it.
    guest.frontend.stop_queue(TX_QUEUE).expect("GET_VRING_BASE");
    guest.tx.ring.reset(&guest.memory);
    guest
        .frontend
        .start_queue(&guest.tx)
        .expect("restart the ring");
    lab.good_frame_passes(&mut guest, 0x43);
}

/// Runs one bad-receive-buffer test: the guest posts the one buffer `bad` describes, a
/// frame comes for it, and the counter `name` must rise with the port still running; then
/// good buffers take a later frame (the first may or may not be delivered).
fn bad_rx_buffer_is_counted(name: &str, bad: impl FnOnce(u64) -> Descriptor) {
    let mut lab = Lab::start(&["s"]);
    let mut guest = lab.guest(0, SetupOptions::default());
    let addr = guest.rx.ring.take_buffer(2048);
    let head = guest.rx.ring.take_descriptor();
    guest
        .rx
        .ring
        .write_descriptor(&guest.memory, head, bad(addr));
    guest.rx.ring.publish(&guest.memory, head);
    guest.rx.kick();
    lab.assert_link_up();
    let first = frame(GUEST_MAC, lab.peer.mac(), 100, 1);
    lab.peer.send(&first);
    let entry = lab.wait_counter(0, name, 1);
    assert_eq!(counter(&entry, name), 1, "one bad buffer, counted once");
    assert_eq!(entry["state"], "running");
    assert!(lab.backend.is_alive());
    guest.rx.post_rx(&guest.memory, 4, 2048);
    let second = frame(GUEST_MAC, lab.peer.mac(), 100, 2);
    lab.peer.send(&second);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, bytes) = guest
            .rx
            .receive(&guest.memory)
            .expect("a frame for the guest");
        assert_ne!(bytes.get(..NET_HEADER_LEN), None, "a frame with its header");
        if bytes[NET_HEADER_LEN..] == second[..] {
            break;
        }
        assert_eq!(bytes[NET_HEADER_LEN..], first[..], "only the two frames");
        assert!(
            Instant::now() < deadline,
            "the second frame arrives in time"
        );
    }
}

#[test]
fn read_only_receive_buffer_is_refused() {
    bad_rx_buffer_is_counted("rx_wrong_direction", |addr| Descriptor {
        addr,
        len: 2048,
        flags: 0,
        next: 0,
    });
}

#[test]
fn receive_buffer_outside_guest_memory_is_counted() {
    bad_rx_buffer_is_counted("rx_bad_chains", |_| Descriptor {
        addr: 0x8000_0000,
        len: 2048,
        flags: desc_flags::WRITE,
        next: 0,
    });
}

// --- Two guests of one port -------------------------------------------------------------
//
// Frames between two VMs served by the same port process go straight from one guest's
// transmit copy into the other's buffers when nothing waits for the receiver, and through
// the network's ring otherwise; either way in order, counted on both sides, and seen by a
// promiscuous peer.

const GUEST_A: MacAddress = MacAddress([0x52, 0x54, 0x00, 0x00, 0x00, 0x0a]);
const GUEST_B: MacAddress = MacAddress([0x52, 0x54, 0x00, 0x00, 0x00, 0x0b]);

/// A backend with sockets `a` and `b` publishing [`GUEST_A`] and [`GUEST_B`], both guests
/// set up, and the lab peer promiscuous (a capture's view of the network).
fn two_guests() -> (Lab, Guest, Guest) {
    let dir = tempfile::tempdir().expect("tempdir");
    let network = Network::create(dir.path(), NETWORK, CreateOptions::default()).expect("create");
    let peer = network
        .join(JoinOptions {
            label: "promiscuous test peer".into(),
            promiscuous: true,
            ..JoinOptions::default()
        })
        .expect("join");
    let macs = ["--mac", "52:54:00:00:00:0a", "--mac", "52:54:00:00:00:0b"];
    let backend = Backend::start(dir.path(), NETWORK, &["a", "b"], &macs);
    let lab = Lab {
        dir,
        network,
        peer,
        backend,
    };
    let a = lab.guest(0, SetupOptions::default());
    let b = lab.guest(1, SetupOptions::default());
    (lab, a, b)
}

/// Sends frames `tags` from guest `a` to guest `b` and waits until `a` has them back used.
fn a_sends(a: &mut Guest, tags: std::ops::Range<u8>) -> Vec<Vec<u8>> {
    let frames: Vec<Vec<u8>> = tags.map(|tag| frame(GUEST_B, GUEST_A, 120, tag)).collect();
    for f in &frames {
        let head = a.tx.send(&a.memory, &packet(f), 1, false);
        assert!(a.tx.wait_used(&a.memory, head).is_some(), "chain used");
    }
    frames
}

/// Receives `expected.len()` frames at guest `b` and checks they are `expected`, in order.
fn b_receives(b: &mut Guest, expected: &[Vec<u8>]) {
    for (i, wanted) in expected.iter().enumerate() {
        let (_, bytes) = b.rx.receive(&b.memory).expect("a frame for guest b");
        assert_eq!(
            bytes.get(NET_HEADER_LEN..),
            Some(&wanted[..]),
            "frame {i} of {} arrives in order",
            expected.len()
        );
    }
}

/// The network's counts for the vhost-user peer publishing `mac`.
fn peer_counts(lab: &Lab, mac: MacAddress) -> (u64, u64) {
    let peers = lab.network.status().peers;
    let p = peers
        .iter()
        .find(|p| p.mac == mac)
        .unwrap_or_else(|| panic!("a peer publishing {mac}: {peers:?}"));
    (p.tx_deliveries, p.rx_packets)
}

#[test]
fn frames_between_two_guests_of_one_port_go_straight_across_counted_and_seen() {
    let (mut lab, mut a, mut b) = two_guests();
    b.rx.post_rx(&b.memory, 16, 2048);
    lab.assert_link_up();
    // A first frame, which may find guest b's lane not yet taken up by the port's engine
    // (and so go through b's ring); the status written after it is the baseline.
    let first = a_sends(&mut a, 0..1);
    b_receives(&mut b, &first);
    let before = counter(&lab.wait_counter(1, "rx_frames", 1), "rx_direct");
    let sent = a_sends(&mut a, 1..9);
    b_receives(&mut b, &sent);
    let entry = lab.wait_counter(1, "rx_frames", 9);
    assert_eq!(counter(&entry, "rx_frames"), 9);
    assert_eq!(
        counter(&entry, "rx_direct"),
        before + 8,
        "every later frame went straight across: nothing waited for guest b"
    );
    let a_entry = lab.wait_counter(0, "tx_frames", 9);
    assert_eq!(counter(&a_entry, "rx_direct"), 0);
    // Counted on both peers as if through the ring: a delivery each (and one more to the
    // promiscuous peer), a reception each.
    wait_until("the peers' counts are written", || {
        peer_counts(&lab, GUEST_B).1 == 9
    });
    assert_eq!(
        peer_counts(&lab, GUEST_A).0,
        18,
        "9 to b, 9 to the promiscuous peer"
    );
    // The promiscuous peer saw every one of them, through its ring.
    let everything = [first, sent].concat();
    let mut seen = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while seen.len() < everything.len() {
        lab.peer.receive(usize::MAX, |f| seen.push(f.to_vec()));
        assert!(Instant::now() < deadline, "the promiscuous peer sees all 9");
        lab.peer.wait(Duration::from_millis(50));
    }
    assert_eq!(seen, everything);
}

#[test]
fn a_frame_straight_across_never_overtakes_one_waiting_for_the_receiver() {
    let (lab, mut a, mut b) = two_guests();
    lab.assert_link_up();
    // Guest b has no buffers: a's first frames go through b's ring, and the port takes
    // some of them to hold for b.
    let first = a_sends(&mut a, 0..3);
    wait_until("the port takes frames for guest b", || {
        peer_counts(&lab, GUEST_B).1 >= 1
    });
    // These find frames waiting for b (held or in its ring): they must queue behind them.
    let second = a_sends(&mut a, 3..6);
    b.rx.post_rx(&b.memory, 16, 2048);
    b_receives(&mut b, &[first, second].concat());
    let entry = lab.wait_counter(1, "rx_frames", 6);
    assert_eq!(counter(&entry, "rx_direct"), 0, "nothing overtook");
    // Nothing waits now: the next frames go straight across, after the others.
    let third = a_sends(&mut a, 6..9);
    b_receives(&mut b, &third);
    let entry = lab.wait_counter(1, "rx_frames", 9);
    assert_eq!(counter(&entry, "rx_direct"), 3);
    assert!(b.rx.ring.take_used(&b.memory).is_empty(), "no frame more");
}

#[test]
fn a_bad_receive_buffer_met_straight_across_is_counted_on_its_guest() {
    let (mut lab, mut a, mut b) = two_guests();
    lab.assert_link_up();
    // A first frame through a good buffer, so that b's lane is taken up by the engine.
    b.rx.post_rx(&b.memory, 1, 2048);
    let first = a_sends(&mut a, 0..1);
    b_receives(&mut b, &first);
    let before = counter(&lab.wait_counter(1, "rx_frames", 1), "rx_direct");
    // Then a buffer outside guest memory, and good ones behind it.
    let head = b.rx.ring.take_descriptor();
    let outside = Descriptor {
        addr: 0x8000_0000,
        len: 2048,
        flags: desc_flags::WRITE,
        next: 0,
    };
    b.rx.ring.write_descriptor(&b.memory, head, outside);
    b.rx.ring.publish(&b.memory, head);
    b.rx.post_rx(&b.memory, 4, 2048);
    let sent = a_sends(&mut a, 1..3);
    // The frame that met the bad chain went on to the next buffer: both arrive.
    b_receives(&mut b, &sent);
    let entry = lab.wait_counter(1, "rx_frames", 3);
    assert_eq!(counter(&entry, "rx_bad_chains"), 1, "counted once, on b");
    assert_eq!(entry["state"], "running");
    assert_eq!(
        counter(&entry, "rx_direct"),
        before + 2,
        "both went straight across"
    );
    let a_entry = lab.wait_counter(0, "tx_frames", 3);
    assert_eq!(
        counter(&a_entry, "rx_bad_chains"),
        0,
        "nothing counted on a"
    );
    assert_eq!(counter(&a_entry, "tx_bad_chains"), 0);
    assert!(lab.backend.is_alive());
}

#[test]
fn a_unicast_stream_to_a_full_ring_outside_the_port_waits_for_room_and_is_accounted() {
    // Rings of 8 slots, a guest, and a library peer whose ring the guest fills.
    const SLOTS: u32 = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let options = CreateOptions {
        geometry: Geometry {
            ring_slots: SLOTS,
            ..Geometry::default()
        },
        ..CreateOptions::default()
    };
    let network = Network::create(dir.path(), NETWORK, options).expect("create");
    let mut peer = network.join(JoinOptions::default()).expect("join");
    let backend = Backend::start(dir.path(), NETWORK, &["s"], &[]);
    let mut guest = Guest::set_up(
        Frontend::connect(&backend.sockets[0]).expect("connect"),
        SetupOptions::default(),
    );
    let frames: Vec<Vec<u8>> = (0..72u8)
        .map(|tag| frame(peer.mac(), GUEST_MAC, 120, tag))
        .collect();
    for f in &frames[..SLOTS as usize] {
        let head = guest.tx.send(&guest.memory, &packet(f), 1, false);
        assert!(guest.tx.wait_used(&guest.memory, head).is_some());
    }
    // The ring is full. The guest offers the rest at once, and a reader takes a frame only
    // while its ring is full, so that every frame the port pushes finds it full and waits
    // for room (for up to its hold-back; a receiver still full after it counts as
    // congested, and its frames are dropped until it has read half a ring). A reader that
    // took frames whenever there were any could empty the ring before the port's round
    // and keep up with it, and nothing would ever wait. Nothing may be lost silently:
    // every frame is received or counted, and the port waited for room rather than
    // dropping.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let finished = done.clone();
    let path = dir.path().to_path_buf();
    let reader = std::thread::spawn(move || {
        let network = Network::open(&path, NETWORK).expect("open the network");
        let index = peer.index();
        let full = || {
            network
                .status()
                .peers
                .iter()
                .any(|p| p.slot == index && p.rx_queued >= u64::from(SLOTS))
        };
        let deadline = Instant::now() + DEADLINE;
        let mut got = Vec::new();
        while !finished.load(std::sync::atomic::Ordering::Acquire) {
            if full() {
                peer.receive(1, |f| got.push(f.to_vec()));
            } else {
                assert!(Instant::now() < deadline, "the reader finishes in time");
                std::thread::yield_now();
            }
        }
        while peer.receive(usize::MAX, |f| got.push(f.to_vec())) > 0 {}
        got
    });
    let heads: Vec<u16> = frames[SLOTS as usize..]
        .iter()
        .map(|f| guest.tx.ring.chain_tx(&guest.memory, &packet(f), 1, false))
        .collect();
    guest
        .tx
        .ring
        .publish_batch(&guest.memory, heads.iter().copied());
    guest.tx.kick();
    let mut outstanding: std::collections::HashSet<u32> =
        heads.into_iter().map(u32::from).collect();
    let deadline = Instant::now() + DEADLINE;
    while !outstanding.is_empty() {
        for used in guest.tx.ring.take_used(&guest.memory) {
            outstanding.remove(&used.id);
        }
        assert!(
            Instant::now() < deadline,
            "the guest's chains all come back used; still out: {outstanding:?}"
        );
        guest.tx.wait_call(Duration::from_millis(10));
    }
    let vhost = || {
        network
            .status()
            .peers
            .into_iter()
            .find(|p| p.kind == PortKind::VhostUser)
            .expect("the guest's peer")
    };
    // Every frame the port took is in the ring or was dropped before the reader stops.
    wait_until("every frame sent is counted", || vhost().tx_packets == 72);
    done.store(true, std::sync::atomic::Ordering::Release);
    let got = reader.join().expect("the reader");
    let status = vhost();
    let full = status.drops.get("tx_ring_full").copied().unwrap_or(0);
    assert_eq!(
        got.len() as u64 + full,
        72,
        "received or counted: {status:?}"
    );
    assert!(
        frames.iter().filter(|f| got.contains(f)).count() == got.len()
            && got.windows(2).all(|w| {
                let at = |f: &Vec<u8>| frames.iter().position(|x| x == f);
                at(&w[0]) < at(&w[1])
            }),
        "the frames received are the guest's, in order"
    );
    assert!(
        status.held_back >= 1,
        "a frame found the ring full and waited for room: {status:?}"
    );
}

#[test]
fn a_receiving_guest_that_vanishes_mid_traffic_costs_its_sender_nothing() {
    let (mut lab, mut a, mut b) = two_guests();
    b.rx.post_rx(&b.memory, 64, 2048);
    lab.assert_link_up();
    // Guest a sends flat out while b's frontend goes away (its socket closed, as when
    // QEMU is killed): a's chains all come back, and the port lives on.
    let heads: Vec<u16> = (0..32)
        .map(|tag| {
            let f = frame(GUEST_B, GUEST_A, 120, tag);
            a.tx.send(&a.memory, &packet(&f), 1, false)
        })
        .collect();
    drop(b);
    let mut outstanding: std::collections::HashSet<u32> =
        heads.into_iter().map(u32::from).collect();
    let deadline = Instant::now() + DEADLINE;
    loop {
        for used in a.tx.ring.take_used(&a.memory) {
            outstanding.remove(&used.id);
        }
        if outstanding.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a's chains all come back used; still out: {outstanding:?}"
        );
        a.tx.wait_call(Duration::from_millis(50));
    }
    assert!(lab.backend.is_alive());
    // A new guest on b's socket gets a's next frames, and none of the old ones.
    let mut b = lab.guest(1, SetupOptions::default());
    b.rx.post_rx(&b.memory, 16, 2048);
    wait_until("the new guest b is published", || {
        lab.network
            .status()
            .peers
            .iter()
            .any(|p| p.mac == GUEST_B && !p.link_down)
    });
    let next = a_sends(&mut a, 100..103);
    b_receives(&mut b, &next);
    assert!(
        b.rx.ring.take_used(&b.memory).is_empty(),
        "nothing meant for the guest before"
    );
    let entry = lab.wait_status(1, "the new guest running", |e| e["state"] == "running");
    assert_eq!(counter(&entry, "connections"), 2);
}

// --- A guest that keeps misbehaving -------------------------------------------------------

#[test]
fn persistent_bad_chains_quarantine_the_port_but_not_its_neighbour() {
    let mut lab = Lab::start(&["bad", "good"]);
    let mut bad = lab.guest(0, SetupOptions::default());
    let mut good = lab.guest(1, SetupOptions::default());
    // Buffers for whatever might still be written into it (nothing must be).
    bad.rx.post_rx(&bad.memory, 4, 2048);
    let size = bad.tx.ring.size();
    for _ in 0..100 {
        bad.tx.ring.publish(&bad.memory, size + 1);
    }
    bad.tx.kick();
    let entry = lab.wait_status(0, "the misbehaving port is quarantined", |e| {
        e["state"] == "quarantined"
    });
    assert_eq!(counter(&entry, "quarantines"), 1);
    assert!(counter(&entry, "tx_bad_chains") > 64);
    let slot = entry["slot"].as_u64().expect("a slot") as u16;
    let bad_peer = lab
        .network
        .status()
        .peers
        .into_iter()
        .find(|p| p.slot == slot)
        .expect("the quarantined peer is still there");
    assert!(bad_peer.quarantined, "the peer is marked quarantined");
    // Frames for it are dropped and counted as such.
    lab.peer.send(&frame(bad_peer.mac, lab.peer.mac(), 100, 9));
    wait_until("a frame for the quarantined guest is counted", || {
        lab.network.status().peers.iter().any(|p| {
            p.slot == slot
                && p.drops
                    .iter()
                    .any(|(reason, &n)| reason.contains("quarantined") && n >= 1)
        })
    });

    // The neighbouring socket of the same process keeps carrying frames.
    for tag in 0..3 {
        lab.good_frame_passes(&mut good, tag);
    }
    let neighbour = lab.wait_counter(1, "tx_frames", 3);
    assert_eq!(neighbour["state"], "running");
    assert_eq!(counter(&neighbour, "quarantines"), 0);

    // Nor does its neighbour's frame get into it by going straight across: it is dropped
    // and counted like the peer's.
    let to_bad = frame(bad_peer.mac, GUEST_MAC, 100, 10);
    let head = good.tx.send(&good.memory, &packet(&to_bad), 1, false);
    assert!(good.tx.wait_used(&good.memory, head).is_some());
    wait_until(
        "the neighbour's frame for the quarantined guest is counted",
        || {
            lab.network.status().peers.iter().any(|p| {
                p.slot == slot
                    && p.drops
                        .iter()
                        .any(|(reason, &n)| reason.contains("quarantined") && n >= 2)
            })
        },
    );
    assert!(
        bad.rx.ring.take_used(&bad.memory).is_empty(),
        "nothing written into the quarantined guest"
    );
    let entry = lab.wait_counter(0, "quarantines", 1);
    assert_eq!(counter(&entry, "rx_frames"), 0);
    assert_eq!(counter(&entry, "rx_direct"), 0);
}

// --- A frontend that sends bad messages ---------------------------------------------------

#[test]
fn vring_enable_before_set_features_is_accepted() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = lab.negotiated(0);
    for queue in [0, 1] {
        let ack = frontend
            .request_ack(request::SET_VRING_ENABLE, &vring_state(queue, 1), &[])
            .expect("an ack");
        assert_eq!(ack, 0, "SET_VRING_ENABLE before SET_FEATURES is fine");
    }
    drop(frontend);
    lab.fresh_connection_works(0);
    let entry = lab.wait_counter(0, "connections", 2);
    assert_eq!(counter(&entry, "rejected_messages"), 0);
}

#[test]
fn vring_address_before_memory_table_is_refused() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = lab.negotiated(0);
    let offered = frontend.get_u64(request::GET_FEATURES).expect("features");
    let acked = offered & SetupOptions::default().features;
    frontend
        .request(request::SET_FEATURES, &u64_payload(acked), &[])
        .expect("features acked");
    frontend
        .request(request::SET_VRING_NUM, &vring_state(1, 256), &[])
        .expect("ring size");
    let address = vring_address(1, 0x7f00_0000_0000, 0x7f00_0000_2000, 0x7f00_0000_1000);
    let ack = frontend
        .request_ack(request::SET_VRING_ADDR, &address, &[])
        .expect("an answer");
    lab.refused(
        frontend,
        ack,
        "ring_before_memory",
        "no memory table yet: nothing to translate the address with",
    );
}

#[test]
fn unknown_request_code_is_refused_and_the_connection_kept() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = lab.negotiated(0);
    let ack = frontend
        .request_ack(0x4242, &u64_payload(0), &[])
        .expect("an answer to the unknown request");
    assert_ne!(ack, 0);
    let features = frontend
        .get_u64(request::GET_FEATURES)
        .expect("the connection still works");
    assert_ne!(features & feature::VERSION_1, 0);
    drop(frontend);
    lab.fresh_connection_works(0);
    let entry = lab.wait_counter(0, "unknown_requests", 1);
    assert_eq!(counter(&entry, "bad_messages"), 0);
    assert_eq!(
        counter(&entry, "rejected_messages"),
        0,
        "a request not implemented is not counted as a rejected one"
    );
}

#[test]
fn header_with_a_bad_version_closes_the_connection() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = Frontend::connect(lab.socket(0)).expect("connect");
    frontend
        .send(request::GET_FEATURES, 0x2, &[], &[])
        .expect("send");
    lab.hung_up_on(frontend);
}

#[test]
fn size_field_over_the_limit_closes_the_connection() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = lab.negotiated(0);
    let mut header = request::SET_MEM_TABLE.to_ne_bytes().to_vec();
    header.extend_from_slice(&flags::VERSION.to_ne_bytes());
    header.extend_from_slice(&0x0100_0000u32.to_ne_bytes());
    header.extend_from_slice(&[0; 64]);
    frontend.send_bytes(&header, &[]).expect("send");
    lab.hung_up_on(frontend);
}

#[test]
fn memory_table_with_fewer_fds_than_regions_closes_the_connection() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = lab.negotiated(0);
    let memory = guest_memory().expect("guest memory");
    assert_eq!(memory.regions().len(), 2);
    frontend
        .send(
            request::SET_MEM_TABLE,
            flags::VERSION | flags::NEED_REPLY,
            &memory_table(memory.regions()),
            &[memory_fd(&memory)],
        )
        .expect("send");
    lab.hung_up_on(frontend);
}

#[test]
fn set_features_with_a_bit_not_offered_is_refused() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = lab.negotiated(0);
    let offered = frontend.get_u64(request::GET_FEATURES).expect("features");
    let not_offered = 1u64 << (!offered).trailing_zeros();
    let ack = frontend
        .request_ack(
            request::SET_FEATURES,
            &u64_payload(offered | not_offered),
            &[],
        )
        .expect("an answer");
    lab.refused(
        frontend,
        ack,
        "features_not_offered",
        "bit {not_offered:#x} was never offered",
    );
}

#[test]
fn ring_size_not_a_power_of_two_is_refused() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = lab.negotiated(0);
    let ack = frontend
        .request_ack(request::SET_VRING_NUM, &vring_state(0, 3), &[])
        .expect("an answer");
    lab.refused(frontend, ack, "bad_ring_size", "3 is not a power of two");
}

#[test]
fn queue_index_out_of_range_is_refused() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = lab.negotiated(0);
    let ack = frontend
        .request_ack(request::SET_VRING_NUM, &vring_state(7, 256), &[])
        .expect("an answer");
    lab.refused(
        frontend,
        ack,
        "queue_out_of_range",
        "one queue pair: queues 0 and 1 only",
    );
}

#[test]
fn memory_table_with_more_fds_than_regions_closes_the_connection() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = lab.negotiated(0);
    let memory = guest_memory().expect("guest memory");
    frontend
        .send(
            request::SET_MEM_TABLE,
            flags::VERSION | flags::NEED_REPLY,
            &memory_table(&memory.regions()[..1]),
            &[memory_fd(&memory), memory_fd(&memory)],
        )
        .expect("send");
    lab.hung_up_on(frontend);
}

#[test]
fn payload_too_short_for_the_request_closes_the_connection() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = lab.negotiated(0);
    // A vring state is 8 bytes.
    frontend
        .send(
            request::SET_VRING_NUM,
            flags::VERSION | flags::NEED_REPLY,
            &[0, 0, 0, 0],
            &[],
        )
        .expect("send");
    lab.hung_up_on(frontend);
}

#[test]
fn vring_kick_without_a_descriptor_is_refused() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = lab.negotiated(0);
    // Bit 8: no file descriptor, the ring is to be polled.
    let ack = frontend
        .request_ack(request::SET_VRING_KICK, &u64_payload(1 | 1 << 8), &[])
        .expect("an answer");
    lab.refused(
        frontend,
        ack,
        "polled_ring",
        "polled rings are not supported",
    );
}

#[test]
fn frontend_disconnecting_mid_message_leaves_the_backend_serving() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = lab.negotiated(0);
    let mut bytes = request::SET_FEATURES.to_ne_bytes().to_vec();
    bytes.extend_from_slice(&flags::VERSION.to_ne_bytes());
    bytes.extend_from_slice(&8u32.to_ne_bytes());
    bytes.extend_from_slice(&[1, 2, 3]);
    frontend.send_bytes(&bytes, &[]).expect("send");
    drop(frontend);
    lab.fresh_connection_works(0);
    lab.wait_counter(0, "connections", 2);
}

#[test]
fn memory_region_longer_than_its_file_is_refused() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = lab.negotiated(0);
    let memory = guest_memory().expect("guest memory");
    let mut region = memory.regions()[1];
    // A mapping past the end of the file would fault (SIGBUS) on the first access.
    region.size += 1 << 20;
    let ack = frontend
        .request_ack(
            request::SET_MEM_TABLE,
            &memory_table(&[memory.regions()[0], region]),
            &[memory_fd(&memory), memory_fd(&memory)],
        )
        .expect("an answer");
    lab.refused(
        frontend,
        ack,
        "bad_memory_table",
        "the region runs past the end of its file",
    );
}

/// A frontend that has acked its features and shared the guest's memory with
/// `SET_MEM_TABLE`, and set ring 1's size; returns it and the memory.
fn with_memory(lab: &Lab) -> (Frontend, GuestMemory) {
    let mut frontend = lab.negotiated(0);
    let offered = frontend.get_u64(request::GET_FEATURES).expect("features");
    let acked = offered & SetupOptions::default().features;
    frontend
        .request(request::SET_FEATURES, &u64_payload(acked), &[])
        .expect("features acked");
    let memory = guest_memory().expect("guest memory");
    frontend
        .send_memory(&memory, MemoryMessages::SetMemTable)
        .expect("memory shared");
    frontend
        .request(request::SET_VRING_NUM, &vring_state(1, 256), &[])
        .expect("ring size");
    (frontend, memory)
}

#[test]
fn protocol_features_not_offered_are_refused() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = lab.negotiated(0);
    let offered = frontend
        .get_u64(request::GET_PROTOCOL_FEATURES)
        .expect("protocol features");
    let not_offered = 1u64 << (!offered).trailing_zeros();
    let ack = frontend
        .request_ack(
            request::SET_PROTOCOL_FEATURES,
            &u64_payload(offered | not_offered),
            &[],
        )
        .expect("an answer");
    lab.refused(
        frontend,
        ack,
        "protocol_features_not_offered",
        "protocol bit {not_offered:#x} was never offered",
    );
}

#[test]
fn ring_address_outside_guest_memory_is_refused() {
    let mut lab = Lab::start(&["s"]);
    let (mut frontend, _memory) = with_memory(&lab);
    // Between the two regions: no guest memory there.
    let nowhere = user_address(0x8000_0000);
    let address = vring_address(1, nowhere, user_address(0x4000), user_address(0x2000));
    let ack = frontend
        .request_ack(request::SET_VRING_ADDR, &address, &[])
        .expect("an answer");
    lab.refused(
        frontend,
        ack,
        "ring_outside_memory",
        "the descriptor table lies between the regions",
    );
}

#[test]
fn misaligned_ring_address_is_refused() {
    let mut lab = Lab::start(&["s"]);
    let (mut frontend, _memory) = with_memory(&lab);
    // Inside guest memory, but a descriptor table must be 16-byte aligned.
    let address = vring_address(
        1,
        user_address(0x1008),
        user_address(0x4000),
        user_address(0x2000),
    );
    let ack = frontend
        .request_ack(request::SET_VRING_ADDR, &address, &[])
        .expect("an answer");
    lab.refused(
        frontend,
        ack,
        "misaligned_ring",
        "the descriptor table is 8-byte aligned only",
    );
}

#[test]
fn kick_descriptor_that_is_not_an_eventfd_is_refused() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = lab.negotiated(0);
    // A memfd: reading it would never block, and never stop being readable either.
    let not_an_eventfd = guest_memory().expect("guest memory");
    let ack = frontend
        .request_ack(
            request::SET_VRING_KICK,
            &u64_payload(1),
            &[memory_fd(&not_an_eventfd)],
        )
        .expect("an answer");
    lab.refused(
        frontend,
        ack,
        "kick_not_an_eventfd",
        "a memfd is no kick descriptor",
    );
}

#[test]
fn call_descriptor_that_is_not_an_eventfd_is_refused() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = lab.negotiated(0);
    let not_an_eventfd = guest_memory().expect("guest memory");
    let ack = frontend
        .request_ack(
            request::SET_VRING_CALL,
            &u64_payload(1),
            &[memory_fd(&not_an_eventfd)],
        )
        .expect("an answer");
    lab.refused(
        frontend,
        ack,
        "call_not_an_eventfd",
        "a memfd is no call descriptor",
    );
}

#[test]
fn adding_a_region_longer_than_its_file_is_refused() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = Frontend::connect(lab.socket(0)).expect("connect");
    frontend
        .negotiate(MemoryMessages::AddMemReg)
        .expect("negotiate");
    let memory = guest_memory().expect("guest memory");
    let mut region = memory.regions()[1];
    region.size += 1 << 20;
    let ack = frontend
        .request_ack(
            request::ADD_MEM_REG,
            &single_region(region),
            &[memory_fd(&memory)],
        )
        .expect("an answer");
    lab.refused(
        frontend,
        ack,
        "bad_added_region",
        "the region runs past the end of its file",
    );
}

#[test]
fn removing_memory_before_any_was_shared_is_refused() {
    let mut lab = Lab::start(&["s"]);
    let mut frontend = lab.negotiated(0);
    let memory = guest_memory().expect("guest memory");
    let ack = frontend
        .request_ack(
            request::REM_MEM_REG,
            &single_region(memory.regions()[0]),
            &[],
        )
        .expect("an answer");
    lab.refused(
        frontend,
        ack,
        "remove_without_memory",
        "no memory was shared yet",
    );
}

#[test]
fn removing_a_region_that_is_not_mapped_is_refused() {
    let mut lab = Lab::start(&["s"]);
    let (mut frontend, memory) = with_memory(&lab);
    let mut region = memory.regions()[1];
    region.size /= 2;
    let ack = frontend
        .request_ack(request::REM_MEM_REG, &single_region(region), &[])
        .expect("an answer");
    lab.refused(
        frontend,
        ack,
        "bad_removed_region",
        "no region of that size is mapped",
    );
}

/// A frontend that replaces the memory table with one that leaves its running rings out:
/// the backend cannot switch the guest's kicks off for the transmit ring (without
/// `EVENT_IDX` that is a write to the used ring), counts that, drops the chain as a bad
/// one, stops the receive queue when a frame comes for it, and serves the next frontend.
#[test]
fn memory_table_that_leaves_a_running_ring_out_is_counted() {
    let mut lab = Lab::start(&["s"]);
    let mut guest = lab.guest(
        0,
        SetupOptions {
            features: feature::VERSION_1 | feature::MRG_RXBUF,
            ..SetupOptions::default()
        },
    );
    lab.good_frame_passes(&mut guest, 1);
    // The rings lie in the first region; the new table has the second one only. Without
    // protocol features there is no ack: the reply to a later GET_FEATURES shows the
    // table was applied (messages are handled in order) before the guest sends again.
    let buffers_only = &guest.memory.regions()[1..];
    guest
        .frontend
        .request(
            request::SET_MEM_TABLE,
            &memory_table(buffers_only),
            &[memory_fd(&guest.memory)],
        )
        .expect("the new table sent");
    guest
        .frontend
        .get_u64(request::GET_FEATURES)
        .expect("the backend answers after the new table");
    let lost = frame(lab.peer.mac(), GUEST_MAC, 100, 2);
    guest.tx.send(&guest.memory, &packet(&lost), 1, false);
    let entry = lab.wait_status(0, "a ring access failure and a bad chain", |entry| {
        counter(entry, "ring_access_failures") >= 1 && counter(entry, "tx_bad_chains") >= 1
    });
    assert_eq!(
        counter(&entry, "tx_frames"),
        1,
        "only the first frame went out"
    );
    // A frame for the guest finds its receive ring gone too: that queue stops, so the
    // guest's link goes down, and the frame is held, not written anywhere, until the
    // frontend goes (then it is counted).
    let to_guest = frame(GUEST_MAC, lab.peer.mac(), 100, 3);
    assert_eq!(lab.peer.send_batch([to_guest.as_slice()]), 1);
    wait_until("the guest's link goes down", || {
        lab.network
            .status()
            .peers
            .iter()
            .any(|p| p.kind == PortKind::VhostUser && p.link_down)
    });
    let entry = lab.wait_status(0, "the frame held", |entry| {
        counter(entry, "rx_frames") == 0
    });
    assert_eq!(counter(&entry, "rx_lost_on_disconnect"), 0);
    drop(guest);
    lab.wait_counter(0, "rx_lost_on_disconnect", 1);
    lab.fresh_connection_works(0);
}

/// A guest that posted no receive buffers: the backend takes one round of frames from its
/// ring and holds them for the guest, leaving the rest in the ring; when the frontend goes,
/// the frames it held are counted, not lost silently.
#[test]
fn frames_held_for_a_guest_without_buffers_are_counted_when_it_disconnects() {
    let mut lab = Lab::start(&["s"]);
    let guest = lab.guest(0, SetupOptions::default());
    lab.assert_link_up();
    let frames: Vec<Vec<u8>> = (0..5)
        .map(|tag| frame(MacAddress::BROADCAST, lab.peer.mac(), 100, tag))
        .collect();
    assert_eq!(lab.peer.send_batch(frames.iter().map(Vec::as_slice)), 5);
    // Once it holds a frame the backend takes no more from the ring, so what it took
    // stays put.
    let taken = || {
        lab.network
            .status()
            .peers
            .iter()
            .find(|p| p.kind == PortKind::VhostUser)
            .map_or(0, |p| p.rx_packets)
    };
    wait_until("the backend takes frames", || taken() >= 1);
    let held = taken();
    let entry = lab.wait_status(0, "nothing delivered", |e| counter(e, "rx_frames") == 0);
    assert_eq!(counter(&entry, "rx_lost_on_disconnect"), 0);
    drop(guest);
    let entry = lab.wait_counter(0, "rx_lost_on_disconnect", held);
    assert_eq!(counter(&entry, "rx_lost_on_disconnect"), held);
}

// --- Reconnection ---------------------------------------------------------------------------

/// A frontend that connects while the last one is still being served (a QEMU reconnecting,
/// whose old connection's end reaches the backend after the new knock) waits, and is
/// served as soon as the other goes: its first request is answered, not refused.
#[test]
fn frontend_knocking_before_the_last_one_left_is_served_after_it() {
    let mut lab = Lab::start(&["s"]);
    let first = lab.guest(0, SetupOptions::default());
    let mut second = Frontend::connect(lab.socket(0)).expect("connect while the first is on");
    drop(first);
    let features = second
        .get_u64(request::GET_FEATURES)
        .expect("answered once the first frontend left");
    assert_ne!(features & feature::VERSION_1, 0);
    drop(second);
    lab.fresh_connection_works(0);
}

/// A second VM on a socket that is busy is turned away once the grace for a reconnecting
/// frontend has passed, and the VM being served carries on.
#[test]
fn second_frontend_on_a_busy_socket_is_turned_away() {
    let mut lab = Lab::start(&["s"]);
    let mut first = lab.guest(0, SetupOptions::default());
    let mut second = Frontend::connect(lab.socket(0)).expect("connect");
    second
        .send(request::GET_FEATURES, flags::VERSION, &[], &[])
        .expect("send");
    assert!(
        second.closed_by_backend(),
        "the second frontend is hung up on"
    );
    lab.good_frame_passes(&mut first, 3);
    let entry = lab.wait_counter(0, "connections", 1);
    assert_eq!(
        counter(&entry, "connections"),
        1,
        "the second was never served"
    );
}

#[test]
fn reconnected_frontend_carries_frames_and_the_old_peer_left() {
    let mut lab = Lab::start(&["s"]);
    let mut first = lab.guest(0, SetupOptions::default());
    lab.good_frame_passes(&mut first, 1);
    let old = vhost_peers(&lab.network);
    assert_eq!(old.len(), 1, "one vhost-user peer: {old:?}");
    drop(first);
    wait_until("the first guest's peer leaves", || {
        vhost_peers(&lab.network).is_empty()
    });
    let mut second = lab.guest(0, SetupOptions::default());
    lab.good_frame_passes(&mut second, 2);
    let now = vhost_peers(&lab.network);
    assert_eq!(now.len(), 1, "one vhost-user peer: {now:?}");
    assert_ne!(
        (now[0].0, now[0].1),
        (old[0].0, old[0].1),
        "a new peer, not the old one"
    );
    lab.wait_counter(0, "connections", 2);
}

// --- Options and life cycle -------------------------------------------------------------------

#[test]
fn sigterm_ends_the_backend_and_removes_its_sockets() {
    let mut lab = Lab::start(&["a", "b"]);
    let guest = lab.guest(0, SetupOptions::default());
    let sockets = lab.backend.sockets.clone();
    assert!(lab.backend.terminate().success(), "a clean exit");
    for socket in &sockets {
        assert!(!socket.exists(), "{} removed", socket.display());
    }
    drop(guest);
    wait_until("the vhost-user peer left", || {
        vhost_peers(&lab.network).is_empty()
    });
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    Network::create(dir.path(), NETWORK, CreateOptions::default()).expect("create");
    // A socket file nobody listens on any more, as a killed backend leaves behind.
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("s")).expect("bind"));
    assert!(dir.path().join("s").exists());
    let backend = Backend::start(dir.path(), NETWORK, &["s"], &[]);
    let mut frontend = Frontend::connect(&backend.sockets[0]).expect("connect");
    let features = frontend.get_u64(request::GET_FEATURES).expect("features");
    assert_ne!(features & feature::VERSION_1, 0);
}

#[test]
fn feature_offer_follows_the_queue_and_offload_options() {
    let lab = Lab::start(&["s"]);
    let mut frontend = Frontend::connect(lab.socket(0)).expect("connect");
    let (offered, queues) = frontend
        .negotiate(MemoryMessages::SetMemTable)
        .expect("negotiate");
    assert_eq!(queues, 2, "GET_QUEUE_NUM counts virtqueues: one pair");
    assert_eq!(offered & MQ, 0, "one pair: no MQ");
    assert_eq!(offered & OFFLOADS, OFFLOADS, "offloads by default");
    assert_ne!(offered & IN_ORDER, 0, "buffers are used in order: IN_ORDER");

    let lab = Lab::start_with(&["s"], &["--queues", "2", "--no-offload"]);
    let mut frontend = Frontend::connect(lab.socket(0)).expect("connect");
    let (offered, queues) = frontend
        .negotiate(MemoryMessages::SetMemTable)
        .expect("negotiate");
    assert_eq!(queues, 4, "GET_QUEUE_NUM counts virtqueues: two pairs");
    assert_ne!(offered & MQ, 0, "two pairs: MQ");
    assert_eq!(offered & OFFLOADS, 0, "--no-offload");
    let ack = frontend
        .request_ack(request::SET_VRING_NUM, &vring_state(3, 256), &[])
        .expect("an answer");
    assert_eq!(ack, 0, "queue 3 exists with two pairs");
}

#[test]
fn mac_option_is_published_and_not_replaced_by_learning() {
    let mac = MacAddress([0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
    let mut lab = Lab::start_with(&["s"], &["--mac", "02:aa:bb:cc:dd:ee"]);
    let mut guest = lab.guest(0, SetupOptions::default());
    let published = vhost_peers(&lab.network);
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].2, mac);
    lab.good_frame_passes(&mut guest, 1);
    assert_eq!(
        vhost_peers(&lab.network)[0].2,
        mac,
        "--mac wins over learning"
    );
}

#[test]
fn status_follows_the_frontend_through_its_states() {
    let lab = Lab::start(&["s"]);
    let entry = lab.wait_status(0, "listening", |e| e["state"] == "listening");
    assert!(
        entry["slot"].is_null(),
        "no peer without a frontend: {entry}"
    );
    assert_eq!(entry["pid"], lab.backend.pid());

    let frontend = lab.negotiated(0);
    let entry = lab.wait_status(0, "connected", |e| e["state"] == "connected");
    assert!(entry["slot"].is_u64(), "a peer once connected: {entry}");
    drop(frontend);
    lab.wait_status(0, "listening again", |e| e["state"] == "listening");

    let guest = lab.guest(0, SetupOptions::default());
    let entry = lab.wait_status(0, "running", |e| e["state"] == "running");
    assert_eq!(entry["acked_features"], guest.frontend.acked_features);
    assert_eq!(entry["queue_pairs"], 1);
    assert_ne!(entry["acked_protocol_features"], 0);
    drop(guest);
    let entry = lab.wait_status(0, "listening after the guest left", |e| {
        e["state"] == "listening"
    });
    assert!(entry["slot"].is_null());
    assert_eq!(counter(&entry, "connections"), 2);
}

#[test]
fn client_mode_reaches_a_listening_frontend_and_again_after_a_disconnect() {
    let mut lab = Lab::start_with(&["vm.sock"], &["--client"]);
    // QEMU starts listening after the backend: the backend keeps trying.
    let listener = std::os::unix::net::UnixListener::bind(lab.socket(0)).expect("bind");
    for tag in [1, 2] {
        let frontend = Frontend::accept(&listener).expect("the backend connects");
        let mut guest = Guest::set_up(frontend, SetupOptions::default());
        lab.good_frame_passes(&mut guest, tag);
    }
    let entry = lab.wait_status(0, "two connections and two frames counted", |e| {
        counter(e, "connections") >= 2 && counter(e, "tx_frames") >= 2
    });
    // (It may already be connected a third time: the listener still takes connections.)
    assert_eq!(
        counter(&entry, "tx_frames"),
        2,
        "counters last across connections"
    );
}

#[test]
fn a_mac_locked_guest_that_sends_as_someone_else_is_refused_and_counted() {
    let mut lab = Lab::start_with(&["s"], &["--lock-mac"]);
    let mut guest = lab.guest(0, SetupOptions::default());
    // The first source the guest sends from becomes its locked MAC.
    lab.good_frame_passes(&mut guest, 1);
    let slot = lab.wait_status(0, "a slot", |s| s["slot"].is_u64())["slot"]
        .as_u64()
        .expect("slot") as u16;
    let spoofed = frame(lab.peer.mac(), MacAddress([0x02, 0x66, 0, 0, 0, 9]), 100, 2);
    let head = guest.tx.send(&guest.memory, &packet(&spoofed), 1, false);
    assert!(
        guest.tx.wait_used(&guest.memory, head).is_some(),
        "the chain comes back used"
    );
    // The next good frame arrives, the spoofed one never did.
    let earlier = lab.good_frame_passes(&mut guest, 3);
    assert!(earlier.is_empty(), "the spoofed frame got through");
    let entry = lab
        .network
        .status()
        .peers
        .into_iter()
        .find(|p| p.slot == slot)
        .expect("the VM's peer");
    assert!(entry.lock_mac);
    assert_eq!(entry.mac, GUEST_MAC);
    assert_eq!(entry.drops.get("tx_spoofed"), Some(&1));
}
