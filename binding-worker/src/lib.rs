//! The binding-worker (Cap'n Proto binding server → HTTP CONNECT to iris): arrives
//! with the binding-path issue. Present so the workspace has the shape of DESIGN.md §2.
