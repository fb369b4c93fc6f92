//! Any bytes after a DICOM preamble and `DICM` magic: the DICOM reader (meta group, data set,
//! pixel data, photometric interpretation, rescale, VOI) and the evaluation transform.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pneumoscope::fuzzing::dicom(data);
});
