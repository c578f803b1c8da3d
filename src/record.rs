//! Stage 5: prediction rows and their Parquet files.
//!
//! One row per image file found, failures included. Rows are written as the run
//! goes, in committed *parts* (each its own small Parquet file, written to a temporary
//! name and renamed), so a killed run loses at most the part in flight and `--resume`
//! or `merge` can rebuild `predictions.parquet` from parts alone. The final file is
//! streamed part by part into row groups, never held whole in memory.

use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Whether a row was scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Scored.
    Ok,
    /// Not scored; `error` says why.
    Error,
}

impl Status {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
        }
    }
}

/// One prediction row; the Parquet schema is exactly these fields (see README).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Path relative to DATA_DIR (non-UTF-8 bytes escaped as `\xNN`).
    pub path: String,
    /// Ground-truth class folder name.
    pub label: String,
    /// Model class id of `label`; null when the folder matches no model label.
    pub label_id: Option<u32>,
    /// Top-1 class name.
    pub pred: Option<String>,
    /// Top-1 class id.
    pub pred_id: Option<u32>,
    /// Top-1 softmax probability.
    pub score: Option<f32>,
    /// Top-k class ids, best first.
    pub topk_ids: Option<Vec<u32>>,
    /// Their softmax probabilities.
    pub topk_scores: Option<Vec<f32>>,
    /// `pred_id == label_id`; null for errors and unmapped classes.
    pub correct: Option<bool>,
    /// Scored or failed.
    pub status: Status,
    /// Why the row failed; null when ok.
    pub error: Option<String>,
    /// Something worth knowing about an ok row (e.g. content/extension mismatch).
    pub warning: Option<String>,
    /// Attention rollout over the patch grid (row-major, `run.attention.grid` in
    /// `metrics.json`); only for models exported `--with-attentions`, else null.
    pub attn_rollout: Option<Vec<f32>>,
    /// The dataset's own columns carried through (a manifest's other columns), by
    /// name, in the source's column order; written after the documented columns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<(String, Extra)>,
}

/// One value of a carried dataset column, typed as the source typed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Extra {
    /// Missing.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// Text.
    Str(String),
}

impl Extra {
    /// The value as slice keys and reports show it ("" for null).
    pub fn display(&self) -> String {
        match self {
            Extra::Null => String::new(),
            Extra::Bool(b) => b.to_string(),
            Extra::Int(i) => i.to_string(),
            Extra::Float(f) => f.to_string(),
            Extra::Str(s) => s.clone(),
        }
    }
}

