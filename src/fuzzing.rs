//! The bodies of the fuzz targets in `fuzz/` (run with `cargo +nightly fuzz run TARGET`). They
//! live here so that the ordinary test suite replays the kept corpora through exactly the same
//! code (`tests/fuzz_corpus.rs`). Each accepts any bytes and panics only on a broken invariant.

use crate::arch;
use crate::model_file::{
    EnsembleFile, FORMAT_VERSION, FileKind, ModelFile, ModelHeader, format_of,
};
use crate::preprocess;
use burn::prelude::*;

/// The input configuration the image targets use (EfficientNet-Lite0's).
fn input() -> arch::InputConfig {
    arch::find("efficientnet_lite0")
        .expect("lite0 is registered")
        .input
}

/// Checks what the evaluation transform produced from decodable bytes.
fn check_input(bytes: &[u8]) {
    let cfg = input();
    if let Ok(x) = preprocess::preprocess(bytes, &cfg) {
        assert_eq!(x.len(), 3 * cfg.crop * cfg.crop);
        assert!(x.iter().all(|v| v.is_finite()), "non-finite network input");
    }
}

/// Image target: any bytes through decoding (PNG, JPEG, DICOM by magic) and preprocessing.
pub fn image(data: &[u8]) {
    check_input(data);
}

/// DICOM target: `data` after a 128-byte preamble and the `DICM` magic.
pub fn dicom(data: &[u8]) {
    let mut bytes = vec![0u8; 128];
    bytes.extend_from_slice(b"DICM");
    bytes.extend_from_slice(data);
    check_input(&bytes);
}

/// Model-file target: `data[0]` even → `data[1..]` is a whole file (single network or
/// ensemble); odd → `data[1..]` is a payload, wrapped in a valid EfficientNet-Lite0 header whose
/// length and checksum match, then loaded into the network.
///
/// A whole file of the current (sealed) format that loads must be byte for byte the file its
/// parts serialise to: no byte of it can change without being refused.
pub fn model_file(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode % 2 == 0 {
        let Ok(format) = format_of(rest) else {
            return;
        };
        if format.kind == FileKind::Ensemble {
            if let Ok(e) = EnsembleFile::from_bytes(rest) {
                if format.sealed {
                    assert!(e.to_bytes() == rest, "a changed ensemble file was accepted");
                }
                for m in e.members {
                    let _ = m.load_classifier(&Device::flex());
                }
            }
            return;
        }
        match ModelFile::from_bytes(rest) {
            Ok(f) => {
                if format.sealed {
                    assert!(f.to_bytes() == rest, "a changed model file was accepted");
                }
                f
            }
            Err(_) => return,
        }
    } else {
        let spec = arch::find("efficientnet_lite0").expect("lite0 is registered");
        let header = ModelHeader {
            payload_len: rest.len() as u64,
            payload_sha256: crate::model_file::sha256_hex(rest),
            ..ModelHeader::new(&spec, "fuzz", "fuzz")
        };
        let bytes = ModelFile {
            header,
            payload: rest.to_vec(),
            lungs: None,
            format: crate::model_file::Format::of(FORMAT_VERSION).expect("current version"),
        }
        .to_bytes();
        ModelFile::from_bytes(&bytes).expect("a well-formed wrapper parses")
    };
    let _ = file.load_classifier(&Device::flex());
}
