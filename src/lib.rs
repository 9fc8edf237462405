//! guestnet: a shared virtual Ethernet for the guests of one host.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod network;
pub mod ports;
pub mod shm;
pub mod testframe;
pub mod wire;
