//! Stage 1 for WebDataset shards: `*.tar` files read in place (no extraction).
//!
//! Why it exists: large evaluation corpora are kept as WebDataset tar shards, and a user
//! must not have to unpack them to evaluate. A shard is streamed once to list its
//! samples (the members sharing a key: the member name up to the first dot of its base
//! name, as `webdataset` groups them); each image's bytes are later read from the tar at
//! the member's data offset. The label comes from `KEY.cls` (an integer class id, mapped
//! through the model's labels), else `KEY.txt` (a class name or id), else `KEY.json`
//! (`{"label": ...}` or a bare value). Row paths are `SHARD#KEY`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::walk::{Dataset, Entry, Member};

/// Image member extensions, in the order one is preferred when a sample has several.
pub(crate) const IMAGE_EXTS: &[&str] = &["jpg", "jpeg", "png", "webp"];
/// Label members larger than this are not a label.
const MAX_LABEL_BYTES: u64 = 4096;
/// `KEY.json` (a label and metadata) larger than this is not read.
const MAX_JSON_BYTES: u64 = 1 << 20;

/// The shards named by `arg`: one `.tar` file, or every `*.tar` in a folder, sorted.
pub(crate) fn shards(arg: &Path) -> Result<Vec<PathBuf>> {
    if arg.is_file() {
        return Ok(vec![arg.to_path_buf()]);
    }
    let rd = std::fs::read_dir(arg).map_err(|e| Error::Dataset {
        what: format!("cannot open {}: {e}", arg.display()),
    })?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x.eq_ignore_ascii_case("tar")))
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(Error::Dataset {
            what: format!("{} holds no .tar shard", arg.display()),
        });
    }
    Ok(v)
}

/// True when `arg` is a `.tar` file or a folder holding `.tar` files and no folder.
pub(crate) fn looks_like_wds(arg: &Path) -> bool {
    if arg.is_file() {
        return arg
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("tar"));
    }
    let Ok(rd) = std::fs::read_dir(arg) else {
        return false;
    };
    let mut any = false;
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            return false;
        }
        any |= p.extension().is_some_and(|x| x.eq_ignore_ascii_case("tar"));
    }
    any
}

#[derive(Default)]
struct Sample {
    image: Option<(usize, u64, u64)>,
    label: Option<String>,
    /// Which member gave the label (its rank in cls, txt, json).
    label_rank: usize,
    label_problem: Option<String>,
    /// The other keys of `KEY.json`, carried as columns.
    meta: Vec<(String, crate::record::Extra)>,
}

/// The keys of a `KEY.json` object other than `label`, as carried values (numbers,
/// booleans, text; arrays and objects as their JSON text).
fn json_meta(text: &str) -> Vec<(String, crate::record::Extra)> {
    use crate::record::Extra;
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(text) else {
        return vec![];
    };
    m.into_iter()
        .filter(|(k, _)| k != "label")
        .map(|(k, v)| {
            let x = match v {
                serde_json::Value::Null => Extra::Null,
                serde_json::Value::Bool(b) => Extra::Bool(b),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => Extra::Int(i),
                    None => Extra::Float(n.as_f64().unwrap_or(f64::NAN)),
                },
                serde_json::Value::String(s) => Extra::Str(s),
                other => Extra::Str(other.to_string()),
            };
            (k, x)
        })
        .collect()
}

fn label_from(ext: &str, text: &str) -> std::result::Result<String, String> {
    let t = text.trim();
    match ext {
        "cls" => t
            .parse::<usize>()
            .map(|i| i.to_string())
            .map_err(|_| format!("KEY.cls holds '{t}', not a class id")),
        "txt" => Ok(t.to_string()),
        _ => {
            let v: serde_json::Value =
                serde_json::from_str(t).map_err(|e| format!("KEY.json is not JSON: {e}"))?;
            let v = v.get("label").cloned().unwrap_or(v);
            match v {
                serde_json::Value::String(s) => Ok(s),
                serde_json::Value::Number(n) => Ok(n.to_string()),
                other => Err(format!("KEY.json label is {other}, not a name or id")),
            }
        }
    }
}

