//! The pod network on a real kernel: bridge, veth pairs, pod namespaces, IPAM, masquerade.
//!
//! Needs root, iproute2, nftables and busybox (CI runs them as root; elsewhere they skip and say
//! why). The host's network is never touched: each test makes a network namespace of its own
//! (`cltest-<random>`) and runs its whole body in a thread that `setns()`s into it, on a
//! current-thread tokio runtime, so the `ip`/`nft` children the module spawns work there too.
//! Only the pods' namespace files live in the shared `/run/netns` (with unique uids). A guard
//! removes the pods' namespaces, the test namespace (and with it the bridge, veths and nft
//! table) and the state directory, even when the test fails.

use std::collections::HashSet;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use cluster::agent::network::ipam::IpamError;
use cluster::agent::network::{
    netns_name, netns_path, veth_name, NetworkConfig, NetworkError, PodNetwork, PodNetworkStatus,
};

const BRIDGE: &str = "cltest0";
const TABLE: &str = "cltest-nat";

/// True when the test can run: root, `ip`, `nft` and busybox. Under `CI=true` a missing
/// requirement fails the test instead of skipping it.
fn require_net(test: &str) -> bool {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root".to_string());
    }
    for tool in ["ip", "nft"] {
        if Command::new(tool).arg("-V").output().is_err() {
            missing.push(format!("`{tool}`"));
        }
    }
    if busybox().is_none() {
        missing.push("busybox".to_string());
    }
    if missing.is_empty() {
        return true;
    }
    let reason = format!("pod network tests need {}", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {reason}, and CI=true must run them");
    }
    eprintln!("skipping {test}: {reason}");
    false
}

fn busybox() -> Option<&'static str> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"))
}

/// Runs and returns stdout, panicking with stderr on failure.
fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(program: &str, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&run_ok(program, args)).expect("json output")
}

/// Everything one test creates outside its thread's namespace, removed on drop.
struct Sandbox {
    netns: String,
    /// A second namespace a test may create to stand for the world outside the cluster.
    outside: String,
    uids: Vec<String>,
    state: tempfile::TempDir,
}

impl Sandbox {
    fn new(pods: usize) -> Sandbox {
        let netns = format!(
            "cltest-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        run_ok("ip", &["netns", "add", &netns]);
        Sandbox {
            outside: format!("{netns}-out"),
            netns,
            uids: (0..pods)
                .map(|_| uuid::Uuid::new_v4().to_string())
                .collect(),
            state: tempfile::tempdir().expect("state dir"),
        }
    }

    fn config(&self) -> NetworkConfig {
        NetworkConfig {
            state_dir: self.state.path().to_path_buf(),
            bridge: BRIDGE.to_string(),
            nft_table: TABLE.to_string(),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for uid in &self.uids {
            if netns_path(uid).exists() {
                let _ = run("ip", &["netns", "delete", &netns_name(uid)]);
            }
        }
        let _ = run("ip", &["netns", "delete", &self.netns]);
        if Path::new("/run/netns").join(&self.outside).exists() {
            let _ = run("ip", &["netns", "delete", &self.outside]);
        }
    }
}

/// What a test body gets: its pod uids and network config, running inside its namespace.
struct Env {
    uids: Vec<String>,
    /// Name for the optional "outside world" namespace (removed by the guard).
    outside: String,
    config: NetworkConfig,
}

impl Env {
    fn uid(&self, i: usize) -> &str {
        &self.uids[i]
    }

    fn network(&self) -> PodNetwork {
        PodNetwork::new(self.config.clone()).expect("PodNetwork::new")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.config.state_dir.join("ipam")
    }
}

/// Runs `body` in a thread inside a fresh network namespace, on a current-thread runtime, and
/// cleans everything up afterwards (also when `body` panics).
fn in_own_netns<F, Fut>(pods: usize, body: F)
where
    F: FnOnce(Env) -> Fut + Send,
    Fut: std::future::Future<Output = ()>,
{
    let sandbox = Sandbox::new(pods);
    let result = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = std::fs::File::open(format!("/run/netns/{}", sandbox.netns))
                    .expect("open the test namespace");
                rustix::thread::move_into_link_name_space(
                    file.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .expect("setns into the test namespace");
                // Children of this thread are in the new namespace: nothing but lo here.
                let links = json("ip", &["-j", "link", "show"]);
                let names: Vec<&str> = links
                    .as_array()
                    .expect("links")
                    .iter()
                    .filter_map(|l| l["ifname"].as_str())
                    .collect();
                assert_eq!(names, vec!["lo"], "the test must run in an empty namespace");
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(body(Env {
                    uids: sandbox.uids.clone(),
                    outside: sandbox.outside.clone(),
                    config: sandbox.config(),
                }));
            })
            .join()
    });
    // The host never saw the bridge.
    let on_host = run("ip", &["link", "show", "dev", BRIDGE]);
    drop(sandbox);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    assert!(
        !on_host.status.success(),
        "the bridge {BRIDGE} leaked into the host's namespace"
    );
}

