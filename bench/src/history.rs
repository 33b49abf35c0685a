//! History page latency: what a client waits for when it opens a room or
//! scrolls back, measured after the load so the rooms hold its messages.

use std::time::Instant;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde_json::Value;

/// Messages per page, as the web client asks.
const PAGE: u64 = 50;

/// A member's token and a room it belongs to.
pub struct Reader {
    pub token: String,
    pub room: String,
}

/// Fetches `requests` pages one after another, alternating the newest page
/// and an older one (`before_seq` halfway back), and returns their latencies
/// in microseconds.
pub async fn sample(
    base: &str,
    readers: &[Reader],
    requests: usize,
) -> anyhow::Result<Histogram<u64>> {
    let client = reqwest::Client::new();
    let mut latencies = crate::conn::histogram();
    let mut newest = vec![0u64; readers.len()];
    for i in 0..requests {
        let k = i % readers.len();
        let reader = &readers[k];
        let older = i / readers.len() % 2 == 1 && newest[k] > 1;
        let url = if older {
            format!(
                "{base}/api/rooms/{}/messages?limit={PAGE}&before_seq={}",
                reader.room,
                newest[k] / 2 + 1
            )
        } else {
            format!("{base}/api/rooms/{}/messages?limit={PAGE}", reader.room)
        };
        let started = Instant::now();
        let response = client
            .get(&url)
            .bearer_auth(&reader.token)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let page: Value = response
            .json()
            .await
            .with_context(|| format!("GET {url}: body"))?;
        let _ = latencies.record(started.elapsed().as_micros().max(1) as u64);
        if !status.is_success() {
            bail!("GET {url}: {status} {page}");
        }
        if !older {
            newest[k] = page["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m["seq"].as_u64())
                .max()
                .unwrap_or(0);
        }
    }
    Ok(latencies)
}
