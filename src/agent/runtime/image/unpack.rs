//! Applies one layer (a tar archive, gzip- or zstd-compressed or plain) to an empty snapshot
//! directory, in the form overlayfs reads: whiteouts become 0/0 character devices, opaque
//! directories get the `trusted.overlay.opaque=y` extended attribute.
//!
//! # Guarantees
//! - Nothing is ever written outside the destination: an entry whose name is absolute or has a
//!   `..` component, whose parent inside the layer is a symlink (the "symlink, then write
//!   through it" trick), or a hard link whose target is outside the layer or missing, fails the
//!   whole layer. Symlinks themselves are created as they are (their targets are read inside the
//!   container's root) and are never followed while unpacking.
//! - The uncompressed stream's digest is computed as it is read (including the padding after
//!   the end-of-archive marker) and compared with the image config's diff ID.
//! - Permissions (including setuid/setgid/sticky), modification times and symlinks are kept;
//!   ownership, device nodes and extended attributes are applied when running as root, and
//!   extended attributes the file system refuses are skipped. `trusted.overlay.*` attributes
//!   from the archive are dropped: only the unpacker decides what overlayfs sees.
//! - Parent directories missing from the archive are created with the mode and owner the same
//!   path has in the lower layers (as containerd does), else 0755 root.
//!
//! Owns the contents of the directory it is given and nothing else.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::digest::{Digest, HashingReader};

/// Prefix of whiteout files in layer archives.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Marks its directory as opaque: lower layers' contents of it are hidden.
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The overlayfs attribute for opaque directories.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The archive tries to write outside its directory: the layer is rejected.
    #[error("layer rejected: entry {path:?} {reason}")]
    Escape { path: String, reason: &'static str },
    #[error("layer archive is corrupt: {0}")]
    Corrupt(#[source] io::Error),
    #[error("unpacking {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer content does not match its diff ID: expected {expected}, got {actual}")]
    DiffId { expected: Digest, actual: Digest },
}

/// How to apply a layer.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// The lower layers' directories, uppermost first (for the attributes of missing parents).
    pub parents: Vec<PathBuf>,
    /// Apply ownership, device nodes and `trusted.*` attributes (needs root).
    pub privileged: bool,
    /// The diff ID the uncompressed archive must have.
    pub expected_diff_id: Option<Digest>,
}

/// What was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// Digest of the uncompressed archive.
    pub diff_id: Digest,
    /// Length of the uncompressed archive.
    pub size: u64,
    pub entries: u64,
}

/// Compression of a layer, found from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Sniffs the magic number.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A reader of the uncompressed stream, whatever the compression.
pub fn decompress<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut buffered = BufReader::with_capacity(256 * 1024, reader);
    let head = buffered.fill_buf()?;
    Ok(match Compression::detect(head) {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
        Compression::None => Box::new(buffered),
    })
}

/// Applies the layer read from `layer` into `dest` (an existing, empty directory).
pub fn unpack_layer<R: Read>(
    layer: R,
    dest: &Path,
    options: &UnpackOptions,
) -> Result<UnpackStats, UnpackError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UnpackError::Io { path, source }
    };
    let plain = decompress(layer).map_err(UnpackError::Corrupt)?;
    let hashing = HashingReader::new(plain);
    let mut archive = tar::Archive::new(hashing);
    let mut entries_seen = 0u64;
    // Directory times are set last: creating children changes them.
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    let applier = Applier { dest, options };
    for entry in archive.entries().map_err(UnpackError::Corrupt)? {
        let mut entry = entry.map_err(UnpackError::Corrupt)?;
        entries_seen += 1;
        if let Some(dir) = applier.apply(&mut entry)? {
            dir_times.push(dir);
        }
    }
    for (path, mtime) in dir_times.iter().rev() {
        set_mtime(path, *mtime).map_err(io_err(path))?;
    }
    let (diff_id, size) = archive
        .into_inner()
        .finish()
        .map_err(UnpackError::Corrupt)?;
    if let Some(expected) = &options.expected_diff_id {
        if *expected != diff_id {
            return Err(UnpackError::DiffId {
                expected: expected.clone(),
                actual: diff_id,
            });
        }
    }
    Ok(UnpackStats {
        diff_id,
        size,
        entries: entries_seen,
    })
}

