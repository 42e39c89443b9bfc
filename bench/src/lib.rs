//! Shared pieces of Warren's benchmarks: a keep-alive HTTP load generator
//! with latency percentiles, and launchers for the processes under test
//! (`warren serve`, `workerd`) that are killed when dropped.

pub mod load;
pub mod procs;
