//! The one integration-test binary: every module below runs the real `vit-batch`
//! binary or the real library against real files in a temporary folder.

mod attention;
mod bounds;
mod compare;
mod datasets;
mod export;
mod honest;
mod openvino;
mod parquet_readers;
mod preprocess;
mod reference_vit;
mod reliability;
mod report;
mod score;
mod shard;
mod synth;
mod train;
mod util;
