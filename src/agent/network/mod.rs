//! The pod network of one node: a Linux bridge, one veth pair per pod into the pod's network
//! namespace, addresses from a persisted IPAM, and masquerade of pod traffic leaving the cluster.
//!
//! Owns, and only ever creates or removes:
//! - the bridge named [`NetworkConfig::bridge`] and its IPv4 address (the gateway);
//! - the nftables table `ip` [`NetworkConfig::nft_table`] (replaced as a whole in one transaction);
//! - network namespaces `/run/netns/cluster-<pod uid>` ([`netns_path`]);
//! - host-side veth devices `veth<11 hex digits of SHA-256(uid)>` ([`veth_name`]) and their
//!   `eth0` peers inside the pod namespaces;
//! - the IPAM records under `<state_dir>/ipam` ([`ipam`]);
//! - `net.ipv4.ip_forward`, which it turns on (never off) in its own network namespace.
//!
//! Must not touch any other link, address, route, namespace or nftables table: a namespace
//! `cluster-*` is only removed when this node's IPAM records its uid or when its host veth (by
//! this module's naming) exists here, so the pods of another agent on the same host are safe.
//!
//! It drives iproute2 (`ip`) and `nft` rather than netlink sockets: `ip netns add/delete` and
//! `ip -n` create, bind-mount and enter namespaces in a child process, which needs no unsafe
//! `unshare`/`setns` here (the crate denies unsafe code) and never moves a tokio worker thread
//! into another namespace. Children run in the calling thread's network namespace.
//!
//! IPv4 only. Callers serialise the calls for one pod (one pod worker per pod);
//! [`PodNetwork::garbage_collect`] must not run concurrently with a `setup` of a uid missing
//! from its `live` set.

pub mod command;
pub mod ipam;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use command::{ip, is_not_found, CommandError};
use ipam::{Ipam, IpamError, Ipv4Cidr};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Prefix of the pod namespaces' names.
const NETNS_PREFIX: &str = "cluster-";
/// Prefix of the host-side veth devices.
const VETH_PREFIX: &str = "veth";
/// Hex digits of the uid hash in a veth name: "veth" + 11 = 15, the kernel's limit.
const VETH_HASH_LEN: usize = 11;
/// The pod side of the veth pair.
const POD_IFNAME: &str = "eth0";

/// Where and under which names the pod network lives.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// `<data-dir>/agent/network`: the persisted IPAM lives here.
    pub state_dir: PathBuf,
    /// The bridge's name: "cluster0" in production; tests pass their own.
    pub bridge: String,
    /// nftables table for the masquerade rules: "cluster-nat" in production; tests pass their own.
    pub nft_table: String,
}

/// The network of one pod, as the kubelet reports and uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetworkStatus {
    /// The pod's network namespace (`/run/netns/cluster-<uid>`).
    pub netns: PathBuf,
    /// The pod's IP (`status.podIP`).
    pub ip: IpAddr,
    /// The bridge's address, the pod's default route.
    pub gateway: IpAddr,
}

/// Why the pod network could not be configured, set up or torn down.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A pod uid that cannot name a namespace safely.
    #[error("pod uid {0:?} is not usable as a network namespace name")]
    InvalidUid(String),
    /// A bad pod or cluster CIDR.
    #[error("invalid CIDR {cidr:?}: {reason}")]
    InvalidCidr { cidr: String, reason: String },
    /// A config field that cannot name a link or table.
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    /// `setup` before `configure` (the node's podCIDR is not known yet).
    #[error("the pod network is not configured yet (the node has no podCIDR)")]
    NotConfigured,
    /// `ip` or `nft` failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// Address management failed (includes the range being exhausted).
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A tool answered something this module cannot read.
    #[error("unexpected output from `{command}`: {detail}")]
    Unexpected { command: String, detail: String },
}

/// The pod network of this node. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct PodNetwork {
    inner: Arc<Inner>,
}

struct Inner {
    config: NetworkConfig,
    /// Serialises allocations so one uid never gets two addresses.
    ipam: Mutex<Ipam>,
    /// The node's podCIDR, once `configure` succeeded.
    pod_cidr: Mutex<Option<Ipv4Cidr>>,
}

/// `/run/netns/cluster-<pod uid>` (visible to `ip netns list`).
pub fn netns_path(pod_uid: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(netns_name(pod_uid))
}

