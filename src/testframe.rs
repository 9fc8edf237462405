//! Test frames: numbered, self-checking Ethernet frames for `pktgen`, `sink` and the tests.
//!
//! The correctness invariants of the network (no corruption, no duplicates, per-sender
//! order, every loss counted) can only be checked end to end if each frame says who sent
//! it, where it stands in its sender's sequence, and whether any byte changed on the way.
//! A test frame carries all three, so a receiver needs no side channel to judge it:
//!
//! ```text
//!  0      6      12     14     18      22        30      34              len-4   len
//! +------+------+------+------+-------+---------+-------+---------------+-------+
//! | dst  | src  |88 b5 | magic| sender| sequence| length|  filler ...   | CRC32 |
//! +------+------+------+------+-------+---------+-------+---------------+-------+
//! ```
//!
//! Integers are little-endian. `0x88b5` is the EtherType IEEE 802 sets aside for local
//! experiments, so test frames never look like traffic a real stack would consume.
//! `length` is the whole frame's length, which catches truncation and padding. The filler
//! is a pseudo-random stream derived from `(sender, sequence)`, so a frame whose bytes were
//! swapped with another frame's, or whose tail was overwritten by a later frame of the
//! same size, differs from what its header promises. The CRC-32 (IEEE) covers every byte
//! before it, the Ethernet header included.
//!
//! [`encode`] writes a frame; [`verify`] judges one without trusting any of its bytes.

use crate::wire::MacAddress;

/// EtherType of test frames (IEEE 802 local experimental EtherType 1).
pub const ETHERTYPE: u16 = 0x88b5;
/// Marks the payload as a guestnet test frame.
pub const MAGIC: [u8; 4] = *b"gnTF";
/// Shortest test frame: Ethernet header, the fixed fields and the checksum.
pub const MIN_LEN: usize = FILLER + CHECKSUM_LEN;

const MAGIC_AT: usize = 14;
const SENDER_AT: usize = 18;
const SEQUENCE_AT: usize = 22;
const LENGTH_AT: usize = 30;
const FILLER: usize = 34;
const CHECKSUM_LEN: usize = 4;

/// What a valid test frame says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestFrame {
    /// Identity of the sender (chosen by the sender, unique per test).
    pub sender: u32,
    /// Position in the sender's sequence, from 0.
    pub sequence: u64,
    /// Frame length in bytes.
    pub len: usize,
}

/// What is wrong with a frame that claims to be a test frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// Its length field disagrees with the number of bytes received.
    Length {
        /// Length the frame claims.
        claimed: u64,
        /// Bytes received.
        actual: usize,
    },
    /// The checksum does not match the bytes.
    Checksum,
    /// The checksum matches but the filler is not the one `(sender, sequence)` gives.
    Filler,
}

/// How [`verify`] judges a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An intact test frame.
    Valid(TestFrame),
    /// Not a test frame at all (other EtherType or no magic): someone else's traffic.
    Foreign,
    /// A test frame that was damaged on the way.
    Corrupt(Corruption),
}

