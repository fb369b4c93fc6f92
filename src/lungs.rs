//! Lung fields: a small segmentation network, its file, and how much of a Grad-CAM map lies
//! inside the lungs.
//!
//! The network ([`LungNet`]) is an EfficientNet-Lite0 encoder (ImageNet weights, kept frozen
//! while the decoder trains) with a feature-pyramid decoder: each of five encoder stages
//! (strides 2 to 32) is projected to [`DECODER_WIDTH`] channels, the coarsest is upsampled
//! and added to the next finer one, and a 3x3 convolution smooths each sum. The output is one
//! logit per pixel at stride 2, [`MASK_SIDE`]² for the [`INPUT_SIDE`]² input.
//!
//! Its input is the whole image squashed to a square (no crop), so the mask covers the whole
//! image whatever classifier runs beside it; [`LungMask::share_of_cam`] maps a Grad-CAM map of
//! any classifier's centre crop onto it.

use crate::arch::InputConfig;
use crate::arch::efficientnet_lite::{EfficientNetLite, LiteScale};
use crate::error::{Error, Result};
use crate::model_file::{self, MAGIC, sha256_hex};
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use image::imageops::FilterType;
use image::{DynamicImage, GrayImage};
use serde::{Deserialize, Serialize};

/// Side of the square the image is resized to (no crop), in pixels.
pub const INPUT_SIDE: usize = 256;
/// Side of the predicted mask (stride 2 of the input).
pub const MASK_SIDE: usize = INPUT_SIDE / 2;
/// The encoder's architecture in the registry.
pub const ENCODER: &str = "efficientnet_lite0";
/// The encoder stages the decoder reads: the output after this many MBConv blocks
/// (strides 2, 4, 8, 16, 32 of the input).
pub const TAPS: [usize; 5] = [1, 3, 5, 11, 16];
/// Channels of those stages in EfficientNet-Lite0.
pub const TAP_CHANNELS: [usize; 5] = [16, 24, 40, 112, 320];
/// Channels of the decoder.
pub const DECODER_WIDTH: usize = 32;
/// Format version of a lung-segmenter file (the model-file prefix and seal; see
/// [`crate::model_file`]). Files of the earlier version 3 (no seal) still load.
pub const LUNGS_FORMAT_VERSION: u32 = 6;
/// Radius, in mask pixels, by which the lung mask is dilated before the share of a Grad-CAM
/// map inside it is measured (3 of 128: about 2 % of the image's side, for the pleura and the
/// mask's own error).
pub const SHARE_DILATION: usize = 3;
/// Margin of lung-focused input ([`LungMask::crop_rect`]): the share of the lungs' bounding
/// box's width (height) added on its left and right (top and bottom). The crop is then
/// squashed to a square, so the classifier's centre crop (224 of 256, say) still holds the
/// whole box: 0.875 x 1.2 = 1.05 times it.
pub const CROP_MARGIN: f32 = 0.10;
/// Normalisation of the encoder's ImageNet weights (grey level scaled to [0, 1]).
const MEAN: f32 = 0.5;
const STD: f32 = 0.5;

/// The decoder: lateral 1x1 projections, top-down sums, 3x3 smoothing, a 1x1 output.
#[derive(Module, Debug)]
pub struct LungDecoder {
    /// 1x1 projections of the encoder stages to [`DECODER_WIDTH`] channels, finest first.
    pub lateral: Vec<Conv2d>,
    /// 3x3 smoothing after each top-down sum, finest first (one fewer than `lateral`).
    pub smooth: Vec<Conv2d>,
    /// 1x1 convolution to one logit per pixel.
    pub out: Conv2d,
}

impl LungDecoder {
    /// A randomly initialised decoder.
    pub fn new(device: &Device) -> Self {
        let d = DECODER_WIDTH;
        Self {
            lateral: TAP_CHANNELS
                .iter()
                .map(|&c| Conv2dConfig::new([c, d], [1, 1]).init(device))
                .collect(),
            smooth: (1..TAPS.len())
                .map(|_| {
                    Conv2dConfig::new([d, d], [3, 3])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .init(device)
                })
                .collect(),
            out: Conv2dConfig::new([d, 1], [1, 1]).init(device),
        }
    }

    /// Logits `[batch, 1, h/2, w/2]` from the encoder stages (finest first).
    pub fn forward(&self, taps: Vec<Tensor<4>>) -> Tensor<4> {
        let mut taps = taps;
        let last = taps.len() - 1;
        let mut p = self.lateral[last].forward(taps.pop().expect("five stages"));
        for i in (0..last).rev() {
            let t = taps.pop().expect("five stages");
            let [_, _, h, w] = t.dims();
            let up = interpolate(
                p,
                InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([h, w]),
            );
            p = relu(self.smooth[i].forward(up + self.lateral[i].forward(t)));
        }
        self.out.forward(p)
    }

    /// The decoder's weights as a Burn record (what a model file's lung section holds).
    pub fn to_bytes(self) -> Result<Vec<u8>> {
        model_file::record_bytes(self, "the decoder")
    }