/// The carried columns of `rows` as polars columns (every row carries the same names;
/// a column's type is that of its first non-null value).
fn extra_columns(rows: &[Row]) -> Result<Vec<Column>> {
    let Some(first) = rows.first() else {
        return Ok(vec![]);
    };
    let mut cols = Vec::with_capacity(first.extra.len());
    for (j, (name, _)) in first.extra.iter().enumerate() {
        let vals: Vec<&Extra> = rows
            .iter()
            .map(|r| match r.extra.get(j) {
                Some((n, v)) if n == name => Ok(v),
                _ => Err(bad(format!(
                    "row {} does not carry column '{name}'",
                    r.path
                ))),
            })
            .collect::<Result<_>>()?;
        let kind = vals.iter().find(|v| !matches!(v, Extra::Null));
        let col = match kind {
            Some(Extra::Bool(_)) => Column::new(
                name.into(),
                vals.iter()
                    .map(|v| match v {
                        Extra::Bool(b) => Some(*b),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            Some(Extra::Int(_)) => Column::new(
                name.into(),
                vals.iter()
                    .map(|v| match v {
                        Extra::Int(i) => Some(*i),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            Some(Extra::Float(_)) => Column::new(
                name.into(),
                vals.iter()
                    .map(|v| match v {
                        Extra::Float(f) => Some(*f),
                        Extra::Int(i) => Some(*i as f64),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            _ => Column::new(
                name.into(),
                vals.iter()
                    .map(|v| match v {
                        Extra::Null => None,
                        other => Some(other.display()),
                    })
                    .collect::<Vec<_>>(),
            ),
        };
        cols.push(col);
    }
    Ok(cols)
}

/// The carried columns of a predictions table back as row values.
fn extra_values(df: &DataFrame) -> Result<Vec<Vec<(String, Extra)>>> {
    let mut out = vec![Vec::new(); df.height()];
    for c in df.columns() {
        let name = c.name().as_str();
        if COLUMNS.contains(&name) {
            continue;
        }
        let s = c.as_materialized_series();
        let vals: Vec<Extra> = match s.dtype() {
            DataType::Boolean => s
                .bool()?
                .iter()
                .map(|v| v.map_or(Extra::Null, Extra::Bool))
                .collect(),
            DataType::Int64 => s
                .i64()?
                .iter()
                .map(|v| v.map_or(Extra::Null, Extra::Int))
                .collect(),
            DataType::Float64 => s
                .f64()?
                .iter()
                .map(|v| v.map_or(Extra::Null, Extra::Float))
                .collect(),
            DataType::String => s
                .str()?
                .iter()
                .map(|v| v.map_or(Extra::Null, |x| Extra::Str(x.to_string())))
                .collect(),
            other => {
                return Err(bad(format!(
                    "carried column '{name}' has type {other}, not bool, int64, float64 or string"
                )))
            }
        };
        for (row, v) in out.iter_mut().zip(vals) {
            row.push((name.to_string(), v));
        }
    }
    Ok(out)
}

pub(crate) const COLUMNS: &[&str] = &[
    "path",
    "label",
    "label_id",
    "pred",
    "pred_id",
    "score",
    "topk_ids",
    "topk_scores",
    "correct",
    "status",
    "error",
    "warning",
    "attn_rollout",
];

/// Rows as a polars DataFrame with the documented schema.
pub(crate) fn to_frame(rows: &[Row]) -> Result<DataFrame> {
    let s = |name: &str, v: Vec<Option<&str>>| Column::new(name.into(), v);
    let ids = |name: &str, f: &dyn Fn(&Row) -> Option<u32>| {
        Column::new(
            name.into(),
            rows.iter()
                .map(|r| f(r).map(|v| v as i64))
                .collect::<Vec<_>>(),
        )
    };
    let topk_ids: ListChunked = rows
        .iter()
        .map(|r| {
            r.topk_ids
                .as_ref()
                .map(|v| Series::new("".into(), v.iter().map(|&x| x as i64).collect::<Vec<_>>()))
        })
        .collect();
    let topk_scores: ListChunked = rows
        .iter()
        .map(|r| {
            r.topk_scores
                .as_ref()
                .map(|v| Series::new("".into(), v.as_slice()))
        })
        .collect();
    let rollout: ListChunked = rows
        .iter()
        .map(|r| {
            r.attn_rollout
                .as_ref()
                .map(|v| Series::new("".into(), v.as_slice()))
        })
        .collect();
    let cols = vec![
        s("path", rows.iter().map(|r| Some(r.path.as_str())).collect()),
        s(
            "label",
            rows.iter().map(|r| Some(r.label.as_str())).collect(),
        ),
        ids("label_id", &|r| r.label_id),
        s("pred", rows.iter().map(|r| r.pred.as_deref()).collect()),
        ids("pred_id", &|r| r.pred_id),
        Column::new(
            "score".into(),
            rows.iter().map(|r| r.score).collect::<Vec<_>>(),
        ),
        // Explicit inner types: a part whose rows are all errors must still have the
        // documented schema (not list<null>).
        topk_ids
            .with_name("topk_ids".into())
            .into_series()
            .cast(&DataType::List(Box::new(DataType::Int64)))?
            .into(),
        topk_scores
            .with_name("topk_scores".into())
            .into_series()
            .cast(&DataType::List(Box::new(DataType::Float32)))?
            .into(),
        Column::new(
            "correct".into(),
            rows.iter().map(|r| r.correct).collect::<Vec<_>>(),
        ),
        s(
            "status",
            rows.iter().map(|r| Some(r.status.as_str())).collect(),
        ),
        s("error", rows.iter().map(|r| r.error.as_deref()).collect()),
        s(
            "warning",
            rows.iter().map(|r| r.warning.as_deref()).collect(),
        ),
        rollout
            .with_name("attn_rollout".into())
            .into_series()
            .cast(&DataType::List(Box::new(DataType::Float32)))?
            .into(),
    ];
    let mut cols = cols;
    for c in extra_columns(rows)? {
        if COLUMNS.contains(&c.name().as_str()) {
            return Err(bad(format!(
                "carried column '{}' has the name of a predictions column",
                c.name()
            )));
        }
        cols.push(c);
    }
    Ok(DataFrame::new(rows.len(), cols)?)
}

fn bad(what: String) -> Error {
    Error::Output { what }
}

/// Rows back from a DataFrame with the documented schema.
pub(crate) fn from_frame(df: &DataFrame) -> Result<Vec<Row>> {
    // `attn_rollout` came later: files written before it read back with nulls.
    for c in COLUMNS.iter().filter(|&&c| c != "attn_rollout") {
        if df.column(c).is_err() {
            return Err(bad(format!("predictions table has no column '{c}'")));
        }
    }
    let strs = |n: &str| -> Result<Vec<Option<String>>> {
        Ok(df
            .column(n)?
            .str()?
            .iter()
            .map(|v| v.map(str::to_string))
            .collect())
    };
    let ints = |n: &str| -> Result<Vec<Option<u32>>> {
        Ok(df
            .column(n)?
            .i64()?
            .iter()
            .map(|v| v.map(|x| x as u32))
            .collect())
    };
    let path = strs("path")?;
    let label = strs("label")?;
    let label_id = ints("label_id")?;
    let pred = strs("pred")?;
    let pred_id = ints("pred_id")?;
    let score: Vec<Option<f32>> = df.column("score")?.f32()?.iter().collect();
    let topk_ids: Vec<Option<Vec<u32>>> = df
        .column("topk_ids")?
        .list()?
        .amortized_iter()
        .map(|s| {
            s.map(|s| {
                s.as_ref()
                    .i64()
                    .map(|c| c.no_null_iter().map(|x| x as u32).collect())
            })
            .transpose()
        })
        .collect::<PolarsResult<_>>()?;
    let f32_lists = |n: &str| -> Result<Vec<Option<Vec<f32>>>> {
        Ok(df
            .column(n)?
            .list()?
            .amortized_iter()
            .map(|s| {
                s.map(|s| s.as_ref().f32().map(|c| c.no_null_iter().collect()))
                    .transpose()
            })
            .collect::<PolarsResult<_>>()?)
    };
    let topk_scores = f32_lists("topk_scores")?;
    let rollout = match df.column("attn_rollout") {
        Ok(_) => f32_lists("attn_rollout")?,
        Err(_) => vec![None; df.height()],
    };
    let correct: Vec<Option<bool>> = df.column("correct")?.bool()?.iter().collect();
    let status = strs("status")?;
    let error = strs("error")?;
    let warning = strs("warning")?;
    let mut extra = extra_values(df)?.into_iter();
    let mut rows = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        rows.push(Row {
            path: path[i].clone().ok_or_else(|| bad("null path".into()))?,
            label: label[i].clone().unwrap_or_default(),
            label_id: label_id[i],
            pred: pred[i].clone(),
            pred_id: pred_id[i],
            score: score[i],
            topk_ids: topk_ids[i].clone(),
            topk_scores: topk_scores[i].clone(),
            correct: correct[i],
            status: match status[i].as_deref() {
                Some("ok") => Status::Ok,
                Some("error") => Status::Error,
                other => return Err(bad(format!("unknown status {other:?}"))),
            },
            error: error[i].clone(),
            warning: warning[i].clone(),
            attn_rollout: rollout[i].clone(),
            extra: extra.next().unwrap_or_default(),
        });
    }
    Ok(rows)
}

/// A Parquet writer with the project's settings. `key` (a run's
/// [`crate::run::RunIdentity::part_key`]) is stored under [`RUN_KEY`].
fn writer<'a>(
    f: &'a mut crate::fs::OutFile,
    schema: &Schema,
    key: Option<&str>,
) -> ParquetWriter<&'a mut crate::fs::OutFile> {
    // Min/max statistics are off: polars 0.55 writes min/max for some of these
    // columns in a form its own reader rejects ("max_value of statistics MUST be
    // plain encoded"). Null counts are kept.
    let stats = StatisticsOptions {
        min_value: false,
        max_value: false,
        distinct_count: false,
        null_count: true,
        ..Default::default()
    };
    let mut kv = vec![compat_arrow_schema(schema)];
    if let Some(k) = key {
        kv.push((RUN_KEY.to_string(), k.to_string()));
    }
    ParquetWriter::new(f)
        .with_compression(ParquetCompression::Zstd(None))
        .with_statistics(stats)
        .with_key_value_metadata(Some(KeyValueMetadata::from_static(kv)))
}

/// The `ARROW:schema` entry of the file's metadata, with plain `string`, `binary`
/// and `list` types. polars would store its in-memory types there (`string_view`,
/// `large_list`), which readers built on Arrow C++ before 16 (pyarrow 14 and 15,
/// and what embeds them) cannot read ("Unrecognized type: 24"). The data pages are
/// the same either way: only the type a reader restores differs.
fn compat_arrow_schema(schema: &Schema) -> (String, String) {
    fn plain(f: ArrowField) -> ArrowField {
        let dtype = match f.dtype {
            ArrowDataType::LargeUtf8 | ArrowDataType::Utf8View => ArrowDataType::Utf8,
            ArrowDataType::LargeBinary | ArrowDataType::BinaryView => ArrowDataType::Binary,
            ArrowDataType::LargeList(inner) | ArrowDataType::List(inner) => {
                ArrowDataType::List(Box::new(plain(*inner)))
            }
            d => d,
        };
        ArrowField { dtype, ..f }
    }
    let arrow: ArrowSchema = schema
        .to_arrow(CompatLevel::oldest())
        .iter_values()
        .map(|f| {
            let f = plain(f.clone());
            (f.name.clone(), f)
        })
        .collect();
    let kv = polars_parquet::write::schema_to_metadata_key(&arrow);
    (kv.key, kv.value.unwrap_or_default())
}

/// Write rows as one Parquet file, atomically.
pub fn write_parquet(path: &Path, rows: &[Row]) -> Result<()> {
    write_parquet_keyed(path, rows, None)
}

/// [`write_parquet`], with `key` (a run's [`crate::run::RunIdentity::part_key`])
/// stored under [`RUN_KEY`] in the file's key-value metadata.
fn write_parquet_keyed(path: &Path, rows: &[Row], key: Option<&str>) -> Result<()> {
    let mut df = to_frame(rows)?;
    crate::fs::atomic_write(path, |f| {
        let schema = df.schema().as_ref().clone();
        writer(f, &schema, key).finish(&mut df)?;
        Ok(())
    })
}

/// Key-value metadata key of the run identity a committed part belongs to.
pub(crate) const RUN_KEY: &str = "vit-batch.run";

/// The run key stored in a Parquet file, if any.
pub(crate) fn run_key(path: &Path) -> Result<Option<String>> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut r = ParquetReader::new(f);
    let md = r.get_metadata().map_err(|e| Error::Output {
        what: format!("{}: {e}", path.display()),
    })?;
    Ok(md.key_value_metadata().as_ref().and_then(|kv| {
        kv.iter()
            .find(|k| k.key == RUN_KEY)
            .and_then(|k| k.value.clone())
    }))
}

/// The rows `start..end` a part file name `part-<start>-<end>.parquet` (both ten
/// digits) stands for; `None` for any other name.
pub(crate) fn part_range(name: &str) -> Option<(usize, usize)> {
    let mid = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let (a, b) = mid.split_once('-')?;
    let digits = |s: &str| s.len() == 10 && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(a) || !digits(b) {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// All rows of a predictions Parquet file, in order.
pub fn read_parquet(path: &Path) -> Result<Vec<Row>> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let df = ParquetReader::new(f).finish().map_err(|e| Error::Output {
        what: format!("{}: {e}", path.display()),
    })?;
    from_frame(&df)
}

/// Rows `offset..offset+len` of a predictions file (only the row groups needed).
pub(crate) fn read_parquet_slice(path: &Path, offset: usize, len: usize) -> Result<Vec<Row>> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let df = ParquetReader::new(f)
        .with_slice(Some((offset, len)))
        .finish()
        .map_err(|e| Error::Output {
            what: format!("{}: {e}", path.display()),
        })?;
    from_frame(&df)
}

/// Number of rows in a predictions file (from its footer).
pub(crate) fn parquet_rows(path: &Path) -> Result<usize> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    ParquetReader::new(f).num_rows().map_err(|e| Error::Output {
        what: format!("{}: {e}", path.display()),
    })
}

/// The committed parts of a run: `parts/part-<start>-<end>.parquet` holds the rows
/// of dataset entries `start..end` (indices in the run's sorted entry list), and
/// carries the run's key in its metadata.
pub(crate) struct Parts {
    pub dir: PathBuf,
    /// [`crate::run::RunIdentity::part_key`] of the run.
    pub key: String,
}

impl Parts {
    pub(crate) fn new(out_dir: &Path, key: String) -> Result<Self> {
        let dir = out_dir.join("parts");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Parts { dir, key })
    }

    pub(crate) fn path(&self, start: usize, end: usize) -> PathBuf {
        self.dir.join(format!("part-{start:010}-{end:010}.parquet"))
    }

    pub(crate) fn commit(&self, start: usize, rows: &[Row]) -> Result<()> {
        write_parquet_keyed(&self.path(start, start + rows.len()), rows, Some(&self.key))
    }

    /// Committed ranges, sorted by start (temporary files are ignored).
    pub(crate) fn ranges(&self) -> Result<Vec<(usize, usize, PathBuf)>> {
        let mut out = Vec::new();
        let rd = std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        for e in rd {
            let e = e.map_err(|e| Error::io(&self.dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some((a, b)) = part_range(&name) {
                out.push((a, b, e.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Refuse a committed part that another run wrote (another model, dataset,
    /// preprocessing...), or that carries no run key.
    pub(crate) fn check_own(&self) -> Result<()> {
        for (_, _, p) in self.ranges()? {
            let found = run_key(&p)?;
            if found.as_deref() == Some(self.key.as_str()) {
                continue;
            }
            return Err(Error::OutDir {
                dir: self.dir.parent().unwrap_or(&self.dir).to_path_buf(),
                what: format!(
                    "cannot resume: the part {} was written by another run ({}; this run is {}): another model, dataset or options; start a new run (or {})",
                    p.display(),
                    match &found {
                        Some(k) => format!("run key {}", crate::run::short_hash(k)),
                        None => "it carries no run key".into(),
                    },
                    crate::run::short_hash(&self.key),
                    crate::error::option_name("overwrite")
                ),
            });
        }
        Ok(())
    }

    /// The committed part files in row order, checked to tile `0..total` exactly
    /// (no gap, no overlap, nothing missing at the end).
    pub(crate) fn tiled(&self, total: usize) -> Result<Vec<PathBuf>> {
        let ranges = self.ranges()?;
        let mut next = 0;
        for (a, b, _) in &ranges {
            if *a != next {
                return Err(bad(format!(
                    "committed parts are not contiguous: expected a part at row {next}, found {a}..{b}"
                )));
            }
            next = *b;
        }
        if next != total {
            return Err(bad(format!("committed parts cover {next} of {total} rows")));
        }
        Ok(ranges.into_iter().map(|(_, _, p)| p).collect())
    }
}

/// Write a sequence of row batches into one Parquet file (one row group per batch).
pub(crate) fn write_streamed(
    dest: &Path,
    batches: impl Iterator<Item = Result<Vec<Row>>>,
) -> Result<()> {
    crate::fs::atomic_write(dest, |f| {
        // The schema is that of the first batch (it has the carried columns, if any).
        let mut batches = batches.peekable();
        let first = match batches.peek() {
            Some(Ok(b)) => to_frame(&b[..b.len().min(1)])?,
            _ => to_frame(&[])?,
        };
        let schema = first.schema().as_ref().clone();
        let mut w = writer(f, &schema, None).batched(&schema)?;
        for b in batches {
            let b = b?;
            if !b.is_empty() {
                let df = to_frame(&b)?;
                if df.schema().as_ref() != &schema {
                    return Err(bad(
                        "batches of one predictions file carry different columns".into(),
                    ));
                }
                w.write_batch(&df)?;
            }
        }
        w.finish()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(i: usize, ok: bool) -> Row {
        Row {
            path: format!("c{}/img{i:03}.png", i % 3),
            label: format!("c{}", i % 3),
            label_id: if i % 5 == 4 {
                None
            } else {
                Some((i % 3) as u32)
            },
            pred: ok.then(|| "c1".to_string()),
            pred_id: ok.then_some(1),
            score: ok.then_some(0.5 + i as f32 / 1000.0),
            topk_ids: ok.then(|| vec![1, 0, 2]),
            topk_scores: ok.then(|| vec![0.5, 0.3, 0.2]),
            correct: ok.then_some(i % 3 == 1),
            status: if ok { Status::Ok } else { Status::Error },
            error: (!ok).then(|| "truncated \"file\" <b>".to_string()),
            warning: None,
            attn_rollout: None,
            extra: vec![],
        }
    }

    #[test]
    fn parquet_round_trip_and_parts_merge() {
        let t = tempfile::tempdir().unwrap();
        let rows: Vec<Row> = (0..25).map(|i| sample(i, i % 7 != 3)).collect();
        let p = t.path().join("p.parquet");
        write_parquet(&p, &rows).unwrap();
        assert_eq!(read_parquet(&p).unwrap(), rows);
        let parts = Parts::new(t.path(), "k".into()).unwrap();
        parts.check_own().unwrap();
        parts.commit(10, &rows[10..25]).unwrap();
        let errs: Vec<Row> = (0..3).map(|i| sample(i, false)).collect();
        write_parquet(&t.path().join("e.parquet"), &errs).unwrap();
        assert_eq!(read_parquet(&t.path().join("e.parquet")).unwrap(), errs);
        parts.commit(0, &rows[0..10]).unwrap();
        let dest = t.path().join("all.parquet");
        let files = parts.tiled(25).unwrap();
        write_streamed(&dest, files.iter().map(|p| read_parquet(p))).unwrap();
        assert_eq!(read_parquet(&dest).unwrap(), rows);
        assert!(parts.tiled(30).is_err());
        parts.check_own().unwrap();
        let other = Parts::new(t.path(), "other".into()).unwrap();
        assert!(other.check_own().is_err());
        assert_eq!(
            part_range("part-0000000010-0000000025.parquet"),
            Some((10, 25))
        );
        assert_eq!(part_range("part-10-25.parquet"), None);
        assert_eq!(part_range("part-0000000010-0000000025.parquet.bak"), None);
    }
}
