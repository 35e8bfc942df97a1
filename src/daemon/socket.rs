//! The CRI unix socket: parent directory created, a stale socket file replaced, a live one
//! refused, mode 0660.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

/// Why the CRI socket cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// The socket's directory could not be created.
    #[error("cannot create directory {dir} for the CRI socket {path}: {source}")]
    Dir {
        dir: PathBuf,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process answers on the socket.
    #[error("another process is already serving {path}; stop it or choose another --listen path")]
    InUse { path: PathBuf },
    /// Something that is not a socket is in the way.
    #[error("{path} exists and is not a socket; refusing to remove it")]
    NotASocket { path: PathBuf },
    /// Binding, replacing or chmod failed.
    #[error("cannot {action} CRI socket {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the CRI socket at `path`.
pub async fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| SocketError::Dir {
            dir: dir.to_owned(),
            path: path.to_owned(),
            source,
        })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(SocketError::InUse {
                    path: path.to_owned(),
                });
            }
            tracing::info!(path = %path.display(), "removing stale CRI socket");
            std::fs::remove_file(path).map_err(|source| SocketError::Io {
                action: "remove stale",
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(SocketError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(_) => {}
    }
    // Bound under a temporary name, given its mode, then linked into place: the socket is
    // never reachable at `path` with the mode the umask gave it.
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("concord.sock"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|source| SocketError::Io {
        action: "bind",
        path: path.to_owned(),
        source,
    })?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))
        .map_err(|source| SocketError::Io {
            action: "chmod",
            path: path.to_owned(),
            source,
        })
        .and_then(|()| {
            // A hard link, not a rename: it fails if something took the path meanwhile (a
            // second concord starting at the same time), as bind itself would.
            std::fs::hard_link(&tmp, path).map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    SocketError::InUse {
                        path: path.to_owned(),
                    }
                } else {
                    SocketError::Io {
                        action: "link into place",
                        path: path.to_owned(),
                        source,
                    }
                }
            })
        });
    let _ = std::fs::remove_file(&tmp);
    placed?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_socket_is_replaced_and_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cri.sock");
        let first = bind(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let err = bind(&path).await.unwrap_err();
        assert!(matches!(err, SocketError::InUse { .. }), "{err}");
        drop(first);
        bind(&path).await.expect("a stale socket is replaced");
    }

    #[tokio::test]
    async fn a_regular_file_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cri.sock");
        std::fs::write(&path, "keep me").unwrap();
        let err = bind(&path).await.unwrap_err();
        assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }
}
