//! Every request to the bucket counted and timed where it is made, by S3 operation:
//! `berth_bucket_requests_total{op, outcome}` and `berth_bucket_request_seconds{op}`, the
//! figures an operator pays for (GET, HEAD, PUT, LIST, DELETE; a multipart upload's start,
//! parts and completion).

use std::time::Instant;

use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

/// An object store whose every request is counted and timed.
#[derive(Debug)]
pub(crate) struct Counted<S>(pub(crate) S);

impl<S: std::fmt::Display> std::fmt::Display for Counted<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

fn record<T>(op: &'static str, started: Instant, result: &object_store::Result<T>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(object_store::Error::NotFound { .. }) => "not-found",
        Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
            "precondition"
        }
        Err(_) => "error",
    };
    metrics::counter!("berth_bucket_requests_total", "op" => op, "outcome" => outcome).increment(1);
    metrics::histogram!("berth_bucket_request_seconds", "op" => op).record(started.elapsed().as_secs_f64());
}

#[async_trait::async_trait]
impl<S: ObjectStore> ObjectStore for Counted<S> {
    async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> object_store::Result<PutResult> {
        let started = Instant::now();
        let result = self.0.put_opts(l, p, o).await;
        record("PUT", started, &result);
        result
    }

    async fn put_multipart_opts(
        &self,
        l: &Path,
        o: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let started = Instant::now();
        let result = self.0.put_multipart_opts(l, o).await;
        record("MULTIPART-START", started, &result);
        result.map(|upload| Box::new(CountedUpload(upload)) as Box<dyn MultipartUpload>)
    }

    async fn get_opts(&self, l: &Path, o: GetOptions) -> object_store::Result<GetResult> {
        let (started, op) = (Instant::now(), if o.head { "HEAD" } else { "GET" });
        let result = self.0.get_opts(l, o).await;
        record(op, started, &result);
        result
    }

    fn delete_stream(
        &self,
        l: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let started = Instant::now();
        self.0.delete_stream(l).inspect(move |r| record("DELETE", started, r)).boxed()
    }

    fn list(&self, p: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        // Counted per object listed would overstate it; a page is one request, counted once.
        metrics::counter!("berth_bucket_requests_total", "op" => "LIST", "outcome" => "ok").increment(1);
        self.0.list(p)
    }

    async fn list_with_delimiter(&self, p: Option<&Path>) -> object_store::Result<ListResult> {
        let started = Instant::now();
        let result = self.0.list_with_delimiter(p).await;
        record("LIST", started, &result);
        result
    }

    async fn copy_opts(&self, f: &Path, t: &Path, o: CopyOptions) -> object_store::Result<()> {
        let started = Instant::now();
        let result = self.0.copy_opts(f, t, o).await;
        record("COPY", started, &result);
        result
    }
}

/// A multipart upload whose parts and completion are counted.
#[derive(Debug)]
struct CountedUpload(Box<dyn MultipartUpload>);

#[async_trait::async_trait]
impl MultipartUpload for CountedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let (part, started) = (self.0.put_part(data), Instant::now());
        Box::pin(async move {
            let result = part.await;
            record("MULTIPART-PART", started, &result);
            result
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let started = Instant::now();
        let result = self.0.complete().await;
        record("MULTIPART-COMPLETE", started, &result);
        result
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        let started = Instant::now();
        let result = self.0.abort().await;
        record("MULTIPART-ABORT", started, &result);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_is_counted_by_its_s3_operation_and_outcome() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            futures::executor::block_on(async {
                let store = Counted(object_store::memory::InMemory::new());
                let path = Path::from("a/b");
                store.put_opts(&path, PutPayload::from_static(b"x"), PutOptions::default()).await.unwrap();
                store.get_opts(&path, GetOptions::default()).await.unwrap();
                store.get_opts(&path, GetOptions { head: true, ..GetOptions::default() }).await.unwrap();
                assert!(store.get_opts(&Path::from("missing"), GetOptions::default()).await.is_err());
                let mut upload =
                    store.put_multipart_opts(&path, PutMultipartOptions::default()).await.unwrap();
                upload.put_part(PutPayload::from_static(b"y")).await.unwrap();
                upload.complete().await.unwrap();
            })
        });
        let text = handle.render();
        for line in [
            r#"berth_bucket_requests_total{op="PUT",outcome="ok"} 1"#,
            r#"berth_bucket_requests_total{op="GET",outcome="ok"} 1"#,
            r#"berth_bucket_requests_total{op="HEAD",outcome="ok"} 1"#,
            r#"berth_bucket_requests_total{op="GET",outcome="not-found"} 1"#,
            r#"berth_bucket_requests_total{op="MULTIPART-START",outcome="ok"} 1"#,
            r#"berth_bucket_requests_total{op="MULTIPART-PART",outcome="ok"} 1"#,
            r#"berth_bucket_requests_total{op="MULTIPART-COMPLETE",outcome="ok"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
