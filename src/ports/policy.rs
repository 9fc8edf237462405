//! What a port enforces for its guest in the network's forwarding, whatever the port's
//! kind: the same options on every port subcommand, applied to the guest's peer as it joins.

use crate::network::{self, Control, VlanMembership};

/// The policy of a port, applied to each peer it joins for a guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortPolicy {
    /// Lock the peer's sources to its MAC (given, or the first one its guest sends
    /// from): frames from any other source are dropped and counted (`spoofed`).
    pub lock_mac: bool,
    /// Isolate the peer: it exchanges frames with non-isolated peers only.
    pub isolated: bool,
    /// Limit what the guest sends: bits per second and burst bytes.
    pub rate: Option<(u64, u64)>,
    /// The peer's 802.1Q VLANs, given at join (`JoinOptions::vlans`) so that it never
    /// sees a frame of another VLAN; by default a trunk of all with native VLAN 1.
    pub vlans: VlanMembership,
}

impl PortPolicy {
    /// Sets the peer's flags; called right after it joined, before its guest sends. (Its
    /// VLANs are not among them: the port joins with [`PortPolicy::vlans`].)
    pub fn apply(&self, control: &Control) -> Result<(), network::Error> {
        if self.lock_mac {
            control.set_mac_locked(true)?;
        }
        if self.isolated {
            control.set_isolated(true)?;
        }
        if let Some((rate_bps, burst_bytes)) = self.rate {
            control.set_rate(rate_bps, burst_bytes)?;
        }
        Ok(())
    }
}
