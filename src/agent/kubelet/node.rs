//! The Node object of this machine: registration and status, as the kubelet's nodestatus
//! setters build them — capacity and allocatable (cpu, memory, pods, ephemeral-storage),
//! addresses (InternalIP, Hostname), nodeInfo, labels, taints at registration, the conditions
//! MemoryPressure / DiskPressure / PIDPressure / Ready with the kubelet's reasons and messages,
//! the kubelet endpoint and the images (largest first, as the kubelet lists them).
//!
//! The status is posted when it changes and at least every minute ([`status_loop`]); the
//! heartbeat proper is the Lease ([`super::lease`]). This module must not touch pods.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints,
    NodeSpec, NodeStatus, NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::eviction;
use super::status::now;
use super::{Kubelet, KubeletConfig, KubeletError};
use crate::agent::runtime::image::Image;

/// Pods a node takes, as the kubelet's default `--max-pods`.
pub const MAX_PODS: u32 = 110;
/// How often the status is computed (and posted when changed).
const STATUS_CHECK: Duration = Duration::from_secs(10);
/// The status is posted at least this often even when unchanged.
const STATUS_REPORT: Duration = Duration::from_secs(60);
/// At most this many images in `status.images` (the kubelet's `--node-status-max-images`),
/// with at most this many names each (its maxNamesPerImageInNodeStatus).
const MAX_IMAGES: usize = 50;
const MAX_NAMES_PER_IMAGE: usize = 5;

/// The kubelet version this node reports: the API's version.
pub fn kubelet_version() -> String {
    format!(
        "v1.{}.0+cluster.{}",
        crate::server::apiserver::discovery::KUBERNETES_MINOR,
        env!("CARGO_PKG_VERSION")
    )
}

/// What the node is made of, read from the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub cpus: u64,
    pub memory_bytes: u64,
    pub memory_available_bytes: u64,
    pub disk_bytes: u64,
    pub disk_available_bytes: u64,
    pub inodes: u64,
    pub inodes_free: u64,
    /// `kernel.pid_max`.
    pub pid_max: u64,
    /// Threads running on the host (each holds a PID), from /proc/loadavg.
    pub threads: u64,
    pub kernel: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
}

/// The architecture as Go (and Kubernetes) names it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Reads the host's facts; `data_dir` is where ephemeral storage lives.
pub fn host_facts(data_dir: &std::path::Path) -> HostFacts {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let meminfo = read("/proc/meminfo");
    let os_release = read("/etc/os-release");
    let os_image = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into());
    let (disk_bytes, disk_available_bytes, inodes, inodes_free) =
        std::iter::successors(Some(data_dir), |p| p.parent())
            .find_map(|dir| rustix::fs::statvfs(dir).ok())
            .map(|s| {
                (
                    s.f_blocks * s.f_frsize,
                    s.f_bavail * s.f_frsize,
                    s.f_files,
                    s.f_favail,
                )
            })
            .unwrap_or((0, 0, 0, 0));
    // "0.12 0.30 0.40 2/613 4242": the fourth field is running/total scheduling entities.
    let threads = read("/proc/loadavg")
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split_once('/'))
        .and_then(|(_, total)| total.parse().ok())
        .unwrap_or(0);
    HostFacts {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1),
        memory_bytes: meminfo_kib(&meminfo, "MemTotal").unwrap_or(0) * 1024,
        memory_available_bytes: meminfo_kib(&meminfo, "MemAvailable").unwrap_or(0) * 1024,
        disk_bytes,
        disk_available_bytes,
        inodes,
        inodes_free,
        pid_max: read("/proc/sys/kernel/pid_max").parse().unwrap_or(0),
        threads,
        kernel: read("/proc/sys/kernel/osrelease"),
        os_image,
        machine_id: read("/etc/machine-id"),
        boot_id: read("/proc/sys/kernel/random/boot_id"),
    }
}

fn condition(
    kind: &str,
    ok_means_true: bool,
    ok: bool,
    reason: &str,
    message: &str,
) -> NodeCondition {
    let value = if ok == ok_means_true { "True" } else { "False" };
    NodeCondition {
        type_: kind.to_string(),
        status: value.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: None,
        last_transition_time: None,
    }
}

