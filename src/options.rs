//! Every option of every command, in one place.
//!
//! Why it exists: a command's options reach vit-batch two ways, as command-line
//! flags and as a table of a pipeline file. Both deserialize into the same struct
//! (clap `Args` and serde `Deserialize` derived on it), so they have the same names,
//! the same defaults (the `DEFAULT_*` constants below, written once) and the same
//! checks (each struct's `validate`). A field's doc comment is its `--help` text.
//! Adding an option means adding one field here and reading it where it is used.
//!
//! Names: a flag `--batch-size` is the key `batch_size` of a pipeline table. Errors
//! of [`validate`](ScoreOptions::validate) name the key ([`Error::InvalidOption`]);
//! the binary shows the flag, `vit-batch run` the table and key.

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
pub use crate::export::GraphVariant;
pub use crate::infer::{Precision, Provider};
pub use crate::report::Format;
pub use crate::run::Shard;

/// Images per inference batch.
pub const DEFAULT_BATCH_SIZE: usize = 32;
/// Predictions kept per image.
pub const DEFAULT_TOP_K: usize = 5;
/// Rows per committed part: what a killed run can lose at most.
pub const DEFAULT_CHECKPOINT_ROWS: usize = 1024;
/// Largest decoded image, in pixels (decompression bombs are refused).
pub const DEFAULT_MAX_PIXELS: u64 = crate::preprocess::DEFAULT_MAX_PIXELS;
/// Largest input tensor of one batch, in bytes (batch x 3 x H x W x 4): 4 GiB.
pub const DEFAULT_MAX_BATCH_BYTES: u64 = 4 << 30;
/// Longest one batch's inference may take, in seconds (then the run ends, exit 2).
pub const DEFAULT_TIMEOUT_PER_BATCH: u64 = 600;
/// Largest image file read, in bytes: 1 GiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = crate::preprocess::DEFAULT_MAX_FILE_BYTES;
/// Default-domain ONNX opset of an export (as optimum).
pub const DEFAULT_OPSET: i64 = 18;
/// Classes of a preset exported with random weights (ImageNet's, as HF's ViT).
pub const DEFAULT_NUM_LABELS: usize = 1000;
/// Seed of random initialisation and of data shuffling.
pub const DEFAULT_SEED: u64 = 0;
/// Training epochs.
pub const DEFAULT_EPOCHS: usize = 30;
/// Training images per step.
pub const DEFAULT_TRAIN_BATCH_SIZE: usize = 64;
/// Peak learning rate (AdamW).
pub const DEFAULT_LR: f64 = 1e-3;
/// Decoupled weight decay (AdamW).
pub const DEFAULT_WEIGHT_DECAY: f64 = 0.05;
/// Warm-up, as a fraction of all steps.
pub const DEFAULT_WARMUP: f64 = 0.1;
/// Fraction of each class held out for validation.
pub const DEFAULT_VAL_SPLIT: f64 = 0.1;
/// Largest allowed top-1 accuracy drop, in percentage points.
pub const DEFAULT_MAX_ACCURACY_DROP_PP: f64 = 0.5;
/// Largest allowed per-class recall drop, in percentage points.
pub const DEFAULT_MAX_CLASS_RECALL_DROP_PP: f64 = 5.0;
/// Default `max_slice_drop_pp` of `compare`.
pub const DEFAULT_MAX_SLICE_DROP_PP: f64 = 5.0;
/// Classes with fewer compared images are not gated on recall.
pub const DEFAULT_MIN_CLASS_SUPPORT: u64 = 20;
/// Significance level of McNemar's exact test.
pub const DEFAULT_ALPHA: f64 = 0.05;

/// serde's defaults: the constants above, as functions.
mod defaults {
    pub fn batch_size() -> usize {
        super::DEFAULT_BATCH_SIZE
    }
    pub fn top_k() -> usize {
        super::DEFAULT_TOP_K
    }
    pub fn checkpoint_rows() -> usize {
        super::DEFAULT_CHECKPOINT_ROWS
    }
    pub fn path_column() -> String {
        "path".into()
    }
    pub fn label_column() -> String {
        "label".into()
    }
    pub fn max_pixels() -> u64 {
        super::DEFAULT_MAX_PIXELS
    }
    pub fn max_batch_bytes() -> u64 {
        super::DEFAULT_MAX_BATCH_BYTES
    }
    pub fn max_file_bytes() -> u64 {
        super::DEFAULT_MAX_FILE_BYTES
    }
    pub fn timeout_per_batch() -> u64 {
        super::DEFAULT_TIMEOUT_PER_BATCH
    }
    pub fn yes() -> bool {
        true
    }
    pub fn opset() -> i64 {
        super::DEFAULT_OPSET
    }
    pub fn num_labels() -> usize {
        super::DEFAULT_NUM_LABELS
    }
    pub fn epochs() -> usize {
        super::DEFAULT_EPOCHS
    }
    pub fn train_batch_size() -> usize {
        super::DEFAULT_TRAIN_BATCH_SIZE
    }
    pub fn lr() -> f64 {
        super::DEFAULT_LR
    }
    pub fn weight_decay() -> f64 {
        super::DEFAULT_WEIGHT_DECAY
    }
    pub fn warmup() -> f64 {
        super::DEFAULT_WARMUP
    }
    pub fn val_split() -> f64 {
        super::DEFAULT_VAL_SPLIT
    }
    pub fn max_accuracy_drop() -> f64 {
        super::DEFAULT_MAX_ACCURACY_DROP_PP
    }
    pub fn max_class_recall_drop() -> f64 {
        super::DEFAULT_MAX_CLASS_RECALL_DROP_PP
    }
    pub fn max_slice_drop() -> f64 {
        super::DEFAULT_MAX_SLICE_DROP_PP
    }
    pub fn min_class_support() -> u64 {
        super::DEFAULT_MIN_CLASS_SUPPORT
    }
    pub fn alpha() -> f64 {
        super::DEFAULT_ALPHA
    }
    pub fn formats() -> Vec<super::Format> {
        super::Format::ALL.to_vec()
    }
}

