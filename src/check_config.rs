//! `cluster check-config`: can this host run cluster? Kernel namespaces, cgroups, overlayfs,
//! IP forwarding and the `nft` tool.
//!
//! Every check is a pure function of a root directory (`/` in production, a fake tree in tests)
//! and returns a [`Check`]; nothing here changes the host or prints. The caller prints the
//! lines and decides the exit code with [`all_required_present`].

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Present and usable.
    Ok,
    /// Absent or off, but cluster can run without it (or fix it itself).
    Warn,
    /// Absent and required.
    Missing,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Missing => "missing",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked (`namespace net`, `cgroup memory`, …).
    pub name: String,
    pub status: Status,
    /// What was found, and how to fix it when it is not ok.
    pub detail: String,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
        }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Warn,
            detail: detail.into(),
        }
    }

    fn missing(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Missing,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<8}{}: {}", self.status, self.name, self.detail)
    }
}

/// Kernel command-line options that turn the memory cgroup controller on where it is off by
/// default (Raspberry Pi OS).
pub const MEMORY_CGROUP_HINT: &str = "add `cgroup_memory=1 cgroup_enable=memory` to the kernel command line (on a Raspberry Pi: /boot/firmware/cmdline.txt or /boot/cmdline.txt) and reboot";

/// Cgroup controllers containers need.
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Runs every check against the tree at `root`, looking for tools in `search_path` (`PATH`).
pub fn check_host(root: &Path, search_path: Option<&OsStr>) -> Vec<Check> {
    let mut checks = namespaces(root);
    checks.extend(cgroups(root));
    checks.push(overlay(root));
    checks.push(ip_forward(root));
    checks.push(nft(root, search_path));
    checks
}

/// True when no check is [`Status::Missing`].
pub fn all_required_present(checks: &[Check]) -> bool {
    checks.iter().all(|check| check.status != Status::Missing)
}

/// `path` (absolute on the real host) inside the tree at `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The namespaces containers are made of: `/proc/self/ns/<kind>` exists for each.
pub fn namespaces(root: &Path) -> Vec<Check> {
    [
        ("net", "CONFIG_NET_NS"),
        ("pid", "CONFIG_PID_NS"),
        ("ipc", "CONFIG_IPC_NS"),
        ("uts", "CONFIG_UTS_NS"),
        ("mnt", "mount namespaces"),
        ("cgroup", "CONFIG_CGROUP_NS"),
    ]
    .into_iter()
    .map(|(kind, option)| {
        let path = under(root, Path::new("/proc/self/ns")).join(kind);
        let name = format!("namespace {kind}");
        if path.symlink_metadata().is_ok() {
            Check::ok(name, "supported")
        } else {
            Check::missing(name, format!("the kernel lacks {option}"))
        }
    })
    .collect()
}

/// Cgroup version and the controllers containers need.
pub fn cgroups(root: &Path) -> Vec<Check> {
    let base = under(root, Path::new("/sys/fs/cgroup"));
    let (version, available): (&str, Vec<String>) =
        match std::fs::read_to_string(base.join("cgroup.controllers")) {
            Ok(text) => ("v2", text.split_whitespace().map(str::to_string).collect()),
            Err(_) if base.is_dir() => (
                "v1",
                CONTROLLERS
                    .iter()
                    .filter(|controller| base.join(controller).is_dir())
                    .map(|controller| controller.to_string())
                    .collect(),
            ),
            Err(_) => {
                return vec![Check::missing(
                    "cgroups",
                    format!("{} is not mounted", base.display()),
                )]
            }
        };
    let mut checks = vec![Check::ok("cgroups", format!("cgroup {version}"))];
    for controller in CONTROLLERS {
        let name = format!("cgroup {controller}");
        if available.iter().any(|found| found == controller) {
            checks.push(Check::ok(name, "enabled"));
        } else if controller == "memory" {
            checks.push(Check::missing(
                name,
                format!("controller not enabled; {MEMORY_CGROUP_HINT}"),
            ));
        } else {
            checks.push(Check::missing(name, "controller not enabled"));
        }
    }
    checks
}

/// Overlay file system support (image layers are shared through overlayfs).
pub fn overlay(root: &Path) -> Check {
    let path = under(root, Path::new("/proc/filesystems"));
    match std::fs::read_to_string(&path) {
        Ok(text)
            if text
                .lines()
                .any(|line| line.split_whitespace().last() == Some("overlay")) =>
        {
            Check::ok("overlayfs", "supported")
        }
        Ok(_) => Check::missing(
            "overlayfs",
            "not in /proc/filesystems; load it with `modprobe overlay`",
        ),
        Err(err) => Check::missing("overlayfs", format!("reading {}: {err}", path.display())),
    }
}

/// IPv4 forwarding (pods reach the outside and each other through it).
pub fn ip_forward(root: &Path) -> Check {
    let path = under(root, Path::new("/proc/sys/net/ipv4/ip_forward"));
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim() == "1" => Check::ok("ip forwarding", "enabled"),
        Ok(_) => Check::warn(
            "ip forwarding",
            "disabled; enable it with `sysctl -w net.ipv4.ip_forward=1`",
        ),
        Err(err) => Check::missing(
            "ip forwarding",
            format!("reading {}: {err}", path.display()),
        ),
    }
}

