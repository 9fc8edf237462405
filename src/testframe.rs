//! Test frames: numbered Ethernet frames for `pktgen`, `sink`, `bench` and the tests.
//!
//! The network promises no corruption, no duplicates, per-sender order and a counted
//! reason for every loss; the bench measures how fast and how soon frames arrive. Both can
//! only be checked end to end if each frame says who sent it, where it stands in its
//! sender's sequence, when it was sent and whether any byte changed on the way. A test
//! frame carries all of that, so a receiver needs no side channel to judge it:
//!
//! ```text
//!  0      6      12     14     18    20       24         32        40       44      48
//! +------+------+------+------+-----+--------+----------+---------+--------+-------+----------+
//! | dst  | src  |88 b5 | magic|flags| sender | sequence | sent at | length | CRC32 | filler … |
//! +------+------+------+------+-----+--------+----------+---------+--------+-------+----------+
//! ```
//!
//! Integers are little-endian. `0x88b5` is the EtherType IEEE 802 sets aside for local
//! experiments, so test frames never look like traffic a real stack would consume. The
//! magic `gnTF` tells them apart from anyone else's experiments.
//!
//! * `sender` is the sender's identity, unique per test. `sequence` is the frame's
//!   position in that sender's sequence, from 0.
//! * `sent at` is the send time in nanoseconds of `CLOCK_MONOTONIC`, a clock that all
//!   processes of a host share, so a receiver subtracts it from its own clock to get a
//!   one-way latency. 0 means the frame is not a latency sample.
//! * `length` is the whole frame's length, which catches truncation and padding.
//! * A frame whose flags say [`flags::CHECKED`] has its filler and checksum filled in.
//!   The filler is a pseudo-random stream derived from `(sender, sequence)`. So a frame
//!   whose bytes were swapped with another frame's, or whose tail was overwritten by a
//!   later frame of the same size, differs from what its header promises. The CRC-32
//!   (IEEE) covers every byte of the frame but its own four, the Ethernet header
//!   included.
//! * Without that flag, filler and checksum are left as they are. The bench sends such
//!   frames. It rewrites the number and time of every frame as it sends it, millions of
//!   times a second, and a checksum per frame would cost more than moving the frame: the
//!   bench would measure the checksum instead of the network.
//!
//! [`encode`] writes a checked frame and [`verify`] judges one without trusting any of its
//! bytes. [`Packet`] (a view over a frame in any buffer) and [`Repr`] (what its header
//! says) are what they are built on, for a sender that stamps its own frames.

use crate::wire::{EtherType, EthernetFrame, EthernetRepr, MacAddress};

/// EtherType of test frames (IEEE 802 local experimental EtherType 1).
pub const ETHERTYPE: u16 = 0x88b5;
/// Marks the payload as a guestnet test frame.
pub const MAGIC: [u8; 4] = *b"gnTF";
/// Bytes of a test frame before its filler: Ethernet header and the fixed fields.
pub const HEADER_LEN: usize = field::FILLER;
/// Shortest test frame: a header without filler.
pub const MIN_LEN: usize = HEADER_LEN;

/// Bits of the `flags` field.
pub mod flags {
    /// The filler and the checksum are filled in, and [`verify`](super::verify) checks them.
    pub const CHECKED: u16 = 1;
}

/// Byte ranges of the fields, counted from the start of the Ethernet frame.
mod field {
    use core::ops::Range;

    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const MAGIC: Range<usize> = 14..18;
    pub const FLAGS: Range<usize> = 18..20;
    pub const SENDER: Range<usize> = 20..24;
    pub const SEQUENCE: Range<usize> = 24..32;
    pub const SENT_AT: Range<usize> = 32..40;
    pub const LENGTH: Range<usize> = 40..44;
    pub const CHECKSUM: Range<usize> = 44..48;
    pub const FILLER: usize = 48;
}

/// Why a frame cannot be read as a test frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than a test frame's header.
    #[error("shorter than a test frame's header")]
    Truncated,
    /// Another EtherType or no magic: someone else's traffic.
    #[error("not a test frame")]
    Foreign,
}

