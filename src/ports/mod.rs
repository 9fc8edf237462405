//! Ports: adapters that make things which are not Rust processes into peers.
//!
//! Each port joins the network as one peer per guest it serves and moves frames between
//! that peer and the outside world: a socket, a file, a device. The network's rules are
//! enforced by the peer itself, so a port only has to frame and unframe. The DHCP port
//! ([`dhcp`]) is the one that serves guests without carrying their frames: a single peer,
//! a station of the segment with its own addresses, that answers them.

mod batch;
pub mod capture;
mod counters;
pub mod dgram;
pub mod dhcp;
pub mod doorbell;
pub mod error;
mod label;
mod locks;
mod mac;
pub mod policy;
pub mod rtnetlink;
pub mod socket;
pub mod stream;
pub mod tap;
pub mod vhost_user;
pub mod vxlan;
pub(crate) mod wait;
