//! glibc allocator settings for Warren's long-running processes (a node, the
//! connector).
//!
//! glibc serves an allocation of at least its mmap threshold (128 KiB at
//! first) with a mapping of its own, unmapped when freed, and raises that
//! threshold to the largest such block freed so far (up to 32 MiB); it gives
//! back the free top of a heap beyond the trim threshold (twice the mmap
//! threshold). Both hurt a long-running process:
//! - a node that handled a deploy (a JS bundle of about 10 MiB, read and
//!   hashed whole) kept tens of MiB per allocator arena that nothing used
//!   (bench/runtime: 94 MiB anonymous in the node process after ten JS
//!   deploys, 27 MiB of it in use);
//! - the TCP tunnel's reader takes 256 KiB buffers, a new one whenever frames
//!   of the last are still queued on their streams: each was mapped and
//!   faulted in afresh, then given back, page by page (bench/tunnel: uploads
//!   over TLS/TCP 620–701 MiB/s, 989–1111 with these settings in the connector
//!   and the edge).
//!
//! [`tune`] fixes the mmap threshold at [`MMAP_THRESHOLD`] and the trim
//! threshold at [`TRIM_THRESHOLD`]. It does nothing under other C libraries:
//! the static musl connector allocates with mimalloc instead.

/// Allocations of this size or more get pages of their own from the kernel
/// and give them back when freed.
pub const MMAP_THRESHOLD: i32 = 4 << 20;

/// Free memory at the top of an allocator heap kept for reuse, not given
/// back: what glibc would keep (twice the mmap threshold) had its dynamic
/// threshold stopped at [`MMAP_THRESHOLD`]. Fixing the mmap threshold also
/// fixes this one at 128 KiB unless it is set, and then every buffer between
/// the two is faulted in afresh.
pub const TRIM_THRESHOLD: i32 = 2 * MMAP_THRESHOLD;

/// Applies [`MMAP_THRESHOLD`] and [`TRIM_THRESHOLD`] to this process's glibc
/// allocator (nothing elsewhere). Call it once at start, before the process
/// allocates in bulk.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it takes glibc's own
    // locks and is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
