//! Local mode's HLS directory: where the embedded shards package broadcasts declared
//! with `hls = true` (the control loop asks the stage's shard, as in a cluster).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Where packagers write: the one given, or a private temporary directory removed when
/// this is dropped.
pub struct Directory {
    path: PathBuf,
    temporary: bool,
}

impl Directory {
    /// `given`, made if missing; else a new private directory under the temporary one.
    pub fn new(given: Option<PathBuf>) -> std::io::Result<Self> {
        let (path, temporary) = match given {
            Some(path) => (path, false),
            None => (
                std::env::temp_dir().join(format!(
                    "tutti-hls-{}-{}",
                    std::process::id(),
                    tutti_service::token::random_token(8)
                )),
                true,
            ),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)?;
        Ok(Self { path, temporary })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
