//! The region's control path under faults and attackers: a closed pipe, a full file system,
//! a network re-created under a running handle, a scribbled sweep clock, a stopped holder
//! of the control lock, and a directory or region file someone else controls.
//!
//! Tests that need root (mounting a small tmpfs, handing a directory to another user) skip
//! with a printed reason when not run as root, except under `CI=true`, where they fail.

use std::io::{BufRead, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use guestnet::network::{CreateOptions, Error, JoinOptions, Network, PortKind};
use guestnet::shm::RangeLock;
use guestnet::shm::layout::{Geometry, Header, Layout};

/// Runs `guestnet --dir DIR ARGS…` to completion, stdin closed, output captured.
fn guestnet(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_guestnet"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run guestnet")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a command that must succeed.
fn ok(dir: &Path, args: &[&str]) -> String {
    let output = guestnet(dir, args);
    assert!(
        output.status.success(),
        "guestnet {args:?} failed: {}",
        stderr(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Whether the test may do what only root may; under `CI=true` it must, elsewhere it
/// says why it skips.
fn running_as_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs root, and CI must not skip it");
    }
    eprintln!("skipped: {test} needs root");
    false
}

/// A tmpfs of a few MiB mounted on a fresh directory, unmounted when dropped.
struct SmallTmpfs {
    dir: tempfile::TempDir,
}

impl SmallTmpfs {
    fn mount(size: &str) -> SmallTmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a {size} tmpfs: {status}");
        SmallTmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Names of the files in it, hidden ones included.
    fn files(&self) -> Vec<String> {
        std::fs::read_dir(self.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Writes a file until the file system is full.
    fn fill(&self) {
        let mut filler = std::fs::File::create(self.path().join("filler")).unwrap();
        let block = vec![0xa5u8; 64 * 1024];
        loop {
            if let Err(e) = filler.write_all(&block) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "fill the tmpfs: {e}");
                break;
            }
        }
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// The write end of a pipe whose read end is already closed: every write to it fails
/// with EPIPE, as writes to `| head -2` do once `head` has its lines.
fn pipe_without_reader() -> OwnedFd {
    let (reader, writer) = rustix::pipe::pipe().expect("make a pipe");
    drop(reader);
    writer
}

#[test]
fn a_reader_that_closes_the_pipe_early_ends_status_quietly() {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["create", "lab", "--max-peers", "4"]);
    for args in [
        &["status", "lab"][..],
        &["list"],
        &["status", "lab", "--json"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_guestnet"))
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(pipe_without_reader())
            .stderr(Stdio::piped())
            .output()
            .expect("run guestnet");
        let err = stderr(&output);
        assert!(!err.contains("panicked"), "guestnet {args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "guestnet {args:?}: {err}");
        assert_ne!(output.status.code(), Some(101), "guestnet {args:?}: {err}");
    }
}

#[test]
fn a_failed_system_call_is_named_once_in_the_message() {
    let dir = tempfile::tempdir().unwrap();
    // A directory in the place of the region file: opening it fails with EISDIR.
    std::fs::create_dir(dir.path().join("lab")).unwrap();
    let output = guestnet(dir.path(), &["status", "lab"]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("(os error").count(), 1, "{err}");
}

#[test]
fn creating_a_network_on_a_full_file_system_fails_cleanly_instead_of_crashing() {
    if !running_as_root("creating_a_network_on_a_full_file_system_fails_cleanly…") {
        return;
    }
    let tmpfs = SmallTmpfs::mount("4m");
    // The default geometry's rings need about 25 MiB.
    let output = guestnet(tmpfs.path(), &["create", "lab"]);
    let err = stderr(&output);
    assert_eq!(
        output.status.signal(),
        None,
        "create died by a signal: {err}"
    );
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains(&tmpfs.path().display().to_string()), "{err}");
    assert!(
        err.contains("MiB"),
        "the message says how much is needed: {err}"
    );
    assert!(tmpfs.files().is_empty(), "left behind: {:?}", tmpfs.files());

    let refused = Network::create(tmpfs.path(), "lab", CreateOptions::default()).unwrap_err();
    let needed = Layout::new(Geometry::default()).unwrap();
    let message = refused.to_string();
    assert!(message.contains("No space left"), "{message}");
    assert!(
        message.contains(&format!("in {}", tmpfs.path().display())),
        "{message}"
    );
    assert!(needed.total_size > 4 << 20);
    assert!(tmpfs.files().is_empty(), "left behind: {:?}", tmpfs.files());
}

#[test]
fn a_network_outgrowing_the_file_system_is_created_when_only_its_offload_buffers_do_not_fit() {
    if !running_as_root("a_network_outgrowing_the_file_system_is_created…") {
        return;
    }
    let tmpfs = SmallTmpfs::mount("4m");
    let geometry = Geometry {
        max_peers: 4,
        ring_slots: 8,
        ..Geometry::default()
    };
    let layout = Layout::new(geometry).unwrap();
    assert!(
        layout.total_size > 4 << 20,
        "the offload buffers outgrow the tmpfs"
    );
    let network = Network::create(
        tmpfs.path(),
        "lab",
        CreateOptions {
            geometry,
            ..CreateOptions::default()
        },
    )
    .expect("the header, tables and slots fit");
    let resident = network.status().resident_bytes as usize;
    assert!(
        resident >= layout.rings_offset + 4 * layout.large_offset_in_ring,
        "{resident} bytes reserved"
    );
    assert!(resident < 1 << 20, "{resident} bytes reserved");
}

#[test]
fn a_file_system_filled_after_create_does_not_crash_the_peers_that_join() {
    if !running_as_root("a_file_system_filled_after_create_does_not_crash…") {
        return;
    }
    let tmpfs = SmallTmpfs::mount("4m");
    // Through the library: `guestnet create` reads the whole region for its report.
    let created = Network::create(
        tmpfs.path(),
        "lab",
        CreateOptions {
            geometry: Geometry {
                max_peers: 4,
                ring_slots: 8,
                gso_buffers: 0,
                ..Geometry::default()
            },
            ..CreateOptions::default()
        },
    );
    drop(created.expect("create a small network"));
    tmpfs.fill();
    // Joining writes the peer table and sending learns addresses: pages that must have
    // been reserved at creation, or their first touch is a SIGBUS.
    for mac in ["02:00:00:00:00:01", "02:00:00:00:00:02"] {
        let output = guestnet(
            tmpfs.path(),
            &[
                "pktgen",
                "lab",
                "--mac",
                mac,
                "--count",
                "10",
                "--no-receive",
            ],
        );
        let err = stderr(&output);
        assert_eq!(
            output.status.signal(),
            None,
            "pktgen died by a signal: {err}"
        );
        assert!(output.status.success(), "{err}");
    }
}

#[test]
fn a_peer_joining_when_its_offload_buffers_do_not_fit_is_refused_cleanly() {
    if !running_as_root("a_peer_joining_when_its_offload_buffers_do_not_fit…") {
        return;
    }
    let tmpfs = SmallTmpfs::mount("4m");
    let geometry = Geometry {
        max_peers: 4,
        ring_slots: 8,
        ..Geometry::default()
    };
    let network = Network::create(
        tmpfs.path(),
        "lab",
        CreateOptions {
            geometry,
            ..CreateOptions::default()
        },
    )
    .expect("the header, tables and slots fit");
    // A sender writes a super-frame straight into a receiver's large buffer, so the
    // buffers are given their memory when the receiver joins: the first join's fit in
    // 4 MiB (32 × 64 KiB), the second's do not, and that join fails with a clear error
    // rather than the first super-frame killing its sender.
    let first = network
        .join(JoinOptions::default())
        .expect("the first peer fits");
    let refused = network.join(JoinOptions::default()).unwrap_err();
    let message = refused.to_string();
    assert!(
        message.contains("large buffers") && message.contains("--gso-buffers 0"),
        "{message}"
    );
    assert_eq!(
        slots_up(&network),
        vec![first.index()],
        "the refused slot is free again"
    );
}

fn small_geometry(max_peers: u32) -> CreateOptions {
    CreateOptions {
        geometry: Geometry {
            max_peers,
            ring_slots: 8,
            gso_buffers: 0,
            ..Geometry::default()
        },
        ..CreateOptions::default()
    }
}

fn slots_up(network: &Network) -> Vec<u16> {
    network
        .status()
        .peers
        .iter()
        .map(|peer| peer.slot)
        .collect()
}

#[test]
fn a_network_recreated_under_a_running_port_is_not_joined_through_the_old_handle() {
    let dir = tempfile::tempdir().unwrap();
    let old = Network::create(dir.path(), "lab", small_geometry(2)).unwrap();
    let _old_peer = old.join(JoinOptions::default()).unwrap();
    // Destroyed and created anew while a port still holds the old network.
    std::fs::remove_file(dir.path().join("lab")).unwrap();
    let new = Network::create(dir.path(), "lab", small_geometry(2)).unwrap();
    let _new_peer = new.join(JoinOptions::default()).unwrap();

    // The old handle's next join belongs to the network that handle maps…
    let late = old
        .join(JoinOptions::default())
        .expect("the old network has a free slot");
    assert_eq!(late.index(), 1);
    // …so it takes no lock in the new one, whose free slot stays free…
    let _second_new_peer = new
        .join(JoinOptions::default())
        .expect("the new network's second slot is still free");
    // …and the old network's own sweep finds its members alive.
    assert_eq!(old.sweep(), Vec::<u16>::new());
    assert_eq!(slots_up(&old), vec![0, 1]);
    assert_eq!(slots_up(&new), vec![0, 1]);
}

#[test]
fn destroying_a_network_with_live_peers_is_refused_and_names_them() {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["create", "lab", "--max-peers", "4"]);
    let network = Network::open(dir.path(), "lab").unwrap();
    let _peer = network
        .join(JoinOptions {
            kind: PortKind::Stream,
            label: "/tmp/vm0.sock".into(),
            ..JoinOptions::default()
        })
        .unwrap();
    let output = guestnet(dir.path(), &["destroy", "lab"]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    for expected in [
        "slot 0",
        "stream",
        &format!("pid {}", std::process::id()),
        "/tmp/vm0.sock",
        "--force",
    ] {
        assert!(err.contains(expected), "no {expected:?} in: {err}");
    }
    assert!(dir.path().join("lab").exists());

    ok(dir.path(), &["destroy", "lab", "--force"]);
    assert!(!dir.path().join("lab").exists());
}

#[test]
fn a_dead_peer_left_in_the_table_does_not_hold_up_destroy() {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["create", "lab", "--max-peers", "4"]);
    let layout = Layout::new(Geometry {
        max_peers: 4,
        ..Geometry::default()
    })
    .unwrap();
    // An entry marked up whose owner holds no lock: a process that died without leaving.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("lab"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(
        &file,
        &1u32.to_le_bytes(),
        layout.peer_offset(2) as u64,
    )
    .unwrap();
    ok(dir.path(), &["destroy", "lab"]);
    assert!(!dir.path().join("lab").exists());
}

/// Runs `guestnet sink` until it has joined, then kills it with SIGKILL: its entry stays
/// up with nobody holding its lock. Returns its slot.
fn dead_peer(dir: &Path, name: &str) -> u16 {
    let mut sink = Command::new(env!("CARGO_BIN_EXE_guestnet"))
        .arg("--dir")
        .arg(dir)
        .args(["sink", name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start a sink");
    let mut ready = String::new();
    // The sink prints its line right after joining, or exits (and so ends the line).
    std::io::BufReader::new(sink.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    sink.kill().unwrap();
    sink.wait().unwrap();
    ready
        .split_whitespace()
        .nth(1)
        .and_then(|slot| slot.parse().ok())
        .unwrap_or_else(|| panic!("the sink did not join: {ready:?}"))
}

fn region_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(name))
        .unwrap()
}

fn last_sweep_offset() -> u64 {
    std::mem::offset_of!(Header, last_sweep_ns) as u64
}

fn read_u64(file: &std::fs::File, offset: u64) -> u64 {
    let mut bytes = [0u8; 8];
    file.read_exact_at(&mut bytes, offset).unwrap();
    u64::from_le_bytes(bytes)
}

/// Runs `work` on a thread and returns its result and how long it took, failing the test
/// if it takes longer than `limit` (the thread is left behind, stuck).
fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    let (done, result) = mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    match result.recv_timeout(limit) {
        Ok(value) => (value, start.elapsed()),
        Err(_) => panic!("{what} did not return within {limit:?}"),
    }
}

#[test]
fn a_sweep_clock_scribbled_into_the_future_does_not_stop_reclaiming_dead_peers() {
    let dir = tempfile::tempdir().unwrap();
    let network = Network::create(dir.path(), "lab", small_geometry(4)).unwrap();
    let mut sender = network.join(JoinOptions::default()).unwrap();
    let dead = dead_peer(dir.path(), "lab");
    let file = region_file(dir.path(), "lab");
    file.write_all_at(&u64::MAX.to_le_bytes(), last_sweep_offset())
        .unwrap();

    // Only the periodic sweep of a running peer may reclaim it here: commands force theirs.
    let frame = [0xffu8; 60];
    let deadline = Instant::now() + Duration::from_secs(3);
    while network.counters(dead).is_some() {
        assert!(
            Instant::now() < deadline,
            "the dead peer in slot {dead} was never reclaimed"
        );
        sender.send(&frame);
        std::thread::sleep(Duration::from_millis(10));
    }
    let repaired = read_u64(&file, last_sweep_offset());
    assert!(
        repaired <= guestnet::network::monotonic_ns(),
        "last_sweep_ns left at {repaired:#x}"
    );
}

/// A network with a dead peer whose reclaim needs the control lock, and that lock held
/// by another open file description, as a stopped process would hold it.
struct ControlLockHeld {
    // Fields drop in this order: the lock is let go before the peer leaves, which
    // takes the lock.
    _holder: std::fs::File,
    peer: Option<guestnet::network::Peer>,
    network: Network,
    dead: u16,
    dir: tempfile::TempDir,
}

fn control_lock_held_with_a_dead_peer() -> ControlLockHeld {
    let dir = tempfile::tempdir().unwrap();
    let network = Network::create(dir.path(), "lab", small_geometry(4)).unwrap();
    let peer = network.join(JoinOptions::default()).unwrap();
    let dead = dead_peer(dir.path(), "lab");
    let holder = region_file(dir.path(), "lab");
    let layout = Layout::new(network.geometry()).unwrap();
    assert!(RangeLock::try_lock(&holder, layout.control_lock_byte(), 1).unwrap());
    ControlLockHeld {
        _holder: holder,
        peer: Some(peer),
        network,
        dead,
        dir,
    }
}

#[test]
fn a_held_control_lock_makes_status_give_up_on_reclaiming_instead_of_hanging() {
    let held = control_lock_held_with_a_dead_peer();
    let dead = held.dead;
    let (status, took) = within(Duration::from_secs(5), "Network::status", move || {
        let status = held.network.status();
        (status, held)
    });
    let (status, _held) = status;
    assert!(took < Duration::from_secs(3), "status took {took:?}");
    assert!(status.reclaimed.is_empty());
    // What it could read without the lock is still there.
    assert!(status.peers.iter().any(|peer| peer.slot == dead));
}

#[test]
fn a_held_control_lock_delays_a_sender_by_at_most_a_moment() {
    let mut held = control_lock_held_with_a_dead_peer();
    let mut sender = held.peer.take().unwrap();
    // The sender's first batch runs the periodic sweep, which finds the dead peer.
    let (held, took) = within(Duration::from_secs(5), "the sender's batch", move || {
        sender.send(&[0xffu8; 60]);
        held.peer = Some(sender);
        held
    });
    assert!(took < Duration::from_millis(500), "the send took {took:?}");
    assert!(held.network.counters(held.dead).is_some());
}

#[test]
fn a_held_control_lock_refuses_a_join_with_the_holder_named() {
    let held = control_lock_held_with_a_dead_peer();
    let (joined, took) = within(Duration::from_secs(8), "Network::join", move || {
        held.network
            .join(JoinOptions::default())
            .map(|peer| peer.index())
    });
    assert!(took < Duration::from_secs(5), "the join took {took:?}");
    let error = joined.unwrap_err();
    assert!(matches!(error, Error::ControlLockBusy { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
}

#[test]
fn a_held_control_lock_leaves_guestnet_status_printing_what_it_can() {
    let held = control_lock_held_with_a_dead_peer();
    let mut child = Command::new(env!("CARGO_BIN_EXE_guestnet"))
        .arg("--dir")
        .arg(held.dir.path())
        .args(["status", "lab"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("guestnet status hung on the held control lock");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&output.stdout), stderr(&output));
    assert!(output.status.success(), "{out}{err}");
    assert!(out.contains("network lab"), "{out}");
    assert!(err.contains("control lock"), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_networks_directory_owned_by_another_user_is_refused() {
    if !running_as_root("a_networks_directory_owned_by_another_user_is_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nets = dir.path().join("nets");
    std::fs::create_dir(&nets).unwrap();
    std::os::unix::fs::chown(&nets, Some(4242), Some(4242)).unwrap();

    let refused = Network::create(&nets, "lab", small_geometry(4)).unwrap_err();
    let message = refused.to_string();
    for expected in [
        "uid 4242",
        "--dir",
        "GUESTNET_DIR",
        &nets.display().to_string(),
    ] {
        assert!(message.contains(expected), "no {expected:?} in: {message}");
    }
    assert!(std::fs::read_dir(&nets).unwrap().next().is_none());

    // A network its owner made there is not opened either: the owner could swap it.
    std::os::unix::fs::chown(&nets, Some(0), Some(0)).unwrap();
    drop(Network::create(&nets, "lab", small_geometry(4)).unwrap());
    std::os::unix::fs::chown(&nets, Some(4242), Some(4242)).unwrap();
    let output = guestnet(&nets, &["status", "lab"]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("uid 4242"), "{err}");
}

#[test]
fn a_group_writable_directory_without_the_sticky_bit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nets = dir.path().join("nets");
    std::fs::create_dir(&nets).unwrap();
    set_mode(&nets, 0o775);
    let output = guestnet(&nets, &["create", "lab", "--max-peers", "4"]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    for expected in ["0775", "sticky", "--dir", "GUESTNET_DIR"] {
        assert!(err.contains(expected), "no {expected:?} in: {err}");
    }
    assert!(std::fs::read_dir(&nets).unwrap().next().is_none());

    // Sticky, like /dev/shm itself: others may add files but not replace ours.
    set_mode(&nets, 0o1777);
    ok(&nets, &["create", "lab", "--max-peers", "4"]);
}

#[test]
fn a_symbolic_link_in_place_of_a_region_file_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    drop(Network::create(dir.path(), "real", small_geometry(4)).unwrap());
    std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("lab")).unwrap();

    let refused = Network::open(dir.path(), "lab").unwrap_err();
    assert!(refused.to_string().contains("symbolic link"), "{refused}");
    let output = guestnet(dir.path(), &["status", "lab"]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    // Nor is a link taken for a free name.
    let output = guestnet(dir.path(), &["create", "lab"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
}

#[test]
fn a_user_who_may_not_write_to_the_directory_is_told_whose_it_is() {
    if !running_as_root("a_user_who_may_not_write_to_the_directory_is_told_whose_it_is") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    set_mode(dir.path(), 0o755);
    let nets = dir.path().join("nets");
    std::fs::create_dir(&nets).unwrap();
    set_mode(&nets, 0o755);
    let output = Command::new(env!("CARGO_BIN_EXE_guestnet"))
        .arg("--dir")
        .arg(&nets)
        .args(["create", "lab", "--max-peers", "4"])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .expect("run guestnet as nobody");
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    for expected in ["uid 0", "0755", "--dir", "GUESTNET_DIR"] {
        assert!(err.contains(expected), "no {expected:?} in: {err}");
    }
    assert!(err.matches("Permission denied").count() <= 1, "{err}");
}
