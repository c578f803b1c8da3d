//! Stage 1 for a dataset kept as a list: a CSV or Parquet *manifest* with one row per
//! image (`path`, `label`, and any other columns).
//!
//! Why it exists: most evaluation sets are not `root/<class>/<image>` folders (ImageNet's
//! validation set is a flat folder plus a label file; curated sets carry metadata such as
//! the camera or site of each image). A manifest becomes the same [`Dataset`] the folder
//! walk makes, so sharding, resume, merge and the reports do not care where the list came
//! from. Every other column is carried into `predictions.parquet` with its type (Parquet
//! types as stored; CSV columns typed like pandas would: int, float, bool, else text), and
//! can be sliced on (`slice_by`).

use std::collections::BTreeMap;
use std::path::Path;

use polars::prelude::*;

use crate::error::{Error, Result};
use crate::record::Extra;
use crate::walk::{Dataset, Entry};

/// Which columns of the manifest hold the image path and its label, and what relative
/// paths are relative to.
#[derive(Debug, Clone)]
pub(crate) struct ManifestSpec<'a> {
    pub path_column: &'a str,
    pub label_column: &'a str,
    /// Relative paths are joined to this folder (default: the manifest's own folder).
    pub root: Option<&'a Path>,
}

fn bad(manifest: &Path, what: String) -> Error {
    Error::Dataset {
        what: format!("{}: {what}", manifest.display()),
    }
}

/// One manifest row before it becomes an entry: path, label, carried values, and where
/// it came from (for messages).
struct Listed {
    path: String,
    label: String,
    extra: Vec<(String, Extra)>,
    line: String,
}

/// Read a manifest (`.csv` or `.parquet`, by extension) into a [`Dataset`] sorted by path.
pub(crate) fn read(manifest: &Path, spec: &ManifestSpec) -> Result<Dataset> {
    let ext = manifest
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let listed = match ext.as_deref() {
        Some("csv") => read_csv(manifest, spec)?,
        Some("parquet") => read_parquet(manifest, spec)?,
        _ => {
            return Err(bad(
                manifest,
                "a manifest is a .csv or .parquet file".to_string(),
            ))
        }
    };
    let base = crate::source::manifest_root(manifest, spec.root);
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut ds = Dataset {
        source: "manifest",
        ..Default::default()
    };
    for l in listed {
        if let Some(prev) = seen.insert(l.path.clone(), l.line.clone()) {
            return Err(bad(
                manifest,
                format!(
                    "{}: path {} is listed twice (first at {prev})",
                    l.line, l.path
                ),
            ));
        }
        let file = base.join(&l.path);
        let meta = std::fs::metadata(&file);
        let problem = match &meta {
            Err(e) => Some(format!("cannot read the file the manifest lists ({e})")),
            Ok(m) if !m.is_file() => {
                Some("not a regular file (a folder, FIFO, socket or device)".to_string())
            }
            Ok(_) => None,
        };
        ds.entries.push(Entry {
            rel: l.path,
            path: file.into(),
            class: ds.strings.get(&l.label),
            size: meta.map(|m| m.len()).unwrap_or(0),
            problem,
            extra: l
                .extra
                .into_iter()
                .map(|(n, v)| (ds.strings.get(&n), v))
                .collect(),
            member: None,
        });
    }
    if ds.entries.is_empty() {
        return Err(bad(manifest, "the manifest lists no image".to_string()));
    }
    ds.sort_and_collect_classes();
    Ok(ds)
}

/// Labels given as integer ids become the model's names for them (a label that is a
/// model name already is kept: names win over ids).
pub(crate) fn resolve_label_ids(ds: &mut Dataset, model_labels: &[String]) -> Result<()> {
    let names: std::collections::BTreeSet<&str> = model_labels.iter().map(String::as_str).collect();
    for e in &mut ds.entries {
        if names.contains(&*e.class) {
            continue;
        }
        if let Ok(id) = e.class.trim().parse::<usize>() {
            match model_labels.get(id) {
                Some(n) => e.class = ds.strings.get(n),
                None => {
                    return Err(Error::Dataset {
                        what: format!(
                            "{}: label id {id} is out of range (the model has {} labels)",
                            e.rel,
                            model_labels.len()
                        ),
                    })
                }
            }
        }
    }
    ds.collect_classes();
    Ok(())
}

