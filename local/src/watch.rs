//! Noticing edits of the manifest: [`FileWatch`] remembers the content of
//! each file and reports when any of them differs on the next poll
//! (content, not mtime, so two edits within one timestamp tick are seen and
//! a `touch` is not). The caller polls on an interval.

use std::path::PathBuf;

/// Remembered content of the watched files.
#[derive(Debug)]
pub struct FileWatch {
    files: Vec<PathBuf>,
    seen: Vec<Option<Vec<u8>>>,
}

impl FileWatch {
    /// Watches `files`, taking their current content as the baseline.
    pub fn new(files: Vec<PathBuf>) -> Self {
        let seen = files.iter().map(|f| std::fs::read(f).ok()).collect();
        Self { files, seen }
    }

    /// Re-reads every file; true when any content (or existence) changed
    /// since the previous call or [`FileWatch::new`].
    pub fn changed(&mut self) -> bool {
        let mut changed = false;
        for (file, seen) in self.files.iter().zip(self.seen.iter_mut()) {
            let now = std::fs::read(file).ok();
            if now != *seen {
                *seen = now;
                changed = true;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_content_change_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.yaml");
        let b = dir.path().join("b.yaml");
        std::fs::write(&a, "one").unwrap();
        let mut w = FileWatch::new(vec![a.clone(), b.clone()]);
        assert!(!w.changed());
        std::fs::write(&a, "two").unwrap();
        assert!(w.changed());
        assert!(!w.changed());
        // Same content rewritten: no change.
        std::fs::write(&a, "two").unwrap();
        assert!(!w.changed());
        // A file appearing or disappearing is a change.
        std::fs::write(&b, "x").unwrap();
        assert!(w.changed());
        std::fs::remove_file(&b).unwrap();
        assert!(w.changed());
    }
}