/// The `nft` tool (the service proxy programs nftables through it).
pub fn nft(root: &Path, search_path: Option<&OsStr>) -> Check {
    let found = search_path
        .map(std::env::split_paths)
        .into_iter()
        .flatten()
        .map(|dir| under(root, &dir).join("nft"))
        .find(|candidate| is_executable(candidate));
    match found {
        Some(path) => Check::ok("nft", format!("found at {}", path.display())),
        None => Check::missing(
            "nft",
            "not found on PATH; install it (Debian/Ubuntu: `apt-get install nftables`)",
        ),
    }
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// A fake root with everything present (cgroup v2).
    fn healthy_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        let path = |p: &str| root.path().join(p);
        fs::create_dir_all(path("proc/self/ns")).expect("ns dir");
        for kind in ["net", "pid", "ipc", "uts", "mnt", "cgroup"] {
            fs::write(path("proc/self/ns").join(kind), "").expect("ns file");
        }
        fs::create_dir_all(path("sys/fs/cgroup")).expect("cgroup dir");
        fs::write(
            path("sys/fs/cgroup/cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma\n",
        )
        .expect("controllers");
        fs::write(
            path("proc/filesystems"),
            "nodev\tsysfs\n\text4\nnodev\toverlay\n",
        )
        .expect("filesystems");
        fs::create_dir_all(path("proc/sys/net/ipv4")).expect("sysctl dir");
        fs::write(path("proc/sys/net/ipv4/ip_forward"), "1\n").expect("ip_forward");
        fs::create_dir_all(path("usr/sbin")).expect("sbin");
        fs::write(path("usr/sbin/nft"), "#!/bin/sh\n").expect("nft");
        fs::set_permissions(path("usr/sbin/nft"), fs::Permissions::from_mode(0o755))
            .expect("chmod");
        root
    }

    const PATH: &str = "/usr/local/bin:/usr/sbin";

    fn status_of<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks
            .iter()
            .find(|check| check.name == name)
            .unwrap_or_else(|| panic!("no check named {name}: {checks:?}"))
    }

    #[test]
    fn a_healthy_host_passes_every_check() {
        let root = healthy_root();
        let checks = check_host(root.path(), Some(OsStr::new(PATH)));
        assert!(
            checks.iter().all(|check| check.status == Status::Ok),
            "{checks:#?}"
        );
        assert!(all_required_present(&checks));
        assert_eq!(status_of(&checks, "cgroups").detail, "cgroup v2");
    }

    #[test]
    fn a_missing_memory_controller_gives_the_raspberry_pi_hint() {
        let root = healthy_root();
        fs::write(
            root.path().join("sys/fs/cgroup/cgroup.controllers"),
            "cpuset cpu io pids\n",
        )
        .expect("controllers");
        let checks = check_host(root.path(), Some(OsStr::new(PATH)));
        let memory = status_of(&checks, "cgroup memory");
        assert_eq!(memory.status, Status::Missing);
        assert!(memory
            .detail
            .contains("cgroup_memory=1 cgroup_enable=memory"));
        assert!(!all_required_present(&checks));
    }

    #[test]
    fn cgroup_v1_hierarchies_are_detected() {
        let root = healthy_root();
        let base = root.path().join("sys/fs/cgroup");
        fs::remove_file(base.join("cgroup.controllers")).expect("rm");
        for controller in ["cpu", "memory", "pids"] {
            fs::create_dir(base.join(controller)).expect("v1 dir");
        }
        let checks = cgroups(root.path());
        assert_eq!(status_of(&checks, "cgroups").detail, "cgroup v1");
        assert!(checks.iter().all(|check| check.status == Status::Ok));
    }

    #[test]
    fn missing_pieces_are_reported() {
        let root = healthy_root();
        fs::remove_file(root.path().join("proc/self/ns/cgroup")).expect("rm ns");
        fs::write(root.path().join("proc/filesystems"), "nodev\tsysfs\n").expect("fs");
        fs::write(root.path().join("proc/sys/net/ipv4/ip_forward"), "0\n").expect("fwd");
        fs::set_permissions(
            root.path().join("usr/sbin/nft"),
            fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        let checks = check_host(root.path(), Some(OsStr::new(PATH)));
        assert_eq!(
            status_of(&checks, "namespace cgroup").status,
            Status::Missing
        );
        assert_eq!(status_of(&checks, "namespace net").status, Status::Ok);
        assert_eq!(status_of(&checks, "overlayfs").status, Status::Missing);
        assert_eq!(status_of(&checks, "ip forwarding").status, Status::Warn);
        assert_eq!(status_of(&checks, "nft").status, Status::Missing);
        assert_eq!(nft(root.path(), None).status, Status::Missing);
    }

    #[test]
    fn no_cgroup_mount_is_missing() {
        let root = tempfile::tempdir().expect("tempdir");
        let checks = cgroups(root.path());
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].status, Status::Missing);
    }

    #[test]
    fn lines_are_aligned() {
        let line = Check::warn("ip forwarding", "disabled").to_string();
        assert_eq!(line, "warn    ip forwarding: disabled");
    }
}
