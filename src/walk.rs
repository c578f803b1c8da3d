//! Stage 1: find the images of an ImageFolder dataset (`root/<class>/.../<file>`).
//!
//! The walk decides what the run will account for, so it is strict about it: every
//! file is either an image entry (to be scored), a skipped non-image (counted), or a
//! reported problem (a dangling link becomes an error row, a loop a warning). The
//! order is the byte order of the relative paths, so it is the same on every machine
//! whatever the file system returns.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use walkdir::WalkDir;

use crate::error::{Error, Result};

/// File extensions recognised as images (compared case-insensitively).
pub(crate) const IMAGE_EXTENSIONS: &[&str] =
    &["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"];

/// One image file to score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Path relative to the dataset root, as recorded in outputs (see [`path_to_string`]).
    pub rel: String,
    /// Absolute (or root-joined) path used to read the file.
    pub path: PathBuf,
    /// First-level folder name: the ground-truth class.
    pub class: String,
    /// File size in bytes (0 when it could not be read).
    pub size: u64,
    /// A problem found while walking (e.g. a dangling symlink): the entry becomes an
    /// error row without being read.
    pub problem: Option<String>,
}

/// What the walk found.
#[derive(Debug, Clone, Default)]
pub(crate) struct Dataset {
    /// Sorted by `rel` (byte order).
    pub entries: Vec<Entry>,
    /// All first-level class folders, sorted, including empty ones.
    pub classes: Vec<String>,
    /// Class folders with no image in them.
    pub empty_classes: Vec<String>,
    /// Relative paths of files that are not images (or not inside a class folder).
    pub skipped: Vec<String>,
    /// Human-readable notes (symlink loops, unreadable folders, ...).
    pub warnings: Vec<String>,
}

/// Record a path losslessly as UTF-8: valid UTF-8 is kept as is; each byte of an
/// invalid sequence is written as `\xNN` (documented in the README).
pub(crate) fn path_to_string(p: &Path) -> String {
    let bytes = p.as_os_str().as_bytes();
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => {
            let mut out = String::new();
            for chunk in bytes.utf8_chunks() {
                out.push_str(chunk.valid());
                for b in chunk.invalid() {
                    out.push_str(&format!("\\x{b:02X}"));
                }
            }
            out
        }
    }
}

pub(crate) fn is_image_name(name: &OsStr) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
        .unwrap_or(false)
}

fn is_hidden(name: &OsStr) -> bool {
    name.as_bytes().first() == Some(&b'.')
}

/// Walk `root`. Fails only when the root itself is unusable or holds no image.
pub(crate) fn walk(root: &Path) -> Result<Dataset> {
    let meta = std::fs::metadata(root).map_err(|e| Error::Dataset {
        what: format!("cannot open dataset folder {}: {e}", root.display()),
    })?;
    if !meta.is_dir() {
        return Err(Error::Dataset {
            what: format!("{} is not a folder", root.display()),
        });
    }
    let mut ds = Dataset {
        ..Default::default()
    };
    let walker = WalkDir::new(root)
        .follow_links(true)
        .min_depth(1)
        .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()))
        .into_iter()
        .filter_entry(|e| !is_hidden(e.file_name()));
    for item in walker {
        match item {
            Ok(e) => {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap_or(e.path())
                    .to_path_buf();
                if e.depth() == 1 && e.file_type().is_dir() {
                    ds.classes.push(path_to_string(&rel));
                    continue;
                }
                if e.file_type().is_dir() {
                    continue;
                }
                let rel_s = path_to_string(&rel);
                if e.depth() == 1 || !is_image_name(e.file_name()) {
                    ds.skipped.push(rel_s);
                    continue;
                }
                // A FIFO, socket or device named like an image would block or
                // mislead a reader: it becomes an error row, never a read.
                let problem = (!e.file_type().is_file())
                    .then(|| "not a regular file (FIFO, socket or device)".to_string());
                ds.entries.push(Entry {
                    class: class_of(&rel),
                    rel: rel_s,
                    path: e.path().to_path_buf(),
                    size: e.metadata().map(|m| m.len()).unwrap_or(0),
                    problem,
                });
            }
            Err(err) => handle_walk_error(root, &mut ds, err),
        }
    }
    ds.entries
        .sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    ds.classes.sort();
    ds.classes.dedup();
    ds.empty_classes = ds
        .classes
        .iter()
        .filter(|c| !ds.entries.iter().any(|e| &e.class == *c))
        .cloned()
        .collect();
    for c in &ds.empty_classes {
        ds.warnings
            .push(format!("class folder '{c}' holds no image"));
    }
    if ds.entries.is_empty() {
        return Err(Error::Dataset {
            what: format!(
                "no image found under {} (expected {}/<class>/<image>; extensions: {}); {} other file(s) skipped",
                root.display(),
                root.display(),
                IMAGE_EXTENSIONS.join(" "),
                ds.skipped.len()
            ),
        });
    }
    Ok(ds)
}

fn class_of(rel: &Path) -> String {
    rel.components()
        .next()
        .map(|c| path_to_string(Path::new(c.as_os_str())))
        .unwrap_or_default()
}

