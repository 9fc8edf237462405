//! The capture port (being written).
