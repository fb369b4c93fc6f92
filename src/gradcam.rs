//! Grad-CAM (Selvaraju et al., 2017) on the architecture's target layer.
//!
//! The backbone is frozen (and may be entirely without gradients), so the gradient is taken with
//! respect to the *activation itself*: the target activation is computed without autodiff, turned
//! into a fresh autodiff leaf, and the rest of the network (pooling and head) runs from that
//! leaf. Channel weights are the spatial means of the gradient of the class score; the map is
//! `ReLU(Σ_c w_c A_c)`, normalised to [0, 1].

use crate::Class;
use crate::error::{Error, Result};
use crate::model::Classifier;
use burn::prelude::*;
use image::imageops::FilterType;
use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage};

/// A Grad-CAM map at the resolution of the target layer.
#[derive(Clone, Debug, PartialEq)]
pub struct CamMap {
    /// Width of the map (columns).
    pub width: usize,
    /// Height of the map (rows).
    pub height: usize,
    /// Row-major values in [0, 1] (all zero when no location contributes positively).
    pub values: Vec<f32>,
    /// The class the map explains.
    pub class: Class,
    /// The class logit.
    pub score: f32,
}

impl CamMap {
    /// The map at `size`x`size`: its own values when it has that size already, else
    /// [`CamMap::upsample`]d.
    pub fn at_side(&self, size: usize) -> Vec<f32> {
        if self.width == size && self.height == size {
            self.values.clone()
        } else {
            self.upsample(size)
        }
    }

    /// The map resized (bilinear) to `size`x`size`, e.g. the network's input crop.
    pub fn upsample(&self, size: usize) -> Vec<f32> {
        let img: ImageBuffer<Luma<f32>, Vec<f32>> =
            ImageBuffer::from_raw(self.width as u32, self.height as u32, self.values.clone())
                .expect("map dimensions match its values");
        let up = image::imageops::resize(&img, size as u32, size as u32, FilterType::Triangle);
        up.into_raw()
    }
}

/// Raw Grad-CAM tensors before normalisation: the activation `[C, h, w]`, the gradient of the
/// class logit with respect to it, and the logit.
pub struct CamParts {
    /// Target activation of image 0, `[1, C, h, w]`.
    pub activation: Tensor<4>,
    /// Gradient of the class logit with respect to the activation, `[1, C, h, w]`.
    pub gradient: Tensor<4>,
    /// The class logit.
    pub score: Tensor<1>,
}

/// Forward and backward for one image `[1, 3, s, s]` (on a device without autodiff) and one
/// class.
pub fn cam_parts(model: &Classifier, input: Tensor<4>, class: Class) -> Result<CamParts> {
    let activation = model.feature_map(input.without_autodiff()).detach();
    cam_parts_from(model, activation, class)
}

/// [`cam_parts`] from the target activation `[1, C, h, w]` already computed (e.g. by the
/// classification of the same image): only the head runs forward and backward.
pub fn cam_parts_from(model: &Classifier, activation: Tensor<4>, class: Class) -> Result<CamParts> {
    cam_parts_with(activation, class.index(), |a| model.logits_from_map(a))
}

/// [`cam_parts_from`] for any continuation `logits` of the network from the target activation
/// (e.g. a backbone's ImageNet classifier when checking a port against the reference).
pub fn cam_parts_with(
    activation: Tensor<4>,
    class: usize,
    logits: impl FnOnce(Tensor<4>) -> Tensor<2>,
) -> Result<CamParts> {
    let [b, _, _, _] = activation.dims();
    if b != 1 {
        return Err(Error::Invalid(format!(
            "Grad-CAM takes one image, got a batch of {b}"
        )));
    }
    let activation = activation.without_autodiff().detach();
    let leaf = activation.clone().autodiff().require_grad();
    let logits = logits(leaf.clone());
    if class >= logits.dims()[1] {
        return Err(Error::Invalid(format!(
            "class index {class} is out of range 0..{}",
            logits.dims()[1]
        )));
    }
    let score = logits.slice([0..1, class..class + 1]).flatten::<1>(0, 1);
    let grads = score.backward();
    let gradient = leaf
        .grad(&grads)
        .ok_or_else(|| Error::Invalid("no gradient reached the Grad-CAM layer".into()))?;
    Ok(CamParts {
        activation,
        gradient,
        score: score.without_autodiff(),
    })
}

/// The unnormalised map `ReLU(Σ_c mean(∂y/∂A_c) A_c)` as a `[1, 1, h, w]` tensor, not yet read
/// back from the device.
fn cam_tensor(parts: &CamParts) -> Tensor<4> {
    let weights = parts.gradient.clone().mean_dim(3).mean_dim(2); // [1, C, 1, 1]
    (parts.activation.clone() * weights)
        .sum_dim(1)
        .clamp_min(0.0)
}