struct Applier<'a> {
    dest: &'a Path,
    options: &'a UnpackOptions,
}

impl Applier<'_> {
    /// Applies one entry; returns a directory whose mtime must be set at the end.
    fn apply<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<Option<(PathBuf, u64)>, UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(None);
        }
        let components = clean(&raw, &shown)?;
        let Some((name, parents)) = components.split_last() else {
            // The archive's root directory itself ("./"): nothing to create.
            return Ok(None);
        };
        let name_bytes = name.as_bytes();

        // Whiteouts.
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            let dir = self.ensure_dirs(parents, &shown)?;
            self.set_opaque(&dir)?;
            return Ok(None);
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                // Other aufs metadata (.wh..wh.plnk, .wh..wh.aufs): not content.
                return Ok(None);
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(escape(&shown, "is a whiteout of nothing"));
            }
            let dir = self.ensure_dirs(parents, &shown)?;
            let target = dir.join(OsStr::from_bytes(hidden));
            remove_existing(&target)?;
            self.make_whiteout(&target)?;
            return Ok(None);
        }

        let dir = self.ensure_dirs(parents, &shown)?;
        let path = dir.join(name);
        let header = entry.header().clone();
        let mode = header.mode().map_err(UnpackError::Corrupt)? & 0o7777;
        let mtime = header.mtime().unwrap_or(0);
        let io_err = |source| UnpackError::Io {
            path: path.clone(),
            source,
        };

        // What is there already (an earlier entry of this archive) is replaced, except that a
        // directory stays a directory when the entry is one.
        let existing = fs::symlink_metadata(&path).ok();
        let keep_dir = kind.is_dir() && existing.as_ref().is_some_and(|m| m.is_dir());
        if existing.is_some() && !keep_dir {
            remove_existing(&path)?;
        }

        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc_o_nofollow())
                    .open(&path)
                    .map_err(io_err)?;
                io::copy(entry, &mut file).map_err(|err| {
                    if err.kind() == io::ErrorKind::UnexpectedEof
                        || err.kind() == io::ErrorKind::InvalidData
                        || err.kind() == io::ErrorKind::Other
                    {
                        UnpackError::Corrupt(err)
                    } else {
                        io_err(err)
                    }
                })?;
                file.flush().map_err(io_err)?;
            }
            tar::EntryType::Directory => {
                if !keep_dir {
                    fs::create_dir(&path).map_err(io_err)?;
                }
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| escape(&shown, "is a symlink without a target"))?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path).map_err(io_err)?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| escape(&shown, "is a hard link without a target"))?;
                let target_shown = String::from_utf8_lossy(&target).into_owned();
                let target_components = clean(&target, &shown)?;
                let source = self.existing_path(&target_components).ok_or_else(|| {
                    escape(&shown, "is a hard link to a path that is not in this layer")
                })?;
                let meta = fs::symlink_metadata(&source).map_err(io_err)?;
                if meta.is_dir() {
                    return Err(escape(
                        &target_shown,
                        "is a directory: hard links to directories are not allowed",
                    ));
                }
                // link(2) does not follow a symlink source: the new name is the same symlink.
                fs::hard_link(&source, &path).map_err(io_err)?;
                // A hard link shares the target's inode: its attributes are the target's.
                return Ok(None);
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let file_type = match kind {
                    tar::EntryType::Char => rustix::fs::FileType::CharacterDevice,
                    tar::EntryType::Block => rustix::fs::FileType::BlockDevice,
                    _ => rustix::fs::FileType::Fifo,
                };
                if file_type != rustix::fs::FileType::Fifo && !self.options.privileged {
                    tracing::debug!(entry = %shown, "skipping a device node: not running as root");
                    return Ok(None);
                }
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    file_type,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(major, minor),
                )
                .map_err(|e| io_err(e.into()))?;
            }
            other => {
                tracing::debug!(entry = %shown, kind = ?other, "skipping an entry of an unsupported type");
                return Ok(None);
            }
        }

        self.apply_xattrs(entry, &path, &shown)?;
        if self.options.privileged {
            let uid = header.uid().map_err(UnpackError::Corrupt)?;
            let gid = header.gid().map_err(UnpackError::Corrupt)?;
            let uid = u32::try_from(uid).map_err(|_| escape(&shown, "has an out-of-range uid"))?;
            let gid = u32::try_from(gid).map_err(|_| escape(&shown, "has an out-of-range gid"))?;
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(io_err)?;
        }
        if !kind.is_symlink() {
            // After chown, which clears setuid/setgid.
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err)?;
        }
        if kind.is_dir() {
            return Ok(Some((path, mtime)));
        }
        set_mtime(&path, mtime).map_err(io_err)?;
        Ok(None)
    }

    /// Makes sure every directory of `components` exists inside the destination as a real
    /// directory (never a symlink), creating missing ones; returns the innermost.
    fn ensure_dirs(&self, components: &[OsString], shown: &str) -> Result<PathBuf, UnpackError> {
        let mut path = self.dest.to_path_buf();
        for (i, component) in components.iter().enumerate() {
            path.push(component);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(escape(shown, "would be written through a symlink"));
                }
                Ok(_) => {
                    return Err(escape(shown, "has a parent that is not a directory"));
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    let io_err = |source| UnpackError::Io {
                        path: path.clone(),
                        source,
                    };
                    fs::create_dir(&path).map_err(io_err)?;
                    let lower = self.lower_dir_attrs(&components[..=i]);
                    let (mode, uid, gid) = lower
                        .map(|m| (m.mode() & 0o7777, m.uid(), m.gid()))
                        .unwrap_or((0o755, 0, 0));
                    if self.options.privileged {
                        std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(io_err)?;
                    }
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_err)?;
                }
                Err(source) => {
                    return Err(UnpackError::Io { path, source });
                }
            }
        }
        Ok(path)
    }

    /// The attributes of the directory at `components` in the uppermost lower layer that has
    /// it, looking only through real directories.
    fn lower_dir_attrs(&self, components: &[OsString]) -> Option<fs::Metadata> {
        self.options.parents.iter().find_map(|root| {
            let mut path = root.clone();
            for component in components {
                path.push(component);
                let meta = fs::symlink_metadata(&path).ok()?;
                if !meta.is_dir() {
                    return None;
                }
            }
            fs::symlink_metadata(&path).ok()
        })
    }

    /// The path of an existing entry of this layer, reached through real directories only.
    fn existing_path(&self, components: &[OsString]) -> Option<PathBuf> {
        let (last, dirs) = components.split_last()?;
        let mut path = self.dest.to_path_buf();
        for component in dirs {
            path.push(component);
            if !fs::symlink_metadata(&path).ok()?.is_dir() {
                return None;
            }
        }
        path.push(last);
        fs::symlink_metadata(&path).ok()?;
        Some(path)
    }

    fn make_whiteout(&self, path: &Path) -> Result<(), UnpackError> {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(|err| UnpackError::Io {
            path: path.to_path_buf(),
            source: io::Error::other(format!(
                "creating an overlay whiteout (a 0/0 character device; needs root): {err}"
            )),
        })
    }

    fn set_opaque(&self, dir: &Path) -> Result<(), UnpackError> {
        rustix::fs::lsetxattr(dir, OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty()).map_err(
            |err| UnpackError::Io {
                path: dir.to_path_buf(),
                source: io::Error::other(format!(
                    "marking an opaque directory ({OPAQUE_XATTR}; needs root): {err}"
                )),
            },
        )
    }

    /// PAX `SCHILY.xattr.*` records, where the file system and our privileges allow.
    fn apply_xattrs<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
        shown: &str,
    ) -> Result<(), UnpackError> {
        let Some(extensions) = entry.pax_extensions().map_err(UnpackError::Corrupt)? else {
            return Ok(());
        };
        for extension in extensions {
            let extension = extension.map_err(UnpackError::Corrupt)?;
            let Some(name) = extension.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            if name.starts_with(b"trusted.overlay.") {
                tracing::debug!(entry = %shown, "dropping an overlayfs attribute from the archive");
                continue;
            }
            if !self.options.privileged
                && (name.starts_with(b"trusted.") || name.starts_with(b"security."))
            {
                continue;
            }
            let name = OsStr::from_bytes(name);
            if let Err(err) = rustix::fs::lsetxattr(
                path,
                name,
                extension.value_bytes(),
                rustix::fs::XattrFlags::empty(),
            ) {
                tracing::debug!(entry = %shown, xattr = ?name, %err, "extended attribute not applied");
            }
        }
        Ok(())
    }
}

