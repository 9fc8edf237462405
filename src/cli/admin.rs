//! `create`, `destroy`, `list` and `status`: the commands that manage networks and show
//! what is going on inside them.
//!
//! `status` is also the operator's integrity check: it runs [`check::check`] over the
//! region and exits non-zero when it finds damage, so scripts and monitoring notice a
//! scribbler without reading the table.

use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use super::format::{Align, Table, human_bytes, human_count};
use super::port_status::PortStatuses;
use crate::network::check::{self, Damage};
use crate::network::{CreateOptions, DestroyOptions, Network, NetworkStatus, PeerStatus};
use crate::shm::layout::{Geometry, Layout};

/// What a network does with unicast frames to addresses nobody owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UnknownUnicast {
    /// Send them to every other peer, as a learning bridge does.
    Flood,
    /// Drop them (and count them as `no_route`), as lguest did.
    Drop,
}

/// Arguments of `create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Network name (letters, digits, '-', '_', '.').
    pub name: String,
    /// Peer slots.
    #[arg(long, default_value_t = Geometry::default().max_peers)]
    pub max_peers: u32,
    /// Slots in each peer's receive ring (a power of two).
    #[arg(long, default_value_t = Geometry::default().ring_slots)]
    pub ring_slots: u32,
    /// Largest Ethernet payload.
    #[arg(long, default_value_t = Geometry::default().mtu)]
    pub mtu: u32,
    /// Buffers of 64 KiB per ring for segmentation-offload frames (0: no offload; they
    /// take memory only when used).
    #[arg(long, default_value_t = Geometry::default().gso_buffers)]
    pub gso_buffers: u32,
    /// What to do with unicast frames to unknown addresses.
    #[arg(long, value_enum, default_value_t = UnknownUnicast::Flood)]
    pub unknown_unicast: UnknownUnicast,
    /// File mode of the region, in octal: who may join.
    #[arg(long, value_parser = parse_mode, default_value = "0600")]
    pub mode: u32,
}

fn parse_mode(text: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(text, 8).map_err(|e| format!("not an octal mode: {e}"))?;
    if mode > 0o777 {
        return Err(format!("mode {text} has bits beyond 0777"));
    }
    Ok(mode)
}

