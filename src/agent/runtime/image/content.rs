//! The content store: verified blobs (manifests, configs, compressed layers) addressed by
//! digest, with reference counts.
//!
//! Layout under its root (`<data-dir>/agent/runtime/content`):
//! - `blobs/sha256/<hex>`: a blob whose bytes hash to its name, nothing else ever;
//! - `ingest/<random>`: blobs being written; renamed into `blobs/` once verified.
//!
//! # Guarantees
//! - A blob appears under `blobs/` only after its digest (and size, when known) was checked, and
//!   after it was flushed to disk; the rename makes it appear whole or not at all, so concurrent
//!   writers of one digest (two processes, two pulls) are harmless.
//! - Reference counts are kept in memory and rebuilt from the image records at start
//!   ([`ContentStore::set_refs`]); the records are the source of truth, so a crash cannot leave
//!   a count wrong on disk. A blob whose count drops to zero is deleted unless leased
//!   (a pull in progress holds a lease on what it wrote until its image is recorded).
//!
//! Owns `content/`; knows nothing of images or snapshots.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::digest::{Digest, Hasher};

/// Why the content store failed.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    Size {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {expected} failed verification: its content hashes to {actual}")]
    Digest { expected: Digest, actual: Digest },
    #[error("blob {0} is not in the content store")]
    Missing(Digest),
    #[error("blob {digest} is larger than {limit} bytes")]
    TooLarge { digest: Digest, limit: u64 },
    #[error("content store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Verified blobs by digest.
