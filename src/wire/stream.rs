//! QEMU's `-netdev stream` framing: a 4-byte big-endian length, then that many bytes of a
//! bare Ethernet frame (no virtio header, no frame check sequence), repeated.
//!
//! A stream socket delivers bytes, not frames: one `read` may end halfway through a length
//! prefix, or carry a dozen frames. [`StreamDecoder`] therefore owns a fixed buffer the
//! caller reads straight into ([`StreamDecoder::spare`], [`StreamDecoder::filled`]) and
//! hands out whole frames as borrowed slices ([`StreamDecoder::next_item`]), moving any
//! partial leftover to the front so the buffer never grows past one maximal frame and its
//! prefix.
//!
//! The lengths come from the other end — a guest, in effect — so they are untrusted. Three
//! cases are told apart:
//!
//! * a **runt** (length 0 to 13) is too short to be a frame, but its length is small and
//!   still believable: the decoder skips those bytes, reports [`Decoded::Runt`], and the
//!   next prefix is read as usual, so one bad frame costs one frame;
//! * a **giant** (a length above the maximum frame, up to [`LARGEST_SKIPPED`]) is what a
//!   guest whose MTU is larger than the network's sends: the prefix is intact, only the
//!   frame is too long. The decoder reports [`Decoded::Giant`] as soon as it reads the
//!   prefix and then discards the body as it arrives, over as many reads as it takes,
//!   without ever holding it whole; the next prefix is read as usual. A guest with a wrong
//!   MTU loses its large frames, not its link;
//! * a length **beyond any frame** (above [`LARGEST_SKIPPED`]) cannot be skipped safely.
//!   The stream is most likely out of step and the "length" four bytes of someone's
//!   payload; skipping up to 4 GiB on the word of such a value would only hide the problem.
//!   The decoder reports [`Decoded::OutOfStep`] once and then stays
//!   [desynchronised](Decoded::Desynchronised): the caller must close the connection (QEMU
//!   reconnects with `reconnect-ms=`) and [`reset`](StreamDecoder::reset) or replace the
//!   decoder.

use super::ethernet::{HEADER_LEN, VLAN_TAG_LEN};

/// Length of the big-endian length prefix in front of every frame.
pub const LENGTH_PREFIX: usize = 4;

/// The longest record a decoder skips as a giant rather than taking the stream to be out of
/// step: a 64 KiB payload behind a VLAN-tagged Ethernet header, more than any MTU a guest
/// could be configured with (an IP packet is at most 64 KiB). A decoder whose maximum frame
/// is larger still treats every length above that maximum as out of step.
pub const LARGEST_SKIPPED: usize = 64 * 1024 + HEADER_LEN + VLAN_TAG_LEN;

/// One item taken off the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A complete frame, borrowed from the decoder's buffer until the next call.
    ///
    /// Its length is between [`HEADER_LEN`] and the decoder's maximum; its contents are not
    /// otherwise checked (see [`validate_frame`](super::ethernet::validate_frame)).
    Frame(&'a [u8]),
    /// A record too short to be a frame (`len` < 14, including 0). Its bytes were skipped
    /// and decoding continues with the next record.
    Runt {
        /// The length the prefix announced.
        len: usize,
    },
    /// A frame longer than the decoder's maximum, but no longer than [`LARGEST_SKIPPED`]:
    /// its length is believable, so its bytes are being skipped as they arrive (in this
    /// read or later ones, never buffered whole) and decoding continues after it.
    Giant {
        /// The length the prefix announced.
        len: usize,
    },
    /// A length above [`LARGEST_SKIPPED`] (and above the maximum frame): no frame is that
    /// long, so the stream is out of step. The decoder is now desynchronised for good.
    OutOfStep {
        /// The length the prefix announced.
        len: u32,
    },
    /// A length out of step was seen earlier; nothing more can be decoded from this
    /// stream. The caller should close the connection.
    Desynchronised,
}

/// Where the decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading records normally.
    InStep,
    /// Discarding the body of a giant; this many of its bytes have not arrived yet.
    Skipping {
        /// Bytes of the giant still to discard.
        remaining: usize,
    },
    /// A length out of step was seen; every further call yields `Desynchronised`.
    Desynchronised,
}