fn invalid(option: &'static str, what: impl Into<String>) -> Error {
    Error::InvalidOption {
        option,
        what: what.into(),
    }
}

fn at_least_one(option: &'static str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(invalid(option, "must be at least 1"));
    }
    Ok(())
}

/// Refuse a URI where a local path is expected: `s3://bucket/out` would otherwise be
/// written to `./s3:/bucket/out` and reported as written.
fn local_path(option: &'static str, p: &std::path::Path) -> Result<()> {
    let s = p.to_string_lossy();
    if let Some((scheme, _)) = s.split_once("://") {
        let uri_like = !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c));
        if uri_like {
            return Err(invalid(
                option,
                format!("'{s}' is a URI ({scheme}://): vit-batch reads and writes local paths only; copy or mount it first"),
            ));
        }
    }
    Ok(())
}

fn finite_nonneg(option: &'static str, v: f64, unit: &str) -> Result<()> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(invalid(
            option,
            format!("must be a number >= 0 ({unit}), got {v}"),
        ));
    }
    Ok(())
}

impl std::str::FromStr for Shard {
    type Err = String;
    /// `K/N`, 0-based: `3/8` is the fourth of eight shards.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}': expected K/N, e.g. 0/4"))?;
        let index: usize = k
            .trim()
            .parse()
            .map_err(|_| format!("'{s}': K is not a number"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("'{s}': N is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("'{s}': need 0 <= K < N"));
        }
        Ok(Shard { index, count })
    }
}

/// A shard written `"K/N"` in a pipeline file.
fn de_shard<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Shard>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| s.parse().map_err(serde::de::Error::custom))
        .transpose()
}

/// How `score` reads its dataset argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    /// A folder `DATA_DIR/<class>/.../<image>` (the class is the first-level folder).
    Folder,
    /// A CSV or Parquet file with a path and a label column per image.
    Manifest,
    /// WebDataset shards: a `.tar` file or a folder of them, read in place.
    Wds,
    /// Hugging Face `datasets` Parquet: a `.parquet` file, a folder of them or a glob;
    /// the image in a struct<bytes, path> column, class names from the file's metadata.
    #[value(name = "hf-parquet")]
    #[serde(rename = "hf-parquet")]
    HfParquet,
}

impl DatasetFormat {
    /// The name the `format` option takes (and run.json records).
    pub fn name(self) -> &'static str {
        match self {
            DatasetFormat::Folder => "folder",
            DatasetFormat::Manifest => "manifest",
            DatasetFormat::Wds => "wds",
            DatasetFormat::HfParquet => "hf-parquet",
        }
    }
}

/// Where `score` takes its preprocessing from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PreprocessMode {
    /// The model folder's `preprocessor_config.json` (required).
    #[default]
    Model,
    /// ImageNet mean/std, bilinear, resize to the model's input size.
    Defaults,
}

/// A resize filter, as Pillow names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resample {
    /// Pillow NEAREST (0).
    Nearest,
    /// Pillow BILINEAR (2).
    Bilinear,
    /// Pillow BICUBIC (3).
    Bicubic,
}

impl Resample {
    /// Pillow's code, as `preprocessor_config.json` writes it.
    pub fn pil_code(self) -> u32 {
        match self {
            Resample::Nearest => crate::preprocess::PIL_NEAREST,
            Resample::Bilinear => crate::preprocess::PIL_BILINEAR,
            Resample::Bicubic => crate::preprocess::PIL_BICUBIC,
        }
    }
}

