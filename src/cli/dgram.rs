//! `dgram`: serve QEMU `-netdev dgram` senders on a unix datagram socket.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::network::Network;
use crate::ports::dgram::{DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CLIENTS, DgramOptions, DgramPort};
use crate::ports::socket::Doorbell;
use crate::wire::MacAddress;

/// Arguments of `dgram`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Every sender address is a peer of its own; frames go back to the address they came from,
so each VM must bind its own local path. Up to --max-clients senders are served at once,
and one silent for --idle-timeout leaves (it comes back with its next datagram). Example,
with a VM:
  guestnet dgram lab --listen /tmp/lab.dgram
  qemu-system-x86_64 ... \\
    -netdev dgram,id=n0,local.type=unix,local.path=/tmp/vm0.sock,remote.type=unix,remote.path=/tmp/lab.dgram \\
    -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56
At most 4 VMs, each leaving after a minute of silence:
  guestnet dgram lab --listen /tmp/lab.dgram --max-clients 4 --idle-timeout 60")]
pub struct DgramArgs {
    /// Network name.
    pub name: String,
    /// Path of the unix datagram socket to bind (a stale socket file there is replaced).
    #[arg(long, value_name = "PATH")]
    pub listen: PathBuf,
    /// MAC to publish for the sender (for one sender at a time); by default the source
    /// address of its first frame.
    #[arg(long, value_name = "MAC")]
    pub mac: Option<MacAddress>,
    /// Most senders served at once; datagrams from further ones are dropped, counted and
    /// logged, so that one client cannot take every slot of the network.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CLIENTS,
          value_parser = super::stream::parse_max_clients)]
    pub max_clients: usize,
    /// What the port enforces for its guests.
    #[command(flatten)]
    pub policy: super::policy::PolicyArgs,
    /// Seconds (fractions allowed) a sender may stay silent before its peer leaves and
    /// frees its slot; 0: never.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs_f64(),
          value_parser = parse_idle_timeout)]
    pub idle_timeout: f64,
}

/// `--idle-timeout`: a non-negative, finite number of seconds.
fn parse_idle_timeout(text: &str) -> Result<f64, String> {
    let seconds: f64 = text.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{e}"))?;
    Ok(seconds)
}

/// Runs `dgram` until SIGINT or SIGTERM.
pub fn run(dir: &Path, args: DgramArgs) -> anyhow::Result<()> {
    let stop = Doorbell::new().context("create the stop pipe")?;
    stop.ring_on_signals(&[libc::SIGINT, libc::SIGTERM])
        .context("install signal handlers")?;
    let network = Network::open(dir, &args.name)?;
    let options = DgramOptions {
        mac: args.mac,
        max_clients: args.max_clients,
        policy: args.policy.try_into()?,
        // parse_idle_timeout has checked it; zero means never.
        idle_timeout: Duration::try_from_secs_f64(args.idle_timeout)
            .ok()
            .filter(|timeout| !timeout.is_zero()),
    };
    let port = DgramPort::bind(network, &args.listen, options)?;
    super::stream::announce(port.path())?;
    port.serve(&stop)?;
    Ok(())
}
