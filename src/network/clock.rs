//! The clocks the network uses: monotonic time for liveness, ageing and timeouts (the
//! same clock in every process of the host, so values in the region compare across
//! processes), and wall-clock time for what `status` shows.

/// Monotonic time in nanoseconds (the same clock in every process of the host).
pub fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// Wall-clock time in nanoseconds since the Unix epoch.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `duration` as the kernel takes a timeout; durations beyond `i64::MAX` seconds saturate.
pub fn timespec(duration: std::time::Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: duration.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(duration.subsec_nanos()),
    }
}