/// `vit-batch score`: score a labeled image folder with an ONNX ViT.
#[derive(Debug, Clone, PartialEq, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreOptions {
    /// The dataset: a folder DATA_DIR/<class>/.../<image>, or a manifest (.csv or
    /// .parquet with a path and a label column per image).
    pub data_dir: PathBuf,
    /// A .onnx file or a model folder (model.onnx, config.json, preprocessor_config.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Output run folder.
    #[arg(long)]
    pub out: PathBuf,
    /// How to read DATA_DIR (default: by what it is: a folder of class folders, a .tar
    /// or folder of them, a Hugging Face .parquet (or folder or glob of them), else a
    /// .csv or .parquet manifest).
    #[arg(long = "format", value_enum)]
    #[serde(default)]
    pub format: Option<DatasetFormat>,
    /// Manifest column holding each image's path.
    #[arg(long, default_value = "path")]
    #[serde(default = "defaults::path_column")]
    pub path_column: String,
    /// Manifest or Hugging Face Parquet column holding each image's label (a class name
    /// or a class id).
    #[arg(long, default_value = "label")]
    #[serde(default = "defaults::label_column")]
    pub label_column: String,
    /// Folder the manifest's relative paths are relative to (default: the manifest's
    /// folder).
    #[arg(long)]
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Also compute the metrics per value of these carried columns (manifest or Parquet
    /// columns, WebDataset JSON keys; comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "COLUMN[,COLUMN]")]
    #[serde(default)]
    pub slice_by: Vec<String>,
    /// Images per inference batch.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Total CPU threads for preprocessing and ONNX Runtime (default: all cores).
    #[arg(long)]
    #[serde(default)]
    pub threads: Option<usize>,
    /// Execution provider.
    #[arg(long, value_enum, default_value_t = Provider::Cpu)]
    #[serde(default)]
    pub provider: Provider,
    /// Arithmetic of inference: fp32 (the model as exported) or bf16 (needs
    /// `--provider openvino` and a CPU with avx512_bf16 or amx_bf16; else exit 2).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    #[serde(default)]
    pub precision: Precision,
    /// Path of the OpenVINO plugin EP, libonnxruntime_providers_openvino_plugin.so
    /// (else VIT_BATCH_OPENVINO_LIB, else the project's .ort/ from
    /// `scripts/setup --openvino`).
    #[arg(long)]
    #[serde(default)]
    pub openvino_lib: Option<PathBuf>,
    /// Predictions kept per image (top-k accuracy uses the same k).
    #[arg(long, default_value_t = DEFAULT_TOP_K)]
    #[serde(default = "defaults::top_k")]
    pub top_k: usize,
    /// CSV `folder,label` mapping class folders to model labels.
    #[arg(long)]
    #[serde(default)]
    pub label_map: Option<PathBuf>,
    /// Score only the first N images (in sorted order).
    #[arg(long, conflicts_with = "sample")]
    #[serde(default)]
    pub limit: Option<usize>,
    /// Follow symbolic links that lead outside DATA_DIR (by default an image link
    /// leaving it is an error row and a folder link a warning; both are counted).
    #[arg(long)]
    #[serde(default)]
    pub follow_links: bool,
    /// Score a stratified sample of N images: each class in proportion to its size
    /// (at least one per class while N allows), chosen by --seed. A smoke test that
    /// covers every class, unlike --limit.
    #[arg(long, value_name = "N")]
    #[serde(default)]
    pub sample: Option<usize>,
    /// Seed of --sample (the same seed gives the same images on every machine).
    #[arg(long, default_value_t = 0, requires = "sample")]
    #[serde(default)]
    pub seed: u64,
    /// Path of libonnxruntime.so.<version> (else ORT_DYLIB_PATH, else the project's .ort/).
    #[arg(long)]
    #[serde(default)]
    pub ort_lib: Option<PathBuf>,
    /// Refuse images with more pixels than this (decompression bombs).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    #[serde(default = "defaults::max_pixels")]
    pub max_pixels: u64,
    /// Refuse to start when one batch's input tensor (batch x 3 x H x W float32, the
    /// batch being the larger of the batch size and a fixed batch axis) is larger
    /// than this many bytes (default 4 GiB), before anything is allocated.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BATCH_BYTES)]
    #[serde(default = "defaults::max_batch_bytes")]
    pub max_batch_bytes: u64,
    /// Image files larger than this many bytes (default 1 GiB) are not read: each is
    /// an error row, checked from the file's size.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FILE_BYTES)]
    #[serde(default = "defaults::max_file_bytes")]
    pub max_file_bytes: u64,
    /// End the run (exit 2) when one batch's inference has not returned after this
    /// many seconds (a graph that loops forever); the committed parts are kept for
    /// `--resume`.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TIMEOUT_PER_BATCH)]
    #[serde(default = "defaults::timeout_per_batch")]
    pub timeout_per_batch: u64,
    /// Where the preprocessing comes from: `model` (the model folder's
    /// preprocessor_config.json; a model without one is refused) or `defaults`
    /// (ImageNet mean/std, bilinear, resize to the model's input size).
    #[arg(long, value_enum, default_value_t = PreprocessMode::Model)]
    #[serde(default)]
    pub preprocess: PreprocessMode,
    /// Override: output side in pixels (square), after any crop.
    #[arg(long, value_name = "PX")]
    #[serde(default)]
    pub size: Option<u32>,
    /// Override: resize filter.
    #[arg(long, value_enum)]
    #[serde(default)]
    pub resample: Option<Resample>,
    /// Override: per-channel mean, e.g. 0.485,0.456,0.406.
    #[arg(long, value_delimiter = ',', value_name = "R,G,B")]
    #[serde(default)]
    pub mean: Option<Vec<f32>>,
    /// Override: per-channel std, e.g. 0.229,0.224,0.225.
    #[arg(long, value_delimiter = ',', value_name = "R,G,B")]
    #[serde(default)]
    pub std: Option<Vec<f32>>,
    /// Fail the run (exit 3) when more than this percentage of its images fail to
    /// score. A run that evaluates no image at all always fails.
    #[arg(long, value_name = "PCT")]
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    /// Fail the run (exit 3) when fewer images than this are evaluated.
    #[arg(long, value_name = "N")]
    #[serde(default)]
    pub min_evaluated: Option<u64>,
    /// Override, as timm's crop_pct: resize the shorter side to size / crop_pct, then
    /// centre-crop size x size (e.g. 0.875 or 0.9).
    #[arg(long, value_name = "F")]
    #[serde(default)]
    pub crop_pct: Option<f64>,
    /// ONNX Runtime intra-op spinning: on (ORT's default, measured faster here) or off
    /// (idle ORT threads sleep at once, leaving the cores to other work).
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = BoolishValueParser::new())]
    #[serde(default = "defaults::yes")]
    pub ort_spin: bool,
    /// Finish an interrupted run in OUT, scoring only what is missing.
    #[arg(long, conflicts_with = "overwrite")]
    #[serde(default)]
    pub resume: bool,
    /// Replace a run already in OUT (vit-batch's own files only).
    #[arg(long)]
    #[serde(default)]
    pub overwrite: bool,
    /// Score shard K of N (0-based), e.g. --shard 3/8.
    #[arg(long, value_name = "K/N")]
    #[serde(default, deserialize_with = "de_shard")]
    pub shard: Option<Shard>,
    /// Total shards when the index comes from JOB_COMPLETION_INDEX (Kubernetes).
    #[arg(long, env = "VIT_BATCH_SHARDS")]
    #[serde(default)]
    pub shards: Option<usize>,
    /// Commit progress every N rows (what a killed run can lose at most; resume).
    #[arg(long, default_value_t = DEFAULT_CHECKPOINT_ROWS)]
    #[serde(default = "defaults::checkpoint_rows")]
    pub checkpoint_rows: usize,
    /// Where `shard` came from (a flag or a scheduler's variables), for messages.
    #[arg(skip)]
    #[serde(skip)]
    pub shard_source: Option<String>,
}

