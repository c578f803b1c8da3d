//! Fuzz target over the parsing of `preprocessor_config.json` text (a model folder is
//! user input too). The harness is `vit_batch_preprocess::fuzzing::check_config`,
//! shared with the regression test that replays `fuzz/regressions-config/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vit_batch_preprocess::fuzzing::check_config(data));
