//! The classic libpcap capture file, so captures open in Wireshark and tcpdump.
//!
//! A capture file is a 24-byte global header followed by records, each a 16-byte header
//! (seconds, sub-second fraction, captured length, original length) and the captured bytes.
//! We write the oldest, most widely read variant rather than pcapng: every tool reads it,
//! and it needs no block structure for a stream of Ethernet frames. The writer uses the
//! nanosecond magic (0xa1b23c4d), little-endian, version 2.4, link type 1 (Ethernet),
//! because frames move in nanoseconds here and microseconds would reorder nothing but
//! blur latency measurements.
//!
//! Time is the caller's: [`PcapWriter::write_frame`] takes a timestamp instead of reading a
//! clock, which keeps this module free of I/O policy and its output reproducible in tests.
//!
//! [`PcapReader`] is deliberately small — enough for tests and self-checks to read back
//! what was written, in either byte order and either timestamp resolution. A capture file
//! can come from anywhere, so the reader bounds every length it is told
//! ([`MAX_SNAPLEN`]) and reports a cut-off file as an error rather than panicking.

use std::io::{self, Read, Write};

/// Magic number of a file with microsecond timestamps.
pub const MAGIC_MICROSECONDS: u32 = 0xa1b2_c3d4;

/// Magic number of a file with nanosecond timestamps.
pub const MAGIC_NANOSECONDS: u32 = 0xa1b2_3c4d;

/// Link type of Ethernet frames (`LINKTYPE_ETHERNET`).
pub const LINKTYPE_ETHERNET: u32 = 1;

/// The largest snapshot length written, and the largest record the reader accepts: the
/// bound libpcap and Wireshark use for all but a few exotic link types.
pub const MAX_SNAPLEN: u32 = 262_144;

/// Length of the global file header.
pub const GLOBAL_HEADER_LEN: usize = 24;

/// Length of each record header.
pub const RECORD_HEADER_LEN: usize = 16;

const VERSION_MAJOR: u16 = 2;
const VERSION_MINOR: u16 = 4;
const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// Writes Ethernet frames to a pcap file.
///
/// Each record is handed to `out` in two `write_all` calls; wrap a file in a
/// [`std::io::BufWriter`] for captures of any size.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    snaplen: u32,
}

impl<W: Write> PcapWriter<W> {
    /// Starts a capture on `out`, writing the global header immediately.
    ///
    /// Frames longer than `snaplen` are cut to it. A `snaplen` of 0 or above
    /// [`MAX_SNAPLEN`] means [`MAX_SNAPLEN`], as it does for tcpdump's `-s 0`.
    pub fn new(mut out: W, snaplen: u32) -> io::Result<Self> {
        let snaplen = if snaplen == 0 {
            MAX_SNAPLEN
        } else {
            snaplen.min(MAX_SNAPLEN)
        };
        let mut header = [0u8; GLOBAL_HEADER_LEN];
        header[0..4].copy_from_slice(&MAGIC_NANOSECONDS.to_le_bytes());
        header[4..6].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
        header[6..8].copy_from_slice(&VERSION_MINOR.to_le_bytes());
        // Bytes 8..16 are thiszone (GMT offset) and sigfigs, both zero by convention.
        header[16..20].copy_from_slice(&snaplen.to_le_bytes());
        header[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&header)?;
        Ok(PcapWriter { out, snaplen })
    }

    /// The snapshot length in effect.
    pub fn snaplen(&self) -> u32 {
        self.snaplen
    }

