//! `hopper workers`: the worker nodes registered in the broker the config names
//! (`hopper_workers::nodes`), read directly like the other inspection commands, so it works
//! on a node with no API. `--json` prints what `GET /v1/workers` answers.

use anyhow::Result;
use hopper_workers::Broker;
use hopper_workers::nodes::WorkerNode;
use serde_json::json;

use crate::out;

/// Prints every node heard from in the last minute, as a table or as JSON.
pub(super) async fn run(broker: &dyn Broker, json: bool) -> Result<()> {
    let nodes = broker.nodes().await?;
    if json {
        return Ok(out::json(&json!({ "workers": nodes }))?);
    }
    let rows: Vec<Vec<String>> = nodes.iter().map(row).collect();
    out::table(
        &["host", ">pid", "queues", "kinds", ">busy", "last seen"],
        &rows,
    )?;
    if rows.is_empty() {
        super::inspect::eprint_line("(no worker node heard from in the last minute)");
    }
    Ok(())
}

fn row(n: &WorkerNode) -> Vec<String> {
    let queues = n
        .queues
        .iter()
        .map(|q| {
            let mut s = q.queue.clone();
            if let Some(limit) = q.limit {
                s.push_str(&format!(" {}/{limit}", q.busy));
            }
            if q.paused {
                s.push_str(" (paused)");
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        n.host.clone(),
        n.pid.to_string(),
        queues,
        n.kinds.join(","),
        format!("{}/{}", n.slots_busy, n.slots_total),
        n.last_seen.to_rfc3339(),
    ]
}
