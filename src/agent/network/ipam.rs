//! Persisted IPv4 address management for the pods of one node (the semantics of the CNI
//! `host-local` plugin, written afresh).
//!
//! Owns the directory it is opened on (`<state_dir>/ipam`): one file per allocated address, named
//! after the address (`10.42.0.7`) and containing the pod uid. A file is made complete in a
//! temporary file first and then hard-linked to its address name: `link(2)` fails when the name
//! exists, so two pods can never hold one address, and a crash leaves either no record or a
//! complete one (never an empty file that would leak the address). `last_reserved_ip` remembers
//! where the previous search ended so that a released address is not reused at once.
//!
//! Must not touch anything outside its directory; it knows nothing of links or namespaces.
//! One process uses a directory at a time (the agent); within it, callers serialise calls.

use std::fs;
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Where the previous search for a free address stopped.
const LAST_RESERVED: &str = "last_reserved_ip";
/// Prefix of a record being written (never a valid address, so never mistaken for one).
const TEMP_PREFIX: &str = ".tmp-";

/// Why an address could not be allocated, looked up or released.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every usable address of the range is held by a pod.
    #[error("no free IP address left in {range} (all {usable} usable addresses are allocated)")]
    Exhausted { range: Ipv4Cidr, usable: u32 },
    /// A file operation in the state directory failed.
    #[error("IPAM state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An IPv4 network in CIDR notation, normalised to its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The network address (host bits zero).
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// The broadcast address (all host bits one).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// The gateway: the first host address (`10.42.0.1` for `10.42.0.0/24`).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// True when `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// The addresses pods may get: every host address but the gateway, the network and the
    /// broadcast address.
    pub fn pod_addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.gateway()) + 1;
        let last = u32::from(self.broadcast()) - 1;
        (first..=last).map(Ipv4Addr::from)
    }

    fn usable(&self) -> u32 {
        (u32::from(self.broadcast()) - 1).saturating_sub(u32::from(self.gateway()))
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    /// Parses `a.b.c.d/n`; host bits must be zero, and the network must leave room for a
    /// gateway and at least one pod (prefix at most 30).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| "expected an IPv4 CIDR such as 10.42.0.0/24".to_string())?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address (only IPv4 is supported)"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("{prefix:?} is not a prefix length"))?;
        if prefix > 30 {
            return Err(format!(
                "prefix /{prefix} leaves no room for a gateway and a pod (at most /30)"
            ));
        }
        let cidr = Ipv4Cidr {
            network: addr,
            prefix,
        };
        if u32::from(addr) & !cidr.mask() != 0 {
            return Err(format!("{addr} has host bits set for a /{prefix}"));
        }
        Ok(cidr)
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The address allocator of one node, persisted in a directory.
#[derive(Debug)]
pub struct Ipam {
    dir: PathBuf,
}

impl Ipam {
    /// Opens (creating it when missing) the state directory and removes the temporary files a
    /// crash may have left (so it must not be called while another allocator is allocating in
    /// the same directory; allocators opened before may run side by side).
    pub fn open(dir: PathBuf) -> Result<Ipam, IpamError> {
        fs::create_dir_all(&dir).map_err(|source| IpamError::Io {
            path: dir.clone(),
            source,
        })?;
        let ipam = Ipam { dir };
        for entry in ipam.read_dir()? {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(TEMP_PREFIX) {
                let path = entry.path();
                remove_if_present(&path)?;
            }
        }
        Ok(ipam)
    }

    /// The directory this allocator owns.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every allocation on disk: (address, pod uid), sorted by address.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>, IpamError> {
        let mut out = Vec::new();
        for entry in self.read_dir()? {
            let name = entry.file_name();
            let Ok(ip) = name.to_string_lossy().parse::<Ipv4Addr>() else {
                continue;
            };
            let path = entry.path();
            match fs::read_to_string(&path) {
                Ok(uid) => out.push((ip, uid.trim().to_string())),
                // Released between listing and reading.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => return Err(IpamError::Io { path, source }),
            }
        }
        out.sort();
        Ok(out)
    }

    /// The address held by `uid` inside `range`, if any.
    pub fn lookup(&self, range: &Ipv4Cidr, uid: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        Ok(self
            .allocations()?
            .into_iter()
            .find(|(ip, owner)| owner == uid && range.contains(*ip) && is_pod_address(range, *ip))
            .map(|(ip, _)| ip))
    }

    /// The address of `uid` in `range`: the one it already holds, else a free one, searched
    /// from just after the last reserved address and wrapping around.
    pub fn allocate(&self, range: &Ipv4Cidr, uid: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.lookup(range, uid)? {
            return Ok(ip);
        }
        let start = self
            .last_reserved()
            .filter(|ip| is_pod_address(range, *ip))
            .map(|ip| u32::from(ip) + 1)
            .unwrap_or(0);
        let mut candidates: Vec<Ipv4Addr> = range.pod_addresses().collect();
        let split = candidates
            .iter()
            .position(|ip| u32::from(*ip) >= start)
            .unwrap_or(0);
        candidates.rotate_left(split);
        for ip in candidates {
            if self.reserve(ip, uid)? {
                self.remember_last_reserved(ip);
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted {
            range: *range,
            usable: range.usable(),
        })
    }

    /// Releases every address held by `uid`. Releasing nothing is not an error.
    pub fn release(&self, uid: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        let mut released = Vec::new();
        for (ip, owner) in self.allocations()? {
            if owner == uid {
                remove_if_present(&self.dir.join(ip.to_string()))?;
                released.push(ip);
            }
        }
        Ok(released)
    }

    /// Tries to record `ip` for `uid`; false when another pod holds it.
    fn reserve(&self, ip: Ipv4Addr, uid: &str) -> Result<bool, IpamError> {
        let target = self.dir.join(ip.to_string());
        if target.exists() {
            return Ok(false);
        }
        let temp = self.dir.join(format!(
            "{TEMP_PREFIX}{ip}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IpamError::Io { path, source }
        };
        {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
                .map_err(io(&temp))?;
            file.write_all(uid.as_bytes()).map_err(io(&temp))?;
            file.sync_all().map_err(io(&temp))?;
        }
        let linked = match fs::hard_link(&temp, &target) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(source) => Err(IpamError::Io {
                path: target.clone(),
                source,
            }),
        };
        remove_if_present(&temp)?;
        if linked? {
            // Make the new name durable before anyone relies on it.
            if let Ok(dir) = fs::File::open(&self.dir) {
                let _ = dir.sync_all();
            }
            return Ok(true);
        }
        Ok(false)
    }

    fn last_reserved(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join(LAST_RESERVED))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Best effort: losing this hint only changes where the next search starts.
    fn remember_last_reserved(&self, ip: Ipv4Addr) {
        let temp = self.dir.join(format!("{TEMP_PREFIX}{LAST_RESERVED}"));
        let written = fs::write(&temp, ip.to_string())
            .and_then(|()| fs::rename(&temp, self.dir.join(LAST_RESERVED)));
        if let Err(error) = written {
            tracing::warn!(%error, "could not remember the last reserved pod IP");
        }
    }

    fn read_dir(&self) -> Result<Vec<fs::DirEntry>, IpamError> {
        let io = |source| IpamError::Io {
            path: self.dir.clone(),
            source,
        };
        fs::read_dir(&self.dir)
            .map_err(io)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(io)
    }
}

fn is_pod_address(range: &Ipv4Cidr, ip: Ipv4Addr) -> bool {
    range.contains(ip) && ip != range.network() && ip != range.gateway() && ip != range.broadcast()
}

fn remove_if_present(path: &Path) -> Result<(), IpamError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(IpamError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().expect("valid cidr")
    }

    #[test]
    fn cidr_parsing_and_addresses() {
        let c = cidr("10.42.3.0/24");
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 42, 3, 1));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 42, 3, 255));
        assert!(c.contains(Ipv4Addr::new(10, 42, 3, 77)));
        assert!(!c.contains(Ipv4Addr::new(10, 42, 4, 1)));
        let pods: Vec<_> = c.pod_addresses().collect();
        assert_eq!(pods.len(), 253);
        assert_eq!(pods[0], Ipv4Addr::new(10, 42, 3, 2));
        assert_eq!(pods[252], Ipv4Addr::new(10, 42, 3, 254));
        assert_eq!(c.to_string(), "10.42.3.0/24");

        assert!("10.42.3.1/24".parse::<Ipv4Cidr>().is_err(), "host bits");
        assert!("10.42.3.0/31".parse::<Ipv4Cidr>().is_err(), "too small");
        assert!("10.42.3.0".parse::<Ipv4Cidr>().is_err(), "no prefix");
        assert!("fd00::/64".parse::<Ipv4Cidr>().is_err(), "IPv6");
        assert!("10.42.3.0/33".parse::<Ipv4Cidr>().is_err());
        assert_eq!(cidr("0.0.0.0/0").broadcast(), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn allocation_is_stable_per_uid_and_never_shared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::open(dir.path().join("ipam")).expect("open");
        let range = cidr("10.42.0.0/24");
        let a = ipam.allocate(&range, "uid-a").expect("a");
        let b = ipam.allocate(&range, "uid-b").expect("b");
        assert_ne!(a, b);
        assert_eq!(ipam.allocate(&range, "uid-a").expect("a again"), a);
        assert_eq!(
            a,
            Ipv4Addr::new(10, 42, 0, 2),
            "gateway .1 is never handed out"
        );
        assert_eq!(ipam.lookup(&range, "uid-b").expect("lookup"), Some(b));
        assert_eq!(ipam.lookup(&range, "uid-c").expect("lookup"), None);
    }

    #[test]
    fn allocations_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let range = cidr("10.42.0.0/24");
        let a = Ipam::open(dir.path().to_path_buf())
            .expect("open")
            .allocate(&range, "uid-a")
            .expect("a");
        let reopened = Ipam::open(dir.path().to_path_buf()).expect("reopen");
        assert_eq!(reopened.allocate(&range, "uid-a").expect("a"), a);
        let b = reopened.allocate(&range, "uid-b").expect("b");
        assert_ne!(a, b);
        assert_eq!(
            reopened.allocations().expect("list"),
            vec![(a, "uid-a".to_string()), (b, "uid-b".to_string())]
        );
    }

    #[test]
    fn exhaustion_is_a_clear_error_and_release_frees() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::open(dir.path().to_path_buf()).expect("open");
        // /29: network .0, gateway .1, broadcast .7 → pods .2 to .6.
        let range = cidr("10.42.0.0/29");
        let mut got: Vec<Ipv4Addr> = (0..5)
            .map(|i| ipam.allocate(&range, &format!("uid-{i}")).expect("alloc"))
            .collect();
        got.sort();
        assert_eq!(got, range.pod_addresses().collect::<Vec<_>>());
        let err = ipam.allocate(&range, "uid-late").expect_err("exhausted");
        assert!(
            matches!(err, IpamError::Exhausted { usable: 5, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("10.42.0.0/29"), "{err}");

        assert_eq!(
            ipam.release("uid-2").expect("release"),
            vec![Ipv4Addr::new(10, 42, 0, 4)]
        );
        assert_eq!(
            ipam.release("uid-2").expect("release twice"),
            Vec::<Ipv4Addr>::new()
        );
        assert_eq!(
            ipam.allocate(&range, "uid-late").expect("freed"),
            Ipv4Addr::new(10, 42, 0, 4)
        );
    }

    #[test]
    fn a_released_address_is_not_reused_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::open(dir.path().to_path_buf()).expect("open");
        let range = cidr("10.42.0.0/24");
        let a = ipam.allocate(&range, "uid-a").expect("a");
        ipam.release("uid-a").expect("release");
        let b = ipam.allocate(&range, "uid-b").expect("b");
        assert_ne!(a, b, "the search continues after the last reserved address");
    }

    #[test]
    fn leftover_temporary_files_are_removed_and_never_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(".tmp-10.42.0.2-dead"), "crashed").expect("write");
        fs::write(dir.path().join("garbage"), "x").expect("write");
        let ipam = Ipam::open(dir.path().to_path_buf()).expect("open");
        assert!(!dir.path().join(".tmp-10.42.0.2-dead").exists());
        assert!(ipam.allocations().expect("list").is_empty());
        let range = cidr("10.42.0.0/24");
        assert_eq!(
            ipam.allocate(&range, "uid-a").expect("a"),
            Ipv4Addr::new(10, 42, 0, 2)
        );
    }

    #[test]
    fn an_address_held_by_a_record_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        // As if another pod's record existed from before a crash.
        fs::write(dir.path().join("10.42.0.2"), "uid-old").expect("write");
        let ipam = Ipam::open(dir.path().to_path_buf()).expect("open");
        let range = cidr("10.42.0.0/24");
        assert_eq!(
            ipam.allocate(&range, "uid-new").expect("new"),
            Ipv4Addr::new(10, 42, 0, 3)
        );
    }

    #[test]
    fn two_allocators_on_one_directory_never_hand_out_an_address_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let range = cidr("10.42.0.0/24");
        // Both opened first: `open` clears leftover temporary files, which is only safe while
        // nobody allocates in the directory.
        let allocators: Vec<Ipam> = (0..2)
            .map(|_| Ipam::open(dir.path().to_path_buf()).expect("open"))
            .collect();
        let workers: Vec<_> = allocators
            .into_iter()
            .enumerate()
            .map(|(w, ipam)| {
                std::thread::spawn(move || {
                    (0..60)
                        .map(|i| {
                            let uid = format!("uid-{w}-{i}");
                            (ipam.allocate(&range, &uid).expect("alloc"), uid)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(Ipv4Addr, String)> = workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect();
        all.sort();
        let mut ips: Vec<Ipv4Addr> = all.iter().map(|(ip, _)| *ip).collect();
        ips.dedup();
        assert_eq!(ips.len(), 120, "an address was handed out twice");
        let on_disk = Ipam::open(dir.path().to_path_buf())
            .expect("open")
            .allocations()
            .expect("list");
        assert_eq!(on_disk, all, "each record names the pod that got it");
    }
}
