//! Micro-benchmarks of the hot paths: a whole fill (pump, hash, write, follow) from an
//! in-memory source, hashing batches, a memory-tier hit, digest parsing.
//! Run with `cargo bench --bench hot_paths`. Side-by-side throughput figures against other
//! mirrors belong to the comparison harness, not here.

use std::sync::Arc;

use berth::config::Storage;
use berth::oci::digest::Digest;
use berth::test_util::MemoryTier;
use berth::test_util::Source;
use berth::test_util::{body, Store};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::{FutureExt, StreamExt};
use sha2::{Digest as _, Sha256};

/// One cold fill of a 64 MiB blob with one follower reading it, as the cold GET path does
/// minus the sockets: upstream chunks of 64 KiB → batches → hash + write → mapped reads.
fn fill(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage {
        dir: dir.path().to_owned(),
        memory_capacity: 1 << 30,
        memory_max_object: 1 << 20,
        disk_capacity: 1 << 40,
        max_fills: 64,
        max_blob_size: 1 << 40,
        fill_connections: 1,
        fill_connections_above: u64::MAX,
    };
    let store = rt.block_on(async { Store::open(&storage) }).unwrap();
    let blob =
        Bytes::from((0..64u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<u8>>());
    let digest = Digest::of(&blob);
    let mut g = c.benchmark_group("fill");
    g.throughput(Throughput::Bytes(blob.len() as u64));
    g.sample_size(10);
    g.bench_function("cold_fill_64MiB_one_follower", |b| {
        b.iter_custom(|iters| {
            let mut timed = std::time::Duration::ZERO;
            for _ in 0..iters {
                timed += rt.block_on(async {
                    let chunks: Vec<_> = (0..blob.len())
                        .step_by(64 << 10)
                        .map(|i| Ok(blob.slice(i..i + (64 << 10))))
                        .collect();
                    let source = Source {
                        len: Some(blob.len() as u64),
                        body: futures::stream::iter(chunks).boxed(),
                        resume: None,
                        rejected: None,
                        hold: None,
                        floor: None,
                    };
                    let started = std::time::Instant::now();
                    let (fill, _) =
                        Arc::clone(&store).fill(&digest, "bench", async move { Ok(source) }.boxed());
                    fill.ready().await.unwrap();
                    let mut body = body::follow(fill, 0, Some(blob.len() as u64));
                    let mut n = 0;
                    while let Some(chunk) = body.next().await {
                        n += chunk.unwrap().len();
                    }
                    assert_eq!(n, blob.len());
                    // The client is done here; publishing (fsync, rename) follows off its path.
                    let elapsed = started.elapsed();
                    while store.fills_in_flight() > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                    std::fs::remove_file(store.disk_path(&digest)).unwrap();
                    elapsed
                });
            }
            timed
        });
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    // The fill hashes in the writer's 256 KiB batches.
    let batch = vec![7u8; 256 * 1024];
    let mut g = c.benchmark_group("fill");
    g.throughput(Throughput::Bytes(batch.len() as u64));
    g.bench_function("sha256_256KiB_batch", |b| {
        let mut h = Sha256::new();
        b.iter(|| h.update(&batch));
    });
    g.finish();
}

fn memory_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tier = MemoryTier::new(64 << 20, 8 << 20);
    let blob = Bytes::from(vec![1u8; 4 << 20]);
    let d = Digest::of(&blob);
    rt.block_on(tier.insert(d.clone(), blob));
    c.bench_function("memory_tier_get_4MiB", |b| {
        b.iter(|| rt.block_on(tier.get(&d)).unwrap());
    });
}

fn digest_parse(c: &mut Criterion) {
    let s = Digest::of(b"x").to_string();
    c.bench_function("digest_parse", |b| b.iter(|| Digest::parse(&s).unwrap()));
}

criterion_group!(benches, fill, hashing, memory_hit, digest_parse);
criterion_main!(benches);
