//! `stream`: serve QEMU `-netdev stream` clients on a unix socket.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::network::Network;
use crate::ports::socket::Doorbell;
use crate::ports::stream::{DEFAULT_MAX_CLIENTS, StreamOptions, StreamPort};
use crate::wire::MacAddress;

/// Arguments of `stream`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Every connection is a peer of its own, so one socket serves many VMs, up to --max-clients
at a time. Example, with a VM:
  guestnet stream lab --listen /tmp/lab.sock
  qemu-system-x86_64 ... \\
    -netdev stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/lab.sock,reconnect-ms=1000 \\
    -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56
Serving at most 4 VMs at once (a fifth connection is closed at once, and logged):
  guestnet stream lab --listen /tmp/lab.sock --max-clients 4")]
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
    /// Most connections served at once; further ones are closed at once, counted and
    /// logged, so that one client cannot take every slot of the network.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CLIENTS,
          value_parser = parse_max_clients)]
    pub max_clients: usize,
    /// What the port enforces for its guests.
    #[command(flatten)]
    pub policy: super::policy::PolicyArgs,
}

/// Runs `stream` until SIGINT or SIGTERM.
pub fn run(dir: &Path, args: StreamArgs) -> anyhow::Result<()> {
    let stop = Doorbell::new().context("create the stop pipe")?;
    stop.ring_on_signals(&[libc::SIGINT, libc::SIGTERM])
        .context("install signal handlers")?;
    let network = Network::open(dir, &args.name)?;
    let options = StreamOptions {
        mac: args.mac,
        max_clients: args.max_clients,
        policy: args.policy.try_into()?,
    };
    let port = StreamPort::bind(network, &args.listen, options)?;
    announce(port.path())?;
    port.serve(&stop)?;
    Ok(())
}

/// `--max-clients`: a count of at least one (a port that serves nobody is a mistake).
pub(crate) fn parse_max_clients(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Tells whoever started us that the socket is ready: one line, flushed at once.
pub(crate) fn announce(path: &Path) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", path.display())?;
    stdout.flush()?;
    Ok(())
}
