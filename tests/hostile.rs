//! The trust boundary, tried as an attacker would: one test per attack, each named for it.
//! Requests that claim trust they do not have, upstreams that redirect inward or lie about
//! lengths, clients that hold connections open, and registries that try to read each other's
//! content. Each test fails if the guard it names is missing.

mod common;
