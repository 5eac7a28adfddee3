//! Rate-limited log lines: a flood of identical events (refused connections, descriptor
//! exhaustion) gives one line per interval with the number of events it stands for, instead
//! of one line per event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimited {
    every: Duration,
    last: Mutex<Option<Instant>>,
    /// Events since the last line written.
    pending: AtomicU64,
}

impl RateLimited {
    pub const fn new(every: Duration) -> Self {
        RateLimited { every, last: Mutex::new(None), pending: AtomicU64::new(0) }
    }

    /// Records one event. Returns `Some(n)` when a line should be written now, `n` being the
    /// events it reports (this one included); `None` when it is folded into a later line.
    pub fn hit(&self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    fn hit_at(&self, now: Instant) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match *last {
            Some(t) if now.duration_since(t) < self.every => None,
            _ => {
                *last = Some(now);
                Some(self.pending.swap(0, Ordering::Relaxed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count() {
        let r = RateLimited::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.hit_at(t0), Some(1));
        for i in 1..1000 {
            assert_eq!(r.hit_at(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(r.hit_at(t0 + Duration::from_secs(11)), Some(1000));
        assert_eq!(r.hit_at(t0 + Duration::from_secs(12)), None);
    }
}
