//! The eviction plan against a reference model, on generated inventories: capacity respected
//! whenever something evictable is left, pinned and in-use content never evicted, no retained
//! image left with a missing blob.

use std::collections::HashSet;

use berth::oci::digest::Digest;
use berth::test_util::plan::{plan, Blob, Inventory, Policy, Version};
use proptest::prelude::*;

fn d(n: usize) -> Digest {
    Digest::of(n.to_string().as_bytes())
}

prop_compose! {
    fn inventories()(
        blobs in prop::collection::vec((1u64..100, 0u64..1000, prop::bool::weighted(0.1)), 1..40),
        versions in prop::collection::vec(
            (prop::collection::vec(0usize..40, 1..6), 0u64..1000, any::<bool>(), prop::bool::weighted(0.15)),
            0..12),
    ) -> Inventory {
        let mut inv = Inventory::default();
        for (i, (size, last_access, busy)) in blobs.iter().enumerate() {
            inv.blobs.insert(d(i), Blob { size: *size, last_access: *last_access, busy: *busy });
        }
        for (i, (members, last_pulled, current, pinned)) in versions.into_iter().enumerate() {
            let root = d(1000 + i);
            inv.blobs.insert(root.clone(), Blob { size: 1, last_access: last_pulled, busy: false });
            let mut digests = vec![root.clone()];
            digests.extend(members.into_iter().filter(|m| *m < blobs.len()).map(d));
            inv.versions.push(Version { root, digests, last_pulled, current, pinned });
        }
        inv
    }
}

proptest! {
    #[test]
    fn plan_holds_the_gc_invariants(
        inv in inventories(),
        window in 0u64..300,
        fraction in 0u64..=100,
        idle_before in prop::option::weighted(0.3, 0u64..1000),
    ) {
        let now = 1000;
        let target = inv.usage() * fraction / 100;
        let policy = Policy { now, in_use_window: window, target, idle_before };
        let p = plan(&inv, &policy);
        let evicted: HashSet<&Digest> = p.evict.iter().map(|e| &e.0).collect();
        let gone: HashSet<&Digest> = p.versions.iter().collect();

        // Each digest at most once, and the accounting adds up.
        prop_assert_eq!(evicted.len(), p.evict.len());
        prop_assert_eq!(p.freed, p.evict.iter().map(|e| inv.blobs[&e.0].size).sum::<u64>());
        prop_assert_eq!(p.remaining, inv.usage() - p.freed);

        let in_use = |x: &Digest| inv.blobs.get(x).is_some_and(|b| b.busy || now - b.last_access < window);
        for x in &evicted {
            prop_assert!(!in_use(x), "evicted a blob in use");
        }
        let referenced: HashSet<&Digest> = inv.versions.iter().flat_map(|v| &v.digests).collect();
        for v in &inv.versions {
            let protected = v.pinned || v.digests.iter().any(&in_use);
            if protected {
                prop_assert!(!gone.contains(&v.root), "gave up a pinned or in-use version");
            }
            if !gone.contains(&v.root) {
                for x in &v.digests {
                    prop_assert!(!evicted.contains(x), "a retained image lost a blob");
                }
            }
        }
        // Over target only when nothing evictable is left.
        if p.remaining > target {
            for v in &inv.versions {
                let protected = v.pinned || v.digests.iter().any(&in_use);
                prop_assert!(protected || gone.contains(&v.root), "stopped with an evictable version left");
            }
            for x in inv.blobs.keys() {
                if !referenced.contains(x) && !in_use(x) {
                    prop_assert!(evicted.contains(x), "stopped with an evictable blob left");
                }
            }
        }
        // Nothing evicted when already within target, unless idle too long.
        if inv.usage() <= target && idle_before.is_none() {
            prop_assert!(p.evict.is_empty());
        }
        // With max_idle, every unprotected version pulled before the cutoff is given up.
        if let Some(cutoff) = idle_before {
            for v in &inv.versions {
                let protected = v.pinned || v.digests.iter().any(&in_use);
                let key = v.last_pulled + if v.current { berth::test_util::plan::SUPERSEDED_GRACE } else { 0 };
                if !protected && key < cutoff {
                    prop_assert!(gone.contains(&v.root), "an idle version was kept");
                }
            }
        }
    }
}

