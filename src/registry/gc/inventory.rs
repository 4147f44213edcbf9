//! The collector's snapshot: every object of a tier with its last access, and the image
//! versions its manifests form (a root with everything reachable from it).

use std::collections::{HashMap, HashSet};

use serde::Deserialize;

use super::plan::{Blob, Inventory, Version};
use crate::error::Error;
use crate::oci::digest::Digest;
use crate::store::{Store, Stored};

#[derive(Deserialize)]
struct Refs {
    manifests: Option<Vec<Ref>>,
    config: Option<Ref>,
    layers: Option<Vec<Ref>>,
}

#[derive(Deserialize)]
struct Ref {
    digest: String,
}

/// Reads the store: every blob on disk, its last access, and the versions its manifests form.
pub(super) fn build(
    store: &Store,
    current: &HashSet<String>,
    pinned: &HashSet<String>,
    busy: &HashSet<Digest>,
) -> Result<Inventory, Error> {
    let referrers = referrers_of_subjects(store)?;
    let items = store.contents_blocking(references)?.into_iter().map(|s: Stored<Option<Vec<Digest>>>| {
        let linked = referrers.get(&s.digest).cloned().unwrap_or_default();
        Item {
            digest: s.digest,
            size: s.size,
            last_access: s.last_access,
            refs: s.manifest.flatten(),
            linked,
        }
    });
    Ok(assemble(items, current, pinned, busy))
}

/// The kept referrers indexes of each subject: part of the subject's version.
fn referrers_of_subjects(store: &Store) -> Result<HashMap<Digest, Vec<Digest>>, Error> {
    let mut out: HashMap<Digest, Vec<Digest>> = HashMap::new();
    for (_, entry) in store.meta().all_referrers()? {
        if let (Ok(subject), Ok(index)) = (Digest::parse(&entry.subject), Digest::parse(&entry.index)) {
            out.entry(subject).or_default().push(index);
        }
    }
    Ok(out)
}

/// What a manifest references (an index's manifests, a manifest's config and layers); None
/// when the bytes are not a manifest.
pub(crate) fn references(bytes: &[u8]) -> Option<Vec<Digest>> {
    let refs = serde_json::from_slice::<Refs>(bytes).ok()?;
    let all =
        refs.manifests.into_iter().flatten().chain(refs.config).chain(refs.layers.into_iter().flatten());
    Some(all.filter_map(|r| Digest::parse(&r.digest).ok()).collect())
}

/// One object of a tier as the collector sees it.
pub(crate) struct Item {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    pub(crate) last_access: u64,
    /// A manifest's references.
    pub(crate) refs: Option<Vec<Digest>>,
    /// The referrers indexes kept for it: part of its version, but not references (they are
    /// what upstream answered, not what its bytes name, so they never decide what is a root).
    pub(crate) linked: Vec<Digest>,
}

/// The inventory the plan reads: every object, and the image versions its manifests form
/// (a root manifest or index with everything it references).
pub(crate) fn assemble(
    items: impl Iterator<Item = Item>,
    current: &HashSet<String>,
    pinned: &HashSet<String>,
    busy: &HashSet<Digest>,
) -> Inventory {
    let mut inv = Inventory::default();
    let mut children: HashMap<Digest, Vec<Digest>> = HashMap::new();
    let mut links: HashMap<Digest, Vec<Digest>> = HashMap::new();
    for Item { digest, size, last_access, refs, linked } in items {
        if let Some(list) = refs {
            children.insert(digest.clone(), list);
        }
        if !linked.is_empty() {
            links.insert(digest.clone(), linked);
        }
        inv.blobs.insert(digest.clone(), Blob { size, last_access, busy: busy.contains(&digest) });
    }
    // A blob being filled is not on disk yet, but its version is being pulled right now.
    for d in busy {
        inv.blobs.entry(d.clone()).or_insert(Blob { size: 0, last_access: 0, busy: true });
    }
    // Roots are what no manifest's bytes reference: content addresses cannot form a cycle, so
    // every manifest is a root or under one, whatever the kept referrers say. A manifest that
    // is pinned or a tag's is a root whatever references it (an index upstream answered
    // referrers with may list anything), so its pin holds.
    let referenced: HashSet<&Digest> = children.values().flatten().collect();
    let held = |d: &Digest| pinned.contains(d.as_str()) || current.contains(d.as_str());
    let roots: Vec<&Digest> = children.keys().filter(|d| !referenced.contains(d) || held(d)).collect();
    let mut versions: Vec<Version> = roots
        .iter()
        .map(|&root| {
            let (digests, last_pulled) = reachable(root, &children, &links, &inv.blobs);
            Version {
                root: root.clone(),
                digests,
                last_pulled,
                current: current.contains(root.as_str()),
                pinned: pinned.contains(root.as_str()),
            }
        })
        .collect();
    // A root reached through a referrers link (a kept referrers index) belongs to the version that links it, unless a pin or a tag holds it on its
    // own. It is folded only into a version that is itself not folded, so every folded
    // digest stays in a version that is kept.
    let root_set: HashSet<&Digest> = roots.iter().copied().collect();
    let mut absorbed_by: HashMap<Digest, Vec<Digest>> = HashMap::new();
    for v in &versions {
        for d in v.digests.iter().skip(1).filter(|d| root_set.contains(d)) {
            absorbed_by.entry(d.clone()).or_default().push(v.root.clone());
        }
    }
    versions.retain(|v| {
        v.pinned
            || v.current
            || !absorbed_by.get(&v.root).is_some_and(|by| by.iter().any(|r| !absorbed_by.contains_key(r)))
    });
    versions.sort_by(|a, b| a.root.cmp(&b.root));
    inv.versions = versions;
    inv
}