    /// Appends one frame captured at `timestamp_ns` nanoseconds since the Unix epoch.
    ///
    /// At most `snaplen` bytes are stored; the record keeps the frame's full length as its
    /// original length, so readers show the frame as cut rather than short. The format's
    /// 32-bit seconds field runs out in 2106; later timestamps are stored as its maximum.
    pub fn write_frame(&mut self, timestamp_ns: u64, frame: &[u8]) -> io::Result<()> {
        let seconds = u32::try_from(timestamp_ns / NANOS_PER_SECOND).unwrap_or(u32::MAX);
        // Below 10^9, so it always fits.
        let nanos = u32::try_from(timestamp_ns % NANOS_PER_SECOND).unwrap_or(0);
        let orig_len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        let captured = frame.get(..self.snaplen as usize).unwrap_or(frame);
        // `captured` is at most snaplen <= MAX_SNAPLEN long, so it fits a u32.
        let incl_len = u32::try_from(captured.len()).unwrap_or(self.snaplen);
        let mut header = [0u8; RECORD_HEADER_LEN];
        header[0..4].copy_from_slice(&seconds.to_le_bytes());
        header[4..8].copy_from_slice(&nanos.to_le_bytes());
        header[8..12].copy_from_slice(&incl_len.to_le_bytes());
        header[12..16].copy_from_slice(&orig_len.to_le_bytes());
        self.out.write_all(&header)?;
        self.out.write_all(captured)
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The underlying writer (not flushed; call [`flush`](Self::flush) first if it buffers).
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Errors reading a capture file.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// The underlying reader failed.
    #[error("reading capture: {0}")]
    Io(#[from] io::Error),
    /// The file ends in the middle of a header or a record.
    #[error("capture file truncated")]
    Truncated,
    /// The file does not start with a classic pcap magic number.
    #[error("not a pcap file (magic {0:#010x})")]
    BadMagic(u32),
    /// The file's major version is not 2.
    #[error("unsupported pcap version {major}.{minor}")]
    UnsupportedVersion {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
    },
    /// A record claims more captured bytes than [`MAX_SNAPLEN`].
    #[error("pcap record of {0} bytes exceeds the {MAX_SNAPLEN}-byte limit")]
    RecordTooLong(u32),
}

/// One record read back from a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapRecord {
    /// Capture time in nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// Length of the frame on the wire, which may exceed `data.len()` if it was cut.
    pub orig_len: u32,
    /// The captured bytes.
    pub data: Vec<u8>,
}

/// A minimal reader for tests and for `guestnet` self-checks.
///
/// Accepts both the microsecond and nanosecond magics, in either byte order.
#[derive(Debug)]
pub struct PcapReader<R: Read> {
    input: R,
    big_endian: bool,
    /// Nanoseconds per unit of the sub-second field: 1000 for microsecond files, 1 else.
    fraction_scale: u64,
    snaplen: u32,
    link_type: u32,
}

impl<R: Read> PcapReader<R> {
    /// Reads and checks the global header.
    pub fn new(mut input: R) -> Result<Self, PcapError> {
        let mut header = [0u8; GLOBAL_HEADER_LEN];
        if read_full(&mut input, &mut header)? != GLOBAL_HEADER_LEN {
            return Err(PcapError::Truncated);
        }
        let magic_bytes = [header[0], header[1], header[2], header[3]];
        let (big_endian, fraction_scale) = match u32::from_le_bytes(magic_bytes) {
            MAGIC_MICROSECONDS => (false, 1000),
            MAGIC_NANOSECONDS => (false, 1),
            _ => match u32::from_be_bytes(magic_bytes) {
                MAGIC_MICROSECONDS => (true, 1000),
                MAGIC_NANOSECONDS => (true, 1),
                _ => return Err(PcapError::BadMagic(u32::from_be_bytes(magic_bytes))),
            },
        };
        let u16_at = |i: usize| {
            let b = [header[i], header[i + 1]];
            if big_endian {
                u16::from_be_bytes(b)
            } else {
                u16::from_le_bytes(b)
            }
        };
        let (major, minor) = (u16_at(4), u16_at(6));
        if major != VERSION_MAJOR {
            return Err(PcapError::UnsupportedVersion { major, minor });
        }
        Ok(PcapReader {
            input,
            big_endian,
            fraction_scale,
            snaplen: read_u32(&header, 16, big_endian),
            link_type: read_u32(&header, 20, big_endian),
        })
    }

    /// The snapshot length the file declares.
    pub fn snaplen(&self) -> u32 {
        self.snaplen
    }

    /// The link type the file declares ([`LINKTYPE_ETHERNET`] for guestnet's captures).
    pub fn link_type(&self) -> u32 {
        self.link_type
    }

    /// Whether the file has nanosecond (rather than microsecond) timestamps.
    pub fn is_nanosecond(&self) -> bool {
        self.fraction_scale == 1
    }

