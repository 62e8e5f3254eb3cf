//! A pod's sandbox: what its containers share. The pod cgroup (under its QoS class), the pod
//! network (a network namespace with an address, unless hostNetwork) and the files the kubelet
//! generates for every container: `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`, kept in
//! `<pods-root>/<uid>/etc/`.
//!
//! This module owns the pod directory and the pod cgroup (removing it kills what a dead
//! container left running in it). It must not touch containers (that is
//! [`super::pod_worker`]'s job through the runtime) nor the network's internals: it asks
//! [`PodNetworking`] for a namespace and tears it down the same way.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use crate::agent::runtime::container::cgroups::{self, QosClass};
use crate::agent::runtime::container::spec::Mount;

/// The pod network as the kubelet uses it (implemented by `agent::network::PodNetwork`).
#[async_trait::async_trait]
pub trait PodNetworking: Send + Sync {
    /// Bridge, gateway and masquerade for the node's pod CIDR. Idempotent.
    async fn configure(&self, pod_cidr: &str, cluster_cidr: &str) -> Result<(), String>;
    /// The pod's network namespace and address. Idempotent per uid.
    async fn setup(
        &self,
        pod_uid: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(PathBuf, IpAddr), String>;
    /// Removes the pod's namespace and releases its address. Idempotent.
    async fn teardown(&self, pod_uid: &str) -> Result<(), String>;
    /// Tears down every pod network whose uid is not in `live`.
    async fn garbage_collect(&self, live: &HashSet<String>) -> Result<(), String>;
}

#[async_trait::async_trait]
impl PodNetworking for crate::agent::network::PodNetwork {
    async fn configure(&self, pod_cidr: &str, cluster_cidr: &str) -> Result<(), String> {
        crate::agent::network::PodNetwork::configure(self, pod_cidr, cluster_cidr)
            .await
            .map_err(|err| err.to_string())
    }

