//! `guestnet metrics`, run as the real binary: a scrape of a network whose peers have
//! exchanged frames says what `status --json` says at the same moment, and parses with
//! Prometheus's own `promtool` (required under CI, skipped with a word elsewhere).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use guestnet::network::{JoinOptions, Network};
use guestnet::wire::MacAddress;
use serde_json::Value;

fn guestnet(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_guestnet"));
    command.arg("--dir").arg(dir);
    command
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let output = guestnet(dir).args(args).output().expect("run guestnet");
    assert!(
        output.status.success(),
        "guestnet {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn frame(dst: MacAddress, src: MacAddress, tag: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x88, 0xb5, tag]);
    f.resize(100, tag);
    f
}

/// The `metrics` process, killed however the test ends.
struct Exporter {
    /// `None` once [`Exporter::terminate`] has taken it to wait for it.
    child: Option<Child>,
    address: String,
}

impl Exporter {
    fn start(dir: &Path) -> Exporter {
        let mut child = guestnet(dir)
            .args(["metrics", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start guestnet metrics");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut exporter = Exporter {
            child: Some(child),
            address: String::new(),
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("guestnet metrics did not say where it listens within 30 s");
        exporter.address = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        exporter
    }

    /// `GET path`: the status line and the body.
    fn get(&self, path: &str) -> (String, String) {
        let mut stream = TcpStream::connect(&self.address).expect("connect to the exporter");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("read the whole answer");
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no head in {response:?}"));
        let status = head.lines().next().unwrap_or("").to_string();
        (status, body.to_string())
    }
}

impl Exporter {
    /// Sends SIGTERM and waits, at most 30 s, for the exporter to end; its exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("not terminated yet");
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("send SIGTERM");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send(status);
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(status) => status.expect("wait for guestnet metrics"),
            Err(_) => {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                panic!("guestnet metrics did not end within 30 s of SIGTERM");
            }
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The samples of a scrape, by series (`name{labels}`).
fn samples(body: &str) -> HashMap<String, u64> {
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            (
                series.to_string(),
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("not a count: {line}")),
            )
        })
        .collect()
}

fn number(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("not a count: {value}"))
}

#[test]
fn a_scrape_says_what_status_says_and_parses_with_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    ok(dir, &["create", "lab", "--ring-slots", "8"]);
    let net = Network::open(dir, "lab").unwrap();
    let mut a = net
        .join(JoinOptions {
            label: "sender \"one\"".into(),
            ..JoinOptions::default()
        })
        .unwrap();
    let mut b = net.join(JoinOptions::default()).unwrap();
    // Ten frames into a ring of eight: two copies dropped as ring_full on both sides.
    for tag in 0..10 {
        a.send(&frame(b.mac(), a.mac(), tag));
    }
    assert_eq!(b.receive(usize::MAX, |_| {}), 8);
    // A peer that sends and leaves: its counters go into the retired totals, and its
    // three frames wait unread in a's ring.
    let mut gone = net.join(JoinOptions::default()).unwrap();
    for tag in 0..3 {
        gone.send(&frame(a.mac(), gone.mac(), tag));
    }
    drop(gone);

    let mut exporter = Exporter::start(dir);
    let (status_line, body) = exporter.get("/metrics");
    assert_eq!(status_line, "HTTP/1.1 200 OK", "{body}");
    // Traffic has stopped, so this is the same moment as the scrape.
    let status: Value = serde_json::from_str(&ok(dir, &["status", "lab", "--json"])).unwrap();
    let scraped = samples(&body);
    let sample = |series: String| -> u64 {
        *scraped
            .get(&series)
            .unwrap_or_else(|| panic!("no {series} in\n{body}"))
    };

    let peers = status["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    assert_eq!(
        sample("guestnet_network_peers_up{network=\"lab\"}".into()),
        2
    );
    assert_eq!(
        sample("guestnet_network_learned_addresses{network=\"lab\"}".into()),
        status["learned"].as_array().unwrap().len() as u64
    );
    let queued: u64 = peers.iter().map(|p| number(&p["rx_queued"])).sum();
    assert_eq!(queued, 3);
    assert_eq!(
        sample("guestnet_network_ring_queued_frames{network=\"lab\"}".into()),
        queued
    );
    for field in ["tx_packets", "tx_deliveries", "rx_packets"] {
        assert_eq!(
            sample(format!("guestnet_retired_{field}_total{{network=\"lab\"}}")),
            number(&status["retired"][field]),
            "retired {field}"
        );
    }
    assert_eq!(number(&status["retired"]["tx_packets"]), 3);

    let mut drops_seen = 0;
    for peer in peers {
        let labels = format!(
            "network=\"lab\",slot=\"{}\",mac=\"{}\",kind=\"{}\",label=\"{}\"",
            peer["slot"],
            peer["mac"].as_str().unwrap(),
            peer["kind"].as_str().unwrap(),
            peer["label"].as_str().unwrap().replace('"', "\\\"")
        );
        for field in [
            "rx_packets",
            "rx_bytes",
            "tx_packets",
            "tx_bytes",
            "tx_deliveries",
            "wakeups",
            "learn_refused",
        ] {
            assert_eq!(
                sample(format!("guestnet_peer_{field}_total{{{labels}}}")),
                number(&peer[field]),
                "{field} of {labels}"
            );
        }
        assert_eq!(
            sample(format!("guestnet_peer_rx_queued_frames{{{labels}}}")),
            number(&peer["rx_queued"])
        );
        for (name, count) in peer["drops"].as_object().unwrap() {
            let (direction, reason) = name.split_once('_').unwrap();
            assert_eq!(
                sample(format!(
                    "guestnet_peer_drops_total{{{labels},direction=\"{direction}\",reason=\"{reason}\"}}"
                )),
                number(count),
                "{name} of {labels}"
            );
            drops_seen += 1;
        }
    }
    // a's tx_ring_full and b's rx_ring_full, and no drop series status does not show.
    assert_eq!(drops_seen, 2);
    assert_eq!(
        body.matches("guestnet_peer_drops_total{").count(),
        drops_seen
    );
    let sender = format!(
        "network=\"lab\",slot=\"{}\",mac=\"{}\",kind=\"process\",label=\"sender \\\"one\\\"\"",
        a.index(),
        a.mac()
    );
    assert_eq!(
        sample(format!("guestnet_peer_tx_packets_total{{{sender}}}")),
        10
    );
    assert_eq!(
        sample(format!(
            "guestnet_peer_drops_total{{{sender},direction=\"tx\",reason=\"ring_full\"}}"
        )),
        2
    );

    let (not_found, _) = exporter.get("/");
    assert_eq!(not_found, "HTTP/1.1 404 Not Found");
    assert!(exporter.terminate().success(), "SIGTERM ends it cleanly");

    check_with_promtool(&body);
}

/// Runs `promtool check metrics` on `body`: required under CI, skipped with a word when
/// it is not installed elsewhere.
fn check_with_promtool(body: &str) {
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!(
                "skipping the promtool check: cannot run promtool ({error}); install the Debian package prometheus"
            );
            return;
        }
        Err(error) => panic!("CI needs promtool (Debian package prometheus): {error}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed: {}{}\n{body}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
