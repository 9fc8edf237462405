//! Fuzz target `stream_decoder`: a `-netdev stream` byte stream cut into arbitrary reads.
//!
//! The guest chooses the length prefixes and the kernel chooses where reads end. Whatever
//! both do, the incremental decoder must not panic, must keep its buffer bounded, and must
//! hand out exactly what a simple decoder of the whole stream at once finds — the same
//! frames, runts, skipped giants and length out of step, in the same order — however the
//! stream was cut. A giant's body may span many reads; it must be skipped, never buffered.
//!
//! Input: `[max_frame: u16 BE][cut seed: u8][stream bytes]`.
#![no_main]

use guestnet::wire::stream::{Decoded, LARGEST_SKIPPED, LENGTH_PREFIX, StreamDecoder};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
enum Item {
    Frame(Vec<u8>),
    Runt(usize),
    Giant(usize),
    OutOfStep(u32),
}

/// The whole stream decoded at once, as the format describes it.
fn reference(stream: &[u8], max_frame: usize) -> Vec<Item> {
    let largest_skipped = max_frame.max(LARGEST_SKIPPED);
    let mut items = Vec::new();
    let mut rest = stream;
    while rest.len() >= LENGTH_PREFIX {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        if len as usize > largest_skipped {
            items.push(Item::OutOfStep(len));
            break;
        }
        if len as usize > max_frame {
            // Reported as soon as the prefix is read, whether or not its body follows.
            items.push(Item::Giant(len as usize));
            rest = rest.get(LENGTH_PREFIX + len as usize..).unwrap_or_default();
            continue;
        }
        let Some(body) = rest.get(LENGTH_PREFIX..LENGTH_PREFIX + len as usize) else {
            break;
        };
        items.push(if body.len() < 14 {
            Item::Runt(body.len())
        } else {
            Item::Frame(body.to_vec())
        });
        rest = &rest[LENGTH_PREFIX + len as usize..];
    }
    items
}

fuzz_target!(|data: &[u8]| {
    let [m0, m1, seed, stream @ ..] = data else {
        return;
    };
    let mut decoder = StreamDecoder::new(u16::from_be_bytes([*m0, *m1]) as usize);
    let max_frame = decoder.max_frame();
    let mut items = Vec::new();
    let mut fed = 0;
    let mut cut = *seed as usize | 1;
    'feed: while fed < stream.len() {
        let spare = decoder.spare();
        assert!(
            !spare.is_empty(),
            "no room to read after the decoder was drained"
        );
        // Read sizes vary with the seed: 1 byte, a few, or as much as fits.
        cut = (cut * 37 + 11) % 251;
        let n = (cut % 17 + 1).min(spare.len()).min(stream.len() - fed);
        let n = if cut % 5 == 0 {
            spare.len().min(stream.len() - fed)
        } else {
            n
        };
        spare[..n].copy_from_slice(&stream[fed..fed + n]);
        decoder.filled(n);
        fed += n;
        assert!(decoder.buffered() <= max_frame + LENGTH_PREFIX);
        while let Some(item) = decoder.next_item() {
            match item {
                Decoded::Frame(frame) => {
                    assert!((14..=max_frame).contains(&frame.len()));
                    items.push(Item::Frame(frame.to_vec()));
                }
                Decoded::Runt { len } => {
                    assert!(len < 14);
                    items.push(Item::Runt(len));
                }
                Decoded::Giant { len } => {
                    assert!(len > max_frame && len <= decoder.largest_skipped());
                    assert!(!decoder.is_desynchronised());
                    items.push(Item::Giant(len));
                }
                Decoded::OutOfStep { len } => {
                    assert!(len as usize > decoder.largest_skipped());
                    assert!(decoder.is_desynchronised());
                    items.push(Item::OutOfStep(len));
                }
                Decoded::Desynchronised => break 'feed,
            }
        }
    }
    assert_eq!(items, reference(stream, max_frame));
});
