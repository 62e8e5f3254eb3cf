//! Pod and container cgroups, laid out as the kubelet lays out `kubepods`.
//!
//! Under one root (`/cluster`) pods are grouped by QoS class: Guaranteed pods sit directly under
//! the root, Burstable and BestEffort pods under `burstable/` and `besteffort/`, each pod in
//! `pod<uid>/`, each container in `<pod cgroup>/<container id>` (libcontainer creates and removes
//! the container cgroup from the OCI spec's `cgroupsPath`). Pod cgroups carry the pod's cpu
//! shares and quota, memory limit and pids limit. Works on cgroup v2 (unified) and v1 (legacy or
//! hybrid: a v2 mount beside v1 controllers counts as v1, as libcontainer sees it).
//!
//! This module reads and writes cgroupfs only; it must not start or signal processes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The root of everything this runtime puts in cgroups (the kubelet's `kubepods`).
pub const ROOT: &str = "/cluster";

const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// v1 controllers a pod cgroup is made in (the others are made by libcontainer for containers).
const V1_POD_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "pids"];

/// Errors of cgroup handling.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup filesystem at {CGROUP_MOUNT}")]
    NoCgroupFs,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which cgroup hierarchy the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Detects the hierarchy as libcontainer does.
pub fn detect() -> Result<Version, CgroupError> {
    let stat = rustix::fs::statfs(CGROUP_MOUNT).map_err(|_| CgroupError::NoCgroupFs)?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between architectures
    if stat.f_type as i64 == CGROUP2_SUPER_MAGIC {
        Ok(Version::V2)
    } else {
        Ok(Version::V1)
    }
}

/// The QoS class of a pod, as Kubernetes computes it from requests and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// Limits of a pod (or container) cgroup. `None` leaves the kernel's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// cpu.shares (v1); converted to cpu.weight on v2.
    pub cpu_shares: Option<u64>,
    /// CFS quota in microseconds per `cpu_period`.
    pub cpu_quota: Option<i64>,
    /// CFS period in microseconds (100000 by default).
    pub cpu_period: Option<u64>,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// Maximum number of processes.
    pub pids_limit: Option<i64>,
}

/// The cgroup path of a pod (relative to the hierarchy root, starting with `/`).
pub fn pod_path(qos: QosClass, pod_uid: &str) -> String {
    let uid = pod_uid.replace('/', "_");
    match qos {
        QosClass::Guaranteed => format!("{ROOT}/pod{uid}"),
        QosClass::Burstable => format!("{ROOT}/burstable/pod{uid}"),
        QosClass::BestEffort => format!("{ROOT}/besteffort/pod{uid}"),
    }
}

/// The cgroup path of a container inside its pod's cgroup.
pub fn container_path(pod_path: &str, container_id: &str) -> String {
    format!("{pod_path}/{container_id}")
}

/// The directory of `path` in a hierarchy (`controller` is ignored on v2).
pub fn dir(version: Version, controller: &str, path: &str) -> PathBuf {
    let relative = path.trim_start_matches('/');
    match version {
        Version::V2 => Path::new(CGROUP_MOUNT).join(relative),
        Version::V1 => Path::new(CGROUP_MOUNT).join(controller).join(relative),
    }
}

/// Converts cpu.shares to cpu.weight as runc and the kubelet do.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// Creates (or updates) the cgroup of a pod and its QoS parent, and writes its limits.
pub fn ensure_pod(
    qos: QosClass,
    pod_uid: &str,
    resources: &Resources,
) -> Result<String, CgroupError> {
    let version = detect()?;
    let path = pod_path(qos, pod_uid);
    match version {
        Version::V2 => {
            // Each level must delegate the controllers to the next.
            let mut current = PathBuf::from(CGROUP_MOUNT);
            for part in path.trim_start_matches('/').split('/') {
                enable_v2_controllers(&current)?;
                current.push(part);
                fs::create_dir_all(&current).map_err(io_err(&current))?;
            }
            enable_v2_controllers(&current)?;
        }
        Version::V1 => {
            for controller in V1_POD_CONTROLLERS {
                let base = Path::new(CGROUP_MOUNT).join(controller);
                if !base.exists() {
                    continue;
                }
                let target = dir(version, controller, &path);
                fs::create_dir_all(&target).map_err(io_err(&target))?;
            }
        }
    }
    if qos == QosClass::BestEffort {
        // The kubelet gives the BestEffort parent the minimum share.
        let parent = format!("{ROOT}/besteffort");
        apply(
            version,
            &parent,
            &Resources {
                cpu_shares: Some(2),
                ..Resources::default()
            },
        )?;
    }
    apply(version, &path, resources)?;
    Ok(path)
}

