//! Garbage collection of the disk tier: the eviction plan (what to delete and why). The
//! collector that builds its inventory and applies it is `registry::gc`.

pub mod plan;
