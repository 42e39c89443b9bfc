//! Per-worker limits (Workers field names) and how they are enforced: CPU time
//! by epoch callbacks measuring time spent running the guest, memory by a
//! store limiter, wall clock by a timeout, subrequests by a counter.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Limits of one worker. Defaults from [`Limits::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// CPU time per request, measured while the guest runs (default 50 ms).
    pub cpu_ms: u64,
    /// Linear memory per instance (default 128 MiB).
    pub memory_bytes: usize,
    /// Wall-clock time per request until the response head (default 30 s).
    pub wall_clock: Duration,
    /// Outgoing requests per request (default 50).
    pub subrequests: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu_ms: 50,
            memory_bytes: 128 << 20,
            wall_clock: Duration::from_secs(30),
            subrequests: 50,
        }
    }
}

/// Which limit ended a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// `limits.cpu_ms`.
    Cpu,
    /// Memory per instance.
    Memory,
    /// Wall clock.
    WallClock,
}

impl LimitHit {
    /// The limit's name in logs.
    pub fn name(self) -> &'static str {
        match self {
            LimitHit::Cpu => "cpu_ms",
            LimitHit::Memory => "memory",
            LimitHit::WallClock => "wall_clock",
        }
    }
}

/// CPU time the guest has used: the sum of the thread CPU time of the polls of
/// its future (wasm runs only inside polls), plus the poll in progress.
#[derive(Debug)]
pub struct CpuMeter {
    base: Instant,
    used_ns: AtomicU64,
    poll_started_ns: AtomicU64,
    exceeded: AtomicBool,
}

impl CpuMeter {
    /// A meter at zero.
    pub fn new() -> Arc<Self> {
        Arc::new(CpuMeter {
            base: Instant::now(),
            used_ns: AtomicU64::new(0),
            poll_started_ns: AtomicU64::new(u64::MAX),
            exceeded: AtomicBool::new(false),
        })
    }

    /// The calling thread's CPU time. A poll starts and ends on one thread,
    /// so the difference is CPU the guest used — not time it spent waiting for
    /// a core on a busy node, which would charge one tenant for another's load.
    fn now_ns(&self) -> u64 {
        use nix::time::{ClockId, clock_gettime};
        match clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID) {
            Ok(t) => (t.tv_sec() as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(t.tv_nsec() as u64),
            Err(_) => self.base.elapsed().as_nanos() as u64,
        }
    }

    /// Marks the start of a poll.
    pub fn enter(&self) {
        self.poll_started_ns.store(self.now_ns(), Ordering::Relaxed);
    }

    /// Marks the end of a poll.
    pub fn leave(&self) {
        let start = self.poll_started_ns.swap(u64::MAX, Ordering::Relaxed);
        if start != u64::MAX {
            self.used_ns
                .fetch_add(self.now_ns().saturating_sub(start), Ordering::Relaxed);
        }
    }

    /// Time used so far, the current poll included.
    pub fn used(&self) -> Duration {
        let start = self.poll_started_ns.load(Ordering::Relaxed);
        let running = if start == u64::MAX {
            0
        } else {
            self.now_ns().saturating_sub(start)
        };
        Duration::from_nanos(self.used_ns.load(Ordering::Relaxed) + running)
    }

    /// Records that the limit was exceeded.
    pub fn set_exceeded(&self) {
        self.exceeded.store(true, Ordering::Relaxed);
    }

    /// Whether the limit was exceeded.
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }
}

/// Wraps a future so the meter counts the time spent inside its polls.
pub struct Metered<F> {
    inner: std::pin::Pin<Box<F>>,
    meter: Arc<CpuMeter>,
}

impl<F> Metered<F> {
    /// Meters `inner` with `meter`.
    pub fn new(inner: F, meter: Arc<CpuMeter>) -> Self {
        Metered {
            inner: Box::pin(inner),
            meter,
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.meter.enter();
        let r = self.inner.as_mut().poll(cx);
        self.meter.leave();
        r
    }
}

/// Refuses memory growth past the limit, remembering that it did.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: usize,
    /// Set when the guest asked for more than the limit.
    pub hit: bool,
}

impl MemoryLimiter {
    /// A limiter at `limit` bytes per memory.
    pub fn new(limit: usize) -> Self {
        MemoryLimiter { limit, hit: false }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            wasmtime::bail!("memory limit of {} bytes exceeded", self.limit);
        }
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_meter_counts_time_inside_polls_only() {
        let meter = CpuMeter::new();
        let busy = Metered::new(
            async {
                // 30 ms of this thread's CPU time, however busy the machine.
                let cpu = || {
                    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
                        .expect("thread CPU clock");
                    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
                };
                let t = cpu();
                while cpu() - t < Duration::from_millis(30) {}
                tokio::time::sleep(Duration::from_millis(100)).await;
            },
            meter.clone(),
        );
        busy.await;
        let used = meter.used();
        assert!(used >= Duration::from_millis(30), "{used:?}");
        assert!(
            used < Duration::from_millis(100),
            "sleeping is not CPU time: {used:?}"
        );
    }
}
