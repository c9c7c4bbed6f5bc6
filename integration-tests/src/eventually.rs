//! Eventually-assertions: retry a check with short polling until it passes or a
//! deadline expires, then fail with the last observed value.
//!
//! Owns the retry loop only; what "passes" means is the caller's closure. Used
//! everywhere a test would otherwise sleep and hope.

use std::fmt::Display;
use std::time::Duration;

use tokio::time::Instant;

/// How often a check is retried.
pub const POLL: Duration = Duration::from_millis(50);

/// Runs `check` until it returns `Ok` or `deadline` passes. An `Err` from the
/// check means "not yet" and carries what was observed; after the deadline the
/// last such error is returned, prefixed with `what` and the time waited.
pub async fn eventually<T, F>(
    what: impl Display,
    deadline: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: AsyncFnMut() -> anyhow::Result<T>,
{
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        // A single check must not outlive the deadline by much: bound it.
        let remaining = deadline.saturating_sub(start.elapsed()).max(POLL);
        let last = match tokio::time::timeout(remaining, check()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(err)) => err,
            Err(_) => anyhow::anyhow!("check did not complete within {remaining:?}"),
        };
        if start.elapsed() >= deadline {
            return Err(last.context(format!(
                "timed out after {:?} ({attempts} attempts) waiting for: {what}; last observed",
                start.elapsed()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Panics unless `check` passes within the deadline; evaluates to the value the
/// passing check returned.
///
/// ```ignore
/// assert_eventually!(Duration::from_secs(5), "b1 healthy", async || {
///     let flags = envoy.health_flags("api", b1).await?;
///     anyhow::ensure!(flags == "healthy", "health_flags = {flags}");
///     Ok(())
/// });
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($deadline:expr, $what:expr, $check:expr $(,)?) => {
        match $crate::eventually::eventually($what, $deadline, $check).await {
            Ok(value) => value,
            Err(err) => panic!("{err:?}"),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn passes_once_the_check_passes() {
        let n = AtomicU32::new(0);
        let got = eventually("three tries", Duration::from_secs(5), async || {
            let seen = n.fetch_add(1, Ordering::SeqCst) + 1;
            anyhow::ensure!(seen >= 3, "seen = {seen}");
            Ok(seen)
        })
        .await
        .unwrap();
        assert_eq!(got, 3);
    }

    #[tokio::test]
    async fn fails_with_the_last_observed_value() {
        let n = AtomicU32::new(0);
        let err = eventually(
            "never",
            Duration::from_millis(300),
            async || -> anyhow::Result<()> {
                let seen = n.fetch_add(1, Ordering::SeqCst);
                anyhow::bail!("seen = {seen}")
            },
        )
        .await
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("waiting for: never"), "{text}");
        let last = n.load(Ordering::SeqCst) - 1;
        assert!(text.contains(&format!("seen = {last}")), "{text}");
        assert!(last >= 2, "polled only {last} times");
    }

    #[tokio::test]
    async fn a_hanging_check_is_bounded_by_the_deadline() {
        let started = Instant::now();
        let err = eventually("hang", Duration::from_millis(200), async || {
            std::future::pending::<()>().await;
            Ok(())
        })
        .await
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(format!("{err:#}").contains("did not complete"), "{err:#}");
    }

    #[tokio::test]
    async fn macro_returns_the_value() {
        let v = assert_eventually!(Duration::from_secs(1), "at once", async || Ok(7));
        assert_eq!(v, 7);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for: impossible")]
    async fn macro_panics_on_timeout() {
        assert_eventually!(
            Duration::from_millis(100),
            "impossible",
            async || -> anyhow::Result<()> { anyhow::bail!("nope") }
        );
    }
}
