//! Ownership: rendezvous (highest-random-weight) hashing of a digest over the live peers.
//! Every instance computes the same owner from the same peer set, and losing a peer moves
//! only the digests it owned.

use sha2::{Digest as _, Sha256};

use crate::oci::digest::Digest;

/// The weight of `peer` for `digest`: the first 8 bytes of SHA-256 over both. Stable across
/// builds and versions (unlike the standard library's hasher), so mixed versions agree.
pub(crate) fn score(peer: &str, digest: &Digest) -> u64 {
    let mut h = Sha256::new();
    h.update(peer.as_bytes());
    h.update(b"\n");
    h.update(digest.as_str().as_bytes());
    let out = h.finalize();
    u64::from_be_bytes(out[..8].try_into().expect("8 bytes"))
}

/// The owner of `digest` among `peers`: the highest score, ties broken by name.
pub fn owner<'a>(peers: impl IntoIterator<Item = &'a str>, digest: &Digest) -> Option<&'a str> {
    peers.into_iter().max_by_key(|p| (score(p, digest), *p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://10.0.0.{i}:5000")).collect()
    }

    #[test]
    fn shares_are_even() {
        let peers = peers(4);
        let mut counts = [0usize; 4];
        for i in 0..4000u32 {
            let d = Digest::of(&i.to_le_bytes());
            let o = owner(peers.iter().map(String::as_str), &d).unwrap();
            counts[peers.iter().position(|p| p == o).unwrap()] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven shares: {counts:?}");
        }
    }

    proptest! {
        /// Order does not matter, and removing a peer moves only the digests it owned.
        #[test]
        fn removing_a_peer_moves_only_its_digests(seed in any::<u64>(), n in 2usize..8, gone in 0usize..8) {
            let all = peers(n);
            let gone = gone % n;
            let d = Digest::of(&seed.to_le_bytes());
            let before = owner(all.iter().map(String::as_str), &d).unwrap();
            let reversed = owner(all.iter().rev().map(String::as_str), &d).unwrap();
            prop_assert_eq!(before, reversed);
            let after = owner(all.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, p)| p.as_str()), &d).unwrap();
            if before != all[gone] {
                prop_assert_eq!(before, after);
            }
        }
    }
}
