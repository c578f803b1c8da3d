//! Fuzz target over stage 2 (decode + preprocess), the code that sees untrusted bytes.
//! The harness itself is `vit_batch_preprocess::fuzzing::check`, shared with the
//! regression test that replays `fuzz/regressions/` in the normal test suite.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vit_batch_preprocess::fuzzing::check(data));
