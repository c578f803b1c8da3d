//! Fuzz target over the parsing of a model folder's `config.json` text (`id2label`,
//! `label2id`, `patch_size`). The harness is
//! `vit_batch_preprocess::fuzzing::check_model_config`, shared with the test that
//! replays `fuzz/seeds-model-config/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vit_batch_preprocess::fuzzing::check_model_config(data));
