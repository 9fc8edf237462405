//! The dgram port (being written).
