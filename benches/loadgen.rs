//! The load client of `benches/load.sh`: CLIENTS connections, each sending one request after
//! another for SECS seconds: manifest HEADs by tag (40 %) and blob GETs (60 %, layer or
//! config, bodies read whole) over small images that come into play one after another, so
//! cache misses keep arriving among the hits (at second t of D, images 1..N*(t+1)/D).
//! wrk is not used because it waits for a body after a HEAD.
//!
//!   loadgen URL SMALL_BLOBS_FILE SECS CLIENTS
//!
//! Prints: RESULT requests=N duration_us=N non2xx=N errors=N bytes=N p50_us=N p99_us=N max_us=N

use std::time::{Duration, Instant};

const ACCEPT: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

#[derive(Default)]
struct Tally {
    requests: u64,
    non2xx: u64,
    errors: u64,
    bytes: u64,
    latencies_us: Vec<u32>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, file, secs, clients] = args.as_slice() else {
        eprintln!("usage: loadgen URL SMALL_BLOBS_FILE SECS CLIENTS");
        std::process::exit(2);
    };
    let images: Vec<[String; 3]> = std::fs::read_to_string(file)
        .expect("reading the images file")
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(str::to_owned);
            Some([f.next()?, f.next()?, f.next()?])
        })
        .collect();
    assert!(!images.is_empty(), "no images in {file}");
    let secs: u64 = secs.parse().expect("SECS");
    let clients: u64 = clients.parse().expect("CLIENTS");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let images = std::sync::Arc::new(images);
    let started = Instant::now();
    let tallies = runtime.block_on(async {
        let tasks = (0..clients).map(|id| {
            let (images, url) = (images.clone(), url.trim_end_matches('/').to_owned());
            tokio::spawn(async move { client(id, &url, &images, started, Duration::from_secs(secs)).await })
        });
        futures::future::join_all(tasks).await
    });
    let elapsed = started.elapsed();
    let mut all = Tally::default();
    for t in tallies.into_iter().map(|t| t.expect("client task")) {
        all.requests += t.requests;
        all.non2xx += t.non2xx;
        all.errors += t.errors;
        all.bytes += t.bytes;
        all.latencies_us.extend(t.latencies_us);
    }
    all.latencies_us.sort_unstable();
    let pct = |p: f64| {
        all.latencies_us.get(((all.latencies_us.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0)
    };
    println!(
        "RESULT requests={} duration_us={} non2xx={} errors={} bytes={} p50_us={} p99_us={} max_us={}",
        all.requests,
        elapsed.as_micros(),
        all.non2xx,
        all.errors,
        all.bytes,
        pct(0.5),
        pct(0.99),
        all.latencies_us.last().copied().unwrap_or(0)
    );
}

/// One connection's loop.
async fn client(id: u64, url: &str, images: &[[String; 3]], started: Instant, run: Duration) -> Tally {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (id.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut t = Tally::default();
    while started.elapsed() < run {
        let second = started.elapsed().as_secs();
        let playing = (images.len() as u64 * (second + 1)).div_ceil(run.as_secs().max(1));
        let image = &images[(next() % playing.clamp(1, images.len() as u64)) as usize];
        let roll = next() % 10;
        let sent = Instant::now();
        let result = if roll < 4 {
            http.head(format!("{url}/v2/bench/small/manifests/{}", image[0]))
                .header("accept", ACCEPT)
                .send()
                .await
        } else {
            let blob = if roll < 7 { &image[1] } else { &image[2] };
            http.get(format!("{url}/v2/bench/small/blobs/{blob}")).send().await
        };
        t.requests += 1;
        match result {
            Ok(resp) => {
                let ok = resp.status().is_success();
                match resp.bytes().await {
                    Ok(body) => t.bytes += body.len() as u64,
                    Err(_) => t.errors += 1,
                }
                if !ok {
                    t.non2xx += 1;
                }
            }
            Err(_) => t.errors += 1,
        }
        t.latencies_us.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
    }
    t
}
