//! Files a command writes at the end of its work (weights, calibrations, plots): written beside
//! their destination and renamed into place once whole, so an unwritable directory fails
//! before the work, and a failed or interrupted run leaves neither a truncated file nor an
//! older one clobbered.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// A file being written for `destination`.
pub(super) struct Staged {
    destination: PathBuf,
    file: tempfile::NamedTempFile,
}

impl Staged {
    /// Prepares to write `destination`: a hidden file in its directory, with its extension
    /// (some writers go by it).
    pub fn new(destination: &Path) -> anyhow::Result<Self> {
        let parent = destination.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let suffix = destination.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
        let file = tempfile::Builder::new()
            .prefix(".approxifer-")
            .suffix(&suffix)
            .tempfile_in(parent)
            .with_context(|| format!("cannot write {}: its directory refuses new files", destination.display()))?;
        Ok(Staged { destination: destination.into(), file })
    }

    /// Where to write the contents.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Moves the written file into place.
    pub fn persist(self) -> anyhow::Result<()> {
        let destination = self.destination;
        self.file
            .persist(&destination)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot write {}", destination.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_file_appears_only_when_persisted_and_leaves_nothing_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let destination = dir.path().join("calibration.json");
        std::fs::write(&destination, "older").unwrap();

        let dropped = Staged::new(&destination).unwrap();
        std::fs::write(dropped.path(), "half").unwrap();
        assert_eq!(dropped.path().extension().unwrap(), "json");
        drop(dropped);
        assert_eq!(std::fs::read_to_string(&destination).unwrap(), "older", "a failed run keeps the older file");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "and leaves nothing beside it");

        let staged = Staged::new(&destination).unwrap();
        std::fs::write(staged.path(), "newer").unwrap();
        staged.persist().unwrap();
        assert_eq!(std::fs::read_to_string(&destination).unwrap(), "newer");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let missing = dir.path().join("no-such-directory").join("plot.svg");
        let e = Staged::new(&missing).err().expect("a directory that does not exist refuses");
        assert!(e.to_string().contains("plot.svg"), "{e}");
    }
}
