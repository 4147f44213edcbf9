//! The in-process tests, one module per concern, in one test binary (one link instead of
//! one per file). `common` holds the fake upstream with faults and the berth harness.

// The fake upstream answers every route and fault in one match: long by design; the 80-line
// rule is for src/.
#[allow(clippy::too_many_lines)]
mod common;

mod api;
mod architecture;
mod auth;
mod blobs;
mod cli;
mod client_auth;
mod deploy;
mod gc;
mod gc_plan;
mod hostile;
mod listener;
mod manifests;
mod parsers;
mod peers;
mod pieces;
mod preheat;
mod referrers;
mod restart;
mod resume;
mod tls;
