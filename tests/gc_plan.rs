//! The eviction plan against a reference model, on generated inventories: capacity respected
//! whenever something evictable is left, pinned and in-use content never evicted, no retained
//! image left with a missing blob.

use std::collections::HashSet;

use berth::digest::Digest;
use berth::store::gc::plan::{plan, Blob, Inventory, Policy, Version};
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
                let key = v.last_pulled + if v.current { berth::store::gc::plan::SUPERSEDED_GRACE } else { 0 };
                if !protected && key < cutoff {
                    prop_assert!(gone.contains(&v.root), "an idle version was kept");
                }
            }
        }
    }
}
