//! Test plumbing with real parts: a private network of the test's own
//! ([`netns`]), a real DNS server inside it ([`dnsmasq`]), and real HTTP
//! origins ([`origin`]). Tests panic with a clear message when the machine
//! cannot provide them (run `scripts/setup.sh` as root).

pub mod dnsmasq;
pub mod netns;
pub mod origin;
pub mod tls;

use std::time::Duration;

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what` after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
