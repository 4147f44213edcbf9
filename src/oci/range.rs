//! `Range: bytes=...` for blobs: one range or several (RFC 9110 §14.2), resolved against the
//! content length.

use super::Invalid;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RangeSpec {
    /// `bytes=a-` or `bytes=a-b` (b inclusive).
    From { start: u64, last: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl RangeSpec {
    /// Parses a Range header of exactly one range. `None` for anything else (other units,
    /// several ranges, bad syntax).
    pub fn parse(value: &str) -> Option<RangeSpec> {
        let spec = value.trim().strip_prefix("bytes=")?.trim();
        if spec.contains(',') {
            return None;
        }
        RangeSpec::parse_one(spec)
    }

    /// One `range-spec` (`a-`, `a-b`, `-n`).
    fn parse_one(spec: &str) -> Option<RangeSpec> {
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        if a.is_empty() {
            return b.parse().ok().map(RangeSpec::Suffix);
        }
        let start = a.parse().ok()?;
        let last = if b.is_empty() { None } else { Some(b.parse().ok()?) };
        if last.is_some_and(|l| l < start) {
            return None;
        }
        Some(RangeSpec::From { start, last })
    }

    /// The range as a `Range` header value.
    pub fn header(self) -> String {
        match self {
            RangeSpec::From { start, last: Some(last) } => format!("bytes={start}-{last}"),
            RangeSpec::From { start, last: None } => format!("bytes={start}-"),
            RangeSpec::Suffix(n) => format!("bytes=-{n}"),
        }
    }

    /// The byte span `start..end` (end exclusive) within `len` bytes, or 416.
    pub fn resolve(self, len: u64) -> Result<(u64, u64), Invalid> {
        match self {
            RangeSpec::From { start, last } if start < len => {
                Ok((start, last.map_or(len, |l| l.saturating_add(1).min(len))))
            }
            RangeSpec::Suffix(n) if n > 0 && len > 0 => Ok((len - n.min(len), len)),
            _ => Err(Invalid::Range { len }),
        }
    }
}

/// Most ranges honoured in one header; past it the header is ignored (the whole content
/// is sent, as RFC 9110 allows), so a request cannot make berth assemble thousands of parts.
pub const MAX_RANGES: usize = 256;

/// Ranges closer than this are sent as one part: a part's own headers cost about as much.
const COALESCE_GAP: u64 = 128;

/// The ranges of a `Range: bytes=` header, in the order asked.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSet(Vec<RangeSpec>);

impl RangeSet {
    /// The one range of a header that has one.
    pub fn only(&self) -> Option<RangeSpec> {
        match self.0.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// Parses a Range header of one or more ranges. `None` for a value berth does not honour
    /// (other units, bad syntax, more than `MAX_RANGES`): the full content is served then,
    /// as RFC 9110 allows.
    pub fn parse(value: &str) -> Option<RangeSet> {
        let specs = value.trim().strip_prefix("bytes=")?;
        let mut set = Vec::new();
        for spec in specs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if set.len() == MAX_RANGES {
                return None;
            }
            set.push(RangeSpec::parse_one(spec)?);
        }
        (!set.is_empty()).then_some(RangeSet(set))
    }

    /// The spans `start..end` to send for `len` bytes: the satisfiable ranges, those that
    /// overlap or nearly touch merged into one, each sent where the first of them was asked
    /// (RFC 9110 §14.6). 416 when none is satisfiable.
    pub fn resolve(&self, len: u64) -> Result<Vec<(u64, u64)>, Invalid> {
        let mut spans: Vec<(u64, u64, usize)> = self
            .0
            .iter()
            .enumerate()
            .filter_map(|(asked, r)| r.resolve(len).ok().map(|(a, b)| (a, b, asked)))
            .collect();
        if spans.is_empty() {
            return Err(Invalid::Range { len });
        }
        spans.sort_unstable();
        let mut merged: Vec<(u64, u64, usize)> = Vec::with_capacity(spans.len());
        for (a, b, asked) in spans {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(COALESCE_GAP) => {
                    last.1 = last.1.max(b);
                    last.2 = last.2.min(asked);
                }
                _ => merged.push((a, b, asked)),
            }
        }
        merged.sort_unstable_by_key(|&(_, _, asked)| asked);
        Ok(merged.into_iter().map(|(a, b, _)| (a, b)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_merge_what_overlaps_and_keep_the_order_asked() {
        let r = |s| RangeSet::parse(s).unwrap().resolve(10_000);
        assert_eq!(r("bytes=0-99"), Ok(vec![(0, 100)]));
        assert_eq!(r("bytes=5000-5099, 0-99"), Ok(vec![(5000, 5100), (0, 100)]));
        // Overlapping, touching and nearly touching ranges become one part, where first asked.
        assert_eq!(r("bytes=9000-,0-99,50-199,300-399"), Ok(vec![(9000, 10_000), (0, 400)]));
        assert_eq!(r("bytes=0-0,0-0,0-0"), Ok(vec![(0, 1)]));
        assert_eq!(r("bytes=-100,9950-"), Ok(vec![(9900, 10_000)]));
        // Unsatisfiable ranges are dropped; none left is a 416.
        assert_eq!(r("bytes=20000-,100-199"), Ok(vec![(100, 200)]));
        assert_eq!(r("bytes=20000-,30000-"), Err(Invalid::Range { len: 10_000 }));
        // Not honoured: the whole content is sent.
        for bad in ["items=0-1", "bytes=", "bytes=,", "bytes=5-1,7-8", "bytes=a-b", "bytes=0-1,x"] {
            assert_eq!(RangeSet::parse(bad), None, "{bad}");
        }
        let many = (0..=MAX_RANGES).map(|i| format!("{}-{}", i * 1000, i * 1000)).collect::<Vec<_>>();
        assert_eq!(RangeSet::parse(&format!("bytes={}", many.join(","))), None);
        assert!(RangeSet::parse(&format!("bytes={}", many[..MAX_RANGES].join(","))).is_some());
    }

    #[test]
    fn parse_and_resolve() {
        let r = |s| RangeSpec::parse(s).unwrap().resolve(100);
        assert_eq!(r("bytes=10-"), Ok((10, 100)));
        assert_eq!(r("bytes=10-19"), Ok((10, 20)));
        assert_eq!(r("bytes=90-500"), Ok((90, 100)));
        assert_eq!(r("bytes=-5"), Ok((95, 100)));
        assert_eq!(r("bytes=100-"), Err(Invalid::Range { len: 100 }));
        assert_eq!(RangeSpec::parse("bytes=5-1"), None);
        assert_eq!(RangeSpec::parse("bytes=0-1,5-6"), None);
        assert_eq!(RangeSpec::parse("items=0-1"), None);
    }
}
