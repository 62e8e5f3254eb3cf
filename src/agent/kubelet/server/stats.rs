//! `GET /stats/summary`: node and pod cpu and memory in the kubelet's Summary shape
//! (`stats.k8s.io/v1alpha1` `Summary`: `node` and `pods[]` with `cpu.usageCoreNanoSeconds`,
//! `memory.usageBytes` / `workingSetBytes`).
//!
//! Containers' numbers come from [`Runtime::stats`] (their cgroups); a pod's are the sum of its
//! running containers'; the node's come from `/proc/stat` and `/proc/meminfo`. Reads only.
//!
//! # Caveats
//! `usageNanoCores` (a rate) is not reported: it needs two samples, and this endpoint keeps no
//! history. Network, filesystem and volume stats are not reported.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::{status_response, ServerState};
use crate::agent::runtime::container::State as ContainerState;

/// Nanoseconds per `USER_HZ` tick of `/proc/stat` (100 Hz on every Linux architecture).
const NANOS_PER_TICK: u64 = 10_000_000;

/// (namespace, name, uid).
type PodKey = (String, String, String);
/// (containers, cpu, memory usage, working set).
type PodSums = (Vec<Value>, u64, u64, u64);

/// The handler.
pub(crate) async fn summary(State(state): State<ServerState>) -> Response {
    let containers = match state.runtime.list().await {
        Ok(list) => list,
        Err(err) => {
            return status_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &err.to_string(),
            )
        }
    };
    let now = jiff::Timestamp::now().to_string();
    let mut pods: BTreeMap<PodKey, PodSums> = BTreeMap::new();
    for c in containers
        .iter()
        .filter(|c| c.state == ContainerState::Running)
    {
        let Ok(stats) = state.runtime.stats(&c.id).await else {
            continue;
        };
        let entry = pods
            .entry((
                c.pod.namespace.clone(),
                c.pod.name.clone(),
                c.pod.uid.clone(),
            ))
            .or_default();
        entry.0.push(json!({
            "name": c.name,
            "startTime": c.started_at.clone().unwrap_or_else(|| c.created_at.clone()),
            "cpu": {"time": now, "usageCoreNanoSeconds": stats.cpu_usage_ns},
            "memory": {
                "time": now,
                "usageBytes": stats.memory_usage_bytes,
                "workingSetBytes": stats.memory_working_set_bytes,
            },
        }));
        entry.1 += stats.cpu_usage_ns;
        entry.2 += stats.memory_usage_bytes;
        entry.3 += stats.memory_working_set_bytes;
    }
    let pods: Vec<Value> = pods
        .into_iter()
        .map(|((namespace, name, uid), (containers, cpu, usage, ws))| {
            json!({
                "podRef": {"name": name, "namespace": namespace, "uid": uid},
                "containers": containers,
                "cpu": {"time": now, "usageCoreNanoSeconds": cpu},
                "memory": {"time": now, "usageBytes": usage, "workingSetBytes": ws},
            })
        })
        .collect();
    let node_name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut node = json!({"nodeName": node_name});
    if let Some(cpu) = node_cpu_ns(&stat) {
        node["cpu"] = json!({"time": now, "usageCoreNanoSeconds": cpu});
    }
    if let Some((total, available)) = node_memory(&meminfo) {
        let used = total.saturating_sub(available);
        node["memory"] = json!({
            "time": now,
            "availableBytes": available,
            "usageBytes": used,
            "workingSetBytes": used,
        });
    }
    let body = json!({"node": node, "pods": pods});
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Busy cpu time of all cpus in nanoseconds, from `/proc/stat`'s `cpu` line (everything but
/// idle and iowait).
pub fn node_cpu_ns(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal …
    let busy: u64 = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, v)| *v)
        .sum();
    Some(busy * NANOS_PER_TICK)
}

/// `(MemTotal, MemAvailable)` in bytes from `/proc/meminfo`.
pub fn node_memory(meminfo: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        meminfo.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(kib * 1024)
        })
    };
    Some((field("MemTotal")?, field("MemAvailable")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_numbers_from_proc() {
        let stat = "cpu  10 2 3 1000 50 1 1 0 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";
        assert_eq!(node_cpu_ns(stat), Some(17 * NANOS_PER_TICK));
        let meminfo = "MemTotal:       2048 kB\nMemFree:  10 kB\nMemAvailable:   1024 kB\n";
        assert_eq!(node_memory(meminfo), Some((2048 * 1024, 1024 * 1024)));
        assert_eq!(node_memory("MemTotal: 1 kB\n"), None);
    }
}
