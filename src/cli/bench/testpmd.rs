//! DPDK's `dpdk-testpmd` as `bench --vhost-user` drives it: an instance started on chosen
//! CPUs, commands typed at its prompt and their answers read back, its port statistics
//! parsed, and the huge pages DPDK wants.
//!
//! testpmd runs interactively (`-i`), its standard input a pipe of ours. Without a
//! terminal the other ways to run it are worse: it exits at once, or with `--stats-period`
//! it prints statistics on its own schedule and forwards until killed. At the prompt every
//! step (start, stop, switch to receive-only to drain, read the counters) happens when the
//! benchmark says, and an answer is complete when the next prompt comes. testpmd prints
//! with C's stdio, which buffers a pipe in 4 KiB blocks, while the prompt is written
//! straight to the descriptor; `stdbuf -oL` makes the output line-buffered, so an answer
//! arrives whole before the prompt that ends it.
//!
//! Every instance runs `--in-memory`: its memory (huge pages, or a memfd with `--no-huge`)
//! belongs to the process alone and goes with it, so a killed testpmd leaves nothing in
//! hugetlbfs or `/var/run/dpdk`, and no hugetlbfs needs to be mounted. A vhost-user peer
//! still maps that memory, through the descriptors that travel over the socket;
//! `--single-file-segments` keeps them to one.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use super::process::on_cpus;
use crate::cli::child::{Children, Tracked};

/// The program.
pub(super) const TESTPMD: &str = "dpdk-testpmd";
/// What testpmd prints when it waits for a command.
const PROMPT: &str = "testpmd> ";
/// Memory each instance takes (`-m`, in MiB): its mbuf pool (`MBUFS` of about 2.2 KiB), its
/// rings and its virtqueues, with room to spare.
pub(super) const INSTANCE_MEMORY_MIB: u64 = 128;
/// Packet buffers per instance: a virtqueue of 1024 posted buffers per port, bursts in
/// flight, and the per-core caches.
const MBUFS: u32 = 8192;
/// How long an instance may take to start (DPDK loads every driver it has) and to quit.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a command may take to answer. The main thread that answers shares its CPU
/// with a busy-polling forwarding thread, so it waits for the scheduler's turn.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of testpmd's output and log kept for error messages.
const TAIL_LINES: usize = 40;
/// The kernel's 2 MiB huge pages.
const HUGE_PAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";
const HUGE_PAGE_MIB: u64 = 2;

/// What to install when DPDK is missing.
pub(super) const HOW_TO_GET_DPDK: &str = "on Debian 12: `apt-get install \
     --no-install-recommends dpdk dpdk-dev librte-net-vhost23 librte-net-virtio23 \
     librte-mempool-ring23` (testpmd is in dpdk-dev there, and `dpdk` alone brings none of \
     the drivers); elsewhere DPDK's own packages or a build of DPDK \
     (https://doc.dpdk.org/guides/linux_gsg/)";

/// Fails, saying how to get them, unless testpmd and `stdbuf` are installed.
pub(super) fn preflight(command: &str) -> anyhow::Result<PathBuf> {
    let Some(testpmd) = find_program(TESTPMD) else {
        bail!(
            "{command} needs DPDK's {TESTPMD} with its vhost and virtio-user drivers: \
             {HOW_TO_GET_DPDK}"
        );
    };
    if find_program("stdbuf").is_none() {
        bail!("{command} needs `stdbuf` (package coreutils) to read {TESTPMD}'s answers");
    }
    Ok(testpmd)
}

/// `program` on `$PATH`. Not found by running it: testpmd without arguments would set up
/// DPDK and leave its run directory behind.
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where DPDK's memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Memory {
    /// 2 MiB huge pages, as DPDK is meant to run.
    HugePages,
    /// Ordinary pages (`--no-huge`): slower, for machines where huge pages cannot be had.
    NoHugePages,
}

/// The huge pages of the run: those this command reserved are given back when dropped.
pub(super) struct HugePages {
    memory: Memory,
    /// The machine's count before we raised it.
    restore: Option<u64>,
}