    /// A decoder loaded from [`LungDecoder::to_bytes`]'s record.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes.to_vec()))
            .map_err(|e| Error::ModelFile(format!("unreadable lung decoder weights: {e:?}")))?;
        Self::new(device)
            .try_load_record(record.cast_to_module_dtype())
            .map_err(|e| {
                Error::ModelFile(format!("the weights do not fit the lung decoder: {e:?}"))
            })
    }
}

/// The lung segmenter: encoder and decoder.
#[derive(Module, Debug)]
pub struct LungNet {
    /// EfficientNet-Lite0 backbone (no ImageNet classifier).
    pub encoder: EfficientNetLite,
    /// The decoder.
    pub decoder: LungDecoder,
}

/// EfficientNet-Lite0's scale.
const LITE0: LiteScale = LiteScale {
    width: 1.0,
    depth: 1.0,
};

impl LungNet {
    /// A randomly initialised segmenter.
    pub fn new(device: &Device) -> Self {
        Self {
            encoder: EfficientNetLite::new(LITE0, false, device),
            decoder: LungDecoder::new(device),
        }
    }

    /// A segmenter with the given encoder (e.g. one loaded with ImageNet weights) and a new
    /// decoder.
    pub fn with_encoder(encoder: EfficientNetLite, device: &Device) -> Self {
        Self {
            encoder,
            decoder: LungDecoder::new(device),
        }
    }

    /// A segmenter of an encoder and a decoder already built (the encoder of a classifier's
    /// network and the decoder of its model file's lung section, for instance).
    pub fn from_parts(encoder: EfficientNetLite, decoder: LungDecoder) -> Self {
        Self { encoder, decoder }
    }

    /// The encoder stages the decoder reads, finest first.
    pub fn taps(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        self.encoder.stage_outputs(x, &TAPS)
    }

    /// Logits `[batch, 1, MASK_SIDE, MASK_SIDE]` from inputs `[batch, 3, INPUT_SIDE, INPUT_SIDE]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.decoder.forward(self.taps(x))
    }

    /// The segmenter with its encoder's batch norms folded (inference).
    pub fn fold_batchnorm(self) -> Self {
        Self {
            encoder: self.encoder.fold_batchnorm(),
            decoder: self.decoder,
        }
    }

    /// The input tensor `[1, 3, INPUT_SIDE, INPUT_SIDE]` of one image on `device`.
    fn input_tensor(img: &DynamicImage, device: &Device) -> Tensor<4> {
        Tensor::<4>::from_data(
            TensorData::new(input(img), [1, 3, INPUT_SIDE, INPUT_SIDE]),
            device,
        )
    }

    /// Lung probabilities of one image (decoded), `MASK_SIDE`² values in [0, 1], row-major.
    /// Reads synchronously; [`LungNet::segment_async`] runs on every backend.
    pub fn probabilities(&self, img: &DynamicImage, device: &Device) -> Vec<f32> {
        sigmoid(self.forward(Self::input_tensor(img, device)))
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 mask")
    }

    /// [`LungNet::segment_async`], blocking until the mask is read (native callers).
    pub fn segment(&self, img: &DynamicImage, device: &Device) -> LungMask {
        crate::block_on(self.segment_async(img, device)).expect("f32 mask")
    }

    /// [`LungNet::segment`] of several images in one batch (reads synchronously).
    pub fn segment_batch(&self, imgs: &[DynamicImage], device: &Device) -> Vec<LungMask> {
        if imgs.is_empty() {
            return Vec::new();
        }
        let n = INPUT_SIDE;
        let flat: Vec<f32> = imgs.iter().flat_map(input).collect();
        let x = Tensor::<4>::from_data(TensorData::new(flat, [imgs.len(), 3, n, n]), device);
        let grid = sigmoid(self.forward(x))
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 mask");
        grid.chunks_exact(MASK_SIDE * MASK_SIDE)
            .zip(imgs)
            .map(|(g, img)| {
                LungMask::from_probabilities(g.to_vec(), img.width(), img.height())
                    .largest_regions(2)
            })
            .collect()
    }

    /// The lung mask of one image (decoded), at the image's size: the two largest connected
    /// regions of the prediction (two lungs; stray specks elsewhere removed).
    pub async fn segment_async(&self, img: &DynamicImage, device: &Device) -> Result<LungMask> {
        let grid = sigmoid(self.forward(Self::input_tensor(img, device)))
            .into_data_async()
            .await
            .map_err(|e| Error::DeviceRead {
                what: "the lung mask",
                detail: format!("{e:?}"),
            })?
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| Error::Invalid(format!("lung mask of an unexpected type: {e:?}")))?;
        Ok(LungMask::from_probabilities(grid, img.width(), img.height()).largest_regions(2))
    }
}