#[derive(Debug)]
pub struct ContentStore {
    root: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    refs: HashMap<Digest, u32>,
    leases: HashMap<Digest, u32>,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ContentError + '_ {
    move |source| ContentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ContentStore {
    /// Opens (creating) the store at `root`, clearing interrupted ingests.
    pub fn open(root: &Path) -> Result<ContentStore, ContentError> {
        let blobs = root.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(io_at(&blobs))?;
        let ingest = root.join("ingest");
        fs::create_dir_all(&ingest).map_err(io_at(&ingest))?;
        Ok(ContentStore {
            root: root.to_path_buf(),
            state: Mutex::new(State::default()),
        })
    }

    /// Removes leftovers of writes interrupted by a crash. Only safe when no writer runs (at
    /// agent start).
    pub fn clean_ingest(&self) -> Result<(), ContentError> {
        let ingest = self.root.join("ingest");
        for entry in fs::read_dir(&ingest).map_err(io_at(&ingest))?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        Ok(())
    }

    /// Where the blob lives (whether or not it is there).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Opens a blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<fs::File, ContentError> {
        match fs::File::open(self.path(digest)) {
            Ok(file) => Ok(file),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                Err(ContentError::Missing(digest.clone()))
            }
            Err(source) => Err(ContentError::Io {
                path: self.path(digest),
                source,
            }),
        }
    }

    /// Reads a small blob (a manifest or config) whole, checking it again on the way: these are
    /// parsed and trusted, and re-hashing a few KiB is free.
    pub fn read(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>, ContentError> {
        let file = self.open_blob(digest)?;
        let mut bytes = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(io_at(&self.path(digest)))?;
        if bytes.len() as u64 > limit {
            return Err(ContentError::TooLarge {
                digest: digest.clone(),
                limit,
            });
        }
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(ContentError::Digest {
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Starts writing a blob that must hash to `expected` (and be `size` bytes, when known).
    pub fn writer(&self, expected: &Digest, size: Option<u64>) -> Result<Ingest, ContentError> {
        let name = format!(
            "{}-{}-{:016x}",
            expected.hex(),
            std::process::id(),
            rand::random::<u64>()
        );
        let path = self.root.join("ingest").join(name);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_at(&path))?;
        Ok(Ingest {
            file: Some(file),
            path,
            target: self.path(expected),
            expected: expected.clone(),
            size,
            hasher: Hasher::new(),
        })
    }

    /// Stores `bytes`, which must hash to `expected`.
    pub fn insert(&self, expected: &Digest, bytes: &[u8]) -> Result<(), ContentError> {
        if self.contains(expected) {
            return Ok(());
        }
        let mut writer = self.writer(expected, Some(bytes.len() as u64))?;
        writer.write_chunk(bytes)?;
        writer.commit()
    }

    /// Stores what `reader` yields under the digest it hashes to (for archives that name files
    /// by something other than their digest, like `docker save`'s `<id>/layer.tar`).
    pub fn insert_unnamed(&self, reader: &mut dyn Read) -> Result<(Digest, u64), ContentError> {
        let name = format!(
            "unnamed-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        let path = self.root.join("ingest").join(name);
        let result = (|| {
            let file = fs::File::create(&path).map_err(io_at(&path))?;
            let mut writer = super::digest::HashingWriter::new(io::BufWriter::new(file));
            io::copy(reader, &mut writer).map_err(io_at(&path))?;
            let (buffered, digest, len) = writer.finish();
            let file = buffered.into_inner().map_err(|err| ContentError::Io {
                path: path.clone(),
                source: err.into_error(),
            })?;
            file.sync_all().map_err(io_at(&path))?;
            let target = self.path(&digest);
            fs::rename(&path, &target).map_err(io_at(&target))?;
            Ok((digest, len))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&path);
        }
        result
    }

    /// Copies a blob from `reader`, verifying it.
    pub fn insert_from(
        &self,
        expected: &Digest,
        size: Option<u64>,
        reader: &mut dyn Read,
    ) -> Result<(), ContentError> {
        if self.contains(expected) {
            return Ok(());
        }
        let mut writer = self.writer(expected, size)?;
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let n = reader
                .read(&mut buffer)
                .map_err(io_at(&writer.path.clone()))?;
            if n == 0 {
                break;
            }
            writer.write_chunk(&buffer[..n])?;
        }
        writer.commit()
    }

    /// Every blob present.
    pub fn list(&self) -> Result<Vec<Digest>, ContentError> {
        let dir = self.root.join("blobs").join("sha256");
        let mut digests = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_at(&dir))?.flatten() {
            if let Some(name) = entry.file_name().to_str() {
                if let Ok(digest) = format!("sha256:{name}").parse() {
                    digests.push(digest);
                }
            }
        }
        digests.sort();
        Ok(digests)
    }

    /// Size on disk of a blob (0 when absent).
    pub fn size(&self, digest: &Digest) -> u64 {
        fs::metadata(self.path(digest)).map_or(0, |m| m.len())
    }

    /// Replaces every count (at start, from the image records).
    pub fn set_refs(&self, refs: HashMap<Digest, u32>) {
        self.lock().refs = refs;
    }

    /// Adds one reference to each digest.
    pub fn retain(&self, digests: &[Digest]) {
        let mut state = self.lock();
        for digest in digests {
            *state.refs.entry(digest.clone()).or_insert(0) += 1;
        }
    }

    /// Drops one reference from each digest and deletes the blobs nobody references or leases
    /// any more; returns the deleted ones.
    pub fn release(&self, digests: &[Digest]) -> Result<Vec<Digest>, ContentError> {
        let mut state = self.lock();
        let mut deleted = Vec::new();
        for digest in digests {
            let count = state.refs.entry(digest.clone()).or_insert(0);
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.refs.remove(digest);
                if !state.leases.contains_key(digest) && self.delete(digest)? {
                    deleted.push(digest.clone());
                }
            }
        }
        Ok(deleted)
    }

    /// Deletes those of `digests` that nothing references or leases.
    pub fn delete_unreferenced(&self, digests: &[Digest]) -> Result<Vec<Digest>, ContentError> {
        let state = self.lock();
        let mut deleted = Vec::new();
        for digest in digests {
            if !state.refs.contains_key(digest)
                && !state.leases.contains_key(digest)
                && self.delete(digest)?
            {
                deleted.push(digest.clone());
            }
        }
        Ok(deleted)
    }

    /// References to `digest`.
    pub fn refs(&self, digest: &Digest) -> u32 {
        self.lock().refs.get(digest).copied().unwrap_or(0)
    }

    /// Protects blobs from deletion until the lease is dropped.
    pub fn lease(self: &Arc<Self>, digests: &[Digest]) -> Lease {
        let mut lease = Lease {
            store: Arc::clone(self),
            digests: Vec::new(),
        };
        lease.add(digests);
        lease
    }

    /// Deletes blobs that nothing references or leases (after a crash between writing blobs
    /// and recording their image); returns them.
    pub fn sweep(&self) -> Result<Vec<Digest>, ContentError> {
        let present = self.list()?;
        let state = self.lock();
        let mut deleted = Vec::new();
        for digest in present {
            if !state.refs.contains_key(&digest)
                && !state.leases.contains_key(&digest)
                && self.delete(&digest)?
            {
                deleted.push(digest);
            }
        }
        Ok(deleted)
    }

    fn delete(&self, digest: &Digest) -> Result<bool, ContentError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(ContentError::Io { path, source }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves counts that are still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Keeps blobs alive while held.
#[derive(Debug)]
pub struct Lease {
    store: Arc<ContentStore>,
    digests: Vec<Digest>,
}

impl Lease {
    /// The digests this lease protects.
    pub fn digests(&self) -> &[Digest] {
        &self.digests
    }

    /// Adds more digests to this lease.
    pub fn add(&mut self, digests: &[Digest]) {
        let mut state = self.store.lock();
        for digest in digests {
            *state.leases.entry(digest.clone()).or_insert(0) += 1;
        }
        self.digests.extend_from_slice(digests);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = self.store.lock();
        for digest in &self.digests {
            if let Some(count) = state.leases.get_mut(digest) {
                *count -= 1;
                if *count == 0 {
                    state.leases.remove(digest);
                }
            }
        }
    }
}

/// A blob being written. Dropped without [`Ingest::commit`], it leaves nothing behind.
#[derive(Debug)]
pub struct Ingest {
    file: Option<fs::File>,
    path: PathBuf,
    target: PathBuf,
    expected: Digest,
    size: Option<u64>,
    hasher: Hasher,
}

impl Ingest {
    pub fn write_chunk(&mut self, bytes: &[u8]) -> Result<(), ContentError> {
        if let Some(size) = self.size {
            let actual = self.hasher.len() + bytes.len() as u64;
            if actual > size {
                return Err(ContentError::Size {
                    digest: self.expected.clone(),
                    expected: size,
                    actual,
                });
            }
        }
        self.hasher.update(bytes);
        match &mut self.file {
            Some(file) => file.write_all(bytes).map_err(io_at(&self.path)),
            None => Ok(()),
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.hasher.len()
    }

    /// Verifies and publishes the blob.
    pub fn commit(mut self) -> Result<(), ContentError> {
        let hasher = std::mem::take(&mut self.hasher);
        let actual_size = hasher.len();
        if let Some(expected) = self.size {
            if expected != actual_size {
                return Err(ContentError::Size {
                    digest: self.expected.clone(),
                    expected,
                    actual: actual_size,
                });
            }
        }
        let actual = hasher.finish();
        if actual != self.expected {
            return Err(ContentError::Digest {
                expected: self.expected.clone(),
                actual,
            });
        }
        if let Some(file) = self.file.take() {
            file.sync_all().map_err(io_at(&self.path))?;
        }
        fs::rename(&self.path, &self.target).map_err(io_at(&self.target))?;
        Ok(())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        // After a successful commit the temporary name is gone and this fails harmlessly.
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ContentStore) {
        let temp = tempfile::tempdir().expect("tempdir");
        let store = ContentStore::open(temp.path()).expect("open");
        (temp, store)
    }

    #[test]
    fn blobs_are_stored_only_when_they_match_their_digest() {
        let (_temp, store) = store();
        let digest = Digest::of(b"hello");
        store.insert(&digest, b"hello").expect("insert");
        assert!(store.contains(&digest));
        assert_eq!(store.read(&digest, 100).expect("read"), b"hello");

        let wrong = Digest::of(b"other");
        let err = store.insert(&wrong, b"hello").expect_err("mismatch");
        assert!(matches!(err, ContentError::Digest { .. }), "{err}");
        assert!(!store.contains(&wrong));
        let err = store
            .insert_from(&Digest::of(b"hello!"), Some(3), &mut &b"hello!"[..])
            .expect_err("size");
        assert!(matches!(err, ContentError::Size { .. }), "{err}");
        // Nothing is left in ingest/.
        assert_eq!(
            fs::read_dir(_temp.path().join("ingest"))
                .expect("ingest")
                .count(),
            0
        );
    }

    #[test]
    fn a_tampered_blob_fails_on_read() {
        let (_temp, store) = store();
        let digest = Digest::of(b"hello");
        store.insert(&digest, b"hello").expect("insert");
        fs::write(store.path(&digest), b"jello").expect("tamper");
        assert!(matches!(
            store.read(&digest, 100),
            Err(ContentError::Digest { .. })
        ));
    }

    #[test]
    fn blobs_go_when_their_last_reference_goes_unless_leased() {
        let (_temp, store) = store();
        let store = Arc::new(store);
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        store.insert(&a, b"a").expect("a");
        store.insert(&b, b"b").expect("b");
        store.retain(&[a.clone(), b.clone()]);
        store.retain(std::slice::from_ref(&a));
        assert_eq!(store.refs(&a), 2);
        assert_eq!(
            store.release(&[a.clone(), b.clone()]).expect("release"),
            vec![b.clone()]
        );
        assert!(store.contains(&a) && !store.contains(&b));
        {
            let _lease = store.lease(std::slice::from_ref(&a));
            assert!(store
                .release(std::slice::from_ref(&a))
                .expect("release")
                .is_empty());
            assert!(store.contains(&a));
            assert!(store.sweep().expect("sweep").is_empty());
        }
        assert_eq!(store.sweep().expect("sweep"), vec![a.clone()]);
        assert!(!store.contains(&a));
    }
}