impl HugePages {
    /// Makes sure `instances` testpmd instances find their memory in free 2 MiB huge pages,
    /// reserving more when there are too few (and saying so); falls back to ordinary memory
    /// (saying so too) when the kernel will not give them.
    pub(super) fn reserve(instances: u64) -> HugePages {
        let needed = instances * INSTANCE_MEMORY_MIB / HUGE_PAGE_MIB;
        let read = |name: &str| -> Option<u64> {
            std::fs::read_to_string(format!("{HUGE_PAGES}/{name}"))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let without = |why: &str| {
            progress(&format!(
                "{why}: DPDK runs on ordinary memory (--no-huge), which costs the frontends \
                 and the anchor some speed"
            ));
            HugePages {
                memory: Memory::NoHugePages,
                restore: None,
            }
        };
        let (Some(total), Some(free)) = (read("nr_hugepages"), read("free_hugepages")) else {
            return without("this kernel has no 2 MiB huge pages");
        };
        if free >= needed {
            return HugePages {
                memory: Memory::HugePages,
                restore: None,
            };
        }
        let wanted = total + (needed - free);
        let written = std::fs::write(format!("{HUGE_PAGES}/nr_hugepages"), wanted.to_string());
        let reserved = read("nr_hugepages").unwrap_or(total);
        if written.is_ok() && read("free_hugepages").unwrap_or(0) >= needed {
            progress(&format!(
                "reserved {} more 2 MiB huge pages for DPDK ({total} → {reserved}); they are \
                 given back at the end",
                reserved - total
            ));
            return HugePages {
                memory: Memory::HugePages,
                restore: Some(total),
            };
        }
        if reserved != total {
            // The kernel found only some: give them back.
            let _ = std::fs::write(format!("{HUGE_PAGES}/nr_hugepages"), total.to_string());
        }
        let why = match written {
            Err(e) => format!("cannot reserve 2 MiB huge pages ({HUGE_PAGES}/nr_hugepages: {e})"),
            Ok(()) => format!("the kernel found only {reserved} of {wanted} 2 MiB huge pages"),
        };
        without(&why)
    }

    pub(super) fn memory(&self) -> Memory {
        self.memory
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if let Some(total) = self.restore {
            match std::fs::write(format!("{HUGE_PAGES}/nr_hugepages"), total.to_string()) {
                Ok(()) => progress(&format!("gave the huge pages back ({total} reserved now)")),
                Err(e) => eprintln!(
                    "guestnet bench: warning: cannot give the huge pages back \
                     ({HUGE_PAGES}/nr_hugepages, {total}): {e}"
                ),
            }
        }
    }
}

fn progress(what: &str) {
    eprintln!("guestnet bench: {what}");
}

/// One testpmd to start.
pub(super) struct Instance {
    /// What it is, in messages ("anchor", "frontends").
    pub(super) name: &'static str,
    /// Its CPUs: the first runs testpmd's main thread (which sleeps at the prompt) and the
    /// first forwarding thread, each other one another forwarding thread.
    pub(super) cpus: Vec<usize>,
    /// Its ports, as `--vdev` arguments.
    pub(super) devices: Vec<String>,
    /// testpmd's own options (after `--`).
    pub(super) options: Vec<String>,
}

impl Instance {
    /// DPDK's name for the instance: even `--in-memory`, it makes a run directory of that
    /// name (empty), which is removed when the instance ends.
    fn file_prefix(&self) -> String {
        format!(
            "guestnet-bench-{}-{}",
            std::process::id(),
            self.name.replace(' ', "-")
        )
    }

    /// The run directory DPDK makes: under /var/run/dpdk for root, else under
    /// `$XDG_RUNTIME_DIR/dpdk` or /tmp/dpdk.
    fn run_directory(&self) -> PathBuf {
        let base = if rustix::process::geteuid().is_root() {
            PathBuf::from("/var/run")
        } else {
            std::env::var_os("XDG_RUNTIME_DIR").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
        };
        base.join("dpdk").join(self.file_prefix())
    }

