//! What to evict, decided from a snapshot of the store: a pure function, so that its rules can
//! be checked against a model with generated inventories.
//!
//! Rules:
//! - the unit of eviction is an image version: a root manifest (or index) with every blob it
//!   references; blobs no manifest references are units of their own;
//! - a version is kept whole when it is pinned or when any of its blobs is in use (being
//!   filled or read, or read within the in-use window);
//! - candidates go least recently pulled first; a version a tag still points to counts as
//!   `SUPERSEDED_GRACE` younger, so superseded versions of similar age go first;
//! - a blob is deleted only when no version left in the store references it.

use std::collections::HashMap;

use crate::oci::digest::Digest;

/// How much younger a version a tag still points to counts, in seconds.
pub const SUPERSEDED_GRACE: u64 = 3600;

#[derive(Debug, Clone)]
pub struct Blob {
    pub size: u64,
    /// Seconds since the epoch.
    pub last_access: u64,
    /// Being filled or read right now.
    pub busy: bool,
}

#[derive(Debug, Clone)]
pub struct Version {
    pub root: Digest,
    /// Every digest of the version, the root included.
    pub digests: Vec<Digest>,
    pub last_pulled: u64,
    /// A tag points to it now.
    pub current: bool,
    pub pinned: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub blobs: HashMap<Digest, Blob>,
    pub versions: Vec<Version>,
}

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub now: u64,
    pub in_use_window: u64,
    /// Evict until the store holds at most this many bytes.
    pub target: u64,
    /// With `max_idle`: evict what was last pulled before this, whatever the usage.
    pub idle_before: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Its version was the least recently pulled.
    LeastRecentlyPulled,
    /// No manifest references it.
    Unreferenced,
    /// Not pulled for longer than `max_idle`.
    Idle,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub evict: Vec<(Digest, u64, Reason)>,
    /// Roots of the versions given up (their blobs still used elsewhere are kept).
    pub versions: Vec<Digest>,
    pub freed: u64,
    /// Bytes in the store after the plan.
    pub remaining: u64,
}

impl Inventory {
    pub fn usage(&self) -> u64 {
        self.blobs.values().map(|b| b.size).sum()
    }

    fn in_use(&self, d: &Digest, p: &Policy) -> bool {
        self.blobs.get(d).is_some_and(|b| b.busy || p.now.saturating_sub(b.last_access) < p.in_use_window)
    }

    /// Whether a version must be kept whole.
    pub(crate) fn protected(&self, v: &Version, p: &Policy) -> bool {
        v.pinned || v.digests.iter().any(|d| self.in_use(d, p))
    }
}

enum Unit<'a> {
    Version(&'a Version),
    Orphan(&'a Digest),
}

pub fn plan(inv: &Inventory, p: &Policy) -> Plan {
    let mut remaining = inv.usage();
    let mut out = Plan::default();
    // How many versions still in the store reference each digest.
    let mut refs: HashMap<&Digest, usize> = HashMap::new();
    for v in &inv.versions {
        for d in &v.digests {
            *refs.entry(d).or_default() += 1;
        }
    }
    let mut units: Vec<(u64, Unit)> = inv
        .versions
        .iter()
        .filter(|v| !inv.protected(v, p))
        .map(|v| (v.last_pulled + if v.current { SUPERSEDED_GRACE } else { 0 }, Unit::Version(v)))
        .collect();
    units.extend(
        inv.blobs
            .iter()
            .filter(|(d, _)| !refs.contains_key(d) && !inv.in_use(d, p))
            .map(|(d, b)| (b.last_access, Unit::Orphan(d))),
    );
    units.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| unit_digest(&a.1).cmp(unit_digest(&b.1))));

    for (key, unit) in units {
        let idle = p.idle_before.is_some_and(|before| key < before);
        if remaining <= p.target && !idle {
            break;
        }
        match unit {
            Unit::Orphan(d) => {
                let size = inv.blobs[d].size;
                out.evict.push((d.clone(), size, if idle { Reason::Idle } else { Reason::Unreferenced }));
                remaining -= size;
            }
            Unit::Version(v) => {
                out.versions.push(v.root.clone());
                for d in &v.digests {
                    let n = refs.get_mut(d).expect("counted above");
                    *n -= 1;
                    if *n == 0 && !inv.in_use(d, p) {
                        if let Some(b) = inv.blobs.get(d) {
                            let reason = if idle { Reason::Idle } else { Reason::LeastRecentlyPulled };
                            out.evict.push((d.clone(), b.size, reason));
                            remaining -= b.size;
                        }
                    }
                }
            }
        }
    }
    out.freed = out.evict.iter().map(|(_, s, _)| s).sum();
    out.remaining = remaining;
    out
}

fn unit_digest<'a>(u: &'a Unit) -> &'a Digest {
    match u {
        Unit::Version(v) => &v.root,
        Unit::Orphan(d) => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn version(root: u8, blobs: &[u8], last_pulled: u64, current: bool) -> Version {
        let mut digests = vec![d(root)];
        digests.extend(blobs.iter().map(|&b| d(b)));
        Version { root: d(root), digests, last_pulled, current, pinned: false }
    }

    fn inventory(versions: Vec<Version>) -> Inventory {
        let mut blobs = HashMap::new();
        for v in &versions {
            for digest in &v.digests {
                blobs.insert(digest.clone(), Blob { size: 10, last_access: 0, busy: false });
            }
        }
        Inventory { blobs, versions }
    }

    #[test]
    fn least_recently_pulled_goes_first_and_shared_blobs_stay() {
        // Versions 1 (old) and 2 (newer) share blob 100.
        let inv = inventory(vec![version(1, &[100, 11], 10, true), version(2, &[100, 21], 20, true)]);
        let plan = plan(&inv, &Policy { now: 10_000, in_use_window: 60, target: 40, idle_before: None });
        assert_eq!(plan.versions, vec![d(1)]);
        let evicted: Vec<Digest> = plan.evict.iter().map(|e| e.0.clone()).collect();
        assert_eq!(evicted, vec![d(1), d(11)], "the shared blob must stay");
        assert_eq!(plan.remaining, 30);
    }

    #[test]
    fn superseded_versions_go_before_current_ones_of_similar_age() {
        let inv = inventory(vec![version(1, &[11], 100, true), version(2, &[21], 200, false)]);
        let plan = plan(&inv, &Policy { now: 10_000, in_use_window: 60, target: 20, idle_before: None });
        assert_eq!(plan.versions, vec![d(2)], "the superseded version is younger but goes first");
    }

    #[test]
    fn max_idle_evicts_what_was_not_pulled_for_long_even_under_target() {
        let inv = inventory(vec![version(1, &[11], 100, false), version(2, &[21], 9_000, false)]);
        let policy = Policy { now: 10_000, in_use_window: 60, target: 1_000, idle_before: Some(5_000) };
        let plan = plan(&inv, &policy);
        assert_eq!(plan.versions, vec![d(1)]);
        assert!(plan.evict.iter().all(|e| e.2 == Reason::Idle));
    }

    #[test]
    fn pinned_and_in_use_versions_are_kept_whole() {
        let mut inv = inventory(vec![version(1, &[11], 1, false), version(2, &[21, 22], 2, false)]);
        inv.versions[0].pinned = true;
        inv.blobs.get_mut(&d(22)).unwrap().last_access = 9_990; // read 10 s ago
        let plan = plan(&inv, &Policy { now: 10_000, in_use_window: 60, target: 0, idle_before: None });
        assert!(plan.evict.is_empty(), "{plan:?}");
        assert_eq!(plan.remaining, 50);
    }
}
