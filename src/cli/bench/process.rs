//! The coordinator's process plumbing, shared by every bench mode: the machine and where
//! workers run on it (CPU placement), the private directory and its network, the workers
//! themselves (spoken to by lines, killed and reaped when dropped), and the signal thread
//! that turns Ctrl-C into "kill the workers, then fail".

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};

use crate::cli::child::{Children, Tracked};
use crate::network::{CreateOptions, Network};
use crate::shm::layout::Geometry;

/// Name of the network inside the private directory.
pub(super) const NETWORK: &str = "bench";

/// Which CPU each worker is pinned to.
#[derive(Debug)]
pub(super) struct Placement {
    /// CPUs this command may use; empty when pinning is off or pointless.
    cpus: Vec<usize>,
}

impl Placement {
    pub(super) fn new(pin: bool) -> Placement {
        let allowed = allowed_cpus();
        Placement {
            cpus: if pin && allowed.len() >= 2 {
                allowed
            } else {
                Vec::new()
            },
        }
    }

    pub(super) fn receiver(&self) -> Option<usize> {
        self.cpus.first().copied()
    }

    pub(super) fn sender(&self, id: u16) -> Option<usize> {
        let others = self.cpus.get(1..)?;
        others.get(id as usize % others.len()).copied()
    }

    pub(super) fn describe(&self, senders: u16) -> String {
        let Some(receiver) = self.receiver() else {
            return "not pinned".to_string();
        };
        let mut cpus: Vec<usize> = (0..senders).filter_map(|id| self.sender(id)).collect();
        cpus.sort_unstable();
        cpus.dedup();
        let cpus: Vec<String> = cpus.iter().map(usize::to_string).collect();
        format!(
            "pinned with sched_setaffinity: receiver on CPU {receiver}, senders on CPU {}",
            cpus.join(",")
        )
    }
}

/// The CPUs this command may run on, in order (none if the scheduler will not say).
pub(super) fn allowed_cpus() -> Vec<usize> {
    rustix::thread::sched_getaffinity(None)
        .map(|set| {
            (0..rustix::thread::CpuSet::MAX_CPU)
                .filter(|&cpu| set.is_set(cpu))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `spawn` (which starts a child) with the calling thread confined to `cpus`, then
/// lets the thread run anywhere again. A child inherits the CPUs of the thread that forks
/// it, and so do all the threads it will ever start: the child is confined from its first
/// instruction, with no window in which a thread of it runs elsewhere, and without
/// `taskset`.
pub(super) fn on_cpus<T>(
    cpus: &[usize],
    spawn: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let before = rustix::thread::sched_getaffinity(None).context("read our CPU affinity")?;
    let mut confined = rustix::thread::CpuSet::new();
    for &cpu in cpus {
        confined.set(cpu);
    }
    rustix::thread::sched_setaffinity(None, &confined)
        .with_context(|| format!("confine a child to CPUs {cpus:?}"))?;
    let spawned = spawn();
    let restored = rustix::thread::sched_setaffinity(None, &before);
    let spawned = spawned?;
    restored.context("restore our CPU affinity")?;
    Ok(spawned)
}

/// `N cores (M usable), <model>` from the scheduler and /proc/cpuinfo.
pub(super) fn machine() -> String {
    let cores = std::fs::read_to_string("/proc/cpuinfo")
        .map(|text| {
            let model = text
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, model)| model.trim().to_string());
            let count = text.lines().filter(|l| l.starts_with("processor")).count();
            (count, model)
        })
        .unwrap_or((0, None));
    let usable = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{} cores ({usable} usable), {}",
        cores.0,
        cores.1.unwrap_or_else(|| "unknown CPU".to_string())
    )
}

/// The run's private directory under /dev/shm, removed when dropped.
pub(super) struct Workspace {
    path: PathBuf,
}

impl Workspace {
    pub(super) fn create() -> anyhow::Result<Workspace> {
        let shm = Path::new("/dev/shm");
        let parent = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let path = parent.join(format!(
            "guestnet-bench-{}-{}",
            std::process::id(),
            crate::network::unix_ns()
        ));
        // create_dir (not _all): fails if the name exists, so the directory is ours alone.
        std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Workspace { path })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the bench network here, with `ring_slots` slots per ring.
    pub(super) fn create_network(&self, ring_slots: u32) -> anyhow::Result<Network> {
        let geometry = Geometry {
            ring_slots,
            ..Geometry::default()
        };
        Network::create(
            &self.path,
            NETWORK,
            CreateOptions {
                geometry,
                ..CreateOptions::default()
            },
        )
        .context("create the bench network")
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!(
                "guestnet bench: could not remove {}: {e}",
                self.path.display()
            );
        }
    }
}

/// Turns SIGINT and SIGTERM into "kill the workers, then fail": the signal thread
/// interrupts the run's [`Children`], the coordinator sees its workers die and returns an
/// error, and the guards clean up on the way out.
pub(super) struct Interrupt {
    pub(super) children: Children,
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Interrupt {
    pub(super) fn install() -> anyhow::Result<Interrupt> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
            .context("install signal handlers")?;
        let handle = signals.handle();
        let children = Children::default();
        let thread = std::thread::spawn({
            let children = children.clone();
            move || {
                for _ in signals.forever() {
                    children.interrupt();
                }
            }
        });
        Ok(Interrupt {
            children,
            handle,
            thread: Some(thread),
        })
    }

    /// Fails once a signal came (see [`Children::check`]).
    pub(super) fn check(&self) -> anyhow::Result<()> {
        self.children.check()
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A worker process, killed and reaped when dropped.
pub(super) struct Worker {
    pub(super) name: String,
    process: Tracked,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Worker {
    pub(super) fn spawn(
        mut command: Command,
        name: String,
        children: &Children,
    ) -> anyhow::Result<Worker> {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut process = Tracked::spawn(&mut command, &name, children)?;
        let stdin = process.child().stdin.take();
        let stdout = process.child().stdout.take();
        let (tx, lines) = mpsc::channel();
        // A thread per worker turns its stdout into lines we can wait for with a timeout;
        // it ends when the worker closes its stdout (exits).
        if let Some(stdout) = stdout {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Worker {
            name,
            process,
            stdin,
            lines,
        })
    }

    pub(super) fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{}: no stdin", self.name))?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("{}: write {line:?}", self.name))
    }

    pub(super) fn expect_line(
        &mut self,
        by: Instant,
        interrupt: &Interrupt,
    ) -> anyhow::Result<String> {
        let timeout = by.saturating_duration_since(Instant::now());
        let result = self.lines.recv_timeout(timeout);
        interrupt.check()?;
        match result {
            Ok(line) => Ok(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("{}: no answer within {timeout:?}", self.name)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.process.reap().ok();
                bail!("{}: exited early ({status:?})", self.name)
            }
        }
    }

    /// Waits for the worker to close its stdout and exit, and checks that it succeeded.
    pub(super) fn finish(mut self, by: Instant) -> anyhow::Result<()> {
        self.stdin = None;
        match self
            .lines
            .recv_timeout(by.saturating_duration_since(Instant::now()))
        {
            Ok(line) => bail!("{}: unexpected output {line:?}", self.name),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!("{}: did not exit", self.name),
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        let status = self
            .process
            .reap()
            .with_context(|| format!("{}: wait", self.name))?;
        if !status.success() {
            bail!("{}: {status}", self.name);
        }
        Ok(())
    }
}
