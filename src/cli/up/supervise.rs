//! The supervision rules, without processes or a clock: when a child that died starts
//! again, and what a reload keeps, stops and starts. `up` passes the time in, so the
//! tests below check the rules without waiting.

use std::time::{Duration, Instant};

/// The wait before the first restart of a child that died.
pub const FIRST_DELAY: Duration = Duration::from_millis(200);

/// The longest wait between restarts: the delay doubles with each death up to this.
pub const MAX_DELAY: Duration = Duration::from_secs(10);

/// A child that ran this long before it died is restarted as if it had never failed.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// The deaths of one child in a row, which set when it starts again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restarts {
    /// Deaths since it last ran for [`STABLE_AFTER`].
    pub failures: u32,
}

impl Restarts {
    /// Records that the child started at `started` died at `now`, and returns when to
    /// start it again.
    pub fn died(&mut self, started: Instant, now: Instant) -> Instant {
        if now.saturating_duration_since(started) >= STABLE_AFTER {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        now + delay(self.failures)
    }
}

/// The wait before a restart after `failures` deaths in a row (at least one).
pub fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

/// What a reload does, by position in the old and the new list of command lines.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reload {
    /// Old children that go on running, as (old position, new position).
    pub keep: Vec<(usize, usize)>,
    /// Old children to stop.
    pub stop: Vec<usize>,
    /// New children to start.
    pub start: Vec<usize>,
}

/// Compares the command lines of the running children with those the file now asks for:
/// an identical (normalised) command line keeps its process, and with it its slots.
pub fn reload<T: PartialEq>(old: &[T], new: &[T]) -> Reload {
    let mut plan = Reload::default();
    let mut taken = vec![false; new.len()];
    for (i, running) in old.iter().enumerate() {
        let twin = new
            .iter()
            .enumerate()
            .position(|(j, wanted)| !taken[j] && wanted == running);
        match twin {
            Some(j) => {
                taken[j] = true;
                plan.keep.push((i, j));
            }
            None => plan.stop.push(i),
        }
    }
    plan.start = (0..new.len()).filter(|&j| !taken[j]).collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_from_a_fifth_of_a_second_up_to_ten_seconds() {
        let delays: Vec<u128> = (1..=9).map(|n| delay(n).as_millis()).collect();
        assert_eq!(
            delays,
            [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn a_child_dying_at_once_waits_longer_each_time() {
        let t0 = Instant::now();
        let mut restarts = Restarts::default();
        let first = restarts.died(t0, t0 + Duration::from_millis(10));
        assert_eq!(first, t0 + Duration::from_millis(210));
        let second = restarts.died(first, first + Duration::from_millis(10));
        assert_eq!(second, first + Duration::from_millis(410));
        assert_eq!(restarts.failures, 2);
    }

    #[test]
    fn a_child_that_ran_thirty_seconds_starts_over_from_the_first_delay() {
        let t0 = Instant::now();
        let mut restarts = Restarts { failures: 6 };
        let died = t0 + STABLE_AFTER;
        assert_eq!(restarts.died(t0, died), died + FIRST_DELAY);
        assert_eq!(restarts.failures, 1);
    }

    #[test]
    fn a_reload_keeps_unchanged_children_stops_removed_and_starts_new() {
        let old = ["tap a", "tap b", "vhost c"];
        let new = ["tap b", "tap d", "tap a"];
        let plan = reload(&old, &new);
        assert_eq!(plan.keep, [(0, 2), (1, 0)]);
        assert_eq!(plan.stop, [2]);
        assert_eq!(plan.start, [1]);
    }

    #[test]
    fn a_reload_of_the_same_file_changes_nothing() {
        let lines = ["x", "y"];
        let plan = reload(&lines, &lines);
        assert_eq!(plan.keep, [(0, 0), (1, 1)]);
        assert!(plan.stop.is_empty() && plan.start.is_empty());
    }
}
