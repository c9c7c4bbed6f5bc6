//! A limit on how often one kind of log line is written.
//!
//! Some warnings are caused by whoever is on the other end of a socket (a
//! client NACKing in a loop, a page POSTing to the admin) or repeat as fast
//! as the loop that hits them (accept failing for lack of descriptors). Each
//! is worth a line, but not a line per event: a [`Throttle`] lets a few
//! through per window and counts the rest, so the next line written can say
//! how many were left out.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// At most `burst` lines per `window`; the others are counted.
///
/// Shared by reference (it locks internally), so every stream or connection
/// of one server can draw on the same allowance.
#[derive(Debug)]
pub struct Throttle {
    burst: u32,
    window: Duration,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl Throttle {
    /// At most `burst` lines per `window` (a `burst` of 0 is taken as 1).
    pub fn new(burst: u32, window: Duration) -> Self {
        Throttle {
            burst: burst.max(1),
            window,
            state: Mutex::new(Window {
                started: None,
                written: 0,
                suppressed: 0,
            }),
        }
    }

    /// One line per second.
    pub fn per_second() -> Self {
        Throttle::new(1, Duration::from_secs(1))
    }

    /// Whether a line may be written now. `Some(n)`: write it, and say that
    /// `n` lines were left out since the last one written; `None`: leave it
    /// out (it is counted).
    pub fn allow(&self) -> Option<u64> {
        // A panic while holding this lock cannot leave the counts invalid.
        let mut w = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if w.started
            .is_none_or(|s| now.duration_since(s) >= self.window)
        {
            w.started = Some(now);
            w.written = 0;
        }
        if w.written < self.burst {
            w.written += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// `s` cut to at most `max` bytes (at a character boundary), with `…` and
/// the full length appended when cut: for client-chosen text in logs and
/// status pages.
pub fn truncate(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if s.len() <= max {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…({} bytes)", &s[..end], s.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn lets_a_burst_through_per_window_and_counts_the_rest() {
        let t = Throttle::new(2, Duration::from_secs(1));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(t.allow(), None);
        }
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(t.allow(), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        // The first line of the next window reports the six left out.
        assert_eq!(t.allow(), Some(6));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
    }

    #[test]
    fn truncates_at_a_character_boundary_and_says_how_long_it_was() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("abcdef", 3), "abc…(6 bytes)");
        // 'é' is two bytes: a cut inside it moves back.
        assert_eq!(truncate("aé", 2), "a…(3 bytes)");
    }
}
