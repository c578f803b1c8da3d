//! The run folder: what `score` and `merge` write, and what `report`, `compare`,
//! `merge` and pipelines read.
//!
//! Why it exists: a run folder is a small on-disk format with rules of its own (file
//! names, the identity in `run.json` that `--resume` and `merge` check, the
//! `metrics.json` schema, when a folder may be written into, when a run is finished).
//! Every command that touches one goes through this module, so the rules exist once.
//!
//! Layout:
//! - `run.json`: [`RunIdentity`], written first, before any image is read;
//! - `parts/`: committed Parquet parts of an unfinished run (see `record::Parts`);
//! - `predictions.parquet` + `metrics.json` ([`MetricsFile`]): a finished run;
//! - `report.*`, `charts/`: the report rendered from the two files above;
//! - `.vit-batch.lock`: the one writer's lock ([`RunLock`]), not part of the run.
//!
//! Rules (each once, here): one writer at a time ([`RunLock`]); nothing but
//! vit-batch's own files is ever removed, by name, and a folder holding anything else
//! is refused ([`check_out_dir`]); no write through a symlinked `charts/`/`parts/`;
//! no output inside or around its inputs ([`check_apart`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::infer::{EngineInfo, Precision, Provider};
use crate::metrics::{self, Metrics};
use crate::model::LabelMapping;
use crate::preprocess::PreprocessConfig;
use crate::record::{self, Parts, Row};

/// The identity of a run, written first.
pub(crate) const RUN_JSON: &str = "run.json";
/// One row per image, in the dataset's sorted order.
pub(crate) const PREDICTIONS: &str = "predictions.parquet";
/// Metrics, throughput and provenance ([`MetricsFile`]).
pub(crate) const METRICS_JSON: &str = "metrics.json";
/// Committed parts of a run still being scored.
pub(crate) const PARTS_DIR: &str = "parts";
/// The report's chart images.
pub(crate) const CHARTS_DIR: &str = "charts";

/// The lock a writer holds for the whole run (its pid inside); not a run file.
pub(crate) const LOCK_FILE: &str = ".vit-batch.lock";
/// Prefix of the temporary files of [`crate::fs::atomic_write`] and the write probe.
pub(crate) const TMP_PREFIX: &str = ".vit-batch-";

/// Files a run folder holds; `--overwrite` removes exactly these (in `charts/` and
/// `parts/`, only vit-batch's own chart and part files, by name).
pub(crate) const RUN_FILES: &[&str] = &[
    RUN_JSON,
    PREDICTIONS,
    METRICS_JSON,
    "report.html",
    "report.md",
    "report.json",
    CHARTS_DIR,
    PARTS_DIR,
];

/// This process's share of a sharded run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// 0-based index of this shard.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

/// What a run depends on; `--resume` and `merge` refuse runs whose identity differs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunIdentity {
    /// vit-batch version that started the run.
    pub tool_version: String,
    /// SHA-256 of the model file.
    pub model_sha256: String,
    /// Execution provider (absent in runs of the CPU provider, as before it was recorded).
    #[serde(default, skip_serializing_if = "is_default")]
    pub provider: Provider,
    /// Inference precision (absent for fp32, as before it was recorded).
    #[serde(default, skip_serializing_if = "is_default")]
    pub precision: Precision,
    /// The preprocessing applied to every image.
    pub preprocess: PreprocessConfig,
    /// "preprocessor_config.json" or the defaults used for a bare model.
    pub preprocess_source: String,
    /// Fingerprint of the whole dataset (before sharding and `limit`).
    pub dataset_fingerprint: String,
    /// Images in the whole dataset.
    pub dataset_images: usize,
    /// The `limit` option, when set.
    pub limit: Option<usize>,
    /// The `sample` option and its seed, when set.
    #[serde(default)]
    pub sample: Option<(usize, u64)>,
    /// The carried columns the metrics are sliced by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slice_by: Vec<String>,
    /// The shard this run scores, when sharded.
    pub shard: Option<Shard>,
    /// Predictions kept per image.
    pub top_k: usize,
    /// The model's class names, by id.
    pub model_labels: Vec<String>,
    /// Rows this run (or shard) is responsible for.
    pub rows: usize,
    /// Rows per committed part.
    pub part_rows: usize,
}

