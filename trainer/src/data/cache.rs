//! The preprocessing cache: every image of a manifest decoded once into its grey
//! `side`x`side` square (the cached form of [`pneumoscope::preprocess`]), kept in one file beside
//! the manifest so that training epochs never decode a full-size image again.

use super::Manifest;
use anyhow::{Context, Result, bail};
use image::GrayImage;
use pneumoscope::model_file::sha256_hex;
use rayon::prelude::*;
use std::path::PathBuf;

/// All squares of a manifest, in manifest order.
pub struct SquareCache {
    /// Side of each square.
    pub side: usize,
    /// `n * side * side` grey levels.
    pub data: Vec<u8>,
}

impl SquareCache {
    /// The square of row `i`.
    pub fn image(&self, i: usize) -> GrayImage {
        let n = self.side * self.side;
        GrayImage::from_raw(
            self.side as u32,
            self.side as u32,
            self.data[i * n..(i + 1) * n].to_vec(),
        )
        .expect("cache slice has the square's size")
    }
}

/// Where the cache of a manifest at a given side lives.
pub fn cache_path(manifest: &Manifest, side: usize) -> PathBuf {
    let key: String = manifest.records.iter().map(|r| r.sha256.as_str()).collect();
    let key = &sha256_hex(key.as_bytes())[..16];
    manifest
        .root
        .join("cache")
        .join(format!("squares-{side}-{key}.bin"))
}

/// Loads the cache, building it first if it is missing or of the wrong size.
pub fn load_or_build(manifest: &Manifest, side: usize) -> Result<SquareCache> {
    let path = cache_path(manifest, side);
    let expected = manifest.records.len() * side * side;
    if let Ok(data) = std::fs::read(&path) {
        if data.len() == expected {
            return Ok(SquareCache { side, data });
        }
        tracing::warn!("cache {} has the wrong size, rebuilding", path.display());
    }
    let pb = crate::progress::bar(manifest.records.len() as u64, "caching");
    let squares: Vec<Result<Vec<u8>>> = manifest
        .records
        .par_iter()
        .map(|r| {
            let p = manifest.resolve(r);
            let bytes =
                std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
            let img = pneumoscope::preprocess::decode(&bytes)
                .with_context(|| format!("{}", p.display()))?;
            pb.inc(1);
            Ok(pneumoscope::preprocess::to_square_gray(&img, side).into_raw())
        })
        .collect();
    pb.finish_and_clear();
    let mut data = Vec::with_capacity(expected);
    for s in squares {
        data.extend(s?);
    }
    if data.len() != expected {
        bail!("internal error: cache size mismatch");
    }
    std::fs::create_dir_all(path.parent().unwrap())?;
    crate::fsutil::write_atomic(&path, &data)?;
    Ok(SquareCache { side, data })
}
