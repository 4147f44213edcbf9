//! `Range: bytes=...` for blobs: one range, resolved against the content length.

use super::Invalid;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RangeSpec {
    /// `bytes=a-` or `bytes=a-b` (b inclusive).
    From { start: u64, last: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl RangeSpec {
    /// Parses a Range header. `None` for a value berth does not honour (other units, several
    /// ranges): the full content is served then, as RFC 9110 allows.
    pub fn parse(value: &str) -> Option<RangeSpec> {
        let spec = value.trim().strip_prefix("bytes=")?.trim();
        if spec.contains(',') {
            return None;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
