//! The stream port (being written).