impl ScoreOptions {
    /// The defaults, for `data_dir` scored with `model` into `out`.
    pub fn new(
        data_dir: impl Into<PathBuf>,
        model: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
    ) -> Self {
        ScoreOptions {
            data_dir: data_dir.into(),
            model: model.into(),
            out: out.into(),
            batch_size: DEFAULT_BATCH_SIZE,
            threads: None,
            provider: Provider::Cpu,
            precision: Precision::Fp32,
            openvino_lib: None,
            top_k: DEFAULT_TOP_K,
            label_map: None,
            limit: None,
            sample: None,
            seed: 0,
            follow_links: false,
            format: None,
            path_column: defaults::path_column(),
            label_column: defaults::label_column(),
            root: None,
            slice_by: vec![],
            ort_lib: None,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            timeout_per_batch: DEFAULT_TIMEOUT_PER_BATCH,
            preprocess: PreprocessMode::Model,
            size: None,
            resample: None,
            mean: None,
            std: None,
            crop_pct: None,
            max_error_rate: None,
            min_evaluated: None,
            ort_spin: true,
            resume: false,
            overwrite: false,
            shard: None,
            shards: None,
            checkpoint_rows: DEFAULT_CHECKPOINT_ROWS,
            shard_source: None,
        }
    }

    /// Total threads: the option, else every core.
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }

    /// How the dataset argument is read: the `format` option, else by what it is.
    pub fn dataset_format(&self) -> DatasetFormat {
        self.format
            .unwrap_or(if crate::wds::looks_like_wds(&self.data_dir) {
                DatasetFormat::Wds
            } else if crate::hf::looks_like_hf(&self.data_dir) {
                DatasetFormat::HfParquet
            } else if self.data_dir.is_file() {
                DatasetFormat::Manifest
            } else {
                DatasetFormat::Folder
            })
    }

    /// How `score` lists its dataset.
    pub(crate) fn source_spec(&self) -> crate::source::SourceSpec<'_> {
        crate::source::SourceSpec {
            format: self.dataset_format(),
            data: &self.data_dir,
            root: self.root.as_deref(),
            path_column: &self.path_column,
            label_column: &self.label_column,
            follow_links: self.follow_links,
        }
    }

    /// What to do with a run already in `out`.
    pub fn out_policy(&self) -> crate::run::OutPolicy {
        use crate::run::OutPolicy;
        match (self.resume, self.overwrite) {
            (true, _) => OutPolicy::Resume,
            (false, true) => OutPolicy::Overwrite,
            (false, false) => OutPolicy::Fresh,
        }
    }

    /// Check every value that can be checked without reading files.
    pub fn validate(&self) -> Result<()> {
        at_least_one("batch_size", self.batch_size)?;
        at_least_one("top_k", self.top_k)?;
        at_least_one("checkpoint_rows", self.checkpoint_rows)?;
        if let Some(t) = self.threads {
            at_least_one("threads", t)?;
        }
        if self.resume && self.overwrite {
            return Err(invalid("resume", "cannot be combined with overwrite"));
        }
        if let Some(n) = self.limit {
            at_least_one("limit", n)?;
        }
        if let Some(n) = self.sample {
            at_least_one("sample", n)?;
            if self.limit.is_some() {
                return Err(invalid("sample", "cannot be combined with limit"));
            }
        }
        if self.max_pixels == 0 {
            return Err(invalid("max_pixels", "must be at least 1"));
        }
        if self.max_batch_bytes == 0 {
            return Err(invalid("max_batch_bytes", "must be at least 1"));
        }
        if self.max_file_bytes == 0 {
            return Err(invalid("max_file_bytes", "must be at least 1"));
        }
        if self.timeout_per_batch == 0 {
            return Err(invalid("timeout_per_batch", "must be at least 1 (seconds)"));
        }
        if let Some(r) = self.max_error_rate {
            if !(0.0..=100.0).contains(&r) {
                return Err(invalid(
                    "max_error_rate",
                    format!("must be a percentage in [0, 100], got {r}"),
                ));
            }
        }
        local_path("data_dir", &self.data_dir)?;
        if let Some(r) = &self.root {
            local_path("root", r)?;
        }
        let format = self.dataset_format();
        for (name, set, allowed) in [
            ("root", self.root.is_some(), &[DatasetFormat::Manifest][..]),
            (
                "path_column",
                self.path_column != defaults::path_column(),
                &[DatasetFormat::Manifest],
            ),
            (
                "label_column",
                self.label_column != defaults::label_column(),
                &[DatasetFormat::Manifest, DatasetFormat::HfParquet],
            ),
            (
                "slice_by",
                !self.slice_by.is_empty(),
                &[
                    DatasetFormat::Manifest,
                    DatasetFormat::HfParquet,
                    DatasetFormat::Wds,
                ],
            ),
        ] {
            if set && !allowed.contains(&format) {
                let names: Vec<&str> = allowed.iter().map(|f| f.name()).collect();
                return Err(invalid(
                    name,
                    format!("applies to a {} dataset only", names.join(" or ")),
                ));
            }
        }
        local_path("out", &self.out)?;
        local_path("model", &self.model)?;
        if self.size == Some(0) {
            return Err(invalid("size", "must be at least 1"));
        }
        if let Some(c) = self.crop_pct {
            if !(c > 0.0 && c <= 1.0) {
                return Err(invalid("crop_pct", format!("must be in (0, 1], got {c}")));
            }
        }
        for (name, v) in [("mean", &self.mean), ("std", &self.std)] {
            if let Some(v) = v {
                if v.len() != 3 || v.iter().any(|x| !x.is_finite()) {
                    return Err(invalid(name, "takes three numbers, R,G,B"));
                }
            }
        }
        if self
            .std
            .as_ref()
            .is_some_and(|v| v.iter().any(|&x| x <= 0.0))
        {
            return Err(invalid("std", "must be positive"));
        }
        Ok(())
    }

    /// Take the shard from a scheduler's variables when the `shard` option is not
    /// set: Slurm's `SLURM_ARRAY_TASK_ID` / `SLURM_ARRAY_TASK_COUNT`, or Kubernetes'
    /// `JOB_COMPLETION_INDEX` with the `shards` option. `var` reads a variable
    /// (`std::env::var` in the binary), so the library itself reads no environment.
    pub fn shard_from_scheduler(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<()> {
        if self.shard.is_some() {
            self.shard_source = Some("--shard".into());
            return Ok(());
        }
        let var = |n: &str| var(n).filter(|v| !v.is_empty());
        let parse = |s: String, from: &str| {
            s.parse::<Shard>().map_err(|e| Error::Config {
                what: format!("{from}: {e}"),
            })
        };
        if let (Some(id), Some(count)) = (var("SLURM_ARRAY_TASK_ID"), var("SLURM_ARRAY_TASK_COUNT"))
        {
            self.shard = Some(parse(
                format!("{id}/{count}"),
                "SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT",
            )?);
            self.shard_source = Some(format!("Slurm array task {id} of {count}"));
        } else if let Some(idx) = var("JOB_COMPLETION_INDEX") {
            let Some(n) = self.shards else {
                return Err(invalid(
                    "shards",
                    format!("JOB_COMPLETION_INDEX={idx} is set but the number of shards is not: pass --shards N (or VIT_BATCH_SHARDS)"),
                ));
            };
            self.shard = Some(parse(format!("{idx}/{n}"), "JOB_COMPLETION_INDEX")?);
            self.shard_source = Some(format!("Kubernetes JOB_COMPLETION_INDEX={idx} of {n}"));
        }
        Ok(())
    }
}

