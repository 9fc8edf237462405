//! Running programs in network namespaces, for the commands that build a lab of them
//! (`demo`, `bench --netns`).
//!
//! Both commands make namespaces with `ip netns add`, run `ping`, `iperf3` or the built-in
//! TCP stream (`__tcp-send`/`__tcp-recv`) inside them with `ip netns exec`, and must never
//! hang on a child or leave one behind: every child is held by a [`ChildGuard`] that
//! kills and reaps it, every wait has a deadline, and every wait also watches the
//! command's stop [`Doorbell`] (rung on SIGINT/SIGTERM), so Ctrl-C ends it at once and the
//! caller's clean-up guard gets to run.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::ports::socket::Doorbell;
use crate::ports::tap::TapPort;

/// Longest wait for a helper program to say it is listening.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Says exactly what is missing for `command` (named in the message) to build its lab,
/// before anything is made: root, `ip` (iproute2) and /dev/net/tun.
pub fn preflight(command: &str) -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "{command} needs root: it creates network namespaces (`ip netns add`) and TAP \
             devices (/dev/net/tun). Run it as root, e.g. `sudo {command}`."
        );
    }
    if !have("ip", "-V") {
        bail!(
            "{command} needs the `ip` command (package iproute2) to make namespaces and \
             addresses; install it and try again"
        );
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        bail!("{command} needs /dev/net/tun (the tun kernel module: `modprobe tun`)");
    }
    Ok(())
}

/// Serves `ports` together (one process, frames between them straight across) on a
/// thread of their own until `stop` rings; a port that fails is reported on stderr by
/// `who` (the command's name).
pub fn serve_taps(ports: Vec<TapPort>, stop: Arc<Doorbell>, who: &'static str) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for (ifname, result) in TapPort::serve_all(ports, &stop) {
            if let Err(e) = result {
                eprintln!("{who}: TAP port {ifname} failed: {e:#}");
            }
        }
    })
}

/// Runs `ip ARGS`, failing with its error output.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run ip")?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Gives `ifname` in `namespace` the address `address`/24.
pub fn add_address(namespace: &str, ifname: &str, address: &str) -> anyhow::Result<()> {
    ip(&[
        "-n",
        namespace,
        "addr",
        "add",
        &format!("{address}/24"),
        "dev",
        ifname,
    ])
}

/// Whether `program ARG` runs and succeeds (to find out whether a tool is installed).
pub fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether iperf3 is installed.
pub fn have_iperf3() -> bool {
    have("iperf3", "--version")
}

/// `ip netns exec NAMESPACE ARGS…`, with pipes for stdout and stderr.
fn in_namespace(namespace: &str, args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", namespace])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Kills and reaps a child when dropped.
pub struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads a child's output on a thread, so that a full pipe never blocks it.
fn collect(child: &mut Child) -> (mpsc::Receiver<String>, JoinHandle<String>) {
    let (lines_tx, lines_rx) = mpsc::channel();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let handle = std::thread::spawn(move || {
        let mut all = String::new();
        if let Some(stdout) = stdout {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line.clone());
                all.push_str(&line);
                all.push('\n');
            }
        }
        if let Some(mut stderr) = stderr {
            let _ = stderr.read_to_string(&mut all);
        }
        all
    });
    (lines_rx, handle)
}

/// Waits for a child, killing it if `stop` rings or `timeout` passes; returns its output
/// (stdout, then stderr).
pub fn finish(
    stop: &Doorbell,
    mut child: ChildGuard,
    output: JoinHandle<String>,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.0.try_wait().context("wait for a child")? {
            break status;
        }
        if Instant::now() >= deadline {
            bail!("{what} took longer than {timeout:?}");
        }
        // The doorbell is the sleep: a signal ends the wait at once.
        if stop.wait(Duration::from_millis(20)) {
            bail!("interrupted");
        }
    };
    let text = output
        .join()
        .map_err(|_| anyhow::anyhow!("reading the output of {what} panicked"))?;
    if !status.success() {
        bail!("{what} failed ({status}):\n{}", text.trim_end());
    }
    Ok(text)
}

/// Runs a command in a namespace to its end and returns its output.
pub fn run_in(
    stop: &Doorbell,
    namespace: &str,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<String> {
    let mut child = in_namespace(namespace, args)
        .spawn()
        .with_context(|| format!("start {}", args.join(" ")))?;
    let (_, output) = collect(&mut child);
    finish(stop, ChildGuard(child), output, timeout, &args.join(" "))
}

/// Starts a server in a namespace and waits until a line of its output contains `ready`.
pub fn start_server(
    namespace: &str,
    args: &[&str],
    ready: &str,
) -> anyhow::Result<(ChildGuard, JoinHandle<String>)> {
    let mut child = in_namespace(namespace, args)
        .spawn()
        .with_context(|| format!("start {}", args.join(" ")))?;
    let (lines, output) = collect(&mut child);
    let child = ChildGuard(child);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(ready) => return Ok((child, output)),
            Ok(_) => {}
            Err(_) => bail!("{} did not start listening", args.join(" ")),
        }
    }
}

