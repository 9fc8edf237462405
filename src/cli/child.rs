//! Child processes the command starts (benchmark workers, port backends, QEMU guests):
//! each is killed and reaped however the command ends, and a signal can stop them all.
//!
//! The children of one run form a [`Children`] group. A signal handler (`bench`'s
//! interrupt thread) calls [`Children::interrupt`], which kills every child of the group
//! at once; whoever waits on one of them then sees it die, calls [`Children::check`] and
//! fails with "interrupted", and the guards on its way out clean up. A caller that
//! handles no signal, such as a test, gives its children a group of their own that
//! nobody interrupts.

use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};

/// The running children of one run, and whether a signal asked the run to stop. Clones
/// share the group.
#[derive(Debug, Clone, Default)]
pub struct Children {
    /// Pids of the children still running. A pid leaves the list before its child is
    /// reaped, so a pid in the list always names our child and never a reused pid.
    pids: Arc<Mutex<Vec<u32>>>,
    interrupted: Arc<AtomicBool>,
}

impl Children {
    /// Marks the run interrupted and kills (SIGKILL) every child of the group.
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        self.kill_all();
    }

    /// Fails once the run was interrupted, killing the children first: a child started
    /// while the signal was being handled was not in the list yet, and is killed here.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.interrupted.load(Ordering::SeqCst) {
            self.kill_all();
            bail!("interrupted");
        }
        Ok(())
    }

    fn kill_all(&self) {
        let pids = self.pids.lock().unwrap_or_else(|p| p.into_inner());
        for &pid in pids.iter() {
            // Only pids still in the list: a child leaves it before it is reaped, so its
            // pid cannot have been reused yet.
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }

    fn add(&self, pid: u32) {
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pid);
    }

    fn remove(&self, pid: u32) {
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|&other| other != pid);
    }
}

/// A child process in a [`Children`] group: killed with the group, and killed (if still
/// running) and reaped when dropped.
#[derive(Debug)]
pub struct Tracked {
    child: Child,
    group: Children,
}

impl Tracked {
    /// Starts `command` (`what` names it in errors) as a child of `group`.
    pub fn spawn(command: &mut Command, what: &str, group: &Children) -> anyhow::Result<Tracked> {
        let child = command.spawn().with_context(|| format!("start {what}"))?;
        group.add(child.id());
        Ok(Tracked {
            child,
            group: group.clone(),
        })
    }

    /// The child, for its pipes and its id.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for it to exit, taking it out of the group first: a pid leaves the group
    /// before it is reaped, so the group never kills a reused pid.
    pub fn reap(&mut self) -> std::io::Result<ExitStatus> {
        self.group.remove(self.child.id());
        self.child.wait()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Kill before leaving the group: the group must never hold a reaped pid.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        self.group.remove(self.child.id());
        let _ = self.child.wait();
    }
}
