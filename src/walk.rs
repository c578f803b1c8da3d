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
use std::sync::Arc;

use sha2::{Digest, Sha256};
use walkdir::WalkDir;

use crate::error::{Error, Result};

/// File extensions recognised as images (compared case-insensitively).
pub(crate) const IMAGE_EXTENSIONS: &[&str] =
    &["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"];

/// One image file to score.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    /// Path relative to the dataset root, as recorded in outputs (see [`path_to_string`]).
    pub rel: String,
    /// Absolute (or root-joined) path used to read the file (shared by the entries of
    /// one container file).
    pub path: Arc<Path>,
    /// The ground-truth class (a folder's first-level folder name, a list source's
    /// label); one shared string per class (see [`Interner`]).
    pub class: Arc<str>,
    /// File size in bytes (0 when it could not be read).
    pub size: u64,
    /// A problem found while walking (e.g. a dangling symlink): the entry becomes an
    /// error row without being read.
    pub problem: Option<String>,
    /// The source's own columns for this image (a manifest's other columns); the
    /// column names are shared by all entries.
    pub extra: Box<[(Arc<str>, crate::record::Extra)]>,
    /// Where the image's bytes lie inside `path` when it is a container (a tar
    /// member of a WebDataset shard); None: `path` is the image file.
    pub member: Option<Member>,
}

/// Where an image's bytes lie inside a container file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Member {
    /// A tar member (WebDataset): its data's byte offset and length, and its extension
    /// (a decoding hint, like a file's) as an index into `wds::IMAGE_EXTS`.
    Tar { offset: u64, len: u64, ext: u8 },
    /// Row `row` of row group `group` of a Parquet file's image column (Hugging Face
    /// datasets); `ext` is the extension of the image's own path as an index into
    /// [`IMAGE_EXTENSIONS`] when it is one (a decoding hint), else `u8::MAX`.
    ParquetRow { group: u32, row: u32, ext: u8 },
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
    /// Symbolic links leading outside the root that were not followed.
    pub links_not_followed: u64,
    /// Where the list came from: "folder" (this walk), "manifest", "wds" or
    /// "hf-parquet".
    pub source: &'static str,
    /// The shared strings of the entries' classes and column names.
    pub strings: Interner,
}

