//! Helpers of the alert tests: the loopback servers of
//! `shardcron_testkit::capture` (a recording HTTP server that validates requests
//! and fails the first ones, a server that never answers, a minimal SMTP server),
//! a buffer to capture log output, and a sample alert.

#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use shardcron_alert::{Alert, AlertKind, SenderOptions};
pub(crate) use shardcron_testkit::capture::*;

/// A log buffer for a `tracing` subscriber.
#[derive(Clone, Default)]
pub(crate) struct LogBuf(pub(crate) Arc<Mutex<Vec<u8>>>);

impl LogBuf {
    pub(crate) fn text(&self) -> String {
        self.0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Captures every event of this thread, at every level, until the guard drops.
    pub(crate) fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let buf = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || buf.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }
}

impl Write for LogBuf {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn fire_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T10:00:05Z")
        .map(|d| d.with_timezone(&Utc))
        .expect("time")
}

pub(crate) fn alert(kind: AlertKind, job: &str) -> Alert {
    Alert {
        kind,
        job: job.to_owned(),
        item: 3,
        fire_time: fire_time(),
        instance: "node-a@10.0.0.1#42".to_owned(),
        execution_id: "exec-0001".to_owned(),
        attempt: 2,
        cause: "exit status 7: disk full".to_owned(),
    }
}

/// Short delays so that retries take milliseconds.
pub(crate) fn fast_options() -> SenderOptions {
    SenderOptions {
        queue_capacity: 64,
        max_in_flight: 4,
        max_attempts: 5,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        attempt_timeout: Duration::from_secs(5),
    }
}
