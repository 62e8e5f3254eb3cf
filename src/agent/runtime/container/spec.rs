//! The OCI runtime spec of a container, built from its image's config and its container spec
//! the way the kubelet and containerd build it.
//!
//! - Command: `command` replaces the image's ENTRYPOINT and drops its CMD; `args` replaces CMD.
//! - Environment: the image's, then the container's (same name: the container wins), with a
//!   default `PATH`, `HOSTNAME` and `HOME` when missing.
//! - User: `runAsUser`/`runAsGroup` win over the image's `USER`, which may be a name or number
//!   (`user`, `uid`, `user:group`, `uid:gid`); names are looked up in the image's `/etc/passwd`
//!   and `/etc/group`. Supplementary groups: the user's groups from `/etc/group`, then the pod's
//!   `supplementalGroups`.
//! - Security: containerd's default capabilities with add/drop (`ALL` understood), privileged,
//!   read-only root, `allowPrivilegeEscalation: false` → `noNewPrivileges`, the RuntimeDefault
//!   seccomp profile, masked and read-only `/proc` and `/sys` paths.
//! - Namespaces: network, IPC and UTS joined by path from the pod sandbox; new PID (or the pod's
//!   with shareProcessNamespace) and mount namespaces.
//!
//! Pure: reads only the image's passwd and group files; writes nothing.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::seccomp;

/// The part of an image's config a container needs (OCI image config `config` section).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// The seccomp profile of a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeccompProfile {
    /// No filter (the kubelet's default unless seccompDefault is on).
    #[default]
    Unconfined,
    /// The container runtime's default profile.
    RuntimeDefault,
}

/// The security settings of a container (pod-level values already merged in, as the kubelet does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub supplemental_groups: Vec<i64>,
    pub privileged: bool,
    pub read_only_root_filesystem: bool,
    pub allow_privilege_escalation: Option<bool>,
    /// Capability names, with or without the `CAP_` prefix; `ALL` means every capability.
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
    pub seccomp: SeccompProfile,
}

/// A bind mount the kubelet provides (volumes, /etc/hosts, /etc/hostname, /etc/resolv.conf,
/// the termination log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub container_path: String,
    pub host_path: PathBuf,
    pub read_only: bool,
}

/// Namespaces of the pod sandbox to join, by path (`/proc/<pid>/ns/net`, a bind-mounted
/// namespace file, …). `None` gives the container a new one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodNamespaces {
    pub network: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// The pod's PID namespace, with shareProcessNamespace.
    pub pid: Option<PathBuf>,
}

/// Resource limits of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerResources {
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub memory_limit: Option<i64>,
    pub pids_limit: Option<i64>,
}

/// What the kubelet asks for (the CRI ContainerConfig, in Rust terms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub tty: bool,
    /// Keep the container's stdin open for attach clients (the container's `stdin`).
    pub stdin: bool,
    /// Close the container's stdin when the first attached client's stdin ends (`stdinOnce`).
    pub stdin_once: bool,
    pub security: SecurityContext,
    pub mounts: Vec<Mount>,
    /// The pod's shared /dev/shm; a private tmpfs when `None`.
    pub shm: Option<PathBuf>,
    pub namespaces: PodNamespaces,
    /// Hostname, set only when the container has its own UTS namespace.
    pub hostname: Option<String>,
    pub resources: ContainerResources,
}

/// Why a spec cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("no command specified: the image has no entrypoint or cmd and the container no command or args")]
    NoCommand,
    #[error("user {0:?} not found in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in the image's /etc/group")]
    UnknownGroup(String),
    #[error("invalid user or group id {0}")]
    InvalidId(i64),
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
    #[error("the built spec is not a valid OCI spec: {0}")]
    Invalid(String),
}

/// containerd's default capabilities.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability the kernel knows (up to CAP_CHECKPOINT_RESTORE).
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// containerd's masked paths (hidden from unprivileged containers).
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// containerd's read-only paths.
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process arguments, as the kubelet resolves them.
pub fn resolve_args(image: &ImageConfig, spec: &ContainerSpec) -> Result<Vec<String>, SpecError> {
    let args = if !spec.command.is_empty() {
        let mut args = spec.command.clone();
        args.extend(spec.args.iter().cloned());
        args
    } else {
        let mut args = image.entrypoint.clone();
        if spec.args.is_empty() {
            args.extend(image.cmd.iter().cloned());
        } else {
            args.extend(spec.args.iter().cloned());
        }
        args
    };
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(args)
}

