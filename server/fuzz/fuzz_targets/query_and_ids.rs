#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chat_server_fuzz::query_and_ids(data));
