//! Fuzz target: see `fovea_core::fuzzing::names`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fovea_core::fuzzing::names(data));
