//! The model-file loader: the first byte picks raw file bytes (magic, version, header,
//! checksum) or a payload wrapped in a valid header with its checksum fixed, so that the
//! weights decoder and the architecture check are reached too.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pneumoscope::fuzzing::model_file(data);
});
