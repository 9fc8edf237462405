//! The admin commands, run as the real binary against a private directory: the round trip,
//! what `status` reports after traffic, and how it treats regions that were damaged.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

use guestnet::network::{JoinOptions, Network};
use guestnet::shm::layout::{Geometry, Layout};
use guestnet::wire::MacAddress;
use serde_json::Value;

fn guestnet(dir: &Path, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_guestnet"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run guestnet");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("panicked"),
        "guestnet {args:?} panicked: {stderr}"
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a command that must succeed and returns its standard output.
fn ok(dir: &Path, args: &[&str]) -> String {
    let output = guestnet(dir, args);
    assert!(
        output.status.success(),
        "guestnet {args:?} failed: {}",
        stderr(&output)
    );
    stdout(&output)
}

/// Runs a command that must fail with exit code 1 and returns (stdout, stderr).
fn fails(dir: &Path, args: &[&str]) -> (String, String) {
    let output = guestnet(dir, args);
    assert_eq!(
        output.status.code(),
        Some(1),
        "guestnet {args:?} should fail; stdout: {} stderr: {}",
        stdout(&output),
        stderr(&output)
    );
    (stdout(&output), stderr(&output))
}

fn status_json(dir: &Path, name: &str) -> Value {
    serde_json::from_str(&ok(dir, &["status", name, "--json"])).expect("status prints JSON")
}

fn frame(dst: MacAddress, src: MacAddress, tag: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x88, 0xb5, tag]);
    f.resize(100, tag);
    f
}

#[test]
fn create_list_status_destroy_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let listed = ok(dir, &["list"]);
    assert!(listed.contains("no networks in"), "{listed}");

    let created = ok(
        dir,
        &[
            "create",
            "lab",
            "--max-peers",
            "8",
            "--ring-slots",
            "64",
            "--mtu",
            "9000",
            "--unknown-unicast",
            "drop",
            "--mode",
            "0640",
        ],
    );
    assert!(created.contains("lab"), "{created}");
    assert!(created.contains("8 peers"), "{created}");
    assert!(created.contains("MTU 9000"), "{created}");
    let size = std::fs::metadata(dir.join("lab")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(size.permissions().mode() & 0o777, 0o640);
    let expected = Layout::new(Geometry {
        max_peers: 8,
        ring_slots: 64,
        mtu: 9000,
        ..Geometry::default()
    })
    .unwrap()
    .total_size as u64;
    assert_eq!(size.len(), expected);
    assert!(created.contains(&expected.to_string()), "{created}");

    let listed = ok(dir, &["list"]);
    let row = listed
        .lines()
        .find(|l| l.starts_with("lab"))
        .expect("lab row");
    assert!(row.contains("0/8") && row.contains("9000"), "{listed}");
    let json: Value = serde_json::from_str(&ok(dir, &["list", "--json"])).unwrap();
    assert_eq!(json[0]["name"], "lab");
    assert_eq!(json[0]["peers_up"], 0);
    assert_eq!(json[0]["size_bytes"], expected);

    let status = status_json(dir, "lab");
    assert_eq!(status["unknown_unicast"], "drop");
    assert_eq!(status["ring_slots"], 64);
    assert_eq!(status["damage"], Value::Array(vec![]));

    ok(dir, &["destroy", "lab"]);
    assert!(ok(dir, &["list"]).contains("no networks in"));
    let (_, err) = fails(dir, &["status", "lab"]);
    assert!(err.contains("no network named \"lab\""), "{err}");
    let (_, err) = fails(dir, &["destroy", "lab"]);
    assert!(err.contains("no network named \"lab\""), "{err}");
}

