//! A receiver asleep in `wait` is woken by the frame a sender brings, not by the end of a
//! sleep slice, and the wake-up is counted.
//!
//! `wait` sleeps in slices (a receiver takes part in liveness sweeps between them), and
//! after each slice it looks at its ring again, so a frame that no sender announced is
//! still found within a slice. That alone would make `wait` return soon after a frame
//! came even if senders never woke anybody; what proves the wake-up is the receiver's
//! `wakeups` counter, which only a futex wake (or a changed wake word) moves. The time
//! bound here is deliberately loose: tight latencies are the benchmark's business, not a
//! timed test's on shared CI cores.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use guestnet::network::{CreateOptions, JoinOptions, Network};
use guestnet::wire::MacAddress;

/// How long the receiver is willing to sleep.
const PATIENCE: Duration = Duration::from_secs(5);
/// How soon after the frame was sent the receiver must be back: far less than
/// [`PATIENCE`], far more than a loaded CI machine needs.
const WOKEN_WITHIN: Duration = Duration::from_secs(1);
/// How long the receiver may take to fall asleep before the test fails.
const FALLS_ASLEEP_WITHIN: Duration = Duration::from_secs(5);

fn frame(dst: MacAddress, src: MacAddress, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

/// Whether thread `tid` of this process is blocked in a system call whose first argument
/// is `address` (for a futex wait, the futex word). `/proc/self/task/TID/syscall` holds
/// the call's number and arguments while the thread is blocked, `running` otherwise.
fn blocked_on(tid: i32, address: usize) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")) else {
        return false;
    };
    let mut fields = text.split_whitespace();
    let in_a_call = fields
        .next()
        .and_then(|n| n.parse::<i64>().ok())
        .is_some_and(|n| n >= 0);
    let first_argument = fields
        .next()
        .and_then(|a| usize::from_str_radix(a.trim_start_matches("0x"), 16).ok());
    in_a_call && first_argument == Some(address)
}

/// The receiver maps the region on its own (as another process would) and sleeps in
/// `wait`; once it is seen asleep — its ring's `sleeping` flag up and its thread blocked
/// on the ring's wake word — a sender with its own mapping sends one frame.
#[test]
fn a_receiver_asleep_in_wait_is_woken_by_one_frame_and_counts_the_wakeup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let net = Network::create(dir.path(), "lab", CreateOptions::default()).expect("create");
    let mut sender = net.join(JoinOptions::default()).expect("join sender");
    let receiver_net = Network::open(dir.path(), "lab").expect("a second mapping");
    let mut receiver = receiver_net
        .join(JoinOptions::default())
        .expect("join receiver");
    let (index, receiver_mac) = (receiver.index(), receiver.mac());
    let before = receiver.counters().wakeups;

    let (tid_tx, tid_rx) = mpsc::channel();
    let sleeper = std::thread::spawn(move || {
        let _ = tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get());
        let woke = receiver.wait(PATIENCE);
        let returned = Instant::now();
        let mut frames = Vec::new();
        receiver.receive(16, |f| frames.push(f.to_vec()));
        (woke, returned, frames, receiver.counters().wakeups)
    });
    let tid = tid_rx.recv().expect("the receiver's thread id");

    // Bounded poll, no sleeping as synchronisation: the flag alone goes up a moment
    // before the thread is in the futex, so both are checked. The futex word's address is
    // the one in the receiver's own mapping.
    let ring = receiver_net
        .ring_memory(index)
        .expect("the receiver's ring");
    let control = ring.control();
    let wake_word = &control.wake as *const _ as usize;
    let deadline = Instant::now() + FALLS_ASLEEP_WITHIN;
    while !(control.sleeping.load(std::sync::atomic::Ordering::Acquire) != 0
        && blocked_on(tid, wake_word))
    {
        assert!(
            Instant::now() < deadline,
            "the receiver did not fall asleep within {FALLS_ASLEEP_WITHIN:?}"
        );
        std::thread::yield_now();
    }

    let sent_frame = frame(receiver_mac, sender.mac(), b"wake up");
    let sent = Instant::now();
    sender.send(&sent_frame);
    let (woke, returned, frames, after) = sleeper.join().expect("the receiver's thread");

    assert!(woke, "wait reports work");
    let slept_on = returned.duration_since(sent);
    assert!(
        slept_on < WOKEN_WITHIN,
        "wait returned {slept_on:?} after the frame was sent"
    );
    assert_eq!(frames, vec![sent_frame], "the frame is received");
    assert_eq!(
        after - before,
        1,
        "the sender woke the receiver, once (wakeups {before} -> {after})"
    );
}
