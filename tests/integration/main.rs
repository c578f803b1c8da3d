//! The one integration-test binary: every module below runs the real `vit-batch`
//! binary or the real library against real files in a temporary folder.

mod compare;
mod export;
mod reference_vit;
mod report;
mod synth;
mod train;
mod util;
