//! Status files: how a port process shows its own counters in `guestnet status`.
//!
//! Some ports keep state the shared region has no room for (a VXLAN port's remotes, a
//! vhost-user socket's negotiation and descriptor faults). Such a port writes it as JSON to
//! `.KIND/NAME.PID.json` in the networks' directory — a hidden directory, so `guestnet
//! list` does not take the files for networks — rewrites it while it runs and removes it
//! when it ends. `status` reads the files of live processes only, so a file left by a
//! killed port is ignored.
//!
//! This module is the one list of those kinds ([`StatusKind`]): it knows each kind's
//! directory, the type its files hold and how `status` prints it ([`PortStatuses`]). The
//! port subcommands write through it and `status` reads through it, so neither needs the
//! other.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::format::human_bytes;
use crate::ports::dhcp::DhcpStatus;
use crate::ports::vhost_user::{SocketStatus, feature};
use crate::ports::vxlan::VxlanStatus;

/// The kinds of port that write a status file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    /// `guestnet vxlan`: one [`VxlanStatus`] per process.
    Vxlan,
    /// `guestnet vhost-user`: a list of [`SocketStatus`], one per socket the process serves.
    VhostUser,
    /// `guestnet dhcp`: one [`DhcpStatus`] per process.
    Dhcp,
}

impl StatusKind {
    /// The name of the kind's hidden directory, without its dot.
    fn directory(self) -> &'static str {
        match self {
            StatusKind::Vxlan => "vxlan",
            StatusKind::VhostUser => "vhost-user",
            StatusKind::Dhcp => "dhcp",
        }
    }
}

/// What the live ports of one network say about themselves, from their status files: the
/// part of `status` (and of `status --json`) that the region cannot show.
#[derive(Debug, Default, Serialize)]
pub struct PortStatuses {
    /// The VXLAN ports' own status, by slot.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vxlan: Vec<VxlanStatus>,
    /// The vhost-user sockets' own status, by process and socket path.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vhost_user: Vec<SocketStatus>,
    /// The DHCP servers' own status, by slot.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dhcp: Vec<DhcpStatus>,
}

impl PortStatuses {
    /// Reads the status files of `network`'s live ports, of every kind.
    pub fn read(dir: &Path, network: &str) -> PortStatuses {
        let mut vxlan: Vec<VxlanStatus> = read(dir, StatusKind::Vxlan, network);
        vxlan.sort_by_key(|status| status.slot);
        let mut vhost_user: Vec<SocketStatus> =
            read::<Vec<SocketStatus>>(dir, StatusKind::VhostUser, network)
                .into_iter()
                .flatten()
                .collect();
        vhost_user.sort_by(|a, b| (a.pid, &a.socket).cmp(&(b.pid, &b.socket)));
        let mut dhcp: Vec<DhcpStatus> = read(dir, StatusKind::Dhcp, network);
        dhcp.sort_by_key(|status| status.slot);
        PortStatuses {
            vxlan,
            vhost_user,
            dhcp,
        }
    }

    /// Prints them as `guestnet status` shows them, below the network's own tables.
    pub fn print(&self) {
        print_vxlan(&self.vxlan);
        print_vhost_user(&self.vhost_user);
        print_dhcp(&self.dhcp);
    }
}

/// A port's status file, removed however the command ends.
#[derive(Debug)]
pub struct StatusFile(PathBuf);

