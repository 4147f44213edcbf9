//! Micro-benchmarks of the hot paths: hashing while filling, a memory-tier hit, route parsing.
//! Run with `cargo bench --bench hot_paths`. Side-by-side throughput figures against other
//! mirrors belong to the comparison harness, not here.

use berth::digest::Digest;
use berth::store::memory::MemoryTier;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sha2::{Digest as _, Sha256};

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

criterion_group!(benches, hashing, memory_hit, digest_parse);
criterion_main!(benches);