fn ping(from_uid: &str, to: IpAddr) -> bool {
    let Some(busybox) = busybox() else {
        return false;
    };
    let to = to.to_string();
    run(
        "ip",
        &[
            "netns",
            "exec",
            &netns_name(from_uid),
            busybox,
            "ping",
            "-c1",
            "-W2",
            &to,
        ],
    )
    .status
    .success()
}

fn link_exists(name: &str) -> bool {
    run("ip", &["link", "show", "dev", name]).status.success()
}

/// The uids recorded in the IPAM directory.
fn ipam_records(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("ipam dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.parse::<std::net::Ipv4Addr>().ok()?;
            let uid = std::fs::read_to_string(e.path()).ok()?;
            Some((name, uid))
        })
        .collect();
    out.sort();
    out
}

/// The IPv4 addresses (`a.b.c.d/n`) of eth0 in a pod's namespace.
fn pod_addresses(uid: &str) -> Vec<String> {
    let v = json(
        "ip",
        &[
            "-n",
            &netns_name(uid),
            "-j",
            "-4",
            "addr",
            "show",
            "dev",
            "eth0",
        ],
    );
    v.as_array()
        .expect("addr list")
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect()
}

/// The masquerade rules of the test table: (saddr prefix, daddr != prefix).
fn masquerade_rules() -> Vec<(String, String)> {
    let v = json("nft", &["-j", "list", "table", "ip", TABLE]);
    let mut rules = Vec::new();
    for item in v["nftables"].as_array().expect("nftables") {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let exprs = rule["expr"].as_array().expect("expr");
        if !exprs.iter().any(|e| e.get("masquerade").is_some()) {
            continue;
        }
        let prefix = |field: &str, op: &str| {
            exprs
                .iter()
                .filter_map(|e| e.get("match"))
                .find(|m| m["left"]["payload"]["field"] == field && m["op"] == op)
                .map(|m| {
                    format!(
                        "{}/{}",
                        m["right"]["prefix"]["addr"].as_str().unwrap_or(""),
                        m["right"]["prefix"]["len"]
                    )
                })
                .unwrap_or_default()
        };
        rules.push((prefix("saddr", "=="), prefix("daddr", "!=")));
    }
    rules
}