/// Arguments of `destroy`.
#[derive(Debug, clap::Args)]
pub struct DestroyArgs {
    /// Network name.
    pub name: String,
    /// Remove it even while peers are on it (they keep running on the removed file until
    /// they leave; whoever joins by name afterwards no longer finds them).
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Network name.
    pub name: String,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// What `create` makes of its arguments, checked (`up` checks a file's networks with it).
pub fn create_options(args: &CreateArgs) -> anyhow::Result<CreateOptions> {
    let geometry = Geometry {
        max_peers: args.max_peers,
        ring_slots: args.ring_slots,
        mtu: args.mtu,
        gso_buffers: args.gso_buffers,
    };
    // Checked here too, so that the message speaks of the command line rather than of
    // an unusable region.
    Layout::new(geometry)
        .with_context(|| format!("cannot create network {:?}: bad geometry", args.name))?;
    Ok(CreateOptions {
        geometry,
        drop_unknown_unicast: args.unknown_unicast == UnknownUnicast::Drop,
        mode: args.mode,
    })
}

/// Runs `create`.
pub fn create(dir: &Path, args: CreateArgs) -> anyhow::Result<()> {
    let options = create_options(&args)?;
    let network = Network::create(dir, &args.name, options)?;
    let status = network.status();
    println!("created network {}", status.name);
    println!("  path             {}", status.path);
    println!(
        "  geometry         {} peers × {} ring slots, MTU {}",
        status.max_peers, status.ring_slots, status.mtu
    );
    println!("  unknown unicast  {}", status.unknown_unicast);
    println!("  mode             {:04o}", args.mode);
    println!(
        "  size             {} ({} bytes; {} reserved now, offload buffers as peers use them)",
        human_bytes(status.size_bytes),
        status.size_bytes,
        human_bytes(status.resident_bytes)
    );
    Ok(())
}

/// Runs `destroy`.
pub fn destroy(dir: &Path, args: DestroyArgs) -> anyhow::Result<()> {
    let options = DestroyOptions { force: args.force };
    Network::destroy(dir, &args.name, options)?;
    println!("destroyed network {}", args.name);
    Ok(())
}

/// One row of `list`.
#[derive(Debug, Serialize)]
struct ListEntry {
    name: String,
    /// `None` when the region does not open; `error` says why.
    #[serde(skip_serializing_if = "Option::is_none")]
    peers_up: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_peers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Runs `list`.
pub fn list(dir: &Path, args: ListArgs) -> anyhow::Result<()> {
    let entries: Vec<ListEntry> = Network::list(dir)?
        .into_iter()
        .map(|name| match Network::open(dir, &name) {
            Ok(network) => {
                let status = network.status();
                ListEntry {
                    name,
                    peers_up: Some(status.peers.len()),
                    max_peers: Some(status.max_peers),
                    mtu: Some(status.mtu),
                    size_bytes: Some(status.size_bytes),
                    error: None,
                }
            }
            // A damaged region is still listed: hiding it would hide the problem.
            Err(error) => ListEntry {
                name,
                peers_up: None,
                max_peers: None,
                mtu: None,
                size_bytes: None,
                error: Some(error.to_string()),
            },
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("no networks in {}", dir.display());
        return Ok(());
    }
    let mut table = Table::new(&[
        ("NAME", Align::Left),
        ("PEERS", Align::Right),
        ("MTU", Align::Right),
        ("SIZE", Align::Right),
    ]);
    for entry in &entries {
        match &entry.error {
            Some(_) => table.row(vec![entry.name.clone(), "-".into(), "-".into(), "-".into()]),
            None => table.row(vec![
                entry.name.clone(),
                format!(
                    "{}/{}",
                    entry.peers_up.unwrap_or(0),
                    entry.max_peers.unwrap_or(0)
                ),
                entry.mtu.unwrap_or(0).to_string(),
                human_bytes(entry.size_bytes.unwrap_or(0)),
            ]),
        }
    }
    print!("{}", table.render());
    // Said under the table, in full: the reason is too long for a column.
    for error in entries.iter().filter_map(|entry| entry.error.as_ref()) {
        println!("{error}");
    }
    Ok(())
}

/// A damage entry as `status --json` shows it: the structured fields and a sentence.
#[derive(Debug, Serialize)]
struct DamageReport {
    #[serde(flatten)]
    damage: Damage,
    message: String,
}

/// What `status --json` prints.
#[derive(Debug, Serialize)]
struct StatusReport {
    #[serde(flatten)]
    status: NetworkStatus,
    damage: Vec<DamageReport>,
    /// The ports' own status, from the files they write (`vxlan`, `vhost_user`, `dhcp`).
    #[serde(flatten)]
    ports: PortStatuses,
}

/// Runs `status`.
pub fn status(dir: &Path, args: StatusArgs) -> anyhow::Result<()> {
    let network = Network::open(dir, &args.name)?;
    // Checked before `status()`, whose sweep would quietly reclaim a scribbled entry
    // and so hide it.
    let damage = check::check(&network);
    let status = network.status();
    let problems = damage.len();
    if args.json {
        let report = StatusReport {
            status,
            damage: damage
                .into_iter()
                .map(|damage| DamageReport {
                    message: damage.to_string(),
                    damage,
                })
                .collect(),
            ports: PortStatuses::read(dir, &args.name),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_status(&status);
        PortStatuses::read(dir, &args.name).print();
        if !damage.is_empty() {
            println!();
            println!("DAMAGE ({problems})");
            for item in &damage {
                println!("  {item}");
            }
        }
    }
    if problems > 0 {
        anyhow::bail!(
            "network {:?} is damaged: {problems} problem{} found",
            args.name,
            if problems == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// Prints a network's status as `guestnet status` shows it: the peer table, then the learned
/// addresses.
pub fn print_status(status: &NetworkStatus) {
    println!(
        "network {}  ({} peer{} up of {}, {} ring slots, MTU {}, unknown unicast {}, {}, {} in use)",
        status.name,
        status.peers.len(),
        if status.peers.len() == 1 { "" } else { "s" },
        status.max_peers,
        status.ring_slots,
        status.mtu,
        status.unknown_unicast,
        human_bytes(status.size_bytes),
        human_bytes(status.resident_bytes)
    );
    if !status.reclaimed.is_empty() {
        let slots: Vec<String> = status.reclaimed.iter().map(u16::to_string).collect();
        println!("reclaimed dead peers in slots {}", slots.join(", "));
    }
    println!();
    if status.peers.is_empty() {
        println!("no peers");
    } else {
        let mut table = Table::new(&[
            ("SLOT", Align::Right),
            ("MAC", Align::Left),
            ("FLAGS", Align::Left),
            ("VLANS", Align::Left),
            ("NATIVE", Align::Left),
            ("KIND", Align::Left),
            ("PID", Align::Right),
            ("LABEL", Align::Left),
            ("RX PKTS", Align::Right),
            ("RX BYTES", Align::Right),
            ("TX PKTS", Align::Right),
            ("TX BYTES", Align::Right),
            ("QUEUED", Align::Right),
            ("DROPS", Align::Left),
        ]);
        for peer in &status.peers {
            table.row(vec![
                peer.slot.to_string(),
                peer.mac.to_string(),
                flag_letters(peer),
                peer.vlans.clone(),
                native_text(peer),
                peer.kind.name().to_string(),
                peer.pid.to_string(),
                if peer.label.is_empty() {
                    "-".into()
                } else {
                    peer.label.clone()
                },
                human_count(peer.rx_packets),
                human_bytes(peer.rx_bytes),
                human_count(peer.tx_packets),
                human_bytes(peer.tx_bytes),
                peer.rx_queued.to_string(),
                drops_text(peer),
            ]);
        }
        print!("{}", table.render());
        println!(
            "flags: P promiscuous, M all-multicast, D link down, Q quarantined, L MAC locked, I isolated, R rate-limited"
        );
        println!(
            "VLANs (802.1Q): native is the VLAN of a trunk's untagged frames (-: none, untagged frames dropped); an access port is untagged in its one VLAN"
        );
    }
    println!();
    if status.learned.is_empty() {
        println!("no learned addresses");
    } else {
        let mut table = Table::new(&[
            ("LEARNED MAC", Align::Left),
            ("VLAN", Align::Right),
            ("SLOT", Align::Right),
            ("AGE", Align::Right),
        ]);
        for learned in &status.learned {
            table.row(vec![
                learned.mac.to_string(),
                learned.vlan.to_string(),
                learned.slot.to_string(),
                format!("{:.1}s", learned.age_seconds),
            ]);
        }
        print!("{}", table.render());
    }
}

/// The NATIVE column: `access` for an access port, the native VLAN of a trunk, or `-`.
fn native_text(peer: &PeerStatus) -> String {
    match (peer.vlan_mode.as_str(), peer.native) {
        ("access", _) => "access".into(),
        (_, Some(vid)) => vid.to_string(),
        (_, None) => "-".into(),
    }
}

fn flag_letters(peer: &PeerStatus) -> String {
    let letters: String = [
        (peer.promiscuous, 'P'),
        (peer.all_multicast, 'M'),
        (peer.link_down, 'D'),
        (peer.quarantined, 'Q'),
        (peer.lock_mac, 'L'),
        (peer.isolated, 'I'),
        (peer.rate != 0, 'R'),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, letter)| *letter)
    .collect();
    if letters.is_empty() {
        "-".into()
    } else {
        letters
    }
}

fn drops_text(peer: &PeerStatus) -> String {
    if peer.drops.is_empty() {
        return "-".into();
    }
    peer.drops
        .iter()
        .map(|(reason, count)| format!("{reason}={}", human_count(*count)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal_and_bounded() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("1777").is_err());
    }
}
