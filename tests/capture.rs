//! `guestnet capture` as a real process: it must join as a promiscuous peer, write frames
//! that library peers exchange into a pcap file that our reader and tshark both read, stop
//! after `-c N`, and leave a valid file when interrupted.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use guestnet::network::{JoinOptions, Network, PortKind, unix_ns};
use guestnet::wire::MacAddress;
use guestnet::wire::pcap::{PcapReader, PcapRecord};

const DEADLINE: Duration = Duration::from_secs(10);

/// A child process that is killed and reaped however the test ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ChildGuard {
    /// Waits for the process to exit, failing the test after [`DEADLINE`].
    fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().expect("poll the capture") {
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "capture did not exit in time");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut err) = self.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut text);
        }
        text
    }
}

fn start_capture(dir: &Path, args: &[&str], stdout: Stdio) -> ChildGuard {
    let child = Command::new(env!("CARGO_BIN_EXE_guestnet"))
        .arg("--dir")
        .arg(dir)
        .arg("capture")
        .arg("lab")
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start guestnet capture");
    ChildGuard(child)
}

/// Polls `status` until a capture peer is up; returns its slot.
fn wait_for_capture_peer(net: &Network) -> u16 {
    let start = Instant::now();
    loop {
        if let Some(peer) = net
            .status()
            .peers
            .iter()
            .find(|p| p.kind == PortKind::Capture)
        {
            assert!(peer.promiscuous, "a capture must be promiscuous");
            return peer.slot;
        }
        assert!(start.elapsed() < DEADLINE, "capture never joined");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls a live capture file until it holds `frames` whole records: the capture must
/// flush each batch, not only when it stops.
fn wait_for_records_on_disk(path: &Path, frames: usize) -> Vec<PcapRecord> {
    let start = Instant::now();
    loop {
        // A read may catch a record half-written: that is "not yet", not a failure.
        let bytes = std::fs::read(path).unwrap_or_default();
        if let Ok(mut reader) = PcapReader::new(&bytes[..]) {
            let mut records = Vec::new();
            while let Ok(Some(record)) = reader.next_record() {
                records.push(record);
            }
            if records.len() >= frames {
                return records;
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "capture never flushed the frames"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn frame(dst: MacAddress, src: MacAddress, tag: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x88, 0xb5, tag]);
    f.resize(64 + tag as usize, tag);
    f
}

fn read_records(bytes: &[u8]) -> Vec<PcapRecord> {
    let mut reader = PcapReader::new(bytes).expect("a pcap header");
    let mut records = Vec::new();
    while let Some(record) = reader.next_record().expect("whole records only") {
        records.push(record);
    }
    records
}

/// Frame lengths as tshark reads them, or `None` when tshark is not installed (outside CI).
fn tshark_frame_lengths(path: &Path) -> Option<Vec<usize>> {
    let output = match Command::new("tshark")
        .arg("-r")
        .arg(path)
        .args(["-T", "fields", "-e", "frame.len"])
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "tshark must be installed in CI"
            );
            eprintln!("tshark not installed: skipping its check");
            return None;
        }
        Err(e) => panic!("run tshark: {e}"),
    };
    assert!(
        output.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| l.trim().parse().expect("a frame length"))
            .collect(),
    )
}

fn check_timestamps(records: &[PcapRecord], before: u64, after: u64) {
    for pair in records.windows(2) {
        assert!(pair[0].timestamp_ns <= pair[1].timestamp_ns, "time order");
    }
    for record in records {
        assert!(
            (before..=after).contains(&record.timestamp_ns),
            "wall-clock timestamp {} outside {before}..={after}",
            record.timestamp_ns
        );
    }
}

fn setup() -> (tempfile::TempDir, Network) {
    let dir = tempfile::tempdir().unwrap();
    let net = Network::create(dir.path(), "lab", Default::default()).unwrap();
    (dir, net)
}

