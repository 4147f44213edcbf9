//! Repository names, tags and references, validated as distribution does.

use super::digest::Digest;
use super::Invalid;

/// Checks a repository name: `/`-separated components of `[a-z0-9]+` joined by `.`, `_`,
/// `__` or runs of `-`; at most 255 characters.
pub fn validate_name(name: &str) -> Result<(), Invalid> {
    let bad = || Invalid::Name(format!("invalid repository name {name:?}"));
    if name.is_empty() || name.len() > 255 {
        return Err(bad());
    }
    for component in name.split('/') {
        if !valid_component(component) {
            return Err(bad());
        }
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: ".", "_", "__" or one or more "-", always between alphanumerics.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if !b.get(i).is_some_and(|&x| alnum(x)) || start == 0 {
            return false;
        }
    }
    true
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Debug, Clone, PartialEq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, Invalid> {
        if s.contains(':') {
            return Digest::parse(s).map(Reference::Digest);
        }
        let b = s.as_bytes();
        let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
        let valid = !b.is_empty()
            && b.len() <= 128
            && word(b[0])
            && b.iter().all(|&x| word(x) || x == b'.' || x == b'-');
        if valid {
            Ok(Reference::Tag(s.to_owned()))
        } else {
            Err(Invalid::Tag(format!("invalid tag {s:?}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["library/alpine", "a", "my-org/my__app/x.y", "a--b/c_d", "0/1"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Library/alpine", "a//b", "/a", "a/", "-a", "a-", "a___b", "a..b", "../x", "a b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(validate_name(&"a".repeat(256)).is_err());
    }

    #[test]
    fn references() {
        assert_eq!(Reference::parse("3.20").unwrap(), Reference::Tag("3.20".into()));
        assert!(matches!(Reference::parse(&Digest::of(b"x").to_string()), Ok(Reference::Digest(_))));
        for bad in ["", ".x", "-x", "a/b", "sha256:totallywrong", &"t".repeat(129)] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
