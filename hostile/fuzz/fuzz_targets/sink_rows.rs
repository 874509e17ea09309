#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| boomerang_hostile::sink_rows(data));