fn read_csv(manifest: &Path, spec: &ManifestSpec) -> Result<Vec<Listed>> {
    let bytes = std::fs::read(manifest).map_err(|e| Error::io(manifest, e))?;
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(body);
    let header: Vec<String> = r
        .headers()
        .map_err(|e| bad(manifest, format!("not valid CSV: {e}")))?
        .iter()
        .map(str::to_string)
        .collect();
    let col = |name: &str, what: &str| {
        header.iter().position(|h| h == name).ok_or_else(|| {
            bad(
                manifest,
                format!(
                    "no {what} column '{name}' (columns: {}); name it with the {what}_column option",
                    header.join(", ")
                ),
            )
        })
    };
    let (pi, li) = (
        col(spec.path_column, "path")?,
        col(spec.label_column, "label")?,
    );
    let others: Vec<usize> = (0..header.len()).filter(|&i| i != pi && i != li).collect();
    let mut raw: Vec<(String, String, Vec<String>, String)> = vec![];
    for rec in r.records() {
        let rec = rec.map_err(|e| bad(manifest, format!("not valid CSV: {e}")))?;
        let line = format!(
            "line {}",
            rec.position().map(|p| p.line()).unwrap_or_default()
        );
        let get = |i: usize| rec.get(i).unwrap_or("").to_string();
        let (path, label) = (get(pi), get(li));
        if path.is_empty() || label.is_empty() {
            return Err(bad(
                manifest,
                format!(
                    "{line}: empty {}",
                    if path.is_empty() { "path" } else { "label" }
                ),
            ));
        }
        raw.push((path, label, others.iter().map(|&i| get(i)).collect(), line));
    }
    // Type each carried column as pandas would: int, float, bool, else text ("" is null).
    let kinds: Vec<u8> = (0..others.len())
        .map(|j| {
            let vals = raw
                .iter()
                .map(|r| r.2[j].as_str())
                .filter(|v| !v.is_empty());
            let all = |f: &dyn Fn(&str) -> bool| vals.clone().all(f);
            if all(&|v| v.parse::<i64>().is_ok()) {
                b'i'
            } else if all(&|v| v.parse::<f64>().is_ok()) {
                b'f'
            } else if all(&|v| v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false")) {
                b'b'
            } else {
                b's'
            }
        })
        .collect();
    Ok(raw
        .into_iter()
        .map(|(path, label, vals, line)| Listed {
            path,
            label,
            extra: others
                .iter()
                .zip(vals)
                .zip(&kinds)
                .map(|((&i, v), k)| {
                    let x = if v.is_empty() {
                        Extra::Null
                    } else {
                        match k {
                            b'i' => Extra::Int(v.parse().unwrap_or_default()),
                            b'f' => Extra::Float(v.parse().unwrap_or_default()),
                            b'b' => Extra::Bool(v.eq_ignore_ascii_case("true")),
                            _ => Extra::Str(v),
                        }
                    };
                    (header[i].clone(), x)
                })
                .collect(),
            line,
        })
        .collect())
}

fn read_parquet(manifest: &Path, spec: &ManifestSpec) -> Result<Vec<Listed>> {
    let f = std::fs::File::open(manifest).map_err(|e| Error::io(manifest, e))?;
    let df = ParquetReader::new(f)
        .finish()
        .map_err(|e| bad(manifest, format!("not a readable Parquet file: {e}")))?;
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    let text = |name: &str, what: &str| -> Result<Vec<Option<String>>> {
        let c = df.column(name).map_err(|_| {
            bad(
                manifest,
                format!(
                    "no {what} column '{name}' (columns: {}); name it with the {what}_column option",
                    names.join(", ")
                ),
            )
        })?;
        let s = c.cast(&DataType::String)?;
        Ok(s.str()?.iter().map(|v| v.map(str::to_string)).collect())
    };
    let paths = text(spec.path_column, "path")?;
    let labels = text(spec.label_column, "label")?;
    let mut carried: Vec<(String, Vec<Extra>)> = vec![];
    for c in df.columns() {
        let name = c.name().to_string();
        if name == spec.path_column || name == spec.label_column {
            continue;
        }
        let vals = extras_of(c).map_err(|e| bad(manifest, e))?;
        carried.push((name, vals));
    }
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let line = format!("row {i}");
        let (Some(path), Some(label)) = (paths[i].clone(), labels[i].clone()) else {
            return Err(bad(manifest, format!("{line}: null path or label")));
        };
        if path.is_empty() || label.is_empty() {
            return Err(bad(manifest, format!("{line}: empty path or label")));
        }
        out.push(Listed {
            path,
            label,
            extra: carried
                .iter()
                .map(|(n, v)| (n.clone(), v[i].clone()))
                .collect(),
            line,
        });
    }
    Ok(out)
}