#[test]
fn two_pods_on_the_bridge_reach_each_other_and_the_gateway() {
    if !require_net("two_pods_on_the_bridge_reach_each_other_and_the_gateway") {
        return;
    }
    in_own_netns(2, |env| async move {
        let net = env.network();
        net.configure("10.42.0.0/24", "10.42.0.0/16")
            .await
            .expect("configure");
        let a = net
            .setup(env.uid(0), "default", "a")
            .await
            .expect("setup a");
        let b = net
            .setup(env.uid(1), "default", "b")
            .await
            .expect("setup b");
        let gateway: IpAddr = "10.42.0.1".parse().expect("ip");
        assert_eq!(a.gateway, gateway);
        assert_eq!(a.netns, netns_path(env.uid(0)));
        assert!(a.netns.exists());
        assert_ne!(a.ip, b.ip);

        assert!(ping(env.uid(0), b.ip), "pod a cannot reach pod b");
        assert!(ping(env.uid(1), a.ip), "pod b cannot reach pod a");
        assert!(ping(env.uid(0), gateway), "pod a cannot reach the gateway");
        assert!(ping(env.uid(0), a.ip), "pod a cannot reach itself");

        // eth0 has the IPAM address, the default route goes via the gateway, lo is up.
        assert_eq!(pod_addresses(env.uid(0)), vec![format!("{}/24", a.ip)]);
        let routes = json(
            "ip",
            &[
                "-n",
                &netns_name(env.uid(0)),
                "-j",
                "route",
                "show",
                "default",
            ],
        );
        assert_eq!(routes[0]["gateway"], "10.42.0.1", "{routes}");
        assert_eq!(routes[0]["dev"], "eth0", "{routes}");
        let lo = json(
            "ip",
            &[
                "-n",
                &netns_name(env.uid(0)),
                "-j",
                "link",
                "show",
                "dev",
                "lo",
            ],
        );
        assert_eq!(lo[0]["operstate"], "UNKNOWN", "lo is up: {lo}");

        // The host side is on the bridge with hairpin on; the bridge holds the gateway.
        let veth = json(
            "ip",
            &["-d", "-j", "link", "show", "dev", &veth_name(env.uid(0))],
        );
        assert_eq!(veth[0]["master"], BRIDGE, "{veth}");
        assert_eq!(
            veth[0]["linkinfo"]["info_slave_data"]["hairpin"], true,
            "{veth}"
        );
        let bridge = json("ip", &["-j", "-4", "addr", "show", "dev", BRIDGE]);
        assert_eq!(bridge[0]["addr_info"][0]["local"], "10.42.0.1", "{bridge}");

        // Forwarding is on in this namespace and pod traffic leaving the cluster is masqueraded.
        let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("ip_forward");
        assert_eq!(forward.trim(), "1");
        assert_eq!(
            masquerade_rules(),
            vec![("10.42.0.0/24".to_string(), "10.42.0.0/16".to_string())]
        );
    });
}

#[test]
fn configure_is_idempotent_and_replaces_the_nat_table_as_a_whole() {
    if !require_net("configure_is_idempotent_and_replaces_the_nat_table_as_a_whole") {
        return;
    }
    in_own_netns(1, |env| async move {
        let net = env.network();
        let setup_before = net.setup(env.uid(0), "default", "a").await;
        assert!(
            matches!(setup_before, Err(NetworkError::NotConfigured)),
            "{setup_before:?}"
        );
        assert!(matches!(
            net.configure("10.42.0.1/24", "10.42.0.0/16").await,
            Err(NetworkError::InvalidCidr { .. })
        ));

        for _ in 0..2 {
            net.configure("10.42.0.0/24", "10.42.0.0/16")
                .await
                .expect("configure");
        }
        assert_eq!(masquerade_rules().len(), 1, "no duplicate rule");

        // A new podCIDR replaces the rule and the gateway.
        net.configure("10.42.7.0/24", "10.42.0.0/16")
            .await
            .expect("reconfigure");
        assert_eq!(
            masquerade_rules(),
            vec![("10.42.7.0/24".to_string(), "10.42.0.0/16".to_string())]
        );
        let bridge = json("ip", &["-j", "-4", "addr", "show", "dev", BRIDGE]);
        let addrs: Vec<&str> = bridge[0]["addr_info"]
            .as_array()
            .expect("addr_info")
            .iter()
            .filter_map(|a| a["local"].as_str())
            .collect();
        assert_eq!(addrs, vec!["10.42.7.1"]);
        let status = net.setup(env.uid(0), "default", "a").await.expect("setup");
        assert_eq!(status.gateway.to_string(), "10.42.7.1");
        assert!(ping(env.uid(0), status.gateway));
    });
}