/// The environment: image first, container entries replace same-named ones.
pub fn resolve_env(image: &ImageConfig, spec: &ContainerSpec, home: &str) -> Vec<String> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let key = entry.split('=').next().unwrap_or("").to_string();
        if let Some(existing) = env
            .iter_mut()
            .find(|e| e.split('=').next() == Some(key.as_str()))
        {
            *existing = entry;
        } else {
            env.push(entry);
        }
    };
    for entry in &image.env {
        set(entry.clone());
    }
    for (key, value) in &spec.env {
        set(format!("{key}={value}"));
    }
    let has = |env: &[String], key: &str| env.iter().any(|e| e.split('=').next() == Some(key));
    if !has(&env, "PATH") {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    if let Some(hostname) = &spec.hostname {
        if !has(&env, "HOSTNAME") {
            env.push(format!("HOSTNAME={hostname}"));
        }
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={home}"));
    }
    env
}

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

#[derive(Debug)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

#[derive(Debug)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Reads `etc/<file>` from the first of `roots` (top layer first) that has it. Symbolic links
/// are not followed: they would resolve against the host.
fn read_image_file(roots: &[PathBuf], file: &str) -> String {
    for root in roots {
        let path = root.join("etc").join(file);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_file() => {
                return fs::read_to_string(&path).unwrap_or_default();
            }
            _ => continue,
        }
    }
    String::new()
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 7 || line.starts_with('#') {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_string(),
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
                home: fields[5].to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || line.starts_with('#') {
                return None;
            }
            Some(GroupEntry {
                name: fields[0].to_string(),
                gid: fields[2].parse().ok()?,
                members: fields[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            })
        })
        .collect()
}

fn id(value: i64) -> Result<u32, SpecError> {
    u32::try_from(value).map_err(|_| SpecError::InvalidId(value))
}

/// Resolves the user and groups as containerd does for the CRI. `roots` are the directories
/// of the root filesystem, top layer first.
pub fn resolve_user(
    image: &ImageConfig,
    security: &SecurityContext,
    roots: &[PathBuf],
) -> Result<User, SpecError> {
    let passwd = parse_passwd(&read_image_file(roots, "passwd"));
    let groups = parse_group(&read_image_file(roots, "group"));
    let find_group = |spec: &str| -> Result<u32, SpecError> {
        if let Ok(gid) = spec.parse::<u32>() {
            return Ok(gid);
        }
        groups
            .iter()
            .find(|g| g.name == spec)
            .map(|g| g.gid)
            .ok_or_else(|| SpecError::UnknownGroup(spec.to_string()))
    };

    let (image_user, image_group) = match image.user.as_deref().filter(|u| !u.is_empty()) {
        Some(user) => match user.split_once(':') {
            Some((u, g)) => (Some(u.to_string()), Some(g.to_string())),
            None => (Some(user.to_string()), None),
        },
        None => (None, None),
    };

    // The user: runAsUser, else the image's USER, else root.
    let (uid, entry) = match security.run_as_user {
        Some(uid) => {
            let uid = id(uid)?;
            (uid, passwd.iter().find(|p| p.uid == uid))
        }
        None => match image_user.as_deref() {
            Some(name) => match name.parse::<u32>() {
                Ok(uid) => (uid, passwd.iter().find(|p| p.uid == uid)),
                Err(_) => {
                    let entry = passwd
                        .iter()
                        .find(|p| p.name == name)
                        .ok_or_else(|| SpecError::UnknownUser(name.to_string()))?;
                    (entry.uid, Some(entry))
                }
            },
            None => (0, passwd.iter().find(|p| p.uid == 0)),
        },
    };

    // The group: runAsGroup, else the image's group (only with the image's user), else the
    // user's primary group from /etc/passwd, else 0.
    let gid = match security.run_as_group {
        Some(gid) => id(gid)?,
        None => match (&image_group, security.run_as_user) {
            (Some(group), None) => find_group(group)?,
            _ => entry.map(|e| e.gid).unwrap_or(0),
        },
    };

    let mut additional: Vec<u32> = vec![gid];
    if let Some(entry) = entry {
        for group in &groups {
            if group.members.iter().any(|m| m == &entry.name) {
                additional.push(group.gid);
            }
        }
    }
    for group in &security.supplemental_groups {
        additional.push(id(*group)?);
    }
    let mut seen = BTreeSet::new();
    additional.retain(|g| seen.insert(*g));

    Ok(User {
        uid,
        gid,
        additional_gids: additional,
        home: entry
            .map(|e| e.home.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "/".to_string()),
    })
}