/// List the samples of every shard as entries (sorted by `SHARD#KEY`).
pub(crate) fn read(arg: &Path) -> Result<Dataset> {
    let mut ds = Dataset {
        source: "wds",
        ..Default::default()
    };
    for shard in shards(arg)? {
        let name = shard
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bad = |what: String| Error::Dataset {
            what: format!("{}: {what}", shard.display()),
        };
        let f = std::fs::File::open(&shard).map_err(|e| Error::io(&shard, e))?;
        let shared: std::sync::Arc<Path> = shard.as_path().into();
        let mut archive = tar::Archive::new(f);
        let mut samples: BTreeMap<String, Sample> = BTreeMap::new();
        for m in archive
            .entries()
            .map_err(|e| bad(format!("not a tar file: {e}")))?
        {
            let mut m = m.map_err(|e| {
                bad(format!(
                    "truncated or corrupt after {} sample(s) ({e}); nothing was scored: re-copy or re-write the shard",
                    samples.len()
                ))
            })?;
            if !m.header().entry_type().is_file() {
                continue;
            }
            let path = m
                .path()
                .map_err(|e| bad(format!("bad member name: {e}")))?
                .to_string_lossy()
                .into_owned();
            let (dir, base) = match path.rsplit_once('/') {
                Some((d, b)) => (format!("{d}/"), b.to_string()),
                None => (String::new(), path.clone()),
            };
            if base.starts_with('.') {
                continue;
            }
            let Some((stem, ext)) = base.split_once('.') else {
                ds.skipped.push(format!("{name}#{path}"));
                continue;
            };
            let key = format!("{dir}{stem}");
            let ext = ext.to_ascii_lowercase();
            let s = samples.entry(key).or_default();
            let size = m.size();
            if let Some(ext) = IMAGE_EXTS.iter().position(|x| *x == ext) {
                let better = s.image.as_ref().is_none_or(|(e, _, _)| ext < *e);
                if better {
                    s.image = Some((ext, m.raw_file_position(), size));
                }
            } else if matches!(ext.as_str(), "cls" | "txt" | "json") {
                let rank = ["cls", "txt", "json"]
                    .iter()
                    .position(|x| *x == ext)
                    .expect("one of three");
                // JSON is read for its metadata even when a better label member exists.
                if s.label.is_some() && rank > s.label_rank && ext != "json" {
                    continue;
                }
                let limit = if ext == "json" {
                    MAX_JSON_BYTES
                } else {
                    MAX_LABEL_BYTES
                };
                if size > limit {
                    s.label_problem = Some(format!("label member {path} is {size} bytes"));
                    continue;
                }
                let mut text = String::new();
                if let Err(e) = m.read_to_string(&mut text) {
                    s.label_problem = Some(format!("cannot read {path}: {e}"));
                    continue;
                }
                if ext == "json" {
                    s.meta = json_meta(&text);
                }
                if s.label.is_some() && rank > s.label_rank {
                    continue;
                }
                match label_from(&ext, &text) {
                    Ok(l) => {
                        s.label = Some(l);
                        s.label_rank = rank;
                        s.label_problem = None;
                    }
                    Err(e) => {
                        if s.label.is_none() {
                            s.label_problem = Some(e);
                        }
                    }
                }
            } else {
                ds.skipped.push(format!("{name}#{path}"));
            }
        }
        for (key, s) in samples {
            let rel = format!("{name}#{key}");
            let Some((ext, offset, len)) = s.image else {
                ds.skipped.push(rel);
                continue;
            };
            let problem =
                if s.label.is_none() {
                    Some(s.label_problem.unwrap_or_else(|| {
                        "the sample has no label (KEY.cls, .txt or .json)".into()
                    }))
                } else {
                    None
                };
            ds.entries.push(Entry {
                rel,
                path: shared.clone(),
                class: ds.strings.get(&s.label.unwrap_or_default()),
                size: len,
                problem,
                extra: s
                    .meta
                    .into_iter()
                    .map(|(n, v)| (ds.strings.get(&n), v))
                    .collect(),
                member: Some(Member::Tar {
                    offset,
                    len,
                    ext: ext as u8,
                }),
            });
        }
    }
    if ds.entries.is_empty() {
        return Err(Error::Dataset {
            what: format!("no image sample in {}", arg.display()),
        });
    }
    ds.normalize_extras();
    ds.sort_and_collect_classes();
    if let Some(w) = ds.entries.windows(2).find(|w| w[0].rel == w[1].rel) {
        return Err(Error::Dataset {
            what: format!("two samples share the key {}", w[0].rel),
        });
    }
    Ok(ds)
}

/// The bytes of a tar member, read in place (at most `max` bytes, else an error).
pub(crate) fn read_member(
    shard: &Path,
    offset: u64,
    len: u64,
    max: u64,
) -> std::result::Result<Vec<u8>, String> {
    crate::preprocess::read_range_bounded(shard, offset, len, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_grouped_by_key_with_labels_and_offsets() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("s.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&p).unwrap());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        };
        add("a.png", b"PNGDATA-A");
        add("a.cls", b"3\n");
        add("b.jpg", b"JPG-B");
        add("b.json", br#"{"label": "cat", "site": "north", "n": 2}"#);
        add("c.png", b"C");
        add("d.cls", b"1");
        add("e.png", b"E");
        add("e.cls", b"x");
        b.finish().unwrap();
        drop(b);
        let ds = read(&p).unwrap();
        let rels: Vec<&str> = ds.entries.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(rels, ["s.tar#a", "s.tar#b", "s.tar#c", "s.tar#e"]);
        assert_eq!(&*ds.entries[0].class, "3");
        assert_eq!(&*ds.entries[1].class, "cat");
        // JSON keys other than the label are carried, the same columns on every sample.
        use crate::record::Extra;
        let col = |i: usize, k: &str| {
            ds.entries[i]
                .extra
                .iter()
                .find(|(n, _)| &**n == k)
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(col(1, "site"), Extra::Str("north".into()));
        assert_eq!(col(1, "n"), Extra::Int(2));
        assert_eq!(col(0, "site"), Extra::Null);
        assert!(ds.entries.iter().all(|e| e.extra.len() == 2));
        assert!(ds.entries[2]
            .problem
            .as_deref()
            .unwrap()
            .contains("no label"));
        assert!(ds.entries[3]
            .problem
            .as_deref()
            .unwrap()
            .contains("not a class id"));
        assert_eq!(ds.skipped, vec!["s.tar#d"]);
        let Some(Member::Tar { offset, len, .. }) = ds.entries[0].member.clone() else {
            panic!("a tar member")
        };
        assert_eq!(read_member(&p, offset, len, 1 << 20).unwrap(), b"PNGDATA-A");
        assert!(read_member(&p, offset, len, 3).is_err());
    }
}