/// Defaults are left out of `run.json`, so a CPU fp32 run's identity (and the key
/// of its parts) is what it was before provider and precision were recorded.
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Which parts of two identities must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdentityScope {
    /// Rows of the two runs can stand side by side (`merge` of shards): same model,
    /// preprocessing, dataset, `limit`, `top_k` and labels.
    Content,
    /// The same run continued (`--resume`): also the same shard, rows and parts.
    SameRun,
}

/// The first 12 characters of a hash (or all of a shorter string), for messages.
pub(crate) fn short_hash(s: &str) -> &str {
    s.char_indices().nth(12).map_or(s, |(i, _)| &s[..i])
}

impl RunIdentity {
    /// What differs between `self` (stored) and `other`, by the one rule of `scope`;
    /// empty when they agree. Each item names the option or input that differs.
    pub(crate) fn differences(&self, other: &RunIdentity, scope: IdentityScope) -> Vec<String> {
        let mut d = vec![];
        if self.model_sha256 != other.model_sha256 {
            d.push(format!(
                "model (sha256 {} vs {})",
                short_hash(&self.model_sha256),
                short_hash(&other.model_sha256)
            ));
        }
        if self.provider != other.provider {
            d.push(format!(
                "provider ({} vs {})",
                self.provider.name(),
                other.provider.name()
            ));
        }
        if self.precision != other.precision {
            d.push(format!(
                "precision ({} vs {})",
                self.precision.name(),
                other.precision.name()
            ));
        }
        if self.preprocess != other.preprocess {
            d.push("preprocessing".to_string());
        }
        if self.dataset_fingerprint != other.dataset_fingerprint {
            d.push("dataset (files or sizes changed)".to_string());
        }
        if self.limit != other.limit {
            d.push(format!("limit ({:?} vs {:?})", self.limit, other.limit));
        }
        if self.sample != other.sample {
            let show = |s: Option<(usize, u64)>| match s {
                Some((n, seed)) => format!("{n} seed {seed}"),
                None => "none".to_string(),
            };
            d.push(format!(
                "sample ({} vs {})",
                show(self.sample),
                show(other.sample)
            ));
        }
        if self.slice_by != other.slice_by {
            d.push(format!(
                "slice_by ({:?} vs {:?})",
                self.slice_by, other.slice_by
            ));
        }
        if self.top_k != other.top_k {
            d.push(format!("top_k ({} vs {})", self.top_k, other.top_k));
        }
        if self.model_labels != other.model_labels {
            d.push("model labels".to_string());
        }
        if scope == IdentityScope::SameRun {
            if self.shard != other.shard || self.rows != other.rows {
                d.push("shard".to_string());
            }
            if self.part_rows != other.part_rows {
                d.push(format!(
                    "batch_size / checkpoint_rows (parts of {} vs {} rows)",
                    self.part_rows, other.part_rows
                ));
            }
        }
        d
    }

    /// Read `run.json` of `dir`.
    pub(crate) fn read(dir: &Path) -> Result<RunIdentity> {
        let p = dir.join(RUN_JSON);
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Corrupt {
            path: p,
            what: format!("not a vit-batch run.json: {e}"),
        })
    }

    /// The key every committed part of this run carries: a SHA-256 of the identity
    /// less what `--resume` does not compare (tool version, where the preprocessing
    /// came from), so `--resume` can tell its own parts from another run's.
    pub(crate) fn part_key(&self) -> String {
        use sha2::Digest;
        let mut id = self.clone();
        id.tool_version.clear();
        id.preprocess_source.clear();
        let json = serde_json::to_vec(&id).unwrap_or_default();
        hex::encode(sha2::Sha256::digest(&json))
    }

    /// Write `run.json` into `dir`, atomically.
    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        crate::fs::atomic_write_bytes(
            &dir.join(RUN_JSON),
            serde_json::to_string_pretty(self)?.as_bytes(),
        )
    }
}

