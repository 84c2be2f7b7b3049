//! `/metrics` at fleet size: how many series one scrape carries with every simulated agent
//! connected and after runs on all of them, how large it is and how long it takes. The series
//! count is what a Prometheus pays per scrape interval; it must stay a bounded few per agent.

use std::time::{Duration, Instant};

use serde_json::json;

use super::error::{BenchError, Result};
use super::report::{Budget, Report};
use super::stats::percentile;

/// Scrapes taken; the reported time is their median.
const SCRAPES: usize = 5;

/// Series of a Prometheus text exposition: every sample line (comments and blank lines are not
/// series).
pub fn count_series(body: &str) -> usize {
    body.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

/// Sample lines naming one of the benchmark's agents (label `agent="..."`).
fn per_agent_series(body: &str) -> usize {
    body.lines()
        .filter(|l| !l.starts_with('#') && (l.contains("{agent=\"") || l.contains(",agent=\"")))
        .count()
}

/// Scrapes `url` (`http://host:port/metrics`) [`SCRAPES`] times and reports the series count,
/// the size and the median time of one scrape.
pub async fn measure(url: &str, agents: usize, report: &mut Report) -> Result<()> {
    let client = super::http::client(Duration::from_secs(120))?;
    let mut times = Vec::with_capacity(SCRAPES);
    let mut body = String::new();
    for _ in 0..SCRAPES {
        let t = Instant::now();
        let resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| BenchError::Failed(format!("cannot scrape {url}: {e}")))?;
        let status = resp.status();
        body = resp
            .text()
            .await
            .map_err(|e| BenchError::Failed(format!("cannot read the scrape of {url}: {e}")))?;
        if !status.is_success() {
            return Err(BenchError::Failed(format!(
                "{url} answered {status}: {}",
                body.trim()
            )));
        }
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let series = count_series(&body);
    let per_agent = per_agent_series(&body);
    report.add(
        "metrics.series",
        &format!("/metrics series, {agents} agents connected, after runs"),
        Some(series as f64),
        "series",
        Budget::None,
        format!(
            "{per_agent} carry an agent label ({:.1} per agent)",
            per_agent as f64 / agents.max(1) as f64
        ),
    );
    report.add(
        "metrics.scrape_mb",
        &format!("/metrics size, {agents} agents"),
        Some((body.len() as f64 / 1e5).round() / 10.0),
        "MB",
        Budget::None,
        "one scrape, uncompressed",
    );
    report.add(
        "metrics.scrape_p50_ms",
        &format!("/metrics scrape time, {agents} agents"),
        percentile(&times, 50.0).map(f64::round),
        "ms",
        Budget::None,
        format!("median of {SCRAPES}"),
    );
    report.context("metrics.per_agent_series", json!(per_agent));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_sample_lines() {
        let body = "# HELP a x\n# TYPE a gauge\na 1\nb{agent=\"x\"} 2\nd{from_agent=\"z\"} 1\n\nc_total{agent=\"y\",ma=\"m\"} 3\n";
        assert_eq!(count_series(body), 4);
        assert_eq!(per_agent_series(body), 2);
    }
}
