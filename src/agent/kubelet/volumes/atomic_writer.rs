//! The kubelet's atomic writer: a volume directory whose contents change all at once.
//!
//! Layout of a target directory (as `pkg/volume/util/atomic_writer.go`):
//! ```text
//! ..2026_11_23_13_45_01.123456789/   the current payload (real files, modes set)
//! ..data -> ..2026_11_23_13_45_01.123456789
//! key -> ..data/key                  one symlink per top-level path of the payload
//! ```
//! A new payload goes into a fresh timestamped directory, then `..data_tmp` pointing at it is
//! renamed over `..data` (one atomic `rename`), then the symlinks of paths that left the payload
//! and the old timestamped directory are removed. A reader that follows `key` sees either the old
//! or the new payload, never a mix.
//!
//! Owns only the files inside the target directory; must not mount or read the API.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

const DATA_DIR: &str = "..data";
const DATA_DIR_TMP: &str = "..data_tmp";

/// One file of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProjection {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Relative path → file.
pub type Payload = BTreeMap<String, FileProjection>;

/// Why a payload could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AtomicWriteError {
    #[error("invalid path {path:?} in payload: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> AtomicWriteError + 'a {
    move |source| AtomicWriteError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// `validatePath`: relative, no `..` component, not starting with `..`, not too long.
pub fn validate_path(path: &str) -> Result<(), AtomicWriteError> {
    let invalid = |reason| AtomicWriteError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    if path.is_empty() {
        return Err(invalid("empty"));
    }
    if path.len() > 4096 {
        return Err(invalid("longer than 4096 characters"));
    }
    if Path::new(path).is_absolute() {
        return Err(invalid("absolute"));
    }
    if path.starts_with("..") {
        return Err(invalid("starts with '..'"));
    }
    for component in Path::new(path).components() {
        match component {
            Component::Normal(c) if c.len() > 255 => return Err(invalid("element too long")),
            Component::ParentDir => return Err(invalid("contains '..'")),
            _ => {}
        }
    }
    Ok(())
}

/// Writes `payload` into `dir` atomically. Returns false when the payload was already there
/// (nothing written).
pub fn write(dir: &Path, payload: &Payload) -> Result<bool, AtomicWriteError> {
    for path in payload.keys() {
        validate_path(path)?;
    }
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let data_link = dir.join(DATA_DIR);
    let old_ts = fs::read_link(&data_link).ok();
    let old_ts_dir = old_ts.as_ref().map(|t| dir.join(t));
    if let Some(old) = &old_ts_dir {
        if payload_matches(old, payload) && user_links_match(dir, payload) {
            return Ok(false);
        }
    }
    let old_paths = old_ts_dir
        .as_ref()
        .map(|d| top_level_paths_in(d))
        .unwrap_or_default();

    let ts_name = new_ts_dir_name(dir)?;
    let ts_dir = dir.join(&ts_name);
    fs::create_dir(&ts_dir).map_err(io_err("creating", &ts_dir))?;
    fs::set_permissions(&ts_dir, fs::Permissions::from_mode(0o755))
        .map_err(io_err("setting mode of", &ts_dir))?;
    if let Err(e) = write_payload(&ts_dir, payload) {
        let _ = fs::remove_dir_all(&ts_dir);
        return Err(e);
    }

    // Swap ..data to the new directory.
    let tmp_link = dir.join(DATA_DIR_TMP);
    match fs::remove_file(&tmp_link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("removing", &tmp_link)(e)),
    }
    symlink(&ts_name, &tmp_link).map_err(io_err("creating symlink", &tmp_link))?;
    fs::rename(&tmp_link, &data_link).map_err(io_err("renaming onto", &data_link))?;

    // User-visible symlinks for the new top-level paths.
    let new_paths = top_level_paths(payload);
    for top in &new_paths {
        let link = dir.join(top);
        let target = Path::new(DATA_DIR).join(top);
        match fs::read_link(&link) {
            Ok(existing) if existing == target => continue,
            Ok(_) => fs::remove_file(&link).map_err(io_err("removing", &link))?,
            Err(_) => {}
        }
        symlink(&target, &link).map_err(io_err("creating symlink", &link))?;
    }
    // Remove the links of paths that left the payload, then the old directory.
    for top in old_paths.difference(&new_paths) {
        let link = dir.join(top);
        if fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&link).map_err(io_err("removing", &link))?;
        }
    }
    if let Some(old) = old_ts_dir {
        if old != ts_dir {
            fs::remove_dir_all(&old).map_err(io_err("removing", &old))?;
        }
    }
    Ok(true)
}

/// The directory `..data` currently points at.
pub fn current_data_dir(dir: &Path) -> Option<PathBuf> {
    fs::read_link(dir.join(DATA_DIR)).ok().map(|t| dir.join(t))
}

