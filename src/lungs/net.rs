//! The segmentation network: the EfficientNet-Lite0 encoder's stages and the feature-pyramid
//! decoder ([`LungDecoder`], [`LungNet`]), and its input ([`input`], [`square_gray`]).

use super::shape::*;
use super::*;
use crate::arch::Operations;
use crate::arch::efficientnet_lite::{EfficientNetLite, LiteScale};
use crate::error::{Error, Result};
use crate::model_file::{self};
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use image::imageops::FilterType;
use image::{DynamicImage, GrayImage};

/// Normalisation of the encoder's ImageNet weights (grey level scaled to [0, 1]).
pub(crate) const MEAN: f32 = 0.5;
pub(crate) const STD: f32 = 0.5;

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
        let record = crate::int8::record(bytes, "unreadable lung decoder weights")?;
        Self::new(device)
            .try_load_record(record.cast_to_module_dtype())
            .map_err(|source| Error::Record {
                what: "the weights do not fit the lung decoder".into(),
                source,
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
    /// The operations the encoder runs (this project's; not part of the saved weights).
    #[module(skip)]
    pub operations: Operations,
}

/// EfficientNet-Lite0's scale.
pub(crate) const LITE0: LiteScale = LiteScale {
    width: 1.0,
    depth: 1.0,
};

impl LungNet {
    /// A randomly initialised segmenter.
    pub fn new(device: &Device) -> Self {
        Self::from_parts(
            EfficientNetLite::new(LITE0, false, device),
            LungDecoder::new(device),
        )
    }

    /// A segmenter of an encoder and a decoder already built (the encoder of a classifier's
    /// network and the decoder of its model file's lung section, for instance).
    pub fn from_parts(encoder: EfficientNetLite, decoder: LungDecoder) -> Self {
        Self {
            encoder,
            decoder,
            operations: Operations::default(),
        }
    }

    /// The encoder stages the decoder reads, finest first.
    pub fn taps(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        self.encoder.stage_outputs(x, &TAPS, self.operations)
    }

    /// Logits `[batch, 1, MASK_SIDE, MASK_SIDE]` from inputs `[batch, 3, INPUT_SIDE, INPUT_SIDE]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.decoder.forward(self.taps(x))
    }

    /// The segmenter with its encoder's batch norms folded (inference).
    pub fn fold_batchnorm(self) -> Self {
        Self {
            encoder: self.encoder.fold_batchnorm(),
            ..self
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
    pub fn segment(&self, img: &DynamicImage, device: &Device) -> Result<LungMask> {
        crate::block_on(self.segment_async(img, device))
    }

    /// [`LungNet::segment`] of several images in one batch (reads synchronously).
    pub fn segment_batch(&self, imgs: &[DynamicImage], device: &Device) -> Result<Vec<LungMask>> {
        if imgs.is_empty() {
            return Ok(Vec::new());
        }
        let n = INPUT_SIDE;
        let flat: Vec<f32> = imgs.iter().flat_map(input).collect();
        let x = Tensor::<4>::from_data(TensorData::new(flat, [imgs.len(), 3, n, n]), device);
        let grid = read_mask(crate::block_on(sigmoid(self.forward(x)).into_data_async()))?;
        Ok(grid
            .chunks_exact(MASK_SIDE * MASK_SIDE)
            .zip(imgs)
            .map(|(g, img)| {
                LungMask::from_probabilities(g.to_vec(), img.width(), img.height())
                    .largest_regions(2)
            })
            .collect())
    }

    /// The lung mask of one image (decoded), at the image's size: the two largest connected
    /// regions of the prediction (two lungs; stray specks elsewhere removed).
    pub async fn segment_async(&self, img: &DynamicImage, device: &Device) -> Result<LungMask> {
        let grid = read_mask(
            sigmoid(self.forward(Self::input_tensor(img, device)))
                .into_data_async()
                .await,
        )?;
        Ok(LungMask::from_probabilities(grid, img.width(), img.height()).largest_regions(2))
    }
}

/// The mask probabilities read back from the device, as `f32`.
pub(crate) fn read_mask<E: std::error::Error + Send + Sync + 'static>(
    data: std::result::Result<TensorData, E>,
) -> Result<Vec<f32>> {
    let read = |e: Box<dyn std::error::Error + Send + Sync>| Error::DeviceRead {
        what: "the lung mask",
        source: e,
    };
    data.map_err(|e| read(Box::new(e)))?
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| read(Box::new(e)))
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