/// `vit-batch export`: build a ViT ONNX model folder from a checkpoint or a preset.
#[derive(Debug, Clone, PartialEq, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportOptions {
    /// Hugging Face checkpoint folder (config.json + model.safetensors): ViT, DeiT or timm.
    #[arg(long, conflicts_with = "preset", required_unless_present = "preset")]
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// Preset architecture with random weights (needs random_init).
    #[arg(long, requires = "random_init")]
    #[serde(default)]
    pub preset: Option<String>,
    /// Initialise the preset's weights randomly (seeded).
    #[arg(long)]
    #[serde(default)]
    pub random_init: bool,
    /// Seed of the random weights.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    #[serde(default)]
    pub seed: u64,
    /// Classes of a preset's head.
    #[arg(long, default_value_t = DEFAULT_NUM_LABELS)]
    #[serde(default = "defaults::num_labels")]
    pub num_labels: usize,
    /// Output model folder (model.onnx, config.json, preprocessor_config.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Default-domain ONNX opset (17 to 23).
    #[arg(long, default_value_t = DEFAULT_OPSET)]
    #[serde(default = "defaults::opset")]
    pub opset: i64,
    /// Add every layer's attention probabilities as outputs `attentions.{i}`.
    #[arg(long)]
    #[serde(default)]
    pub with_attentions: bool,
    /// Graph variant: fused (ONNX Runtime contrib ops, measured fastest: see
    /// BENCHMARKS.md) or standard (portable ONNX).
    #[arg(long, value_enum, default_value_t = GraphVariant::Fused)]
    #[serde(default)]
    pub variant: GraphVariant,
}

