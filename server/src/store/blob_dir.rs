//! The embedded store's file bytes: a content-addressed directory under
//! `CHAT_DATA_DIR`, one file per content named by its SHA-256
//! (`attachments/ab/abcdef…`), so the same file uploaded twice is kept once.
//!
//! A file is written under a temporary name, synced and renamed into place,
//! so a crash leaves either the whole file or none: a record in the database
//! (written after) never names a half-written one. The two-digit fan-out keeps
//! directories small enough for any file system.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;

use super::{StoreError, StoreResult};
use crate::model::Blob;

#[derive(Debug, Clone)]
pub(super) struct BlobDir {
    root: PathBuf,
}

impl BlobDir {
    pub(super) fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("attachments"),
        }
    }

    fn path(&self, sha256: &str) -> StoreResult<PathBuf> {
        if !is_blob_name(sha256) {
            return Err(StoreError::Internal(format!("not a blob name: {sha256:?}")));
        }
        Ok(self.root.join(&sha256[..2]).join(sha256))
    }

    /// Writes `content` as `sha256` unless it is there already. Blocking.
    pub(super) fn put(&self, sha256: &str, content: &[u8]) -> StoreResult<()> {
        let path = self.path(sha256)?;
        if path.exists() {
            return Ok(());
        }
        let Some(dir) = path.parent() else {
            return Err(StoreError::Internal("blob path without a directory".into()));
        };
        std::fs::create_dir_all(dir).map_err(|e| io_error("create", dir, e))?;
        let mut temporary =
            tempfile_in(dir).map_err(|e| io_error("create a temporary file in", dir, e))?;
        temporary
            .1
            .write_all(content)
            .and_then(|()| temporary.1.sync_all())
            .map_err(|e| io_error("write", &temporary.0, e))?;
        std::fs::rename(&temporary.0, &path).map_err(|e| io_error("rename", &temporary.0, e))?;
        // The rename is durable once the directory is synced.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("sync", dir, e))?;
        Ok(())
    }

    /// Removes `sha256` if it is there. Blocking.
    pub(super) fn remove(&self, sha256: &str) -> StoreResult<()> {
        let path = self.path(sha256)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("remove", &path, e)),
        }
    }

    /// Opens `sha256` for reading, in chunks.
    pub(super) async fn open(&self, sha256: &str) -> StoreResult<Option<Blob>> {
        let path = self.path(sha256)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("open", &path, e)),
        };
        let len = file
            .metadata()
            .await
            .map_err(|e| io_error("read the size of", &path, e))?
            .len();
        Ok(Some(Blob {
            len,
            chunks: tokio_util::io::ReaderStream::new(file).boxed(),
        }))
    }
}

/// Whether `sha256` is what blob names are made of: 64 lowercase hex
/// digits (never a path).
fn is_blob_name(sha256: &str) -> bool {
    sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A new file in `dir` with a name no other writer uses.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let path = dir.join(format!(".upload-{}", crate::model::Id::new()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}

fn io_error(doing: &str, path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("cannot {doing} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use futures_util::TryStreamExt;

    use super::*;

    const NAME: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[tokio::test]
    async fn stores_once_reads_back_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobDir::new(dir.path());
        blobs.put(NAME, b"test").unwrap();
        blobs.put(NAME, b"test").unwrap();
        let blob = blobs.open(NAME).await.unwrap().unwrap();
        assert_eq!(blob.len, 4);
        let bytes: Vec<u8> = blob
            .chunks
            .try_fold(Vec::new(), |mut all, chunk| async move {
                all.extend_from_slice(&chunk);
                Ok(all)
            })
            .await
            .unwrap();
        assert_eq!(bytes, b"test");
        let files: Vec<_> = std::fs::read_dir(dir.path().join("attachments/9f"))
            .unwrap()
            .collect();
        assert_eq!(files.len(), 1, "no temporary file is left behind");
        blobs.remove(NAME).unwrap();
        assert!(blobs.open(NAME).await.unwrap().is_none());
    }

    #[test]
    fn refuses_names_that_are_not_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobDir::new(dir.path());
        for name in ["../../etc/passwd", "ab", &NAME.to_uppercase()] {
            assert!(blobs.put(name, b"x").is_err(), "{name}");
        }
    }
}
