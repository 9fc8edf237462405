//! `cargo bench --bench vhost_user`: what the vhost-user port's data path costs per frame,
//! in one thread with warm caches, against a plain copy of the same bytes measured in the
//! same run.
//!
//! A guest's ring is laid out in (anonymous) guest memory by the library's mock guest
//! (`ports::vhost_user::mock`), as a driver would: each round the "driver" offers a batch
//! of chains and the port's own functions take them — `transmit` copies frames out of
//! transmit chains into a batch for the network, `place` writes frames with their
//! virtio-net header into merged receive buffers. Reading and
//! checking descriptors, the used ring and notifications' bookkeeping are what is measured
//! on top of the copy. The anchor copies the same bytes between the same guest memory and
//! a buffer with `vm-memory`'s checked `read_slice`/`write_slice`: what a backend built
//! on `vm-memory` pays for the copy alone. The port's own copies go through
//! `shm::guest::GuestSpan`, one bounds check each, so its receive path can come in under
//! that anchor (a ratio below 1).
//!
//! Under TCG the guests of `guestnet bench --vm` reach a few tens of thousands of frames a
//! second; this says how far below the port's own limit that is.

use std::hint::black_box;
use std::time::{Duration, Instant};

use guestnet::ports::vhost_user::datapath::{
    Placed, Placement, RxRules, TxBatch, TxRules, Vring, place, transmit,
};
use guestnet::ports::vhost_user::mock::{Descriptor, GuestMemory, GuestQueue, Layout, desc_flags};
use guestnet::ports::vhost_user::split::SplitRing;
use guestnet::wire::VirtioNetHdr;
use vm_memory::{Bytes, GuestAddress};

/// Chains per round.
const BATCH: u16 = 32;
/// Ring size (the size QEMU gives virtio-net queues by default).
const SIZE: u16 = 256;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x10000;
const USED: u64 = 0x20000;
/// Buffers: one 2 KiB slot per descriptor, as a driver posts them (a full frame and its
/// header fit).
const DATA: u64 = 0x100000;
const SLOT: u64 = 0x800;
const MEMORY: u64 = DATA + SLOT * SIZE as u64;
const HEADER: usize = 12;
/// How long one measurement runs.
const RUN: Duration = Duration::from_millis(400);
/// Measurements per figure; the fastest is kept, as the one least disturbed.
const TRIES: usize = 3;

/// A ring of `SIZE` in guest memory: the driver's side (the mock guest) and the port's.
struct Ring {
    memory: GuestMemory,
    driver: GuestQueue,
    vring: Vring,
}

impl Ring {
    fn new() -> Ring {
        let memory = GuestMemory::anonymous(&[(0, MEMORY)]).expect("memory");
        let driver = GuestQueue::new(Layout {
            size: SIZE,
            desc: DESC,
            avail: AVAIL,
            used: USED,
            buffers: DATA..MEMORY,
        });
        let mut vring = Vring::new().expect("ring");
        driver.configure(&mut vring.queue).expect("ring addresses");
        vring.addressed = true;
        vring.started = true;
        vring.enabled = true;
        Ring {
            memory,
            driver,
            vring,
        }
    }

    /// Descriptor `i`: slot `i`, `len` bytes, `flags`.
    fn describe(&self, i: u16, len: u32, flags: u16) {
        let d = Descriptor {
            addr: DATA + SLOT * u64::from(i),
            len,
            flags,
            next: 0,
        };
        self.driver.write_descriptor(&self.memory, i, d);
    }

    /// Offers the next `BATCH` one-descriptor chains, as a driver does.
    fn offer_batch(&mut self) {
        let first = self.driver.next_avail();
        let heads = (0..BATCH).map(|k| first.wrapping_add(k) % SIZE);
        self.driver.publish_batch(&self.memory, heads);
    }
}

