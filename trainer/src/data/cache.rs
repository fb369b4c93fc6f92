//! The preprocessing cache: every image of a manifest decoded once into its grey
//! `side`x`side` square (the cached form of [`pneumoscope::preprocess`]), kept in one file beside
//! the manifest so that training epochs never decode a full-size image again.

use super::Manifest;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use image::{DynamicImage, GrayImage};
use pneumoscope::inference::Framed;
use pneumoscope::lungs::{LungNet, Rect};
use pneumoscope::model_file::sha256_hex;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

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

/// How each image is framed before the transform (a run's `--input`).
pub enum Framing {
    /// The whole image.
    Whole,
    /// Cut to the lungs ([`pneumoscope::lungs::LungMask::crop_rect`]) that this segmenter
    /// finds on the whole image.
    Lungs {
        /// The segmenter.
        net: Box<LungNet>,
        /// The start of the SHA-256 of its file: part of the caches' names.
        key: String,
    },
}

impl Framing {
    /// Lung-focused framing by `net`, the segmenter read from the file `file` (whose hash
    /// names the caches).
    pub fn lungs(net: LungNet, file: &[u8]) -> Self {
        Framing::Lungs {
            net: Box::new(net),
            key: sha256_hex(file)[..12].to_string(),
        }
    }

    /// What the caches' names add for this framing (`None` for the whole image).
    pub fn key(&self) -> Option<String> {
        match self {
            Framing::Whole => None,
            Framing::Lungs { key, .. } => Some(format!(
                "lungs-{key}-m{:.2}",
                pneumoscope::lungs::CROP_MARGIN
            )),
        }
    }
}

/// Where the cache of a manifest at a given side and framing lives.
pub fn cache_path(manifest: &Manifest, side: usize, framing: &Framing) -> PathBuf {
    let key: String = manifest.records.iter().map(|r| r.sha256.as_str()).collect();
    let key = &sha256_hex(key.as_bytes())[..16];
    let name = match framing.key() {
        None => format!("squares-{side}-{key}.bin"),
        Some(f) => format!("squares-{side}-{key}-{f}.bin"),
    };
    manifest.root.join("cache").join(name)
}

/// Images decoded and segmented at a time when framing by the lungs.
const LUNG_BATCH: usize = 16;

/// Loads the cache, building it first if it is missing or of the wrong size. Lung-focused
/// framing also writes, beside the cache, the crop of every image ([`crops_path`]: file,
/// whether lungs were found, the crop's rectangle in the image's pixels), and reuses them for
/// the caches of other sides.
pub fn load_or_build(manifest: &Manifest, side: usize, framing: &Framing) -> Result<SquareCache> {
    let path = cache_path(manifest, side, framing);
    let expected = manifest.records.len() * side * side;
    if let Ok(data) = std::fs::read(&path) {
        if data.len() == expected {
            return Ok(SquareCache { side, data });
        }
        tracing::warn!("cache {} has the wrong size, rebuilding", path.display());
    }
    let pb = crate::machinery::progress::bar(manifest.records.len() as u64, "caching");
    let (data, crops) = match framing {
        Framing::Whole => (whole_squares(manifest, side, &pb)?, Vec::new()),
        Framing::Lungs { net, .. } => {
            // The crops do not depend on the side: a cache of another side made them already.
            let known = read_crops(&crops_path(manifest, framing), manifest);
            lung_squares(manifest, side, net, known, &pb)?
        }
    };
    pb.finish_and_clear();
    if data.len() != expected {
        bail!("internal error: cache size mismatch");
    }
    std::fs::create_dir_all(path.parent().unwrap())?;
    if framing.key().is_some() {
        write_crops(&crops_path(manifest, framing), &crops)?;
    }
    crate::machinery::fsutil::write_atomic(&path, &data)?;
    Ok(SquareCache { side, data })
}

/// Decodes the image of record `r`.
fn decode(manifest: &Manifest, r: &super::Record) -> Result<DynamicImage> {
    let p = manifest.resolve(r);
    let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
    pneumoscope::preprocess::decode(&bytes).with_context(|| format!("{}", p.display()))
}