fn handle_walk_error(root: &Path, ds: &mut Dataset, err: walkdir::Error) {
    let path = err.path().map(|p| p.to_path_buf());
    let rel = path
        .as_deref()
        .map(|p| p.strip_prefix(root).unwrap_or(p).to_path_buf());
    if let Some(anc) = err.loop_ancestor() {
        ds.warnings.push(format!(
            "symbolic link loop at {} (points back to {}); not followed",
            rel.as_deref().map(path_to_string).unwrap_or_default(),
            anc.display()
        ));
        return;
    }
    let (Some(path), Some(rel)) = (path, rel) else {
        ds.warnings.push(format!("walk error: {err}"));
        return;
    };
    let dangling = std::fs::symlink_metadata(&path)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
        && std::fs::metadata(&path).is_err();
    let name = path.file_name().unwrap_or_default();
    if is_hidden(name) {
        return;
    }
    let rel_s = path_to_string(&rel);
    if rel.components().count() >= 2 && is_image_name(name) {
        let what = if dangling {
            "dangling symbolic link (target does not exist)".to_string()
        } else {
            format!(
                "cannot read: {}",
                err.io_error()
                    .map(|e| e.to_string())
                    .unwrap_or(err.to_string())
            )
        };
        ds.entries.push(Entry {
            class: class_of(&rel),
            rel: rel_s,
            path,
            size: 0,
            problem: Some(what),
        });
    } else if dangling {
        ds.warnings
            .push(format!("dangling symbolic link {rel_s} skipped"));
        ds.skipped.push(rel_s);
    } else {
        ds.warnings.push(format!("cannot read {rel_s}: {err}"));
    }
}

impl Dataset {
    /// SHA-256 over the sorted relative paths and sizes: two runs (or shards) saw the
    /// same dataset iff their fingerprints are equal.
    pub(crate) fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for e in &self.entries {
            h.update(e.rel.as_bytes());
            h.update([0]);
            h.update(e.size.to_le_bytes());
        }
        hex::encode(h.finalize())
    }

    /// Keep the entries of shard `k` of `n` (every n-th file, starting at k): balanced,
    /// deterministic, and each file in exactly one shard.
    pub(crate) fn shard(&mut self, k: usize, n: usize) {
        let all = std::mem::take(&mut self.entries);
        self.entries = all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % n == k)
            .map(|(_, e)| e)
            .collect();
    }

    /// Keep only the first `n` entries (`--limit`).
    pub(crate) fn limit(&mut self, n: usize) {
        self.entries.truncate(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn touch(p: &Path) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"x").unwrap();
    }

    #[test]
    fn walks_sorted_with_classes_skips_and_hidden() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        touch(&r.join("b/2.PNG"));
        touch(&r.join("b/sub/1.jpeg"));
        touch(&r.join("a/z.jpg"));
        touch(&r.join("a/notes.txt"));
        touch(&r.join("a/.hidden.jpg"));
        touch(&r.join(".git/x.jpg"));
        touch(&r.join("top.jpg"));
        fs::create_dir_all(r.join("empty")).unwrap();
        let ds = walk(r).unwrap();
        let rels: Vec<_> = ds.entries.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(rels, vec!["a/z.jpg", "b/2.PNG", "b/sub/1.jpeg"]);
        assert_eq!(ds.entries[2].class, "b");
        assert_eq!(ds.classes, vec!["a", "b", "empty"]);
        assert_eq!(ds.empty_classes, vec!["empty"]);
        assert_eq!(ds.skipped, vec!["a/notes.txt", "top.jpg"]);
    }

    #[test]
    fn links_dangling_and_loops_are_reported() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        touch(&r.join("a/ok.png"));
        std::os::unix::fs::symlink(r.join("missing.png"), r.join("a/gone.png")).unwrap();
        std::os::unix::fs::symlink(r.join("a"), r.join("a/loop")).unwrap();
        let ds = walk(r).unwrap();
        let gone = ds.entries.iter().find(|e| e.rel == "a/gone.png").unwrap();
        assert!(gone.problem.as_deref().unwrap().contains("dangling"));
        assert!(
            ds.warnings.iter().any(|w| w.contains("loop")),
            "{:?}",
            ds.warnings
        );
    }

    #[test]
    fn non_utf8_names_are_escaped_losslessly() {
        let p = Path::new(OsStr::from_bytes(b"a/caf\xE9.png"));
        assert_eq!(path_to_string(p), "a/caf\\xE9.png");
    }

    #[test]
    fn empty_dataset_is_an_error_and_shards_partition() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("a")).unwrap();
        assert!(walk(t.path()).unwrap_err().to_string().contains("no image"));
        for i in 0..10 {
            touch(&t.path().join(format!("a/{i}.png")));
        }
        let full = walk(t.path()).unwrap();
        let mut seen = vec![];
        for k in 0..3 {
            let mut s = full.clone();
            s.shard(k, 3);
            seen.extend(s.entries.into_iter().map(|e| e.rel));
        }
        seen.sort();
        let mut all: Vec<_> = full.entries.iter().map(|e| e.rel.clone()).collect();
        all.sort();
        assert_eq!(seen, all);
    }
}
