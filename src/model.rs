//! What a user hands us as `--model`: a bare `.onnx` file or a model folder as
//! `optimum-cli export onnx` (or `vit-batch export`) writes it, and how its labels map
//! onto the dataset's class folders.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::preprocess::PreprocessConfig;

/// A resolved model: the graph file, its labels and its preprocessing.
#[derive(Debug, Clone)]
pub(crate) struct ModelBundle {
    pub onnx: PathBuf,
    /// Class names by id (from `config.json`'s `id2label`), if the folder has one.
    pub labels: Option<Vec<String>>,
    /// `label2id` from `config.json` (name -> id), possibly with other spellings.
    pub label2id: BTreeMap<String, usize>,
    /// The preprocessing from `preprocessor_config.json`, or `None` for a bare model
    /// (the caller then derives ImageNet defaults from the model's input size).
    pub preprocess: Option<PreprocessConfig>,
    /// `patch_size` from `config.json`, to lay attention outputs onto the image.
    pub patch_size: Option<usize>,
    pub sha256: String,
}

impl ModelBundle {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let (onnx, dir) = if path.is_dir() {
            (path.join("model.onnx"), Some(path.to_path_buf()))
        } else {
            let dir = path.parent().map(Path::to_path_buf);
            (
                path.to_path_buf(),
                dir.filter(|d| {
                    d.join("config.json").is_file()
                        && path.file_name() == Some("model.onnx".as_ref())
                }),
            )
        };
        if !onnx.is_file() {
            return Err(Error::Model {
                what: format!(
                    "{} not found (the model option takes a .onnx file or a folder holding model.onnx, config.json, preprocessor_config.json)",
                    onnx.display()
                ),
            });
        }
        let mut labels = None;
        let mut label2id = BTreeMap::new();
        let mut preprocess = None;
        let mut patch_size = None;
        if let Some(dir) = dir {
            let cfg_path = dir.join("config.json");
            if cfg_path.is_file() {
                let text =
                    std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
                let cfg =
                    crate::preprocess::model_config::parse_model_config(&text).map_err(|e| {
                        Error::Model {
                            what: format!("{}: {e}", cfg_path.display()),
                        }
                    })?;
                labels = cfg.labels;
                label2id = cfg.label2id;
                patch_size = cfg.patch_size;
            }
            let pp = dir.join("preprocessor_config.json");
            if pp.is_file() {
                preprocess = Some(PreprocessConfig::from_file(&pp)?);
            } else if pp.symlink_metadata().is_ok() {
                return Err(Error::Model {
                    what: format!("{} is not a readable file (a dangling link?)", pp.display()),
                });
            }
        }
        Ok(ModelBundle {
            sha256: model_sha256(&onnx)?,
            onnx,
            labels,
            label2id,
            preprocess,
            patch_size,
        })
    }
}

/// The model's SHA-256: that of `model.onnx` alone when the graph holds all its
/// weights; for a graph with external data (`model.onnx` + `model.onnx_data`, what
/// optimum writes for models over 2 GB), the SHA-256 of the `sha256sum`-style lines
/// `<sha256>  <name>\n` of `model.onnx` and then of every external-data file it
/// references, sorted by name. So changing any weights file changes the hash.
pub(crate) fn model_sha256(onnx: &Path) -> Result<String> {
    let files = external_data_files(onnx)?;
    let own = sha256_file(onnx)?;
    if files.is_empty() {
        return Ok(own);
    }
    let name = onnx
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(format!("{own}  {name}\n"));
    let dir = onnx.parent().unwrap_or(Path::new(""));
    for f in &files {
        h.update(format!("{}  {f}\n", sha256_file(&dir.join(f))?));
    }
    Ok(hex::encode(h.finalize()))
}

