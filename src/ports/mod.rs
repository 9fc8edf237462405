//! Ports: adapters that make things which are not Rust processes into peers.