impl StatusFile {
    /// The file of this process for `network`, under the `kind` directory (created).
    pub fn create(dir: &Path, kind: StatusKind, network: &str) -> anyhow::Result<StatusFile> {
        let folder = dir.join(format!(".{}", kind.directory()));
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
fn read<T: DeserializeOwned>(dir: &Path, kind: StatusKind, network: &str) -> Vec<T> {
    let prefix = format!("{network}.");
    let Ok(entries) = std::fs::read_dir(dir.join(format!(".{}", kind.directory()))) else {
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

/// Prints the VXLAN ports' status for `guestnet status`.
fn print_vxlan(statuses: &[VxlanStatus]) {
    for status in statuses {
        let c = &status.counters;
        println!();
        println!(
            "vxlan port slot {}  vni {}  local {}  underlay MTU {}  inner MTU {}{}",
            status.slot,
            status.vni,
            status.local,
            status.underlay_mtu,
            status.inner_mtu,
            match status.group {
                Some(group) => format!("  group {group} (remote 0)"),
                None => String::new(),
            }
        );
        println!(
            "  dropped: unknown remote {}  bad outer headers {}  fragmented {}  too big for the underlay {}",
            c.rx_unknown_remote, c.rx_bad_outer, c.rx_fragmented, c.tx_too_big
        );
        if status.group.is_some() {
            println!("  senders aged out {}", c.remotes_aged);
        }
        if status.vni.is_map() {
            println!(
                "  dropped: VLAN not in the map {}  tagged inner frames {}",
                c.tx_unmapped_vlan, c.rx_tagged_inner
            );
            for segment in &status.segments {
                let s = &segment.counters;
                println!(
                    "  vni {}  vlan {}  rx {} pkts {}  tx {} pkts {}  learned {}",
                    segment.vni,
                    segment.vlan.map_or("-".to_string(), |vid| vid.to_string()),
                    s.rx_packets,
                    human_bytes(s.rx_bytes),
                    s.tx_packets,
                    human_bytes(s.tx_bytes),
                    segment.learned.len()
                );
            }
        }
        for remote in &status.remotes {
            let r = &remote.counters;
            println!(
                "  remote {}  rx {} pkts {}  tx {} pkts {}",
                remote.endpoint,
                r.rx_packets,
                human_bytes(r.rx_bytes),
                r.tx_packets,
                human_bytes(r.tx_bytes)
            );
            println!(
                "    dropped: malformed {}  I flag clear {}  other VNI {}  invalid inner {}  too many sources {}  send errors {}",
                r.rx_malformed,
                r.rx_instance_flag_clear,
                r.rx_foreign_vni,
                r.rx_invalid_inner,
                r.rx_too_many_sources,
                r.tx_errors
            );
            if !remote.learned.is_empty() {
                let macs: Vec<String> = remote.learned.iter().map(ToString::to_string).collect();
                println!("    learned: {}", macs.join(" "));
            }
        }
    }
}

/// Prints the vhost-user sockets for `guestnet status`.
fn print_vhost_user(sockets: &[SocketStatus]) {
    for s in sockets {
        let c = &s.counters;
        println!();
        let slot = s.slot.map_or("-".to_string(), |slot| slot.to_string());
        println!(
            "vhost-user {}  pid {}  slot {slot}  {:?}  queue pairs {}",
            s.socket.display(),
            s.pid,
            s.state,
            s.queue_pairs
        );
        if s.acked_features != 0 {
            println!("  features: {}", feature_names(s.acked_features).join(" "));
        }
        println!(
            "  frames: tx {}  rx {} ({} straight from a guest of this port)   connections {}  messages {}",
            c.tx_frames, c.rx_frames, c.rx_direct, c.connections, c.messages
        );
        println!(
            "  messages refused: malformed {}  unknown {}  rejected {}",
            c.bad_messages, c.unknown_requests, c.rejected_messages
        );
        let refused: Vec<String> = c
            .refused
            .named()
            .into_iter()
            .filter(|&(_, n)| n > 0)
            .map(|(why, n)| format!("{why} {n}"))
            .collect();
        if !refused.is_empty() {
            println!("  rejected by why: {}", refused.join("  "));
        }
        println!(
            "  guest faults: tx bad chain {}  wrong direction {}  bad length {}  bad header {}   rx bad chain {}  wrong direction {}   rx no room {}  lost on disconnect {}  quarantines {}   ring access failures {}",
            c.tx_bad_chains,
            c.tx_wrong_direction,
            c.tx_bad_length,
            c.tx_bad_header,
            c.rx_bad_chains,
            c.rx_wrong_direction,
            c.rx_no_room,
            c.rx_lost_on_disconnect,
            c.quarantines,
            c.ring_access_failures
        );
    }
}

/// Prints the DHCP servers for `guestnet status`: what they serve, their leases, and
/// every counter that is not zero.
fn print_dhcp(servers: &[DhcpStatus]) {
    for s in servers {
        println!();
        println!(
            "dhcp slot {}  pid {}  {} on {}  range {}{}  leases {}",
            s.slot,
            s.pid,
            s.address,
            s.subnet,
            s.range,
            s.domain
                .as_deref()
                .map_or(String::new(), |d| format!("  domain {d}")),
            s.leases
        );
        let counts: Vec<String> = s
            .counters
            .named()
            .into_iter()
            .filter(|&(_, n)| n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        if !counts.is_empty() {
            println!("  {}", counts.join("  "));
        }
    }
}

/// The names of the feature bits set in `features`.
fn feature_names(features: u64) -> Vec<&'static str> {
    [
        (feature::VERSION_1, "VERSION_1"),
        (feature::MRG_RXBUF, "MRG_RXBUF"),
        (feature::EVENT_IDX, "EVENT_IDX"),
        (feature::INDIRECT_DESC, "INDIRECT_DESC"),
        (feature::PROTOCOL_FEATURES, "PROTOCOL_FEATURES"),
        (feature::CSUM, "CSUM"),
        (feature::GUEST_CSUM, "GUEST_CSUM"),
        (feature::HOST_TSO4, "HOST_TSO4"),
        (feature::HOST_TSO6, "HOST_TSO6"),
        (feature::GUEST_TSO4, "GUEST_TSO4"),
        (feature::GUEST_TSO6, "GUEST_TSO6"),
        (feature::MQ, "MQ"),
    ]
    .into_iter()
    .filter(|(bit, _)| features & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_live_ports_of_the_named_network_are_shown() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join(".vxlan");
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
        assert_eq!(read::<u32>(dir.path(), StatusKind::Vxlan, "lab"), vec![1]);
        assert!(read::<u32>(dir.path(), StatusKind::Vxlan, "other").is_empty());
    }

    #[test]
    fn the_file_goes_when_the_port_ends() {
        let dir = tempfile::tempdir().unwrap();
        let file = StatusFile::create(dir.path(), StatusKind::Vxlan, "lab").unwrap();
        file.write(&7u32).unwrap();
        assert_eq!(read::<u32>(dir.path(), StatusKind::Vxlan, "lab"), vec![7]);
        drop(file);
        assert!(read::<u32>(dir.path(), StatusKind::Vxlan, "lab").is_empty());
    }
}
