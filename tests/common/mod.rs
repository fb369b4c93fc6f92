//! Helpers of the core-library tests: the shared data and the shipped default model.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};

mod shared;
pub use shared::{
    correlation, default_model, manifest_dir, run_script, shared, sorted_files, test_python,
};

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
