//! A 206 of several ranges as `multipart/byteranges` (RFC 9110 §14.6): each part with its
//! own `Content-Type` and `Content-Range`, between boundaries the blob's bytes cannot be made
//! to contain (a fresh random one per answer), with an exact `Content-Length`.

use axum::body::Body;
use bytes::Bytes;
use futures::stream::{self, StreamExt};

use crate::store::body::BodyStream;

/// A multipart answer: its `Content-Type`, `Content-Length` and body.
pub(super) struct Multipart {
    pub(super) content_type: String,
    pub(super) content_length: u64,
    pub(super) body: Body,
}

/// The parts `spans` of a blob of `len` bytes, each followed by its body.
pub(super) fn multipart(
    len: u64,
    spans: &[(u64, u64)],
    bodies: Vec<BodyStream>,
    part_type: &str,
) -> Multipart {
    let boundary = boundary();
    let heads: Vec<Bytes> = spans
        .iter()
        .map(|&(start, end)| {
            let last = end - 1;
            Bytes::from(format!(
                "\r\n--{boundary}\r\nContent-Type: {part_type}\r\nContent-Range: bytes {start}-{last}/{len}\r\n\r\n"
            ))
        })
        .collect();
    let close = Bytes::from(format!("\r\n--{boundary}--\r\n"));
    let content_length = heads.iter().map(|h| h.len() as u64).sum::<u64>()
        + spans.iter().map(|(start, end)| end - start).sum::<u64>()
        + close.len() as u64;
    let parts =
        heads.into_iter().zip(bodies).map(|(head, body)| stream::once(async { Ok(head) }).chain(body));
    let body = stream::iter(parts).flatten().chain(stream::once(async { Ok(close) }));
    Multipart {
        content_type: format!("multipart/byteranges; boundary={boundary}"),
        content_length,
        body: Body::from_stream(body),
    }
}

/// 32 random hex digits: content served by the mirror comes from anyone, so the boundary must
/// not be guessable in advance.
fn boundary() -> String {
    let mut raw = [0u8; 16];
    // Without the system's randomness, the time and a counter at least differ per answer.
    if getrandom::fill(&mut raw).is_err() {
        use sha2::Digest as _;
        static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let h = sha2::Sha256::digest(format!("{n}:{}", now.as_nanos()));
        raw.copy_from_slice(&h[..16]);
    }
    format!("berth-{}", hex::encode(raw))
}
