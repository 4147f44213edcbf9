//! Client commands that talk to a running berth over its admin API.

pub mod hosts_toml;
pub mod preheat;