/// Everything reachable from `root` through references and referrers links (an index, its
/// manifests, their blobs, the referrers kept for any of them), each once, and when any
/// manifest in it was last pulled.
fn reachable(
    root: &Digest,
    children: &HashMap<Digest, Vec<Digest>>,
    links: &HashMap<Digest, Vec<Digest>>,
    blobs: &HashMap<Digest, Blob>,
) -> (Vec<Digest>, u64) {
    let (mut digests, mut seen) = (vec![root.clone()], HashSet::from([root.clone()]));
    let mut last_pulled = blobs.get(root).map_or(0, |b| b.last_access);
    let mut next = 0;
    while let Some(d) = digests.get(next).cloned() {
        next += 1;
        let Some(list) = children.get(&d) else { continue };
        last_pulled = last_pulled.max(blobs.get(&d).map_or(0, |b| b.last_access));
        for child in list.iter().chain(links.get(&d).into_iter().flatten()) {
            if seen.insert(child.clone()) {
                digests.push(child.clone());
            }
        }
    }
    (digests, last_pulled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
    }

    fn manifest(n: u8, refs: &[u8], linked: &[u8]) -> Item {
        Item {
            digest: d(n),
            size: 1,
            last_access: u64::from(n),
            refs: Some(refs.iter().copied().map(d).collect()),
            linked: linked.iter().copied().map(d).collect(),
        }
    }

    fn blob(n: u8) -> Item {
        Item { digest: d(n), size: 1, last_access: 0, refs: None, linked: Vec::new() }
    }

    fn roots(inv: &Inventory) -> Vec<Digest> {
        inv.versions.iter().map(|v| v.root.clone()).collect()
    }

    #[test]
    fn a_kept_referrers_index_and_what_it_lists_fold_into_the_subjects_version() {
        // 1: image over blob 10; 2: referrers index listing signature 3 over blob 11.
        let items = vec![
            manifest(1, &[10], &[2]),
            manifest(2, &[3], &[]),
            manifest(3, &[11], &[]),
            blob(10),
            blob(11),
        ];
        let inv = assemble(items.into_iter(), &HashSet::new(), &HashSet::new(), &HashSet::new());
        assert_eq!(roots(&inv), vec![d(1)]);
        let mut all = inv.versions[0].digests.clone();
        all.sort();
        assert_eq!(all, [1, 2, 3, 10, 11].map(d).to_vec());
        assert_eq!(inv.versions[0].last_pulled, 3, "pulled when any manifest in it was");
    }

    #[test]
    fn an_index_that_lists_a_pinned_or_tagged_image_does_not_unroot_it() {
        // 1 links its referrers index 2, whose bytes list 4 (pinned) and 5 (a tag's).
        let items = vec![
            manifest(1, &[10], &[2]),
            manifest(2, &[4, 5], &[]),
            manifest(4, &[11], &[]),
            manifest(5, &[12], &[]),
            blob(10),
            blob(11),
            blob(12),
        ];
        let pinned = HashSet::from([d(4).to_string()]);
        let current = HashSet::from([d(5).to_string()]);
        let inv = assemble(items.into_iter(), &current, &pinned, &HashSet::new());
        let mut got = roots(&inv);
        got.sort();
        assert_eq!(got, [1, 4, 5].map(d).to_vec());
        assert!(inv.versions.iter().any(|v| v.root == d(4) && v.pinned && v.digests.contains(&d(11))));
        assert!(inv.versions.iter().any(|v| v.root == d(5) && v.current && v.digests.contains(&d(12))));
    }

    #[test]
    fn referrers_links_never_unroot_a_pinned_or_tagged_image_nor_loop() {
        // A hostile upstream's referrers answers: image 1 links image 4 (pinned), image 5
        // (a tag's) and itself, and 6 and 7 link each other.
        let items = vec![
            manifest(1, &[10], &[4, 5, 1]),
            manifest(4, &[11], &[]),
            manifest(5, &[12], &[]),
            manifest(6, &[13], &[7]),
            manifest(7, &[14], &[6]),
            blob(10),
            blob(11),
            blob(12),
            blob(13),
            blob(14),
        ];
        let pinned = HashSet::from([d(4).to_string()]);
        let current = HashSet::from([d(5).to_string()]);
        let inv = assemble(items.into_iter(), &current, &pinned, &HashSet::new());
        let mut got = roots(&inv);
        got.sort();
        assert_eq!(got, [1, 4, 5, 6, 7].map(d).to_vec(), "a version went missing or a loop dropped both");
        assert!(inv.versions.iter().find(|v| v.root == d(4)).unwrap().pinned);
        // Every blob stays in some version: none becomes an orphan through a link.
        for b in [10, 11, 12, 13, 14] {
            assert!(inv.versions.iter().any(|v| v.digests.contains(&d(b))), "blob {b} left every version");
        }
    }
}