/// The segmenter's input: grey levels, the whole image resized to `INPUT_SIDE`² (aspect not
/// kept), normalised, three equal channels; `[3, INPUT_SIDE, INPUT_SIDE]` row-major.
pub fn input(img: &DynamicImage) -> Vec<f32> {
    let grey = square_gray(img);
    let plane: Vec<f32> = grey
        .as_raw()
        .iter()
        .map(|&v| (v as f32 / 255.0 - MEAN) / STD)
        .collect();
    let mut out = Vec::with_capacity(plane.len() * 3);
    for _ in 0..3 {
        out.extend_from_slice(&plane);
    }
    out
}

/// The grey `INPUT_SIDE`² square of an image (what the segmenter sees, for display).
pub fn square_gray(img: &DynamicImage) -> GrayImage {
    image::imageops::resize(
        &img.to_luma8(),
        INPUT_SIDE as u32,
        INPUT_SIDE as u32,
        FilterType::Triangle,
    )
}

/// A predicted lung mask: the probabilities on the `MASK_SIDE`² grid and the size of the image
/// they cover.
#[derive(Clone, Debug, PartialEq)]
pub struct LungMask {
    /// Lung probabilities on the `MASK_SIDE`² grid, row-major.
    pub grid: Vec<f32>,
    /// Width of the image, in pixels.
    pub width: u32,
    /// Height of the image, in pixels.
    pub height: u32,
}

impl LungMask {
    /// A mask from the segmenter's probabilities for an image of the given size.
    pub fn from_probabilities(grid: Vec<f32>, width: u32, height: u32) -> Self {
        assert_eq!(grid.len(), MASK_SIDE * MASK_SIDE, "mask grid size");
        Self {
            grid,
            width,
            height,
        }
    }

    /// The probability at a point of the image, `(x, y)` in image pixels (bilinear on the
    /// grid, clamped at the edges).
    pub fn probability_at(&self, x: f32, y: f32) -> f32 {
        let s = MASK_SIDE as f32;
        let gx = (x / self.width as f32 * s - 0.5).clamp(0.0, s - 1.0);
        let gy = (y / self.height as f32 * s - 0.5).clamp(0.0, s - 1.0);
        bilinear(&self.grid, MASK_SIDE, gx, gy)
    }

    /// The binary mask at the image's size (probability ≥ 0.5), 255 for lung, 0 elsewhere.
    pub fn to_image(&self) -> GrayImage {
        GrayImage::from_fn(self.width, self.height, |x, y| {
            let p = self.probability_at(x as f32 + 0.5, y as f32 + 0.5);
            image::Luma([if p >= 0.5 { 255 } else { 0 }])
        })
    }

    /// The 4-connected lung regions of the grid: a region index per grid pixel (`usize::MAX`
    /// outside the lungs) and the size of each region.
    fn components(&self) -> (Vec<usize>, Vec<usize>) {
        let n = MASK_SIDE;
        let mut label = vec![usize::MAX; n * n];
        let mut sizes = Vec::new();
        for start in 0..n * n {
            if self.grid[start] < 0.5 || label[start] != usize::MAX {
                continue;
            }
            let id = sizes.len();
            let mut stack = vec![start];
            label[start] = id;
            let mut size = 0;
            while let Some(i) = stack.pop() {
                size += 1;
                let (x, y) = (i % n, i / n);
                let neighbours = [
                    (x > 0).then(|| i - 1),
                    (x + 1 < n).then(|| i + 1),
                    (y > 0).then(|| i - n),
                    (y + 1 < n).then(|| i + n),
                ];
                for j in neighbours.into_iter().flatten() {
                    if self.grid[j] >= 0.5 && label[j] == usize::MAX {
                        label[j] = id;
                        stack.push(j);
                    }
                }
            }
            sizes.push(size);
        }
        (label, sizes)
    }

