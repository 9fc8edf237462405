//! guestnet: a shared virtual Ethernet for the guests of one host.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod bench;
pub mod cli;
pub mod network;
pub mod ports;
pub mod shm;
pub mod wire;
