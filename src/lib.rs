//! vit-batch: evaluate Vision Transformer image classifiers at scale.
//!
//! One module per pipeline stage. Library modules never see CLI flags: the binary
//! (`src/main.rs` + `cli`) turns flags into the option structs defined here.
#![warn(missing_docs)]

pub mod attention;
pub mod compare;
pub mod error;
pub mod export;
pub mod fs;
pub(crate) mod hf;
pub mod infer;
pub(crate) mod manifest;
pub mod merge;
pub mod metrics;
pub mod model;
pub mod options;
pub mod pipeline;
pub mod progress;
pub mod record;
pub mod report;
pub mod run;
pub mod runtime;
pub mod score;
pub(crate) mod source;
pub mod train;
pub mod vit;
pub mod walk;
pub(crate) mod wds;

pub use error::{Error, Result};

/// Stage 2 (decode + preprocess), a crate of its own so it can be fuzzed alone.
pub use vit_batch_preprocess as preprocess;

/// Generated from the official `onnx.proto` by `build.rs`.
pub mod onnx {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