#[test]
fn capture_with_count_writes_the_first_frames_exchanged_by_others() {
    let (dir, net) = setup();
    let file = dir.path().join("lab.pcap");
    let mut capture = start_capture(
        dir.path(),
        &["-w", file.to_str().unwrap(), "-c", "3"],
        Stdio::null(),
    );
    wait_for_capture_peer(&net);
    let mut a = net.join(JoinOptions::default()).unwrap();
    let mut b = net.join(JoinOptions::default()).unwrap();
    let before = unix_ns();
    let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(b.mac(), a.mac(), i)).collect();
    for f in &frames {
        a.send(f);
    }
    let status = capture.wait();
    let after = unix_ns();
    let stderr = capture.stderr();
    assert!(status.success(), "capture failed: {stderr}");
    assert!(stderr.contains("captured 3 frames"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The unicast still reached its owner: capturing takes a copy, nothing more.
    assert_eq!(b.receive(usize::MAX, |_| {}), 5);
    // The capture left the network when it stopped.
    assert!(
        net.status()
            .peers
            .iter()
            .all(|p| p.kind != PortKind::Capture)
    );

    let records = read_records(&std::fs::read(&file).unwrap());
    let data: Vec<&[u8]> = records.iter().map(|r| r.data.as_slice()).collect();
    assert_eq!(
        data,
        frames[..3].iter().map(Vec::as_slice).collect::<Vec<_>>()
    );
    check_timestamps(&records, before, after);
    if let Some(lengths) = tshark_frame_lengths(&file) {
        assert_eq!(lengths, vec![64, 65, 66]);
    }
}

#[test]
fn capture_to_stdout_writes_a_pcap_stream() {
    let (dir, net) = setup();
    let mut capture = start_capture(dir.path(), &["-w", "-", "-c", "2"], Stdio::piped());
    wait_for_capture_peer(&net);
    let mut a = net.join(JoinOptions::default()).unwrap();
    let frames = [
        frame(MacAddress::BROADCAST, a.mac(), 7),
        frame(MacAddress::BROADCAST, a.mac(), 8),
    ];
    for f in &frames {
        a.send(f);
    }
    // Two small records fit the pipe's buffer, so the child can exit before we read.
    let status = capture.wait();
    let mut out = Vec::new();
    let mut stdout = capture.0.stdout.take().unwrap();
    std::io::Read::read_to_end(&mut stdout, &mut out).unwrap();
    assert!(status.success(), "{}", capture.stderr());
    let records = read_records(&out);
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].data, frames[0]);
    assert_eq!(records[1].data, frames[1]);
}

#[test]
fn sigint_leaves_a_complete_readable_file() {
    let (dir, net) = setup();
    let file = dir.path().join("interrupted.pcap");
    let mut capture = start_capture(dir.path(), &["-w", file.to_str().unwrap()], Stdio::null());
    wait_for_capture_peer(&net);
    let mut a = net.join(JoinOptions::default()).unwrap();
    let before = unix_ns();
    let frames = [
        frame(MacAddress::BROADCAST, a.mac(), 1),
        frame(MacAddress::BROADCAST, a.mac(), 2),
    ];
    for f in &frames {
        a.send(f);
    }
    let live = wait_for_records_on_disk(&file, 2);
    assert_eq!(live.len(), 2);
    if let Some(lengths) = tshark_frame_lengths(&file) {
        assert_eq!(lengths, vec![65, 66], "tshark reads the live file");
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&capture.0),
        rustix::process::Signal::INT,
    )
    .expect("send SIGINT");
    let status = capture.wait();
    let after = unix_ns();
    let stderr = capture.stderr();
    assert!(
        status.success(),
        "an interrupted capture exits cleanly: {stderr}"
    );
    assert!(stderr.contains("captured 2 frames"), "{stderr}");
    let records = read_records(&std::fs::read(&file).unwrap());
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].data, frames[0]);
    assert_eq!(records[1].data, frames[1]);
    check_timestamps(&records, before, after);
    if let Some(lengths) = tshark_frame_lengths(&file) {
        assert_eq!(lengths, vec![65, 66]);
    }
    assert!(
        net.status()
            .peers
            .iter()
            .all(|p| p.kind != PortKind::Capture)
    );
}
