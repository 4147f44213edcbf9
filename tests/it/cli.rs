//! `berth preheat` (the binary) against a running berth.

use crate::common;

use common::{bytes_of, Harness};

async fn preheat_cli(h: &Harness, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("preheat")
        .arg("--admin")
        .arg(format!("http://{}", h.berth.admin_addr))
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn success_prints_progress_and_summary_and_exits_0() {
    let h = Harness::start().await;
    let (_, layers) = h.upstream.put_image("library/app", "1", &[bytes_of(3 << 20, 1), bytes_of(1000, 2)]);
    let (code, stdout, stderr) = preheat_cli(&h, &["app:1"]).await;
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.contains("docker.io/library/app:1: "), "no progress line: {stderr}");
    let row = stdout.lines().find(|l| l.starts_with("docker.io/library/app:1")).expect("summary row");
    assert!(row.contains("4/4"), "manifest, config and two layers cached: {row}");
    assert!(stdout.contains("succeeded"));
    assert!(h.stored_blobs().contains(&layers[0].hex().to_owned()));

    let (code, stdout, _) = preheat_cli(&h, &["--json", "--tier", "disk", "app:1"]).await;
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["tiers"], serde_json::json!(["disk"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_blob_exits_1_and_names_it() {
    let h = Harness::start().await;
    let (_, layers) = h.upstream.put_image("library/app", "1", &[bytes_of(1000, 3), bytes_of(1000, 4)]);
    h.upstream.state.blobs.lock().unwrap().remove(layers[1].as_str());
    let (code, stdout, _) = preheat_cli(&h, &["app:1"]).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains(&format!("layer {}", layers[1])), "{stdout}");
    assert!(stdout.contains("failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_request_exits_2() {
    let h = Harness::start().await;
    let (code, _, stderr) = preheat_cli(&h, &["quay.io/org/app:1"]).await;
    assert_eq!(code, 2);
    assert!(stderr.contains("not mirrored"), "{stderr}");
}