/// `cluster-<pod uid>`: the name `ip netns` knows the pod's namespace by.
pub fn netns_name(pod_uid: &str) -> String {
    format!("{NETNS_PREFIX}{pod_uid}")
}

/// The host-side veth of a pod: `veth` and the first 11 hex digits of SHA-256(uid), stable
/// across restarts and releases, 15 characters (the kernel's limit).
pub fn veth_name(pod_uid: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, pod_uid.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{VETH_PREFIX}{}", &hex[..VETH_HASH_LEN])
}

/// True for names [`veth_name`] can produce.
fn is_our_veth_name(name: &str) -> bool {
    name.len() == VETH_PREFIX.len() + VETH_HASH_LEN
        && name.starts_with(VETH_PREFIX)
        && name[VETH_PREFIX.len()..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// Uids name files and namespaces: only Kubernetes uid characters, no path separators.
fn validate_uid(uid: &str) -> Result<(), NetworkError> {
    let ok = !uid.is_empty()
        && uid.len() <= 128
        && uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !uid.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(NetworkError::InvalidUid(uid.to_string()))
    }
}

fn parse_cidr(cidr: &str) -> Result<Ipv4Cidr, NetworkError> {
    cidr.trim()
        .parse()
        .map_err(|reason| NetworkError::InvalidCidr {
            cidr: cidr.to_string(),
            reason,
        })
}

/// The nftables script that replaces the table in one transaction: declaring the table first
/// makes the `delete` valid when it does not exist yet, and `nft -f` applies the whole file
/// atomically, so the masquerade rule is never missing.
fn nat_ruleset(table: &str, pod_cidr: &Ipv4Cidr, cluster_cidr: &Ipv4Cidr) -> String {
    format!(
        "table ip {table} {{}}\n\
         delete table ip {table}\n\
         table ip {table} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {pod_cidr} ip daddr != {cluster_cidr} masquerade comment \"pod traffic leaving the cluster\"\n\
         \t}}\n\
         }}\n"
    )
}

fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
}

impl PodNetwork {
    /// Opens the IPAM under `config.state_dir`. Touches no network state.
    pub fn new(config: NetworkConfig) -> Result<PodNetwork, NetworkError> {
        if !valid_name(&config.bridge, 15) {
            return Err(NetworkError::InvalidConfig(format!(
                "bridge name {:?} must be 1-15 letters, digits, '-' or '_'",
                config.bridge
            )));
        }
        if !valid_name(&config.nft_table, 64) {
            return Err(NetworkError::InvalidConfig(format!(
                "nftables table name {:?} must be letters, digits, '-' or '_'",
                config.nft_table
            )));
        }
        let ipam = Ipam::open(config.state_dir.join("ipam"))?;
        Ok(PodNetwork {
            inner: Arc::new(Inner {
                config,
                ipam: Mutex::new(ipam),
                pod_cidr: Mutex::new(None),
            }),
        })
    }

    /// Once Node.spec.podCIDR is known: bridge up with the gateway (first host address of the
    /// CIDR), ip_forward, masquerade of traffic from the CIDR leaving it. Idempotent.
    pub async fn configure(&self, pod_cidr: &str, cluster_cidr: &str) -> Result<(), NetworkError> {
        let range = parse_cidr(pod_cidr)?;
        let cluster = parse_cidr(cluster_cidr)?;
        let bridge = self.inner.config.bridge.as_str();
        let gateway = format!("{}/{}", range.gateway(), range.prefix());

        if !link_exists(None, bridge).await? {
            match ip(&["link", "add", "name", bridge, "type", "bridge"]).await {
                Ok(_) => tracing::info!(bridge, "created the pod bridge"),
                Err(e) if e.stderr().contains("File exists") => {}
                Err(e) => return Err(e.into()),
            }
        }
        ip(&["addr", "replace", &gateway, "dev", bridge]).await?;
        // A podCIDR change leaves the old gateway behind: remove every other IPv4 address.
        for (address, prefix) in ipv4_addresses(bridge).await? {
            if address != range.gateway() || prefix != range.prefix() {
                let stale = format!("{address}/{prefix}");
                ip(&["addr", "del", &stale, "dev", bridge]).await?;
            }
        }
        ip(&["link", "set", "dev", bridge, "up"]).await?;
        enable_ip_forward()?;

        let ruleset = nat_ruleset(&self.inner.config.nft_table, &range, &cluster);
        command::run("nft", &["-f", "-"], Some(&ruleset)).await?;

        *lock(&self.inner.pod_cidr) = Some(range);
        tracing::info!(bridge, %range, %cluster, "pod network configured");
        Ok(())
    }