/// Throughput of the process(es) that wrote a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Throughput {
    /// Rows scored by the process(es) that wrote this run (resumed rows excluded).
    pub scored: u64,
    /// Wall-clock seconds of scoring.
    pub wall_s: f64,
    /// `scored / wall_s`.
    pub images_per_s: f64,
    /// Per shard, when the run was merged from shards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardThroughput>,
}

impl Throughput {
    /// `scored` rows in `wall_s` seconds.
    pub(crate) fn new(scored: u64, wall_s: f64, shards: Vec<ShardThroughput>) -> Self {
        Throughput {
            scored,
            wall_s,
            images_per_s: if wall_s > 0.0 {
                scored as f64 / wall_s
            } else {
                0.0
            },
            shards,
        }
    }
}

/// Throughput of one shard of a merged run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardThroughput {
    /// Which shard.
    pub shard: Shard,
    /// Rows it scored.
    pub scored: u64,
    /// Its wall-clock seconds.
    pub wall_s: f64,
    /// Its images per second.
    pub images_per_s: f64,
}

/// Provenance of a run, recorded in `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    /// Always "vit-batch".
    pub tool: String,
    /// vit-batch version.
    pub tool_version: String,
    /// Absolute path of the scored dataset.
    pub data_dir: String,
    /// The model as given.
    pub model: String,
    /// SHA-256 of the model file.
    pub model_sha256: String,
    /// Version of the ONNX Runtime library used.
    pub onnxruntime_version: String,
    /// Execution provider.
    pub provider: Provider,
    /// Inference precision.
    #[serde(default)]
    pub precision: Precision,
    /// What ran the model: the OpenVINO plugin and runtime versions, the CPU and its
    /// ISA flags.
    #[serde(default)]
    pub engine: EngineInfo,
    /// Total CPU threads.
    pub threads: usize,
    /// Images per inference batch.
    pub batch_size: usize,
    /// The preprocessing applied.
    pub preprocess: PreprocessConfig,
    /// Where the preprocessing came from.
    pub preprocess_source: String,
    /// Fingerprint of the dataset.
    pub dataset_fingerprint: String,
    /// The shard, when sharded.
    pub shard: Option<Shard>,
    /// How the dataset was read: "folder", "manifest", "wds" or "hf-parquet".
    #[serde(default = "folder")]
    pub dataset_format: String,
    /// A manifest's image root: the absolute folder its relative paths resolve against
    /// (so the report reads the images again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_root: Option<String>,
    /// The label column of a manifest or Hugging Face Parquet dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_column: Option<String>,
    /// Which part of the dataset was scored when not all of it (`sample`, `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    /// How class folders map onto model labels.
    pub label_mapping: LabelMapping,
    /// Warnings of the run (also printed).
    pub warnings: Vec<String>,
    /// How `attn_rollout` maps onto the image, for a model with attention outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<crate::attention::AttentionInfo>,
}

impl RunInfo {
    /// Provider, precision and, for OpenVINO, the plugin and runtime versions.
    pub fn engine_summary(&self) -> String {
        crate::infer::engine_summary(self.provider, self.precision, &self.engine)
    }

    /// The CPU model and its recorded ISA flags ("not recorded" for older runs).
    pub fn cpu_summary(&self) -> String {
        if self.engine.cpu.model.is_empty() {
            "not recorded".into()
        } else {
            self.engine.cpu.summary()
        }
    }
}

fn folder() -> String {
    "folder".into()
}

/// `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricsFile {
    /// The layout of this file: 2 = sparse confusion cells (1, absent: a dense matrix).
    #[serde(default = "schema_one")]
    pub schema_version: u32,
    /// The metrics themselves.
    #[serde(flatten)]
    pub metrics: Metrics,
    /// How fast the run went.
    pub throughput: Throughput,
    /// Where the numbers came from.
    pub run: RunInfo,
}

/// The `metrics.json` layout this version writes (and the newest it reads).
pub const METRICS_SCHEMA_VERSION: u32 = 2;

fn schema_one() -> u32 {
    1
}

