//! `pneumoscope forward`: raw logits of a preprocessed NCHW float32 tensor, the parity tool for
//! checking a port against PyTorch.

use crate::machinery::npy;
use crate::pretrained::weights;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use pneumoscope::arch::{self, Operations, global_avg_pool};
use pneumoscope::gradcam;
use std::path::{Path, PathBuf};

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

/// Options of `forward`.
#[derive(Clone, Debug, clap::Args)]
pub struct ForwardOptions {
    /// Architecture name (see the registry).
    #[arg(long)]
    pub arch: String,
    /// Weights file (`.pth` or `.safetensors`).
    #[arg(long)]
    pub weights: PathBuf,
    /// Input: a `.npy` (N x 3 x H x W, float32), or an image put through the ImageNet
    /// reference transform of the weights (RGB, bicubic resize, mean/std).
    #[arg(long)]
    pub input: PathBuf,
    /// Output `.npy` of logits (or pooled features when the weights have no classifier).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the Grad-CAM map of the first image at the architecture's Grad-CAM layer
    /// (`[h, w]`, maximum 1, not upsampled) to this `.npy`.
    #[arg(long)]
    pub cam_out: Option<PathBuf>,
    /// ImageNet class the Grad-CAM map explains (default: the top-1 class).
    #[arg(long, requires = "cam_out")]
    pub cam_class: Option<usize>,
    /// Fold every batch norm into the convolution before it first, as inference does.
    #[arg(long)]
    pub fold_batchnorm: bool,
}

/// Runs the backbone (with its ImageNet head when the weights carry one) on the input (a
/// `.npy` tensor or an image) and writes the logits, and optionally the Grad-CAM map of the
/// first image. Returns the output shape.
pub fn logits(o: &ForwardOptions, device: &Device) -> Result<Vec<usize>> {
    let (arch_name, weights_path, input, out) = (&o.arch, &o.weights, &o.input, &o.out);
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
    let backbone = if o.fold_batchnorm {
        backbone.fold_batchnorm()
    } else {
        backbone
    };
    let map = backbone.feature_map(x, Operations::Own);
    if let Some(cam_out) = &o.cam_out {
        if !with_head {
            bail!(
                "{}: --cam-out needs weights with the ImageNet classifier",
                weights_path.display()
            );
        }
        write_cam(&backbone, map.clone(), cam_out, o.cam_class)?;
    }
    let y = if with_head {
        backbone
            .imagenet_logits(backbone.head_input(map, Operations::Own), Operations::Own)
            .expect("head kept")
    } else {
        global_avg_pool(map)
    };
    let dims = y.dims().to_vec();
    let data: Vec<f32> = y.into_data().try_to_vec()?;
    npy::write_f32(out, &dims, &data)?;
    Ok(dims)
}

/// Grad-CAM of the first image's ImageNet logit at the Grad-CAM layer, written as `.npy`.
fn write_cam(
    backbone: &arch::Backbone,
    map: Tensor<4>,
    out: &Path,
    class: Option<usize>,
) -> Result<()> {
    let first = map.narrow(0, 0, 1).detach();
    let class = match class {
        Some(c) => c,
        None => {
            let logits = backbone
                .imagenet_logits(
                    backbone.head_input(first.clone(), Operations::Own),
                    Operations::Own,
                )
                .expect("head kept");
            let v: Vec<f32> = logits.into_data().try_to_vec()?;
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap_or(0)
        }
    };
    let parts = gradcam::cam_parts_with(first, class, |a| {
        backbone
            .imagenet_logits(backbone.head_input(a, Operations::Own), Operations::Own)
            .expect("head kept")
    })?;
    let map = gradcam::read_map(parts)?;
    npy::write_f32(out, &map.shape, &map.values)?;
    Ok(())
}