fn new_ts_dir_name(dir: &Path) -> Result<String, AtomicWriteError> {
    let now = jiff::Timestamp::now();
    let base = now.strftime("..%Y_%m_%d_%H_%M_%S.").to_string();
    for attempt in 0..1000u32 {
        let name = format!("{base}{:09}", now.subsec_nanosecond() as u32 + attempt);
        if !dir.join(&name).exists() {
            return Ok(name);
        }
    }
    Err(AtomicWriteError::InvalidPath {
        path: dir.display().to_string(),
        reason: "no free timestamped directory name",
    })
}

fn write_payload(ts_dir: &Path, payload: &Payload) -> Result<(), AtomicWriteError> {
    for (path, file) in payload {
        let full = ts_dir.join(path);
        if let Some(parent) = full.parent() {
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        fs::write(&full, &file.data).map_err(io_err("writing", &full))?;
        fs::set_permissions(&full, fs::Permissions::from_mode(file.mode & 0o7777))
            .map_err(io_err("setting mode of", &full))?;
    }
    Ok(())
}

fn top_level_paths(payload: &Payload) -> BTreeSet<String> {
    payload
        .keys()
        .filter_map(|p| {
            Path::new(p).components().find_map(|c| match c {
                Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                _ => None,
            })
        })
        .collect()
}

fn top_level_paths_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// True when `dir` holds exactly the payload's files with the same contents and modes.
fn payload_matches(dir: &Path, payload: &Payload) -> bool {
    let mut found = BTreeMap::new();
    if collect_files(dir, dir, &mut found).is_err() {
        return false;
    }
    if found.len() != payload.len() {
        return false;
    }
    payload.iter().all(|(path, file)| {
        found.get(path).is_some_and(|full: &PathBuf| {
            fs::metadata(full).is_ok_and(|m| m.permissions().mode() & 0o7777 == file.mode & 0o7777)
                && fs::read(full).is_ok_and(|d| d == file.data)
        })
    })
}

fn user_links_match(dir: &Path, payload: &Payload) -> bool {
    top_level_paths(payload)
        .iter()
        .all(|top| fs::read_link(dir.join(top)).is_ok_and(|t| t == Path::new(DATA_DIR).join(top)))
}

fn collect_files(root: &Path, dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect_files(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.insert(rel.to_string_lossy().into_owned(), path.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(p, d, m)| {
                (
                    p.to_string(),
                    FileProjection {
                        data: d.as_bytes().to_vec(),
                        mode: *m,
                    },
                )
            })
            .collect()
    }

    fn ts_dirs(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..2"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn paths_are_validated() {
        for bad in ["", "/abs", "..x", "a/../b", "../a"] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
        for ok in ["a", "a/b", "a..b", ".hidden"] {
            assert!(validate_path(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn writes_through_data_symlink_and_swaps_atomically() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("vol");
        let first = payload(&[("a", "1", 0o644), ("sub/b", "2", 0o400)]);
        assert!(write(&dir, &first).expect("write"));
        assert_eq!(
            fs::read_link(dir.join("a")).expect("link"),
            Path::new("..data/a")
        );
        assert_eq!(
            fs::read_link(dir.join("sub")).expect("link"),
            Path::new("..data/sub")
        );
        assert_eq!(fs::read_to_string(dir.join("sub/b")).expect("read"), "2");
        let mode = fs::metadata(dir.join("sub/b"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        let old = ts_dirs(&dir);
        assert_eq!(old.len(), 1);
        assert_eq!(
            fs::read_link(dir.join("..data")).expect("data link"),
            Path::new(&old[0])
        );

        // Same payload: nothing written.
        assert!(!write(&dir, &first).expect("rewrite"));
        assert_eq!(ts_dirs(&dir), old);

        // New payload: new dir, old dir and stale links gone.
        let second = payload(&[("a", "changed", 0o644), ("c", "3", 0o644)]);
        assert!(write(&dir, &second).expect("write 2"));
        let new = ts_dirs(&dir);
        assert_eq!(new.len(), 1);
        assert_ne!(new, old);
        assert_eq!(fs::read_to_string(dir.join("a")).expect("read"), "changed");
        assert_eq!(fs::read_to_string(dir.join("c")).expect("read"), "3");
        assert!(fs::symlink_metadata(dir.join("sub")).is_err());
        assert!(!dir.join("..data_tmp").exists());

        // A mode change alone is a change.
        let third = payload(&[("a", "changed", 0o600), ("c", "3", 0o644)]);
        assert!(write(&dir, &third).expect("write 3"));
    }

    #[test]
    fn an_invalid_payload_path_writes_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("vol");
        assert!(write(&dir, &payload(&[("../escape", "x", 0o644)])).is_err());
        assert!(!tmp.path().join("escape").exists());
    }
}
