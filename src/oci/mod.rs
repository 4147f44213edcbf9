//! OCI vocabulary: digests, repository names and references, image references, platforms,
//! the manifest media types a client accepts, and byte ranges. Pure types and parsers that
//! every layer uses; nothing here knows of the rest of berth.

pub mod accept;
pub mod digest;
pub mod image_ref;
pub mod platform;
pub mod range;
pub mod reference;

/// Why a piece of OCI vocabulary did not parse (or, for a range, does not fit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("{0}")]
    Name(String),
    #[error("{0}")]
    Digest(String),
    #[error("{0}")]
    Tag(String),
    #[error("{0}")]
    ImageRef(String),
    #[error("{0}")]
    Platform(String),
    #[error("range not satisfiable for {len} bytes")]
    Range { len: u64 },
}
