//! Restart and image-pull back-off, as the kubelet's `flowcontrol.Backoff`: the first retry is
//! immediate, then 10 s, doubling up to 5 min; an entry idle (no failure) for twice the maximum
//! (10 min: a container that ran that long) starts again from the beginning.
//!
//! Pure bookkeeping on instants; it never sleeps.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The kubelet's initial container restart back-off.
pub const INITIAL: Duration = Duration::from_secs(10);
/// The kubelet's maximum container restart back-off.
pub const MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Entry {
    delay: Duration,
    /// When the last failure was recorded.
    at: Instant,
}

/// Back-off per key (`<container>` or `image:<container>`).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    entries: HashMap<String, Entry>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(INITIAL, MAX)
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            entries: HashMap::new(),
        }
    }

    /// Records a failure of `key` at `now` (the time the container finished): the next retry
    /// waits the current delay, which doubles for the one after.
    pub fn next(&mut self, key: &str, now: Instant) {
        let entry = match self.entries.get(key) {
            Some(entry) if now.saturating_duration_since(entry.at) <= self.max * 2 => Entry {
                delay: (entry.delay * 2).min(self.max),
                at: now,
            },
            _ => Entry {
                delay: self.initial,
                at: now,
            },
        };
        self.entries.insert(key.to_string(), entry);
    }

    /// Whether `key` must still wait at `now`; `Some(delay)` is the delay it waits out.
    pub fn in_backoff(&self, key: &str, now: Instant) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        (now.saturating_duration_since(entry.at) < entry.delay).then_some(entry.delay)
    }

    /// When `key` may be retried, if it is waiting.
    pub fn ready_at(&self, key: &str) -> Option<Instant> {
        self.entries.get(key).map(|e| e.at + e.delay)
    }

    /// Forgets `key` after a success that lasted (a container that ran for 10 min).
    pub fn reset(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Forgets entries idle for longer than twice the maximum.
    pub fn gc(&mut self, now: Instant) {
        let max = self.max * 2;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.at) <= max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum_and_reset_after_a_long_quiet_time() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        assert_eq!(
            b.in_backoff("c", t0),
            None,
            "the first restart is immediate"
        );
        b.next("c", t0);
        assert_eq!(b.in_backoff("c", t0), Some(Duration::from_secs(10)));
        assert_eq!(b.in_backoff("c", t0 + Duration::from_secs(10)), None);
        let mut t = t0;
        let mut delays = Vec::new();
        for _ in 0..7 {
            t += Duration::from_secs(1);
            b.next("c", t);
            delays.push(b.in_backoff("c", t).map(|d| d.as_secs()));
        }
        assert_eq!(delays, [20, 40, 80, 160, 300, 300, 300].map(Some).to_vec());
        // Ten minutes without a failure: back to the start.
        let later = t + Duration::from_secs(601);
        b.next("c", later);
        assert_eq!(b.in_backoff("c", later), Some(Duration::from_secs(10)));
    }
}