impl MetricsFile {
    /// Read a `metrics.json` file (this layout or an older one).
    pub(crate) fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mf: MetricsFile = serde_json::from_str(&text).map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            what: format!("not a vit-batch metrics.json: {e}"),
        })?;
        if mf.schema_version > METRICS_SCHEMA_VERSION {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                what: format!(
                    "metrics.json schema {} is newer than this vit-batch reads ({METRICS_SCHEMA_VERSION}): upgrade vit-batch",
                    mf.schema_version
                ),
            });
        }
        Ok(mf)
    }
}

/// A finished run folder, opened for reading.
#[derive(Debug, Clone)]
pub struct Run {
    /// The run folder.
    pub dir: PathBuf,
    /// Its `metrics.json`.
    pub metrics: MetricsFile,
}

impl Run {
    /// The run folder a user-given path designates (a file inside it names its folder).
    pub(crate) fn dir_of(p: &Path) -> PathBuf {
        if p.is_file() {
            p.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        } else {
            p.to_path_buf()
        }
    }

    /// Check that `dir` holds a finished run (both `metrics.json` and
    /// `predictions.parquet`), without reading it.
    pub(crate) fn check_finished(dir: &Path) -> Result<()> {
        if !dir.is_dir() {
            return Err(Error::NotARun {
                dir: dir.to_path_buf(),
                missing: "the folder",
            });
        }
        for f in [METRICS_JSON, PREDICTIONS] {
            if !dir.join(f).is_file() {
                return Err(Error::NotARun {
                    dir: dir.to_path_buf(),
                    missing: f,
                });
            }
        }
        Ok(())
    }

    /// Open the finished run at `p` (a run folder, or a file inside one).
    pub(crate) fn open(p: &Path) -> Result<Run> {
        let dir = Self::dir_of(p);
        Self::check_finished(&dir)?;
        let metrics = MetricsFile::read(&dir.join(METRICS_JSON))?;
        Ok(Run { dir, metrics })
    }

    /// Path of `predictions.parquet`.
    pub(crate) fn predictions_path(&self) -> PathBuf {
        self.dir.join(PREDICTIONS)
    }

    /// All rows of `predictions.parquet`, in order.
    pub(crate) fn rows(&self) -> Result<Vec<Row>> {
        record::read_parquet(&self.predictions_path())
    }
}

/// What to do with an output folder that already holds something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutPolicy {
    /// Refuse a folder that is not empty.
    Fresh,
    /// Replace a run already there (vit-batch's own files only, by name).
    Overwrite,
    /// Continue the unfinished run there.
    Resume,
}

/// The exclusive lock of a run folder, held by the one process writing into it
/// (`score`, `merge`, `report`, pipeline stages) until dropped. The lock file holds
/// the holder's pid, for the message a second writer gets.
#[derive(Debug)]
pub(crate) struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Lock `dir` (an existing folder) or fail at once, naming the holder's pid.
    pub(crate) fn acquire(dir: &Path) -> Result<RunLock> {
        use std::io::{Read, Seek, Write};
        let p = dir.join(LOCK_FILE);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(|e| Error::OutDir {
                dir: dir.to_path_buf(),
                what: format!("cannot write to it: {e}"),
            })?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = f.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(Error::OutDir {
                    dir: dir.to_path_buf(),
                    what: format!(
                        "is in use by another vit-batch process (pid {}, lock {}); wait for it to finish or choose another folder",
                        if pid.is_empty() { "unknown" } else { pid },
                        p.display()
                    ),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&p, e)),
        }
        f.set_len(0)
            .and_then(|()| f.rewind())
            .and_then(|()| writeln!(f, "{}", std::process::id()))
            .map_err(|e| Error::io(&p, e))?;
        Ok(RunLock { _file: f })
    }
}