/// A column's values as carried values, with the column's type (booleans, integers,
/// floats; anything else as text), or why it cannot be carried.
pub(crate) fn extras_of(c: &Column) -> std::result::Result<Vec<Extra>, String> {
    let name = c.name().to_string();
    let dt = c.dtype().clone();
    let e = |e: PolarsError| e.to_string();
    Ok(if dt.is_bool() {
        c.bool()
            .map_err(e)?
            .iter()
            .map(|v| v.map_or(Extra::Null, Extra::Bool))
            .collect()
    } else if dt.is_integer() {
        c.cast(&DataType::Int64)
            .map_err(e)?
            .i64()
            .map_err(e)?
            .iter()
            .map(|v| v.map_or(Extra::Null, Extra::Int))
            .collect()
    } else if dt.is_float() {
        c.cast(&DataType::Float64)
            .map_err(e)?
            .f64()
            .map_err(e)?
            .iter()
            .map(|v| v.map_or(Extra::Null, Extra::Float))
            .collect()
    } else {
        let s = c
            .cast(&DataType::String)
            .map_err(|e| format!("column '{name}' of type {dt} cannot be carried as text: {e}"))?;
        s.str()
            .map_err(e)?
            .iter()
            .map(|v| v.map_or(Extra::Null, |x| Extra::Str(x.to_string())))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_manifest_types_columns_and_checks_rows() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path().join("m.csv");
        std::fs::write(t.path().join("a.png"), b"x").unwrap();
        std::fs::write(
            &m,
            "\u{feff}path,label,site,score,ok,note\nb.png,dog,2,0.5,true,\na.png,cat,1,1,false,hi\n",
        )
        .unwrap();
        let spec = ManifestSpec {
            path_column: "path",
            label_column: "label",
            root: None,
        };
        let ds = read(&m, &spec).unwrap();
        assert_eq!(ds.entries.len(), 2);
        let a = &ds.entries[0];
        assert_eq!((a.rel.as_str(), &*a.class), ("a.png", "cat"));
        assert!(a.problem.is_none());
        assert!(ds.entries[1]
            .problem
            .as_deref()
            .unwrap()
            .contains("cannot read"));
        let named: Vec<(&str, Extra)> = a.extra.iter().map(|(n, v)| (&**n, v.clone())).collect();
        assert_eq!(
            named,
            vec![
                ("site", Extra::Int(1)),
                ("score", Extra::Float(1.0)),
                ("ok", Extra::Bool(false)),
                ("note", Extra::Str("hi".into())),
            ]
        );
        assert_eq!(ds.entries[1].extra[3].1, Extra::Null);
        assert_eq!(ds.classes, vec!["cat", "dog"]);
        std::fs::write(&m, "path,label\na.png,cat\na.png,dog\n").unwrap();
        let e = read(&m, &spec).unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
        std::fs::write(&m, "file,label\na.png,cat\n").unwrap();
        let e = read(&m, &spec).unwrap_err().to_string();
        assert!(
            e.contains("no path column 'path' (columns: file, label)"),
            "{e}"
        );
        let mut ds = {
            std::fs::write(&m, "path,label\na.png,1\nb.png,cat\n").unwrap();
            read(&m, &spec).unwrap()
        };
        resolve_label_ids(&mut ds, &["cat".to_string(), "dog".to_string()]).unwrap();
        assert_eq!(&*ds.entries[0].class, "dog");
        assert_eq!(ds.classes, vec!["cat", "dog"]);
    }
}