#[test]
fn status_shows_peers_counters_and_drops_after_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    ok(dir, &["create", "lab", "--ring-slots", "8"]);
    let net = Network::open(dir, "lab").unwrap();
    let mut a = net
        .join(JoinOptions {
            label: "sender".into(),
            ..JoinOptions::default()
        })
        .unwrap();
    let mut b = net.join(JoinOptions::default()).unwrap();
    let watcher = net
        .join(JoinOptions {
            promiscuous: true,
            all_multicast: false,
            ..JoinOptions::default()
        })
        .unwrap();
    let frames: Vec<Vec<u8>> = (0..10).map(|i| frame(b.mac(), a.mac(), i)).collect();
    for f in &frames {
        a.send(f);
    }
    // Each ring holds 8: the last two copies to b, and to the watcher, are dropped as
    // ring_full, counted on both sides.
    assert_eq!(b.receive(usize::MAX, |_| {}), 8);

    let status = status_json(dir, "lab");
    assert_eq!(status["name"], "lab");
    assert_eq!(status["mtu"], 1500);
    assert_eq!(status["max_peers"], 64);
    let peers = status["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 3);
    let peer = |slot: u16| {
        peers
            .iter()
            .find(|p| p["slot"] == slot)
            .unwrap_or_else(|| panic!("slot {slot} in {peers:?}"))
    };
    let (pa, pb, pw) = (peer(a.index()), peer(b.index()), peer(watcher.index()));
    assert_eq!(pa["mac"], a.mac().to_string());
    assert_eq!(pa["kind"], "process");
    assert_eq!(pa["pid"], std::process::id());
    assert_eq!(pa["label"], "sender");
    assert_eq!(pa["tx_packets"], 10);
    assert_eq!(pa["tx_bytes"], 1000);
    assert_eq!(pa["drops"]["tx_ring_full"], 4);
    assert_eq!(pa["tx_deliveries"], 16);
    assert_eq!(pb["rx_packets"], 8);
    assert_eq!(pb["rx_bytes"], 800);
    assert_eq!(pb["drops"]["rx_ring_full"], 2);
    assert_eq!(pb["promiscuous"], false);
    assert_eq!(pw["promiscuous"], true);
    // The watcher has not read its ring: its 8 copies wait there.
    assert_eq!(pw["rx_packets"], 0);
    assert_eq!(pw["rx_queued"], 8);
    assert_eq!(pw["drops"]["rx_ring_full"], 2);
    assert_eq!(status["damage"], Value::Array(vec![]));

    let text = ok(dir, &["status", "lab"]);
    let row = |slot: u16| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(slot.to_string().as_str()))
            .unwrap_or_else(|| panic!("row {slot} in\n{text}"))
            .to_string()
    };
    let (ra, rb, rw) = (row(a.index()), row(b.index()), row(watcher.index()));
    assert!(ra.contains(&a.mac().to_string()), "{ra}");
    assert!(
        ra.contains("tx_ring_full=4") && ra.contains("sender"),
        "{ra}"
    );
    assert!(rb.contains("rx_ring_full=2"), "{rb}");
    let flags = |row: &str| row.split_whitespace().nth(2).unwrap().to_string();
    assert_eq!(flags(&ra), "M");
    assert_eq!(flags(&rw), "P");

    // A peer that leaves is gone from the next status.
    let gone = watcher.index();
    drop(watcher);
    let status = status_json(dir, "lab");
    assert!(
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["slot"] != gone)
    );
}

#[test]
fn create_with_bad_geometry_fails_clearly_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    for (args, message) in [
        (
            &["--ring-slots", "100"][..],
            "ring slots must be a power of two",
        ),
        (&["--max-peers", "1"][..], "max peers must be between"),
        (&["--mtu", "20"][..], "MTU must be between"),
    ] {
        let mut all = vec!["create", "bad"];
        all.extend_from_slice(args);
        let (_, err) = fails(dir, &all);
        assert!(err.contains(message), "{all:?}: {err}");
        assert!(err.contains("bad geometry"), "{all:?}: {err}");
    }
    assert!(ok(dir, &["list"]).contains("no networks in"));
    ok(dir, &["create", "lab"]);
    let (_, err) = fails(dir, &["create", "lab"]);
    assert!(err.contains("already exists"), "{err}");
    let (_, err) = fails(dir, &["create", "../escape"]);
    assert!(err.contains("invalid network name"), "{err}");
}

/// `tap` takes `--netns` once for all its devices or once per `--ifname`; any other count
/// is refused before anything is made (no root needed to see it).
#[test]
fn tap_refuses_a_namespace_count_that_does_not_match_its_devices() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    ok(dir, &["create", "lab"]);
    let args = [
        "tap", "lab", "--ifname", "a", "--ifname", "b", "--ifname", "c", "--netns", "red",
        "--netns", "blue",
    ];
    let (_, err) = fails(dir, &args);
    assert!(err.contains("2 --netns for 3 --ifname"), "{err}");
    assert!(err.contains("once per --ifname"), "{err}");
}

