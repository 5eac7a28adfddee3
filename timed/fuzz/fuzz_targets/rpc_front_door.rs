#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| timed::fuzzing::rpc_front_door(data));
