//! `dhcp`: a DHCPv4 server, and DNS for the guests' names, as a peer of a network.
//!
//! The server's logic is [`crate::ports::dhcp`]; this command checks the options, takes
//! the lease file (one server per file, held by a lock for as long as it runs), prints a
//! `ready` line, serves until SIGINT or SIGTERM, and writes its counters and lease count
//! every second to a status file ([`super::port_status`]) for `status` and `/metrics`.

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use signal_hook::consts::{SIGINT, SIGTERM};

use super::port_status::{StatusFile, StatusKind};
use crate::network::{Network, VlanMembership};
use crate::ports::dhcp::config::{Config, ConfigOptions};
use crate::ports::dhcp::{DhcpPort, now};

/// How often the status file is rewritten.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Longest sleep between two looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Arguments of `dhcp`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
The server is a station of the network with its own MAC and address: --address, else the
last host address of the subnet that is neither the router's nor in the range. It answers
ARP for that address only, probes every address by ARP before offering it, and keeps the
leases in a file that survives restarts (the same MAC gets the same address back). With
--domain, guests that send a host name are NAME.DOMAIN in DNS on port 53 of the server's
address (A and PTR); other names are refused: it forwards nothing. Prints
`ready slot N mac MAC address ADDR` once it serves.

Examples:
  guestnet dhcp lab --subnet 10.0.0.0/24 --range 10.0.0.10-10.0.0.99
  guestnet dhcp lab --subnet 10.0.0.0/24 --range 10.0.0.10-10.0.0.99 --router 10.0.0.1 \\
      --domain lab.internal --lease-time 12h --host 02:00:00:00:00:05=10.0.0.5
  guestnet dhcp lab --subnet 192.168.7.0/24 --range 192.168.7.100-192.168.7.199 \\
      --dns 192.168.7.1 --dns 9.9.9.9 --leases /var/lib/guestnet/lab.leases")]
pub struct DhcpArgs {
    /// Network name.
    pub name: String,
    /// The guests' subnet, as a CIDR block: 10.0.0.0/24.
    #[arg(long, value_name = "CIDR")]
    pub subnet: String,
    /// The addresses handed out: 10.0.0.10-10.0.0.99 (inside the subnet).
    #[arg(long, value_name = "FIRST-LAST")]
    pub range: String,
    /// The default gateway given to guests (option 3); none if not given.
    #[arg(long, value_name = "IP")]
    pub router: Option<Ipv4Addr>,
    /// A name server given to guests (option 6); repeat for several. Default: the server
    /// itself when --domain is given, else none.
    #[arg(long = "dns", value_name = "IP")]
    pub dns: Vec<Ipv4Addr>,
    /// How long a lease lasts: seconds, or with a unit: 90s, 30m, 12h, 1d.
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub lease_time: String,
    /// A fixed address for a MAC: 02:00:00:00:00:05=10.0.0.5; repeat for several. It may
    /// lie outside the range, and no other guest gets it.
    #[arg(long = "host", value_name = "MAC=IP")]
    pub hosts: Vec<String>,
    /// The lease file [default: DIR/.dhcp/NAME.leases].
    #[arg(long, value_name = "FILE")]
    pub leases: Option<PathBuf>,
    /// The server's own address (in the subnet, outside the range, not the router's).
    #[arg(long, value_name = "IP")]
    pub address: Option<Ipv4Addr>,
    /// Answer DNS for the guests' host names as HOST.DOMAIN (and their reverse names);
    /// also given to guests as option 15.
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// Serve the guests of VLAN VID (1-4094) only: the server is an access port of that
    /// VLAN, and its default lease file is DIR/.dhcp/NAME.vlanVID.leases. One server per
    /// VLAN; without it the server is in VLAN 1, the untagged one.
    #[arg(long, value_name = "VID", value_parser = crate::network::vlan::parse_vid)]
    pub vlan: Option<u16>,
}

impl DhcpArgs {
    /// The options for the configuration check.
    fn config_options(&self) -> ConfigOptions {
        ConfigOptions {
            subnet: self.subnet.clone(),
            range: self.range.clone(),
            router: self.router,
            dns: self.dns.clone(),
            lease_time: Some(self.lease_time.clone()),
            hosts: self.hosts.clone(),
            address: self.address,
            domain: self.domain.clone(),
        }
    }
}

