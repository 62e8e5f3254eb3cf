//! emptyDir: a directory of the pod (`medium: ""`) or a tmpfs mounted on it (`medium: Memory`,
//! `size=` the sizeLimit).
//!
//! Owns the directory and its tmpfs mount; must not touch other volumes.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::EmptyDirVolumeSource;

use super::{io_err, VolumeError};
use crate::quantity::parse_milli;

pub const PLUGIN: &str = "kubernetes.io~empty-dir";

/// Creates the directory (mode 0777, as kubelet does) and, for `medium: Memory`, mounts a tmpfs
/// on it unless one is already there.
pub fn set_up(dir: &Path, source: &EmptyDirVolumeSource) -> Result<(), VolumeError> {
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    match source.medium.as_deref().unwrap_or_default() {
        "" => {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o777))
                .map_err(io_err("setting mode of", dir))?;
            Ok(())
        }
        "Memory" => {
            if is_mount_point(dir)? {
                return Ok(());
            }
            let options = tmpfs_options(source)?;
            let data = std::ffi::CString::new(options).map_err(|_| VolumeError::SetUp {
                volume: dir.display().to_string(),
                message: "invalid tmpfs options".into(),
            })?;
            rustix::mount::mount(
                "tmpfs",
                dir,
                "tmpfs",
                rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
                data.as_c_str(),
            )
            .map_err(|e| io_err("mounting tmpfs on", dir)(e.into()))
        }
        other => Err(VolumeError::SetUp {
            volume: dir.display().to_string(),
            message: format!("unsupported emptyDir medium {other:?}"),
        }),
    }
}

/// `mode=0777` plus `size=<bytes>` when a sizeLimit is set.
pub fn tmpfs_options(source: &EmptyDirVolumeSource) -> Result<String, VolumeError> {
    let mut options = String::from("mode=0777");
    if let Some(limit) = &source.size_limit {
        let milli = parse_milli(&limit.0).ok_or_else(|| VolumeError::SetUp {
            volume: String::new(),
            message: format!("invalid sizeLimit {:?}", limit.0),
        })?;
        let bytes = milli.div_euclid(1000) + i64::from(milli.rem_euclid(1000) != 0);
        if bytes > 0 {
            options.push_str(&format!(",size={bytes}"));
        }
    }
    Ok(options)
}

/// Mount points from `/proc/self/mountinfo` (octal escapes decoded).
pub fn mount_points() -> Result<Vec<PathBuf>, VolumeError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(io_err("reading", path))?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .collect())
}

fn unescape_mount_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = raw.get(i + 1..i + 4).unwrap_or_default();
            if oct.len() == 3 {
                if let Ok(v) = u8::from_str_radix(oct, 8) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_mount_point(dir: &Path) -> Result<bool, VolumeError> {
    let real = fs::canonicalize(dir).map_err(io_err("resolving", dir))?;
    Ok(mount_points()?.contains(&real))
}

/// Unmounts every mount at or below `dir`, deepest first. Missing `dir` is fine.
pub fn unmount_all_under(dir: &Path) -> Result<(), VolumeError> {
    let real = match fs::canonicalize(dir) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("resolving", dir)(e)),
    };
    let mut mounts: Vec<PathBuf> = mount_points()?
        .into_iter()
        .filter(|m| m.starts_with(&real))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts.dedup();
    for mount in mounts {
        match rustix::mount::unmount(&mount, rustix::mount::UnmountFlags::empty()) {
            Ok(()) => {}
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(io_err("unmounting", &mount)(e.into())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn tmpfs_size_comes_from_the_size_limit() {
        let source = |limit: Option<&str>| EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: limit.map(|l| Quantity(l.into())),
        };
        assert_eq!(
            tmpfs_options(&source(None)).ok().as_deref(),
            Some("mode=0777")
        );
        assert_eq!(
            tmpfs_options(&source(Some("64Mi"))).ok().as_deref(),
            Some("mode=0777,size=67108864")
        );
        assert!(tmpfs_options(&source(Some("lots"))).is_err());
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path("/x\\"), "/x\\");
    }

    #[test]
    fn a_disk_empty_dir_is_a_world_writable_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("e");
        set_up(&dir, &EmptyDirVolumeSource::default()).expect("set up");
        let mode = fs::metadata(&dir).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o777);
    }
}
