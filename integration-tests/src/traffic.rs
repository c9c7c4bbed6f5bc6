//! A background loop of HTTP GETs through a proxy listener, for scenarios
//! where "no request fails while X happens" is the assertion.
//!
//! Owns the loop and its tally only; what counts as a failure is anything but
//! a `200` (connection errors and timeouts included). Each request is a new
//! connection ([`crate::http`]), so a listener that stops accepting even for a
//! moment is seen.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Pause between two requests: enough traffic to see a gap, little CPU.
pub const PACE: Duration = Duration::from_millis(10);

/// What the loop saw.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// `200` answers, by body (the backends answer their id).
    pub ok: BTreeMap<String, u64>,
    /// Every other outcome, in order: `status body` or the error.
    pub failures: Vec<String>,
}

impl Tally {
    /// `200` answers in all.
    pub fn ok_total(&self) -> u64 {
        self.ok.values().sum()
    }
}

/// A running loop; [`TrafficLoop::stop`] ends it and returns the tally.
#[derive(Debug)]
pub struct TrafficLoop {
    tally: Arc<Mutex<Tally>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TrafficLoop {
    /// GETs `http://{addr}{path}` one after another until stopped.
    pub fn start(addr: SocketAddr, path: &str) -> Self {
        Self::start_bounded(addr, path, u64::MAX)
    }

    /// As [`TrafficLoop::start`], sending at most `max` requests.
    pub fn start_bounded(addr: SocketAddr, path: &str, max: u64) -> Self {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = CancellationToken::new();
        let (t, s, path) = (Arc::clone(&tally), stop.clone(), path.to_string());
        let task = tokio::spawn(async move {
            let mut sent = 0u64;
            while !s.is_cancelled() && sent < max {
                sent += 1;
                let outcome = crate::http::get(addr, &path).await;
                if let Ok(mut t) = t.lock() {
                    match outcome {
                        Ok(r) if r.status == 200 => *t.ok.entry(r.body).or_insert(0) += 1,
                        Ok(r) => t.failures.push(format!("{} {}", r.status, r.body)),
                        Err(e) => t.failures.push(format!("{e:#}")),
                    }
                }
                tokio::time::sleep(PACE).await;
            }
        });
        TrafficLoop {
            tally,
            stop,
            task: Some(task),
        }
    }

    /// The tally so far.
    pub fn tally(&self) -> Tally {
        self.tally.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Ends the loop (after the request in flight) and returns the tally.
    pub async fn stop(mut self) -> Tally {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.tally()
    }
}

impl Drop for TrafficLoop {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::HttpServer;
    use crate::ports::loopback;

    #[tokio::test]
    async fn counts_answers_and_failures() {
        let s = HttpServer::start(loopback(1), "r1").await.unwrap();
        let l = TrafficLoop::start(s.addr(), "/");
        crate::assert_eventually!(Duration::from_secs(5), "3 answers", async || {
            let n = l.tally().ok_total();
            anyhow::ensure!(n >= 3, "{n}");
            Ok(())
        });
        s.stop().await;
        crate::assert_eventually!(Duration::from_secs(5), "a failure", async || {
            let t = l.tally();
            anyhow::ensure!(!t.failures.is_empty(), "{t:?}");
            Ok(())
        });
        let t = l.stop().await;
        assert!(t.ok["r1"] >= 3, "{t:?}");
    }
}
