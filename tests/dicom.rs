//! DICOM input: real chest X-rays of the shared data written as DICOM by pydicom (test-only
//! venv, `tests/dicom/make_dicom.py`) in both photometric interpretations, 8, 12 and 16 bits,
//! with and without a VOI window, with a rescale, and RLE-compressed. Each must read back as the
//! plain image's grey levels and get the plain image's prediction.

mod common;
use burn::prelude::*;
use pneumoscope::inference::Engine;
use pneumoscope::preprocess;
use std::path::{Path, PathBuf};

fn make_dicoms(python: &Path, image: &Path, out: &Path) -> Vec<PathBuf> {
    common::run_script(python, "tests/dicom/make_dicom.py", &[image, out])
        .lines()
        .map(PathBuf::from)
        .collect()
}

#[test]
fn dicom_variants_read_back_as_the_plain_image_and_get_its_prediction() {
    let Some(shared) = common::shared() else {
        return;
    };
    let Some(python) = common::test_python() else {
        return;
    };
    let engine = Engine::load(
        &std::fs::read(common::default_model()).unwrap(),
        Device::flex(),
    )
    .unwrap();
    let k = shared.join("data/kermany/chest_xray/test");
    let images = [
        k.join("NORMAL/IM-0129-0001.jpeg"),
        k.join("PNEUMONIA/person1018_virus_1706.jpeg"),
        k.join("PNEUMONIA/person1007_bacteria_2938.jpeg"),
    ];
    let tmp = std::env::temp_dir().join(format!("pneumoscope-dicom-{}", std::process::id()));
    for (i, image) in images.iter().enumerate() {
        let plain_bytes = std::fs::read(image).unwrap();
        let plain = engine.classify(&plain_bytes).unwrap();
        let grey = preprocess::decode(&plain_bytes).unwrap().to_luma8();
        let (lo, hi) = grey
            .pixels()
            .fold((255u8, 0u8), |(lo, hi), p| (lo.min(p.0[0]), hi.max(p.0[0])));
        let out = tmp.join(i.to_string());
        let files = make_dicoms(&python, image, &out);
        assert_eq!(files.len(), 6);
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            assert!(pneumoscope::dicom::is_dicom(&bytes));
            let got = preprocess::decode(&bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
                .to_luma8();
            assert_eq!(got.dimensions(), grey.dimensions(), "{}", f.display());
            // Files without a window are min-max normalised on reading; the others must give
            // the plain grey levels back.
            let windowed =
                f.to_string_lossy().contains("window") || f.to_string_lossy().contains("rescale");
            let expect = |g: u8| -> f32 {
                if windowed || hi == lo {
                    g as f32
                } else {
                    (g - lo) as f32 * 255.0 / (hi - lo) as f32
                }
            };
            let max_diff = grey
                .pixels()
                .zip(got.pixels())
                .map(|(a, b)| (expect(a.0[0]) - b.0[0] as f32).abs())
                .fold(0.0f32, f32::max);
            assert!(
                max_diff <= 2.0,
                "{}: grey levels differ from the plain image by up to {max_diff}",
                f.display()
            );
            let p = engine.classify(&bytes).unwrap();
            assert_eq!(p.top, plain.top, "{}: {p:?} vs {plain:?}", f.display());
            // A min-max stretch changes the contrast a little, so its tolerance is wider.
            let tolerance = if windowed { 0.02 } else { 0.05 };
            for (a, b) in p.probabilities.iter().zip(&plain.probabilities) {
                assert!(
                    (a - b).abs() < tolerance,
                    "{}: {p:?} vs {plain:?}",
                    f.display()
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn broken_dicom_files_get_clear_errors() {
    let mut fake = vec![0u8; 128];
    fake.extend_from_slice(b"DICM");
    fake.extend_from_slice(b"garbage that is not a file meta group");
    let e = preprocess::decode(&fake).unwrap_err().to_string();
    assert!(e.contains("DICOM"), "{e}");
    let e = preprocess::decode(&fake[..130]).unwrap_err().to_string();
    assert!(e.contains("not a supported image format"), "{e}");
}
