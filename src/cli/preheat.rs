//! `berth preheat`: submits a preheat job, shows its progress, prints a summary.
//! Exit status: 0 when every blob is cached, 1 when the job failed, 2 when it could not run.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::preheat::status::{Accepted, ErrorBody, ImageStatus, ItemState, JobState, JobStatus, TierName};

pub struct Args {
    pub admin: String,
    pub platforms: Vec<String>,
    pub tiers: Vec<String>,
    pub pin: bool,
    pub cluster: bool,
    pub referrers: bool,
    pub json: bool,
    pub images: Vec<String>,
}

/// Why the job could not be submitted or followed (exit status 2).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error("BERTH_ADMIN_TOKEN is not a valid token")]
    BadToken,
    #[error("{0}")]
    Client(#[source] reqwest::Error),
    #[error("cannot reach {admin}: {source}")]
    Unreachable {
        admin: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("unreadable answer: {0}")]
    UnreadableAnswer(#[source] reqwest::Error),
    /// The admin API refused the job, with its `error` (or none).
    #[error("{}", .0.as_deref().unwrap_or("request refused"))]
    Refused(Option<String>),
    #[error("answer has no status_url")]
    NoStatusUrl,
    #[error("unreadable status: {0}")]
    StatusBody(#[source] reqwest::Error),
    #[error("unreadable status: {0}")]
    UnreadableStatus(#[source] serde_json::Error),
}

/// A job's final status: as the admin API sent it (printed with `--json`, fields this
/// version does not know included), and as read.
pub(crate) struct Followed {
    pub(crate) sent: Value,
    pub(crate) status: JobStatus,
}

pub fn run(args: Args) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(submit_and_follow(&args)) {
        Ok(Followed { sent, status }) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&sent).unwrap_or_default());
            } else {
                print!("{}", summary(&status));
            }
            if status.state == JobState::Succeeded {
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

async fn submit_and_follow(args: &Args) -> Result<Followed, CliError> {
    // A berth whose admin listener needs a token: BERTH_ADMIN_TOKEN holds it.
    let mut headers = reqwest::header::HeaderMap::new();
    if let Ok(token) = std::env::var("BERTH_ADMIN_TOKEN") {
        let value = format!("Bearer {}", token.trim());
        let mut value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| CliError::BadToken)?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let client = reqwest::Client::builder().default_headers(headers).build().map_err(CliError::Client)?;
    let admin = args.admin.trim_end_matches('/');
    let unreachable = |source| CliError::Unreachable { admin: admin.to_owned(), source };
    let resp = client.post(format!("{admin}/api/v1/preheat")).json(&request(args)).send().await;
    let resp = resp.map_err(unreachable)?;
    let status = resp.status();
    let answer: Value = resp.json().await.map_err(CliError::UnreadableAnswer)?;
    if !status.is_success() {
        return Err(CliError::Refused(ErrorBody::deserialize(&answer).ok().map(|b| b.error)));
    }
    let accepted = Accepted::deserialize(&answer).map_err(|_| CliError::NoStatusUrl)?;
    let url = format!("{admin}{}", accepted.status_url.ok_or(CliError::NoStatusUrl)?);
    let mut progress = Progress::new(!args.json);
    loop {
        let sent = client.get(&url).send().await.map_err(unreachable)?;
        let sent: Value = sent.json().await.map_err(CliError::StatusBody)?;
        let status = JobStatus::deserialize(&sent).map_err(CliError::UnreadableStatus)?;
        progress.show(&status);
        if status.state.ended() {
            progress.finish();
            return Ok(Followed { sent, status });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The preheat request of the command line. Tiers go as given: the admin API judges them.
fn request(args: &Args) -> Value {
    let mut body = json!({ "images": args.images, "pin": args.pin });
    if !args.platforms.is_empty() {
        body["platforms"] = json!(args.platforms);
    }
    if !args.tiers.is_empty() {
        body["tiers"] = json!(args.tiers);
    }
    if args.referrers {
        body["referrers"] = json!(true);
    }
    if args.cluster {
        body["scope"] = json!("cluster");
    }
    body
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

    fn show(&mut self, status: &JobStatus) {
        if !self.enabled {
            return;
        }
        let sums: Vec<(String, u64, u64)> = status
            .images
            .iter()
            .map(|i| {
                let total = i.items.iter().map(|x| x.size).sum();
                let done = i.items.iter().map(|x| x.bytes_done).sum();
                (i.reference.clone(), done, total)
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

/// The final table: one row per image, then every failed item with its error, every note,
/// each peer's part, and the job's state.
pub(crate) fn summary(status: &JobStatus) -> String {
    let header = ["IMAGE", "DIGEST", "PLATFORMS", "CACHED", "SIZE", "IN MEMORY", "ON DISK"];
    let mut rows = vec![header.map(str::to_owned)];
    rows.extend(status.images.iter().map(row));
    let widths: Vec<usize> = (0..7).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    for p in status.images.iter().flat_map(problems) {
        out.push_str(&p);
        out.push('\n');
    }
    for peer in status.peers.iter().flatten() {
        out.push_str(&format!(
            "peer {}: {} ({}/{} cached){}\n",
            peer.peer,
            peer.state,
            peer.items_cached.unwrap_or(0),
            peer.items.unwrap_or(0),
            peer.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default(),
        ));
    }
    out.push_str(&format!("preheat {}: {}\n", status.id, status.state));
    out
}

/// An image's row of the summary table.
fn row(image: &ImageStatus) -> [String; 7] {
    let in_tier = |t: TierName| image.count(|i| i.tiers.contains(&t)).to_string();
    [
        image.reference.clone(),
        image.digest.as_ref().map_or("-".into(), |d| d.as_str().chars().take(19).collect()),
        image.platforms.join(","),
        format!("{}/{}", image.count(|i| i.state == ItemState::Cached), image.items.len()),
        size(image.items.iter().map(|i| i.size).sum()),
        in_tier(TierName::Memory),
        in_tier(TierName::Disk),
    ]
}

/// An image's error, its failed items with their errors, and its items' notes.
fn problems(image: &ImageStatus) -> Vec<String> {
    let reference = &image.reference;
    let mut out: Vec<String> = image.error.iter().map(|e| format!("{reference}: {e}")).collect();
    for i in image.items.iter().filter(|i| i.state == ItemState::Failed) {
        let error = i.error.as_deref().unwrap_or("failed");
        out.push(format!("{reference}: {} {}: {error}", i.kind.as_str(), i.digest));
    }
    for i in &image.items {
        if let Some(note) = &i.note {
            out.push(format!("{reference}: note: {} {note}", i.digest));
        }
    }
    out
}

fn size(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}