/// Nanoseconds per frame of `round`, which moves `BATCH` frames.
fn per_frame(mut round: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..TRIES {
        let start = Instant::now();
        let mut frames = 0u64;
        while start.elapsed() < RUN {
            for _ in 0..64 {
                round();
            }
            frames += 64 * u64::from(BATCH);
        }
        best = best.min(start.elapsed().as_nanos() as f64 / frames as f64);
    }
    best
}

fn frame(len: usize) -> Vec<u8> {
    let mut frame: Vec<u8> = (0..len).map(|i| i as u8).collect();
    frame[..6].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 2]);
    frame[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 1]);
    frame
}

fn main() {
    println!(
        "one thread, batches of {BATCH}, ring of {SIZE}, best of {TRIES} × {} ms; ns per frame",
        RUN.as_millis()
    );
    println!(
        "{:>6}  {:>22}  {:>10}  {:>10}  {:>8}",
        "bytes", "path", "guestnet", "copy only", "ratio"
    );
    for size in [64usize, 1514] {
        // Guest → network: transmit chains of header + frame.
        let mut ring = Ring::new();
        let mut bytes = vec![0u8; HEADER];
        bytes.extend_from_slice(&frame(size));
        for i in 0..SIZE {
            ring.describe(i, bytes.len() as u32, 0);
            ring.memory.write(DATA + SLOT * u64::from(i), &bytes);
        }
        let rules = TxRules {
            header_len: HEADER,
            max_frame: 1518,
            features: 0,
        };
        let mut batch = TxBatch::default();
        let transmitted = per_frame(|| {
            ring.offer_batch();
            batch.clear();
            let taken = transmit(
                &mut ring.vring,
                ring.memory.mmap(),
                &rules,
                usize::from(BATCH),
                &mut batch,
                |f| panic!("{f:?}"),
            );
            assert_eq!(
                (taken, batch.len()),
                (usize::from(BATCH), usize::from(BATCH))
            );
            black_box(&batch);
        });
        let mut out = vec![0u8; bytes.len()];
        let copied_out = per_frame(|| {
            for i in 0..BATCH {
                let at = GuestAddress(DATA + SLOT * u64::from(i));
                ring.memory.mmap().read_slice(&mut out, at).expect("copy");
                black_box(&out);
            }
        });
        row(size, "guest → network", transmitted, copied_out);

        // Network → guest: merged receive buffers of 2 KiB, one per frame.
        let mut ring = Ring::new();
        for i in 0..SIZE {
            ring.describe(i, 2048, desc_flags::WRITE);
        }
        let rules = RxRules {
            header_len: HEADER,
            mergeable: true,
            guest_csum: true,
        };
        let payload = frame(size);
        let hdr = VirtioNetHdr::default();
        let mut work = Placement::default();
        let placed = per_frame(|| {
            ring.offer_batch();
            let view = SplitRing::new(&ring.vring.queue, ring.memory.mmap()).expect("ring");
            for _ in 0..BATCH {
                let outcome = place(
                    &mut ring.vring,
                    &view,
                    &rules,
                    &hdr,
                    &payload,
                    &mut work,
                    |f| panic!("{f:?}"),
                );
                assert_eq!(outcome, Placed::Delivered);
            }
            ring.vring.finish_round(ring.memory.mmap());
        });
        let header = hdr.to_bytes();
        let copied_in = per_frame(|| {
            for i in 0..BATCH {
                let at = GuestAddress(DATA + SLOT * u64::from(i));
                ring.memory.mmap().write_slice(&header, at).expect("copy");
                ring.memory
                    .mmap()
                    .write_slice(&payload, GuestAddress(at.0 + HEADER as u64))
                    .expect("copy");
            }
        });
        row(size, "network → guest", placed, copied_in);
    }
}

fn row(size: usize, path: &str, guestnet: f64, copy: f64) {
    println!(
        "{size:>6}  {path:>22}  {guestnet:>8.1} ns  {copy:>8.1} ns  {:>7.2}×",
        guestnet / copy
    );
}
