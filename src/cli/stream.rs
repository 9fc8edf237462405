//! `stream`: serve QEMU `-netdev stream` clients on a unix socket.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::network::Network;
use crate::ports::socket::Doorbell;
use crate::ports::stream::{StreamOptions, StreamPort};
use crate::wire::MacAddress;

/// Arguments of `stream`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Every connection is a peer of its own, so one socket serves many VMs. Example, with a VM:
  guestnet stream lab --listen /tmp/lab.sock
  qemu-system-x86_64 ... \\
    -netdev stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/lab.sock,reconnect-ms=1000 \\
    -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56")]
pub struct StreamArgs {
    /// Network name.
    pub name: String,
    /// Path of the unix socket to listen on (a stale socket file there is replaced).
    #[arg(long, value_name = "PATH")]
    pub listen: PathBuf,
    /// MAC to publish for the client (for one client at a time); by default the source
    /// address of its first frame.
    #[arg(long, value_name = "MAC")]
    pub mac: Option<MacAddress>,
}

/// Runs `stream` until SIGINT or SIGTERM.
pub fn run(dir: &Path, args: StreamArgs) -> anyhow::Result<()> {
    let stop = Doorbell::new().context("create the stop pipe")?;
    stop.ring_on_signals(&[libc::SIGINT, libc::SIGTERM])
        .context("install signal handlers")?;
    let network = Network::open(dir, &args.name)?;
    let port = StreamPort::bind(network, &args.listen, StreamOptions { mac: args.mac })?;
    announce(port.path())?;
    port.serve(&stop)?;
    Ok(())
}

/// Tells whoever started us that the socket is ready: one line, flushed at once.
pub(crate) fn announce(path: &Path) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", path.display())?;
    stdout.flush()?;
    Ok(())
}
