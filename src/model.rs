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
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| Error::Model {
                        what: format!("{}: not valid JSON: {e}", cfg_path.display()),
                    })?;
                if let Some(map) = v.get("id2label").and_then(|m| m.as_object()) {
                    let m: BTreeMap<String, String> = map
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| v.to_string()),
                            )
                        })
                        .collect();
                    labels =
                        Some(
                            crate::vit::labels_from_id2label(&m).map_err(|e| Error::Model {
                                what: format!("{}: {e}", cfg_path.display()),
                            })?,
                        );
                }
                patch_size = v
                    .get("patch_size")
                    .and_then(|p| p.as_u64())
                    .map(|p| p as usize);
                if let Some(map) = v.get("label2id").and_then(|m| m.as_object()) {
                    for (k, v) in map {
                        if let Some(i) = v
                            .as_u64()
                            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                        {
                            label2id.insert(k.clone(), i as usize);
                        }
                    }
                }
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
            sha256: sha256_file(&onnx)?,
            onnx,
            labels,
            label2id,
            preprocess,
            patch_size,
        })
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

/// Read a `--label-map` CSV of `folder,label` lines (a header line `folder,label` is
/// allowed; `#` starts a comment).
pub(crate) fn read_label_map(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || (i == 0 && line.eq_ignore_ascii_case("folder,label"))
        {
            continue;
        }
        let Some((folder, label)) = line.split_once(',') else {
            return Err(Error::Config {
                what: format!(
                    "{}:{}: expected `folder,label`, got `{line}`",
                    path.display(),
                    i + 1
                ),
            });
        };
        out.insert(folder.trim().to_string(), label.trim().to_string());
    }
    Ok(out)
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
    let by_name: BTreeMap<&str, usize> = model_labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let mut m = LabelMapping {
        model_labels: model_labels.to_vec(),
        class_to_id: BTreeMap::new(),
        unmapped: vec![],
        matched_by: BTreeMap::new(),
    };
    for c in classes {
        let explicit = label_map.and_then(|lm| lm.get(c));
        let found = if let Some(target) = explicit {
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
}
