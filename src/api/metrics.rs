//! `GET /metrics` on the admin listener: Prometheus text, through the `metrics` facade and its
//! Prometheus exporter. Counters are incremented where things happen; gauges of the tiers
//! are read from the store at scrape time. METRICS.md lists every series.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::registry::Mirror;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once); `None` if another recorder was installed first.
pub(crate) fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|_| handle)
        })
        .as_ref()
}

/// The exposition text, with the tiers' gauges read now.
pub(crate) fn render(mirror: &Mirror) -> String {
    let store = mirror.store();
    let usage = store.usage();
    for (tier, u) in [("memory", usage.memory), ("disk", usage.disk)] {
        metrics::gauge!("berth_tier_bytes", "tier" => tier).set(u.used as f64);
        metrics::gauge!("berth_tier_capacity_bytes", "tier" => tier).set(u.capacity as f64);
        metrics::gauge!("berth_tier_objects", "tier" => tier).set(u.objects as f64);
    }
    metrics::gauge!("berth_fills_in_flight").set(store.fills_in_flight() as f64);
    if let Some(bucket) = store.bucket() {
        let status = bucket.status();
        metrics::gauge!("berth_bucket_up").set(if status.up { 1.0 } else { 0.0 });
        metrics::gauge!("berth_bucket_uploads_waiting").set(status.waiting_retry as f64);
        if let Some(counted) = status.counted {
            metrics::gauge!("berth_tier_bytes", "tier" => "bucket").set(counted.bytes as f64);
            metrics::gauge!("berth_tier_objects", "tier" => "bucket").set(counted.objects as f64);
        }
    }
    match install() {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => "# metrics unavailable: another recorder is installed\n".to_owned(),
    }
}

/// The request-log route of a path, a bounded label.
pub(crate) fn route_of(path: &str) -> &'static str {
    match crate::api::route::parse(path) {
        Ok(crate::api::route::Route::Base) => "base",
        Ok(crate::api::route::Route::Manifest { .. }) => "manifest",
        Ok(crate::api::route::Route::Blob { .. }) => "blob",
        Ok(crate::api::route::Route::Tags { .. }) => "tags",
        Ok(crate::api::route::Route::Referrers { .. }) => "referrers",
        Ok(crate::api::route::Route::Upload) => "upload",
        Err(_) => "invalid",
    }
}