    fn command(&self, testpmd: &Path, memory: Memory) -> Command {
        let mut command = Command::new("stdbuf");
        command.arg("-oL").arg(testpmd);
        // Lcore 0 is the main thread, lcores 1.. forward; `L@C` runs lcore L on CPU C.
        let first = self.cpus.first().copied().unwrap_or(0);
        let lcores: Vec<String> = std::iter::once(format!("0@{first}"))
            .chain(
                self.cpus
                    .iter()
                    .enumerate()
                    .map(|(i, cpu)| format!("{}@{cpu}", i + 1)),
            )
            .collect();
        command
            .arg("--lcores")
            .arg(lcores.join(","))
            .arg("--file-prefix")
            .arg(self.file_prefix())
            .args(["--no-pci", "--in-memory", "--single-file-segments", "-m"])
            .arg(INSTANCE_MEMORY_MIB.to_string());
        if memory == Memory::NoHugePages {
            command.arg("--no-huge");
        }
        for device in &self.devices {
            command.arg("--vdev").arg(device);
        }
        command
            .arg("--")
            .arg("-i")
            // A start takes frames already waiting as received, not as flushed.
            .arg("--no-flush-rx")
            .arg(format!("--total-num-mbufs={MBUFS}"))
            .arg(format!("--nb-cores={}", self.cpus.len().max(1)))
            .args(&self.options);
        command
    }
}

/// Counters of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct PortStats {
    /// Frames the port received.
    pub(super) rx_packets: u64,
    /// Frames the port sent.
    pub(super) tx_packets: u64,
    /// Frames the forwarding engine meant to send through the port but the port would not
    /// take, and which were freed: for DPDK's vhost PMD, the guest's receive queue was
    /// full. (`show fwd stats all`'s `TX-dropped`; the vhost PMD's own `TX-errors` stay
    /// zero in DPDK 22.11.)
    pub(super) tx_dropped: u64,
}

/// Reads per-port blocks of testpmd's statistics, `show port stats all`'s
///
/// ```text
///   ######################## NIC statistics for port 0  ########################
///   RX-packets: 947645     RX-missed: 0          RX-bytes:  60649280
///   RX-errors: 0
///   RX-nombuf:  0
///   TX-packets: 947677     TX-errors: 0          TX-bytes:  60651328
/// ```
///
/// or `show fwd stats all`'s (`Forward statistics for port 0`, `TX-dropped: 3`), one per
/// port in port order; the `KEY: value` pairs of each, by key. Blocks of other titles (the
/// ports' sum) end a port's block and are skipped.
fn parse_port_blocks(text: &str, title: &str) -> anyhow::Result<Vec<BTreeMap<String, u64>>> {
    let mut ports: Vec<BTreeMap<String, u64>> = Vec::new();
    let mut in_port = false;
    for line in text.lines() {
        if let Some(rest) = line.split(title).nth(1) {
            let number = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            if number != Some(ports.len()) {
                bail!("testpmd's port statistics are out of order at {line:?}");
            }
            ports.push(BTreeMap::new());
            in_port = true;
            continue;
        }
        if line.contains("statistics") {
            in_port = false;
        }
        let Some(port) = ports.last_mut().filter(|_| in_port) else {
            continue;
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            if let (Some(key), Ok(value)) = (pair[0].strip_suffix(':'), pair[1].parse::<u64>()) {
                port.insert(key.to_string(), value);
            }
        }
    }
    if ports.is_empty() {
        bail!("testpmd printed no port statistics: {text:?}");
    }
    Ok(ports)
}

/// Reads `show port xstats all`'s per-queue frame counts: for each port, `queues` pairs.
fn parse_queue_stats(text: &str, queues: u16) -> anyhow::Result<Vec<Vec<PortStats>>> {
    let ports = parse_port_blocks(text, "NIC extended statistics for port")?;
    Ok(ports
        .iter()
        .map(|port| {
            let count = |name: String| port.get(&name).copied().unwrap_or(0);
            (0..queues)
                .map(|q| PortStats {
                    rx_packets: count(format!("rx_q{q}_good_packets")),
                    tx_packets: count(format!("tx_q{q}_good_packets")),
                    tx_dropped: 0,
                })
                .collect()
        })
        .collect())
}

