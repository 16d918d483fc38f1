//! Fuzz target: see `fovea_node::config::file::fuzz_config`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fovea_node::config::file::fuzz_config(data));
