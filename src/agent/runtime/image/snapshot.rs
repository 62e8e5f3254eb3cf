//! Snapshots: one directory per unpacked layer, named by the layer's chain ID, stacked by
//! overlayfs as read-only lower directories.
//!
//! Layout under its root (`<data-dir>/agent/runtime/snapshots`):
//! - `<chain-id hex>/fs`: the layer applied on its own (whiteouts as overlay markers), complete;
//! - `tmp-<random>/fs`: a layer being unpacked; renamed to its chain ID once complete.
//!
//! The chain ID (OCI image spec) of layer n is `sha256(chainID(n-1) + " " + diffID(n))`, with
//! `chainID(0) = diffID(0)`: it names a layer *together with everything below it*, so two images
//! with the same first layers share those snapshots.
//!
//! # Guarantees
//! - A snapshot directory named by a chain ID is complete: it appears by one rename.
//! - A rootfs is `lowerdir=` of its snapshots, uppermost first ([`overlay_lowerdir`]).
//!
//! Owns `snapshots/`; does not decide which snapshots are in use (see [`super::gc`]).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::digest::Digest;

/// Why a snapshot operation failed.
#[derive(Debug, thiserror::Error)]
#[error("snapshot {path}: {source}")]
pub struct SnapshotError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError {
        path: path.to_path_buf(),
        source,
    }
}

/// The chain IDs of a stack of layers, bottom first.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut chain: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => Digest::of(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

/// Unpacked layers by chain ID.
#[derive(Debug, Clone)]
pub struct Snapshots {
    root: PathBuf,
}

/// A snapshot being filled; removed when dropped uncommitted.
#[derive(Debug)]
pub struct Prepared {
    dir: PathBuf,
    committed: bool,
}