    /// Idempotent per pod: network namespace at `netns_path(uid)`, loopback up, veth pair
    /// (host side on the bridge, hairpin on; pod side "eth0"), address from the IPAM, default
    /// route via the gateway. A second call for the same uid returns the same status.
    pub async fn setup(
        &self,
        pod_uid: &str,
        pod_namespace: &str,
        pod_name: &str,
    ) -> Result<PodNetworkStatus, NetworkError> {
        validate_uid(pod_uid)?;
        let range = (*lock(&self.inner.pod_cidr)).ok_or(NetworkError::NotConfigured)?;
        // The address first: from here on a namespace or veth of this uid is always findable
        // through its IPAM record (garbage_collect relies on that).
        let address = lock(&self.inner.ipam).allocate(&range, pod_uid)?;
        let netns = netns_name(pod_uid);
        let host = veth_name(pod_uid);
        let bridge = self.inner.config.bridge.as_str();

        ensure_netns(&netns).await?;
        ip(&["-n", &netns, "link", "set", "dev", "lo", "up"]).await?;
        ensure_veth(&host, &netns).await?;
        ip(&["link", "set", "dev", &host, "master", bridge]).await?;
        ip(&[
            "link",
            "set",
            "dev",
            &host,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ])
        .await?;
        ip(&["link", "set", "dev", &host, "up"]).await?;

        let cidr = format!("{address}/{}", range.prefix());
        ip(&["-n", &netns, "addr", "replace", &cidr, "dev", POD_IFNAME]).await?;
        ip(&["-n", &netns, "link", "set", "dev", POD_IFNAME, "up"]).await?;
        let gateway = range.gateway().to_string();
        ip(&[
            "-n", &netns, "route", "replace", "default", "via", &gateway, "dev", POD_IFNAME,
        ])
        .await?;

        tracing::debug!(pod = %format!("{pod_namespace}/{pod_name}"), uid = pod_uid, %address, veth = %host, "pod network ready");
        Ok(PodNetworkStatus {
            netns: netns_path(pod_uid),
            ip: IpAddr::V4(address),
            gateway: IpAddr::V4(range.gateway()),
        })
    }

    /// Idempotent: removes the veth, the namespace and releases the address.
    pub async fn teardown(&self, pod_uid: &str) -> Result<(), NetworkError> {
        validate_uid(pod_uid)?;
        let host = veth_name(pod_uid);
        // Deleting one end deletes the pair.
        if let Err(e) = ip(&["link", "del", "dev", &host]).await {
            if !is_not_found(&e) {
                return Err(e.into());
            }
        }
        delete_netns(&netns_name(pod_uid)).await?;
        // The address last, so a crash before this point is still found by garbage_collect.
        let released = lock(&self.inner.ipam).release(pod_uid)?;
        tracing::debug!(uid = pod_uid, ?released, "pod network torn down");
        Ok(())
    }