/// The signals the eviction thresholds are checked against.
pub fn observations(facts: &HostFacts) -> eviction::Observations {
    let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    eviction::Observations {
        memory_bytes: signed(facts.memory_bytes),
        memory_available_bytes: signed(facts.memory_available_bytes),
        disk_bytes: signed(facts.disk_bytes),
        disk_available_bytes: signed(facts.disk_available_bytes),
        inodes: signed(facts.inodes),
        inodes_free: signed(facts.inodes_free),
        pid_max: signed(facts.pid_max),
        threads: signed(facts.threads),
    }
}

/// The conditions as the kubelet's setters word them (times are filled in by [`with_times`]).
pub fn conditions(
    config: &KubeletConfig,
    facts: &HostFacts,
    network_ready: bool,
) -> Vec<NodeCondition> {
    let pressure = eviction::pressure(&config.eviction_hard, &observations(facts));
    let mut list = vec![
        if pressure.memory {
            condition(
                "MemoryPressure",
                false,
                false,
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            )
        } else {
            condition(
                "MemoryPressure",
                false,
                true,
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            )
        },
        if pressure.disk {
            condition(
                "DiskPressure",
                false,
                false,
                "KubeletHasDiskPressure",
                "kubelet has disk pressure",
            )
        } else {
            condition(
                "DiskPressure",
                false,
                true,
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            )
        },
        if pressure.pid {
            condition(
                "PIDPressure",
                false,
                false,
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            )
        } else {
            condition(
                "PIDPressure",
                false,
                true,
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            )
        },
    ];
    list.push(if network_ready {
        condition("Ready", true, true, "KubeletReady", "kubelet is posting ready status")
    } else {
        condition(
            "Ready",
            true,
            false,
            "KubeletNotReady",
            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:the pod network is not configured yet (waiting for spec.podCIDR)",
        )
    });
    list
}

/// Sets heartbeat times to now and transition times to now, or to the previous condition's
/// when its status did not change.
pub fn with_times(mut list: Vec<NodeCondition>, previous: &[NodeCondition]) -> Vec<NodeCondition> {
    let now = now();
    for condition in &mut list {
        condition.last_heartbeat_time = Some(now.clone());
        condition.last_transition_time = match previous.iter().find(|p| p.type_ == condition.type_)
        {
            Some(old) if old.status == condition.status => old.last_transition_time.clone(),
            _ => Some(now.clone()),
        };
    }
    list
}

/// The node's status without conditions.
pub fn status(config: &KubeletConfig, facts: &HostFacts) -> NodeStatus {
    let mut capacity = BTreeMap::new();
    capacity.insert("cpu".to_string(), Quantity(facts.cpus.to_string()));
    capacity.insert(
        "memory".to_string(),
        Quantity(format!("{}Ki", facts.memory_bytes / 1024)),
    );
    capacity.insert("pods".to_string(), Quantity(MAX_PODS.to_string()));
    capacity.insert(
        "ephemeral-storage".to_string(),
        Quantity(format!("{}Ki", facts.disk_bytes / 1024)),
    );
    let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let left = eviction::allocatable(
        eviction::Capacity {
            cpu_milli: signed(facts.cpus).saturating_mul(1000),
            memory_bytes: signed(facts.memory_bytes),
            ephemeral_storage_bytes: signed(facts.disk_bytes),
        },
        config.reserved,
        &config.eviction_hard,
    );
    let mut allocatable = capacity.clone();
    allocatable.insert("cpu".to_string(), Quantity(cpu_quantity(left.cpu_milli)));
    allocatable.insert(
        "memory".to_string(),
        Quantity(format!("{}Ki", left.memory_bytes / 1024)),
    );
    allocatable.insert(
        "ephemeral-storage".to_string(),
        Quantity(format!("{}Ki", left.ephemeral_storage_bytes / 1024)),
    );
    let mut addresses = Vec::new();
    if let Some(ip) = config.node_ips.first() {
        addresses.push(NodeAddress {
            type_: "InternalIP".into(),
            address: ip.to_string(),
        });
    }
    addresses.push(NodeAddress {
        type_: "Hostname".into(),
        address: config.node_name.clone(),
    });
    NodeStatus {
        capacity: Some(capacity),
        allocatable: Some(allocatable),
        addresses: Some(addresses),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(config.kubelet_port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: go_arch().to_string(),
            boot_id: facts.boot_id.clone(),
            container_runtime_version: format!("cluster://{}", env!("CARGO_PKG_VERSION")),
            kernel_version: facts.kernel.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: kubelet_version(),
            machine_id: facts.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: facts.os_image.clone(),
            swap: None,
            system_uuid: facts.machine_id.clone(),
        }),
        ..NodeStatus::default()
    }
}