impl Prepared {
    /// The directory to unpack into.
    pub fn fs(&self) -> PathBuf {
        self.dir.join("fs")
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Snapshots {
    /// Opens (creating) the snapshot root.
    pub fn open(root: &Path) -> Result<Snapshots, SnapshotError> {
        fs::create_dir_all(root).map_err(at(root))?;
        Ok(Snapshots {
            root: root.to_path_buf(),
        })
    }

    /// Removes snapshots whose unpacking was interrupted. Only when nobody unpacks (at start).
    pub fn clean_partial(&self) -> Result<(), SnapshotError> {
        for entry in fs::read_dir(&self.root).map_err(at(&self.root))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with("tmp-") {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    /// The directory of a committed snapshot's files (whether or not it exists).
    pub fn path(&self, chain_id: &Digest) -> PathBuf {
        self.root.join(chain_id.hex()).join("fs")
    }

    pub fn exists(&self, chain_id: &Digest) -> bool {
        self.path(chain_id).is_dir()
    }

    /// A fresh directory to unpack a layer into.
    pub fn prepare(&self) -> Result<Prepared, SnapshotError> {
        let dir = self.root.join(format!(
            "tmp-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        fs::create_dir(&dir).map_err(at(&dir))?;
        let prepared = Prepared {
            dir,
            committed: false,
        };
        let fs_dir = prepared.fs();
        fs::create_dir(&fs_dir).map_err(at(&fs_dir))?;
        // The root of a layer is the container's "/": 0755 as in every image.
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&fs_dir, fs::Permissions::from_mode(0o755)).map_err(at(&fs_dir))?;
        Ok(prepared)
    }

    /// Publishes a prepared snapshot under its chain ID. When another unpacker got there
    /// first, ours is discarded: both are the same content.
    pub fn commit(&self, mut prepared: Prepared, chain_id: &Digest) -> Result<(), SnapshotError> {
        let target = self.root.join(chain_id.hex());
        match fs::rename(&prepared.dir, &target) {
            Ok(()) => {
                prepared.committed = true;
                Ok(())
            }
            // rename(2) onto a non-empty directory fails with ENOTEMPTY or EEXIST.
            Err(_) if self.exists(chain_id) => Ok(()),
            Err(source) => Err(SnapshotError {
                path: target,
                source,
            }),
        }
    }

    /// Deletes a snapshot; false when there was none.
    pub fn remove(&self, chain_id: &Digest) -> Result<bool, SnapshotError> {
        let dir = self.root.join(chain_id.hex());
        // Renamed away first so that a half-deleted snapshot never looks complete.
        let doomed = self.root.join(format!(
            "tmp-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        match fs::rename(&dir, &doomed) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(SnapshotError { path: dir, source }),
        }
        fs::remove_dir_all(&doomed).map_err(at(&doomed))?;
        Ok(true)
    }

    /// Every committed snapshot.
    pub fn list(&self) -> Result<Vec<Digest>, SnapshotError> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(at(&self.root))?.flatten() {
            if let Some(name) = entry.file_name().to_str() {
                if let Ok(digest) = format!("sha256:{name}").parse() {
                    ids.push(digest);
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Disk usage of a snapshot in bytes (file sizes, not blocks; hard links counted once).
    pub fn disk_usage(&self, chain_id: &Digest) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        let mut seen = std::collections::HashSet::new();
        let mut total = 0u64;
        let mut stack = vec![self.path(chain_id)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(entry.path());
                } else if meta.nlink() <= 1 || seen.insert(meta.ino()) {
                    total += meta.len();
                }
            }
        }
        total
    }
}

/// The `lowerdir=` value for a rootfs: the snapshot directories uppermost first, separated by
/// `:` (a `:` or `,` or `\` inside a path is escaped with `\`, as overlayfs reads it).
pub fn overlay_lowerdir(lower: &[PathBuf]) -> String {
    lower
        .iter()
        .map(|path| {
            let text = path.to_string_lossy();
            let mut escaped = String::with_capacity(text.len());
            for c in text.chars() {
                if matches!(c, ':' | ',' | '\\') {
                    escaped.push('\\');
                }
                escaped.push(c);
            }
            escaped
        })
        .collect::<Vec<_>>()
        .join(":")
}

/// Mounts an overlay of `lower` (uppermost first) with a writable `upper`/`work` pair at
/// `target` (needs root). For the container side; used by the tests to check what a rootfs
/// looks like.
pub fn mount_overlay(
    target: &Path,
    lower: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> io::Result<()> {
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        overlay_lowerdir(lower),
        upper.display(),
        work.display()
    );
    let data = std::ffi::CString::new(data)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path contains a NUL byte"))?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(data.as_c_str()),
    )
    .map_err(io::Error::from)
}

/// Unmounts what [`mount_overlay`] mounted.
pub fn unmount(target: &Path) -> io::Result<()> {
    rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let c = Digest::of(b"c");
        let chain = chain_ids(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(chain[0], a);
        let ab = Digest::of(format!("{a} {b}").as_bytes());
        assert_eq!(chain[1], ab);
        assert_eq!(chain[2], Digest::of(format!("{ab} {c}").as_bytes()));
    }

    #[test]
    fn prepare_commit_and_remove() {
        let temp = tempfile::tempdir().expect("tempdir");
        let snapshots = Snapshots::open(temp.path()).expect("open");
        let id = Digest::of(b"layer");
        let prepared = snapshots.prepare().expect("prepare");
        fs::write(prepared.fs().join("file"), b"x").expect("write");
        snapshots.commit(prepared, &id).expect("commit");
        assert!(snapshots.exists(&id));
        assert_eq!(snapshots.list().expect("list"), vec![id.clone()]);
        assert_eq!(snapshots.disk_usage(&id), 1);
        // A second unpack of the same layer loses the race quietly.
        let again = snapshots.prepare().expect("prepare");
        fs::write(again.fs().join("other"), b"y").expect("write");
        snapshots.commit(again, &id).expect("commit twice");
        assert!(!snapshots.path(&id).join("other").exists());
        // Abandoned preparations leave nothing.
        drop(snapshots.prepare().expect("prepare"));
        assert_eq!(fs::read_dir(temp.path()).expect("dir").count(), 1);
        assert!(snapshots.remove(&id).expect("remove"));
        assert!(!snapshots.remove(&id).expect("remove again"));
        assert!(snapshots.list().expect("list").is_empty());
    }

    #[test]
    fn lowerdir_escapes_separators() {
        let lower = vec![PathBuf::from("/a/b"), PathBuf::from("/c:d,e")];
        assert_eq!(overlay_lowerdir(&lower), "/a/b:/c\\:d\\,e");
    }
}