    /// The next record, `Ok(None)` at a clean end of file, or an error if the file ends
    /// partway through a record or a record is longer than [`MAX_SNAPLEN`].
    pub fn next_record(&mut self) -> Result<Option<PcapRecord>, PcapError> {
        let mut header = [0u8; RECORD_HEADER_LEN];
        match read_full(&mut self.input, &mut header)? {
            0 => return Ok(None),
            RECORD_HEADER_LEN => {}
            _ => return Err(PcapError::Truncated),
        }
        let seconds = read_u32(&header, 0, self.big_endian);
        let fraction = read_u32(&header, 4, self.big_endian);
        let incl_len = read_u32(&header, 8, self.big_endian);
        let orig_len = read_u32(&header, 12, self.big_endian);
        // Checked before allocating: the length is whatever the file says.
        if incl_len > MAX_SNAPLEN {
            return Err(PcapError::RecordTooLong(incl_len));
        }
        let mut data = vec![0u8; incl_len as usize];
        if read_full(&mut self.input, &mut data)? != data.len() {
            return Err(PcapError::Truncated);
        }
        // Cannot overflow: (2^32 - 1) * 10^9 + (2^32 - 1) * 1000 < 2^64. Saturating anyway
        // so that a future change of units cannot turn this into a panic.
        let timestamp_ns = u64::from(seconds)
            .saturating_mul(NANOS_PER_SECOND)
            .saturating_add(u64::from(fraction).saturating_mul(self.fraction_scale));
        Ok(Some(PcapRecord {
            timestamp_ns,
            orig_len,
            data,
        }))
    }
}

/// A `u32` at `offset` of a header whose length the caller has already fixed.
fn read_u32(bytes: &[u8], offset: usize, big_endian: bool) -> u32 {
    let mut b = [0u8; 4];
    if let Some(src) = bytes.get(offset..offset + 4) {
        b.copy_from_slice(src);
    }
    if big_endian {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    }
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
///
/// Unlike `read_exact`, this tells a clean end of file (0 bytes) from a cut-off one.
fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match input.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    fn frames() -> Vec<(u64, Vec<u8>)> {
        vec![
            (1_700_000_000_123_456_789, vec![0xff; 60]),
            (
                1_700_000_000_999_999_999,
                (0..=255u8).cycle().take(1514).collect(),
            ),
            (1_700_000_001_000_000_000, vec![0x02; 14]),
        ]
    }

    fn capture(snaplen: u32, frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut w = PcapWriter::new(Vec::new(), snaplen).unwrap();
        for (ts, f) in frames {
            w.write_frame(*ts, f).unwrap();
        }
        w.flush().unwrap();
        w.into_inner()
    }

    #[test]
    fn global_header_bytes() {
        let w = PcapWriter::new(Vec::new(), 65535).unwrap();
        assert_eq!(
            w.into_inner(),
            [
                0x4d, 0x3c, 0xb2, 0xa1, // magic, nanosecond, little-endian
                0x02, 0x00, 0x04, 0x00, // version 2.4
                0x00, 0x00, 0x00, 0x00, // thiszone
                0x00, 0x00, 0x00, 0x00, // sigfigs
                0xff, 0xff, 0x00, 0x00, // snaplen 65535
                0x01, 0x00, 0x00, 0x00, // link type Ethernet
            ]
        );
    }

    #[test]
    fn record_header_bytes() {
        let mut w = PcapWriter::new(Vec::new(), 0).unwrap();
        assert_eq!(w.snaplen(), MAX_SNAPLEN);
        w.write_frame(2_000_000_003, &[0xaa; 3]).unwrap();
        let bytes = w.into_inner();
        assert_eq!(
            &bytes[GLOBAL_HEADER_LEN..],
            &[
                2, 0, 0, 0, // seconds
                3, 0, 0, 0, // nanoseconds
                3, 0, 0, 0, // captured length
                3, 0, 0, 0, // original length
                0xaa, 0xaa, 0xaa,
            ]
        );
    }

    #[test]
    fn three_frames_round_trip() {
        let frames = frames();
        let bytes = capture(65535, &frames);
        let mut r = PcapReader::new(Cursor::new(bytes)).unwrap();
        assert_eq!(r.link_type(), LINKTYPE_ETHERNET);
        assert_eq!(r.snaplen(), 65535);
        assert!(r.is_nanosecond());
        for (ts, f) in &frames {
            let rec = r.next_record().unwrap().unwrap();
            assert_eq!(rec.timestamp_ns, *ts);
            assert_eq!(rec.orig_len as usize, f.len());
            assert_eq!(&rec.data, f);
        }
        assert_eq!(r.next_record().unwrap(), None);
    }

    #[test]
    fn snaplen_cuts_frames_but_keeps_original_length() {
        let bytes = capture(64, &frames());
        let mut r = PcapReader::new(Cursor::new(bytes)).unwrap();
        let lens: Vec<_> = std::iter::from_fn(|| r.next_record().unwrap())
            .map(|rec| (rec.data.len(), rec.orig_len))
            .collect();
        assert_eq!(lens, vec![(60, 60), (64, 1514), (14, 14)]);
    }

    #[test]
    fn reads_big_endian_microsecond_files() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC_MICROSECONDS.to_be_bytes());
        bytes.extend_from_slice(&[0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&1500u32.to_be_bytes());
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.extend_from_slice(&10u32.to_be_bytes()); // seconds
        bytes.extend_from_slice(&250u32.to_be_bytes()); // microseconds
        bytes.extend_from_slice(&2u32.to_be_bytes());
        bytes.extend_from_slice(&70u32.to_be_bytes());
        bytes.extend_from_slice(&[7, 8]);
        let mut r = PcapReader::new(Cursor::new(bytes)).unwrap();
        assert!(!r.is_nanosecond());
        assert_eq!(r.snaplen(), 1500);
        assert_eq!(
            r.next_record().unwrap(),
            Some(PcapRecord {
                timestamp_ns: 10_000_250_000,
                orig_len: 70,
                data: vec![7, 8],
            })
        );
        assert_eq!(r.next_record().unwrap(), None);
    }