/// A read/write view of a test frame (the whole Ethernet frame) held in any buffer.
///
/// **The rule:** once [`check_len`](Self::check_len) has succeeded, which
/// [`new_checked`](Self::new_checked) does, no accessor or setter panics, whatever the
/// buffer holds. A view made with [`new_unchecked`](Self::new_unchecked) over a buffer
/// shorter than [`HEADER_LEN`] may panic on access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// A view over `buffer` without checking its length.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// A view over `buffer`, refusing one too short to hold the header.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds at least the header ([`HEADER_LEN`] bytes).
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Whether the EtherType and the magic say this is a test frame.
    pub fn is_test_frame(&self) -> bool {
        let buffer = self.buffer.as_ref();
        buffer[field::ETHERTYPE] == ETHERTYPE.to_be_bytes() && buffer[field::MAGIC] == MAGIC
    }

    /// The `flags` field.
    pub fn flags(&self) -> u16 {
        u16::from_le_bytes(self.bytes_at(field::FLAGS))
    }

    /// The sender's identity.
    pub fn sender(&self) -> u32 {
        u32::from_le_bytes(self.bytes_at(field::SENDER))
    }

    /// The position in the sender's sequence.
    pub fn sequence(&self) -> u64 {
        u64::from_le_bytes(self.bytes_at(field::SEQUENCE))
    }

    /// The monotonic send time in nanoseconds, or 0.
    pub fn sent_ns(&self) -> u64 {
        u64::from_le_bytes(self.bytes_at(field::SENT_AT))
    }

    /// The frame length the header claims.
    pub fn length(&self) -> u32 {
        u32::from_le_bytes(self.bytes_at(field::LENGTH))
    }

    /// The checksum field.
    pub fn checksum(&self) -> u32 {
        u32::from_le_bytes(self.bytes_at(field::CHECKSUM))
    }

    /// Everything after the header.
    pub fn filler(&self) -> &[u8] {
        &self.buffer.as_ref()[field::FILLER..]
    }

    /// The CRC-32 of every byte of the frame but the checksum field's.
    pub fn computed_checksum(&self) -> u32 {
        let buffer = self.buffer.as_ref();
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&buffer[..field::CHECKSUM.start]);
        hasher.update(&buffer[field::CHECKSUM.end..]);
        hasher.finalize()
    }

    /// Whether the filler is the stream that `(sender, sequence)` gives.
    pub fn filler_is_intact(&self) -> bool {
        let mut stream = Filler::new(self.sender(), self.sequence());
        self.filler().chunks(8).all(|chunk| {
            let word = stream.next_word().to_le_bytes();
            chunk == &word[..chunk.len()]
        })
    }

    /// The bytes of a fixed-size field; `check_len` has made sure they are there.
    fn bytes_at<const N: usize>(&self, range: core::ops::Range<usize>) -> [u8; N] {
        let mut bytes = [0u8; N];
        bytes.copy_from_slice(&self.buffer.as_ref()[range]);
        bytes
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the EtherType and the magic that make the frame a test frame.
    pub fn set_test_frame(&mut self) {
        let buffer = self.buffer.as_mut();
        buffer[field::ETHERTYPE].copy_from_slice(&ETHERTYPE.to_be_bytes());
        buffer[field::MAGIC].copy_from_slice(&MAGIC);
    }

    /// Sets the `flags` field.
    pub fn set_flags(&mut self, value: u16) {
        self.buffer.as_mut()[field::FLAGS].copy_from_slice(&value.to_le_bytes());
    }

    /// Sets the sender's identity.
    pub fn set_sender(&mut self, value: u32) {
        self.buffer.as_mut()[field::SENDER].copy_from_slice(&value.to_le_bytes());
    }

    /// Sets the position in the sender's sequence.
    pub fn set_sequence(&mut self, value: u64) {
        self.buffer.as_mut()[field::SEQUENCE].copy_from_slice(&value.to_le_bytes());
    }

    /// Sets the send time (0: not a latency sample).
    pub fn set_sent_ns(&mut self, value: u64) {
        self.buffer.as_mut()[field::SENT_AT].copy_from_slice(&value.to_le_bytes());
    }

    /// Sets the claimed frame length.
    pub fn set_length(&mut self, value: u32) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&value.to_le_bytes());
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, value: u32) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_le_bytes());
    }

    /// Fills in the filler and the checksum and flags the frame [`flags::CHECKED`]: the
    /// last step of writing a checked frame, after every other field.
    pub fn seal(&mut self) {
        let mut stream = Filler::new(self.sender(), self.sequence());
        for chunk in self.buffer.as_mut()[field::FILLER..].chunks_mut(8) {
            let word = stream.next_word().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        self.set_flags(self.flags() | flags::CHECKED);
        let checksum = self.computed_checksum();
        self.set_checksum(checksum);
    }
}

