//! The policy options every port subcommand takes (`--lock-mac`, `--isolated`, `--rate`,
//! and the 802.1Q options `--vlan`, `--trunk`, `--native` of [`VlanArgs`]).

use crate::network::vlan::parse_vid;
use crate::network::{VlanMembership, VlanSet};
use crate::ports::policy::PortPolicy;

/// The 802.1Q options of a port subcommand.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct VlanArgs {
    /// Make each guest's port an access port of VLAN VID (1-4094): its frames are
    /// untagged on the port and stay in VLAN VID; a tagged frame from the guest is dropped
    /// and counted (`vlan_filtered`). Example: `--vlan 10`.
    #[arg(long, value_name = "VID", value_parser = parse_vid, conflicts_with = "trunk")]
    pub vlan: Option<u16>,
    /// Make each guest's port a trunk of these VLANs: a list of VIDs and ranges, or `all`.
    /// Frames are tagged on the port (except those of `--native`); frames tagged for
    /// other VLANs, and untagged ones without `--native`, are dropped and counted
    /// (`vlan_filtered`). Examples: `--trunk 10,20`, `--trunk 100-199,300`, `--trunk all`.
    /// Without --vlan or --trunk a port is a trunk of all VLANs with native VLAN 1, which
    /// is a network without VLANs.
    #[arg(long, value_name = "VIDS", value_parser = parse_vlan_set)]
    pub trunk: Option<VlanSet>,
    /// With --trunk: untagged frames on the trunk belong to VLAN VID, and its frames leave
    /// untagged. Example: `--trunk 10,20 --native 1`.
    #[arg(long, value_name = "VID", value_parser = parse_vid, requires = "trunk")]
    pub native: Option<u16>,
}

impl VlanArgs {
    /// The membership these options ask for, or `default` without any.
    pub fn membership(&self, default: VlanMembership) -> Result<VlanMembership, String> {
        match (self.vlan, self.trunk) {
            (Some(vid), _) => VlanMembership::access(vid),
            (None, Some(set)) => VlanMembership::trunk(set, self.native),
            (None, None) => Ok(default),
        }
    }
}

fn parse_vlan_set(text: &str) -> Result<VlanSet, String> {
    text.parse()
}

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
    /// Limit what each guest sends into the network, in bits per second (`200m`, `1g`):
    /// a token bucket. Frames over it are dropped and counted (`rate_limited`); TAP and
    /// vhost-user ports hold their guest back instead, so that TCP slows down rather than
    /// losing frames.
    #[arg(long, value_name = "RATE", value_parser = crate::network::rate::parse_rate)]
    pub rate: Option<u64>,
    /// The burst of `--rate`, in bytes [default: 10 ms of the rate, at least 128 KiB].
    #[arg(long, value_name = "BYTES", requires = "rate", value_parser = parse_burst)]
    pub burst: Option<u64>,
    /// 802.1Q VLANs.
    #[command(flatten)]
    pub vlans: VlanArgs,
}

impl TryFrom<PolicyArgs> for PortPolicy {
    type Error = anyhow::Error;

    fn try_from(args: PolicyArgs) -> anyhow::Result<PortPolicy> {
        Ok(PortPolicy {
            lock_mac: args.lock_mac,
            isolated: args.isolated,
            rate: args.rate.map(|rate| {
                let burst = args
                    .burst
                    .unwrap_or_else(|| crate::network::rate::default_burst(rate));
                (rate, burst)
            }),
            vlans: args
                .vlans
                .membership(VlanMembership::default())
                .map_err(anyhow::Error::msg)?,
        })
    }
}

/// The smallest burst a port accepts: one of the largest frames (an offload super-frame),
/// or such a frame could never pass the limit.
const MIN_BURST: u64 = crate::shm::layout::LARGE_FRAME as u64;

pub(crate) fn parse_burst(text: &str) -> Result<u64, String> {
    let bytes: u64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of bytes"))?;
    if bytes < MIN_BURST {
        return Err(format!(
            "a burst of {bytes} bytes cannot hold the largest frame: give at least {MIN_BURST}"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_smaller_than_the_largest_frame_is_refused() {
        assert!(parse_burst("3000").is_err());
        assert!(parse_burst("lots").is_err());
        assert_eq!(parse_burst("131200"), Ok(131_200));
    }
}