/// A running testpmd at its prompt; killed and reaped when dropped.
pub(super) struct Testpmd {
    name: &'static str,
    process: Tracked,
    stdin: Option<ChildStdin>,
    /// Its standard output, in pieces as they come: prompts end no line.
    output: mpsc::Receiver<String>,
    /// Output not answered yet.
    unread: String,
    /// The last lines of its output, for errors.
    seen: VecDeque<String>,
    /// The last lines of its standard error (DPDK's log), for errors.
    log: Arc<Mutex<VecDeque<String>>>,
    children: Children,
    /// DPDK's run directory of this instance, removed once the instance is gone.
    run_directory: PathBuf,
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        // Killed (if still running) and reaped first, so nothing recreates the directory.
        let _ = self.process.child().kill();
        let _ = self.process.reap();
        let _ = std::fs::remove_dir_all(&self.run_directory);
        // DPDK's directory of run directories, if that left it empty (DPDK makes it again
        // when it needs it).
        if let Some(parent) = self.run_directory.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

impl Testpmd {
    /// Starts `instance` on its CPUs as a child of `children`, and waits for its prompt.
    pub(super) fn start(
        testpmd: &Path,
        instance: &Instance,
        memory: Memory,
        children: &Children,
    ) -> anyhow::Result<Testpmd> {
        let mut command = instance.command(testpmd, memory);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("{TESTPMD} ({})", instance.name);
        let mut process = on_cpus(&instance.cpus, || {
            Tracked::spawn(&mut command, &what, children)
        })?;
        let (sender, output) = mpsc::channel();
        if let Some(mut stdout) = process.child().stdout.take() {
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(n @ 1..) = stdout.read(&mut buffer) {
                    let piece = String::from_utf8_lossy(&buffer[..n]).into_owned();
                    if sender.send(piece).is_err() {
                        break;
                    }
                }
            });
        }
        let log = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(stderr) = process.child().stderr.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    if log.len() == TAIL_LINES {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
            });
        }
        let mut testpmd = Testpmd {
            name: instance.name,
            stdin: process.child().stdin.take(),
            process,
            output,
            unread: String::new(),
            seen: VecDeque::new(),
            log,
            children: children.clone(),
            run_directory: instance.run_directory(),
        };
        testpmd
            .answer(Instant::now() + START_TIMEOUT)
            .with_context(|| {
                format!(
                    "{TESTPMD} ({}) did not start; are DPDK's vhost and virtio-user drivers \
                     installed? ({HOW_TO_GET_DPDK})",
                    instance.name
                )
            })?;
        Ok(testpmd)
    }

    /// The process id.
    pub(super) fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Types `line` and returns what testpmd printed before its next prompt.
    pub(super) fn command(&mut self, line: &str) -> anyhow::Result<String> {
        let stdin = self.stdin.as_mut().context("testpmd's input is closed")?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .with_context(|| format!("{TESTPMD} ({}): type {line:?}", self.name))?;
        self.answer(Instant::now() + COMMAND_TIMEOUT)
            .with_context(|| format!("{TESTPMD} ({}): {line:?}", self.name))
    }

    /// Frames received and sent by every port (not what it dropped).
    pub(super) fn port_stats(&mut self) -> anyhow::Result<Vec<PortStats>> {
        let answer = self.command("show port stats all")?;
        let ports = parse_port_blocks(&answer, "NIC statistics for port")
            .with_context(|| format!("{TESTPMD} ({})", self.name))?;
        Ok(ports
            .iter()
            .map(|port| PortStats {
                rx_packets: port.get("RX-packets").copied().unwrap_or(0),
                tx_packets: port.get("TX-packets").copied().unwrap_or(0),
                tx_dropped: 0,
            })
            .collect())
    }

    /// Every port's frames by queue pair, `queues` pairs each (`show port xstats all`'s
    /// `rx_qN_good_packets` and `tx_qN_good_packets`, which DPDK's virtio PMD keeps).
    pub(super) fn queue_stats(&mut self, queues: u16) -> anyhow::Result<Vec<Vec<PortStats>>> {
        let answer = self.command("show port xstats all")?;
        parse_queue_stats(&answer, queues).with_context(|| format!("{TESTPMD} ({})", self.name))
    }

    /// Every port's counters, with what the forwarding engine dropped on its way out of
    /// each (counted since forwarding started).
    pub(super) fn port_stats_with_drops(&mut self) -> anyhow::Result<Vec<PortStats>> {
        let mut ports = self.port_stats()?;
        let answer = self.command("show fwd stats all")?;
        let forwarded = parse_port_blocks(&answer, "Forward statistics for port")
            .with_context(|| format!("{TESTPMD} ({})", self.name))?;
        for (port, forwarded) in ports.iter_mut().zip(&forwarded) {
            port.tx_dropped = forwarded.get("TX-dropped").copied().unwrap_or(0);
        }
        Ok(ports)
    }

    /// Whether each port's link is up (for a vhost port: its frontend is connected and
    /// ready), in port order.
    pub(super) fn links_up(&mut self) -> anyhow::Result<Vec<bool>> {
        let answer = self.command("show port info all")?;
        Ok(answer
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Link status:"))
            .map(|status| status.trim() == "up")
            .collect())
    }

    /// Lets `length` pass while testpmd works, failing at once if it exits or the run is
    /// interrupted.
    pub(super) fn pause(&mut self, length: Duration) -> anyhow::Result<()> {
        let by = Instant::now() + length;
        loop {
            let result = self
                .output
                .recv_timeout(by.saturating_duration_since(Instant::now()));
            self.children.check()?;
            match result {
                Ok(piece) => self.unread.push_str(&piece),
                Err(mpsc::RecvTimeoutError::Timeout) => return Ok(()),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(self.exited()),
            }
        }
    }

    /// Asks testpmd to quit (it stops its ports, which disconnects their vhost-user
    /// sockets) and waits until it has.
    pub(super) fn quit(mut self) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("testpmd's input is closed")?;
        // Writing may fail if it already went; the wait below says how it ended.
        let _ = stdin.write_all(b"quit\n").and_then(|()| stdin.flush());
        self.stdin = None;
        let by = Instant::now() + START_TIMEOUT;
        loop {
            match self
                .output
                .recv_timeout(by.saturating_duration_since(Instant::now()))
            {
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("{TESTPMD} ({}) did not quit in time", self.name)
                }
            }
        }
        let status = self
            .process
            .reap()
            .with_context(|| format!("wait for {TESTPMD} ({})", self.name))?;
        self.children.check()?;
        if !status.success() {
            bail!(
                "{TESTPMD} ({}) ended with {status}; {}",
                self.name,
                self.tails()
            );
        }
        Ok(())
    }

    /// Reads until the next prompt and returns what came before it.
    fn answer(&mut self, by: Instant) -> anyhow::Result<String> {
        loop {
            if let Some(end) = self.unread.find(PROMPT) {
                let answer: String = self.unread.drain(..end + PROMPT.len()).collect();
                let answer = answer[..end].to_string();
                self.remember(&answer);
                return Ok(answer);
            }
            let result = self
                .output
                .recv_timeout(by.saturating_duration_since(Instant::now()));
            self.children.check()?;
            match result {
                Ok(piece) => self.unread.push_str(&piece),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("no prompt in time; {}", self.tails())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(self.exited()),
            }
        }
    }

    fn remember(&mut self, text: &str) {
        for line in text.lines() {
            if self.seen.len() == TAIL_LINES {
                self.seen.pop_front();
            }
            self.seen.push_back(line.to_string());
        }
    }

    /// The error for a testpmd that exited under us.
    fn exited(&mut self) -> anyhow::Error {
        let unread = std::mem::take(&mut self.unread);
        self.remember(&unread);
        let status = self.process.reap().ok();
        anyhow::anyhow!(
            "{TESTPMD} ({}) exited ({}); {}",
            self.name,
            status.map_or_else(|| "status unknown".to_string(), |s| s.to_string()),
            self.tails()
        )
    }

    /// Its last output and log lines.
    fn tails(&self) -> String {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let join = |lines: &VecDeque<String>| {
            if lines.is_empty() {
                "(nothing)".to_string()
            } else {
                lines.iter().cloned().collect::<Vec<_>>().join("\n")
            }
        };
        format!(
            "its output:\n{}\nits log:\n{}",
            join(&self.seen),
            join(&log)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_statistics_are_read_per_port_in_order() {
        let text = "show port stats all\r
\n  ######################## NIC statistics for port 0  ########################
  RX-packets: 947645     RX-missed: 0          RX-bytes:  60649280
  RX-errors: 0
  RX-nombuf:  0         
  TX-packets: 947677     TX-errors: 3          TX-bytes:  60651328

  Throughput (since last show)
  Rx-pps:            0          Rx-bps:            0
  ############################################################################

  ######################## NIC statistics for port 1  ########################
  RX-packets: 12   RX-missed: 0          RX-bytes:  768
  TX-packets: 0   TX-errors: 0          TX-bytes:  0
  ############################################################################
";
        let ports = parse_port_blocks(text, "NIC statistics for port").expect("parses");
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0]["RX-packets"], 947645);
        assert_eq!(ports[0]["TX-packets"], 947677);
        assert_eq!(ports[0]["TX-errors"], 3);
        assert_eq!(ports[0]["RX-nombuf"], 0);
        assert_eq!((ports[1]["RX-packets"], ports[1]["TX-packets"]), (12, 0));
    }

    #[test]
    fn forward_statistics_skip_the_sum_of_all_ports() {
        let text = "
  ---------------------- Forward statistics for port 0  ----------------------
  RX-packets: 20733376       RX-dropped: 0             RX-total: 20733376
  TX-packets: 20733408       TX-dropped: 5             TX-total: 20733413
  ----------------------------------------------------------------------------

  ---------------------- Forward statistics for port 1  ----------------------
  RX-packets: 20733408       RX-dropped: 0             RX-total: 20733408
  TX-packets: 20733440       TX-dropped: 0             TX-total: 20733440
  ----------------------------------------------------------------------------

  +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++
  RX-packets: 41466784       RX-dropped: 0             RX-total: 41466784
  TX-packets: 41466848       TX-dropped: 7             TX-total: 41466848
  ++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++
";
        let ports = parse_port_blocks(text, "Forward statistics for port").expect("parses");
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0]["TX-dropped"], 5);
        assert_eq!(ports[1]["TX-dropped"], 0, "not the sum's 7");
        assert_eq!(ports[1]["TX-packets"], 20733440);
    }

    #[test]
    fn forward_statistics_skip_the_streams_of_several_queues() {
        let text = "
  ------- Forward Stats for RX Port= 0/Queue= 0 -> TX Port= 1/Queue= 0 -------
  RX-packets: 10             TX-packets: 10             TX-dropped: 1

  ------- Forward Stats for RX Port= 0/Queue= 1 -> TX Port= 1/Queue= 1 -------
  RX-packets: 20             TX-packets: 20             TX-dropped: 2

  ---------------------- Forward statistics for port 0  ----------------------
  RX-packets: 30             RX-dropped: 0             RX-total: 30
  TX-packets: 40             TX-dropped: 4             TX-total: 44
  ----------------------------------------------------------------------------
";
        let ports = parse_port_blocks(text, "Forward statistics for port").expect("parses");
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0]["TX-dropped"], 4, "the port's, not a stream's");
    }

    #[test]
    fn extended_statistics_give_each_queue_pair_its_frames() {
        let text = "###### NIC extended statistics for port 0 
rx_good_packets: 30
tx_good_packets: 33
rx_q0_good_packets: 10
rx_q0_good_bytes: 640
rx_q1_good_packets: 20
tx_q0_good_packets: 11
tx_q1_good_packets: 22
###### NIC extended statistics for port 1 
rx_good_packets: 5
rx_q0_good_packets: 5
tx_q0_good_packets: 0
";
        let ports = parse_queue_stats(text, 2).expect("parses");
        assert_eq!(ports.len(), 2);
        let pair = |port: &Vec<PortStats>, q: usize| (port[q].rx_packets, port[q].tx_packets);
        assert_eq!(
            (pair(&ports[0], 0), pair(&ports[0], 1)),
            ((10, 11), (20, 22))
        );
        assert_eq!(pair(&ports[1], 0), (5, 0));
        assert_eq!(pair(&ports[1], 1), (0, 0), "a queue testpmd does not show");
    }

    #[test]
    fn statistics_without_ports_or_out_of_order_are_refused() {
        assert!(parse_port_blocks("Invalid port 0\n", "NIC statistics for port").is_err());
        let skipped = "  #### NIC statistics for port 1  ####\n  RX-packets: 1\n";
        assert!(parse_port_blocks(skipped, "NIC statistics for port").is_err());
    }

    #[test]
    fn an_instance_runs_lcore_zero_and_its_first_forwarder_on_its_first_cpu() {
        let instance = Instance {
            name: "frontends",
            cpus: vec![1, 3],
            devices: vec!["net_virtio_user0,path=/a.sock".to_string()],
            options: vec!["--forward-mode=macswap".to_string()],
        };
        let command = instance.command(Path::new("/usr/bin/dpdk-testpmd"), Memory::NoHugePages);
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let at = |flag: &str| args.iter().position(|a| a == flag).expect(flag);
        assert_eq!(args[at("--lcores") + 1], "0@1,1@1,2@3");
        assert_eq!(args[at("--vdev") + 1], "net_virtio_user0,path=/a.sock");
        assert!(at("--no-huge") < at("--"), "an EAL option: {args:?}");
        assert!(args.contains(&"--nb-cores=2".to_string()), "{args:?}");
        assert_eq!(
            args.last().map(String::as_str),
            Some("--forward-mode=macswap")
        );
    }
}
