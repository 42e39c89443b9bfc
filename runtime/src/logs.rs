//! Live logs: each request's `console.*` output (stdout → `log`, stderr →
//! `error`), outcome, status and timing, published as one event per request to
//! the worker's subscribers (`warren tail`). Nothing is kept when nobody listens.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::broadcast;

/// Events buffered per subscriber before the slowest one starts missing some.
const CHANNEL: usize = 1024;

/// One line a worker printed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LogLine {
    /// `log` (stdout) or `error` (stderr).
    pub level: &'static str,
    /// The line.
    pub message: String,
}

/// One request's trace, in the spirit of a Workers tail event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TailEvent {
    /// Worker name.
    pub script_name: String,
    /// `ok`, `exception`, `exceededCpu`, `exceededMemory`, `exceededWallClock`, `canceled`.
    pub outcome: String,
    /// Milliseconds since the Unix epoch when the request arrived.
    pub event_timestamp: u64,
    /// The request id (also in the `warren-request-id` response header).
    pub request_id: String,
    /// Method and URL of the request.
    pub request: RequestInfo,
    /// Status sent to the client.
    pub status: u16,
    /// Wall time from arrival until the worker finished (waitUntil included).
    pub wall_ms: u64,
    /// CPU time spent in the guest.
    pub cpu_ms: u64,
    /// What the worker printed.
    pub logs: Vec<LogLine>,
    /// Exceptions and limit errors, as messages.
    pub exceptions: Vec<String>,
}

/// The request part of a [`TailEvent`].
#[derive(Debug, Clone, Serialize)]
pub struct RequestInfo {
    /// HTTP method.
    pub method: String,
    /// Full URL as received.
    pub url: String,
}

/// Splits captured output into lines of one level.
pub fn lines(level: &'static str, bytes: &[u8]) -> Vec<LogLine> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| LogLine {
            level,
            message: l.to_owned(),
        })
        .collect()
}

/// Per-worker channels of tail events.
#[derive(Debug, Default)]
pub struct LogHub {
    channels: Mutex<HashMap<String, broadcast::Sender<TailEvent>>>,
}

impl LogHub {
    /// Follows `worker`'s events from now on.
    pub fn subscribe(&self, worker: &str) -> Option<broadcast::Receiver<TailEvent>> {
        let mut c = self.channels.lock().ok()?;
        Some(
            c.entry(worker.to_owned())
                .or_insert_with(|| broadcast::channel(CHANNEL).0)
                .subscribe(),
        )
    }

    /// Whether anyone follows `worker` (capture is skipped otherwise).
    pub fn has_subscribers(&self, worker: &str) -> bool {
        self.channels
            .lock()
            .ok()
            .and_then(|c| c.get(worker).map(|s| s.receiver_count() > 0))
            .unwrap_or(false)
    }

    /// Sends an event to `worker`'s subscribers.
    pub fn publish(&self, event: TailEvent) {
        let Ok(mut c) = self.channels.lock() else {
            return;
        };
        let name = event.script_name.clone();
        if let Some(tx) = c.get(&name)
            && tx.send(event).is_err()
        {
            // Nobody listens any more.
            c.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_splits_into_lines_by_level() {
        let l = lines("log", b"a\n\nb\r\nc");
        let m: Vec<&str> = l.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(m, ["a", "b", "c"]);
        assert!(l.iter().all(|l| l.level == "log"));
    }
}