/// What a test frame's header says about the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// Identity of the sender (chosen by the sender, unique per test).
    pub sender: u32,
    /// Position in the sender's sequence, from 0.
    pub sequence: u64,
    /// Monotonic send time in nanoseconds, or 0 when the frame is not a latency sample.
    pub sent_ns: u64,
    /// Frame length in bytes.
    pub len: usize,
}

impl Repr {
    /// Reads the header of a test frame. It does not judge the frame: whether the length,
    /// filler and checksum agree with the header is [`verify`]'s business.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, Error> {
        packet.check_len()?;
        if !packet.is_test_frame() {
            return Err(Error::Foreign);
        }
        Ok(Repr {
            sender: packet.sender(),
            sequence: packet.sequence(),
            sent_ns: packet.sent_ns(),
            len: packet.length() as usize,
        })
    }

    /// Writes the header after the Ethernet addresses: EtherType, magic, no flags and the
    /// fields. Addresses, filler and checksum are left alone.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_test_frame();
        packet.set_flags(0);
        packet.set_sender(self.sender);
        packet.set_sequence(self.sequence);
        packet.set_sent_ns(self.sent_ns);
        packet.set_length(u32::try_from(self.len).unwrap_or(u32::MAX));
    }
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
    /// Its flags say it is not [`flags::CHECKED`], so nothing vouches for its bytes. The
    /// senders of frames that [`verify`] judges always check theirs.
    Unchecked,
    /// The checksum does not match the bytes.
    Checksum,
    /// The checksum matches but the filler is not the one `(sender, sequence)` gives.
    Filler,
}

/// How [`verify`] judges a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An intact test frame.
    Valid(Repr),
    /// Not a test frame at all (too short for one, other EtherType or no magic): someone
    /// else's traffic.
    Foreign,
    /// A test frame that was damaged on the way.
    Corrupt(Corruption),
}

/// Writes checked test frame `sequence` of `sender` into `out` (replacing its contents),
/// with no send time.
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
    write_header(out, dst, src, sender, sequence, len);
    Packet::new_unchecked(&mut out[..]).seal();
}

/// An unchecked test frame of `len` bytes (at least [`MIN_LEN`]) from `src` to `dst`,
/// numbered 0 of sender 0, with zero filler: for a sender that stamps each frame itself
/// as it sends it ([`Packet::set_sender`], [`Packet::set_sequence`],
/// [`Packet::set_sent_ns`]).
pub fn unchecked(dst: MacAddress, src: MacAddress, len: usize) -> Vec<u8> {
    let mut frame = Vec::new();
    write_header(&mut frame, dst, src, 0, 0, len);
    frame
}

/// Replaces `out` with a zeroed frame of `len.max(MIN_LEN)` bytes and writes its header.
fn write_header(
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
    let ethernet = EthernetRepr {
        dst,
        src,
        ethertype: EtherType::from(ETHERTYPE),
    };
    ethernet.emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
    let repr = Repr {
        sender,
        sequence,
        sent_ns: 0,
        len,
    };
    repr.emit(&mut Packet::new_unchecked(&mut out[..]));
}

/// What a received frame's header says, without judging the frame: for a receiver that
/// counts and times frames (the bench) and cannot afford to check each one.
pub fn header(frame: &[u8]) -> Result<Repr, Error> {
    Repr::parse(&Packet::new_checked(frame)?)
}

