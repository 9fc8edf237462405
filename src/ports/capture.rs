//! The capture port: a promiscuous peer that writes every frame of a network to a pcap file.
//!
//! A capture is a peer like any other, so it sees exactly what the delivery rules give a
//! promiscuous receiver (every frame, never its own, which it does not send) and its
//! drops are counted like anyone's: a capture that cannot keep up shows `rx_ring_full` in
//! `status` and in its own summary rather than silently missing frames.
//!
//! To keep up it works in batches: it takes up to [`BATCH`] frames from its ring without a
//! system call, appends them to a buffered writer, and flushes once per batch. Flushing per
//! batch, not per frame, keeps the write system calls few under load, and still leaves the
//! file complete up to the last batch, so `tshark -r` on a live capture sees every frame
//! taken so far and a capture stopped at any moment leaves a valid file.
//!
//! Timestamps are wall-clock ([`unix_ns`]), as capture tools show them, taken when a frame
//! leaves the ring. They are kept non-decreasing: readers assume a file is in time order,
//! and the wall clock may be stepped back while a capture runs.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::network::counters::PeerCounters;
use crate::network::{self, JoinOptions, Network, Peer, PortKind, VlanMembership, unix_ns};
use crate::wire::pcap::PcapWriter;

/// Frames taken from the ring, and written, per batch.
pub const BATCH: usize = 64;

/// Longest sleep between two looks at the stop flag when no frames flow.
pub const STOP_POLL: Duration = Duration::from_millis(100);

/// Errors of a capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Joining the network failed.
    #[error("cannot join the network")]
    Join(#[source] network::Error),
    /// Writing the capture file failed.
    #[error("cannot write the capture")]
    Write(#[source] io::Error),
}

/// How to capture.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Bytes kept of each frame (0: the pcap maximum).
    pub snaplen: u32,
    /// Stop after this many frames.
    pub limit: Option<u64>,
    /// Label shown in `status` (the file name).
    pub label: String,
    /// The capture's VLANs: the default sees every frame, tagged but for VLAN 1's;
    /// [`VlanMembership::trunk_all`] tags VLAN 1's too; an access membership sees one
    /// VLAN's frames, untagged.
    pub vlans: VlanMembership,
}

/// What a finished capture did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureSummary {
    /// Frames written to the file.
    pub captured: u64,
    /// The capture peer's counters when it stopped (its receive drops say what it missed).
    pub counters: PeerCounters,
}

/// A running capture: a promiscuous peer and the pcap file it writes.
#[derive(Debug)]
pub struct Capture<W: Write> {
    peer: Peer,
    writer: PcapWriter<W>,
    limit: Option<u64>,
    captured: u64,
    last_timestamp_ns: u64,
}

impl<W: Write> Capture<W> {
    /// Joins `network` as a promiscuous capture peer and writes the file header to `out`
    /// (flushed at once, so the file is valid from the start).
    pub fn start(
        network: &Network,
        out: W,
        options: CaptureOptions,
    ) -> Result<Capture<W>, CaptureError> {
        let mut writer = PcapWriter::new(out, options.snaplen).map_err(CaptureError::Write)?;
        writer.flush().map_err(CaptureError::Write)?;
        let peer = network
            .join(JoinOptions {
                kind: PortKind::Capture,
                promiscuous: true,
                all_multicast: true,
                label: options.label,
                vlans: options.vlans,
                ..JoinOptions::default()
            })
            .map_err(CaptureError::Join)?;
        Ok(Capture {
            peer,
            writer,
            limit: options.limit,
            captured: 0,
            last_timestamp_ns: 0,
        })
    }

    /// The capture peer's slot.
    pub fn index(&self) -> u16 {
        self.peer.index()
    }

    /// Frames written so far.
    pub fn captured(&self) -> u64 {
        self.captured
    }

    /// Whether the frame limit has been reached.
    pub fn is_done(&self) -> bool {
        self.limit.is_some_and(|limit| self.captured >= limit)
    }