/// The external-data files (`location` of tensors stored outside the graph) that the
/// ONNX model `onnx` references, sorted and deduplicated, as relative paths inside
/// its folder. A location that is absolute, leaves the folder (`..`) or names no
/// regular file is an error: ONNX Runtime would otherwise read weights from
/// elsewhere, or fail later with a less clear message.
pub(crate) fn external_data_files(onnx: &Path) -> Result<Vec<String>> {
    use prost::Message;
    let bytes = std::fs::read(onnx).map_err(|e| Error::io(onnx, e))?;
    let Ok(model) = crate::onnx::ModelProto::decode(bytes.as_slice()) else {
        // Not ONNX: the engine reports that with ONNX Runtime's own message.
        return Ok(vec![]);
    };
    drop(bytes);
    let mut locations = std::collections::BTreeSet::new();
    if let Some(g) = &model.graph {
        graph_locations(g, &mut locations);
    }
    for t in &model.training_info {
        for g in [&t.initialization, &t.algorithm].into_iter().flatten() {
            graph_locations(g, &mut locations);
        }
    }
    let dir = onnx.parent().unwrap_or(Path::new(""));
    let bad = |loc: &str, why: &str| {
        Error::Model {
        what: format!(
            "{}: external-data file '{loc}' {why} (external data must be a file in the model's folder, {})",
            onnx.display(),
            if dir.as_os_str().is_empty() { Path::new(".") } else { dir }.display()
        ),
    }
    };
    for loc in &locations {
        let p = Path::new(loc);
        if loc.is_empty() {
            return Err(bad(loc, "has an empty location"));
        }
        if p.is_absolute() || p.has_root() {
            return Err(bad(loc, "is an absolute path"));
        }
        if p.components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        }) {
            return Err(bad(loc, "leaves the model's folder ('..')"));
        }
        let full = dir.join(p);
        if !full.is_file() {
            return Err(bad(loc, "is missing (or not a regular file)"));
        }
        // A link inside the folder may still point out of it.
        let (Ok(real), Ok(real_dir)) = (
            full.canonicalize(),
            if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }
            .canonicalize(),
        ) else {
            return Err(bad(loc, "cannot be resolved"));
        };
        if !real.starts_with(&real_dir) {
            return Err(bad(loc, "is a link that leaves the model's folder"));
        }
    }
    Ok(locations.into_iter().collect())
}

/// Collect the `location` of every externally stored tensor of `g`: initializers,
/// tensor attributes and, recursively, subgraphs (If / Loop / Scan bodies).
fn graph_locations(g: &crate::onnx::GraphProto, out: &mut std::collections::BTreeSet<String>) {
    use crate::onnx::tensor_proto::DataLocation;
    let mut tensor = |t: &crate::onnx::TensorProto| {
        if t.data_location == Some(DataLocation::External as i32) {
            for kv in &t.external_data {
                if kv.key.as_deref() == Some("location") {
                    out.insert(kv.value.clone().unwrap_or_default());
                }
            }
        }
    };
    let mut subgraphs = vec![];
    for t in &g.initializer {
        tensor(t);
    }
    for s in &g.sparse_initializer {
        for t in [&s.values, &s.indices].into_iter().flatten() {
            tensor(t);
        }
    }
    for n in &g.node {
        for a in &n.attribute {
            if let Some(t) = &a.t {
                tensor(t);
            }
            for t in &a.tensors {
                tensor(t);
            }
            subgraphs.extend(a.g.iter());
            subgraphs.extend(a.graphs.iter());
        }
    }
    for sg in subgraphs {
        graph_locations(sg, out);
    }
}

pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Read a `--label-map` CSV of `folder,label` rows, parsed as CSV (quoted fields
/// may hold commas; a UTF-8 byte-order mark is dropped). A header row `folder,label`
/// is allowed and `#` starts a comment line. A folder named twice is an error (which
/// of the two would win is a guess); so is a row without exactly two fields.
pub(crate) fn read_label_map(path: &Path) -> Result<BTreeMap<String, String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let bad = |line: u64, what: String| Error::Config {
        what: format!("{}:{line}: {what}", path.display()),
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(body);
    // folder -> (label, line it was mapped on)
    let mut rows: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut first = true;
    for (i, rec) in reader.byte_records().enumerate() {
        let rec = rec.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            bad(line, format!("not valid CSV: {e}"))
        })?;
        let line = rec.position().map(|p| p.line()).unwrap_or(i as u64 + 1);
        let fields: Vec<&[u8]> = rec.iter().collect();
        if fields.iter().all(|f| f.is_empty()) {
            continue;
        }
        let text = |f: &[u8]| {
            std::str::from_utf8(f)
                .map(str::to_string)
                .map_err(|_| bad(line, "not valid UTF-8".to_string()))
        };
        if fields.len() != 2 || fields[0].is_empty() || fields[1].is_empty() {
            return Err(bad(
                line,
                format!(
                    "expected two fields `folder,label`, got {} ({})",
                    fields.len(),
                    String::from_utf8_lossy(rec.as_slice())
                ),
            ));
        }
        let (folder, label) = (text(fields[0])?, text(fields[1])?);
        let header = std::mem::replace(&mut first, false)
            && folder.eq_ignore_ascii_case("folder")
            && label.eq_ignore_ascii_case("label");
        if header {
            continue;
        }
        if let Some((_, prev)) = rows.get(&folder) {
            return Err(bad(
                line,
                format!("folder '{folder}' is mapped twice (first on line {prev})"),
            ));
        }
        rows.insert(folder, (label, line));
    }
    Ok(rows.into_iter().map(|(f, (l, _))| (f, l)).collect())
}