    /// The mask with every lung region but the `keep` largest (4-connected, on the grid)
    /// set to probability 0.
    pub fn largest_regions(mut self, keep: usize) -> Self {
        let (label, sizes) = self.components();
        let mut order: Vec<usize> = (0..sizes.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
        let kept: Vec<usize> = order.into_iter().take(keep).collect();
        for (p, l) in self.grid.iter_mut().zip(&label) {
            if *l != usize::MAX && !kept.contains(l) {
                *p = 0.0;
            }
        }
        self
    }

    /// Number of lung regions (4-connected, on the grid).
    pub fn regions(&self) -> usize {
        self.components().1.len()
    }

    /// The figures of the mask that tell a frontal chest X-ray from other images.
    pub fn shape(&self) -> LungShape {
        let (label, sizes) = self.components();
        let n = MASK_SIDE;
        let mut order: Vec<usize> = (0..sizes.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
        let centre_x = |region: usize| {
            let (sum, count) = label
                .iter()
                .enumerate()
                .filter(|(_, l)| **l == region)
                .fold((0usize, 0usize), |(s, c), (i, _)| (s + i % n, c + 1));
            sum as f32 / count.max(1) as f32 / n as f32
        };
        let (balance, side_by_side) = match order[..] {
            [a, b, ..] => {
                let (xa, xb) = (centre_x(a), centre_x(b));
                (
                    sizes[b] as f32 / sizes[a] as f32,
                    (xa - 0.5) * (xb - 0.5) < 0.0,
                )
            }
            _ => (0.0, false),
        };
        let left = (0..n * n)
            .filter(|&i| i % n < n / 2 && self.grid[i] >= 0.5)
            .count();
        let right = (0..n * n)
            .filter(|&i| i % n >= n / 2 && self.grid[i] >= 0.5)
            .count();
        LungShape {
            regions: sizes.len(),
            area_fraction: self.area_fraction(),
            balance,
            side_by_side,
            halves: left.min(right) as f32 / left.max(right).max(1) as f32,
        }
    }

    /// The bounding box of the lung pixels (probability ≥ 0.5), in image pixels; `None` when
    /// the mask holds no lung.
    pub fn bounding_box(&self) -> Option<Rect> {
        let n = MASK_SIDE;
        let (mut x0, mut y0, mut x1, mut y1) = (n, n, 0, 0);
        for (i, _) in self.grid.iter().enumerate().filter(|(_, p)| **p >= 0.5) {
            let (x, y) = (i % n, i / n);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
        }
        if x1 == 0 {
            return None;
        }
        let to_x = |g: usize| (g as f64 * self.width as f64 / n as f64).round() as u32;
        let to_y = |g: usize| (g as f64 * self.height as f64 / n as f64).round() as u32;
        let (x, y) = (to_x(x0), to_y(y0));
        Some(Rect {
            x,
            y,
            width: (to_x(x1) - x).max(1),
            height: (to_y(y1) - y).max(1),
        })
    }

    /// The part of the image lung-focused input keeps: the lungs' bounding box widened by
    /// [`CROP_MARGIN`] of its width on the left and the right and of its height at the top and
    /// the bottom, cut to the image. `None` when the mask holds no lung.
    pub fn crop_rect(&self) -> Option<Rect> {
        let b = self.bounding_box()?;
        let widen = |start: u32, len: u32, limit: u32| {
            let m = len as f32 * CROP_MARGIN;
            let lo = (start as f32 - m).round().max(0.0) as u32;
            let hi = ((start + len) as f32 + m).round().min(limit as f32) as u32;
            (lo, (hi - lo).max(1))
        };
        let (x, width) = widen(b.x, b.width, self.width);
        let (y, height) = widen(b.y, b.height, self.height);
        Some(Rect {
            x,
            y,
            width,
            height,
        })
    }

    /// This mask on a part of its image: the probabilities resampled over `rect` (bilinear),
    /// for an image of `rect`'s size.
    pub fn within(&self, rect: Rect) -> LungMask {
        let n = MASK_SIDE as f32;
        let grid = (0..MASK_SIDE * MASK_SIDE)
            .map(|i| {
                let (gx, gy) = ((i % MASK_SIDE) as f32, (i / MASK_SIDE) as f32);
                self.probability_at(
                    rect.x as f32 + (gx + 0.5) / n * rect.width as f32,
                    rect.y as f32 + (gy + 0.5) / n * rect.height as f32,
                )
            })
            .collect();
        LungMask::from_probabilities(grid, rect.width, rect.height)
    }

    /// Share of the binary mask's pixels that are lung, on the grid.
    pub fn area_fraction(&self) -> f32 {
        self.grid.iter().filter(|&&p| p >= 0.5).count() as f32 / self.grid.len() as f32
    }

    /// The binary grid dilated by `radius` grid pixels (a square neighbourhood).
    pub fn dilated_grid(&self, radius: usize) -> Vec<bool> {
        let n = MASK_SIDE;
        let bin: Vec<bool> = self.grid.iter().map(|&p| p >= 0.5).collect();
        // Separable: rows, then columns.
        let mut rows = vec![false; n * n];
        for y in 0..n {
            for x in 0..n {
                let lo = x.saturating_sub(radius);
                let hi = (x + radius).min(n - 1);
                rows[y * n + x] = (lo..=hi).any(|i| bin[y * n + i]);
            }
        }
        let mut out = vec![false; n * n];
        for y in 0..n {
            let lo = y.saturating_sub(radius);
            let hi = (y + radius).min(n - 1);
            for x in 0..n {
                out[y * n + x] = (lo..=hi).any(|j| rows[j * n + x]);
            }
        }
        out
    }

    /// The lung mask, dilated by `dilation` grid pixels, sampled on a classifier's centre crop:
    /// `side`² values (1 inside, 0 outside), row-major, for a crop of `input` of this image.
    pub fn on_crop(&self, input: &InputConfig, side: usize, dilation: usize) -> Vec<f32> {
        let dilated = self.dilated_grid(dilation);
        let (x0, y0, span) = crop_box(self.width, self.height, input);
        let s = MASK_SIDE as f32;
        let mut out = Vec::with_capacity(side * side);
        for j in 0..side {
            for i in 0..side {
                let x = x0 + (i as f32 + 0.5) / side as f32 * span;
                let y = y0 + (j as f32 + 0.5) / side as f32 * span;
                let gx = ((x / self.width as f32 * s) as usize).min(MASK_SIDE - 1);
                let gy = ((y / self.height as f32 * s) as usize).min(MASK_SIDE - 1);
                out.push(if dilated[gy * MASK_SIDE + gx] {
                    1.0
                } else {
                    0.0
                });
            }
        }
        out
    }

    /// Share of a Grad-CAM map's mass inside the dilated lung fields: Σ cam·mask / Σ cam over
    /// the map (negative values count as 0). `cam` is `side`² values over the centre crop of
    /// `input`, as [`crate::gradcam`] gives them. `None` when the map is all zero.
    pub fn share_of_cam(&self, cam: &[f32], side: usize, input: &InputConfig) -> Option<f32> {
        assert_eq!(cam.len(), side * side, "Grad-CAM map size");
        let inside = self.on_crop(input, side, SHARE_DILATION);
        let total: f64 = cam.iter().map(|&v| v.max(0.0) as f64).sum();
        if total <= 0.0 {
            return None;
        }
        let within: f64 = cam
            .iter()
            .zip(&inside)
            .map(|(&v, &m)| v.max(0.0) as f64 * m as f64)
            .sum();
        Some((within / total) as f32)
    }
}

/// A rectangle of image pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// The figures of a lung mask that tell a frontal chest X-ray from other images
/// ([`LungMask::shape`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LungShape {
    /// Lung regions (4-connected, on the grid).
    pub regions: usize,
    /// Share of the image that is lung.
    pub area_fraction: f32,
    /// Area of the second largest region over the largest (0 with fewer than two).
    pub balance: f32,
    /// Whether the two largest regions lie on either side of the image's vertical midline
    /// (their centroids do).
    pub side_by_side: bool,
    /// Lung area in the image's left half over that in its right half, or the reverse: the
    /// smaller over the larger (0 when one half has none).
    pub halves: f32,
}

/// What a frontal chest X-ray's lung fields look like to the segmenter: the bounds within
/// which [`LungShape::implausible`] says nothing. Chosen on training and validation X-rays of
/// the classifier's data (children and adults, every collection; `pneumoscope lungs shapes`)
/// so that under 1 % of them fall outside; see the model card.
pub struct Plausible {
    /// Lowest and highest share of the image that is lung.
    pub area: (f32, f32),
    /// Lowest lung area in one half of the image (left or right of its midline) over that in
    /// the other.
    pub halves: f32,
}

/// The bounds of [`Plausible`] in use.
pub const PLAUSIBLE: Plausible = Plausible {
    area: (0.10, 0.55),
    halves: 0.5,
};

impl LungShape {
    /// Why these lung fields are unlike a frontal chest X-ray's (for the out-of-distribution
    /// warning), or `None` when they are like one. The connected regions (`regions`,
    /// `balance`, `side_by_side`) are reported but not judged: children's two lungs often join
    /// above the heart in the mask.
    pub fn implausible(&self) -> Option<String> {
        let p = PLAUSIBLE;
        let pct = |v: f32| format!("{:.0} %", v * 100.0);
        if self.regions == 0 {
            return Some("no lung fields were found".into());
        }
        if self.area_fraction < p.area.0 || self.area_fraction > p.area.1 {
            return Some(format!(
                "the lung fields cover {} of the image (frontal chest X-rays: {}–{})",
                pct(self.area_fraction),
                pct(p.area.0),
                pct(p.area.1)
            ));
        }
        if self.halves < p.halves {
            return Some(format!(
                "the lung fields lie mostly on one side of the image ({} as much lung in one half \
                 as in the other; frontal chest X-rays: at least {})",
                pct(self.halves),
                pct(p.halves)
            ));
        }
        None
    }
}

/// The centre crop of the evaluation transform in image pixels: its top-left corner and its
/// side (the shorter side is resized to `input.resize`, then `input.crop` is cut from the
/// centre).
pub fn crop_box(width: u32, height: u32, input: &InputConfig) -> (f32, f32, f32) {
    let short = width.min(height) as f32;
    let span = short * input.crop as f32 / input.resize as f32;
    (
        (width as f32 - span) / 2.0,
        (height as f32 - span) / 2.0,
        span,
    )
}

fn bilinear(grid: &[f32], n: usize, x: f32, y: f32) -> f32 {
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(n - 1), (y0 + 1).min(n - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let at = |xx: usize, yy: usize| grid[yy * n + xx];
    let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
    let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// The edge of a `w`x`h` mask: the pixels inside it with a pixel outside (or the border)
/// within `radius` along a row or column. Row-major.
pub fn edge(w: u32, h: u32, radius: i64, inside: impl Fn(u32, u32) -> bool) -> Vec<bool> {
    let at = |x: i64, y: i64| {
        x >= 0 && y >= 0 && x < w as i64 && y < h as i64 && inside(x as u32, y as u32)
    };
    let mut out = Vec::with_capacity((w * h) as usize);
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            out.push(at(x, y) && (-radius..=radius).any(|d| !at(x + d, y) || !at(x, y + d)));
        }
    }
    out
}

/// The outline of a crop mask (`on_crop`'s values, `w`x`h`): the mask's pixels within one
/// pixel of its edge. Row-major.
pub fn outline(crop_mask: &[f32], w: u32, h: u32) -> Vec<bool> {
    edge(w, h, 1, |x, y| crop_mask[(y * w + x) as usize] > 0.5)
}

/// Draws the outline of a crop mask (`on_crop`'s values, the view's size) onto an overlay.
pub fn draw_outline(img: &mut image::RgbImage, crop_mask: &[f32]) {
    let w = img.width();
    for (i, _) in outline(crop_mask, w, img.height())
        .iter()
        .enumerate()
        .filter(|(_, e)| **e)
    {
        img.put_pixel(i as u32 % w, i as u32 / w, image::Rgb([255, 255, 255]));
    }
}

/// Dice and IoU of a predicted binary mask against a reference of the same size
/// (`true` = lung). Both empty counts as perfect agreement.
pub fn dice_iou(pred: &[bool], truth: &[bool]) -> (f64, f64) {
    assert_eq!(pred.len(), truth.len(), "mask sizes");
    let (mut inter, mut p, mut t) = (0u64, 0u64, 0u64);
    for (&a, &b) in pred.iter().zip(truth) {
        inter += u64::from(a && b);
        p += u64::from(a);
        t += u64::from(b);
    }
    if p + t == 0 {
        return (1.0, 1.0);
    }
    let dice = 2.0 * inter as f64 / (p + t) as f64;
    let iou = inter as f64 / (p + t - inter) as f64;
    (dice, iou)
}

/// What a lung-segmenter file says about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LungsHeader {
    /// Format version ([`LUNGS_FORMAT_VERSION`]).
    pub format_version: u32,
    /// What the file holds: `"lung segmenter"`.
    pub kind: String,
    /// Encoder architecture ([`ENCODER`]).
    pub encoder: String,
    /// Side of the square input (aspect not kept).
    pub input_side: usize,
    /// Side of the predicted grid.
    pub mask_side: usize,
    /// Storage precision of the weights (`f32` or `f16`).
    pub weights_dtype: String,
    /// Where the encoder weights came from.
    pub weight_source: String,
    /// Training settings and data (free-form JSON).
    pub training: serde_json::Value,
    /// Held-out Dice and IoU (free-form JSON).
    pub metrics: serde_json::Value,
    /// Version of the software that wrote the file.
    pub created_by: String,
    /// Length of the payload in bytes.
    pub payload_len: u64,
    /// SHA-256 of the payload, lowercase hex.
    pub payload_sha256: String,
}