/// A map of `[h, w]` values scaled to a maximum of 1 (all zero stays all zero).
pub(crate) fn normalised(
    mut values: Vec<f32>,
    [h, w]: [usize; 2],
    class: Class,
    score: f32,
) -> CamMap {
    scale_to_one(&mut values);
    CamMap {
        width: w,
        height: h,
        values,
        class,
        score,
    }
}

/// Divides `values` by their maximum when it is positive (all zero stays all zero).
fn scale_to_one(values: &mut [f32]) {
    let max = values.iter().cloned().fold(0.0f32, f32::max);
    if max > 0.0 {
        values.iter_mut().for_each(|v| *v /= max);
    }
}

fn read_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::DeviceRead {
        what: "the Grad-CAM map",
        source: Box::new(e),
    }
}

/// [`read_map_async`], blocking until the map is read (native callers).
pub fn read_map(parts: CamParts) -> Result<ReadMap> {
    crate::block_on(read_map_async(parts))
}

/// A map read back from the device: `[h, w]` values scaled to a maximum of 1, and the logit
/// of the output it explains (any continuation's, see [`cam_parts_with`]).
pub struct ReadMap {
    /// Row-major values in [0, 1].
    pub values: Vec<f32>,
    /// Height and width.
    pub shape: [usize; 2],
    /// The logit explained.
    pub score: f32,
}

/// Combines activation and gradient into `ReLU(Σ_c mean(∂y/∂A_c) A_c)` and reads it back,
/// scaled to a maximum of 1.
pub async fn read_map_async(parts: CamParts) -> Result<ReadMap> {
    let [_, _, h, w] = parts.activation.dims();
    let cam = cam_tensor(&parts);
    let mut values: Vec<f32> = cam
        .into_data_async()
        .await
        .map_err(read_error)?
        .try_to_vec()
        .map_err(read_error)?;
    let score: Vec<f32> = parts
        .score
        .into_data_async()
        .await
        .map_err(read_error)?
        .try_to_vec()
        .map_err(read_error)?;
    scale_to_one(&mut values);
    Ok(ReadMap {
        values,
        shape: [h, w],
        score: score[0],
    })
}

/// The map of one of the four classes from its parts (see [`cam_parts`]).
pub async fn combine_async(parts: CamParts, class: Class) -> Result<CamMap> {
    let ReadMap {
        values,
        shape: [h, w],
        score,
    } = read_map_async(parts).await?;
    Ok(CamMap {
        width: w,
        height: h,
        values,
        class,
        score,
    })
}

/// [`grad_cam_async`], blocking until the map is read (native callers).
pub fn grad_cam(model: &Classifier, input: Tensor<4>, class: Class) -> Result<CamMap> {
    crate::block_on(grad_cam_async(model, input, class))
}

/// Grad-CAM of one preprocessed image `[1, 3, s, s]` for one class.
pub async fn grad_cam_async(model: &Classifier, input: Tensor<4>, class: Class) -> Result<CamMap> {
    combine_async(cam_parts(model, input, class)?, class).await
}

/// [`grad_cam_from_async`], blocking until the map is read (native callers).
pub fn grad_cam_from(model: &Classifier, activation: Tensor<4>, class: Class) -> Result<CamMap> {
    crate::block_on(grad_cam_from_async(model, activation, class))
}

/// Grad-CAM from the target activation already computed (see [`cam_parts_from`]).
pub async fn grad_cam_from_async(
    model: &Classifier,
    activation: Tensor<4>,
    class: Class,
) -> Result<CamMap> {
    combine_async(cam_parts_from(model, activation, class)?, class).await
}

/// The "jet" colour map: 0 → dark blue, 0.5 → green, 1 → dark red.
pub fn jet(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    let f = |x: f32| (1.5 - (4.0 * v - x).abs()).clamp(0.0, 1.0);
    [
        (f(3.0) * 255.0) as u8,
        (f(2.0) * 255.0) as u8,
        (f(1.0) * 255.0) as u8,
    ]
}

/// Blends a heatmap (values in [0, 1], same size as `view`) over a grey view with opacity
/// `alpha`.
pub fn overlay(view: &GrayImage, heat: &[f32], alpha: f32) -> RgbImage {
    let (w, h) = view.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let g = view.get_pixel(x, y).0[0] as f32;
        let c = jet(heat[(y * w + x) as usize]);
        Rgb([0, 1, 2].map(|k| ((1.0 - alpha) * g + alpha * c[k] as f32).round() as u8))
    })
}
