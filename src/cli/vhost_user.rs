//! `vhost-user`: serve VMs through their virtio-net driver (QEMU, cloud-hypervisor).
//!
//! The sockets' negotiation state and counters live in this process; so that `guestnet
//! status` can show them, the command writes them to a status file
//! ([`super::port_status`]) every second and whenever a socket's state changes.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::port_status::{StatusFile, StatusKind};
use crate::network::Network;
use crate::ports::socket::Doorbell;
use crate::ports::vhost_user::{Steering, VhostUserOptions, VhostUserPort};
use crate::wire::MacAddress;

/// How often the status file is rewritten when nothing changes.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Arguments of `vhost-user`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Each socket serves one VM at a time, as one peer of the network. The VM's memory must be
shared (a memfd backend with share=on). Prints `listening on PATH` (or `connecting to
PATH` with --client) for each socket once it serves. Example:
  guestnet vhost-user lab --socket /tmp/vm0.sock
  qemu-system-x86_64 ... \\
    -object memory-backend-memfd,id=mem,size=1G,share=on -machine memory-backend=mem \\
    -chardev socket,id=c0,path=/tmp/vm0.sock,reconnect-ms=1000 \\
    -netdev vhost-user,id=n0,chardev=c0 \\
    -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56
With --client, QEMU listens instead (-chardev socket,id=c0,path=/tmp/vm0.sock,server=on,
wait=off) and the port reconnects when QEMU restarts.")]
pub struct VhostUserArgs {
    /// Network name.
    pub name: String,
    /// A unix socket to serve a VM on (repeat for several VMs).
    #[arg(long = "socket", value_name = "PATH", required = true)]
    pub sockets: Vec<PathBuf>,
    /// MAC to publish for the VM of the socket in the same position; by default the
    /// source address of the VM's first frame.
    #[arg(long = "mac", value_name = "MAC")]
    pub macs: Vec<MacAddress>,
    /// Queue pairs to offer (QEMU: `-netdev vhost-user,...,queues=N` and
    /// `-device virtio-net-pci,...,mq=on`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub queues: u16,
    /// Connect to a frontend that listens, and reconnect when it restarts.
    #[arg(long)]
    pub client: bool,
    /// Do not offer checksum and segmentation offloads.
    #[arg(long)]
    pub no_offload: bool,
    /// With several queue pairs, which receive queue a frame from another VM of this
    /// port takes: `queue`, the one numbered as the transmit queue it was sent on (cheap:
    /// a batch touches one queue); `flow`, the one its addresses and ports hash to.
    #[arg(long, value_enum, default_value_t = Steering::Queue)]
    pub steering: Steering,
    /// What the port enforces for its guests.
    #[command(flatten)]
    pub policy: super::policy::PolicyArgs,
}

/// Runs `vhost-user` until SIGINT or SIGTERM.
pub fn run(dir: &Path, args: VhostUserArgs) -> anyhow::Result<()> {
    let stop = Doorbell::new().context("create the stop pipe")?;
    stop.ring_on_signals(&[libc::SIGINT, libc::SIGTERM])
        .context("install signal handlers")?;
    let network = Network::open(dir, &args.name)?;
    let port = VhostUserPort::open(VhostUserOptions {
        sockets: args.sockets,
        macs: args.macs,
        queue_pairs: args.queues,
        client: args.client,
        offload: !args.no_offload,
        policy: args.policy.try_into()?,
        steering: args.steering,
    })
    .context("vhost-user port")?;
    let handle = port.status_handle();
    let file = StatusFile::create(dir, StatusKind::VhostUser, &args.name)?;
    file.write(&handle.status())
        .context("write the status file")?;
    let mut stdout = std::io::stdout().lock();
    for path in port.socket_paths() {
        let verb = if args.client {
            "connecting to"
        } else {
            "listening on"
        };
        writeln!(stdout, "{verb} {}", path.display())?;
    }
    stdout.flush()?;
    drop(stdout);
    std::thread::scope(|scope| {
        let stop = &stop;
        let file = &file;
        let handle = &handle;
        scope.spawn(move || {
            while !stop.is_rung() {
                if let Err(e) = file.write(&handle.status()) {
                    tracing::warn!(error = %e, "cannot write the status file");
                }
                handle.wait_for_change(STATUS_INTERVAL);
            }
        });
        port.serve(&network, stop)
    })?;
    Ok(())
}