#[test]
fn setup_is_idempotent_and_recovers_from_half_done_work() {
    if !require_net("setup_is_idempotent_and_recovers_from_half_done_work") {
        return;
    }
    in_own_netns(2, |env| async move {
        let net = env.network();
        net.configure("10.42.0.0/24", "10.42.0.0/16")
            .await
            .expect("configure");
        let first = net.setup(env.uid(0), "default", "a").await.expect("setup");
        let again = net.setup(env.uid(0), "default", "a").await.expect("again");
        assert_eq!(first, again);
        assert_eq!(pod_addresses(env.uid(0)), vec![format!("{}/24", first.ip)]);
        assert_eq!(ipam_records(&env.ipam_dir()).len(), 1);

        // A crash after the veth pair was made but before it was wired: the pair is gone.
        run_ok("ip", &["link", "del", "dev", &veth_name(env.uid(0))]);
        let repaired = net.setup(env.uid(0), "default", "a").await.expect("repair");
        assert_eq!(repaired, first);
        assert!(
            ping(env.uid(0), first.gateway),
            "repaired pod reaches the gateway"
        );

        // A crash inside `ip netns add`: an empty file where the namespace should be.
        let path = netns_path(env.uid(1));
        std::fs::write(&path, "").expect("stale netns file");
        let second = net
            .setup(env.uid(1), "default", "b")
            .await
            .expect("setup b");
        assert_ne!(second.ip, first.ip);
        assert!(ping(env.uid(1), first.ip), "b reaches a after recovering");
        assert!(ping(env.uid(0), second.ip), "a reaches b after recovering");
    });
}

#[test]
fn teardown_removes_the_veth_namespace_and_address() {
    if !require_net("teardown_removes_the_veth_namespace_and_address") {
        return;
    }
    in_own_netns(2, |env| async move {
        let net = env.network();
        net.configure("10.42.0.0/24", "10.42.0.0/16")
            .await
            .expect("configure");
        let a = net.setup(env.uid(0), "default", "a").await.expect("a");
        let b = net.setup(env.uid(1), "default", "b").await.expect("b");
        net.teardown(env.uid(0)).await.expect("teardown");
        assert!(!link_exists(&veth_name(env.uid(0))));
        assert!(!a.netns.exists());
        assert_eq!(
            ipam_records(&env.ipam_dir()),
            vec![(b.ip.to_string(), env.uid(1).to_string())]
        );
        net.teardown(env.uid(0)).await.expect("teardown twice");
        assert!(ping(env.uid(1), b.gateway), "the other pod is untouched");
    });
}

#[test]
fn addresses_persist_across_a_new_pod_network_on_the_same_state() {
    if !require_net("addresses_persist_across_a_new_pod_network_on_the_same_state") {
        return;
    }
    in_own_netns(3, |env| async move {
        let before = env.network();
        before
            .configure("10.42.0.0/24", "10.42.0.0/16")
            .await
            .expect("configure");
        let a = before.setup(env.uid(0), "default", "a").await.expect("a");
        let b = before.setup(env.uid(1), "default", "b").await.expect("b");
        drop(before);

        // As after an agent restart.
        let after = env.network();
        after
            .configure("10.42.0.0/24", "10.42.0.0/16")
            .await
            .expect("configure");
        let a_again = after.setup(env.uid(0), "default", "a").await.expect("a");
        assert_eq!(a_again, a);
        let c: PodNetworkStatus = after.setup(env.uid(2), "default", "c").await.expect("c");
        assert_ne!(c.ip, a.ip);
        assert_ne!(c.ip, b.ip);
        assert!(ping(env.uid(2), b.ip));
    });
}

#[test]
fn an_exhausted_range_is_a_clear_error() {
    if !require_net("an_exhausted_range_is_a_clear_error") {
        return;
    }
    // A /29: .0 network, .1 gateway, .7 broadcast: five pods fit.
    in_own_netns(6, |env| async move {
        let net = env.network();
        net.configure("10.42.0.0/29", "10.42.0.0/16")
            .await
            .expect("configure");
        let mut ips = HashSet::new();
        for i in 0..5 {
            let status = net.setup(env.uid(i), "default", "p").await.expect("setup");
            ips.insert(status.ip.to_string());
        }
        let expected: HashSet<String> = (2..=6).map(|h| format!("10.42.0.{h}")).collect();
        assert_eq!(ips, expected, "never network, gateway or broadcast");

        let err = net
            .setup(env.uid(5), "default", "late")
            .await
            .expect_err("the range is full");
        assert!(
            matches!(err, NetworkError::Ipam(IpamError::Exhausted { .. })),
            "{err:?}"
        );
        assert!(err.to_string().contains("no free IP address"), "{err}");
        assert!(!netns_path(env.uid(5)).exists(), "nothing made for it");

        net.teardown(env.uid(3)).await.expect("teardown");
        let late = net
            .setup(env.uid(5), "default", "late")
            .await
            .expect("freed");
        assert!(ping(env.uid(5), late.gateway));
    });
}

