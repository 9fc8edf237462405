//! The region's control path under faults and attackers: a closed pipe, a full file system,
//! a network re-created under a running handle, a scribbled sweep clock, a stopped holder
//! of the control lock, and a directory or region file someone else controls.
//!
//! Tests that need root (mounting a small tmpfs, handing a directory to another user) skip
//! with a printed reason when not run as root, except under `CI=true`, where they fail.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};

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
