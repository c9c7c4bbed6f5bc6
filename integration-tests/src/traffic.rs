//! Background loops of calls through a proxy, for scenarios where "no
//! request fails while X happens" is the assertion.
//!
//! Owns the loops and their records only. [`TrafficLoop`] runs HTTP GETs and
//! tallies them: a failure is anything but a `200` (connection errors and
//! timeouts included). Each request is a new connection ([`crate::http`]),
//! so a listener that stops accepting even for a moment is seen.
//! [`CallLoop`] runs any call (kubectl, a GET) and records when each one
//! started, so a scenario can count only the calls started after an event.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
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

/// One call of a [`CallLoop`]: when it started and what it gave (a label
/// such as the answering backend's id, or the error).
#[derive(Debug, Clone)]
pub struct Call {
    pub started: Instant,
    pub outcome: Result<String, String>,
}

/// Calls, split by outcome.
#[derive(Debug, Clone, Default)]
pub struct Calls {
    /// Successful calls by label.
    pub ok: BTreeMap<String, u64>,
    /// Every failure, in order.
    pub failures: Vec<String>,
}

impl Calls {
    /// Every call counted.
    pub fn total(&self) -> u64 {
        self.ok.values().sum::<u64>() + self.failures.len() as u64
    }

    fn of<'a>(calls: impl Iterator<Item = &'a Call>) -> Calls {
        let mut c = Calls::default();
        for call in calls {
            match &call.outcome {
                Ok(label) => *c.ok.entry(label.clone()).or_insert(0) += 1,
                Err(e) => c.failures.push(e.clone()),
            }
        }
        c
    }
}

/// A background loop of one kind of call, one after another, recording each.
#[derive(Debug)]
pub struct CallLoop {
    calls: Arc<Mutex<Vec<Call>>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl CallLoop {
    /// Runs `call` until stopped, `pace` apart.
    pub fn start<F, Fut>(pace: Duration, call: F) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<String>> + Send,
    {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (c, s) = (Arc::clone(&calls), stop.clone());
        let task = tokio::spawn(async move {
            while !s.is_cancelled() {
                let started = Instant::now();
                let outcome = call().await.map_err(|e| format!("{e:#}"));
                if let Ok(mut c) = c.lock() {
                    c.push(Call { started, outcome });
                }
                tokio::time::sleep(pace).await;
            }
        });
        CallLoop {
            calls,
            stop,
            task: Some(task),
        }
    }

    /// The calls started at or after `t` (finished ones only).
    pub fn since(&self, t: Instant) -> Calls {
        let calls = self.calls.lock().map(|c| c.clone()).unwrap_or_default();
        Calls::of(calls.iter().filter(|c| c.started >= t))
    }

    /// The calls started in `[from, to)`.
    pub fn between(&self, from: Instant, to: Instant) -> Calls {
        let calls = self.calls.lock().map(|c| c.clone()).unwrap_or_default();
        Calls::of(calls.iter().filter(|c| c.started >= from && c.started < to))
    }

    /// Ends the loop (after the call in flight).
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for CallLoop {
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

    #[tokio::test]
    async fn call_loop_records_when_calls_started() {
        let s = HttpServer::start(loopback(1), "r1").await.unwrap();
        let addr = s.addr();
        let begun = Instant::now();
        let l = CallLoop::start(Duration::from_millis(5), move || async move {
            let r = crate::http::get(addr, "/").await?;
            anyhow::ensure!(r.status == 200, "{}", r.status);
            Ok(r.body)
        });
        crate::assert_eventually!(Duration::from_secs(5), "3 calls", async || {
            let n = l.since(begun).total();
            anyhow::ensure!(n >= 3, "{n}");
            Ok(())
        });
        let before_stop = Instant::now();
        s.stop().await;
        let stopped = Instant::now();
        // Calls started once the server was gone all fail.
        crate::assert_eventually!(Duration::from_secs(5), "a failure", async || {
            let c = l.since(stopped);
            anyhow::ensure!(!c.failures.is_empty(), "{c:?}");
            Ok(())
        });
        assert!(l.since(stopped).ok.is_empty(), "{:?}", l.since(stopped));
        // (One in flight during the stop may have been cut.)
        let before = l.between(begun, before_stop);
        assert!(before.ok["r1"] >= 3, "{before:?}");
        l.stop().await;
    }
}
