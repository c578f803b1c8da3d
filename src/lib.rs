//! vit-batch: evaluate Vision Transformer image classifiers at scale.
//!
//! One module per pipeline stage. Library modules never see CLI flags: the binary
//! (`src/main.rs` + `cli`) turns flags into the option structs defined here.

pub mod compare;
pub mod error;
pub mod export;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod preprocess;
pub mod record;
pub mod report;
pub mod runtime;
pub mod score;
pub mod train;
pub mod vit;
pub mod walk;

pub use error::{Error, Result};

/// Generated from the official `onnx.proto` by `build.rs`.
pub mod onnx {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}
