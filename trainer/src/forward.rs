//! `pneumoscope forward`: raw logits of a preprocessed NCHW float32 tensor, the parity tool for
//! checking a port against PyTorch.

use crate::npy;
use crate::weights;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use pneumoscope::arch::{self, global_avg_pool};
use std::path::Path;

/// Reads the input: a `.npy` tensor as is, or an image through the ImageNet reference
/// transform of the architecture (RGB, bicubic resize to the crop size, mean/std).
fn read_input(spec: &arch::ArchSpec, input: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let is_npy = input
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    if is_npy {
        return npy::read_f32(input);
    }
    let bytes = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let img = pneumoscope::preprocess::decode(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
    let s = spec.input.crop;
    let v = pneumoscope::preprocess::preprocess_imagenet(&img, s, spec.input.mean, spec.input.std);
    Ok((vec![1, 3, s, s], v))
}

/// Runs the backbone (with its ImageNet head when the weights carry one) on `input` (a `.npy`
/// tensor or an image) and writes the logits to `out`. Returns the output shape.
pub fn run(
    arch_name: &str,
    weights_path: &Path,
    input: &Path,
    out: &Path,
    device: &Device,
) -> Result<Vec<usize>> {
    let spec = arch::find(arch_name)?;
    let (shape, values) = read_input(&spec, input)?;
    if shape.len() != 4 || shape[1] != 3 {
        bail!(
            "{}: expected an NCHW array with 3 channels, got shape {shape:?}",
            input.display()
        );
    }
    let x = Tensor::<4>::from_data(
        TensorData::new(values, [shape[0], shape[1], shape[2], shape[3]]),
        device,
    );
    let (backbone, with_head) = match weights::load_backbone(&spec, weights_path, true, device) {
        Ok(b) => (b.backbone, true),
        Err(_) => (
            weights::load_backbone(&spec, weights_path, false, device)?.backbone,
            false,
        ),
    };
    let pooled = global_avg_pool(backbone.feature_map(x));
    let y = if with_head {
        backbone.imagenet_logits(pooled).expect("head kept")
    } else {
        pooled
    };
    let dims = y.dims().to_vec();
    let data: Vec<f32> = y
        .into_data()
        .try_to_vec()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    npy::write_f32(out, &dims, &data)?;
    Ok(dims)
}