/// `p` absolute, with symlinks resolved as far as it exists (the rest appended,
/// `.` and `..` applied), so two spellings of one folder compare equal.
pub(crate) fn resolved(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut base = abs.clone();
    let mut rest = vec![];
    loop {
        if let Ok(c) = base.canonicalize() {
            base = c;
            break;
        }
        match (base.file_name().map(|n| n.to_os_string()), base.parent()) {
            (Some(n), Some(parent)) => {
                rest.push(n);
                base = parent.to_path_buf();
            }
            _ => break,
        }
    }
    for n in rest.into_iter().rev() {
        match n.to_str() {
            Some(".") => {}
            Some("..") => {
                base.pop();
            }
            _ => base.push(n),
        }
    }
    base
}

/// Refuse an output `out` that is, is inside, or contains the input `input`: the
/// one rule of `score` (OUT_DIR vs DATA_DIR), `merge` (`--out` vs each shard) and
/// the gate (`--json`/`--markdown`/`--junit` vs each compared run). The message
/// names both paths, with `out_what` and `in_what` saying what each is.
pub(crate) fn check_apart(out: &Path, out_what: &str, input: &Path, in_what: &str) -> Result<()> {
    let (o, i) = (resolved(out), resolved(input));
    let relation = if o == i {
        "is"
    } else if o.starts_with(&i) {
        "is inside"
    } else if i.starts_with(&o) {
        "contains"
    } else {
        return Ok(());
    };
    Err(Error::Output {
        what: format!(
            "{out_what} {} {relation} {in_what} {}: vit-batch never writes into its inputs; choose another path",
            out.display(),
            input.display()
        ),
    })
}

/// The gate's files (`--json`, `--markdown`, `--junit` of `compare` and of a
/// pipeline's `[gate]`) may not be written into either compared run folder.
pub(crate) fn check_gate_outputs(opts: &crate::options::CompareOptions) -> Result<()> {
    let outs = [
        ("--json", &opts.json),
        ("--markdown", &opts.markdown),
        ("--junit", &opts.junit),
    ];
    for (flag, out) in outs {
        let Some(out) = out else { continue };
        for (what, run) in [
            ("the baseline run folder", &opts.baseline),
            ("the candidate run folder", &opts.candidate),
        ] {
            check_apart(out, flag, &Run::dir_of(run), what)?;
        }
    }
    Ok(())
}

/// What an output folder holds, by vit-batch's own names.
struct Survey {
    /// Anything at all besides the lock file.
    any: bool,
    /// `run.json` or `predictions.parquet`.
    run: bool,
    /// Entries vit-batch did not write (relative paths), first few.
    foreign: Vec<String>,
}

/// A file name vit-batch may leave in a run folder: a temporary file or the probe.
fn is_tmp(name: &str) -> bool {
    name.starts_with(TMP_PREFIX) && name != LOCK_FILE
}