/// Splits an archive name into components, refusing absolute names and `..`.
fn clean(raw: &[u8], shown: &str) -> Result<Vec<OsString>, UnpackError> {
    if raw.starts_with(b"/") {
        return Err(escape(shown, "has an absolute path"));
    }
    let mut components = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(escape(shown, "has a '..' component")),
            _ => components.push(OsStr::from_bytes(part).to_os_string()),
        }
    }
    Ok(components)
}

fn escape(path: &str, reason: &'static str) -> UnpackError {
    UnpackError::Escape {
        path: path.to_string(),
        reason,
    }
}

/// Removes whatever is at `path` (a directory with its contents), without following symlinks.
fn remove_existing(path: &Path) -> Result<(), UnpackError> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err),
    };
    result.map_err(|source| UnpackError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn set_mtime(path: &Path, mtime: u64) -> io::Result<()> {
    let seconds = i64::try_from(mtime).unwrap_or(i64::MAX);
    let time = rustix::fs::Timespec {
        tv_sec: seconds,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: time,
            last_modification: time,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

/// `O_NOFOLLOW`: a new file is never opened through a symlink left at its name.
fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Whether this process may chown, make device nodes and set `trusted.*` attributes.
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tar writer with full control over names (the tar crate refuses `..`, which is what
    /// these tests need to write).
    #[derive(Default)]
    pub(crate) struct RawTar {
        bytes: Vec<u8>,
    }

    impl RawTar {
        pub(crate) fn entry(&mut self, name: &str, kind: u8, mode: u32, link: &str, data: &[u8]) {
            let mut header = [0u8; 512];
            header[..name.len()].copy_from_slice(name.as_bytes());
            let octal = |field: &mut [u8], value: u64| {
                let text = format!("{:0width$o}\0", value, width = field.len() - 1);
                field.copy_from_slice(text.as_bytes());
            };
            octal(&mut header[100..108], u64::from(mode));
            octal(&mut header[108..116], 0);
            octal(&mut header[116..124], 0);
            octal(&mut header[124..136], data.len() as u64);
            octal(&mut header[136..148], 1_700_000_000);
            header[156] = kind;
            header[157..157 + link.len()].copy_from_slice(link.as_bytes());
            header[257..263].copy_from_slice(b"ustar\0");
            header[263..265].copy_from_slice(b"00");
            header[148..156].copy_from_slice(b"        ");
            let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
            let text = format!("{sum:06o}\0 ");
            header[148..156].copy_from_slice(text.as_bytes());
            self.bytes.extend_from_slice(&header);
            self.bytes.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.bytes.extend(std::iter::repeat_n(0u8, pad));
        }

        pub(crate) fn file(&mut self, name: &str, data: &[u8]) {
            self.entry(name, b'0', 0o644, "", data);
        }

        pub(crate) fn dir(&mut self, name: &str) {
            self.entry(name, b'5', 0o755, "", b"");
        }

        pub(crate) fn symlink(&mut self, name: &str, target: &str) {
            self.entry(name, b'2', 0o777, target, b"");
        }

        pub(crate) fn hardlink(&mut self, name: &str, target: &str) {
            self.entry(name, b'1', 0o644, target, b"");
        }

        pub(crate) fn finish(mut self) -> Vec<u8> {
            self.bytes.extend(std::iter::repeat_n(0u8, 1024));
            self.bytes
        }
    }

    fn unpack(bytes: &[u8], dest: &Path) -> Result<UnpackStats, UnpackError> {
        unpack_layer(
            bytes,
            dest,
            &UnpackOptions {
                privileged: running_as_root(),
                ..UnpackOptions::default()
            },
        )
    }

    fn rejected(result: Result<UnpackStats, UnpackError>) -> String {
        match result {
            Err(err @ UnpackError::Escape { .. }) => err.to_string(),
            other => panic!("expected the layer to be rejected, got {other:?}"),
        }
    }

    /// Root and a sandbox directory beside the destination that must stay untouched.
    fn sandbox() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let temp = tempfile::tempdir().expect("tempdir");
        let dest = temp.path().join("layer");
        let outside = temp.path().join("outside");
        fs::create_dir(&dest).expect("dest");
        fs::create_dir(&outside).expect("outside");
        (temp, dest, outside)
    }

    fn empty(dir: &Path) -> bool {
        fs::read_dir(dir).expect("read_dir").next().is_none()
    }

    #[test]
    fn files_dirs_symlinks_hard_links_and_modes_are_applied() {
        let (_temp, dest, _) = sandbox();
        let mut tar = RawTar::default();
        tar.dir("bin/");
        tar.entry("bin/tool", b'0', 0o4755, "", b"#!/bin/sh\n");
        tar.symlink("bin/sh", "/bin/busybox");
        tar.hardlink("bin/tool2", "bin/tool");
        tar.file("deep/implicit/file", b"x");
        let stats = unpack(&tar.finish(), &dest).expect("unpack");
        assert_eq!(stats.entries, 5);
        let tool = fs::metadata(dest.join("bin/tool")).expect("tool");
        assert_eq!(tool.mode() & 0o7777, 0o4755);
        assert_eq!(tool.mtime(), 1_700_000_000);
        assert_eq!(
            fs::read_link(dest.join("bin/sh")).expect("link"),
            Path::new("/bin/busybox")
        );
        assert_eq!(
            fs::metadata(dest.join("bin/tool2")).expect("tool2").ino(),
            tool.ino()
        );
        let implicit = fs::metadata(dest.join("deep/implicit")).expect("implicit");
        assert_eq!(implicit.mode() & 0o7777, 0o755);
        assert_eq!(
            fs::read(dest.join("deep/implicit/file")).expect("file"),
            b"x"
        );
    }

    #[test]
    fn diff_id_is_the_digest_of_the_uncompressed_archive_whatever_the_compression() {
        let mut tar = RawTar::default();
        tar.file("a", b"hello");
        let plain = tar.finish();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let zst = zstd::encode_all(&plain[..], 3).expect("zstd");
        for (what, bytes) in [("plain", &plain), ("gzip", &gz), ("zstd", &zst)] {
            let (_temp, dest, _) = sandbox();
            let stats = unpack_layer(
                &bytes[..],
                &dest,
                &UnpackOptions {
                    expected_diff_id: Some(Digest::of(&plain)),
                    ..UnpackOptions::default()
                },
            )
            .expect(what);
            assert_eq!(stats.size, plain.len() as u64, "{what}");
            assert_eq!(fs::read(dest.join("a")).expect("a"), b"hello", "{what}");
        }
        let (_temp, dest, _) = sandbox();
        let err = unpack_layer(
            &plain[..],
            &dest,
            &UnpackOptions {
                expected_diff_id: Some(Digest::of(b"something else")),
                ..UnpackOptions::default()
            },
        )
        .expect_err("mismatch");
        assert!(matches!(err, UnpackError::DiffId { .. }), "{err}");
    }

    #[test]
    fn dot_dot_is_rejected() {
        let (_temp, dest, outside) = sandbox();
        let mut tar = RawTar::default();
        tar.file("../outside/evil", b"pwned");
        let message = rejected(unpack(&tar.finish(), &dest));
        assert!(message.contains(".."), "{message}");
        assert!(empty(&outside));

        let mut tar = RawTar::default();
        tar.file("a/../../outside/evil", b"pwned");
        rejected(unpack(&tar.finish(), &dest));
        assert!(empty(&outside));
    }

    #[test]
    fn absolute_paths_are_rejected() {
        let (_temp, dest, outside) = sandbox();
        let mut tar = RawTar::default();
        let target = format!("{}/evil", outside.display());
        tar.file(&target, b"pwned");
        let message = rejected(unpack(&tar.finish(), &dest));
        assert!(message.contains("absolute"), "{message}");
        assert!(empty(&outside));
    }

    #[test]
    fn writing_through_a_symlink_is_rejected() {
        let (_temp, dest, outside) = sandbox();
        let mut tar = RawTar::default();
        tar.symlink("escape", &outside.display().to_string());
        tar.file("escape/evil", b"pwned");
        let message = rejected(unpack(&tar.finish(), &dest));
        assert!(message.contains("symlink"), "{message}");
        assert!(empty(&outside));

        // The same with a relative symlink climbing out.
        let (_temp, dest, outside) = sandbox();
        let mut tar = RawTar::default();
        tar.symlink("escape", "../outside");
        tar.dir("escape/sub/");
        rejected(unpack(&tar.finish(), &dest));
        assert!(empty(&outside));

        // A whiteout through a symlink would delete outside.
        let (_temp, dest, outside) = sandbox();
        fs::write(outside.join("victim"), b"keep").expect("victim");
        let mut tar = RawTar::default();
        tar.symlink("escape", "../outside");
        tar.file("escape/.wh.victim", b"");
        rejected(unpack(&tar.finish(), &dest));
        assert_eq!(fs::read(outside.join("victim")).expect("victim"), b"keep");
    }

    #[test]
    fn a_file_replacing_a_symlink_does_not_write_through_it() {
        let (_temp, dest, outside) = sandbox();
        fs::write(outside.join("victim"), b"keep").expect("victim");
        let mut tar = RawTar::default();
        tar.symlink("link", &format!("{}/victim", outside.display()));
        tar.file("link", b"pwned");
        unpack(&tar.finish(), &dest).expect("later entry replaces the symlink");
        assert_eq!(fs::read(outside.join("victim")).expect("victim"), b"keep");
        assert_eq!(fs::read(dest.join("link")).expect("link"), b"pwned");
        assert!(!fs::symlink_metadata(dest.join("link"))
            .expect("meta")
            .file_type()
            .is_symlink());
    }

    #[test]
    fn hard_links_outside_the_layer_are_rejected() {
        let (_temp, dest, outside) = sandbox();
        fs::write(outside.join("secret"), b"secret").expect("secret");
        for target in [
            "../outside/secret".to_string(),
            format!("{}/secret", outside.display()),
        ] {
            let mut tar = RawTar::default();
            tar.hardlink("stolen", &target);
            rejected(unpack(&tar.finish(), &dest));
            assert!(!dest.join("stolen").exists());
        }
        // Through a symlink inside the layer.
        let mut tar = RawTar::default();
        tar.symlink("out", "../outside");
        tar.hardlink("stolen", "out/secret");
        rejected(unpack(&tar.finish(), &dest));
        assert!(fs::symlink_metadata(dest.join("stolen")).is_err());
        // To something that is not in the layer.
        let (_temp, dest, _) = sandbox();
        let mut tar = RawTar::default();
        tar.hardlink("stolen", "etc/shadow");
        rejected(unpack(&tar.finish(), &dest));
    }

    #[test]
    fn hard_link_to_a_symlink_stays_a_symlink() {
        let (_temp, dest, outside) = sandbox();
        fs::write(outside.join("secret"), b"secret").expect("secret");
        let mut tar = RawTar::default();
        tar.symlink("sym", &format!("{}/secret", outside.display()));
        tar.hardlink("linked", "sym");
        unpack(&tar.finish(), &dest).expect("unpack");
        let meta = fs::symlink_metadata(dest.join("linked")).expect("linked");
        assert!(meta.file_type().is_symlink());
    }

    /// Whiteouts and opaque directories need root (mknod, trusted.* attributes).
    #[test]
    fn whiteouts_and_opaque_directories_become_overlay_markers() {
        if !crate::agent::runtime::image::root_or_skip("whiteouts") {
            return;
        }
        let (_temp, dest, _) = sandbox();
        let mut tar = RawTar::default();
        tar.dir("etc/");
        tar.file("etc/.wh.motd", b"");
        tar.dir("var/cache/");
        tar.file("var/cache/.wh..wh..opq", b"");
        tar.file("var/cache/new", b"n");
        tar.file(".wh..wh.plnk", b"");
        unpack(&tar.finish(), &dest).expect("unpack");
        let motd = fs::symlink_metadata(dest.join("etc/motd")).expect("whiteout");
        use std::os::unix::fs::FileTypeExt;
        assert!(motd.file_type().is_char_device());
        assert_eq!(motd.rdev(), 0);
        assert!(fs::symlink_metadata(dest.join("etc/.wh.motd")).is_err());
        let mut value = [0u8; 4];
        let n = rustix::fs::lgetxattr(dest.join("var/cache"), OPAQUE_XATTR, &mut value)
            .expect("opaque xattr");
        assert_eq!(&value[..n], b"y");
        assert!(fs::symlink_metadata(dest.join("var/cache/.wh..wh..opq")).is_err());
        assert!(fs::symlink_metadata(dest.join(".wh..wh.plnk")).is_err());
    }

    #[test]
    fn ownership_and_missing_parents_follow_the_lower_layer() {
        if !crate::agent::runtime::image::root_or_skip("ownership") {
            return;
        }
        let temp = tempfile::tempdir().expect("tempdir");
        let lower = temp.path().join("lower");
        let dest = temp.path().join("upper");
        fs::create_dir_all(lower.join("home/user")).expect("lower");
        std::os::unix::fs::lchown(lower.join("home/user"), Some(1000), Some(1000)).expect("chown");
        fs::set_permissions(lower.join("home/user"), fs::Permissions::from_mode(0o700))
            .expect("chmod");
        fs::create_dir(&dest).expect("dest");
        let mut tar = RawTar::default();
        tar.entry("home/user/file", b'0', 0o600, "", b"x");
        let mut bytes = tar.finish();
        // Set uid/gid 1234 in the header and fix the checksum.
        let set = |bytes: &mut Vec<u8>, at: usize, value: &str| {
            bytes[at..at + 8].copy_from_slice(value.as_bytes());
        };
        set(&mut bytes, 108, "0002322\0");
        set(&mut bytes, 116, "0002322\0");
        bytes[148..156].copy_from_slice(b"        ");
        let sum: u32 = bytes[..512].iter().map(|b| u32::from(*b)).sum();
        bytes[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        unpack_layer(
            &bytes[..],
            &dest,
            &UnpackOptions {
                parents: vec![lower],
                privileged: true,
                expected_diff_id: None,
            },
        )
        .expect("unpack");
        let dir = fs::metadata(dest.join("home/user")).expect("dir");
        assert_eq!(
            (dir.uid(), dir.gid(), dir.mode() & 0o7777),
            (1000, 1000, 0o700)
        );
        let file = fs::metadata(dest.join("home/user/file")).expect("file");
        assert_eq!((file.uid(), file.gid()), (1234, 1234));
    }

    #[test]
    fn truncated_archives_are_corrupt() {
        let (_temp, dest, _) = sandbox();
        let mut tar = RawTar::default();
        tar.file("a", &[7u8; 4000]);
        let bytes = tar.finish();
        let err = unpack(&bytes[..1500], &dest).expect_err("truncated");
        assert!(matches!(err, UnpackError::Corrupt(_)), "{err}");
    }
}