/// Writes test frame `sequence` of `sender` into `out` (replacing its contents).
///
/// `len` is the whole frame's length; it is raised to [`MIN_LEN`] if shorter. The caller
/// keeps it within the network's maximum frame length.
pub fn encode(
    out: &mut Vec<u8>,
    dst: MacAddress,
    src: MacAddress,
    sender: u32,
    sequence: u64,
    len: usize,
) {
    let len = len.max(MIN_LEN);
    out.clear();
    out.resize(len, 0);
    out[0..6].copy_from_slice(&dst.0);
    out[6..12].copy_from_slice(&src.0);
    out[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    out[MAGIC_AT..SENDER_AT].copy_from_slice(&MAGIC);
    out[SENDER_AT..SEQUENCE_AT].copy_from_slice(&sender.to_le_bytes());
    out[SEQUENCE_AT..LENGTH_AT].copy_from_slice(&sequence.to_le_bytes());
    out[LENGTH_AT..FILLER].copy_from_slice(&(len as u32).to_le_bytes());
    let body = len - CHECKSUM_LEN;
    let mut filler = Filler::new(sender, sequence);
    for chunk in out[FILLER..body].chunks_mut(8) {
        let word = filler.next_word().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    let checksum = crc32fast::hash(&out[..body]);
    out[body..].copy_from_slice(&checksum.to_le_bytes());
}

/// Judges a received frame. Never panics, whatever the bytes.
pub fn verify(frame: &[u8]) -> Verdict {
    if frame.len() < FILLER
        || frame[12..14] != ETHERTYPE.to_be_bytes()
        || frame[MAGIC_AT..SENDER_AT] != MAGIC
    {
        return Verdict::Foreign;
    }
    let claimed = u64::from(read_u32(frame, LENGTH_AT));
    if claimed != frame.len() as u64 || frame.len() < MIN_LEN {
        return Verdict::Corrupt(Corruption::Length {
            claimed,
            actual: frame.len(),
        });
    }
    let body = frame.len() - CHECKSUM_LEN;
    if crc32fast::hash(&frame[..body]) != read_u32(frame, body) {
        return Verdict::Corrupt(Corruption::Checksum);
    }
    let sender = read_u32(frame, SENDER_AT);
    let mut sequence_bytes = [0u8; 8];
    sequence_bytes.copy_from_slice(&frame[SEQUENCE_AT..LENGTH_AT]);
    let sequence = u64::from_le_bytes(sequence_bytes);
    let mut filler = Filler::new(sender, sequence);
    let intact = frame[FILLER..body].chunks(8).all(|chunk| {
        let word = filler.next_word().to_le_bytes();
        chunk == &word[..chunk.len()]
    });
    if !intact {
        return Verdict::Corrupt(Corruption::Filler);
    }
    Verdict::Valid(TestFrame {
        sender,
        sequence,
        len: frame.len(),
    })
}

/// Reads a little-endian u32 at `at`; the callers have checked that four bytes are there.
fn read_u32(frame: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&frame[at..at + 4]);
    u32::from_le_bytes(bytes)
}

/// A deterministic stream of words for one `(sender, sequence)`: SplitMix64, which is
/// cheap, and whose outputs for neighbouring seeds share no visible pattern, so frames
/// of one sender never have equal filler.
struct Filler {
    state: u64,
}

impl Filler {
    fn new(sender: u32, sequence: u64) -> Filler {
        Filler {
            state: (u64::from(sender) << 48) ^ sequence.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        }
    }

    fn next_word(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> MacAddress {
        MacAddress([0x02, 0, 0, 0, 0, last])
    }

    fn frame(sender: u32, sequence: u64, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, mac(2), mac(1), sender, sequence, len);
        out
    }

    #[test]
    fn header_fields_sit_where_the_format_says() {
        let f = frame(0x0102_0304, 5, 64);
        assert_eq!(f.len(), 64);
        assert_eq!(&f[12..14], &[0x88, 0xb5]);
        assert_eq!(&f[14..18], b"gnTF");
        assert_eq!(&f[18..22], &[4, 3, 2, 1]);
        assert_eq!(&f[22..30], &[5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&f[30..34], &[64, 0, 0, 0]);
        assert_eq!(&f[60..64], &crc32fast::hash(&f[..60]).to_le_bytes());
    }

    #[test]
    fn every_size_round_trips() {
        for len in [MIN_LEN, 39, 41, 60, 61, 1514, 9014] {
            let f = frame(7, len as u64, len);
            assert_eq!(
                verify(&f),
                Verdict::Valid(TestFrame {
                    sender: 7,
                    sequence: len as u64,
                    len
                })
            );
        }
        assert_eq!(frame(1, 1, 10).len(), MIN_LEN, "short lengths are raised");
    }

    #[test]
    fn a_flipped_bit_anywhere_is_caught() {
        let good = frame(3, 99, 200);
        for byte in 0..good.len() {
            let mut bad = good.clone();
            bad[byte] ^= 0x10;
            let verdict = verify(&bad);
            let caught = matches!(verdict, Verdict::Corrupt(_))
                // Damage to the EtherType or magic makes it someone else's frame; the
                // sender's sequence then shows a gap that no drop counter explains.
                || (verdict == Verdict::Foreign && (12..18).contains(&byte));
            assert!(caught, "byte {byte}: {verdict:?}");
        }
    }

    #[test]
    fn truncated_or_padded_frames_are_corrupt() {
        let good = frame(3, 1, 100);
        assert!(matches!(
            verify(&good[..99]),
            Verdict::Corrupt(Corruption::Length {
                claimed: 100,
                actual: 99
            })
        ));
        let mut padded = good.clone();
        padded.push(0);
        assert!(matches!(
            verify(&padded),
            Verdict::Corrupt(Corruption::Length { .. })
        ));
    }

    #[test]
    fn a_valid_checksum_over_the_wrong_filler_is_caught() {
        // A frame re-stamped with another sequence number and a fresh checksum: the
        // checksum alone would accept it, the filler does not.
        let mut f = frame(3, 1, 100);
        f[22] = 2;
        let body = f.len() - 4;
        let checksum = crc32fast::hash(&f[..body]).to_le_bytes();
        f[body..].copy_from_slice(&checksum);
        assert_eq!(verify(&f), Verdict::Corrupt(Corruption::Filler));
    }

    #[test]
    fn other_traffic_is_foreign() {
        assert_eq!(verify(&[]), Verdict::Foreign);
        assert_eq!(verify(&[0u8; 60]), Verdict::Foreign);
        let mut ipv4 = frame(1, 1, 60);
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(verify(&ipv4), Verdict::Foreign);
    }
}
