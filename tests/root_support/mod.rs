//! What the tests that need root share: the prerequisite check that skips outside CI and
//! fails inside it, running `ip`, killing children on drop, and bounded waits.
#![allow(dead_code)] // each test binary uses its own part

pub mod packet;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any single expected event may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// Whether the machine can run `suite` (root, /dev/net/tun and `tools`); under CI (where
/// these tests must never be skipped) a missing prerequisite panics instead.
pub fn prerequisites_met(suite: &str, tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root");
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun");
    }
    for &tool in tools {
        if !on_path(tool) {
            missing.push(tool);
        }
    }
    if missing.is_empty() {
        return true;
    }
    let reason = format!("{suite} need {}", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}, and CI must not skip them");
    }
    eprintln!("skipped: {reason}");
    false
}

/// Whether `tool` is an executable file in a directory of `PATH` (or, if it names a path,
/// at that path). The tool is not run: there is no flag every tool answers harmlessly
/// (`ip` and `ping` refuse `--version`, `tshark -V` starts a live capture, `busybox` takes
/// neither), and whether the test's own use of it works is the test's business.
pub fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &std::path::Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if tool.contains('/') {
        return executable(std::path::Path::new(tool));
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(tool))))
}

/// Runs a command to completion with no input.
pub fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .expect("run a command")
}

/// Turns IPv6 off in `namespace`, before any interface of a test is in it, so that its
/// kernel sends nothing on its own (no router solicitations, no neighbour discovery): the
/// only frames on a network are the ones a test causes.
pub fn ipv6_off(namespace: &str) {
    let output = run(Command::new("ip").args([
        "netns",
        "exec",
        namespace,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
    ]));
    assert!(output.status.success(), "turn IPv6 off in {namespace}");
}

/// The lines a child writes to `stdout`, read all along on a thread of their own (so
/// that the child never blocks on a full pipe), as a channel to wait on with a deadline.
pub fn lines_of(stdout: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    received
}

/// Runs `ip` and fails the test if it fails.
pub fn ip(args: &[&str]) {
    let output = run(Command::new("ip").args(args));
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Gives `device` in `namespace` the address `cidr` (`10.0.0.1/24`), failing the test if
/// `ip` fails.
pub fn add_address(namespace: &str, cidr: &str, device: &str) {
    ip(&["-n", namespace, "addr", "add", cidr, "dev", device]);
}

/// A child process that is killed and reaped when the test lets go of it, however the
/// test ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `condition` until it holds, failing the test after [`DEADLINE`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a child to its end within `limit`, killing it otherwise.
pub fn output_within(mut command: Command, limit: Duration) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(limit) {
        Ok(output) => output.expect("child output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("{command:?} took longer than {limit:?}");
        }
    }
}
