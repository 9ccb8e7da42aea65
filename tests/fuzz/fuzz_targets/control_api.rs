#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| migr_fuzz::targets::control_api(data));