/// Record a path losslessly and unambiguously as UTF-8: valid UTF-8 is kept as is
/// except that a backslash is doubled (`\\`); each byte of an invalid sequence is
/// written as `\xNN` (documented in the README). So a raw 0xFF byte (`\xFF`) and a
/// literal `\xFF` in a name (`\\xFF`) stay apart, and [`path_from_string`] inverts it.
pub(crate) fn path_to_string(p: &Path) -> String {
    let bytes = p.as_os_str().as_bytes();
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\\' {
                out.push_str("\\\\");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// The file-system path a recorded path names (the inverse of [`path_to_string`]).
pub(crate) fn path_from_string(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
                continue;
            }
            if b.get(i + 1) == Some(&b'x') {
                if let Some(v) = s
                    .get(i + 2..i + 4)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// The index in [`IMAGE_EXTENSIONS`] of `ext` (case-insensitively), else `u8::MAX`.
pub(crate) fn image_extension(ext: &str) -> u8 {
    IMAGE_EXTENSIONS
        .iter()
        .position(|x| x.eq_ignore_ascii_case(ext))
        .map_or(u8::MAX, |i| i as u8)
}

impl Member {
    /// The decoding hint: the image's extension, when known.
    pub(crate) fn ext(&self) -> Option<&'static str> {
        match self {
            Member::Tar { ext, .. } => crate::wds::IMAGE_EXTS.get(*ext as usize).copied(),
            Member::ParquetRow { ext, .. } => IMAGE_EXTENSIONS.get(*ext as usize).copied(),
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

/// Walk `root`. Fails only when the root itself is unusable or holds no image, or
/// when two files would be recorded under the same path. Symbolic links are followed
/// while they stay inside `root`; one that leads outside is followed only with
/// `follow_links` (else an image link becomes an error row and a folder link a
/// warning, both counted in [`Dataset::links_not_followed`]).
pub(crate) fn walk(root: &Path, follow_links: bool) -> Result<Dataset> {
    let meta = std::fs::metadata(root).map_err(|e| Error::Dataset {
        what: format!("cannot open dataset folder {}: {e}", root.display()),
    })?;
    if !meta.is_dir() {
        return Err(Error::Dataset {
            what: format!("{} is not a folder", root.display()),
        });
    }
    let mut ds = Dataset {
        source: "folder",
        ..Default::default()
    };
    let real_root = std::fs::canonicalize(root).map_err(|e| Error::Dataset {
        what: format!("cannot resolve dataset folder {}: {e}", root.display()),
    })?;
    // Links that lead outside the root, found before walkdir would descend into them.
    let mut outside: Vec<(PathBuf, PathBuf, bool)> = vec![];
    let walker = WalkDir::new(root)
        .follow_links(true)
        .min_depth(1)
        .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()))
        .into_iter()
        .filter_entry(|e| {
            if is_hidden(e.file_name()) {
                return false;
            }
            if follow_links || !e.path_is_symlink() {
                return true;
            }
            match std::fs::canonicalize(e.path()) {
                Ok(target) if !target.starts_with(&real_root) => {
                    outside.push((e.path().to_path_buf(), target, e.file_type().is_dir()));
                    false
                }
                _ => true,
            }
        });
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
                    class: class_of(&rel, &mut ds.strings),
                    rel: rel_s,
                    path: e.path().into(),
                    size: e.metadata().map(|m| m.len()).unwrap_or(0),
                    problem,
                    extra: Box::default(),
                    member: None,
                });
            }
            Err(err) => handle_walk_error(root, &mut ds, err),
        }
    }
    ds.links_not_followed = outside.len() as u64;
    let mut folder_links = vec![];
    for (path, target, is_dir) in outside {
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        let rel_s = path_to_string(&rel);
        let name = path.file_name().unwrap_or_default();
        if !is_dir && rel.components().count() >= 2 && is_image_name(name) {
            ds.entries.push(Entry {
                class: class_of(&rel, &mut ds.strings),
                rel: rel_s,
                path: path.into(),
                size: 0,
                problem: Some(format!(
                    "symbolic link to {}, outside the dataset folder: not followed (pass the follow_links option to follow it)",
                    target.display()
                )),
                extra: Box::default(),
                member: None,
            });
        } else {
            if is_dir && rel.components().count() == 1 {
                ds.classes.push(rel_s.clone());
            }
            folder_links.push(format!("{rel_s} -> {}", target.display()));
        }
    }
    if !folder_links.is_empty() {
        ds.warnings.push(format!(
            "{} symbolic link(s) lead outside the dataset folder and were not followed (pass the follow_links option to follow them): {}{}",
            folder_links.len(),
            folder_links.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
            if folder_links.len() > 5 { ", ..." } else { "" }
        ));
    }
    ds.entries
        .sort_unstable_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    if let Some(w) = ds.entries.windows(2).find(|w| w[0].rel == w[1].rel) {
        return Err(Error::Dataset {
            what: format!(
                "two files are recorded under the same path {} ({} and {})",
                w[0].rel,
                w[0].path.display(),
                w[1].path.display()
            ),
        });
    }
    ds.classes.sort();
    ds.classes.dedup();
    ds.empty_classes = ds
        .classes
        .iter()
        .filter(|c| !ds.entries.iter().any(|e| &*e.class == c.as_str()))
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

fn class_of(rel: &Path, classes: &mut Interner) -> Arc<str> {
    classes.get(
        &rel.components()
            .next()
            .map(|c| path_to_string(Path::new(c.as_os_str())))
            .unwrap_or_default(),
    )
}

