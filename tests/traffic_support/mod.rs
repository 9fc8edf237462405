//! Helpers shared by the multi-process tests: running `guestnet pktgen` and `guestnet sink`
//! as child processes with bounded waits, and killing them whatever happens.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use guestnet::network::{CreateOptions, Network};
use guestnet::shm::layout::Geometry;
use guestnet::wire::MacAddress;

/// Creates network `name` in `dir` with small rings, so that full rings happen.
pub fn network(dir: &Path, name: &str, ring_slots: u32) -> Network {
    Network::create(
        dir,
        name,
        CreateOptions {
            geometry: Geometry {
                max_peers: 8,
                ring_slots,
                mtu: 1500,
                ..Geometry::default()
            },
            ..CreateOptions::default()
        },
    )
    .expect("create the network")
}

/// A `guestnet` child process. Dropping it kills and reaps it, so a failing test leaves
/// no process behind.
pub struct Child {
    name: String,
    process: std::process::Child,
    lines: Receiver<String>,
}

impl Child {
    /// Starts `guestnet --dir DIR ARGS…` with stdout piped to a reader thread.
    pub fn spawn(name: &str, dir: &Path, args: &[&str]) -> Child {
        let mut process = Command::new(env!("CARGO_BIN_EXE_guestnet"))
            .arg("--dir")
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout = process.stdout.take().expect("stdout is piped");
        let (sender, lines) = channel();
        // A thread, so that reading a line can be bounded by recv_timeout.
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Child {
            name: name.to_string(),
            process,
            lines,
        }
    }

    /// The next line it prints, or a panic if none comes within `timeout`.
    pub fn line(&mut self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                panic!("{}: no output within {timeout:?}", self.name)
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.process.wait().ok();
                panic!("{}: exited ({status:?}) before printing", self.name)
            }
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.process),
            rustix::process::Signal::TERM,
        )
        .unwrap_or_else(|e| panic!("SIGTERM {}: {e}", self.name));
    }

    /// Sends SIGKILL and reaps it.
    pub fn kill(&mut self) {
        self.process
            .kill()
            .unwrap_or_else(|e| panic!("SIGKILL {}: {e}", self.name));
        let _ = self.process.wait();
    }

    /// Waits (bounded) for its last line, a JSON summary, and its exit; returns both.
    pub fn finish(&mut self, timeout: Duration) -> (serde_json::Value, std::process::ExitStatus) {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => last = Some(line),
                // Stdout closed: the process is exiting.
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{}: did not finish within {timeout:?}", self.name)
                }
            }
        }
        let status = self.process.wait().expect("reap the child");
        let line = last.unwrap_or_else(|| panic!("{}: printed no summary ({status})", self.name));
        let summary = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}: summary {line:?} is not JSON: {e}", self.name));
        (summary, status)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.process.try_wait() {
            let _ = self.process.kill();
        }
        let _ = self.process.wait();
    }
}

/// A sink that has joined: its process, slot and MAC.
pub struct Sink {
    /// The process.
    pub child: Child,
    /// Its peer slot.
    pub slot: u16,
    /// Its MAC.
    pub mac: MacAddress,
}

/// Starts `guestnet sink NET --json` and waits (bounded) until it has joined.
pub fn start_sink(dir: &Path, net: &str, name: &str) -> Sink {
    let mut child = Child::spawn(name, dir, &["sink", net, "--json", "--timeout", "30"]);
    let ready = child.line(Duration::from_secs(10));
    let mut words = ready.split_whitespace();
    assert_eq!(words.next(), Some("ready"), "{name}: {ready:?}");
    let slot = words.next().and_then(|w| w.parse().ok());
    let mac = words.next().and_then(|w| w.parse().ok());
    let (Some(slot), Some(mac)) = (slot, mac) else {
        panic!("{name}: bad ready line {ready:?}")
    };
    Sink { child, slot, mac }
}

/// Polls `condition` until it holds or `timeout` passes; panics with `what` on timeout.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A number from a JSON summary (0 when absent, as drop maps list non-zero reasons only).
pub fn number(value: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = value;
    for key in path {
        match v.get(key) {
            Some(inner) => v = inner,
            None => return 0,
        }
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("{path:?} in {value} is not a count"))
}

/// The sum of a JSON object of counts, e.g. `tx_drops`.
pub fn total(value: &serde_json::Value, key: &str) -> u64 {
    value
        .get(key)
        .and_then(|v| v.as_object())
        .map_or(0, |map| map.values().filter_map(|v| v.as_u64()).sum())
}