/// The squares of the whole images, in manifest order.
fn whole_squares(manifest: &Manifest, side: usize, pb: &indicatif::ProgressBar) -> Result<Vec<u8>> {
    let squares: Vec<Result<Vec<u8>>> = manifest
        .records
        .par_iter()
        .map(|r| {
            let img = decode(manifest, r)?;
            pb.inc(1);
            Ok(pneumoscope::preprocess::to_square_gray(&img, side).into_raw())
        })
        .collect();
    let mut data = Vec::with_capacity(manifest.records.len() * side * side);
    for s in squares {
        data.extend(s?);
    }
    Ok(data)
}

/// An image's file (as the manifest names it) and the rectangle it was cut to, if lungs were
/// found.
type Crop = (String, Option<Rect>);

/// The squares of the images cut to their lungs, in manifest order, and each image's crop: the
/// `known` crops where a cache of another side made them, else what `net` finds.
fn lung_squares(
    manifest: &Manifest,
    side: usize,
    net: &LungNet,
    known: Option<Vec<Option<Rect>>>,
    pb: &indicatif::ProgressBar,
) -> Result<(Vec<u8>, Vec<Crop>)> {
    let device = Device::flex();
    let mut data = Vec::with_capacity(manifest.records.len() * side * side);
    let mut crops = Vec::new();
    for (c, chunk) in manifest.records.chunks(LUNG_BATCH).enumerate() {
        let imgs = chunk
            .par_iter()
            .map(|r| decode(manifest, r))
            .collect::<Result<Vec<_>>>()?;
        let framed: Vec<(Vec<u8>, Option<Rect>)> = match &known {
            Some(k) => {
                let k = &k[c * LUNG_BATCH..c * LUNG_BATCH + chunk.len()];
                imgs.into_par_iter()
                    .zip(k)
                    .map(|(img, crop)| {
                        let img = match crop {
                            Some(r) => Framed::cut(&img, *r),
                            None => img,
                        };
                        let sq = pneumoscope::preprocess::to_square_gray(&img, side);
                        (sq.into_raw(), *crop)
                    })
                    .collect()
            }
            None => {
                let masks = net.segment_batch(&imgs, &device)?;
                imgs.into_par_iter()
                    .zip(masks)
                    .map(|(img, mask)| {
                        let f = Framed::lungs(img, mask);
                        let sq = pneumoscope::preprocess::to_square_gray(&f.image, side);
                        (sq.into_raw(), f.crop)
                    })
                    .collect()
            }
        };
        for (r, (sq, crop)) in chunk.iter().zip(framed) {
            data.extend(sq);
            crops.push((r.path.clone(), crop));
        }
        pb.inc(chunk.len() as u64);
    }
    Ok((data, crops))
}

/// Where lung-focused framing keeps the crop of every image of a manifest.
pub fn crops_path(manifest: &Manifest, framing: &Framing) -> PathBuf {
    let key: String = manifest.records.iter().map(|r| r.sha256.as_str()).collect();
    let key = &sha256_hex(key.as_bytes())[..16];
    let f = framing.key().unwrap_or_else(|| "whole".into());
    manifest
        .root
        .join("cache")
        .join(format!("crops-{key}-{f}.csv"))
}

/// The crops of an earlier build, when they cover exactly this manifest's images.
fn read_crops(path: &Path, manifest: &Manifest) -> Option<Vec<Option<Rect>>> {
    let mut r = csv::Reader::from_path(path).ok()?;
    let mut out = Vec::new();
    for (rec, want) in r.records().zip(&manifest.records) {
        let rec = rec.ok()?;
        if rec.get(0)? != want.path {
            return None;
        }
        let n = |i: usize| rec.get(i)?.parse::<u32>().ok();
        out.push(match rec.get(1)? {
            "true" => Some(Rect {
                x: n(2)?,
                y: n(3)?,
                width: n(4)?,
                height: n(5)?,
            }),
            _ => None,
        });
    }
    (out.len() == manifest.records.len()).then_some(out)
}

fn write_crops(path: &Path, crops: &[Crop]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["path", "lungs_found", "x", "y", "width", "height"])?;
    for (p, c) in crops {
        let r = c.unwrap_or(Rect {
            x: 0,
            y: 0,
            width: 0,
            height: 0,
        });
        w.write_record([
            p.clone(),
            c.is_some().to_string(),
            r.x.to_string(),
            r.y.to_string(),
            r.width.to_string(),
            r.height.to_string(),
        ])?;
    }
    crate::machinery::fsutil::write_atomic(path, &w.into_inner()?)?;
    Ok(())
}
