//! A token bucket: what a port may send into the network per unit of time.
//!
//! The bucket holds up to `burst` bytes of tokens and fills at `rate` bits per second; a
//! frame takes its length in tokens or is refused. It takes the time as an argument and
//! reads no clock, so its tests need none. The sender keeps one per peer with a rate
//! (`--rate`), so the limit is enforced in the network's forwarding whatever the port; a
//! port that can wait asks [`TokenBucket::wait_ns`] first and holds its guest back instead
//! of losing its frames, so that TCP sees back-pressure rather than loss.

/// The bytes of burst a rate gets when none is given: 10 ms of traffic, but at least two
/// of the largest frames (64 KiB super-frames), so that a rate never refuses a frame for
/// being larger than the bucket.
pub fn default_burst(rate_bps: u64) -> u64 {
    (rate_bps / 8 / 100).max(2 * 65_600)
}

/// The longest a port is told to hold its guest back at once, so that a changed or lifted
/// limit is seen (250 ms).
pub const MAX_HOLD_NS: u64 = 250_000_000;
/// Traffic a held-back port waits for beyond room for its largest frame, so that it sends
/// in batches rather than waking per frame (1 ms of the rate).
pub const HOLD_QUANTUM_NS: u64 = 1_000_000;

/// What a port that can hold its guest back may do with one more frame, under a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Take it.
    Take,
    /// Not in this batch: send what was taken, then ask again.
    EndBatch,
    /// Take nothing for this many nanoseconds: the guest is held back.
    HoldFor(u64),
}

/// A token bucket over bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Fill rate, bits per second.
    rate_bps: u64,
    /// Capacity, bytes.
    burst: u64,
    /// Tokens now, in bytes × 10⁹ (so that integer arithmetic stays exact at any rate).
    nano_tokens: u128,
    /// When the tokens were last brought up to date.
    last_ns: u64,
}

impl TokenBucket {
    /// A full bucket of `burst` bytes filling at `rate_bps`, as of `now_ns`.
    pub fn new(rate_bps: u64, burst: u64, now_ns: u64) -> TokenBucket {
        TokenBucket {
            rate_bps,
            burst,
            nano_tokens: u128::from(burst) * 1_000_000_000,
            last_ns: now_ns,
        }
    }

    /// The rate, bits per second.
    pub fn rate_bps(&self) -> u64 {
        self.rate_bps
    }

    /// The burst, bytes.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Whether a port may take one more frame after `taken` bytes at `now_ns`, when the
    /// largest frame its guest may send is `largest` bytes. A frame is taken only while
    /// the bucket holds the batch so far plus the largest frame, so the network refuses
    /// none; a batch ends once another would not fit. With nothing taken yet and no room,
    /// the port holds its guest back until there is room for the largest frame and
    /// [`HOLD_QUANTUM_NS`] of traffic more (at most the burst), for at most
    /// [`MAX_HOLD_NS`]. A burst smaller than the largest frame never has room for it: the
    /// hold then lasts until the bucket is full (the frame may still be refused, and
    /// counted, if it is over the burst).
    pub fn admission(&self, taken: u64, largest: u64, now_ns: u64) -> Admission {
        let wanted = taken.saturating_add(largest);
        if taken > 0 {
            return if wanted <= self.burst && self.wait_ns(wanted, now_ns) == 0 {
                Admission::Take
            } else {
                Admission::EndBatch
            };
        }
        if self.wait_ns(wanted.min(self.burst), now_ns) == 0 {
            return Admission::Take;
        }
        let quantum = self.rate_bps / 8 / (1_000_000_000 / HOLD_QUANTUM_NS);
        let target = wanted.saturating_add(quantum).min(self.burst);
        Admission::HoldFor(self.wait_ns(target, now_ns).clamp(1, MAX_HOLD_NS))
    }

    /// Adds the tokens earned since the last call.
    pub fn refill(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        // bits/s × ns = 1e9 × bits; / 8 = 1e9 × bytes.
        let earned = u128::from(self.rate_bps) * u128::from(elapsed) / 8;
        let cap = u128::from(self.burst) * 1_000_000_000;
        self.nano_tokens = self.nano_tokens.saturating_add(earned).min(cap);
    }

    /// Takes `bytes` tokens if there are that many; returns whether it did.
    pub fn take(&mut self, bytes: u64) -> bool {
        let needed = u128::from(bytes) * 1_000_000_000;
        if self.nano_tokens >= needed {
            self.nano_tokens -= needed;
            true
        } else {
            false
        }
    }