/// Where an export's weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportSource {
    /// A folder with `config.json` + `model.safetensors`.
    Checkpoint(PathBuf),
    /// A preset architecture (see [`crate::vit::PRESETS`]) with seeded random weights.
    Preset {
        /// Preset name.
        name: String,
        /// Seed of the weights.
        seed: u64,
        /// Classes of the head.
        num_labels: usize,
    },
}

impl ExportOptions {
    /// The defaults, exporting `source` into `out`.
    pub fn new(source: ExportSource, out: impl Into<PathBuf>) -> Self {
        let (checkpoint, preset, seed, num_labels) = match source {
            ExportSource::Checkpoint(c) => (Some(c), None, DEFAULT_SEED, DEFAULT_NUM_LABELS),
            ExportSource::Preset {
                name,
                seed,
                num_labels,
            } => (None, Some(name), seed, num_labels),
        };
        ExportOptions {
            random_init: preset.is_some(),
            checkpoint,
            preset,
            seed,
            num_labels,
            out: out.into(),
            opset: DEFAULT_OPSET,
            with_attentions: false,
            variant: GraphVariant::Fused,
        }
    }

    /// The weights to export: a checkpoint, or a preset with `random_init`.
    pub fn source(&self) -> Result<ExportSource> {
        match (&self.checkpoint, &self.preset) {
            (Some(_), Some(_)) => Err(invalid("checkpoint", "give checkpoint or preset, not both")),
            (Some(c), None) => Ok(ExportSource::Checkpoint(c.clone())),
            (None, Some(_)) if !self.random_init => Err(invalid(
                "random_init",
                "a preset has no trained weights: set random_init to export it with seeded random weights",
            )),
            (None, Some(name)) => Ok(ExportSource::Preset {
                name: name.clone(),
                seed: self.seed,
                num_labels: self.num_labels,
            }),
            (None, None) => Err(invalid("checkpoint", "missing (or give preset with random_init)")),
        }
    }

    /// Check every value that can be checked without reading files.
    pub fn validate(&self) -> Result<()> {
        self.source()?;
        at_least_one("num_labels", self.num_labels)?;
        let opsets = crate::export::vit_graph::OPSETS;
        if !opsets.contains(&self.opset) {
            return Err(invalid(
                "opset",
                format!("opset {} is not supported ({opsets:?})", self.opset),
            ));
        }
        Ok(())
    }
}