/// Millicores as the API prints them: whole cores without a suffix, else `<n>m`.
fn cpu_quantity(milli: i64) -> String {
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

/// `status.images` as the kubelet's Images setter builds it: repo digests then tags per
/// image, largest first, at most [`MAX_IMAGES`].
pub fn images(list: &[Image]) -> Vec<ContainerImage> {
    let mut list: Vec<&Image> = list.iter().collect();
    list.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.names.cmp(&b.names)));
    list.into_iter()
        .take(MAX_IMAGES)
        .map(|image| ContainerImage {
            names: Some(
                image
                    .repo_digests
                    .iter()
                    .chain(image.names.iter())
                    .take(MAX_NAMES_PER_IMAGE)
                    .cloned()
                    .collect(),
            ),
            size_bytes: i64::try_from(image.size).ok(),
        })
        .collect()
}

/// The labels the node registers with.
pub fn labels(config: &KubeletConfig) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert("kubernetes.io/hostname".into(), config.node_name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), go_arch().into());
    labels.insert("beta.kubernetes.io/os".into(), "linux".into());
    labels.insert("beta.kubernetes.io/arch".into(), go_arch().into());
    if config.control_plane {
        labels.insert(
            "node-role.kubernetes.io/control-plane".into(),
            "true".into(),
        );
    }
    for (key, value) in &config.labels {
        labels.insert(key.clone(), value.clone());
    }
    labels
}

/// The Node object this kubelet registers.
pub fn node_object(config: &KubeletConfig, facts: &HostFacts, network_ready: bool) -> Node {
    let taints: Vec<Taint> = config
        .taints
        .iter()
        .map(|t| Taint {
            key: t.key.clone(),
            value: t.value.clone(),
            effect: t.effect.clone(),
            time_added: None,
        })
        .collect();
    let mut node_status = status(config, facts);
    node_status.conditions = Some(with_times(conditions(config, facts, network_ready), &[]));
    Node {
        metadata: ObjectMeta {
            name: Some(config.node_name.clone()),
            labels: Some(labels(config)),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            taints: (!taints.is_empty()).then_some(taints),
            ..NodeSpec::default()
        }),
        status: Some(node_status),
    }
}