/// One step of a store's life, for the sequence test.
#[derive(Debug, Clone)]
enum Op {
    /// Pull image `i` (its current version): its blobs come back if evicted, all read now.
    Pull(usize),
    /// Push image `i` again: its tag moves to a new version (new root, one new layer).
    Move(usize),
    Pin(usize),
    Unpin(usize),
    /// Read one layer of image `i` (a lazy-pulling snapshotter).
    Read(usize),
    /// Time passes.
    Wait(u64),
    Gc,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        (0usize..5).prop_map(Op::Pull),
        (0usize..5).prop_map(Op::Move),
        (0usize..5).prop_map(Op::Pin),
        (0usize..5).prop_map(Op::Unpin),
        (0usize..5).prop_map(Op::Read),
        (1u64..120).prop_map(Op::Wait),
        Just(Op::Gc),
    ];
    prop::collection::vec(op, 1..60)
}

proptest! {
    /// Random sequences of pulls, tag moves, pins, unpins, reads and GC passes against a
    /// model of the store (the digests present): after each pass, usage is within target
    /// unless everything left is pinned or in use; nothing pinned or in use was evicted; no
    /// version still present lost a blob.
    #[test]
    fn sequences_of_pulls_moves_pins_reads_and_passes(ops in ops(), window in 0u64..100, target in 20u64..200) {
        // Five images; image i's versions are (root, layers); layer 100 is shared by all.
        let mut next = 1000usize;
        let mut versions: Vec<Vec<(Digest, Vec<Digest>)>> =
            (0..5).map(|i| vec![(d(next + i), vec![d(100), d(200 + i)])]).collect();
        next += 5;
        let mut pinned = [false; 5];
        let mut present: std::collections::HashMap<Digest, (u64, u64)> = Default::default(); // size, last access
        let mut pulled: std::collections::HashMap<Digest, u64> = Default::default(); // root -> last pull
        let mut now = 1_000u64;
        for op in ops {
            match op {
                Op::Pull(i) => {
                    let (root, layers) = versions[i].last().unwrap().clone();
                    for x in std::iter::once(&root).chain(&layers) {
                        present.insert(x.clone(), (10, now));
                    }
                    pulled.insert(root, now);
                }
                Op::Move(i) => {
                    next += 1;
                    versions[i].push((d(next), vec![d(100), d(next + 50_000)]));
                }
                Op::Pin(i) => pinned[i] = true,
                Op::Unpin(i) => pinned[i] = false,
                Op::Read(i) => {
                    let (_, layers) = versions[i].last().unwrap();
                    if let Some(entry) = present.get_mut(&layers[1]) {
                        entry.1 = now;
                    }
                }
                Op::Wait(s) => now += s,
                Op::Gc => {
                    let mut inv = Inventory::default();
                    for (x, (size, at)) in &present {
                        inv.blobs.insert(x.clone(), Blob { size: *size, last_access: *at, busy: false });
                    }
                    for (i, vs) in versions.iter().enumerate() {
                        let current = vs.len() - 1;
                        for (n, (root, layers)) in vs.iter().enumerate() {
                            if !present.contains_key(root) {
                                continue;
                            }
                            let mut digests = vec![root.clone()];
                            digests.extend(layers.iter().cloned());
                            // A pinned tag keeps the version it points to now.
                            inv.versions.push(Version {
                                root: root.clone(),
                                digests,
                                last_pulled: pulled.get(root).copied().unwrap_or(0),
                                current: n == current,
                                pinned: pinned[i] && n == current,
                            });
                        }
                    }
                    let policy = Policy { now, in_use_window: window, target, idle_before: None };
                    let p = plan(&inv, &policy);
                    let evicted: HashSet<&Digest> = p.evict.iter().map(|e| &e.0).collect();
                    let in_use = |x: &Digest| present.get(x).is_some_and(|(_, at)| now - at < window);
                    for v in &inv.versions {
                        let protected = v.pinned || v.digests.iter().any(&in_use);
                        let kept = !p.versions.contains(&v.root);
                        prop_assert!(!protected || kept, "gave up a pinned or in-use version");
                        if kept {
                            for x in &v.digests {
                                prop_assert!(!evicted.contains(x), "a kept version lost a blob");
                            }
                        }
                        if !kept && p.remaining > target {
                            prop_assert!(!protected);
                        }
                    }
                    if p.remaining > target {
                        for v in &inv.versions {
                            let protected = v.pinned || v.digests.iter().any(&in_use);
                            prop_assert!(protected || p.versions.contains(&v.root), "over target with an evictable version left");
                        }
                    }
                    for x in evicted {
                        present.remove(x);
                    }
                    prop_assert_eq!(present.values().map(|v| v.0).sum::<u64>(), p.remaining);
                }
            }
        }
    }
}
