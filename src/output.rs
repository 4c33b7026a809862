//! Output directories that appear whole or not at all.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A directory whose files appear in `out` only when everything was written: files go to a
/// hidden sibling staging directory, which is removed on any failure.
pub struct StagedDir {
    staging: PathBuf,
    out: PathBuf,
    /// Parent directories of `out` this run created (outermost first), removed again on failure.
    created_parents: Vec<PathBuf>,
    committed: bool,
}

impl StagedDir {
    /// Fails with a one-line error when `out` cannot be written.
    pub fn create(out: &Path) -> Result<Self> {
        if out.exists() && !out.is_dir() {
            return Err(Error::Output(format!(
                "{} exists and is not a directory",
                out.display()
            )));
        }
        let name = out
            .file_name()
            .ok_or_else(|| {
                Error::Output(format!("{} is not a usable directory name", out.display()))
            })?
            .to_string_lossy()
            .to_string();
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Missing parents are created (outermost first) and removed again if the run fails.
        let mut created_parents: Vec<PathBuf> = parent
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
            .map(Path::to_path_buf)
            .collect();
        created_parents.reverse();
        let remove_created = |dirs: &[PathBuf]| {
            for d in dirs.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
        };
        if let Err(e) = std::fs::create_dir_all(&parent) {
            remove_created(&created_parents);
            return Err(Error::Output(format!(
                "cannot create {}: {e}",
                parent.display()
            )));
        }
        let staging = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        if let Err(e) = std::fs::create_dir(&staging) {
            remove_created(&created_parents);
            return Err(Error::Output(format!(
                "cannot write to {}: {e}",
                parent.display()
            )));
        }
        if out.is_dir() {
            // The files will be renamed into `out`: check it is writable before any work.
            let probe = out.join(format!(".revattn-probe-{}", std::process::id()));
            if let Err(e) = std::fs::write(&probe, b"") {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(Error::Output(format!(
                    "cannot write to {}: {e}",
                    out.display()
                )));
            }
            let _ = std::fs::remove_file(probe);
        }
        Ok(StagedDir {
            staging,
            out: out.to_path_buf(),
            created_parents,
            committed: false,
        })
    }

    /// Where a file named `name` is staged (for writers that stream to a path).
    pub fn path(&self, name: &str) -> PathBuf {
        self.staging.join(name)
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.staging.join(name);
        std::fs::write(&path, bytes).map_err(|e| Error::io(path, e))
    }

    /// Moves the staged files into place: the whole directory at once when `out` is new,
    /// otherwise file by file (each rename is atomic).
    pub fn commit(mut self) -> Result<()> {
        if !self.out.exists() {
            std::fs::rename(&self.staging, &self.out).map_err(|e| Error::io(&self.out, e))?;
        } else {
            let entries =
                std::fs::read_dir(&self.staging).map_err(|e| Error::io(&self.staging, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(&self.staging, e))?;
                let dest = self.out.join(entry.file_name());
                std::fs::rename(entry.path(), &dest).map_err(|e| Error::io(dest, e))?;
            }
            let _ = std::fs::remove_dir(&self.staging);
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
            for d in self.created_parents.iter().rev() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}
