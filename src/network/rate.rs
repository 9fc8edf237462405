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