fn enable_v2_controllers(dir: &Path) -> Result<(), CgroupError> {
    let control = dir.join("cgroup.subtree_control");
    let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    for controller in ["cpu", "memory", "pids", "io", "cpuset", "hugetlb"] {
        if available.split_whitespace().any(|c| c == controller) {
            // Fails harmlessly when already enabled or when processes sit in this cgroup.
            let _ = fs::write(&control, format!("+{controller}"));
        }
    }
    Ok(())
}

/// Writes `resources` to the cgroup at `path`.
pub fn apply(version: Version, path: &str, resources: &Resources) -> Result<(), CgroupError> {
    let write = |controller: &str, file: &str, value: String| -> Result<(), CgroupError> {
        let target = dir(version, controller, path).join(file);
        fs::write(&target, value).map_err(io_err(&target))
    };
    match version {
        Version::V1 => {
            if let Some(shares) = resources.cpu_shares {
                write("cpu", "cpu.shares", shares.to_string())?;
            }
            if let Some(period) = resources.cpu_period {
                write("cpu", "cpu.cfs_period_us", period.to_string())?;
            }
            if let Some(quota) = resources.cpu_quota {
                write("cpu", "cpu.cfs_quota_us", quota.to_string())?;
            }
            if let Some(limit) = resources.memory_limit {
                write("memory", "memory.limit_in_bytes", limit.to_string())?;
            }
            if let Some(pids) = resources.pids_limit {
                write("pids", "pids.max", pids.to_string())?;
            }
        }
        Version::V2 => {
            if let Some(shares) = resources.cpu_shares {
                write("", "cpu.weight", shares_to_weight(shares).to_string())?;
            }
            if resources.cpu_quota.is_some() || resources.cpu_period.is_some() {
                let quota = match resources.cpu_quota {
                    Some(q) if q > 0 => q.to_string(),
                    _ => "max".to_string(),
                };
                let period = resources.cpu_period.unwrap_or(100_000);
                write("", "cpu.max", format!("{quota} {period}"))?;
            }
            if let Some(limit) = resources.memory_limit {
                write("", "memory.max", limit.to_string())?;
            }
            if let Some(pids) = resources.pids_limit {
                write("", "pids.max", pids.to_string())?;
            }
        }
    }
    Ok(())
}

/// The hierarchies a path exists in: the unified one on v2, every mounted controller on v1.
fn controllers(version: Version) -> Result<Vec<String>, CgroupError> {
    Ok(match version {
        Version::V2 => vec![String::new()],
        Version::V1 => fs::read_dir(CGROUP_MOUNT)
            .map_err(io_err(Path::new(CGROUP_MOUNT)))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
    })
}

/// Removes a pod's cgroup, and the empty container cgroups left inside it (a container whose
/// shim died before libcontainer removed its cgroup). Missing is fine; a cgroup that still
/// holds processes is an error.
pub fn remove_pod(qos: QosClass, pod_uid: &str) -> Result<(), CgroupError> {
    let version = detect()?;
    let path = pod_path(qos, pod_uid);
    for controller in controllers(version)? {
        remove_tree(&dir(version, &controller, &path))?;
    }
    Ok(())
}

/// Removes the cgroup directory `target` after its child cgroups, deepest first.
fn remove_tree(target: &Path) -> Result<(), CgroupError> {
    let entries = match fs::read_dir(target) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(CgroupError::Io {
                path: target.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(target) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CgroupError::Io {
            path: target.to_path_buf(),
            source,
        }),
    }
}