impl LungsHeader {
    /// Checks that this build can run the segmenter the header describes.
    pub fn check(&self) -> Result<()> {
        if self.encoder != ENCODER || self.input_side != INPUT_SIDE || self.mask_side != MASK_SIDE {
            return Err(Error::ModelFile(format!(
                "unsupported segmenter ({} at {} px, grid {}; this build reads {ENCODER} at \
                 {INPUT_SIDE} px, grid {MASK_SIDE})",
                self.encoder, self.input_side, self.mask_side
            )));
        }
        Ok(())
    }
}

/// A lung segmenter carried inside a classifier's model file: the decoder's weights only, after
/// the classifier's payload; the encoder is the backbone of one of the file's networks, an
/// EfficientNet-Lite0 whose ImageNet weights were kept frozen in training, so the segmenter
/// adds about 0.1 MB (f16) and the page still downloads one file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LungsSection {
    /// The network of the file (0-based, in file order) whose backbone is the encoder.
    pub encoder_network: usize,
    /// The segmenter's description, as in its own file; `payload_len` and `payload_sha256`
    /// are those of the decoder's weights.
    pub segmenter: LungsHeader,
}

/// A lung segmenter ready to run beside a classifier: its description and its network.
pub struct Lungs {
    /// What the segmenter says about itself.
    pub header: LungsHeader,
    /// The network (encoder shared with a classifier's backbone, batch norms folded).
    pub net: LungNet,
}