/// Incremental decoder over a byte stream that arrives in arbitrary pieces.
///
/// Use it as a loop: read into [`spare`](Self::spare), report the count with
/// [`filled`](Self::filled), then call [`next_item`](Self::next_item) until it returns `None`.
#[derive(Debug)]
pub struct StreamDecoder {
    /// Fixed storage of `max_frame + LENGTH_PREFIX` bytes; never reallocated.
    buffer: Vec<u8>,
    /// Start of the bytes not yet consumed.
    start: usize,
    /// End of the bytes received so far.
    end: usize,
    /// The longest frame accepted.
    max_frame: usize,
    state: State,
}

impl StreamDecoder {
    /// A decoder accepting frames of up to `max_frame` bytes (for example
    /// [`max_frame_len`](super::ethernet::max_frame_len)`(mtu, true)`).
    ///
    /// Allocates `max_frame + 4` bytes once. A `max_frame` below [`HEADER_LEN`] is raised to
    /// it, so that every record the decoder keeps (neither a giant nor out of step) fits in its
    /// buffer.
    pub fn new(max_frame: usize) -> Self {
        let max_frame = max_frame.max(HEADER_LEN);
        StreamDecoder {
            buffer: vec![0; max_frame.saturating_add(LENGTH_PREFIX)],
            start: 0,
            end: 0,
            max_frame,
            state: State::InStep,
        }
    }

    /// The longest frame this decoder accepts.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The longest record skipped as a giant; a longer length puts the decoder out of step.
    pub fn largest_skipped(&self) -> usize {
        self.max_frame.max(LARGEST_SKIPPED)
    }

    /// Whether a length out of step has desynchronised the decoder for good.
    pub fn is_desynchronised(&self) -> bool {
        self.state == State::Desynchronised
    }

    /// Number of received bytes not yet consumed (a partial record, or records that
    /// [`next_item`](Self::next_item) has not yet been asked for).
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Forgets all buffered bytes, any giant being skipped and the desynchronised state,
    /// for a new connection.
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
        self.state = State::InStep;
    }

    /// Space to read into, so the caller can `read(2)` straight into it without an extra
    /// copy.
    ///
    /// Any unconsumed bytes are first moved to the front of the buffer. After
    /// [`next_item`](Self::next_item) has returned `None`, the space is never empty. Once
    /// desynchronised, the decoder throws away whatever it holds and offers the whole
    /// buffer, so a caller that keeps reading drains the stream harmlessly.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.state == State::Desynchronised {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 {
            // Only a partial record is normally left here, so the copy is short; doing it
            // now keeps the buffer at its fixed size however the reads happen to split.
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buffer[self.end..]
    }

    /// Tells the decoder that `n` bytes were written into the slice [`spare`](Self::spare)
    /// returned.
    ///
    /// `n` is clamped to the size of that slice: claiming more bytes than there was room
    /// for is a caller bug, and clamping keeps it from turning into a panic.
    pub fn filled(&mut self, n: usize) {
        let room = self.buffer.len() - self.end;
        self.end += n.min(room);
    }

    /// The next complete item, or `None` if more bytes are needed.
    ///
    /// A returned frame borrows the decoder's buffer, so handle (or copy) it before asking
    /// for the next one.
    pub fn next_item(&mut self) -> Option<Decoded<'_>> {
        match self.state {
            State::Desynchronised => return Some(Decoded::Desynchronised),
            State::Skipping { remaining } => {
                // Discard what has arrived of the giant; the rest comes in later reads.
                let skipped = remaining.min(self.buffered());
                self.start += skipped;
                if remaining > skipped {
                    self.state = State::Skipping {
                        remaining: remaining - skipped,
                    };
                    return None;
                }
                self.state = State::InStep;
            }
            State::InStep => {}
        }
        let pending = &self.buffer[self.start..self.end];
        let prefix: [u8; LENGTH_PREFIX] = pending.get(..LENGTH_PREFIX)?.try_into().ok()?;
        let announced = u32::from_be_bytes(prefix);
        // A length that does not even fit a usize is certainly out of step.
        let len = match usize::try_from(announced) {
            Ok(len) if len <= self.max_frame => len,
            Ok(len) if len <= self.largest_skipped() => {
                // Believable but too long: skip it, however many reads its body takes.
                self.start += LENGTH_PREFIX;
                self.state = State::Skipping { remaining: len };
                return Some(Decoded::Giant { len });
            }
            _ => {
                self.state = State::Desynchronised;
                return Some(Decoded::OutOfStep { len: announced });
            }
        };
        // Wait for the whole record. It fits: len <= max_frame, and the buffer holds
        // max_frame + LENGTH_PREFIX bytes once compacted by spare().
        pending.get(LENGTH_PREFIX..LENGTH_PREFIX + len)?;
        let frame_start = self.start + LENGTH_PREFIX;
        let frame_end = frame_start + len;
        self.start = frame_end;
        if len < HEADER_LEN {
            return Some(Decoded::Runt { len });
        }
        Some(Decoded::Frame(&self.buffer[frame_start..frame_end]))
    }
}

