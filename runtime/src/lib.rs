//! The worker host (wasmtime): arrives with the runtime issue. Present so the
//! workspace has the shape of DESIGN.md §2 from the start.
