#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chat_server_fuzz::json_bodies(data));