/// `vit-batch compare`: the regression gate of a candidate run against a baseline.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareOptions {
    /// Baseline run folder (or its metrics.json / predictions.parquet).
    pub baseline: PathBuf,
    /// Candidate run folder.
    pub candidate: PathBuf,
    /// Largest allowed top-1 accuracy drop, in percentage points.
    #[arg(long = "max-accuracy-drop", alias = "max-accuracy-drop-pp", value_name = "PP", default_value_t = DEFAULT_MAX_ACCURACY_DROP_PP)]
    #[serde(default = "defaults::max_accuracy_drop", alias = "max_accuracy_drop")]
    pub max_accuracy_drop_pp: f64,
    /// Largest allowed per-class recall drop, in percentage points.
    #[arg(long = "max-class-recall-drop", alias = "max-class-recall-drop-pp", value_name = "PP", default_value_t = DEFAULT_MAX_CLASS_RECALL_DROP_PP)]
    #[serde(
        default = "defaults::max_class_recall_drop",
        alias = "max_class_recall_drop"
    )]
    pub max_class_recall_drop_pp: f64,
    /// Classes with fewer compared images are not gated on recall.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MIN_CLASS_SUPPORT)]
    #[serde(default = "defaults::min_class_support")]
    pub min_class_support: u64,
    /// Significance level of McNemar's exact test.
    #[arg(long, value_name = "A", default_value_t = DEFAULT_ALPHA)]
    #[serde(default = "defaults::alpha")]
    pub alpha: f64,
    /// Enable the throughput gate: largest allowed images/s drop, in percent.
    #[arg(
        long = "max-throughput-drop",
        alias = "max-throughput-drop-pct",
        value_name = "PCT"
    )]
    #[serde(default, alias = "max_throughput_drop")]
    pub max_throughput_drop_pct: Option<f64>,
    /// Largest allowed top-1 drop within one slice (one value of a sliced manifest
    /// column, e.g. one site), in percentage points.
    #[arg(long = "max-slice-drop", value_name = "PP", default_value_t = DEFAULT_MAX_SLICE_DROP_PP)]
    #[serde(default = "defaults::max_slice_drop", alias = "max_slice_drop")]
    pub max_slice_drop_pp: f64,
    /// Columns to gate per slice (default: the ones the baseline was sliced by).
    #[arg(long, value_delimiter = ',', value_name = "COLUMN[,COLUMN]")]
    #[serde(default)]
    pub slice_by: Vec<String>,
    /// Compare only the images common to both runs (else differing image sets are an error).
    #[arg(long)]
    #[serde(default)]
    pub allow_partial: bool,
    /// With allow_partial: refuse (exit 2) when the common images are fewer than
    /// this percentage of all images in either run.
    #[arg(long, value_name = "PCT", requires = "allow_partial")]
    #[serde(default)]
    pub min_coverage: Option<f64>,
    /// Compare runs of different datasets (their fingerprints differ): same paths
    /// may then be different images. Every output says so.
    #[arg(long)]
    #[serde(default)]
    pub allow_different_data: bool,
    /// Pass the labels gate even when the runs map class folders to different model
    /// labels (rows unmapped in one run still count as wrong for it).
    #[arg(long)]
    #[serde(default)]
    pub allow_label_change: bool,
    /// Write JUnit XML (one testcase per gate).
    #[arg(long, value_name = "FILE")]
    #[serde(default, skip_serializing)]
    pub junit: Option<PathBuf>,
    /// Write a Markdown summary (e.g. for $GITHUB_STEP_SUMMARY).
    #[arg(long, value_name = "FILE")]
    #[serde(default, skip_serializing)]
    pub markdown: Option<PathBuf>,
    /// Write the full report as JSON.
    #[arg(long, value_name = "FILE")]
    #[serde(default, skip_serializing)]
    pub json: Option<PathBuf>,
}

impl CompareOptions {
    /// The defaults, comparing `candidate` with `baseline`, writing no files.
    pub fn new(baseline: impl Into<PathBuf>, candidate: impl Into<PathBuf>) -> Self {
        CompareOptions {
            baseline: baseline.into(),
            candidate: candidate.into(),
            max_accuracy_drop_pp: DEFAULT_MAX_ACCURACY_DROP_PP,
            max_class_recall_drop_pp: DEFAULT_MAX_CLASS_RECALL_DROP_PP,
            min_class_support: DEFAULT_MIN_CLASS_SUPPORT,
            alpha: DEFAULT_ALPHA,
            max_throughput_drop_pct: None,
            max_slice_drop_pp: DEFAULT_MAX_SLICE_DROP_PP,
            slice_by: vec![],
            allow_partial: false,
            min_coverage: None,
            allow_different_data: false,
            allow_label_change: false,
            junit: None,
            markdown: None,
            json: None,
        }
    }

    /// Check the thresholds (the paths are checked when the runs are read).
    pub fn validate(&self) -> Result<()> {
        finite_nonneg(
            "max_accuracy_drop_pp",
            self.max_accuracy_drop_pp,
            "percentage points",
        )?;
        finite_nonneg(
            "max_class_recall_drop_pp",
            self.max_class_recall_drop_pp,
            "percentage points",
        )?;
        finite_nonneg(
            "max_slice_drop_pp",
            self.max_slice_drop_pp,
            "percentage points",
        )?;
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(invalid(
                "alpha",
                format!("must be in (0, 1), got {}", self.alpha),
            ));
        }
        if let Some(t) = self.max_throughput_drop_pct {
            finite_nonneg("max_throughput_drop_pct", t, "percent")?;
        }
        if let Some(c) = self.min_coverage {
            if !(0.0..=100.0).contains(&c) {
                return Err(invalid(
                    "min_coverage",
                    format!("must be a percentage in [0, 100], got {c}"),
                ));
            }
            if !self.allow_partial {
                return Err(invalid("min_coverage", "only applies with allow_partial"));
            }
        }
        Ok(())
    }
}

/// `vit-batch report`: render the evaluation report of a run folder.
#[derive(Debug, Clone, PartialEq, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportOptions {
    /// Run folder written by `vit-batch score` (predictions.parquet + metrics.json).
    #[serde(alias = "run")]
    pub run_dir: PathBuf,
    /// Where to write the report (default: RUN_DIR).
    #[arg(long)]
    #[serde(default)]
    pub out: Option<PathBuf>,
    /// Outputs, comma-separated: html, png, md, json (default: all).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Format::ALL)]
    #[serde(default = "defaults::formats", alias = "formats")]
    pub format: Vec<Format>,
}

