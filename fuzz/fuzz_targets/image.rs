//! Any bytes through the image path: format sniffing, PNG/JPEG/DICOM decoding with limits,
//! EXIF orientation and the evaluation transform. Must never panic; a result is finite.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pneumoscope::fuzzing::image(data);
});