/// Registers the node: creates it, or, when it exists (a restart), makes sure its labels are
/// there. Retries until it succeeds or `shutdown` is cancelled.
pub async fn register(kubelet: &Kubelet, shutdown: &CancellationToken) -> Result<(), KubeletError> {
    let api: Api<Node> = Api::all(kubelet.client.clone());
    let config = &kubelet.config;
    let mut delay = Duration::from_millis(200);
    loop {
        let facts = host_facts(&config.data_dir);
        let node = node_object(config, &facts, false);
        let result = match api.create(&PostParams::default(), &node).await {
            Ok(_) => {
                info!(node = %config.node_name, "node registered");
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let patch = serde_json::json!({"metadata": {"labels": labels(config)}});
                api.patch(
                    &config.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map(|_| info!(node = %config.node_name, "node already registered"))
            }
            Err(err) => Err(err),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(err @ kube::Error::Api(_)) if delay >= Duration::from_secs(30) => {
                return Err(KubeletError::Register {
                    node: config.node_name.clone(),
                    source: err,
                })
            }
            Err(err) => {
                warn!(node = %config.node_name, error = %err, "registering the node; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Posts the node's status when it changes and at least every minute, until `shutdown`.
pub async fn status_loop(kubelet: Kubelet, shutdown: CancellationToken) {
    let api: Api<Node> = Api::all(kubelet.client.clone());
    let name = kubelet.config.node_name.clone();
    let mut last: Option<(NodeStatus, bool)> = None;
    let mut last_sent = Instant::now();
    loop {
        let ready = kubelet.network_ready.load(Ordering::SeqCst);
        let (facts, image_list) = tokio::task::spawn_blocking({
            let dir = kubelet.config.data_dir.clone();
            let image_service = kubelet.images.clone();
            move || (host_facts(&dir), image_service.list())
        })
        .await
        .unwrap_or_else(|_| (HostFacts::default(), Ok(Vec::new())));
        let mut current = status(&kubelet.config, &facts);
        current.conditions = Some(conditions(&kubelet.config, &facts, ready));
        match image_list {
            Ok(list) => current.images = Some(images(&list)),
            Err(err) => warn!(error = %err, "listing images for the node status"),
        }
        let unchanged = last.as_ref().is_some_and(|(old, _)| {
            // Free memory and disk move all the time; only what the status shows counts.
            old.conditions == current.conditions
                && old.addresses == current.addresses
                && old.capacity == current.capacity
                && old.allocatable == current.allocatable
                && old.node_info == current.node_info
                && old.images == current.images
        });
        if !unchanged || last_sent.elapsed() >= STATUS_REPORT {
            match post_status(&api, &name, current.clone()).await {
                Ok(()) => {
                    debug!(node = %name, ready, "node status posted");
                    last = Some((current, ready));
                    last_sent = Instant::now();
                }
                Err(err) => warn!(node = %name, error = %err, "posting node status"),
            }
        }
        let wait = if last.is_some() {
            STATUS_CHECK
        } else {
            Duration::from_secs(1)
        };
        // Wake early when the network turns ready, so the node is Ready at once.
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if kubelet.network_ready.load(Ordering::SeqCst) != ready {
                        break;
                    }
                }
            }
        }
    }
}

async fn post_status(
    api: &Api<Node>,
    name: &str,
    mut status: NodeStatus,
) -> Result<(), kube::Error> {
    let previous = api
        .get_status(name)
        .await?
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default();
    status.conditions = Some(with_times(status.conditions.unwrap_or_default(), &previous));
    let patch = serde_json::json!({"status": status});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Waits until the server's node IPAM has set `spec.podCIDR`; `None` on shutdown.
pub async fn wait_for_pod_cidr(kubelet: &Kubelet, shutdown: &CancellationToken) -> Option<String> {
    let api: Api<Node> = Api::all(kubelet.client.clone());
    loop {
        match api.get(&kubelet.config.node_name).await {
            Ok(node) => {
                if let Some(cidr) = node.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty()) {
                    return Some(cidr);
                }
            }
            Err(err) => debug!(error = %err, "reading the node for its podCIDR"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> KubeletConfig {
        KubeletConfig {
            node_name: "edge-1".into(),
            node_ips: vec!["192.0.2.7".parse().expect("ip")],
            labels: vec![("zone".into(), "a".into())],
            taints: vec![crate::config::NodeTaint {
                key: "dedicated".into(),
                value: Some("edge".into()),
                effect: "NoSchedule".into(),
            }],
            kubelet_port: 10250,
            pods_root: "/tmp/pods".into(),
            pod_logs_dir: "/tmp/logs".into(),
            data_dir: "/tmp".into(),
            cluster_dns: "10.43.0.10".parse().expect("ip"),
            cluster_domain: "cluster.local".into(),
            cluster_cidr: "10.42.0.0/16".into(),
            control_plane: true,
            eviction_hard: eviction::parse_thresholds(&[
                "memory.available<100Mi".into(),
                "nodefs.available<10%".into(),
                "pid.available<1000".into(),
            ])
            .expect("thresholds"),
            reserved: eviction::Reserved {
                cpu_milli: 500,
                memory_bytes: 1 << 30,
                ..eviction::Reserved::default()
            },
        }
    }

    #[test]
    fn the_node_object_has_what_the_kubelet_registers() {
        let facts = HostFacts {
            cpus: 4,
            memory_bytes: 8 << 30,
            memory_available_bytes: 4 << 30,
            disk_bytes: 100 << 30,
            disk_available_bytes: 50 << 30,
            inodes: 1_000_000,
            inodes_free: 500_000,
            pid_max: 32768,
            threads: 600,
            kernel: "6.1.0".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
        };
        let node = node_object(&config(), &facts, true);
        let labels = node.metadata.labels.expect("labels");
        assert_eq!(labels["kubernetes.io/hostname"], "edge-1");
        assert_eq!(labels["node-role.kubernetes.io/control-plane"], "true");
        assert_eq!(labels["zone"], "a");
        let taints = node.spec.and_then(|s| s.taints).expect("taints");
        assert_eq!(taints[0].effect, "NoSchedule");
        let status = node.status.expect("status");
        let capacity = status.capacity.expect("capacity");
        assert_eq!(capacity["cpu"].0, "4");
        assert_eq!(capacity["memory"].0, "8388608Ki");
        assert_eq!(capacity["pods"].0, "110");
        // Allocatable: capacity minus the reservations and the hard eviction thresholds.
        let allocatable = status.allocatable.expect("allocatable");
        assert_eq!(allocatable["cpu"].0, "3500m");
        assert_eq!(
            allocatable["memory"].0,
            format!("{}Ki", ((8u64 << 30) - (1 << 30) - (100 << 20)) / 1024)
        );
        assert_eq!(
            allocatable["ephemeral-storage"].0,
            format!("{}Ki", (100u64 << 30) / 10 * 9 / 1024)
        );
        assert_eq!(allocatable["pods"].0, "110");
        let addresses = status.addresses.expect("addresses");
        assert_eq!(
            (addresses[0].type_.as_str(), addresses[0].address.as_str()),
            ("InternalIP", "192.0.2.7")
        );
        let conditions = status.conditions.expect("conditions");
        let kinds: Vec<(&str, &str, &str)> = conditions
            .iter()
            .map(|c| {
                (
                    c.type_.as_str(),
                    c.status.as_str(),
                    c.reason.as_deref().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                ("PIDPressure", "False", "KubeletHasSufficientPID"),
                ("Ready", "True", "KubeletReady"),
            ]
        );
        let info = status.node_info.expect("node info");
        assert!(
            info.kubelet_version.starts_with("v1.33."),
            "{}",
            info.kubelet_version
        );
        assert!(info.container_runtime_version.starts_with("cluster://"));
        assert_eq!(
            status
                .daemon_endpoints
                .and_then(|d| d.kubelet_endpoint)
                .map(|e| e.port),
            Some(10250)
        );
        let low_memory = HostFacts {
            memory_available_bytes: 10 << 20,
            ..facts.clone()
        };
        let pressure = super::conditions(&config(), &low_memory, false);
        assert_eq!(pressure[0].status, "True");
        assert_eq!(
            pressure[0].reason.as_deref(),
            Some("KubeletHasInsufficientMemory")
        );
        assert_eq!(pressure[3].reason.as_deref(), Some("KubeletNotReady"));
        let pid_bound = HostFacts {
            threads: 32000,
            ..facts
        };
        let pressure = super::conditions(&config(), &pid_bound, true);
        assert_eq!(
            (pressure[2].status.as_str(), pressure[2].reason.as_deref()),
            ("True", Some("KubeletHasInsufficientPID"))
        );
    }

    #[test]
    fn images_are_listed_largest_first_with_digests_then_tags() {
        let image = |name: &str, size: u64| Image {
            id: format!("sha256:{:064x}", size).parse().expect("digest"),
            names: vec![format!("docker.io/library/{name}:1")],
            repo_digests: vec![format!("docker.io/library/{name}@sha256:{:064x}", size)],
            config: Default::default(),
            rootfs: Vec::new(),
            size,
            last_used: 0,
        };
        let listed = images(&[image("small", 10), image("big", 1000)]);
        assert_eq!(listed[0].size_bytes, Some(1000));
        let names = listed[0].names.clone().unwrap_or_default();
        assert!(names[0].contains("big@sha256:"), "{names:?}");
        assert_eq!(names[1], "docker.io/library/big:1");
        let many: Vec<Image> = (1..=60).map(|i| image("x", i)).collect();
        assert_eq!(images(&many).len(), MAX_IMAGES);
        let mut named = image("named", 5);
        named.names = (0..8)
            .map(|i| format!("docker.io/library/named:{i}"))
            .collect();
        let names = images(&[named]).remove(0).names.unwrap_or_default();
        assert_eq!(names.len(), MAX_NAMES_PER_IMAGE);
    }
}
