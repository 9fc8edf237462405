//! `tap`: put kernel network stacks on a network through TAP devices.
use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::network::Network;
use crate::ports::socket::Doorbell;
use crate::ports::tap::{DeviceMode, TapOptions, TapPort};
use crate::wire::MacAddress;

/// Arguments of `tap`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Each TAP device is a peer of its own; its MAC, promiscuous mode and link state follow the
kernel interface (`ip link set ...`). A device this command creates disappears when it ends.
Prints `ready IFNAME slot N mac M` per device once frames flow. Frames between devices of
one process go straight from one to the other, with no hand-off between threads: serve
namespaces that talk to each other from one process. Examples:
  ip netns add red
  guestnet tap lab --ifname gn0 --netns red &
  ip -n red addr add 10.0.0.1/24 dev gn0
  guestnet tap lab --ifname gn0 --netns red --ifname gn0 --netns blue   # one device in each")]
pub struct TapArgs {
    /// Network name.
    pub name: String,
    /// Interface name (repeat for several TAP devices served by this process).
    #[arg(long = "ifname", value_name = "NAME", required = true)]
    pub ifnames: Vec<String>,
    /// Named network namespace (`ip netns add NS`) for the devices: once for all of them,
    /// or once per `--ifname`, in the same order.
    #[arg(long, value_name = "NS")]
    pub netns: Vec<String>,
    /// MAC to give the interface (one device only); by default the kernel's.
    #[arg(long, value_name = "MAC")]
    pub mac: Option<MacAddress>,
    /// Create the devices (the default); fails if an interface of that name exists.
    #[arg(long, conflicts_with = "attach")]
    pub create: bool,
    /// Attach to existing TAP devices (`ip tuntap add NAME mode tap`); they stay afterwards.
    #[arg(long)]
    pub attach: bool,
    /// Open the devices without the virtio-net header and without checksum and
    /// segmentation offloads: the kernel then segments and checksums every frame itself.
    #[arg(long)]
    pub no_offload: bool,
    /// What the port enforces for its guests.
    #[command(flatten)]
    pub policy: super::policy::PolicyArgs,
}

impl TapArgs {
    /// Each device's namespace, in the order of `--ifname`: `--netns` given once applies
    /// to all of them.
    pub fn namespaces(&self) -> anyhow::Result<Vec<Option<String>>> {
        let count = self.ifnames.len();
        match self.netns.as_slice() {
            [] => Ok(vec![None; count]),
            [one] => Ok(vec![Some(one.clone()); count]),
            several if several.len() == count => Ok(several.iter().cloned().map(Some).collect()),
            several => anyhow::bail!(
                "{} --netns for {count} --ifname: give --netns once for all the devices, or once per --ifname",
                several.len()
            ),
        }
    }
}

/// Runs `tap` until SIGINT or SIGTERM, or until every device has gone.
pub fn run(dir: &Path, args: TapArgs) -> anyhow::Result<()> {
    if args.mac.is_some() && args.ifnames.len() > 1 {
        anyhow::bail!("--mac names one interface's address; give it with one --ifname only");
    }
    let namespaces = args.namespaces()?;
    // Installed before any device exists, so that a signal always finds a port able to
    // clean up.
    let stop = Doorbell::new().context("create the stop pipe")?;
    stop.ring_on_signals(&[libc::SIGINT, libc::SIGTERM])
        .context("install signal handlers")?;
    let network = Network::open(dir, &args.name)?;
    let mode = if args.attach {
        DeviceMode::Attach
    } else {
        DeviceMode::Create
    };
    let mut ports = Vec::with_capacity(args.ifnames.len());
    for (ifname, netns) in args.ifnames.iter().zip(namespaces) {
        let options = TapOptions {
            ifname: ifname.clone(),
            netns: netns.clone(),
            mac: args.mac,
            mode,
            offload: !args.no_offload,
            policy: args.policy.try_into()?,
        };
        let port = TapPort::open(&network, &options).with_context(|| match &netns {
            Some(netns) => format!("TAP {ifname} in namespace {netns}"),
            None => format!("TAP {ifname}"),
        })?;
        ports.push(port);
    }
    let mut stdout = std::io::stdout().lock();
    for port in &ports {
        writeln!(
            stdout,
            "ready {} slot {} mac {}",
            port.ifname(),
            port.index(),
            port.mac()
        )?;
    }
    stdout.flush()?;
    drop(stdout);
    // Served together: frames from one of these devices to another go straight to it.
    let results = TapPort::serve_all(ports, &stop);
    for (ifname, result) in results {
        result.with_context(|| format!("TAP {ifname}"))?;
    }
    Ok(())
}