/// The length prefix for a frame of `len` bytes.
///
/// A `len` above `u32::MAX` saturates to `u32::MAX`, which every receiver takes as out of step,
/// rather than wrapping to a small length that would silently desynchronise the stream.
pub fn encode_header(len: usize) -> [u8; LENGTH_PREFIX] {
    u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn test_frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn encode(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(&encode_header(f.len()));
            out.extend_from_slice(f);
        }
        out
    }

    /// Feeds `stream` in pieces of the given sizes (cycling) and collects what comes out.
    fn decode_in_pieces(
        decoder: &mut StreamDecoder,
        stream: &[u8],
        piece_sizes: &[usize],
    ) -> Vec<Result<Vec<u8>, String>> {
        let mut out = Vec::new();
        let mut offset = 0;
        let mut sizes = piece_sizes.iter().cycle();
        while offset < stream.len() {
            let want = sizes.next().copied().unwrap_or(1).max(1);
            let spare = decoder.spare();
            assert!(!spare.is_empty());
            let n = want.min(spare.len()).min(stream.len() - offset);
            spare[..n].copy_from_slice(&stream[offset..offset + n]);
            decoder.filled(n);
            offset += n;
            while let Some(item) = decoder.next_item() {
                match item {
                    Decoded::Frame(f) => out.push(Ok(f.to_vec())),
                    Decoded::Desynchronised => {
                        out.push(Err("desync".into()));
                        return out;
                    }
                    other => out.push(Err(format!("{other:?}"))),
                }
            }
        }
        out
    }

    #[test]
    fn header_is_big_endian() {
        assert_eq!(encode_header(0x0102_0304), [1, 2, 3, 4]);
        assert_eq!(encode_header(60), [0, 0, 0, 60]);
        assert_eq!(encode_header(usize::MAX), [0xff; 4]);
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let frames = vec![test_frame(60, 1), test_frame(14, 2), test_frame(1514, 3)];
        let stream = encode(&frames);
        let expected: Vec<_> = frames.iter().cloned().map(Ok).collect();
        for cut in 0..=stream.len() {
            let mut d = StreamDecoder::new(1514);
            let first = cut.max(1);
            let out = decode_in_pieces(&mut d, &stream, &[first, stream.len()]);
            assert_eq!(out, expected, "cut at {cut}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn byte_at_a_time() {
        let frames = vec![test_frame(100, 9), test_frame(1514, 8)];
        let mut d = StreamDecoder::new(1514);
        let out = decode_in_pieces(&mut d, &encode(&frames), &[1]);
        assert_eq!(out, frames.into_iter().map(Ok).collect::<Vec<_>>());
    }

    #[test]
    fn several_frames_in_one_read() {
        let frames: Vec<_> = (0..5).map(|i| test_frame(20 + i, i as u8)).collect();
        let stream = encode(&frames);
        let mut d = StreamDecoder::new(1514);
        let spare = d.spare();
        spare[..stream.len()].copy_from_slice(&stream);
        d.filled(stream.len());
        for f in &frames {
            assert_eq!(d.next_item(), Some(Decoded::Frame(&f[..])));
        }
        assert_eq!(d.next_item(), None);
    }

    #[test]
    fn runt_then_good_frame() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&encode_header(0));
        stream.extend_from_slice(&encode_header(5));
        stream.extend_from_slice(&[9; 5]);
        stream.extend_from_slice(&encode_header(13));
        stream.extend_from_slice(&[8; 13]);
        let good = test_frame(64, 4);
        stream.extend_from_slice(&encode(std::slice::from_ref(&good)));
        let mut d = StreamDecoder::new(1514);
        let out = decode_in_pieces(&mut d, &stream, &[3, 7]);
        assert_eq!(
            out,
            vec![
                Err("Runt { len: 0 }".to_string()),
                Err("Runt { len: 5 }".to_string()),
                Err("Runt { len: 13 }".to_string()),
                Ok(good),
            ]
        );
    }

    #[test]
    fn giant_is_skipped_across_reads_and_decoding_resumes_after_it() {
        // A guest with MTU 9000 on an MTU-1500 network: the giant's body arrives in many
        // reads of every size, and is discarded as it comes, never buffered whole.
        let before = test_frame(60, 1);
        let after = test_frame(1514, 2);
        let mut stream = encode(std::slice::from_ref(&before));
        stream.extend_from_slice(&encode(&[test_frame(9014, 3)]));
        stream.extend_from_slice(&encode(std::slice::from_ref(&after)));
        for pieces in [&[1][..], &[7, 1000], &[4, 9014], &[64, 3], &[usize::MAX]] {
            let mut d = StreamDecoder::new(1514);
            let out = decode_in_pieces(&mut d, &stream, pieces);
            assert_eq!(
                out,
                vec![
                    Ok(before.clone()),
                    Err("Giant { len: 9014 }".to_string()),
                    Ok(after.clone()),
                ],
                "pieces {pieces:?}"
            );
            assert_eq!(d.buffer.len(), 1514 + LENGTH_PREFIX, "nothing grew");
            assert_eq!(d.buffered(), 0);
            assert!(!d.is_desynchronised());
        }
    }

    #[test]
    fn giant_is_reported_as_soon_as_its_prefix_arrives() {
        let mut d = StreamDecoder::new(1514);
        d.spare()[..LENGTH_PREFIX].copy_from_slice(&encode_header(9000));
        d.filled(LENGTH_PREFIX);
        assert_eq!(d.next_item(), Some(Decoded::Giant { len: 9000 }));
        assert_eq!(d.next_item(), None, "its body has yet to come");
        assert_eq!(
            d.spare().len(),
            1514 + LENGTH_PREFIX,
            "all the room to read it"
        );
    }

    #[test]
    fn largest_skipped_is_a_giant_and_one_more_is_out_of_step() {
        let mut d = StreamDecoder::new(1514);
        d.spare()[..LENGTH_PREFIX].copy_from_slice(&encode_header(LARGEST_SKIPPED));
        d.filled(LENGTH_PREFIX);
        assert_eq!(
            d.next_item(),
            Some(Decoded::Giant {
                len: LARGEST_SKIPPED
            })
        );
        let mut d = StreamDecoder::new(1514);
        d.spare()[..LENGTH_PREFIX].copy_from_slice(&encode_header(LARGEST_SKIPPED + 1));
        d.filled(LENGTH_PREFIX);
        assert_eq!(
            d.next_item(),
            Some(Decoded::OutOfStep {
                len: LARGEST_SKIPPED as u32 + 1
            })
        );
    }

    #[test]
    fn above_a_maximum_beyond_the_skip_bound_every_longer_length_is_out_of_step() {
        let max_frame = LARGEST_SKIPPED + 100;
        let mut d = StreamDecoder::new(max_frame);
        assert_eq!(d.largest_skipped(), max_frame);
        d.spare()[..LENGTH_PREFIX].copy_from_slice(&encode_header(max_frame + 1));
        d.filled(LENGTH_PREFIX);
        assert_eq!(
            d.next_item(),
            Some(Decoded::OutOfStep {
                len: max_frame as u32 + 1
            })
        );
    }

    #[test]
    fn length_out_of_step_desynchronises_for_good() {
        let mut stream = encode(&[test_frame(60, 1)]);
        stream.extend_from_slice(&encode_header(1 << 30));
        stream.extend_from_slice(&encode(&[test_frame(60, 2)]));
        let mut d = StreamDecoder::new(1514);
        let spare = d.spare();
        spare[..stream.len()].copy_from_slice(&stream);
        d.filled(stream.len());
        assert!(matches!(d.next_item(), Some(Decoded::Frame(_))));
        assert_eq!(d.next_item(), Some(Decoded::OutOfStep { len: 1 << 30 }));
        assert!(d.is_desynchronised());
        assert_eq!(d.next_item(), Some(Decoded::Desynchronised));
        assert_eq!(d.next_item(), Some(Decoded::Desynchronised));
        // Reading on drains the stream without growing or decoding anything.
        assert_eq!(d.spare().len(), 1514 + LENGTH_PREFIX);
        d.filled(10_000);
        assert_eq!(d.next_item(), Some(Decoded::Desynchronised));
        // A new connection starts clean.
        d.reset();
        assert!(!d.is_desynchronised());
        assert_eq!(d.next_item(), None);
    }

    #[test]
    fn reset_forgets_a_giant_being_skipped() {
        let mut d = StreamDecoder::new(1514);
        d.spare()[..LENGTH_PREFIX].copy_from_slice(&encode_header(9000));
        d.filled(LENGTH_PREFIX);
        assert_eq!(d.next_item(), Some(Decoded::Giant { len: 9000 }));
        d.reset();
        let good = test_frame(60, 5);
        let out = decode_in_pieces(&mut d, &encode(std::slice::from_ref(&good)), &[100]);
        assert_eq!(out, vec![Ok(good)]);
    }

    #[test]
    fn out_of_step_length_is_seen_before_its_payload() {
        let mut d = StreamDecoder::new(1514);
        d.spare()[..4].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        d.filled(4);
        assert_eq!(d.next_item(), Some(Decoded::OutOfStep { len: u32::MAX }));
    }

    #[test]
    fn buffer_never_grows_and_spare_is_never_empty() {
        let frames: Vec<_> = (0..50)
            .map(|i| test_frame(14 + (i * 97) % 1501, i as u8))
            .collect();
        let stream = encode(&frames);
        let mut d = StreamDecoder::new(1514);
        let out = decode_in_pieces(&mut d, &stream, &[1000, 3, 1517, 1]);
        assert_eq!(out.len(), frames.len());
        assert_eq!(d.buffer.len(), 1518);
    }

    #[test]
    fn tiny_max_frame_is_raised_to_a_header() {
        let d = StreamDecoder::new(0);
        assert_eq!(d.max_frame(), HEADER_LEN);
    }

    #[test]
    fn overfilling_is_clamped() {
        let mut d = StreamDecoder::new(20);
        let room = d.spare().len();
        d.filled(room + 100);
        assert_eq!(d.buffered(), room);
    }

    proptest! {
        #[test]
        fn random_chunking_decodes_the_same_frames(
            lens in proptest::collection::vec(14usize..=1518, 0..12),
            pieces in proptest::collection::vec(1usize..2000, 1..8),
        ) {
            let frames: Vec<_> = lens.iter().enumerate()
                .map(|(i, &l)| test_frame(l, i as u8)).collect();
            let mut d = StreamDecoder::new(1518);
            let out = decode_in_pieces(&mut d, &encode(&frames), &pieces);
            prop_assert_eq!(out, frames.into_iter().map(Ok).collect::<Vec<_>>());
        }

        #[test]
        fn giants_among_frames_cost_only_themselves_however_the_reads_split(
            lens in proptest::collection::vec(
                prop_oneof![14usize..=1518, 1519usize..=20_000],
                0..12,
            ),
            pieces in proptest::collection::vec(1usize..5000, 1..8),
        ) {
            let frames: Vec<_> = lens.iter().enumerate()
                .map(|(i, &l)| test_frame(l, i as u8)).collect();
            let expected: Vec<_> = frames.iter()
                .map(|f| if f.len() <= 1518 {
                    Ok(f.clone())
                } else {
                    Err(format!("Giant {{ len: {} }}", f.len()))
                })
                .collect();
            let mut d = StreamDecoder::new(1518);
            let out = decode_in_pieces(&mut d, &encode(&frames), &pieces);
            prop_assert_eq!(out, expected);
            prop_assert_eq!(d.buffer.len(), 1518 + LENGTH_PREFIX);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..4000),
            pieces in proptest::collection::vec(1usize..600, 1..5),
            max_frame in 0usize..1600,
        ) {
            let mut d = StreamDecoder::new(max_frame);
            let out = decode_in_pieces(&mut d, &bytes, &pieces);
            for item in out.into_iter().flatten() {
                prop_assert!(item.len() >= HEADER_LEN && item.len() <= d.max_frame());
            }
        }
    }
}
