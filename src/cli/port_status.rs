//! Status files: how a port process shows its own counters in `guestnet status`.
//!
//! Some ports keep state the shared region has no room for (a VXLAN port's remotes, a
//! vhost-user socket's negotiation and descriptor faults). Such a port writes it as JSON to
//! `.KIND/NAME.PID.json` in the networks' directory — a hidden directory, so `guestnet
//! list` does not take the files for networks — rewrites it while it runs and removes it
//! when it ends. `status` reads the files of live processes only, so a file left by a
//! killed port is ignored.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A port's status file, removed however the command ends.
#[derive(Debug)]
pub struct StatusFile(PathBuf);

impl StatusFile {
    /// The file of this process for `network`, under the `kind` directory (created).
    pub fn create(dir: &Path, kind: &str, network: &str) -> anyhow::Result<StatusFile> {
        let folder = dir.join(format!(".{kind}"));
        std::fs::create_dir_all(&folder).context("create the status directory")?;
        Ok(StatusFile(
            folder.join(format!("{network}.{}.json", std::process::id())),
        ))
    }

    /// Writes the file whole, through a temporary name, so a reader never sees half.
    pub fn write(&self, value: &impl Serialize) -> anyhow::Result<()> {
        let temporary = self.0.with_extension("tmp");
        std::fs::write(&temporary, serde_json::to_vec_pretty(value)?)?;
        std::fs::rename(&temporary, &self.0)?;
        Ok(())
    }
}

impl Drop for StatusFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(self.0.with_extension("tmp"));
    }
}

/// The status files of the live `kind` ports of `network`, read back. Unreadable files
/// are skipped (a port may be rewriting or removing its file just now), and so are files
/// left behind by a port that was killed before it could remove its own.
pub fn read<T: DeserializeOwned>(dir: &Path, kind: &str, network: &str) -> Vec<T> {
    let prefix = format!("{network}.");
    let Ok(entries) = std::fs::read_dir(dir.join(format!(".{kind}"))) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // NAME.PID.json exactly: a network "lab.x" must not show in "lab"'s status.
            name.strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".json"))
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(is_alive)
        })
        .filter_map(|entry| std::fs::read(entry.path()).ok())
        .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
        .collect()
}

/// Whether process `pid` exists (a process of another user counts).
fn is_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_live_ports_of_the_named_network_are_shown() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join(".kind");
        std::fs::create_dir_all(&folder).unwrap();
        let live = std::process::id();
        // A process that has ended: its pid names nobody (until reused, which a freshly
        // reaped pid is not this soon).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        for (name, value) in [
            (format!("lab.{live}.json"), 1),
            (format!("lab.{dead}.json"), 2),
            (format!("lab.x.{live}.json"), 3),
        ] {
            std::fs::write(folder.join(name), value.to_string()).unwrap();
        }
        assert_eq!(read::<u32>(dir.path(), "kind", "lab"), vec![1]);
        assert!(read::<u32>(dir.path(), "kind", "other").is_empty());
    }

    #[test]
    fn the_file_goes_when_the_port_ends() {
        let dir = tempfile::tempdir().unwrap();
        let file = StatusFile::create(dir.path(), "kind", "lab").unwrap();
        file.write(&7u32).unwrap();
        assert_eq!(read::<u32>(dir.path(), "kind", "lab"), vec![7]);
        drop(file);
        assert!(read::<u32>(dir.path(), "kind", "lab").is_empty());
    }
}
