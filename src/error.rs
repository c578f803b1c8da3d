//! Typed errors of the library. The CLI wraps them with `anyhow` context and maps
//! them to the documented exit codes; library code never exits or prints.

use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {what}")]
    Config { what: String },
    /// An option has a value it cannot take; `option` is its name as the user wrote
    /// it in a pipeline file or, with dashes, on the command line.
    #[error("{option}: {what}")]
    InvalidOption { option: &'static str, what: String },
    /// A folder that should hold a finished run does not.
    #[error("{}: not a finished vit-batch run: {missing} is missing (run `vit-batch score` first)", dir.display())]
    NotARun { dir: PathBuf, missing: &'static str },
    /// A file vit-batch reads back is not what it wrote.
    #[error("{}: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    /// An output folder cannot be used as asked.
    #[error("output folder {}: {what}", dir.display())]
    OutDir { dir: PathBuf, what: String },
    /// Committing a part failed; the parts committed before are kept.
    #[error("{cause}; the parts committed so far are kept in {}: fix the cause (e.g. free disk space) and rerun with --resume", parts.display())]
    PartCommit { parts: PathBuf, cause: Box<Error> },
    /// Writing a file failed for a reason other than an OS error.
    #[error("cannot write {}: {cause}", path.display())]
    Write { path: PathBuf, cause: String },
    #[error("model: {what}")]
    Model { what: String },
    #[error("ONNX Runtime: {what}")]
    Runtime { what: String },
    #[error("dataset: {what}")]
    Dataset { what: String },
    #[error("checkpoint: {what}")]
    Checkpoint { what: String },
    #[error("checkpoint: tensor '{name}' is missing")]
    MissingTensor { name: String },
    #[error("checkpoint: tensor '{name}' has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("output: {what}")]
    Output { what: String },
    #[error("training: {what}")]
    Train { what: String },
    #[error("pipeline: {what}")]
    Pipeline { what: String },
    #[error("compare: {what}")]
    Compare { what: String },
    #[error("preprocessing: {0}")]
    Preprocess(#[from] vit_batch_preprocess::Error),
    #[error("parquet: {0}")]
    Polars(#[from] polars::error::PolarsError),
    #[error("ONNX Runtime: {0}")]
    Ort(#[from] ort::Error),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
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