impl ReportOptions {
    /// Every format, into the run folder itself.
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        ReportOptions {
            run_dir: run_dir.into(),
            out: None,
            format: Format::ALL.to_vec(),
        }
    }
}

/// `vit-batch merge`: shard run folders (scored with `shard`) become one run.
#[derive(Debug, Clone, PartialEq, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeOptions {
    /// Shard run folders, one per shard, in any order.
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    /// Output run folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace a run already in OUT (vit-batch's own files only).
    #[arg(long)]
    #[serde(default)]
    pub overwrite: bool,
}

/// `vit-batch train`: train a ViT preset on an ImageFolder (CPU), write an HF checkpoint.
#[derive(Debug, Clone, PartialEq, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainOptions {
    /// ImageFolder dataset: DATA_DIR/<class>/.../<image>.
    pub data_dir: PathBuf,
    /// Architecture preset (e.g. vit-digits).
    #[arg(long)]
    pub preset: String,
    /// Checkpoint folder to write (config.json, model.safetensors, preprocessor_config.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Passes over the training set.
    #[arg(long, default_value_t = DEFAULT_EPOCHS)]
    #[serde(default = "defaults::epochs")]
    pub epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = DEFAULT_TRAIN_BATCH_SIZE)]
    #[serde(default = "defaults::train_batch_size")]
    pub batch_size: usize,
    /// Peak learning rate (linear warm-up, then cosine decay).
    #[arg(long, default_value_t = DEFAULT_LR)]
    #[serde(default = "defaults::lr")]
    pub lr: f64,
    /// Decoupled weight decay (AdamW) on matrices; biases, LayerNorms, [CLS] and
    /// position embeddings get none (as HF's Trainer).
    #[arg(long, default_value_t = DEFAULT_WEIGHT_DECAY)]
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f64,
    /// Warm-up as a fraction of all steps.
    #[arg(long, default_value_t = DEFAULT_WARMUP)]
    #[serde(default = "defaults::warmup")]
    pub warmup: f64,
    /// Warm-up length in steps; overrides warmup when set.
    #[arg(long)]
    #[serde(default)]
    pub warmup_steps: Option<usize>,
    /// Seed of the initial weights, the split and the shuffling.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    #[serde(default)]
    pub seed: u64,
    /// Hold out this fraction of each class for validation (0 = none).
    #[arg(long, default_value_t = DEFAULT_VAL_SPLIT, conflicts_with = "val")]
    #[serde(default = "defaults::val_split")]
    pub val_split: f64,
    /// Validation ImageFolder instead of a split of DATA_DIR.
    #[arg(long)]
    #[serde(default, alias = "val_dir")]
    pub val: Option<PathBuf>,
    /// Use only the first N images of each class (e.g. a short CI run).
    #[arg(long)]
    #[serde(default)]
    pub limit_per_class: Option<usize>,
    /// Random shifts of up to N input pixels during training (0 = no augmentation).
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub augment_shift: usize,
    /// CPU threads (default: RAYON_NUM_THREADS, else the physical cores).
    #[arg(long)]
    #[serde(default)]
    pub threads: Option<usize>,
}

impl TrainOptions {
    /// The defaults (those of the bundled digits model), training `preset` on
    /// `data_dir` into `out`.
    pub fn new(
        data_dir: impl Into<PathBuf>,
        preset: impl Into<String>,
        out: impl Into<PathBuf>,
    ) -> Self {
        TrainOptions {
            data_dir: data_dir.into(),
            preset: preset.into(),
            out: out.into(),
            epochs: DEFAULT_EPOCHS,
            batch_size: DEFAULT_TRAIN_BATCH_SIZE,
            lr: DEFAULT_LR,
            weight_decay: DEFAULT_WEIGHT_DECAY,
            warmup: DEFAULT_WARMUP,
            warmup_steps: None,
            seed: DEFAULT_SEED,
            val_split: DEFAULT_VAL_SPLIT,
            val: None,
            limit_per_class: None,
            augment_shift: 0,
            threads: None,
        }
    }

    /// Check every value that can be checked without reading files.
    pub fn validate(&self) -> Result<()> {
        at_least_one("epochs", self.epochs)?;
        at_least_one("batch_size", self.batch_size)?;
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(invalid(
                "lr",
                format!("must be a positive number, got {}", self.lr),
            ));
        }
        finite_nonneg("weight_decay", self.weight_decay, "a factor")?;
        if !(0.0..1.0).contains(&self.warmup) {
            return Err(invalid(
                "warmup",
                format!("must be in [0, 1), got {}", self.warmup),
            ));
        }
        if self.val.is_none() && !(0.0..1.0).contains(&self.val_split) {
            return Err(invalid(
                "val_split",
                format!("must be in [0, 1), got {}", self.val_split),
            ));
        }
        if let Some(n) = self.limit_per_class {
            at_least_one("limit_per_class", n)?;
        }
        if let Some(n) = self.threads {
            at_least_one("threads", n)?;
        }
        Ok(())
    }
}
