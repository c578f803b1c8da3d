//! The one integration-test binary: every module below runs the real `vit-batch`
//! binary or the real library against real files in a temporary folder.

mod attention;
mod bounds;
mod compare;
mod datasets;
mod export;
mod honest;
mod kubernetes;
mod openvino;
mod parquet_readers;
mod preprocess;
mod reference_vit;
mod reliability;
mod report;
mod score;
mod shard;
mod slurm;
mod synth;
mod train;
mod util;
