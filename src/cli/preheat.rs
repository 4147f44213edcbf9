//! `berth preheat`: submits a preheat job, shows its progress, prints a summary.
//! Exit status: 0 when every blob is cached, 1 when the job failed, 2 when it could not run.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

pub struct Args {
    pub admin: String,
    pub platforms: Vec<String>,
    pub tiers: Vec<String>,
    pub pin: bool,
    pub cluster: bool,
    pub json: bool,
    pub images: Vec<String>,
}

pub fn run(args: Args) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(submit_and_follow(&args)) {
        Ok(status) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
            } else {
                print!("{}", summary(&status));
            }
            if status["state"] == "succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("berth preheat: {e}");
            ExitCode::from(2)
        }
    }
}

async fn submit_and_follow(args: &Args) -> Result<Value, String> {
    // A berth whose admin listener needs a token: BERTH_ADMIN_TOKEN holds it.
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(token) = std::env::var("BERTH_ADMIN_TOKEN") {
        let value = format!("Bearer {}", token.trim());
        let mut value = reqwest::header::HeaderValue::from_str(&value)
            .map_err(|_| "BERTH_ADMIN_TOKEN is not a valid token")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let client = reqwest::Client::builder().default_headers(headers).build().map_err(|e| e.to_string())?;
    let admin = args.admin.trim_end_matches('/');
    let mut body = json!({ "images": args.images, "pin": args.pin });
    if !args.platforms.is_empty() {
        body["platforms"] = json!(args.platforms);
    }
    if !args.tiers.is_empty() {
        body["tiers"] = json!(args.tiers);
    }
    if args.cluster {
        body["scope"] = json!("cluster");
    }
    let resp = client
        .post(format!("{admin}/api/v1/preheat"))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("cannot reach {admin}: {e}"))?;
    let status = resp.status();
    let answer: Value = resp.json().await.map_err(|e| format!("unreadable answer: {e}"))?;
    if !status.is_success() {
        return Err(answer["error"].as_str().unwrap_or("request refused").to_owned());
    }
    let url = format!("{admin}{}", answer["status_url"].as_str().ok_or("answer has no status_url")?);
    let mut progress = Progress::new(!args.json);
    loop {
        let status: Value = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("cannot reach {admin}: {e}"))?
            .json()
            .await
            .map_err(|e| format!("unreadable status: {e}"))?;
        progress.show(&status);
        if status["state"] == "succeeded" || status["state"] == "failed" {
            progress.finish();
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Bars per image and overall on a terminal; a plain line per image every few seconds
/// otherwise, so that logs of unattended runs show progress too.
struct Progress {
    enabled: bool,
    bars: Option<(MultiProgress, Vec<ProgressBar>, ProgressBar)>,
    last_line: Option<Instant>,
}

impl Progress {
    fn new(enabled: bool) -> Progress {
        Progress { enabled, bars: None, last_line: None }
    }

    fn show(&mut self, status: &Value) {
        if !self.enabled {
            return;
        }
        let images = status["images"].as_array().cloned().unwrap_or_default();
        let sums: Vec<(String, u64, u64)> = images
            .iter()
            .map(|i| {
                let items = i["items"].as_array().cloned().unwrap_or_default();
                let total = items.iter().map(|x| x["size"].as_u64().unwrap_or(0)).sum();
                let done = items.iter().map(|x| x["bytes_done"].as_u64().unwrap_or(0)).sum();
                (i["reference"].as_str().unwrap_or("?").to_owned(), done, total)
            })
            .collect();
        if !std::io::stderr().is_terminal() {
            if self.last_line.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
                for (reference, done, total) in &sums {
                    eprintln!("{reference}: {} / {}", size(*done), size(*total));
                }
                self.last_line = Some(Instant::now());
            }
            return;
        }
        let (_, bars, overall) = self.bars.get_or_insert_with(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let style =
                ProgressStyle::with_template("{msg:40} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
                    .expect("static template");
            let bars = sums
                .iter()
                .map(|(r, _, _)| {
                    let b = multi.add(ProgressBar::new(0).with_style(style.clone()));
                    b.set_message(r.clone());
                    b
                })
                .collect();
            let overall = multi.add(ProgressBar::new(0).with_style(style.clone()));
            overall.set_message("all images");
            (multi, bars, overall)
        });
        for (bar, (_, done, total)) in bars.iter().zip(&sums) {
            bar.set_length(*total);
            bar.set_position(*done);
        }
        overall.set_length(sums.iter().map(|s| s.2).sum());
        overall.set_position(sums.iter().map(|s| s.1).sum());
    }

    fn finish(&mut self) {
        if let Some((_, bars, overall)) = &self.bars {
            bars.iter().for_each(ProgressBar::finish);
            overall.finish();
        }
    }
}

/// The final table: one row per image, then every failed item with its error.
pub fn summary(status: &Value) -> String {
    let mut rows = vec![[
        "IMAGE".to_owned(),
        "DIGEST".into(),
        "PLATFORMS".into(),
        "CACHED".into(),
        "SIZE".into(),
        "IN MEMORY".into(),
        "ON DISK".into(),
    ]];
    let mut problems = Vec::new();
    for image in status["images"].as_array().into_iter().flatten() {
        let items = image["items"].as_array().cloned().unwrap_or_default();
        let count = |f: &dyn Fn(&Value) -> bool| items.iter().filter(|i| f(i)).count();
        let in_tier =
            |t: &'static str| move |i: &Value| i["tiers"].as_array().is_some_and(|a| a.contains(&json!(t)));
        let reference = image["reference"].as_str().unwrap_or("?");
        rows.push([
            reference.to_owned(),
            image["digest"].as_str().map_or("-".into(), |d| d.chars().take(19).collect()),
            image["platforms"]
                .as_array()
                .map_or(String::new(), |p| p.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",")),
            format!("{}/{}", count(&|i| i["state"] == "cached"), items.len()),
            size(items.iter().map(|i| i["size"].as_u64().unwrap_or(0)).sum()),
            count(&in_tier("memory")).to_string(),
            count(&in_tier("disk")).to_string(),
        ]);
        if let Some(e) = image["error"].as_str() {
            problems.push(format!("{reference}: {e}"));
        }
        for i in items.iter().filter(|i| i["state"] == "failed") {
            let kind = i["kind"].as_str().unwrap_or("?");
            let digest = i["digest"].as_str().unwrap_or("?");
            problems
                .push(format!("{reference}: {kind} {digest}: {}", i["error"].as_str().unwrap_or("failed")));
        }
        for i in items.iter().filter(|i| i["note"].is_string()) {
            problems.push(format!(
                "{reference}: note: {} {}",
                i["digest"].as_str().unwrap_or("?"),
                i["note"].as_str().unwrap_or("")
            ));
        }
    }
    let widths: Vec<usize> = (0..7).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for p in problems {
        out.push_str(&p);
        out.push('\n');
    }
    for peer in status["peers"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "peer {}: {} ({}/{} cached){}\n",
            peer["peer"].as_str().unwrap_or("?"),
            peer["state"].as_str().unwrap_or("?"),
            peer["items_cached"].as_u64().unwrap_or(0),
            peer["items"].as_u64().unwrap_or(0),
            peer["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default(),
        ));
    }
    out.push_str(&format!(
        "preheat {}: {}\n",
        status["id"].as_str().unwrap_or("?"),
        status["state"].as_str().unwrap_or("?")
    ));
    out
}

fn size(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}