    /// How long from `now_ns` until `bytes` tokens are there (0: now).
    pub fn wait_ns(&self, bytes: u64, now_ns: u64) -> u64 {
        let mut bucket = *self;
        bucket.refill(now_ns);
        let needed = u128::from(bytes.min(self.burst)) * 1_000_000_000;
        if bucket.nano_tokens >= needed || self.rate_bps == 0 {
            return 0;
        }
        let missing = needed - bucket.nano_tokens;
        // missing nanobytes ÷ (rate/8 bytes per second) = missing × 8 / rate ns.
        u64::try_from(missing * 8 / u128::from(self.rate_bps) + 1).unwrap_or(u64::MAX)
    }
}

/// Parses a rate as people write it: bits per second with an optional `k`, `m` or `g`
/// suffix (powers of 1000): `200m`, `1g`, `64000`.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    let (digits, scale) = match lower.strip_suffix(['k', 'm', 'g']) {
        Some(digits) => {
            let scale = match lower.chars().last() {
                Some('k') => 1_000,
                Some('m') => 1_000_000,
                _ => 1_000_000_000,
            };
            (digits, scale)
        }
        None => (lower.as_str(), 1),
    };
    let value: f64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a rate: write bits per second, e.g. 200m or 1g"))?;
    let bps = value * scale as f64;
    if !(8.0..=1e12).contains(&bps) {
        return Err(format!(
            "{text:?}: a rate must be between 8 bit/s and 1000g"
        ));
    }
    Ok(bps as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_takes_while_the_largest_frame_fits_then_ends_the_batch_then_holds() {
        // 8 Mbit/s: a byte a microsecond; a burst of 4000 bytes; frames of up to 1518.
        let mut bucket = TokenBucket::new(8_000_000, 4000, 0);
        assert_eq!(bucket.admission(0, 1518, 0), Admission::Take);
        assert_eq!(bucket.admission(2000, 1518, 0), Admission::Take);
        assert_eq!(
            bucket.admission(3000, 1518, 0),
            Admission::EndBatch,
            "4518 > burst"
        );
        assert!(bucket.take(3000));
        // 1000 bytes left: room for 1518 and a millisecond (1000 bytes) more.
        assert_eq!(bucket.admission(0, 1518, 0), Admission::HoldFor(1_518_001));
        // A long wait is cut to MAX_HOLD_NS, so that a changed limit is seen.
        let slow = TokenBucket::new(8_000, 2000, 0);
        assert!(matches!(slow.admission(0, 65_550, 1), Admission::Take));
        let mut slow = slow;
        assert!(slow.take(2000));
        assert_eq!(slow.admission(0, 1518, 0), Admission::HoldFor(MAX_HOLD_NS));
    }

    #[test]
    fn a_full_bucket_gives_its_burst_then_the_rate() {
        // 8 Mbit/s = 1 MB/s; burst 2000 bytes.
        let mut bucket = TokenBucket::new(8_000_000, 2000, 0);
        assert!(bucket.take(1500));
        assert!(!bucket.take(1000), "only 500 left");
        assert_eq!(bucket.wait_ns(1000, 0), 500_001, "500 bytes at 1 MB/s");
        bucket.refill(500_000);
        assert!(bucket.take(1000));
        // Idle for a long time: capped at the burst.
        bucket.refill(10_000_000_000);
        assert!(bucket.take(2000));
        assert!(!bucket.take(1));
    }

    #[test]
    fn time_going_backwards_earns_nothing() {
        let mut bucket = TokenBucket::new(8_000, 100, 1_000);
        assert!(bucket.take(100));
        bucket.refill(0);
        assert!(!bucket.take(1));
    }

    #[test]
    fn rates_parse_with_their_suffixes() {
        assert_eq!(parse_rate("200m"), Ok(200_000_000));
        assert_eq!(parse_rate("1G"), Ok(1_000_000_000));
        assert_eq!(parse_rate("1.5k"), Ok(1_500));
        assert_eq!(parse_rate("64000"), Ok(64_000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-5m").is_err());
    }

    #[test]
    fn the_default_burst_holds_two_super_frames() {
        assert_eq!(default_burst(1_000_000), 131_200);
        assert_eq!(default_burst(200_000_000_000), 250_000_000);
    }
}