/// Creates `lab` with a small geometry and returns its layout and path.
fn small_network(dir: &Path) -> (Layout, std::path::PathBuf) {
    ok(
        dir,
        &["create", "lab", "--max-peers", "4", "--ring-slots", "8"],
    );
    let layout = Layout::new(Geometry {
        max_peers: 4,
        ring_slots: 8,
        mtu: 1500,
        ..Geometry::default()
    })
    .unwrap();
    (layout, dir.join("lab"))
}

fn scribble(path: &Path, offset: usize, bytes: &[u8]) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset as u64).unwrap();
}

#[test]
fn status_refuses_a_region_with_garbage_magic() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = small_network(dir.path());
    scribble(&path, 0, b"NOTGUEST");
    let (_, err) = fails(dir.path(), &["status", "lab"]);
    assert!(err.contains("not a guestnet region (bad magic"), "{err}");
    // list still shows it, as unusable.
    let listed = ok(dir.path(), &["list"]);
    assert!(listed.lines().any(|l| l.starts_with("lab ")), "{listed}");
    assert!(
        listed.contains("network \"lab\" is unusable: not a guestnet region"),
        "{listed}"
    );
}

#[test]
fn status_refuses_a_region_of_another_version() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = small_network(dir.path());
    scribble(&path, 8, &99u32.to_le_bytes());
    let (_, err) = fails(dir.path(), &["status", "lab"]);
    assert!(err.contains("layout version 99 is not supported"), "{err}");
}

#[test]
fn status_refuses_a_truncated_region() {
    let dir = tempfile::tempdir().unwrap();
    let (layout, path) = small_network(dir.path());
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    for len in [layout.total_size as u64 / 2, 100, 0] {
        file.set_len(len).unwrap();
        let (_, err) = fails(dir.path(), &["status", "lab"]);
        assert!(err.contains(&format!("region is {len} bytes")), "{err}");
    }
}

#[test]
fn status_reports_scribbled_entries_and_slot_states_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (layout, path) = small_network(dir.path());
    let net = Network::open(dir.path(), "lab").unwrap();
    let a = net.join(JoinOptions::default()).unwrap();
    // A status word that is neither FREE nor UP in a slot nobody uses.
    scribble(&path, layout.peer_offset(3), &0x5a5a_u32.to_le_bytes());
    // A multicast MAC on a live peer (the MAC word sits 8 bytes into the entry).
    let multicast = MacAddress::new([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]);
    scribble(
        &path,
        layout.peer_offset(a.index() as usize) + 8,
        &multicast.to_u64().to_le_bytes(),
    );
    // A slot state naming a position far beyond its ring's window, in a's ring (the
    // rings of free slots are not judged: whoever takes the slot starts it afresh).
    scribble(
        &path,
        layout.slot_offset(a.index() as usize, 2),
        &0x0123_4567_89ab_0002_u64.to_le_bytes(),
    );

    let (out, err) = fails(dir.path(), &["status", "lab", "--json"]);
    assert!(err.contains("is damaged: 3 problems"), "{err}");
    let json: Value = serde_json::from_str(&out).expect("JSON even when damaged");
    let damage = json["damage"].as_array().unwrap();
    let kinds: Vec<&str> = damage.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    // In table order: peer slot 0 (a), peer slot 3, then the rings.
    assert_eq!(a.index(), 0);
    assert_eq!(
        kinds,
        ["peer_mac", "peer_status", "ring_slot"],
        "{damage:?}"
    );
    assert_eq!(damage[0]["mac"], multicast.to_string());
    assert_eq!(damage[1]["slot"], 3);
    assert_eq!(damage[2]["ring"], 0);
    assert_eq!(damage[2]["index"], 2);

    // That status reclaimed slot 3 (nobody holds its lock): scribble it again.
    scribble(&path, layout.peer_offset(3), &0x5a5a_u32.to_le_bytes());
    let (out, _) = fails(dir.path(), &["status", "lab"]);
    assert!(out.contains("peer slot 3: status 0x5a5a"), "{out}");
    assert!(out.contains("ring 0 slot 2"), "{out}");
}