/// One TCP throughput measurement: from namespace `client` to `address:port`, a
/// listening address in namespace `server`.
#[derive(Debug, Clone, Copy)]
pub struct TcpTest<'a> {
    /// Namespace of the sender.
    pub client: &'a str,
    /// Namespace of the receiver.
    pub server: &'a str,
    /// Receiver's address (inside `server`).
    pub address: &'a str,
    /// TCP port.
    pub port: u16,
    /// Length of the test.
    pub seconds: u64,
}

/// Runs an iperf3 test; returns what the receiver received, in Gbit/s.
pub fn iperf3(stop: &Doorbell, test: TcpTest<'_>) -> anyhow::Result<f64> {
    let port = test.port.to_string();
    let (server, server_output) = start_server(
        test.server,
        &[
            "iperf3",
            "-s",
            "-1",
            "--forceflush",
            "-B",
            test.address,
            "-p",
            &port,
        ],
        "listening",
    )?;
    let seconds_text = test.seconds.to_string();
    let report = run_in(
        stop,
        test.client,
        &[
            "iperf3",
            "-c",
            test.address,
            "-p",
            &port,
            "-t",
            &seconds_text,
            "-J",
        ],
        Duration::from_secs(test.seconds + 15),
    )?;
    finish(
        stop,
        server,
        server_output,
        Duration::from_secs(5),
        "iperf3 server",
    )?;
    let report: serde_json::Value =
        serde_json::from_str(&report).context("read iperf3's JSON report")?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bits| bits / 1e9)
        .context("iperf3's report has no received throughput")
}

/// Runs the built-in stream (`__tcp-send` → `__tcp-recv`) and checks that what arrived is
/// what was sent; returns the receiver's report.
pub fn builtin_stream(stop: &Doorbell, test: TcpTest<'_>) -> anyhow::Result<StreamReport> {
    let exe = std::env::current_exe().context("find the guestnet executable")?;
    let exe = exe.to_string_lossy().into_owned();
    let listen = format!("{}:{}", test.address, test.port);
    let seconds_text = test.seconds.to_string();
    let (server, server_output) = start_server(
        test.server,
        &[&exe, "__tcp-recv", "--listen", &listen],
        "listening",
    )?;
    let sent = run_in(
        stop,
        test.client,
        &[
            &exe,
            "__tcp-send",
            "--connect",
            &listen,
            "--seconds",
            &seconds_text,
        ],
        Duration::from_secs(test.seconds + 15),
    )?;
    let received = finish(
        stop,
        server,
        server_output,
        Duration::from_secs(10),
        "TCP receiver",
    )?;
    let sent = StreamReport::parse(&sent).context("read the sender's report")?;
    let received = StreamReport::parse(&received).context("read the receiver's report")?;
    if sent.bytes != received.bytes || sent.crc != received.crc {
        bail!(
            "the stream arrived damaged: sent {} bytes (crc32 {:08x}), received {} (crc32 {:08x})",
            sent.bytes,
            sent.crc,
            received.bytes,
            received.crc
        );
    }
    Ok(received)
}

/// What one end of the built-in stream moved, as its report line says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamReport {
    /// Bytes moved.
    pub bytes: u64,
    /// CRC-32 of them.
    pub crc: u32,
    /// How long it took.
    pub seconds: f64,
}

impl StreamReport {
    /// The report line: `VERB N bytes crc32 X in S s (G Gbit/s)`.
    pub fn line(&self, verb: &str) -> String {
        format!(
            "{verb} {} bytes crc32 {:08x} in {:.3} s ({:.2} Gbit/s)",
            self.bytes,
            self.crc,
            self.seconds,
            self.gbits()
        )
    }

    /// Throughput in Gbit/s.
    pub fn gbits(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 * 8.0 / self.seconds / 1e9
        } else {
            0.0
        }
    }

    /// Reads the report line printed by `__tcp-send` or `__tcp-recv`.
    pub fn parse(output: &str) -> Option<StreamReport> {
        let line = output
            .lines()
            .find(|line| line.starts_with("sent ") || line.starts_with("received "))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        Some(StreamReport {
            bytes: words.get(1)?.parse().ok()?,
            crc: u32::from_str_radix(words.get(4)?, 16).ok()?,
            seconds: words.get(6)?.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_back_what_they_print() {
        let report = StreamReport {
            bytes: 67_108_864,
            crc: 0x0badf00d,
            seconds: 0.5,
        };
        assert_eq!(StreamReport::parse(&report.line("sent")), Some(report));
        assert!((report.gbits() - 1.073741824).abs() < 1e-6);
    }
}
