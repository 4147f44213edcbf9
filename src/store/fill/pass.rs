//! A fill the disk tier cannot take passes through: its clients read what was written, then
//! the rest from the source (see `store::passthrough`), and nothing is kept.

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;

use super::write::Made;
use super::{drop_off_thread, Fill, FillState, Resume};
use crate::error::Error;
use crate::store::passthrough::{self, PassThrough};

/// Why the disk tier did not take what the pipeline made, if it did not: a write failed, or
/// room ran out.
pub(super) fn disk_trouble(made: &Made, ran_out: bool) -> Option<String> {
    match (&made.error, ran_out) {
        (Some(e), _) => Some(format!("disk tier cannot write: {e}")),
        (None, true) => Some("no room left on the disk tier (the rest is pinned or in use)".to_owned()),
        (None, false) => None,
    }
}

/// Passes the fill through from the first `written` bytes the pipeline wrote (good bytes),
/// then drops the temp file.
pub(super) async fn pass_written(
    fill: &Arc<Fill>,
    made: Made,
    written: u64,
    len: Option<u64>,
    resume: Arc<Resume>,
    why: String,
) -> Result<(), Error> {
    let (file, map) = (made.writer.file().0.clone(), made.writer.file().1.cloned());
    let done = pass_through(fill, Some(file), map, written, len, resume, why).await;
    drop_off_thread(made.writer).await?;
    done
}

/// Serves the fill's clients from the source from here on: the state becomes `PassThrough`
/// with a hash of the `written` bytes, and nothing is kept.
pub(super) async fn pass_through(
    fill: &Arc<Fill>,
    file: Option<Arc<File>>,
    map: Option<Bytes>,
    written: u64,
    len: Option<u64>,
    resume: Arc<Resume>,
    why: String,
) -> Result<(), Error> {
    let digest = fill.digest.clone();
    tracing::error!(%digest, written, error = %why, "serving from upstream without caching (pass-through)");
    metrics::counter!("berth_fills_total", "outcome" => "passthrough").increment(1);
    let prefix = passthrough::hash_written(file.clone(), map.clone(), written).await?;
    let p = PassThrough { digest, file, map, written, len, prefix, resume, why };
    fill.state.send_replace(FillState::PassThrough(Arc::new(p)));
    Ok(())
}