    /// Tears down every pod network whose uid is not in `live` (after a crash or restart).
    ///
    /// The candidates are the uids of this node's IPAM records and of the namespaces
    /// `/run/netns/cluster-<uid>` whose host veth exists in this network namespace; veths of
    /// this module's naming left on the bridge without any known uid are removed too.
    pub async fn garbage_collect(&self, live: &HashSet<String>) -> Result<(), NetworkError> {
        let mut candidates: HashSet<String> = lock(&self.inner.ipam)
            .allocations()?
            .into_iter()
            .map(|(_, uid)| uid)
            .collect();
        for uid in netns_uids()? {
            if !candidates.contains(&uid) && link_exists(None, &veth_name(&uid)).await? {
                candidates.insert(uid);
            }
        }
        let mut first_error = None;
        for uid in candidates.iter().filter(|uid| !live.contains(*uid)) {
            tracing::info!(uid = %uid, "removing the network of a pod that no longer exists");
            if let Err(e) = self.teardown(uid).await {
                tracing::warn!(uid = %uid, error = %e, "could not remove a stale pod network");
                first_error.get_or_insert(e);
            }
        }

        let wanted: HashSet<String> = live.iter().map(|uid| veth_name(uid)).collect();
        if link_exists(None, &self.inner.config.bridge).await? {
            for port in bridge_ports(&self.inner.config.bridge).await? {
                if is_our_veth_name(&port) && !wanted.contains(&port) {
                    tracing::info!(veth = %port, "removing a veth of no live pod");
                    if let Err(e) = ip(&["link", "del", "dev", &port]).await {
                        if !is_not_found(&e) {
                            first_error.get_or_insert(e.into());
                        }
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A poisoned lock only means another task panicked mid-call; the data (a path, a CIDR) is
/// still consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// True when the link exists (in the pod namespace `netns`, or here).
async fn link_exists(netns: Option<&str>, name: &str) -> Result<bool, NetworkError> {
    let mut args = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["link", "show", "dev", name]);
    match ip(&args).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// One link as `ip -j link show` describes it (the fields used here).
#[derive(Debug, serde::Deserialize)]
struct Link {
    ifname: String,
    ifindex: u32,
    /// For a veth: the peer's ifindex (in the peer's namespace).
    link_index: Option<u32>,
}

async fn show_link(netns: Option<&str>, name: &str) -> Result<Option<Link>, NetworkError> {
    let mut args = Vec::new();
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["-j", "link", "show", "dev", name]);
    let out = match ip(&args).await {
        Ok(out) => out,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let links: Vec<Link> = parse_json(&args, &out)?;
    Ok(links.into_iter().next())
}

fn parse_json<T: serde::de::DeserializeOwned>(args: &[&str], out: &str) -> Result<T, NetworkError> {
    serde_json::from_str(out).map_err(|e| NetworkError::Unexpected {
        command: format!("ip {}", args.join(" ")),
        detail: e.to_string(),
    })
}

/// The IPv4 addresses of a link.
async fn ipv4_addresses(dev: &str) -> Result<Vec<(Ipv4Addr, u8)>, NetworkError> {
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        addr_info: Vec<AddrInfo>,
    }
    #[derive(serde::Deserialize)]
    struct AddrInfo {
        local: Option<String>,
        prefixlen: Option<u8>,
    }
    let args = ["-j", "-4", "addr", "show", "dev", dev];
    let out = ip(&args).await?;
    let entries: Vec<Entry> = parse_json(&args, &out)?;
    Ok(entries
        .into_iter()
        .flat_map(|e| e.addr_info)
        .filter_map(|a| Some((a.local?.parse().ok()?, a.prefixlen?)))
        .collect())
}

/// The names of the links attached to a bridge.
async fn bridge_ports(bridge: &str) -> Result<Vec<String>, NetworkError> {
    #[derive(serde::Deserialize)]
    struct Port {
        ifname: String,
    }
    let args = ["-j", "link", "show", "master", bridge];
    let out = ip(&args).await?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    let ports: Vec<Port> = parse_json(&args, &out)?;
    Ok(ports.into_iter().map(|p| p.ifname).collect())
}

/// Makes the named namespace exist and be usable; a leftover file that is no longer a
/// namespace mount (a crash inside `ip netns add`) is removed and the namespace made again.
async fn ensure_netns(name: &str) -> Result<(), NetworkError> {
    let path = Path::new(NETNS_DIR).join(name);
    if path.exists() {
        match ip(&["-n", name, "link", "show", "dev", "lo"]).await {
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::warn!(netns = name, error = %e, "replacing an unusable network namespace");
                delete_netns(name).await?;
            }
        }
    }
    ip(&["netns", "add", name]).await?;
    Ok(())
}

/// Removes the named namespace (its mount and file). Absent is fine.
async fn delete_netns(name: &str) -> Result<(), NetworkError> {
    let path = Path::new(NETNS_DIR).join(name);
    if !path.exists() {
        return Ok(());
    }
    if let Err(e) = ip(&["netns", "delete", name]).await {
        if !is_not_found(&e) {
            tracing::debug!(netns = name, error = %e, "ip netns delete failed; removing the file");
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetworkError::Io { path, source }),
    }
}

/// Makes the pair `host` (here) ↔ `eth0` (in `netns`) exist; a half or mismatched pair left
/// by a crash is removed and made again.
async fn ensure_veth(host: &str, netns: &str) -> Result<(), NetworkError> {
    let host_link = show_link(None, host).await?;
    let pod_link = show_link(Some(netns), POD_IFNAME).await?;
    if let (Some(h), Some(p)) = (&host_link, &pod_link) {
        if h.link_index == Some(p.ifindex) && p.link_index == Some(h.ifindex) {
            return Ok(());
        }
    }
    if let Some(h) = host_link {
        tracing::warn!(veth = %h.ifname, "recreating a half-made veth pair");
        ip(&["link", "del", "dev", host]).await?;
    }
    if pod_link.is_some() {
        if let Err(e) = ip(&["-n", netns, "link", "del", "dev", POD_IFNAME]).await {
            if !is_not_found(&e) {
                return Err(e.into());
            }
        }
    }
    ip(&[
        "link", "add", "name", host, "type", "veth", "peer", "name", POD_IFNAME, "netns", netns,
    ])
    .await?;
    Ok(())
}

/// Turns on IPv4 forwarding. The write happens on the calling thread, so it applies to that
/// thread's network namespace.
fn enable_ip_forward() -> Result<(), NetworkError> {
    let path = Path::new("/proc/sys/net/ipv4/ip_forward");
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    std::fs::write(path, "1").map_err(|source| NetworkError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The uids of the namespaces `/run/netns/cluster-<uid>`.
fn netns_uids() -> Result<Vec<String>, NetworkError> {
    let dir = Path::new(NETNS_DIR);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NetworkError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut uids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| NetworkError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(uid) = name.strip_prefix(NETNS_PREFIX) {
            if validate_uid(uid).is_ok() {
                uids.push(uid.to_string());
            }
        }
    }
    Ok(uids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_and_fit_the_kernel_limits() {
        let uid = "3f2a9c1e-7b4d-4e8a-9f00-123456789abc";
        assert_eq!(veth_name(uid), veth_name(uid));
        assert_eq!(veth_name(uid).len(), 15);
        assert!(is_our_veth_name(&veth_name(uid)));
        assert_ne!(veth_name(uid), veth_name("another-uid"));
        // SHA-256("a") starts with ca978112ca1bbdca…: stable across releases.
        assert_eq!(veth_name("a"), "vethca978112ca1");
        assert_eq!(
            netns_path(uid),
            PathBuf::from(format!("/run/netns/cluster-{uid}"))
        );
        assert!(!is_our_veth_name("veth0"));
        assert!(!is_our_veth_name("vethCA978112CA1"));
        assert!(!is_our_veth_name("ethca978112ca1x"));
    }

    #[test]
    fn uids_that_could_escape_are_refused() {
        assert!(validate_uid("3f2a9c1e-7b4d-4e8a-9f00-123456789abc").is_ok());
        for bad in ["", "../x", "a/b", "-n", "a b", &"x".repeat(129)] {
            assert!(validate_uid(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_ruleset_replaces_the_table_and_masquerades_only_leaving_traffic() {
        let pod: Ipv4Cidr = "10.42.1.0/24".parse().expect("cidr");
        let cluster: Ipv4Cidr = "10.42.0.0/16".parse().expect("cidr");
        let rules = nat_ruleset("cluster-nat", &pod, &cluster);
        let lines: Vec<&str> = rules.lines().map(str::trim).collect();
        assert_eq!(lines[0], "table ip cluster-nat {}");
        assert_eq!(lines[1], "delete table ip cluster-nat");
        assert!(rules.contains("type nat hook postrouting priority srcnat"));
        assert!(rules.contains("ip saddr 10.42.1.0/24 ip daddr != 10.42.0.0/16 masquerade"));
    }

    #[test]
    fn config_names_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = |bridge: &str, table: &str| NetworkConfig {
            state_dir: dir.path().to_path_buf(),
            bridge: bridge.to_string(),
            nft_table: table.to_string(),
        };
        assert!(PodNetwork::new(config("cluster0", "cluster-nat")).is_ok());
        assert!(PodNetwork::new(config("a-bridge-name-too-long", "t")).is_err());
        assert!(PodNetwork::new(config("br", "bad table")).is_err());
        assert!(PodNetwork::new(config("br", "x;flush ruleset")).is_err());
    }
}
