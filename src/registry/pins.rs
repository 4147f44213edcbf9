//! The pins: images GC never evicts. One service that the admin API, preheat, GC and the tag
//! cache (which never drops a pinned tag) share:
//! the `[[pin]]` references of mirror.toml, and the pins recorded at runtime (admin API,
//! preheat with `pin`), kept in the metadata store with the digest they resolved to.

use std::collections::HashSet;
use std::sync::Arc;

use crate::error::Error;
use crate::oci::digest::Digest;
use crate::store::meta::{now_secs, Meta, Pin};

pub(crate) struct Pins {
    meta: Arc<Meta>,
    /// `[[pin]]` in mirror.toml: normalised references, fixed for the process's life.
    configured: Vec<String>,
}

impl Pins {
    pub(crate) fn new(meta: Arc<Meta>, configured: Vec<String>) -> Pins {
        Pins { meta, configured }
    }

    /// Records that `image` (a normalised reference) is pinned to `digest`, now.
    pub(crate) async fn record(&self, image: &str, digest: &Digest) -> Result<(), Error> {
        let (meta, image) = (self.meta.clone(), image.to_owned());
        let pin = Pin { digest: digest.to_string(), pinned_at: now_secs() };
        blocking(move || meta.put_pin(&image, &pin)).await
    }

    /// Removes the recorded pin of `image`; false when there was none.
    pub(crate) async fn remove(&self, image: &str) -> Result<bool, Error> {
        let (meta, image) = (self.meta.clone(), image.to_owned());
        blocking(move || meta.remove_pin(&image)).await
    }

    /// The pins recorded at runtime: image → pin.
    pub(crate) async fn recorded(&self) -> Result<Vec<(String, Pin)>, Error> {
        let meta = self.meta.clone();
        blocking(move || meta.pins()).await
    }

    /// Every pinned reference, configured or recorded: the tag cache never drops these.
    pub(crate) async fn references(&self) -> Result<HashSet<String>, Error> {
        Ok(self.with_configured(self.recorded().await?))
    }

    /// `references`, for startup, on the calling thread.
    pub(crate) fn references_blocking(&self) -> Result<HashSet<String>, Error> {
        Ok(self.with_configured(self.meta.pins()?))
    }

    /// The configured references.
    pub(crate) fn configured(&self) -> &[String] {
        &self.configured
    }

    fn with_configured(&self, recorded: Vec<(String, Pin)>) -> HashSet<String> {
        let mut all: HashSet<String> = self.configured.iter().cloned().collect();
        all.extend(recorded.into_iter().map(|(image, _)| image));
        all
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work).await.map_err(Error::internal)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn recorded_and_configured_pins_are_one_set_and_a_removed_pin_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(Meta::open(&dir.path().join("meta.redb")).unwrap());
        let pins = Pins::new(meta.clone(), vec!["docker.io/library/a:1".into()]);
        let d = Digest::of(b"manifest");
        pins.record("ghcr.io/org/b:2", &d).await.unwrap();
        let refs = pins.references().await.unwrap();
        assert_eq!(refs, ["docker.io/library/a:1", "ghcr.io/org/b:2"].map(String::from).into());
        assert_eq!(pins.references_blocking().unwrap(), refs);
        let recorded = pins.recorded().await.unwrap();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].1.digest, d.as_str());
        // Another service on the same metadata sees the same pins (a restart does too).
        assert_eq!(Pins::new(meta, vec![]).recorded().await.unwrap(), recorded);
        assert!(pins.remove("ghcr.io/org/b:2").await.unwrap());
        assert!(!pins.remove("ghcr.io/org/b:2").await.unwrap(), "removed twice");
        assert_eq!(pins.references().await.unwrap(), ["docker.io/library/a:1".to_owned()].into());
    }
}
