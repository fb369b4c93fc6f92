//! Backbone outputs computed once: features of the frozen protocol and the cached inputs of
//! partial fine-tuning, per view; predictions of a trained model on rows of a manifest.

use super::batches::*;
use crate::data::augment::Augment;
use crate::data::cache::SquareCache;
use crate::machinery::fsutil::write_atomic;
use anyhow::Result;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use pneumoscope::NUM_CLASSES;
use pneumoscope::arch::{self, ArchSpec, Operations, global_avg_pool};
use pneumoscope::model::Classifier;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::path::Path;

/// The operations the frozen backbone's features are extracted through.
const OPS: Operations = Operations::Own;

/// What [`extract_features`] computes per image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extract {
    /// What the paper's head reads (`spec.head_dim()` values): the frozen protocol's cache.
    HeadInput,
    /// The global average of the Grad-CAM target (`spec.feature_dim` values): what the
    /// out-of-distribution score reads.
    Pooled,
    /// The input of backbone block `n` (partial fine-tuning's cache), `[c, h, w]` flattened.
    InputOfBlock(usize),
}

/// Shape `[c, h, w]` per image of `what` (runs one blank image through the backbone when it
/// depends on the architecture's blocks; `[0, 0, 0]` for a backbone without blocks).
pub fn extract_shape(
    what: Extract,
    backbone: &arch::Backbone,
    spec: &ArchSpec,
    device: &Device,
) -> [usize; 3] {
    match what {
        Extract::HeadInput => spec.head_shape,
        Extract::Pooled => [spec.feature_dim, 1, 1],
        Extract::InputOfBlock(n) => {
            let s = spec.input.crop;
            backbone
                .input_of_block(Tensor::zeros([1, 3, s, s], device), n, OPS)
                .map_or([0; 3], |t| {
                    let [_, c, h, w] = t.dims();
                    [c, h, w]
                })
        }
    }
}

/// Values per image of `what` (see [`extract_shape`]).
pub fn extract_dim(
    what: Extract,
    backbone: &arch::Backbone,
    spec: &ArchSpec,
    device: &Device,
) -> usize {
    extract_shape(what, backbone, spec, device).iter().product()
}

/// Where backbone features come from: a backbone, its architecture, the training images
/// (squared, resized) and the device it runs on.
pub struct FeatureSource<'a> {
    /// The backbone.
    pub backbone: &'a arch::Backbone,
    /// Its architecture.
    pub spec: &'a ArchSpec,
    /// The images.
    pub squares: &'a SquareCache,
    /// Where it runs.
    pub device: &'a Device,
}

/// Backbone features of the given manifest rows (one view each, augmented with its seed when
/// `augment` is given), `[n, dim]` row-major, computed in batches; `label` names the progress
/// bar.
pub fn extract_features(
    what: Extract,
    src: &FeatureSource,
    rows: &[usize],
    augment: Option<(&Augment, u64)>,
    label: &str,
) -> Vec<f32> {
    let FeatureSource {
        backbone,
        spec,
        squares,
        device,
    } = *src;
    let pb = crate::machinery::progress::bar(rows.len() as u64, label);
    let dim = extract_dim(what, backbone, spec, device);
    let mut out = Vec::with_capacity(rows.len() * dim);
    for chunk in rows.chunks(32) {
        let imgs: Vec<Vec<f32>> = chunk
            .par_iter()
            .map(|&i| {
                let sq = squares.image(i);
                match augment {
                    Some((a, seed)) => {
                        let mut rng =
                            ChaCha8Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9));
                        a.apply(&sq, &spec.input, &mut rng)
                    }
                    None => pneumoscope::preprocess::normalize_gray(&sq, &spec.input),
                }
            })
            .collect();
        let x = stack(&imgs, spec.input.crop, device);
        let f = match what {
            Extract::HeadInput => backbone
                .head_input(backbone.feature_map(x, OPS), OPS)
                .flatten(1, 3),
            Extract::Pooled => global_avg_pool(backbone.feature_map(x, OPS)),
            Extract::InputOfBlock(n) => backbone
                .input_of_block(x, n, OPS)
                .expect("checked by the caller: the backbone has blocks")
                .flatten(1, 3),
        };
        out.extend(to_vec(f));
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    out
}

pub(super) fn features_cached(
    dir: &Path,
    name: &str,
    n: usize,
    dim: usize,
    compute: impl FnOnce() -> Vec<f32>,
) -> Result<(Vec<f32>, bool)> {
    let path = dir.join(format!("{name}.f32"));
    if let Ok(bytes) = std::fs::read(&path)
        && bytes.len() == n * dim * 4
    {
        return Ok((
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            true,
        ));
    }
    let v = compute();
    std::fs::create_dir_all(path.parent().unwrap())?;
    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
    write_atomic(&path, &bytes)?;
    Ok((v, false))
}

/// Probabilities of the given rows under the evaluation transform.
pub fn predict_rows(
    model: &Classifier,
    spec: &ArchSpec,
    squares: &SquareCache,
    rows: &[usize],
    device: &Device,
) -> Vec<[f32; NUM_CLASSES]> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(32) {
        let imgs: Vec<Vec<f32>> = chunk
            .par_iter()
            .map(|&i| pneumoscope::preprocess::normalize_gray(&squares.image(i), &spec.input))
            .collect();
        out.extend(probs_rows(to_vec(softmax(
            model.forward(stack(&imgs, spec.input.crop, device)),
            1,
        ))));
    }
    out
}