    #[test]
    fn truncated_files_are_errors() {
        let bytes = capture(65535, &frames());
        assert!(matches!(
            PcapReader::new(Cursor::new(&bytes[..10])),
            Err(PcapError::Truncated)
        ));
        assert!(matches!(
            PcapReader::new(Cursor::new(&[][..])),
            Err(PcapError::Truncated)
        ));
        // Cut in a record header, and in a record's data.
        for cut in [GLOBAL_HEADER_LEN + 5, GLOBAL_HEADER_LEN + 16 + 30] {
            let mut r = PcapReader::new(Cursor::new(&bytes[..cut])).unwrap();
            assert!(matches!(r.next_record(), Err(PcapError::Truncated)));
        }
    }

    #[test]
    fn bad_magic_version_and_giant_records() {
        let mut bytes = capture(65535, &[]);
        bytes[0] = 0;
        assert!(matches!(
            PcapReader::new(Cursor::new(&bytes)),
            Err(PcapError::BadMagic(_))
        ));

        let mut bytes = capture(65535, &[]);
        bytes[4] = 3;
        assert!(matches!(
            PcapReader::new(Cursor::new(&bytes)),
            Err(PcapError::UnsupportedVersion { major: 3, minor: 4 })
        ));

        let mut bytes = capture(65535, &[]);
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(&(MAX_SNAPLEN + 1).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        let mut r = PcapReader::new(Cursor::new(bytes)).unwrap();
        assert!(matches!(
            r.next_record(),
            Err(PcapError::RecordTooLong(262_145))
        ));
    }

    #[test]
    fn far_future_timestamps_saturate() {
        let mut w = PcapWriter::new(Vec::new(), 100).unwrap();
        w.write_frame(u64::MAX, &[1; 14]).unwrap();
        let mut r = PcapReader::new(Cursor::new(w.into_inner())).unwrap();
        let rec = r.next_record().unwrap().unwrap();
        assert_eq!(rec.timestamp_ns / NANOS_PER_SECOND, u64::from(u32::MAX));
    }

    proptest! {
        #[test]
        fn reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                               valid_header in any::<bool>()) {
            let mut input = Vec::new();
            if valid_header {
                input.extend_from_slice(&capture(65535, &[]));
            }
            input.extend_from_slice(&bytes);
            if let Ok(mut r) = PcapReader::new(Cursor::new(input)) {
                // Each record consumes at least its 16-byte header, so this ends.
                while let Ok(Some(_)) = r.next_record() {}
            }
        }

        #[test]
        fn writer_reader_round_trip(
            records in proptest::collection::vec(
                (any::<u32>(), 0u64..NANOS_PER_SECOND,
                 proptest::collection::vec(any::<u8>(), 0..200)),
                0..8),
            snaplen in 1u32..256,
        ) {
            let mut w = PcapWriter::new(Vec::new(), snaplen).unwrap();
            for (s, ns, data) in &records {
                w.write_frame(u64::from(*s) * NANOS_PER_SECOND + ns, data).unwrap();
            }
            let mut r = PcapReader::new(Cursor::new(w.into_inner())).unwrap();
            for (s, ns, data) in &records {
                let rec = r.next_record().unwrap().unwrap();
                prop_assert_eq!(rec.timestamp_ns, u64::from(*s) * NANOS_PER_SECOND + ns);
                prop_assert_eq!(rec.orig_len as usize, data.len());
                let cut = data.len().min(snaplen as usize);
                prop_assert_eq!(&rec.data[..], &data[..cut]);
            }
            prop_assert!(r.next_record().unwrap().is_none());
        }
    }
}