    /// Takes one batch of frames from the ring and writes them, then flushes; returns how
    /// many were written. Never blocks on the network.
    pub fn poll(&mut self) -> Result<usize, CaptureError> {
        let remaining = self
            .limit
            .map_or(u64::MAX, |limit| limit.saturating_sub(self.captured));
        let budget = usize::try_from(remaining).unwrap_or(usize::MAX).min(BATCH);
        if budget == 0 {
            return Ok(0);
        }
        let writer = &mut self.writer;
        let last = &mut self.last_timestamp_ns;
        let mut failure = None;
        let mut written = 0;
        self.peer.receive(budget, |frame| {
            // After a failed write the rest of the batch has nowhere to go; the error
            // ends the capture.
            if failure.is_some() {
                return;
            }
            let timestamp = unix_ns().max(*last);
            *last = timestamp;
            match writer.write_frame(timestamp, frame) {
                Ok(()) => written += 1,
                Err(error) => failure = Some(error),
            }
        });
        self.captured += written as u64;
        if let Some(error) = failure {
            return Err(CaptureError::Write(error));
        }
        if written > 0 {
            self.writer.flush().map_err(CaptureError::Write)?;
        }
        Ok(written)
    }

    /// Captures until the limit is reached or `stop` becomes true (set it from a signal
    /// handler or another thread; it is looked at least every [`STOP_POLL`]).
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), CaptureError> {
        while !self.is_done() && !stop.load(Ordering::Relaxed) {
            if self.poll()? == 0 {
                self.peer.wait(STOP_POLL);
            }
        }
        Ok(())
    }

    /// Flushes the file, leaves the network and says what was captured and missed.
    pub fn finish(mut self) -> Result<CaptureSummary, CaptureError> {
        let flushed = self.writer.flush();
        // Read before leaving: a left slot may be taken and its counters reset.
        let summary = CaptureSummary {
            captured: self.captured,
            counters: self.peer.counters(),
        };
        drop(self.peer);
        flushed.map_err(CaptureError::Write)?;
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::CreateOptions;
    use crate::wire::MacAddress;
    use crate::wire::pcap::PcapReader;

    fn frame(dst: MacAddress, src: MacAddress, tag: u8) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&[0x88, 0xb5, tag]);
        f.resize(60, tag);
        f
    }

    fn options(limit: Option<u64>) -> CaptureOptions {
        CaptureOptions {
            vlans: VlanMembership::default(),
            snaplen: 0,
            limit,
            label: "test".into(),
        }
    }

    #[test]
    fn captures_unicast_between_others_and_stops_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let net = Network::create(dir.path(), "cap", CreateOptions::default()).unwrap();
        let mut capture = Capture::start(&net, Vec::new(), options(Some(3))).unwrap();
        let mut a = net.join(JoinOptions::default()).unwrap();
        let b = net.join(JoinOptions::default()).unwrap();
        let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(b.mac(), a.mac(), i)).collect();
        for f in &frames {
            a.send(f);
        }
        capture.run(&AtomicBool::new(false)).unwrap();
        assert!(capture.is_done());
        let out = capture.writer.into_inner();
        let mut reader = PcapReader::new(&out[..]).unwrap();
        let mut got = Vec::new();
        while let Some(record) = reader.next_record().unwrap() {
            got.push(record.data);
        }
        assert_eq!(got, frames[..3]);
    }

    #[test]
    fn a_stop_request_ends_an_idle_capture_and_the_summary_counts_frames() {
        let dir = tempfile::tempdir().unwrap();
        let net = Network::create(dir.path(), "cap", CreateOptions::default()).unwrap();
        let mut capture = Capture::start(&net, Vec::new(), options(None)).unwrap();
        let mut a = net.join(JoinOptions::default()).unwrap();
        a.send(&frame(MacAddress::BROADCAST, a.mac(), 1));
        assert_eq!(capture.poll().unwrap(), 1);
        capture.run(&AtomicBool::new(true)).unwrap();
        let summary = capture.finish().unwrap();
        assert_eq!(summary.captured, 1);
        assert_eq!(summary.counters.rx_packets, 1);
        assert_eq!(summary.counters.rx_dropped_total(), 0);
        assert!(
            net.status()
                .peers
                .iter()
                .all(|p| p.kind != PortKind::Capture)
        );
    }

    /// A writer that fails on every write after the header.
    struct Broken(usize);
    impl Write for Broken {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed"));
            }
            self.0 -= 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_file_ends_the_capture_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let net = Network::create(dir.path(), "cap", CreateOptions::default()).unwrap();
        let mut capture = Capture::start(&net, Broken(1), options(None)).unwrap();
        let mut a = net.join(JoinOptions::default()).unwrap();
        a.send(&frame(MacAddress::BROADCAST, a.mac(), 1));
        assert!(matches!(capture.poll(), Err(CaptureError::Write(_))));
        assert_eq!(capture.captured(), 0);
    }
}
