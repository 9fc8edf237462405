//! The policy options every port subcommand takes (`--lock-mac`, `--isolated`).

use crate::ports::policy::PortPolicy;

/// Policy options of a port subcommand.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct PolicyArgs {
    /// Lock each guest to its MAC (`--mac`, published before the guest speaks, or else
    /// the first source address it sends from): frames from any other source are dropped
    /// and counted (`spoofed`).
    #[arg(long)]
    pub lock_mac: bool,
    /// Isolate each guest: it exchanges frames with non-isolated peers only (an uplink, a
    /// gateway, a DHCP server), never with another isolated port, as the Linux bridge's
    /// `isolated on` does.
    #[arg(long)]
    pub isolated: bool,
}

impl From<PolicyArgs> for PortPolicy {
    fn from(args: PolicyArgs) -> PortPolicy {
        PortPolicy {
            lock_mac: args.lock_mac,
            isolated: args.isolated,
        }
    }
}
