//! The live tail (`GET /workers/scripts/{name}/tail`): newline-delimited
//! JSON, a [`TailHello`] first, then one [`TailEvent`] per request, and a
//! [`TailClosed`] last when the server ends the stream.

use serde::{Deserialize, Serialize};

/// The first line: the subscription is live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailHello {
    /// The worker followed.
    pub tail: String,
    /// Always `true`.
    pub connected: bool,
}

/// The last line: why the server ended the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailClosed {
    /// `worker_deleted` (the worker was deleted) or `too_slow` (the client
    /// read too slowly and its buffer filled up).
    pub closed: String,
}

/// One request's trace, in the spirit of a Workers tail event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    pub request: TailRequest,
    /// Status sent to the client.
    pub status: u16,
    /// Wall time from arrival until the worker finished (waitUntil included).
    pub wall_ms: u64,
    /// CPU time spent in the guest.
    pub cpu_ms: u64,
    /// What the worker printed.
    #[serde(default)]
    pub logs: Vec<TailLog>,
    /// Exceptions and limit errors, as messages.
    #[serde(default)]
    pub exceptions: Vec<String>,
}

/// `request` of a [`TailEvent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailRequest {
    /// HTTP method.
    pub method: String,
    /// Full URL as received.
    pub url: String,
}

/// One line a worker printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TailLog {
    /// `log` (stdout) or `error` (stderr).
    pub level: String,
    /// The line.
    pub message: String,
}

/// Any line of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TailLine {
    /// The first line.
    Hello(TailHello),
    /// The last line.
    Closed(TailClosed),
    /// A request.
    Event(TailEvent),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_told_apart() {
        let hello = serde_json::to_string(&TailHello {
            tail: "w".into(),
            connected: true,
        })
        .unwrap();
        assert_eq!(hello, r#"{"tail":"w","connected":true}"#);
        assert!(matches!(
            serde_json::from_str(&hello).unwrap(),
            TailLine::Hello(_)
        ));
        let closed = r#"{"closed":"too_slow"}"#;
        assert_eq!(
            serde_json::from_str::<TailLine>(closed).unwrap(),
            TailLine::Closed(TailClosed {
                closed: "too_slow".into()
            })
        );
        let event = r#"{"scriptName":"w","outcome":"ok","eventTimestamp":1,"requestId":"r","request":{"method":"GET","url":"http://w/"},"status":200,"wallMs":3,"cpuMs":1,"logs":[{"level":"log","message":"hi"}],"exceptions":[]}"#;
        let TailLine::Event(e) = serde_json::from_str(event).unwrap() else {
            panic!("an event");
        };
        assert_eq!((e.status, e.logs[0].message.as_str()), (200, "hi"));
        assert_eq!(serde_json::to_string(&e).unwrap(), event);
    }
}
