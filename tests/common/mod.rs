//! Helpers of the core-library tests: the shared data and the shipped default model.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};

mod shared;
pub use shared::{default_model, manifest_dir, run_script, shared, sorted_files, test_python};

/// A few real chest X-rays of each kind.
pub fn sample_images(shared: &Path) -> Vec<PathBuf> {
    let k = shared.join("data/kermany/chest_xray/test");
    let mut out = Vec::new();
    for sub in ["NORMAL", "PNEUMONIA"] {
        out.extend(sorted_files(&k.join(sub)).into_iter().take(2));
    }
    let c = sorted_files(&shared.join("data/covid-chestxray-dataset/images"));
    out.extend(c.into_iter().take(2));
    out
}

/// Pearson correlation of two maps.
pub fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let ma = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64 - ma, y as f64 - mb);
        sab += x * y;
        saa += x * x;
        sbb += y * y;
    }
    sab / (saa * sbb).sqrt()
}