/// A lung-segmenter file: the model-file prefix with version [`LUNGS_FORMAT_VERSION`], a
/// [`LungsHeader`] and the [`LungNet`]'s weights (a Burn record).
#[derive(Clone, Debug)]
pub struct LungsFile {
    /// The header.
    pub header: LungsHeader,
    /// The weights.
    pub payload: Vec<u8>,
    /// The format it was read in (the current one for a file built in memory).
    pub format: model_file::Format,
}

impl model_file::Versioned for LungsHeader {
    fn format_version(&self) -> u32 {
        self.format_version
    }
}

impl LungsFile {
    /// Packs a segmenter. The header's length and checksum are filled in here.
    pub fn new(header: LungsHeader, model: LungNet) -> Result<Self> {
        let payload = model_file::record_bytes(model, "the weights")?;
        let header = LungsHeader {
            format_version: LUNGS_FORMAT_VERSION,
            payload_len: payload.len() as u64,
            payload_sha256: sha256_hex(&payload),
            ..header
        };
        Ok(Self {
            header,
            payload,
            format: model_file::Format::of(LUNGS_FORMAT_VERSION).expect("current version"),
        })
    }

    /// Serialises the file in the current format (version, length and checksum derived from
    /// the weights).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut header = self.header.clone();
        header.format_version = LUNGS_FORMAT_VERSION;
        header.payload_len = self.payload.len() as u64;
        header.payload_sha256 = sha256_hex(&self.payload);
        model_file::assemble(LUNGS_FORMAT_VERSION, &header, &[&self.payload])
    }

    /// Parses and verifies a file: prefix, version, the header's seal, payload length and
    /// checksum, and the segmenter's shape.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 20 || &bytes[..12] != MAGIC {
            return Err(Error::ModelFile(
                "not a Pneumoscope file (wrong magic bytes; expected a lung segmenter written \
                 by `pneumoscope lungs train`)"
                    .into(),
            ));
        }
        let format = model_file::verified_format(bytes)?;
        if format.kind != model_file::FileKind::LungSegmenter {
            return Err(Error::ModelFile(format!(
                "format version {} is not a lung segmenter (version \
                 {LUNGS_FORMAT_VERSION}); is this a classifier's model file?",
                format.version
            )));
        }
        let parsed: model_file::Parsed<'_, LungsHeader> = model_file::split_header(bytes)?;
        let (header, payload) = (parsed.header, parsed.rest);
        model_file::verify_payload(
            payload,
            header.payload_len,
            &header.payload_sha256,
            "weights",
        )?;
        header.check()?;
        Ok(Self {
            header,
            payload: payload.to_vec(),
            format,
        })
    }

    /// Builds the segmenter and loads its weights on `device`, batch norms folded (inference).
    pub fn load(&self, device: &Device) -> Result<LungNet> {
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(self.payload.clone()))
            .map_err(|e| Error::ModelFile(format!("unreadable segmenter weights: {e:?}")))?;
        let net = LungNet::new(device)
            .try_load_record(record.cast_to_module_dtype())
            .map_err(|e| {
                Error::ModelFile(format!("the weights do not fit the lung segmenter: {e:?}"))
            })?;
        Ok(net.valid().fold_batchnorm())
    }
}

