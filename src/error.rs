//! Typed errors of the library. The CLI wraps them with `anyhow` context and maps
//! them to the documented exit codes; library code never exits or prints.

use std::path::{Path, PathBuf};

/// The library's `Result`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every way a library call can fail. Variants that a caller or a test needs to tell
/// apart carry typed fields; `what` is a message for a person.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on `path`.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A configuration file (`preprocessor_config.json`, a label map...) is unusable.
    #[error("invalid configuration: {what}")]
    Config {
        /// What is wrong.
        what: String,
    },
    /// An option has a value it cannot take; `option` is its name as the user wrote
    /// it in a pipeline file or, with dashes, on the command line.
    #[error("{option}: {what}")]
    InvalidOption {
        /// The option's key (`batch_size`).
        option: &'static str,
        /// What is wrong with its value.
        what: String,
    },
    /// A folder that should hold a finished run does not.
    #[error("{}: not a finished vit-batch run: {missing} is missing (run `vit-batch score` first)", dir.display())]
    NotARun {
        /// The folder.
        dir: PathBuf,
        /// The first file (or the folder itself) that is missing.
        missing: &'static str,
    },
    /// A file vit-batch reads back is not what it wrote.
    #[error("{}: {what}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// An output folder cannot be used as asked.
    #[error("output folder {}: {what}", dir.display())]
    OutDir {
        /// The folder.
        dir: PathBuf,
        /// Why it cannot be used, and what to do.
        what: String,
    },
    /// Committing a part failed; the parts committed before are kept.
    #[error("{cause}; the parts committed so far are kept in {}: fix the cause (e.g. free disk space) and rerun with {}", parts.display(), option_name("resume"))]
    PartCommit {
        /// The run's `parts/` folder.
        parts: PathBuf,
        /// Why the commit failed.
        cause: Box<Error>,
    },
    /// One batch's inference did not return within `timeout_per_batch`: it was
    /// stopped and the run ended; the parts committed before are kept.
    #[error("inference of rows {start}..{end} did not finish within {seconds} s ({}); it was stopped and the run ended. The parts committed so far are kept in {}: rerun with {} (and a larger timeout if the model is only slow)", option_name("timeout_per_batch"), parts.display(), option_name("resume"))]
    BatchTimeout {
        /// The limit, in seconds.
        seconds: u64,
        /// First dataset row of the batch.
        start: usize,
        /// One past its last row.
        end: usize,
        /// The run's `parts/` folder.
        parts: PathBuf,
    },
    /// A finished run failed a data-quality gate (nothing evaluated, too many
    /// failed images): its outputs are written, its numbers are not to be trusted.
    #[error("data quality: {what} (the run's files are in {})", run.display())]
    DataQuality {
        /// The run folder.
        run: PathBuf,
        /// Which gates failed, and by how much.
        what: String,
    },
    /// Writing a file failed for a reason other than an OS error.
    #[error("cannot write {}: {cause}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: String,
    },
    /// The model (its graph, `config.json`, labels) cannot be used.
    #[error("model: {what}")]
    Model {
        /// What is wrong.
        what: String,
    },
    /// ONNX Runtime is missing, too old, or failed.
    #[error("ONNX Runtime: {what}")]
    Runtime {
        /// What happened.
        what: String,
    },
    /// The dataset cannot be read as a whole (single images become error rows).
    #[error("dataset: {what}")]
    Dataset {
        /// What is wrong.
        what: String,
    },
    /// A checkpoint to export cannot be read.
    #[error("checkpoint: {what}")]
    Checkpoint {
        /// What is wrong.
        what: String,
    },
    /// A checkpoint lacks a tensor the architecture needs.
    #[error("checkpoint: tensor '{name}' is missing")]
    MissingTensor {
        /// The tensor's name in the checkpoint.
        name: String,
    },
    /// A checkpoint tensor has the wrong shape for its config.
    #[error("checkpoint: tensor '{name}' has shape {found:?}, expected {expected:?}")]
    TensorShape {
        /// The tensor's name.
        name: String,
        /// The shape `config.json` implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// Writing outputs failed in a way not covered by a typed variant.
    #[error("output: {what}")]
    Output {
        /// What happened.
        what: String,
    },
    /// Training cannot start or went wrong.
    #[error("training: {what}")]
    Train {
        /// What happened.
        what: String,
    },
    /// A pipeline file is invalid, or one of its stages failed.
    #[error("pipeline: {what}")]
    Pipeline {
        /// What happened, naming the file, table and key.
        what: String,
    },
    /// A pipeline stage failed; `cause` is why (kept typed, so the exit code of a
    /// data-quality failure is the same from a pipeline as from `score`).
    #[error("stage {stage} failed: {cause}")]
    Stage {
        /// The stage's table name.
        stage: &'static str,
        /// The stage's error.
        #[source]
        cause: Box<Error>,
    },
    /// Two runs cannot be compared.
    #[error("compare: {what}")]
    Compare {
        /// Why.
        what: String,
    },
    /// Decoding or preprocessing failed outside a single image.
    #[error("preprocessing: {0}")]
    Preprocess(#[from] vit_batch_preprocess::Error),
    /// Reading or writing Parquet failed.
    #[error("parquet: {0}")]
    Polars(#[from] polars::error::PolarsError),
    /// The `ort` crate failed.
    #[error("ONNX Runtime: {0}")]
    Ort(#[from] ort::Error),
    /// candle (training) failed.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// JSON (de)serialisation failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// An [`Error::Io`] on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// How a message names an option that the user may have set either way: the flag,
/// then the key of a pipeline file (`--batch-size` / `batch_size`).
pub fn option_name(key: &str) -> String {
    format!("--{} (`{key}` in a pipeline file)", key.replace('_', "-"))
}
