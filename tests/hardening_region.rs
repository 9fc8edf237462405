//! The region's control path under faults and attackers: a closed pipe, a full file system,
//! a network re-created under a running handle, a scribbled sweep clock, a stopped holder
//! of the control lock, and a directory or region file someone else controls.
//!
//! Tests that need root (mounting a small tmpfs, handing a directory to another user) skip
//! with a printed reason when not run as root, except under `CI=true`, where they fail.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use guestnet::network::{CreateOptions, JoinOptions, Network, PortKind};
use guestnet::shm::layout::{Geometry, Layout};

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