/// A random-init segmenter's header for tests (length and checksum filled in by the file).
#[cfg(test)]
pub(crate) fn test_header() -> LungsHeader {
    LungsHeader {
        format_version: LUNGS_FORMAT_VERSION,
        kind: "lung segmenter".into(),
        encoder: ENCODER.into(),
        input_side: INPUT_SIDE,
        mask_side: MASK_SIDE,
        weights_dtype: "f32".into(),
        weight_source: "random-init".into(),
        training: serde_json::Value::Null,
        metrics: serde_json::Value::Null,
        created_by: "test".into(),
        payload_len: 0,
        payload_sha256: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_with(f: impl Fn(usize, usize) -> bool, w: u32, h: u32) -> LungMask {
        let grid = (0..MASK_SIDE * MASK_SIDE)
            .map(|i| f(i % MASK_SIDE, i / MASK_SIDE) as u8 as f32)
            .collect();
        LungMask::from_probabilities(grid, w, h)
    }

    #[test]
    fn the_lung_crop_is_the_box_with_its_margin_inside_the_image() {
        // Lungs on grid columns 32..96 and rows 16..80 of a 1024x2048 image: in pixels
        // x 256..768, y 256..1280 (a 512x1024 box).
        let m = mask_with(
            |x, y| (32..96).contains(&x) && (16..80).contains(&y),
            1024,
            2048,
        );
        let b = m.bounding_box().unwrap();
        assert_eq!((b.x, b.y, b.width, b.height), (256, 256, 512, 1024));
        // A tenth of the width on either side, of the height above and below.
        let r = m.crop_rect().unwrap();
        assert_eq!(
            (r.x, r.y, r.width, r.height),
            (205, 154, 614, 1228),
            "{r:?}"
        );
        // At the image's edges the margin is cut.
        let low = mask_with(
            |x, y| (0..88).contains(&x) && (100..128).contains(&y),
            512,
            512,
        );
        let r = low.crop_rect().unwrap();
        assert_eq!((r.x, r.y + r.height), (0, 512), "{r:?}");
        // The mask seen within the crop: the same lung pixels, now relative to the crop.
        let r = m.crop_rect().unwrap();
        let inner = m.within(r);
        assert_eq!((inner.width, inner.height), (r.width, r.height));
        let b2 = inner.bounding_box().unwrap();
        let near = |u: u32, v: u32| u.abs_diff(v) <= 12;
        assert!(near(b2.x + r.x, 256) && near(b2.y + r.y, 256), "{b2:?}");
        assert!(near(b2.width, 512) && near(b2.height, 1024), "{b2:?}");
        // No lungs, no crop.
        let none = mask_with(|_, _| false, 300, 300);
        assert_eq!(none.bounding_box(), None);
        assert_eq!(none.crop_rect(), None);
    }

    #[test]
    fn decoder_output_is_half_the_input() {
        let device = Device::flex();
        let net = LungNet::new(&device);
        let y = net.forward(Tensor::zeros([2, 3, 64, 64], &device));
        assert_eq!(y.dims(), [2, 1, 32, 32]);
    }

    #[test]
    fn specks_are_removed_and_regions_counted() {
        // Two lungs and a speck.
        let m = mask_with(
            |x, y| {
                (10..50).contains(&x) && (20..100).contains(&y)
                    || (70..110).contains(&x) && (20..100).contains(&y)
                    || (x == 120 && y == 120)
            },
            256,
            256,
        );
        assert_eq!(m.regions(), 3);
        let kept = m.clone().largest_regions(2);
        assert_eq!(kept.regions(), 2);
        assert_eq!(kept.grid[120 * MASK_SIDE + 120], 0.0);
        assert_eq!(kept.grid[50 * MASK_SIDE + 20], 1.0);
    }

    #[test]
    fn shape_tells_two_lungs_from_one_side_and_none() {
        let two = mask_with(
            |x, y| {
                (14..54).contains(&x) && (20..100).contains(&y)
                    || (74..114).contains(&x) && (20..100).contains(&y)
            },
            256,
            256,
        )
        .shape();
        assert_eq!((two.regions, two.side_by_side), (2, true));
        assert!((two.balance - 1.0).abs() < 1e-6 && (two.halves - 1.0).abs() < 1e-6);
        assert!(two.implausible().is_none(), "{two:?}");
        let none = mask_with(|_, _| false, 256, 256).shape();
        assert_eq!(
            none.implausible().as_deref(),
            Some("no lung fields were found")
        );
        // Two fields one above the other in the right half: a lateral view's look.
        let stacked = mask_with(
            |x, y| (74..114).contains(&x) && ((10..60).contains(&y) || (70..120).contains(&y)),
            256,
            256,
        )
        .shape();
        assert_eq!((stacked.regions, stacked.side_by_side), (2, false));
        assert!(
            stacked
                .implausible()
                .unwrap()
                .contains("mostly on one side"),
            "{stacked:?}"
        );
        let tiny = mask_with(
            |x, y| (60..68).contains(&x) && (60..68).contains(&y),
            256,
            256,
        )
        .shape();
        assert!(
            tiny.implausible()
                .unwrap()
                .contains("cover 0 % of the image"),
            "{tiny:?}"
        );
    }

    #[test]
    fn dice_and_iou() {
        let a = [true, true, false, false];
        let b = [true, false, true, false];
        let (d, i) = dice_iou(&a, &b);
        assert!((d - 0.5).abs() < 1e-12 && (i - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(dice_iou(&[false; 3], &[false; 3]), (1.0, 1.0));
        assert_eq!(dice_iou(&a, &a), (1.0, 1.0));
    }

    #[test]
    fn share_of_cam_counts_mass_inside_the_mask() {
        // Left half of a square image is lung; the classifier sees the whole square.
        let m = mask_with(|x, _| x < MASK_SIDE / 2, 400, 400);
        let input = InputConfig {
            resize: 224,
            crop: 224,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let side = 8;
        let left: Vec<f32> = (0..64).map(|i| f32::from(u8::from(i % 8 < 2))).collect();
        assert_eq!(m.share_of_cam(&left, side, &input), Some(1.0));
        let right: Vec<f32> = (0..64).map(|i| f32::from(u8::from(i % 8 >= 6))).collect();
        assert_eq!(m.share_of_cam(&right, side, &input), Some(0.0));
        let even = vec![1.0f32; 64];
        let s = m.share_of_cam(&even, side, &input).unwrap();
        // Half, plus the dilation's band of 3/128 of the side.
        assert!((s - (0.5 + 3.0 / 128.0)).abs() < 0.07, "{s}");
        assert_eq!(m.share_of_cam(&[0.0; 64], side, &input), None);
    }

    #[test]
    fn crop_box_follows_the_evaluation_transform() {
        let input = InputConfig {
            resize: 256,
            crop: 224,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let (x0, y0, span) = crop_box(512, 1024, &input);
        assert!((span - 448.0).abs() < 1e-3);
        assert!((x0 - 32.0).abs() < 1e-3 && (y0 - 288.0).abs() < 1e-3);
    }

    #[test]
    fn file_round_trip_and_damage() {
        let device = Device::flex();
        let file = LungsFile::new(test_header(), LungNet::new(&device)).unwrap();
        let bytes = file.to_bytes();
        let back = LungsFile::from_bytes(&bytes).unwrap();
        assert_eq!(back.header, file.header);
        back.load(&device).unwrap();
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 10] ^= 1;
        let e = LungsFile::from_bytes(&bad).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        let e = crate::model_file::ModelFile::from_bytes(&bytes)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lung segmenter"), "{e}");
    }
}