/// How each dataset class maps to a model class id.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LabelMapping {
    /// Model class names by id.
    pub model_labels: Vec<String>,
    /// Dataset class folder -> model id (absent: unmapped).
    pub class_to_id: BTreeMap<String, usize>,
    /// Dataset classes that match no model label.
    pub unmapped: Vec<String>,
    /// How each mapped class was matched: "name", "label2id" or "label-map".
    pub matched_by: BTreeMap<String, String>,
}

/// Match dataset classes to model labels: an explicit `--label-map` entry wins, then
/// the exact label name, then `label2id`. No match at all is an error showing both
/// lists.
pub(crate) fn map_labels(
    classes: &[String],
    model_labels: &[String],
    label2id: &BTreeMap<String, usize>,
    label_map: Option<&BTreeMap<String, String>>,
) -> Result<LabelMapping> {
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    // Names that `id2label` gives to more than one id: matching a folder to one of
    // them by name would pick an id at random, so it needs a label map naming the id.
    let mut ambiguous: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, l) in model_labels.iter().enumerate() {
        if let Some(&first) = by_name.get(l.as_str()) {
            ambiguous
                .entry(l.as_str())
                .or_insert_with(|| vec![first])
                .push(i);
        } else {
            by_name.insert(l.as_str(), i);
        }
    }
    if let Some(lm) = label_map {
        let stray: Vec<&str> = lm
            .keys()
            .filter(|f| !classes.contains(f))
            .map(String::as_str)
            .collect();
        if !stray.is_empty() {
            return Err(Error::Config {
                what: format!(
                    "the label map names {} folder(s) that are not class folders of the dataset: {} (dataset classes: {}); fix the map (a typo, stray quotes or spaces?)",
                    stray.len(),
                    stray.iter().take(10).map(|f| format!("'{f}'")).collect::<Vec<_>>().join(", "),
                    classes.iter().take(10).map(String::as_str).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    let check_unique = |c: &str, name: &str| -> Result<()> {
        match ambiguous.get(name) {
            Some(ids) => Err(Error::Model {
                what: format!(
                    "folder '{c}' matches label '{name}', which id2label gives to ids {}; map the folder to one id with a label map (`{c},<id>`)",
                    ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
                ),
            }),
            None => Ok(()),
        }
    };
    let mut m = LabelMapping {
        model_labels: model_labels.to_vec(),
        class_to_id: BTreeMap::new(),
        unmapped: vec![],
        matched_by: BTreeMap::new(),
    };
    for c in classes {
        let explicit = label_map.and_then(|lm| lm.get(c));
        let found = if let Some(target) = explicit {
            if target.parse::<usize>().is_err() {
                check_unique(c, target)?;
            }
            let id = by_name
                .get(target.as_str())
                .copied()
                .or_else(|| label2id.get(target).copied())
                .or_else(|| {
                    target
                        .parse::<usize>()
                        .ok()
                        .filter(|i| *i < model_labels.len())
                });
            match id {
                Some(id) => Some((id, "label-map")),
                None => {
                    return Err(Error::Config {
                        what: format!(
                        "the label map maps folder '{c}' to '{target}', which is not a model label"
                    ),
                    })
                }
            }
        } else if let Some(&id) = by_name.get(c.as_str()) {
            check_unique(c, c)?;
            Some((id, "name"))
        } else {
            label2id
                .get(c)
                .filter(|i| **i < model_labels.len())
                .map(|&id| (id, "label2id"))
        };
        match found {
            Some((id, how)) => {
                m.class_to_id.insert(c.clone(), id);
                m.matched_by.insert(c.clone(), how.into());
            }
            None => m.unmapped.push(c.clone()),
        }
    }
    if m.class_to_id.is_empty() {
        let show = |v: &[String]| {
            let mut s: Vec<&str> = v.iter().take(20).map(String::as_str).collect();
            if v.len() > 20 {
                s.push("...");
            }
            s.join(", ")
        };
        return Err(Error::Model {
            what: format!(
                "no dataset class matches a model label.\n  dataset classes ({}): {}\n  model labels ({}): {}\nmap them with a label map: {} FILE (CSV `folder,label`)",
                classes.len(),
                show(classes),
                model_labels.len(),
                show(model_labels),
                crate::error::option_name("label_map")
            ),
        });
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn matching_order_and_errors() {
        let labels = s(&["cat", "dog", "tench"]);
        let mut l2i = BTreeMap::new();
        l2i.insert("n01440764".to_string(), 2);
        let mut lm = BTreeMap::new();
        lm.insert("kitty".to_string(), "cat".to_string());
        let m = map_labels(
            &s(&["dog", "kitty", "n01440764", "zebra"]),
            &labels,
            &l2i,
            Some(&lm),
        )
        .unwrap();
        assert_eq!(m.class_to_id["dog"], 1);
        assert_eq!(m.class_to_id["kitty"], 0);
        assert_eq!(m.class_to_id["n01440764"], 2);
        assert_eq!(m.matched_by["n01440764"], "label2id");
        assert_eq!(m.unmapped, vec!["zebra"]);
        let err = map_labels(&s(&["x", "y"]), &labels, &BTreeMap::new(), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dataset classes (2): x, y")
                && err.contains("model labels (3): cat, dog, tench"),
            "{err}"
        );
    }

    #[test]
    fn label_map_rows_naming_no_folder_and_ambiguous_names_fail() {
        let labels = s(&["cat", "crane", "crane"]);
        let none = BTreeMap::new();
        let mut lm = BTreeMap::new();
        lm.insert("ktty".to_string(), "cat".to_string());
        let err = map_labels(&s(&["kitty"]), &labels, &none, Some(&lm))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("'ktty'") && err.contains("not class folders"),
            "{err}"
        );
        // A folder named like a duplicated label: refused, naming both ids.
        let err = map_labels(&s(&["cat", "crane"]), &labels, &none, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("ids 1, 2"), "{err}");
        // ...unless a label map names the id.
        let mut lm = BTreeMap::new();
        lm.insert("crane".to_string(), "2".to_string());
        let m = map_labels(&s(&["cat", "crane"]), &labels, &none, Some(&lm)).unwrap();
        assert_eq!(m.class_to_id["crane"], 2);
        // Mapping to the ambiguous name itself does not disambiguate.
        lm.insert("crane".to_string(), "crane".to_string());
        assert!(map_labels(&s(&["crane"]), &labels, &none, Some(&lm)).is_err());
    }

    #[test]
    fn label_map_is_real_csv() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("m.csv");
        std::fs::write(
            &p,
            b"\xEF\xBB\xBFfolder,label\n# comment\n\"a, b\",\"cat\"\n\n  dog , 1 \n",
        )
        .unwrap();
        let m = read_label_map(&p).unwrap();
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(m["a, b"], "cat");
        assert_eq!(m["dog"], "1");
        std::fs::write(&p, "a,cat\nb,dog\na,dog\n").unwrap();
        let err = read_label_map(&p).unwrap_err().to_string();
        assert!(
            err.contains(":3:") && err.contains("first on line 1"),
            "{err}"
        );
        std::fs::write(&p, "a,cat,extra\n").unwrap();
        let err = read_label_map(&p).unwrap_err().to_string();
        assert!(err.contains("two fields"), "{err}");
    }
}
