//! `cargo bench --bench ring`: the core's own cost per frame, in one thread and with warm
//! caches, against two anchors measured in the same run.
//!
//! Each round sends a batch of frames from one peer to another with `Peer::send_batch`
//! and takes them out again with `Peer::receive`: a copy in, a copy out, plus checking,
//! routing, counting and the ring's atomics. The anchors move the same frames the same
//! way:
//!
//! - `memcpy ring`: a `VecDeque` of preallocated buffers, one copy in and one copy out.
//!   This is the floor for any design that copies into a shared ring and out of it; the
//!   ratio to it is what guestnet's bookkeeping costs.
//! - `mpsc channel`: `std::sync::mpsc`, a `Vec` allocated per frame, as a Rust program
//!   handing frames between threads would.
//!
//! One thread means no cache line moves between cores: this isolates instruction cost.
//! `guestnet bench` measures the cross-process, cross-core figures.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use guestnet::network::{CreateOptions, JoinOptions, Network};

/// Frames per round (the CLI bench's default batch).
const BATCH: usize = 32;
/// How long one measurement runs.
const RUN: Duration = Duration::from_millis(400);
/// Measurements per figure; the fastest is kept, as the one least disturbed.
const TRIES: usize = 3;

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
            frames += 64 * BATCH as u64;
        }
        best = best.min(start.elapsed().as_nanos() as f64 / frames as f64);
    }
    best
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::Builder::new()
        .prefix("guestnet-ring-bench")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())?;
    let net = Network::create(dir.path(), "ring", CreateOptions::default())?;
    let mut sender = net.join(JoinOptions::default())?;
    let mut receiver = net.join(JoinOptions::default())?;
    println!(
        "one thread, batches of {BATCH}, best of {TRIES} × {} ms; ns per frame (send + receive)",
        RUN.as_millis()
    );
    println!(
        "{:>6}  {:>10}  {:>12}  {:>12}  {:>14}  {:>14}",
        "bytes", "guestnet", "memcpy ring", "mpsc channel", "÷ memcpy ring", "÷ mpsc channel"
    );
    for size in [64, 1514] {
        let frames: Vec<Vec<u8>> = (0..BATCH)
            .map(|_| guestnet::testframe::unchecked(receiver.mac(), sender.mac(), size))
            .collect();

        let guestnet = per_frame(|| {
            let accepted = sender.send_batch(frames.iter().map(Vec::as_slice));
            let mut bytes = 0;
            let received = receiver.receive(BATCH, |frame| bytes += frame.len());
            assert_eq!((accepted, received), (BATCH, BATCH), "frames went missing");
            black_box(bytes);
        });

        let mut slots: VecDeque<Vec<u8>> = VecDeque::with_capacity(256);
        let mut free: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0; size]).collect();
        let mut out = vec![0u8; size];
        let memcpy = per_frame(|| {
            for frame in &frames {
                let mut slot = free.pop().unwrap_or_default();
                slot.clear();
                slot.extend_from_slice(black_box(frame));
                slots.push_back(slot);
            }
            while let Some(slot) = slots.pop_front() {
                out[..slot.len()].copy_from_slice(&slot);
                black_box(&out);
                free.push(slot);
            }
        });

        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let channel = per_frame(|| {
            for frame in &frames {
                let _ = tx.send(black_box(frame).to_vec());
            }
            for frame in rx.try_iter() {
                out[..frame.len()].copy_from_slice(&frame);
                black_box(&out);
            }
        });

        println!(
            "{size:>6}  {guestnet:>10.1}  {memcpy:>12.1}  {channel:>12.1}  {:>14.2}  {:>14.2}",
            guestnet / memcpy,
            guestnet / channel
        );
    }
    Ok(())
}
