//! A guest's MAC: refusing one no peer could publish, and learning it from traffic.

use crate::network::Control;
use crate::wire::{EthernetFrame, MacAddress};

use super::error::PortError;

/// Refuses, before any client comes, a `--mac` that no peer could publish.
pub(crate) fn check_mac(mac: Option<MacAddress>) -> Result<(), PortError> {
    match mac {
        Some(mac) if mac.is_multicast() || mac.is_zero() => {
            Err(crate::network::Error::BadMac(mac).into())
        }
        _ => Ok(()),
    }
}

/// Publishes a guest's MAC, taken from the source address of its first frame.
///
/// Under QEMU the port is never told the guest's MAC (it stays in QEMU), so without
/// `--mac` the peer starts with the network's default address and the guest's own address
/// is only learned behind it. Publishing it makes the table show the guest as it is and
/// lets unicast reach it without depending on learning and ageing. One attempt only:
/// a guest that changes addresses later is still reached through learning.
#[derive(Debug)]
pub(crate) struct MacLearner {
    done: bool,
}

impl MacLearner {
    /// `fixed`: the MAC was given on the command line; learn nothing.
    pub fn new(fixed: bool) -> MacLearner {
        MacLearner { done: fixed }
    }

    /// Looks at a frame about to be sent; on the first usable one, publishes its source.
    pub fn observe(&mut self, control: impl FnOnce() -> Control, frame: &[u8], label: &str) {
        if self.done {
            return;
        }
        let Ok(view) = EthernetFrame::new_checked(frame) else {
            return;
        };
        let source = view.source();
        // A multicast or zero source is refused by the network anyway; wait for a real one.
        if source.is_multicast() || source.is_zero() {
            return;
        }
        self.done = true;
        let control = control();
        if control.mac() == source {
            return;
        }
        match control.publish_guest_mac(source) {
            Ok(()) => tracing::info!(port = label, mac = %source, "published the guest's MAC"),
            Err(e) => tracing::warn!(
                port = label,
                mac = %source,
                kept = %control.mac(),
                error = %e,
                "cannot publish the guest's MAC; keeping the default (the guest is still reached by learning)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mac_no_peer_could_publish_is_refused_up_front() {
        assert!(check_mac(None).is_ok());
        assert!(check_mac(Some(MacAddress([0x52, 0x54, 0, 0, 0, 1]))).is_ok());
        assert!(check_mac(Some(MacAddress::BROADCAST)).is_err());
        assert!(check_mac(Some(MacAddress::ZERO)).is_err());
    }
}