#[test]
fn garbage_collect_removes_only_pods_that_are_not_live() {
    if !require_net("garbage_collect_removes_only_pods_that_are_not_live") {
        return;
    }
    // uid 3 is a namespace `cluster-<uid>` that is not ours (e.g. another agent's pod).
    in_own_netns(4, |env| async move {
        let net = env.network();
        net.configure("10.42.0.0/24", "10.42.0.0/16")
            .await
            .expect("configure");
        let a = net.setup(env.uid(0), "default", "a").await.expect("a");
        let b = net.setup(env.uid(1), "default", "b").await.expect("b");
        let c = net.setup(env.uid(2), "default", "c").await.expect("c");
        run_ok("ip", &["netns", "add", &netns_name(env.uid(3))]);

        // As after a restart: a fresh PodNetwork only knows its state directory.
        let restarted = env.network();
        let live: HashSet<String> = [env.uid(0).to_string()].into();
        restarted.garbage_collect(&live).await.expect("gc");

        for (uid, status) in [(env.uid(1), &b), (env.uid(2), &c)] {
            assert!(!link_exists(&veth_name(uid)), "veth of {uid} removed");
            assert!(!status.netns.exists(), "namespace of {uid} removed");
        }
        assert_eq!(
            ipam_records(&env.ipam_dir()),
            vec![(a.ip.to_string(), env.uid(0).to_string())]
        );
        assert!(
            netns_path(env.uid(3)).exists(),
            "a foreign namespace is kept"
        );
        assert!(a.netns.exists());
        assert!(ping(env.uid(0), a.gateway), "the live pod still works");

        restarted.garbage_collect(&live).await.expect("gc again");
    });
}

#[test]
fn pod_traffic_leaving_the_cluster_is_masqueraded() {
    if !require_net("pod_traffic_leaving_the_cluster_is_masqueraded") {
        return;
    }
    in_own_netns(1, |env| async move {
        let net = env.network();
        net.configure("10.42.0.0/24", "10.42.0.0/16")
            .await
            .expect("configure");
        let a = net.setup(env.uid(0), "default", "a").await.expect("a");

        // "The internet": a namespace behind an uplink of the node, with no route back to the
        // pod CIDR, so only masqueraded packets get an answer.
        run_ok("ip", &["netns", "add", &env.outside]);
        run_ok(
            "ip",
            &[
                "link",
                "add",
                "cltup",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &env.outside,
            ],
        );
        run_ok("ip", &["addr", "add", "192.168.77.1/24", "dev", "cltup"]);
        run_ok("ip", &["link", "set", "dev", "cltup", "up"]);
        for args in [
            &["addr", "add", "192.168.77.2/24", "dev", "eth0"][..],
            &["link", "set", "dev", "eth0", "up"],
            &["link", "set", "dev", "lo", "up"],
        ] {
            let mut full = vec!["-n", env.outside.as_str()];
            full.extend_from_slice(args);
            run_ok("ip", &full);
        }
        let internet: IpAddr = "192.168.77.2".parse().expect("ip");
        assert!(
            ping(env.uid(0), internet),
            "masqueraded pod reaches outside"
        );

        // Without the rule the answer has nowhere to go: the test can tell.
        run_ok("nft", &["delete", "table", "ip", TABLE]);
        assert!(!ping(env.uid(0), internet), "without masquerade no answer");

        net.configure("10.42.0.0/24", "10.42.0.0/16")
            .await
            .expect("configure again");
        assert!(ping(env.uid(0), internet), "the rule is back");
        assert!(ping(env.uid(0), a.gateway));
    });
}