/// The default lease file of network `name`.
pub fn default_leases_path(dir: &Path, name: &str, vlan: Option<u16>) -> PathBuf {
    let file = match vlan {
        Some(vid) => format!("{name}.vlan{vid}.leases"),
        None => format!("{name}.leases"),
    };
    dir.join(".dhcp").join(file)
}

/// Runs `dhcp` until SIGINT or SIGTERM.
pub fn run(dir: &Path, args: DhcpArgs) -> anyhow::Result<()> {
    let config = Config::new(&args.config_options())?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("install signal handlers")?;
    }
    let network = Network::open(dir, &args.name)?;
    let leases_path = match &args.leases {
        Some(path) => path.clone(),
        None => {
            let path = default_leases_path(dir, &args.name, args.vlan);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("create {}", parent.display()))?;
            }
            path
        }
    };
    let _lock = lock(&leases_path)?;
    let label = match args.vlan {
        Some(vid) => format!("dhcp {} vlan {vid}", config.address),
        None => format!("dhcp {}", config.address),
    };
    let address = config.address;
    let vlans = match args.vlan {
        Some(vid) => VlanMembership::access(vid).map_err(anyhow::Error::msg)?,
        None => VlanMembership::default(),
    };
    let mut port = DhcpPort::start(&network, config, &leases_path, label, vlans)
        .with_context(|| format!("dhcp on {}", args.name))?;
    let file = StatusFile::create(dir, StatusKind::Dhcp, &args.name)?;
    file.write(&port.status(&args.name, now()))
        .context("write the status file")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "ready slot {} mac {} address {address}",
        port.index(),
        port.endpoint().mac()
    )?;
    stdout.flush()?;
    drop(stdout);
    let mut last_status = now();
    while !stop.load(Ordering::Relaxed) {
        let time = now();
        if port.step(time)? == 0 {
            port.wait(time, STOP_POLL);
        }
        let time = now();
        if time.saturating_sub(last_status) >= STATUS_INTERVAL || time < last_status {
            last_status = time;
            if let Err(e) = file.write(&port.status(&args.name, time)) {
                tracing::warn!(error = %e, "cannot write the status file");
            }
        }
    }
    Ok(())
}

/// Takes the lock beside the lease file, so that two servers never share one file.
fn lock(leases: &Path) -> anyhow::Result<File> {
    let mut name = leases.as_os_str().to_os_string();
    name.push(".lock");
    let path = PathBuf::from(name);
    let file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
        |e| {
            anyhow::anyhow!(
                "another guestnet dhcp uses the lease file {} (its lock {} is held: {e})",
                leases.display(),
                path.display()
            )
        },
    )?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// `dhcp`'s arguments as the command line parses them.
    #[derive(Debug, clap::Parser)]
    struct Command {
        #[command(flatten)]
        args: DhcpArgs,
    }

    #[test]
    fn repeated_options_are_repeated_flags() {
        let parsed = Command::try_parse_from([
            "dhcp",
            "lab",
            "--subnet",
            "10.0.0.0/24",
            "--range",
            "10.0.0.10-10.0.0.99",
            "--dns",
            "10.0.0.1",
            "--dns",
            "9.9.9.9",
            "--host",
            "02:00:00:00:00:05=10.0.0.5",
            "--host",
            "02:00:00:00:00:06=10.0.0.6",
            "--domain",
            "lab.internal",
        ])
        .unwrap();
        let config = Config::new(&parsed.args.config_options()).unwrap();
        assert_eq!(config.dns.len(), 2);
        assert_eq!(config.hosts.len(), 2);
        assert_eq!(config.lease_time, Duration::from_secs(3600));
        let help = Command::command().render_long_help().to_string();
        assert!(help.contains("Examples:"), "{help}");
    }

    #[test]
    fn a_second_server_on_the_same_lease_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lab.leases");
        let _first = lock(&path).unwrap();
        let error = lock(&path).unwrap_err().to_string();
        assert!(
            error.contains("another guestnet dhcp uses the lease file"),
            "{error}"
        );
    }
}
