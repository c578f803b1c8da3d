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