/// Every process in a pod's cgroup or in a cgroup below it, in any hierarchy.
pub fn pod_processes(qos: QosClass, pod_uid: &str) -> Result<Vec<i32>, CgroupError> {
    let version = detect()?;
    let path = pod_path(qos, pod_uid);
    let mut pids = Vec::new();
    for controller in controllers(version)? {
        collect_processes(&dir(version, &controller, &path), &mut pids);
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

fn collect_processes(target: &Path, pids: &mut Vec<i32>) {
    let Ok(entries) = fs::read_dir(target) else {
        return;
    };
    if let Ok(text) = fs::read_to_string(target.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_processes(&entry.path(), pids);
        }
    }
}

/// Resource use of a cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Total cpu time in nanoseconds.
    pub cpu_usage_ns: u64,
    /// Memory in use, in bytes.
    pub memory_usage_bytes: u64,
    /// The kubelet's working set: usage minus inactive file pages.
    pub memory_working_set_bytes: u64,
    /// Processes in the cgroup.
    pub pids: u64,
}

fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    Ok(text.trim().parse().unwrap_or(0))
}

/// Looks up `key value` lines (memory.stat, cpu.stat, memory.events, memory.oom_control).
fn read_keyed(path: &Path, key: &str) -> Result<Option<u64>, CgroupError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    Ok(text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(k), Some(v)) if k == key => v.parse().ok(),
            _ => None,
        }
    }))
}

/// Reads the cpu and memory use of the cgroup at `path`.
pub fn stats(version: Version, path: &str) -> Result<Stats, CgroupError> {
    match version {
        Version::V1 => {
            let memory = dir(version, "memory", path);
            let usage = read_u64(&memory.join("memory.usage_in_bytes"))?;
            let inactive =
                read_keyed(&memory.join("memory.stat"), "total_inactive_file")?.unwrap_or(0);
            let pids = read_u64(&dir(version, "pids", path).join("pids.current")).unwrap_or(0);
            Ok(Stats {
                cpu_usage_ns: read_u64(&dir(version, "cpuacct", path).join("cpuacct.usage"))?,
                memory_usage_bytes: usage,
                memory_working_set_bytes: usage.saturating_sub(inactive),
                pids,
            })
        }
        Version::V2 => {
            let cgroup = dir(version, "", path);
            let usage = read_u64(&cgroup.join("memory.current"))?;
            let inactive = read_keyed(&cgroup.join("memory.stat"), "inactive_file")?.unwrap_or(0);
            let cpu_usec = read_keyed(&cgroup.join("cpu.stat"), "usage_usec")?.unwrap_or(0);
            Ok(Stats {
                cpu_usage_ns: cpu_usec * 1000,
                memory_usage_bytes: usage,
                memory_working_set_bytes: usage.saturating_sub(inactive),
                pids: read_u64(&cgroup.join("pids.current")).unwrap_or(0),
            })
        }
    }
}

/// How many processes of the cgroup the kernel's OOM killer has killed.
pub fn oom_kills(version: Version, path: &str) -> Result<u64, CgroupError> {
    match version {
        Version::V1 => Ok(read_keyed(
            &dir(version, "memory", path).join("memory.oom_control"),
            "oom_kill",
        )?
        .unwrap_or(0)),
        Version::V2 => {
            Ok(read_keyed(&dir(version, "", path).join("memory.events"), "oom_kill")?.unwrap_or(0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_grouped_by_qos_class_as_the_kubelet_does() {
        assert_eq!(pod_path(QosClass::Guaranteed, "u1"), "/cluster/podu1");
        assert_eq!(
            pod_path(QosClass::Burstable, "u1"),
            "/cluster/burstable/podu1"
        );
        assert_eq!(
            pod_path(QosClass::BestEffort, "u1"),
            "/cluster/besteffort/podu1"
        );
        assert_eq!(
            container_path("/cluster/podu1", "abc"),
            "/cluster/podu1/abc"
        );
        assert_eq!(
            dir(Version::V1, "memory", "/cluster/podu1"),
            PathBuf::from("/sys/fs/cgroup/memory/cluster/podu1")
        );
    }

    #[test]
    fn shares_convert_to_weight_as_runc_does() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }
}