fn normalise_capability(name: &str) -> Result<String, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if ALL_CAPABILITIES.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(SpecError::UnknownCapability(name.to_string()))
    }
}

/// The capability set: the default set, minus drops, plus adds (`ALL` in either), or every
/// capability when privileged.
pub fn resolve_capabilities(security: &SecurityContext) -> Result<Vec<String>, SpecError> {
    if security.privileged {
        return Ok(ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect());
    }
    let is_all = |c: &String| c.eq_ignore_ascii_case("ALL");
    let mut caps: Vec<String> = if security.capabilities_add.iter().any(is_all) {
        ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect()
    } else {
        let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        for add in &security.capabilities_add {
            let add = normalise_capability(add)?;
            if !caps.contains(&add) {
                caps.push(add);
            }
        }
        caps
    };
    if security.capabilities_drop.iter().any(is_all) {
        // Drop ALL keeps only what is explicitly added.
        caps = Vec::new();
        for add in &security.capabilities_add {
            if !is_all(add) {
                caps.push(normalise_capability(add)?);
            }
        }
    } else {
        for drop in &security.capabilities_drop {
            let drop = normalise_capability(drop)?;
            caps.retain(|c| c != &drop);
        }
    }
    Ok(caps)
}

/// Where the root filesystem is and how `/etc/passwd` is looked up before it is mounted.
#[derive(Debug, Clone)]
pub struct RootfsLayout {
    /// The path the container's root will be at (the spec's `root.path`).
    pub root: PathBuf,
    /// Directories to read the image's `/etc/passwd` and `/etc/group` from, top layer first.
    pub lookup: Vec<PathBuf>,
}

