//! hostPath: a path of the node, checked (or created) according to its `type`, as kubelet's
//! `hostPathTypeChecker` does.
//!
//! Owns only the `…OrCreate` creation of the path; must not remove anything on teardown.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
use std::path::Path;

use k8s_openapi::api::core::v1::HostPathVolumeSource;

/// Why a hostPath does not fit its type.
#[derive(Debug, thiserror::Error)]
pub enum HostPathError {
    #[error("hostPath type check failed: {path} is not a directory")]
    NotDirectory { path: String },
    #[error("hostPath type check failed: {path} is not a file")]
    NotFile { path: String },
    #[error("hostPath type check failed: {path} is not a socket file")]
    NotSocket { path: String },
    #[error("hostPath type check failed: {path} is not a character device")]
    NotCharDevice { path: String },
    #[error("hostPath type check failed: {path} is not a block device")]
    NotBlockDevice { path: String },
    #[error("invalid HostPathType {0:?}")]
    UnknownType(String),
    #[error("creating {path}: {source}")]
    Create {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Checks the path against its type, creating it for `DirectoryOrCreate` (mode 0755, parents
/// too) and `FileOrCreate` (mode 0644, parent must exist). `""` checks nothing.
pub fn set_up(source: &HostPathVolumeSource) -> Result<(), HostPathError> {
    let path = Path::new(&source.path);
    let shown = source.path.clone();
    let metadata = fs::metadata(path).ok();
    let kind = source.type_.as_deref().unwrap_or_default();
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => match metadata {
            None => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .create(path)
                    .map_err(|e| HostPathError::Create {
                        path: shown.clone(),
                        source: e,
                    })?;
                set_mode(path, 0o755, &shown)
            }
            Some(m) if m.is_dir() => Ok(()),
            Some(_) => Err(HostPathError::NotDirectory { path: shown }),
        },
        "Directory" => match metadata {
            Some(m) if m.is_dir() => Ok(()),
            _ => Err(HostPathError::NotDirectory { path: shown }),
        },
        "FileOrCreate" => match metadata {
            None => {
                fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .mode(0o644)
                    .open(path)
                    .map_err(|e| HostPathError::Create {
                        path: shown.clone(),
                        source: e,
                    })?;
                Ok(())
            }
            Some(m) if m.is_file() => Ok(()),
            Some(_) => Err(HostPathError::NotFile { path: shown }),
        },
        "File" => match metadata {
            Some(m) if m.is_file() => Ok(()),
            _ => Err(HostPathError::NotFile { path: shown }),
        },
        "Socket" => match metadata {
            Some(m) if m.file_type().is_socket() => Ok(()),
            _ => Err(HostPathError::NotSocket { path: shown }),
        },
        "CharDevice" => match metadata {
            Some(m) if m.file_type().is_char_device() => Ok(()),
            _ => Err(HostPathError::NotCharDevice { path: shown }),
        },
        "BlockDevice" => match metadata {
            Some(m) if m.file_type().is_block_device() => Ok(()),
            _ => Err(HostPathError::NotBlockDevice { path: shown }),
        },
        other => Err(HostPathError::UnknownType(other.to_string())),
    }
}

fn set_mode(path: &Path, mode: u32, shown: &str) -> Result<(), HostPathError> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| HostPathError::Create {
        path: shown.to_string(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn source(path: &Path, kind: &str) -> HostPathVolumeSource {
        HostPathVolumeSource {
            path: path.display().to_string(),
            type_: Some(kind.into()),
        }
    }

    #[test]
    fn types_are_checked_and_created_like_kubelet() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/b");
        let file = tmp.path().join("f");
        let socket_path = tmp.path().join("s.sock");
        let _socket = std::os::unix::net::UnixListener::bind(&socket_path).expect("socket");

        assert!(matches!(
            set_up(&source(&dir, "Directory")),
            Err(HostPathError::NotDirectory { .. })
        ));
        set_up(&source(&dir, "DirectoryOrCreate")).expect("created");
        assert!(dir.is_dir());
        assert_eq!(
            fs::metadata(&dir).expect("meta").permissions().mode() & 0o777,
            0o755
        );
        set_up(&source(&dir, "Directory")).expect("now a directory");

        assert!(matches!(
            set_up(&source(&file, "File")),
            Err(HostPathError::NotFile { .. })
        ));
        set_up(&source(&file, "FileOrCreate")).expect("created");
        assert!(file.is_file());
        set_up(&source(&file, "File")).expect("now a file");
        assert!(matches!(
            set_up(&source(&file, "DirectoryOrCreate")),
            Err(HostPathError::NotDirectory { .. })
        ));
        assert!(matches!(
            set_up(&source(&dir, "FileOrCreate")),
            Err(HostPathError::NotFile { .. })
        ));
        // FileOrCreate does not create missing parents.
        assert!(set_up(&source(&tmp.path().join("x/y"), "FileOrCreate")).is_err());

        set_up(&source(&socket_path, "Socket")).expect("socket");
        assert_eq!(
            set_up(&source(&file, "Socket"))
                .map_err(|e| e.to_string())
                .err(),
            Some(format!(
                "hostPath type check failed: {} is not a socket file",
                file.display()
            ))
        );
        set_up(&source(Path::new("/dev/null"), "CharDevice")).expect("char device");
        assert!(set_up(&source(Path::new("/dev/null"), "BlockDevice")).is_err());
        set_up(&source(&tmp.path().join("nothing"), "")).expect("unchecked");
        assert!(set_up(&source(&file, "Bogus")).is_err());
    }
}
