//! Integrity checks of a region (being written).
