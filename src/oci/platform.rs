//! A platform as images name it: `os/arch[/variant]`.

use oci_spec::image::Descriptor;

use super::Invalid;

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Platform {
    os: String,
    arch: String,
    variant: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`, e.g. `linux/arm64/v8`.
    pub(crate) fn parse(s: &str) -> Result<Platform, Invalid> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => {
                Ok(Platform { os: os.to_string(), arch: arch.to_string(), variant: None })
            }
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => {
                Ok(Platform { os: os.to_string(), arch: arch.to_string(), variant: Some(v.to_string()) })
            }
            _ => Err(Invalid::Platform(format!("platform {s:?} is not os/arch[/variant]"))),
        }
    }

    pub(crate) fn of(d: &Descriptor) -> Option<Platform> {
        let p = d.platform().as_ref()?;
        Some(Platform {
            os: p.os().to_string(),
            arch: p.architecture().to_string(),
            variant: p.variant().clone(),
        })
    }

    /// An index entry that is no image for any platform (attestations: `unknown/unknown`).
    pub(crate) fn is_unknown(&self) -> bool {
        self.os == "unknown" || self.arch == "unknown"
    }

    /// Whether an index entry for `other` serves this request; no variant asked means any.
    pub(crate) fn serves(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.arch == other.arch
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}
