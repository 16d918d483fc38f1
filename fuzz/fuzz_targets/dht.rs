//! Fuzz target: see `fovea_core::fuzzing::dht`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fovea_core::fuzzing::dht(data));