/// Builds the OCI spec (as JSON, checked to parse as an OCI spec).
pub fn build(
    image: &ImageConfig,
    spec: &ContainerSpec,
    rootfs: &RootfsLayout,
    cgroup_path: &str,
) -> Result<Value, SpecError> {
    let args = resolve_args(image, spec)?;
    let user = resolve_user(image, &spec.security, &rootfs.lookup)?;
    let env = resolve_env(image, spec, &user.home);
    let caps = resolve_capabilities(&spec.security)?;
    let cwd = spec
        .working_dir
        .clone()
        .filter(|d| !d.is_empty())
        .or_else(|| image.working_dir.clone().filter(|d| !d.is_empty()))
        .unwrap_or_else(|| "/".to_string());
    let privileged = spec.security.privileged;

    let mut process = json!({
        "terminal": spec.tty,
        "user": {
            "uid": user.uid,
            "gid": user.gid,
            "additionalGids": user.additional_gids,
        },
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
        },
        "noNewPrivileges": spec.security.allow_privilege_escalation == Some(false),
    });
    if spec.tty {
        process["consoleSize"] = json!({ "height": 24, "width": 80 });
    }

    let sys_options = if privileged {
        json!(["nosuid", "noexec", "nodev"])
    } else {
        json!(["nosuid", "noexec", "nodev", "ro"])
    };
    let mut mounts = vec![
        json!({ "destination": "/proc", "type": "proc", "source": "proc",
                "options": ["nosuid", "noexec", "nodev"] }),
        json!({ "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] }),
        json!({ "destination": "/dev/pts", "type": "devpts", "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] }),
        json!({ "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"] }),
        json!({ "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_options }),
    ];
    match &spec.shm {
        Some(path) => mounts.push(json!({
            "destination": "/dev/shm", "type": "bind", "source": path,
            "options": ["rbind", "rprivate", "rw"],
        })),
        None => mounts.push(json!({
            "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        })),
    }
    for mount in &spec.mounts {
        let mode = if mount.read_only { "ro" } else { "rw" };
        mounts.push(json!({
            "destination": mount.container_path,
            "type": "bind",
            "source": mount.host_path,
            "options": ["rbind", "rprivate", mode],
        }));
    }

    let ns = |kind: &str, path: &Option<PathBuf>| match path {
        Some(path) => json!({ "type": kind, "path": path }),
        None => json!({ "type": kind }),
    };
    let namespaces = vec![
        ns("pid", &spec.namespaces.pid),
        ns("network", &spec.namespaces.network),
        ns("ipc", &spec.namespaces.ipc),
        ns("uts", &spec.namespaces.uts),
        json!({ "type": "mount" }),
    ];

    let mut resources = json!({});
    let r = &spec.resources;
    if let Some(limit) = r.memory_limit {
        resources["memory"] = json!({ "limit": limit });
    }
    let mut cpu = json!({});
    if let Some(shares) = r.cpu_shares {
        cpu["shares"] = json!(shares);
    }
    if let Some(quota) = r.cpu_quota {
        cpu["quota"] = json!(quota);
    }
    if let Some(period) = r.cpu_period {
        cpu["period"] = json!(period);
    }
    if cpu.as_object().is_some_and(|o| !o.is_empty()) {
        resources["cpu"] = cpu;
    }
    if let Some(pids) = r.pids_limit {
        resources["pids"] = json!({ "limit": pids });
    }

    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": cgroup_path,
        "resources": resources,
    });
    if !privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
        if spec.security.seccomp == SeccompProfile::RuntimeDefault {
            linux["seccomp"] = seccomp::runtime_default(&caps);
        }
    }

    let mut document = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": { "path": rootfs.root, "readonly": spec.security.read_only_root_filesystem },
        "mounts": mounts,
        "linux": linux,
    });
    if spec.namespaces.uts.is_none() {
        if let Some(hostname) = &spec.hostname {
            document["hostname"] = json!(hostname);
        }
    }
    serde_json::from_value::<oci_spec::runtime::Spec>(document.clone())
        .map_err(|err| SpecError::Invalid(err.to_string()))?;
    Ok(document)
}

/// The `process` of an exec: the container's process with other arguments (and a terminal when
/// asked), as containerd builds exec processes.
pub fn exec_process(container_spec: &Value, args: &[String], tty: bool) -> Value {
    let mut process = container_spec["process"].clone();
    process["args"] = json!(args);
    process["terminal"] = json!(tty);
    if tty {
        process["consoleSize"] = json!({ "height": 24, "width": 80 });
    } else if let Some(object) = process.as_object_mut() {
        object.remove("consoleSize");
    }
    process
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into(), "cmd".into()],
            env: vec!["PATH=/bin".into(), "A=image".into(), "B=image".into()],
            working_dir: Some("/srv".into()),
            user: None,
        }
    }

    #[test]
    fn command_replaces_entrypoint_and_clears_cmd_args_replace_cmd() {
        let mut spec = ContainerSpec::default();
        assert_eq!(
            resolve_args(&image(), &spec).expect("args"),
            vec!["/entry", "default", "cmd"]
        );
        spec.args = vec!["x".into()];
        assert_eq!(
            resolve_args(&image(), &spec).expect("args"),
            vec!["/entry", "x"]
        );
        spec.command = vec!["/bin/sh".into()];
        assert_eq!(
            resolve_args(&image(), &spec).expect("args"),
            vec!["/bin/sh", "x"]
        );
        spec.args.clear();
        assert_eq!(
            resolve_args(&image(), &spec).expect("args"),
            vec!["/bin/sh"]
        );
        assert!(matches!(
            resolve_args(&ImageConfig::default(), &ContainerSpec::default()),
            Err(SpecError::NoCommand)
        ));
    }

    #[test]
    fn container_env_overrides_image_env_in_place() {
        let spec = ContainerSpec {
            env: vec![("B".into(), "container".into()), ("C".into(), "c".into())],
            ..ContainerSpec::default()
        };
        let env = resolve_env(&image(), &spec, "/root");
        assert_eq!(
            env,
            vec!["PATH=/bin", "A=image", "B=container", "C=c", "HOME=/root"]
        );
    }

    fn rootfs_with_users() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("etc")).expect("etc");
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n",
        )
        .expect("passwd");
        fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nalice:x:1000:\nbob:x:1001:\nstaff:x:50:alice,bob\nwheel:x:10:alice\n",
        )
        .expect("group");
        dir
    }

    #[test]
    fn users_resolve_from_the_image_as_containerd_does() {
        let root = rootfs_with_users();
        let roots = vec![root.path().to_path_buf()];
        let mut image = image();
        let security = SecurityContext::default();

        image.user = Some("alice".into());
        let user = resolve_user(&image, &security, &roots).expect("alice");
        assert_eq!((user.uid, user.gid), (1000, 1000));
        assert_eq!(user.additional_gids, vec![1000, 50, 10]);
        assert_eq!(user.home, "/home/alice");

        image.user = Some("bob:staff".into());
        let user = resolve_user(&image, &security, &roots).expect("bob:staff");
        assert_eq!((user.uid, user.gid), (1001, 50));

        image.user = Some("4242".into());
        let user = resolve_user(&image, &security, &roots).expect("numeric");
        assert_eq!((user.uid, user.gid, user.home.as_str()), (4242, 0, "/"));

        image.user = Some("nobody-here".into());
        assert!(matches!(
            resolve_user(&image, &security, &roots),
            Err(SpecError::UnknownUser(_))
        ));

        // runAsUser wins over the image's user; the group comes from /etc/passwd.
        let security = SecurityContext {
            run_as_user: Some(1001),
            supplemental_groups: vec![7],
            ..SecurityContext::default()
        };
        let user = resolve_user(&image, &security, &roots).expect("runAsUser");
        assert_eq!((user.uid, user.gid), (1001, 1001));
        assert_eq!(user.additional_gids, vec![1001, 50, 7]);
    }

    #[test]
    fn capabilities_start_from_containerds_default_set() {
        let mut security = SecurityContext::default();
        assert_eq!(resolve_capabilities(&security).expect("caps").len(), 14);
        security.capabilities_add = vec!["NET_ADMIN".into()];
        security.capabilities_drop = vec!["CAP_CHOWN".into(), "kill".into()];
        let caps = resolve_capabilities(&security).expect("caps");
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_CHOWN".to_string()));
        assert!(!caps.contains(&"CAP_KILL".to_string()));
        security.capabilities_drop = vec!["ALL".into()];
        assert_eq!(
            resolve_capabilities(&security).expect("caps"),
            vec!["CAP_NET_ADMIN".to_string()]
        );
        security.capabilities_add = vec!["NOT_A_CAP".into()];
        assert!(resolve_capabilities(&security).is_err());
    }

    #[test]
    fn a_full_spec_parses_and_carries_the_security_settings() {
        let root = rootfs_with_users();
        let spec = ContainerSpec {
            command: vec!["/bin/true".into()],
            security: SecurityContext {
                read_only_root_filesystem: true,
                allow_privilege_escalation: Some(false),
                seccomp: SeccompProfile::RuntimeDefault,
                ..SecurityContext::default()
            },
            namespaces: PodNamespaces {
                network: Some("/proc/1/ns/net".into()),
                ..PodNamespaces::default()
            },
            hostname: Some("web-0".into()),
            resources: ContainerResources {
                memory_limit: Some(64 << 20),
                ..ContainerResources::default()
            },
            ..ContainerSpec::default()
        };
        let layout = RootfsLayout {
            root: root.path().to_path_buf(),
            lookup: vec![root.path().to_path_buf()],
        };
        let built = build(&image(), &spec, &layout, "/cluster/podx/c1").expect("spec");
        assert_eq!(built["root"]["readonly"], true);
        assert_eq!(built["process"]["noNewPrivileges"], true);
        assert_eq!(built["hostname"], "web-0");
        assert_eq!(built["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(built["linux"]["cgroupsPath"], "/cluster/podx/c1");
        assert!(built["linux"]["seccomp"]["syscalls"].is_array());
        let namespaces = built["linux"]["namespaces"].as_array().expect("namespaces");
        assert!(namespaces
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/proc/1/ns/net"));
        assert!(built["linux"]["maskedPaths"]
            .as_array()
            .expect("masked")
            .contains(&json!("/proc/kcore")));

        let exec = exec_process(&built, &["/bin/sh".into()], true);
        assert_eq!(exec["args"], json!(["/bin/sh"]));
        assert_eq!(exec["terminal"], true);
        assert_eq!(exec["user"], built["process"]["user"]);
    }
}
