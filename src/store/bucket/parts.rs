//! Part checksums: a blob object carries the CRC-64/NVME of each of its parts in its `parts`
//! metadata, so that a fill reading it shows its clients each part once that part matches,
//! instead of holding every byte until the whole object's SHA-256 is known.
//!
//! The checksums come from the bucket, like the bytes, so they stop accidents (a truncated,
//! rotted or overwritten object), not someone who can write to the bucket: the fill still
//! hashes the whole content, and its last byte waits for the digest (`body::follow`, and
//! `passthrough` when the rest comes from the source).
//! Metadata that does not parse, or does not describe the object's length, is ignored: the
//! object is then read the whole-object way.

use base64::Engine as _;

/// Parts of one object at most: their checksums, in base64, fit the object's metadata
/// (S3 keeps 2 KiB of it, half of which the registry label may use).
const PARTS_MAX: u64 = 64;
/// The smallest part, and what part sizes are a multiple of.
const PART_MIN: u64 = 4 << 20;
const PART_STEP: u64 = 1 << 20;

/// The metadata key.
pub(crate) const KEY: &str = "parts";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parts {
    len: u64,
    size: u64,
    sums: Vec<u64>,
}

/// The part size for an object of `len` bytes: at least 4 MiB, a whole number of MiB, and
/// large enough that there are at most 64 parts.
fn part_size(len: u64) -> u64 {
    len.div_ceil(PARTS_MAX).div_ceil(PART_STEP).saturating_mul(PART_STEP).max(PART_MIN)
}

fn crc(bytes: &[u8]) -> u64 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, bytes)
}

impl Parts {
    /// The checksums of `bytes`' parts.
    pub(crate) fn of(bytes: &[u8]) -> Parts {
        let size = part_size(bytes.len() as u64);
        let sums = bytes.chunks(size as usize).map(crc).collect();
        Parts { len: bytes.len() as u64, size, sums }
    }

    /// The metadata value: `<part size>:<checksums, 8 bytes each big-endian, in base64>`.
    pub(crate) fn label(&self) -> String {
        let raw: Vec<u8> = self.sums.iter().flat_map(|s| s.to_be_bytes()).collect();
        format!("{}:{}", self.size, base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw))
    }

    /// The parts a metadata value describes for an object of `len` bytes; None unless it is
    /// well formed and describes exactly that length with the size berth would choose.
    pub(crate) fn parse(value: &str, len: u64) -> Option<Parts> {
        let (size, sums) = value.split_once(':')?;
        let size: u64 = size.parse().ok()?;
        if size != part_size(len) || len == 0 {
            return None;
        }
        if sums.len() > (PARTS_MAX as usize * 8).div_ceil(3) * 4 {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD.decode(sums).ok()?;
        if raw.len() as u64 != len.div_ceil(size) * 8 {
            return None;
        }
        let sums = raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes"))).collect();
        Some(Parts { len, size, sums })
    }

    /// The length of the object the parts describe.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// A checker for the content as it arrives, in order.
    pub(crate) fn checker(self) -> Checker {
        Checker {
            crc: crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme),
            parts: self,
            index: 0,
            at: 0,
        }
    }
}

/// Checks each part of a stream as it completes.
pub(crate) struct Checker {
    parts: Parts,
    crc: crc_fast::Digest,
    /// The part being read, and the bytes of the content read so far.
    index: usize,
    at: u64,
}

/// Bytes past the object's length, or a part whose checksum does not match; at the offset
/// where the first bad part starts.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadPart(pub(crate) u64);

impl Checker {
    /// Takes the next bytes; returns the end of the last part that matched, when one did.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Result<Option<u64>, BadPart> {
        let mut matched = None;
        while !bytes.is_empty() {
            let start = self.index as u64 * self.parts.size;
            let Some(&want) = self.parts.sums.get(self.index) else { return Err(BadPart(start)) };
            let end = start.saturating_add(self.parts.size).min(self.parts.len);
            let n = (end - self.at).min(bytes.len() as u64) as usize;
            self.crc.update(&bytes[..n]);
            (self.at, bytes) = (self.at + n as u64, &bytes[n..]);
            if self.at == end {
                if self.crc.finalize_reset() != want {
                    return Err(BadPart(start));
                }
                self.index += 1;
                matched = Some(end);
            }
        }
        Ok(matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 253) as u8).collect()
    }

    #[test]
    fn parts_round_trip_through_their_label_and_are_few() {
        for len in [1, PART_MIN as usize, PART_MIN as usize + 1, 300 << 20] {
            let bytes = content(len);
            let parts = Parts::of(&bytes);
            assert!(parts.sums.len() as u64 <= PARTS_MAX);
            assert!(parts.label().len() <= 720, "{len}: the label does not fit beside the registry label");
            assert_eq!(Parts::parse(&parts.label(), len as u64), Some(parts));
        }
        assert_eq!(part_size(1 << 30), 16 << 20);
    }

    #[test]
    fn a_label_for_another_length_or_malformed_is_ignored() {
        let bytes = content(9 << 20);
        let label = Parts::of(&bytes).label();
        assert_eq!(Parts::parse(&label, 8 << 20), None, "fewer parts than the label lists");
        assert_eq!(Parts::parse(&label, 13 << 20), None, "more parts than the label lists");
        for bad in ["", ":", "4194304", "4194304:", "x:AAAA", "1048576:AAAAAAAAAAA", "4194304:!!!!", "0:"] {
            assert_eq!(Parts::parse(bad, 9 << 20), None, "{bad:?}");
        }
        assert_eq!(Parts::parse(&Parts::of(&[]).label(), 0), None);
    }

    #[test]
    fn each_part_is_let_through_once_it_matches_in_any_slicing() {
        let bytes = content(10 << 20);
        let mut checker = Parts::of(&bytes).checker();
        let mut seen = Vec::new();
        for piece in bytes.chunks(300_001) {
            if let Some(end) = checker.feed(piece).unwrap() {
                seen.push(end);
            }
        }
        assert_eq!(seen, [4 << 20, 8 << 20, 10 << 20]);
        assert_eq!(checker.feed(b"x"), Err(BadPart(12 << 20)), "a byte past the end");
    }

    #[test]
    fn a_wrong_part_stops_the_stream_at_its_start() {
        let bytes = content(10 << 20);
        let mut wrong = bytes.clone();
        wrong[(5 << 20) + 17] ^= 1;
        let mut checker = Parts::of(&bytes).checker();
        assert_eq!(checker.feed(&wrong[..6 << 20]), Ok(Some(4 << 20)));
        assert_eq!(checker.feed(&wrong[6 << 20..]), Err(BadPart(4 << 20)));
    }
}
