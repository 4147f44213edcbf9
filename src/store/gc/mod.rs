//! Garbage collection of the disk tier: the eviction plan (what to delete and why). The
//! collector that applies it with the watermarks is not wired in yet.

pub mod plan;
