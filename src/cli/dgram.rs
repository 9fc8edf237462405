//! `dgram`: serve QEMU `-netdev dgram` senders on a unix datagram socket.
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::network::Network;
use crate::ports::dgram::{DgramOptions, DgramPort};
use crate::ports::socket::Doorbell;
use crate::wire::MacAddress;

/// Arguments of `dgram`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Every sender address is a peer of its own; frames go back to the address they came from,
so each VM must bind its own local path. Example, with a VM:
  guestnet dgram lab --listen /tmp/lab.dgram
  qemu-system-x86_64 ... \\
    -netdev dgram,id=n0,local.type=unix,local.path=/tmp/vm0.sock,remote.type=unix,remote.path=/tmp/lab.dgram \\
    -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56")]
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
}

/// Runs `dgram` until SIGINT or SIGTERM.
pub fn run(dir: &Path, args: DgramArgs) -> anyhow::Result<()> {
    let stop = Doorbell::new().context("create the stop pipe")?;
    stop.ring_on_signals(&[libc::SIGINT, libc::SIGTERM])
        .context("install signal handlers")?;
    let network = Network::open(dir, &args.name)?;
    let port = DgramPort::bind(network, &args.listen, DgramOptions { mac: args.mac })?;
    super::stream::announce(port.path())?;
    port.serve(&stop)?;
    Ok(())
}
