//! `gochat shards --url …`: a live per-shard table of a gateway, from its
//! `/admin/shards` endpoint. Counters come as totals; the table shows rates
//! between two samples, so the first table appears after one interval.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Shard {
    pub shard: u64,
    pub connections: u64,
    pub accepted_total: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub slow_closes: u64,
    pub handshake_rejects: u64,
    pub outbound_queue_bytes: u64,
    pub loop_lag_us: u64,
    pub accepts_refused: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub gateway_id: String,
    pub timestamp_ms: i64,
    pub shards: Vec<Shard>,
}

#[derive(Deserialize)]
struct Envelope {
    data: Snapshot,
}

/// Fetches one snapshot.
pub async fn fetch(client: &reqwest::Client, url: &str) -> anyhow::Result<Snapshot> {
    let endpoint = format!("{}/admin/shards", url.trim_end_matches('/'));
    let resp =
        client.get(&endpoint).timeout(Duration::from_secs(5)).send().await.map_err(|e| anyhow::anyhow!("cannot reach {endpoint}: {e}"))?;
    if !resp.status().is_success() {
        anyhow::bail!("{endpoint} answered {}", resp.status());
    }
    Ok(resp.json::<Envelope>().await.map_err(|e| anyhow::anyhow!("{endpoint} sent an unexpected body: {e}"))?.data)
}

fn human(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.1}G", n / 1e9),
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n if n >= 1e4 => format!("{:.1}k", n / 1e3),
        n => format!("{n:.0}"),
    }
}

/// Renders the table of rates between `prev` and `now`.
pub fn render(prev: &Snapshot, now: &Snapshot) -> String {
    let secs = ((now.timestamp_ms - prev.timestamp_ms) as f64 / 1000.0).max(0.001);
    let before: HashMap<u64, &Shard> = prev.shards.iter().map(|s| (s.shard, s)).collect();
    let rate = |a: u64, b: Option<u64>| human(a.saturating_sub(b.unwrap_or(a)) as f64 / secs);
    let mut out = format!(
        "gateway {}  ({:.1}s window)\n{:>5} {:>8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>7} {:>8} {:>8}\n",
        now.gateway_id,
        secs,
        "shard",
        "conns",
        "accepts/s",
        "frames_in/s",
        "frames_out/s",
        "B_in/s",
        "B_out/s",
        "queue_B",
        "lag_us",
        "slow",
        "refused"
    );
    let mut total = Shard::default();
    for s in &now.shards {
        let p = before.get(&s.shard).copied();
        out.push_str(&format!(
            "{:>5} {:>8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>7} {:>8} {:>8}\n",
            s.shard,
            s.connections,
            rate(s.accepted_total, p.map(|p| p.accepted_total)),
            rate(s.frames_in, p.map(|p| p.frames_in)),
            rate(s.frames_out, p.map(|p| p.frames_out)),
            rate(s.bytes_in, p.map(|p| p.bytes_in)),
            rate(s.bytes_out, p.map(|p| p.bytes_out)),
            human(s.outbound_queue_bytes as f64),
            s.loop_lag_us,
            s.slow_closes,
            s.accepts_refused,
        ));
        total.connections += s.connections;
        total.outbound_queue_bytes += s.outbound_queue_bytes;
        total.slow_closes += s.slow_closes;
    }
    out.push_str(&format!(
        "{:>5} {:>8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>7} {:>8}\n",
        "all",
        total.connections,
        "",
        "",
        "",
        "",
        "",
        human(total.outbound_queue_bytes as f64),
        "",
        total.slow_closes
    ));
    out
}

/// Prints the table every `interval` (once with `once`), until Ctrl-C.
pub async fn run(url: &str, interval: Duration, once: bool) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let mut prev = fetch(&client, url).await?;
    let tty = std::io::stdout().is_terminal();
    loop {
        tokio::time::sleep(interval).await;
        let now = fetch(&client, url).await?;
        let table = render(&prev, &now);
        let mut stdout = std::io::stdout().lock();
        if tty && !once {
            // Clear the screen and home the cursor: a live view.
            write!(stdout, "\x1b[2J\x1b[H")?;
        }
        writeln!(stdout, "{table}")?;
        stdout.flush()?;
        if once {
            return Ok(());
        }
        prev = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(ts: i64, frames_out: u64, conns: u64) -> Snapshot {
        Snapshot {
            gateway_id: "gw".into(),
            timestamp_ms: ts,
            shards: vec![Shard { shard: 0, connections: conns, frames_out, ..Default::default() }],
        }
    }

    #[test]
    fn rates_come_from_the_difference_of_two_samples() {
        let t = render(&snap(0, 1_000, 5), &snap(2_000, 41_000, 7));
        let row = t.lines().find(|l| l.trim_start().starts_with('0')).expect("shard row");
        assert!(row.contains("20.0k"), "{t}");
        assert!(row.split_whitespace().nth(1) == Some("7"), "{t}");
    }

    #[test]
    fn unknown_fields_and_missing_ones_are_tolerated() {
        let body = r#"{"data":{"gatewayId":"g","timestampMs":1,"shards":[{"shard":1,"connections":2,"future":9}]}}"#;
        let e: Envelope = serde_json::from_str(body).expect("parses");
        assert_eq!(e.data.shards[0].connections, 2);
    }
}