/// Judges a received frame. Never panics, whatever the bytes.
pub fn verify(frame: &[u8]) -> Verdict {
    let packet = match Packet::new_checked(frame) {
        Ok(packet) if packet.is_test_frame() => packet,
        _ => return Verdict::Foreign,
    };
    let claimed = u64::from(packet.length());
    if claimed != frame.len() as u64 {
        return Verdict::Corrupt(Corruption::Length {
            claimed,
            actual: frame.len(),
        });
    }
    if packet.flags() & flags::CHECKED == 0 {
        return Verdict::Corrupt(Corruption::Unchecked);
    }
    if packet.computed_checksum() != packet.checksum() {
        return Verdict::Corrupt(Corruption::Checksum);
    }
    if !packet.filler_is_intact() {
        return Verdict::Corrupt(Corruption::Filler);
    }
    Verdict::Valid(Repr {
        sender: packet.sender(),
        sequence: packet.sequence(),
        sent_ns: packet.sent_ns(),
        len: frame.len(),
    })
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

    /// An unchecked 48-byte frame from 02:00:00:00:00:01 to …:02, sender 0x01020304,
    /// sequence 5, sent at 0x1122334455667788 ns, as the layout in the module doc says.
    const STAMPED: [u8; 48] = [
        0x02, 0, 0, 0, 0, 2, // destination
        0x02, 0, 0, 0, 0, 1, // source
        0x88, 0xb5, // EtherType
        b'g', b'n', b'T', b'F', // magic
        0, 0, // flags: not checked
        4, 3, 2, 1, // sender
        5, 0, 0, 0, 0, 0, 0, 0, // sequence
        0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // sent at
        48, 0, 0, 0, // length
        0, 0, 0, 0, // checksum: not filled in
    ];

    #[test]
    fn a_stamped_header_has_the_documented_bytes_and_parses_back() {
        let mut f = unchecked(mac(2), mac(1), 10);
        assert_eq!(f.len(), MIN_LEN, "short lengths are raised");
        let mut packet = Packet::new_checked(&mut f[..]).unwrap();
        packet.set_sender(0x0102_0304);
        packet.set_sequence(5);
        packet.set_sent_ns(0x1122_3344_5566_7788);
        assert_eq!(f, STAMPED);
        assert_eq!(
            header(&STAMPED),
            Ok(Repr {
                sender: 0x0102_0304,
                sequence: 5,
                sent_ns: 0x1122_3344_5566_7788,
                len: 48
            })
        );
    }

    #[test]
    fn a_checked_frame_flags_itself_and_checksums_every_other_byte() {
        let f = frame(0x0102_0304, 5, 64);
        assert_eq!(f.len(), 64);
        assert_eq!(&f[12..14], &[0x88, 0xb5]);
        assert_eq!(&f[14..18], b"gnTF");
        assert_eq!(&f[18..20], &[1, 0], "checked");
        assert_eq!(&f[20..24], &[4, 3, 2, 1]);
        assert_eq!(&f[24..32], &[5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&f[32..40], &[0; 8], "no send time");
        assert_eq!(&f[40..44], &[64, 0, 0, 0]);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&f[..44]);
        hasher.update(&f[48..]);
        assert_eq!(&f[44..48], &hasher.finalize().to_le_bytes());
    }

    #[test]
    fn other_traffic_and_short_frames_have_no_header() {
        let mut ipv4 = STAMPED;
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(header(&ipv4), Err(Error::Foreign), "another EtherType");
        let mut no_magic = STAMPED;
        no_magic[17] = b'X';
        assert_eq!(header(&no_magic), Err(Error::Foreign), "no magic");
        assert_eq!(header(&STAMPED[..47]), Err(Error::Truncated));
        for len in 0..HEADER_LEN {
            assert!(Packet::new_checked(&STAMPED[..len]).is_err());
        }
    }

    #[test]
    fn every_size_round_trips() {
        for len in [MIN_LEN, 49, 55, 57, 60, 61, 1514, 9014] {
            let f = frame(7, len as u64, len);
            assert_eq!(
                verify(&f),
                Verdict::Valid(Repr {
                    sender: 7,
                    sequence: len as u64,
                    sent_ns: 0,
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
        let mut packet = Packet::new_checked(&mut f[..]).unwrap();
        packet.set_sequence(2);
        let checksum = packet.computed_checksum();
        packet.set_checksum(checksum);
        assert_eq!(f[24], 2);
        assert_eq!(verify(&f), Verdict::Corrupt(Corruption::Filler));
    }

    #[test]
    fn an_unchecked_frame_is_not_vouched_for() {
        assert_eq!(verify(&STAMPED), Verdict::Corrupt(Corruption::Unchecked));
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