/// Look at every entry of `out` (and of its `charts/` and `parts/`); a symlinked
/// `charts/` or `parts/` is refused here, so nothing is ever written through one.
fn survey(out: &Path) -> Result<Survey> {
    let mut s = Survey {
        any: false,
        run: out.join(RUN_JSON).exists() || out.join(PREDICTIONS).exists(),
        foreign: vec![],
    };
    let rd = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
    for e in rd {
        let e = e.map_err(|e| Error::io(out, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name == LOCK_FILE {
            continue;
        }
        s.any = true;
        let ft = e
            .file_type()
            .map_err(|err| Error::io(out.join(&name), err))?;
        if name == CHARTS_DIR || name == PARTS_DIR {
            if ft.is_symlink() {
                return Err(Error::OutDir {
                    dir: out.to_path_buf(),
                    what: format!(
                        "{name}/ is a symbolic link ({}); vit-batch never writes through one: remove it",
                        e.path().display()
                    ),
                });
            }
            if !ft.is_dir() {
                s.foreign.push(name);
                continue;
            }
            let own: fn(&str) -> bool = if name == CHARTS_DIR {
                |n| crate::report::charts::CHART_FILES.contains(&n)
            } else {
                |n| record::part_range(n).is_some()
            };
            for c in std::fs::read_dir(e.path()).map_err(|err| Error::io(e.path(), err))? {
                let c = c.map_err(|err| Error::io(e.path(), err))?;
                let cn = c.file_name().to_string_lossy().into_owned();
                let plain = c.file_type().is_ok_and(|t| t.is_file());
                if !plain || !(own(&cn) || is_tmp(&cn)) {
                    s.foreign.push(format!("{name}/{cn}"));
                }
            }
        } else if !((RUN_FILES.contains(&name.as_str()) && !ft.is_dir()) || is_tmp(&name)) {
            s.foreign.push(name);
        }
    }
    s.foreign.sort();
    Ok(s)
}

/// Remove vit-batch's own files from `dir` (`charts/` or `parts/`), by name, then
/// the folder itself if that left it empty. Never follows a symlink.
fn remove_own(dir: &Path, own: fn(&str) -> bool) -> Result<()> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    if !meta.is_dir() {
        return Err(Error::OutDir {
            dir: dir.to_path_buf(),
            what: "is not a folder vit-batch wrote (a file or a symbolic link); remove it".into(),
        });
    }
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().is_ok_and(|t| t.is_file()) && (own(&name) || is_tmp(&name)) {
            std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        // Someone else's file is in there: it stays, and so does the folder.
        Err(_) if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) => Ok(()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Remove a run's committed parts (and their temporary files), then `parts/`.
pub(crate) fn remove_parts(parts_dir: &Path) -> Result<()> {
    remove_own(parts_dir, |n| record::part_range(n).is_some())
}

/// Remove vit-batch's own files from a run folder (`overwrite`), by name; nothing
/// else, and never a whole tree.
pub(crate) fn clear_run_files(out: &Path) -> Result<()> {
    for f in RUN_FILES {
        let p = out.join(f);
        if *f == CHARTS_DIR {
            remove_own(&p, |n| crate::report::charts::CHART_FILES.contains(&n))?;
        } else if *f == PARTS_DIR {
            remove_parts(&p)?;
        } else if std::fs::symlink_metadata(&p).is_ok() {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

/// The checks of [`prepare_out_dir`] that need no lock: `out` is a folder (or
/// missing), holds nothing vit-batch did not write, no symlinked `charts/`/`parts/`,
/// and a run to resume under `Resume`. Pipelines call it at plan time.
pub(crate) fn check_out_dir(out: &Path, policy: OutPolicy) -> Result<()> {
    let Ok(meta) = std::fs::metadata(out) else {
        if policy == OutPolicy::Resume {
            return Err(Error::OutDir {
                dir: out.to_path_buf(),
                what: "holds no run to resume (no such folder)".into(),
            });
        }
        return Ok(());
    };
    if !meta.is_dir() {
        return Err(Error::OutDir {
            dir: out.to_path_buf(),
            what: "exists and is not a folder".into(),
        });
    }
    let s = survey(out)?;
    if !s.foreign.is_empty() {
        let shown: Vec<&str> = s.foreign.iter().take(5).map(String::as_str).collect();
        return Err(Error::OutDir {
            dir: out.to_path_buf(),
            what: format!(
                "holds files vit-batch did not write ({}{}); vit-batch only writes into an empty folder or its own run folder, even with {}: choose another folder",
                shown.join(", "),
                if s.foreign.len() > shown.len() { ", ..." } else { "" },
                crate::error::option_name("overwrite"),
            ),
        });
    }
    if policy == OutPolicy::Resume && !out.join(RUN_JSON).exists() {
        return Err(Error::OutDir {
            dir: out.to_path_buf(),
            what: "holds no run to resume (no run.json)".into(),
        });
    }
    Ok(())
}

/// Prepare `out` for a run under `policy`: the one output-folder rule of `score` and
/// `merge`. Takes the folder's lock (held until the returned guard is dropped),
/// refuses to mix runs unless asked, refuses folders holding anything vit-batch did
/// not write, and fails now, not after an hour, when the folder is not writable.
pub(crate) fn prepare_out_dir(out: &Path, policy: OutPolicy) -> Result<RunLock> {
    check_out_dir(out, policy)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let lock = RunLock::acquire(out)?;
    // Again under the lock: another process may have written there meanwhile.
    check_out_dir(out, policy)?;
    let s = survey(out)?;
    match policy {
        OutPolicy::Resume => {}
        OutPolicy::Fresh if s.any => {
            return Err(Error::OutDir {
                dir: out.to_path_buf(),
                what: format!(
                    "already holds {}; pass {} to replace it or {} to finish it",
                    if s.run {
                        "a run"
                    } else {
                        "files of an unfinished run"
                    },
                    crate::error::option_name("overwrite"),
                    crate::error::option_name("resume"),
                ),
            })
        }
        OutPolicy::Overwrite if s.any => clear_run_files(out)?,
        OutPolicy::Fresh | OutPolicy::Overwrite => {}
    }
    let probe = out.join(".vit-batch-write-test");
    std::fs::write(&probe, b"").map_err(|e| Error::OutDir {
        dir: out.to_path_buf(),
        what: format!("cannot write to it: {e}"),
    })?;
    let _ = std::fs::remove_file(probe);
    Ok(lock)
}

/// Lock a folder the report writes into (created when missing), refusing a
/// symlinked `charts/` there.
pub(crate) fn lock_report_dir(out: &Path) -> Result<RunLock> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let charts = out.join(CHARTS_DIR);
    if std::fs::symlink_metadata(&charts).is_ok_and(|m| !m.is_dir()) {
        return Err(Error::OutDir {
            dir: out.to_path_buf(),
            what: format!(
                "{} is a symbolic link or a file; vit-batch never writes through one: remove it",
                charts.display()
            ),
        });
    }
    RunLock::acquire(out)
}

/// Merge committed parts into `predictions.parquet` and write `metrics.json`, both
/// atomically; metrics are computed from the parts in the same pass. The parts are
/// removed afterwards.
pub(crate) fn finalize(
    out: &Path,
    parts: &Parts,
    identity: &RunIdentity,
    skipped: u64,
    throughput: Throughput,
    run: RunInfo,
) -> Result<MetricsFile> {
    let files = parts.tiled(identity.rows)?;
    let batches = files.iter().map(|p| record::read_parquet(p));
    let mf = write_outputs(out, batches, identity, skipped, throughput, run)?;
    remove_parts(&parts.dir)?;
    Ok(mf)
}

/// The one way a run's outputs are written, shared by `score`, `--resume` and
/// `merge`: stream row batches (already in final order) into `predictions.parquet`,
/// computing the metrics in the same pass, then write `metrics.json`.
pub(crate) fn write_outputs(
    out: &Path,
    batches: impl Iterator<Item = Result<Vec<Row>>>,
    identity: &RunIdentity,
    skipped: u64,
    throughput: Throughput,
    run: RunInfo,
) -> Result<MetricsFile> {
    let mut acc =
        metrics::Accumulator::new(identity.top_k, skipped).with_slices(&identity.slice_by);
    let mut last: Option<String> = None;
    let acc_ref = &mut acc;
    let last_ref = &mut last;
    record::write_streamed(
        &out.join(PREDICTIONS),
        batches.map(|b| {
            let rows = b?;
            for r in &rows {
                if let Some(prev) = last_ref.as_deref() {
                    if prev.as_bytes() >= r.path.as_bytes() {
                        return Err(Error::Corrupt {
                            path: out.join(PREDICTIONS),
                            what: format!(
                                "rows out of order or duplicated: '{}' after '{prev}'",
                                r.path
                            ),
                        });
                    }
                }
                *last_ref = Some(r.path.clone());
                acc_ref.add(r);
            }
            Ok(rows)
        }),
    )?;
    let mf = MetricsFile {
        schema_version: METRICS_SCHEMA_VERSION,
        metrics: acc.finish(&identity.model_labels),
        throughput,
        run,
    };
    // Compact: at 1,000 classes the pretty-printed file was megabytes of whitespace
    // (`jq . metrics.json` shows it indented).
    let mut text = serde_json::to_string(&mf)?;
    text.push('\n');
    crate::fs::atomic_write_bytes(&out.join(METRICS_JSON), text.as_bytes())?;
    Ok(mf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_hash_never_panics() {
        assert_eq!(short_hash("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_hash("abc"), "abc");
        assert_eq!(short_hash("ééééééééééééé"), "éééééééééééé");
    }
}
