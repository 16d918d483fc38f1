//! Fuzz target: see `fovea_node::auth::fuzz_config`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fovea_node::auth::fuzz_config(data));