/// One shared string per distinct value (class names, column names): a dataset of a
/// million entries holds each class name once, not a million times.
#[derive(Debug, Clone, Default)]
pub(crate) struct Interner(std::collections::HashMap<String, Arc<str>>);

impl Interner {
    pub(crate) fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = s.into();
        self.0.insert(s.to_string(), a.clone());
        a
    }
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
            class: class_of(&rel, &mut ds.strings),
            rel: rel_s,
            path: path.into(),
            size: 0,
            problem: Some(what),
            extra: Box::default(),
            member: None,
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
    /// SHA-256 over the sorted relative paths and sizes (and, for a manifest, the labels
    /// and carried values): two runs (or shards) saw the same dataset iff their
    /// fingerprints are equal.
    pub(crate) fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for e in &self.entries {
            h.update(e.rel.as_bytes());
            h.update([0]);
            h.update(e.size.to_le_bytes());
            // A folder's labels and nothing else are in its paths; a manifest's are not.
            if self.source != "folder" {
                h.update(e.class.as_bytes());
                h.update([0]);
                for (k, v) in &e.extra {
                    h.update(k.as_bytes());
                    h.update([0]);
                    h.update(v.display().as_bytes());
                    h.update([0]);
                }
            }
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

    /// Sort the entries by path (byte order) and derive the class list from their
    /// labels: how a list-kind source (manifest, WebDataset) finishes its dataset.
    pub(crate) fn sort_and_collect_classes(&mut self) {
        self.entries
            .sort_unstable_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
        self.collect_classes();
    }

    /// The sorted, distinct labels of the entries that have one.
    pub(crate) fn collect_classes(&mut self) {
        self.classes = self
            .entries
            .iter()
            .filter(|e| !e.class.is_empty())
            .map(|e| e.class.to_string())
            .collect();
        self.classes.sort();
        self.classes.dedup();
    }

    /// Give every entry the same carried columns, in the same order, each of one type:
    /// the columns are the union over the entries (in order of first appearance; a
    /// missing value is null), and a column whose values mix types becomes float (ints
    /// and floats) or text (anything else). Sources whose rows may differ (several
    /// Parquet files, WebDataset JSON) call it, so the predictions table has one schema.
    pub(crate) fn normalize_extras(&mut self) {
        use crate::record::Extra;
        let mut names: Vec<Arc<str>> = vec![];
        let mut kinds: Vec<u8> = vec![];
        for e in &self.entries {
            for (n, v) in &e.extra {
                let k = match v {
                    Extra::Null => 0,
                    Extra::Bool(_) => 1,
                    Extra::Int(_) => 2,
                    Extra::Float(_) => 3,
                    Extra::Str(_) => 4,
                };
                let j = match names.iter().position(|x| x == n) {
                    Some(j) => j,
                    None => {
                        names.push(n.clone());
                        kinds.push(0);
                        names.len() - 1
                    }
                };
                kinds[j] = match (kinds[j], k) {
                    (a, 0) => a,
                    (0, b) => b,
                    (a, b) if a == b => a,
                    (2, 3) | (3, 2) => 3,
                    _ => 4,
                };
            }
        }
        for e in &mut self.entries {
            let same = e.extra.len() == names.len()
                && e.extra.iter().zip(&names).all(|((n, _), m)| n == m);
            let mut old = std::mem::take(&mut e.extra);
            e.extra = names
                .iter()
                .zip(&kinds)
                .enumerate()
                .map(|(j, (n, &k))| {
                    let v = if same {
                        std::mem::replace(&mut old[j].1, Extra::Null)
                    } else {
                        old.iter_mut()
                            .find(|(m, _)| m == n)
                            .map(|(_, v)| std::mem::replace(v, Extra::Null))
                            .unwrap_or(Extra::Null)
                    };
                    let v = match (k, v) {
                        (_, Extra::Null) => Extra::Null,
                        (3, Extra::Int(i)) => Extra::Float(i as f64),
                        (4, v @ Extra::Str(_)) => v,
                        (4, v) => Extra::Str(v.display()),
                        (_, v) => v,
                    };
                    (n.clone(), v)
                })
                .collect();
        }
    }

    /// Keep only the first `n` entries (`--limit`).
    pub(crate) fn limit(&mut self, n: usize) {
        self.entries.truncate(n);
    }

    /// Keep a stratified sample of `n` entries (`--sample N --seed S`): each class
    /// gets its share of `n` in proportion to its size (largest remainder, ties to
    /// the smaller class name), at least one image per class while `n` allows; within
    /// a class the images with the smallest SHA-256 of (seed, path) are taken. The
    /// sample depends only on the paths, `n` and the seed, and the entries stay in
    /// path order.
    pub(crate) fn sample(&mut self, n: usize, seed: u64) {
        if n >= self.entries.len() {
            return;
        }
        let mut by_class: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
        for (i, e) in self.entries.iter().enumerate() {
            by_class.entry(&*e.class).or_default().push(i);
        }
        let total = self.entries.len();
        let classes: Vec<(&str, usize)> = by_class.iter().map(|(c, v)| (*c, v.len())).collect();
        // Floor shares, then the remaining slots by largest remainder.
        let mut take: Vec<usize> = classes.iter().map(|&(_, k)| k * n / total).collect();
        if n >= classes.len() {
            for t in take.iter_mut() {
                *t = (*t).max(1);
            }
        }
        let mut left = n.saturating_sub(take.iter().sum());
        let mut order: Vec<usize> = (0..classes.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse((classes[i].1 * n) % total));
        while left > 0 {
            let mut gave = false;
            for &i in &order {
                if left > 0 && take[i] < classes[i].1 {
                    take[i] += 1;
                    left -= 1;
                    gave = true;
                }
            }
            if !gave {
                break;
            }
        }
        // Shares above n (the at-least-one rule) come off the largest classes.
        let mut over = take.iter().sum::<usize>().saturating_sub(n);
        while over > 0 {
            let Some(i) = (0..take.len())
                .filter(|&i| take[i] > 1)
                .max_by_key(|&i| (take[i], std::cmp::Reverse(i)))
            else {
                break;
            };
            take[i] -= 1;
            over -= 1;
        }
        let mut keep = vec![false; total];
        for ((_, idx), &t) in by_class.iter().zip(&take) {
            let mut ranked: Vec<(Vec<u8>, usize)> = idx
                .iter()
                .map(|&i| {
                    let mut h = Sha256::new();
                    h.update(seed.to_le_bytes());
                    h.update(self.entries[i].rel.as_bytes());
                    (h.finalize().to_vec(), i)
                })
                .collect();
            ranked.sort();
            for (_, i) in ranked.into_iter().take(t) {
                keep[i] = true;
            }
        }
        let all = std::mem::take(&mut self.entries);
        self.entries = all
            .into_iter()
            .zip(keep)
            .filter_map(|(e, k)| k.then_some(e))
            .collect();
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
        let ds = walk(r, false).unwrap();
        let rels: Vec<_> = ds.entries.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(rels, vec!["a/z.jpg", "b/2.PNG", "b/sub/1.jpeg"]);
        assert_eq!(&*ds.entries[2].class, "b");
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
        let ds = walk(r, false).unwrap();
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
        // A literal backslash sequence stays apart from the escaped byte.
        let lit = Path::new("a/caf\\xE9.png");
        assert_eq!(path_to_string(lit), "a/caf\\\\xE9.png");
        for raw in [
            &b"a/caf\xE9.png"[..],
            b"a/caf\\xE9.png",
            b"a/\\\\x\xff\\",
            b"plain/\xc3\xa9.png",
        ] {
            let p = Path::new(OsStr::from_bytes(raw));
            assert_eq!(path_from_string(&path_to_string(p)), p, "{raw:?}");
        }
    }

    #[test]
    fn raw_byte_and_literal_escape_siblings_are_both_scored() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        fs::create_dir_all(&a).unwrap();
        fs::write(a.join(OsStr::from_bytes(b"x\xFF.png")), b"1").unwrap();
        fs::write(a.join("x\\xFF.png"), b"2").unwrap();
        let ds = walk(t.path(), false).unwrap();
        assert_eq!(ds.entries.len(), 2);
        assert_ne!(ds.entries[0].rel, ds.entries[1].rel);
    }

    #[test]
    fn links_leaving_the_root_are_not_followed_unless_asked() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("data");
        let elsewhere = t.path().join("elsewhere");
        touch(&r.join("a/in.png"));
        touch(&elsewhere.join("x.png"));
        touch(&elsewhere.join("sub/y.png"));
        std::os::unix::fs::symlink(elsewhere.join("x.png"), r.join("a/out.png")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, r.join("b")).unwrap();
        std::os::unix::fs::symlink(r.join("a/in.png"), r.join("a/inside.png")).unwrap();
        let ds = walk(&r, false).unwrap();
        let rels: Vec<_> = ds.entries.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(rels, vec!["a/in.png", "a/inside.png", "a/out.png"]);
        assert!(ds.entries[1].problem.is_none());
        assert!(ds.entries[2]
            .problem
            .as_deref()
            .unwrap()
            .contains("not followed"));
        assert_eq!(ds.links_not_followed, 2);
        assert!(
            ds.warnings.iter().any(|w| w.contains("b -> ")),
            "{:?}",
            ds.warnings
        );
        assert_eq!(ds.classes, vec!["a", "b"]);
        let ds = walk(&r, true).unwrap();
        let rels: Vec<_> = ds.entries.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(
            rels,
            vec![
                "a/in.png",
                "a/inside.png",
                "a/out.png",
                "b/sub/y.png",
                "b/x.png"
            ]
        );
        assert!(ds.entries.iter().all(|e| e.problem.is_none()));
        assert_eq!(ds.links_not_followed, 0);
    }

    #[test]
    fn sample_is_stratified_deterministic_and_sorted() {
        let t = tempfile::tempdir().unwrap();
        // 60 / 30 / 10 images, a class per tenth of the alphabet.
        for (c, k) in [("a", 60), ("b", 30), ("c", 10)] {
            for i in 0..k {
                touch(&t.path().join(format!("{c}/{i:03}.png")));
            }
        }
        let full = walk(t.path(), false).unwrap();
        let count = |d: &Dataset, c: &str| d.entries.iter().filter(|e| &*e.class == c).count();
        let mut s = full.clone();
        s.sample(20, 7);
        assert_eq!(s.entries.len(), 20);
        assert_eq!((count(&s, "a"), count(&s, "b"), count(&s, "c")), (12, 6, 2));
        assert!(s.entries.windows(2).all(|w| w[0].rel < w[1].rel));
        let mut again = full.clone();
        again.sample(20, 7);
        assert_eq!(s.entries, again.entries);
        let mut other = full.clone();
        other.sample(20, 8);
        assert_ne!(s.entries, other.entries);
        // Every class is represented while n allows, and n is exact.
        let mut tiny = full.clone();
        tiny.sample(3, 0);
        assert_eq!(
            (count(&tiny, "a"), count(&tiny, "b"), count(&tiny, "c")),
            (1, 1, 1)
        );
        let mut five = full.clone();
        five.sample(5, 0);
        assert_eq!(five.entries.len(), 5);
        assert!(count(&five, "c") >= 1);
        let mut all = full.clone();
        all.sample(1000, 0);
        assert_eq!(all.entries, full.entries);
    }

    #[test]
    fn empty_dataset_is_an_error_and_shards_partition() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("a")).unwrap();
        assert!(walk(t.path(), false)
            .unwrap_err()
            .to_string()
            .contains("no image"));
        for i in 0..10 {
            touch(&t.path().join(format!("a/{i}.png")));
        }
        let full = walk(t.path(), false).unwrap();
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