    async fn setup(
        &self,
        pod_uid: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(PathBuf, IpAddr), String> {
        crate::agent::network::PodNetwork::setup(self, pod_uid, namespace, name)
            .await
            .map(|status| (status.netns, status.ip))
            .map_err(|err| err.to_string())
    }

    async fn teardown(&self, pod_uid: &str) -> Result<(), String> {
        crate::agent::network::PodNetwork::teardown(self, pod_uid)
            .await
            .map_err(|err| err.to_string())
    }

    async fn garbage_collect(&self, live: &HashSet<String>) -> Result<(), String> {
        crate::agent::network::PodNetwork::garbage_collect(self, live)
            .await
            .map_err(|err| err.to_string())
    }
}

/// Why a sandbox could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("pod cgroup: {0}")]
    Cgroup(#[from] cgroups::CgroupError),
    #[error("pod network: {0}")]
    Network(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

/// A ready sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub qos: QosClass,
    /// The pod cgroup's path (containers' cgroups go inside).
    pub cgroup: String,
    /// The network namespace to join; `None` means the host's (hostNetwork).
    pub netns: Option<PathBuf>,
    /// The pod's IP (the node's for hostNetwork pods).
    pub ip: IpAddr,
    /// The generated files, mounted into every container.
    pub mounts: Vec<Mount>,
    pub hostname: String,
}

/// What the sandbox needs from the node.
#[derive(Debug, Clone)]
pub struct SandboxContext<'a> {
    pub pods_root: &'a Path,
    pub node_name: &'a str,
    pub host_ip: IpAddr,
    pub cluster_dns: IpAddr,
    pub cluster_domain: &'a str,
}

/// `<pods-root>/<uid>`.
pub fn pod_dir(pods_root: &Path, uid: &str) -> PathBuf {
    pods_root.join(uid)
}

/// The pod's QoS class, as Kubernetes computes it (status.qosClass when already set).
pub fn qos_class(pod: &Pod) -> QosClass {
    if let Some(class) = pod.status.as_ref().and_then(|s| s.qos_class.as_deref()) {
        match class {
            "Guaranteed" => return QosClass::Guaranteed,
            "Burstable" => return QosClass::Burstable,
            "BestEffort" => return QosClass::BestEffort,
            _ => {}
        }
    }
    let Some(spec) = pod.spec.as_ref() else {
        return QosClass::BestEffort;
    };
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let mut any = false;
    let mut guaranteed = true;
    for container in containers {
        let resources = container.resources.as_ref();
        let requests = resources.and_then(|r| r.requests.as_ref());
        let limits = resources.and_then(|r| r.limits.as_ref());
        for name in ["cpu", "memory"] {
            let request = requests.and_then(|r| r.get(name));
            let limit = limits.and_then(|l| l.get(name));
            if request.is_some() || limit.is_some() {
                any = true;
            }
            match (request, limit) {
                (_, None) => guaranteed = false,
                (Some(request), Some(limit)) if request != limit => guaranteed = false,
                _ => {}
            }
        }
    }
    if !any {
        QosClass::BestEffort
    } else if guaranteed {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// The name Kubernetes gives the class.
pub fn qos_name(qos: QosClass) -> &'static str {
    match qos {
        QosClass::Guaranteed => "Guaranteed",
        QosClass::Burstable => "Burstable",
        QosClass::BestEffort => "BestEffort",
    }
}

fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// The pod's host name and domain as the kubelet derives them (spec.hostname, spec.subdomain).
pub fn hostname_and_domain(pod: &Pod, node_name: &str, cluster_domain: &str) -> (String, String) {
    let spec = pod.spec.as_ref();
    if host_network(pod) {
        return (node_name.to_string(), String::new());
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let hostname = spec
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or(name);
    // Host names are at most 63 characters; the kubelet truncates and trims '-' and '.'.
    let hostname: String = hostname.chars().take(63).collect();
    let hostname = hostname.trim_end_matches(['-', '.']).to_string();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let domain = match spec.and_then(|s| s.subdomain.as_deref()) {
        Some(sub) if !sub.is_empty() => format!("{sub}.{namespace}.svc.{cluster_domain}"),
        _ => String::new(),
    };
    (hostname, domain)
}

/// `/etc/resolv.conf` for the pod, following dnsPolicy and dnsConfig as the kubelet does.
pub fn resolv_conf(pod: &Pod, cluster_dns: IpAddr, cluster_domain: &str, host: &str) -> String {
    let spec = pod.spec.as_ref();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let policy = spec
        .and_then(|s| s.dns_policy.clone())
        .unwrap_or_else(|| "ClusterFirst".into());
    let cluster_first = match policy.as_str() {
        "ClusterFirst" => !host_network(pod),
        "ClusterFirstWithHostNet" => true,
        _ => false,
    };
    let (host_servers, host_searches, host_options) = parse_resolv_conf(host);
    let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        if policy == "None" {
            (Vec::new(), Vec::new(), Vec::new())
        } else if cluster_first {
            (
                vec![cluster_dns.to_string()],
                {
                    let mut s = vec![
                        format!("{namespace}.svc.{cluster_domain}"),
                        format!("svc.{cluster_domain}"),
                        cluster_domain.to_string(),
                    ];
                    s.extend(host_searches);
                    s
                },
                vec!["ndots:5".to_string()],
            )
        } else {
            (host_servers, host_searches, host_options)
        };
    if let Some(config) = spec.and_then(|s| s.dns_config.as_ref()) {
        for server in config.nameservers.iter().flatten() {
            if !servers.contains(server) {
                servers.push(server.clone());
            }
        }
        for search in config.searches.iter().flatten() {
            if !searches.contains(search) {
                searches.push(search.clone());
            }
        }
        for option in config.options.iter().flatten() {
            let text = match &option.value {
                Some(value) => format!("{}:{value}", option.name.clone().unwrap_or_default()),
                None => option.name.clone().unwrap_or_default(),
            };
            let name = text.split(':').next().unwrap_or_default().to_string();
            options.retain(|o| o.split(':').next() != Some(name.as_str()));
            options.push(text);
        }
    }
    // The resolver reads at most 3 name servers and 32 search domains.
    servers.truncate(3);
    searches.truncate(32);
    let mut out = String::new();
    for server in &servers {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// Name servers, search domains and options of a resolv.conf.
fn parse_resolv_conf(text: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut servers = Vec::new();
    let mut searches = Vec::new();
    let mut options = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => servers.extend(words.next().map(String::from)),
            Some("search") | Some("domain") => {
                searches = words.map(String::from).collect();
            }
            Some("options") => options.extend(words.map(String::from)),
            _ => {}
        }
    }
    (servers, searches, options)
}

/// `/etc/hosts` as the kubelet writes it for a pod.
pub fn hosts_file(pod: &Pod, ip: IpAddr, hostname: &str, domain: &str) -> String {
    let mut out = String::from("# Kubernetes-managed hosts file.\n");
    out.push_str("127.0.0.1\tlocalhost\n");
    out.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    out.push_str("fe00::0\tip6-localnet\n");
    out.push_str("fe00::0\tip6-mcastprefix\n");
    out.push_str("fe00::1\tip6-allnodes\n");
    out.push_str("fe00::2\tip6-allrouters\n");
    if domain.is_empty() {
        out.push_str(&format!("{ip}\t{hostname}\n"));
    } else {
        out.push_str(&format!("{ip}\t{hostname}.{domain}\t{hostname}\n"));
    }
    let aliases = pod.spec.as_ref().and_then(|s| s.host_aliases.as_ref());
    if let Some(aliases) = aliases.filter(|a| !a.is_empty()) {
        out.push_str("\n# Entries added by HostAliases.\n");
        for alias in aliases {
            let names = alias.hostnames.clone().unwrap_or_default().join("\t");
            out.push_str(&format!("{}\t{names}\n", alias.ip));
        }
    }
    out
}

/// Makes (or finds again) the sandbox of `pod`. Idempotent.
pub async fn ensure(
    pod: &Pod,
    context: &SandboxContext<'_>,
    network: Option<&dyn PodNetworking>,
) -> Result<Sandbox, SandboxError> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let qos = qos_class(pod);
    let resources = pod_resources(pod);
    let cgroup = tokio::task::spawn_blocking({
        let uid = uid.clone();
        move || cgroups::ensure_pod(qos, &uid, &resources)
    })
    .await
    .map_err(|err| SandboxError::Io {
        what: "pod cgroup task".into(),
        source: io::Error::other(err.to_string()),
    })??;
    let (netns, ip) = if host_network(pod) {
        (None, context.host_ip)
    } else if let Some(network) = network {
        let (netns, ip) = network
            .setup(&uid, &namespace, &name)
            .await
            .map_err(SandboxError::Network)?;
        (Some(netns), ip)
    } else {
        return Err(SandboxError::Network(
            "this node has no pod network: only hostNetwork pods can run".into(),
        ));
    };
    let (hostname, domain) = hostname_and_domain(pod, context.node_name, context.cluster_domain);
    let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let dir = pod_dir(context.pods_root, &uid).join("etc");
    let files = [
        (
            "hosts",
            "/etc/hosts",
            hosts_file(pod, ip, &hostname, &domain),
        ),
        ("hostname", "/etc/hostname", format!("{hostname}\n")),
        (
            "resolv.conf",
            "/etc/resolv.conf",
            resolv_conf(
                pod,
                context.cluster_dns,
                context.cluster_domain,
                &host_resolv,
            ),
        ),
    ];
    fs::create_dir_all(&dir).map_err(|source| SandboxError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let mut mounts = Vec::new();
    for (file, container_path, content) in files {
        let path = dir.join(file);
        write_if_changed(&path, &content).map_err(|source| SandboxError::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
        mounts.push(Mount {
            container_path: container_path.to_string(),
            host_path: path,
            read_only: false,
        });
    }
    Ok(Sandbox {
        qos,
        cgroup,
        netns,
        ip,
        mounts,
        hostname,
    })
}

fn write_if_changed(path: &Path, content: &str) -> io::Result<()> {
    if fs::read_to_string(path).is_ok_and(|old| old == content) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content)?;
    fs::rename(&tmp, path)
}

/// Removes the sandbox of pod `uid`: network, cgroup (in every QoS class: the class may be
/// unknown after a restart) and the pod directory. Its containers must be gone. Idempotent.
pub async fn remove(
    uid: &str,
    pods_root: &Path,
    network: Option<&dyn PodNetworking>,
) -> Result<(), SandboxError> {
    if let Some(network) = network {
        network.teardown(uid).await.map_err(SandboxError::Network)?;
    }
    let owned = uid.to_string();
    tokio::task::spawn_blocking(move || {
        for qos in [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ] {
            kill_leftover_processes(qos, &owned);
            cgroups::remove_pod(qos, &owned)?;
        }
        Ok::<_, cgroups::CgroupError>(())
    })
    .await
    .map_err(|err| SandboxError::Io {
        what: "pod cgroup task".into(),
        source: io::Error::other(err.to_string()),
    })??;
    let dir = pod_dir(pods_root, uid);
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SandboxError::Io {
            what: format!("removing {}", dir.display()),
            source,
        }),
    }
}

/// How long processes killed in a pod cgroup get to leave it.
const LEFTOVER_EXIT: Duration = Duration::from_secs(5);

/// SIGKILLs whatever still runs in the pod's cgroup (a container whose shim died leaves its
/// processes behind), and waits a little for them to go, as the kubelet's pod container manager
/// does before it destroys a pod cgroup.
fn kill_leftover_processes(qos: QosClass, uid: &str) {
    let deadline = Instant::now() + LEFTOVER_EXIT;
    loop {
        let pids = cgroups::pod_processes(qos, uid).unwrap_or_default();
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        tracing::info!(
            pod_uid = uid,
            ?pids,
            "killing processes left in the pod cgroup"
        );
        for pid in pids {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pod cgroup's limits: the sums of its containers' limits when every container has one
/// (Guaranteed and some Burstable pods), cpu shares from the requests.
pub fn pod_resources(pod: &Pod) -> cgroups::Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return cgroups::Resources::default();
    };
    let mut cpu_request_milli: i64 = 0;
    let mut cpu_limit_milli: Option<i64> = Some(0);
    let mut memory_limit: Option<i64> = Some(0);
    for container in &spec.containers {
        let resources = container.resources.as_ref();
        let request = resources
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("cpu"))
            .and_then(|q| parse_cpu_milli(&q.0));
        let limit_cpu = resources
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("cpu"))
            .and_then(|q| parse_cpu_milli(&q.0));
        let limit_memory = resources
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .and_then(|q| parse_bytes(&q.0));
        cpu_request_milli += request.or(limit_cpu).unwrap_or(0);
        cpu_limit_milli = cpu_limit_milli.zip(limit_cpu).map(|(a, b)| a + b);
        memory_limit = memory_limit.zip(limit_memory).map(|(a, b)| a + b);
    }
    let shares = if cpu_request_milli == 0 {
        2
    } else {
        u64::try_from(cpu_request_milli * 1024 / 1000)
            .unwrap_or(2)
            .max(2)
    };
    cgroups::Resources {
        cpu_shares: Some(shares),
        cpu_quota: cpu_limit_milli
            .filter(|m| *m > 0)
            .map(|m| (m * 100_000 / 1000).max(1000)),
        cpu_period: cpu_limit_milli.filter(|m| *m > 0).map(|_| 100_000),
        memory_limit: memory_limit.filter(|m| *m > 0),
        pids_limit: None,
    }
}

/// Parses a cpu quantity (`500m`, `2`, `0.5`) to millicores.
pub fn parse_cpu_milli(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Some(milli) = text.strip_suffix('m') {
        return milli.parse().ok();
    }
    let value: f64 = text.parse().ok()?;
    Some((value * 1000.0).ceil() as i64)
}

/// Parses a memory quantity (`64Mi`, `1G`, `1e3`, `128974848`) to bytes.
pub fn parse_bytes(text: &str) -> Option<i64> {
    let text = text.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    for (suffix, factor) in suffixes {
        if let Some(number) = text.strip_suffix(suffix) {
            let value: f64 = number.parse().ok()?;
            return Some((value * factor).ceil() as i64);
        }
    }
    let value: f64 = text.parse().ok()?;
    Some(value.ceil() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: serde_json::Value) -> Pod {
        serde_json::from_value(yaml).expect("pod")
    }

    #[test]
    fn cluster_first_points_at_the_cluster_dns_with_the_namespace_searches() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"containers": [{"name": "c"}]}
        }));
        let conf = resolv_conf(
            &p,
            "10.43.0.10".parse().expect("ip"),
            "cluster.local",
            "nameserver 192.0.2.53\nsearch lan\n",
        );
        assert_eq!(
            conf,
            "nameserver 10.43.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local lan\noptions ndots:5\n"
        );
    }

    #[test]
    fn default_and_none_policies_use_the_host_and_dns_config() {
        let host = "nameserver 192.0.2.53\nsearch lan\noptions edns0\n";
        let p = pod(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"containers": [{"name": "c"}], "dnsPolicy": "Default"}
        }));
        assert_eq!(
            resolv_conf(&p, "10.43.0.10".parse().expect("ip"), "cluster.local", host),
            "nameserver 192.0.2.53\nsearch lan\noptions edns0\n"
        );
        let p = pod(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"containers": [{"name": "c"}], "dnsPolicy": "None", "dnsConfig": {
                "nameservers": ["1.1.1.1"], "searches": ["example.com"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]
            }}
        }));
        assert_eq!(
            resolv_conf(&p, "10.43.0.10".parse().expect("ip"), "cluster.local", host),
            "nameserver 1.1.1.1\nsearch example.com\noptions ndots:2 edns0\n"
        );
        // Host network with ClusterFirst falls back to the host's resolver.
        let p = pod(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"containers": [{"name": "c"}], "hostNetwork": true}
        }));
        assert!(
            resolv_conf(&p, "10.43.0.10".parse().expect("ip"), "cluster.local", host)
                .starts_with("nameserver 192.0.2.53\n")
        );
    }

    #[test]
    fn qos_classes_follow_requests_and_limits() {
        let besteffort = pod(serde_json::json!({
            "metadata": {"name": "a"}, "spec": {"containers": [{"name": "c"}]}
        }));
        assert_eq!(qos_class(&besteffort), QosClass::BestEffort);
        let guaranteed = pod(serde_json::json!({
            "metadata": {"name": "a"}, "spec": {"containers": [{"name": "c", "resources": {
                "limits": {"cpu": "500m", "memory": "64Mi"}
            }}]}
        }));
        assert_eq!(qos_class(&guaranteed), QosClass::Guaranteed);
        let burstable = pod(serde_json::json!({
            "metadata": {"name": "a"}, "spec": {"containers": [{"name": "c", "resources": {
                "requests": {"cpu": "100m"}
            }}]}
        }));
        assert_eq!(qos_class(&burstable), QosClass::Burstable);
        let resources = pod_resources(&guaranteed);
        assert_eq!(resources.memory_limit, Some(64 << 20));
        assert_eq!(resources.cpu_quota, Some(50_000));
        assert_eq!(resources.cpu_shares, Some(512));
    }

    #[test]
    fn hosts_file_names_the_pod() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "shop"},
            "spec": {"containers": [{"name": "c"}], "subdomain": "web",
                     "hostAliases": [{"ip": "192.0.2.9", "hostnames": ["db", "db.lan"]}]}
        }));
        let (hostname, domain) = hostname_and_domain(&p, "node1", "cluster.local");
        assert_eq!(domain, "web.shop.svc.cluster.local");
        let hosts = hosts_file(&p, "10.42.0.5".parse().expect("ip"), &hostname, &domain);
        assert!(hosts.contains("10.42.0.5\tweb-0.web.shop.svc.cluster.local\tweb-0\n"));
        assert!(hosts.contains("192.0.2.9\tdb\tdb.lan\n"));
    }
}
