//! EfficientNet-Lite (Tan & Le, 2019; the "Lite" variants of the TensorFlow release): MBConv
//! blocks without squeeze-and-excitation, ReLU6, a fixed 32-channel stem and 1280-channel head,
//! and TensorFlow "same" padding (asymmetric on strided convolutions).
//!
//! Field names follow the published PyTorch weights once their leading underscores are removed
//! (`_blocks.3._expand_conv.weight` → `blocks.3.expand_conv.weight`), so the weight-key remap in
//! the registry is a single rule.

use super::activation::relu6;
use super::conv::Operations;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;

use super::fold::{self, opt_bn};
use super::fused::{Act, conv_bn_act, conv_bn_add};

/// Width, depth and resolution of one EfficientNet-Lite variant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LiteScale {
    /// Channel multiplier.
    pub width: f64,
    /// Repeat multiplier (first and last stages are not scaled in the Lite variants).
    pub depth: f64,
}

/// Stage definitions of EfficientNet-B0: (kernel, stride, expansion, out channels, repeats).
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
];

/// Channels of the stem (fixed in the Lite variants).
const STEM: usize = 32;
/// Channels of the head, i.e. the feature dimension (fixed in the Lite variants).
pub const HEAD: usize = 1280;
/// Batch-norm epsilon of the TensorFlow weights.
const BN_EPS: f64 = 1e-3;

fn round_channels(ch: usize, mult: f64) -> usize {
    let divisor = 8.0;
    let scaled = ch as f64 * mult;
    let mut new = ((scaled + divisor / 2.0) / divisor).floor() * divisor;
    new = new.max(divisor);
    if new < 0.9 * scaled {
        new += divisor;
    }
    new as usize
}

fn bn(ch: usize, device: &Device) -> BatchNorm {
    BatchNormConfig::new(ch).with_epsilon(BN_EPS).init(device)
}

fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    groups: usize,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_groups(groups)
        .with_padding(PaddingConfig2d::Same)
        .with_bias(false)
        .init(device)
}

/// One inverted-residual (MBConv) block.
#[derive(Module, Debug)]
pub struct MbConv {
    /// 1x1 expansion (absent when the expansion ratio is 1).
    pub expand_conv: Option<Conv2d>,
    /// Batch norm after the expansion.
    pub bn0: Option<BatchNorm>,
    /// Depthwise convolution.
    pub depthwise_conv: Conv2d,
    /// Batch norm after the depthwise convolution (`None` once folded into it).
    pub bn1: Option<BatchNorm>,
    /// 1x1 projection.
    pub project_conv: Conv2d,
    /// Batch norm after the projection (`None` once folded into it).
    pub bn2: Option<BatchNorm>,
    /// Whether the block adds its input to its output.
    pub residual: bool,
}

impl MbConv {
    fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        expand: usize,
        device: &Device,
    ) -> Self {
        let mid = cin * expand;
        let (expand_conv, bn0) = if expand != 1 {
            (Some(conv(cin, mid, 1, 1, 1, device)), Some(bn(mid, device)))
        } else {
            (None, None)
        };
        Self {
            expand_conv,
            bn0,
            depthwise_conv: conv(mid, mid, k, stride, mid, device),
            bn1: Some(bn(mid, device)),
            project_conv: conv(mid, cout, 1, 1, 1, device),
            bn2: Some(bn(cout, device)),
            residual: stride == 1 && cin == cout,
        }
    }

    fn forward(&self, input: Tensor<4>, ops: Operations) -> Tensor<4> {
        let mut x = input.clone();
        if let Some(c) = &self.expand_conv {
            x = conv_bn_act(c, &self.bn0, x, Act::Relu6, ops);
        }
        x = conv_bn_act(&self.depthwise_conv, &self.bn1, x, Act::Relu6, ops);
        let residual = self.residual.then_some(input);
        conv_bn_add(&self.project_conv, &self.bn2, x, residual, ops)
    }

    /// The block with each batch norm folded into its convolution.
    fn fold_batchnorm(self) -> Self {
        let (expand_conv, bn0) = match self.expand_conv {
            Some(c) => {
                let (c, b) = fold::conv_opt_bn(c, self.bn0);
                (Some(c), b)
            }
            None => (None, self.bn0),
        };
        let (depthwise_conv, bn1) = fold::conv_opt_bn(self.depthwise_conv, self.bn1);
        let (project_conv, bn2) = fold::conv_opt_bn(self.project_conv, self.bn2);
        Self {
            expand_conv,
            bn0,
            depthwise_conv,
            bn1,
            project_conv,
            bn2,
            residual: self.residual,
        }
    }
}

/// An EfficientNet-Lite backbone, with its ImageNet classifier when the weights carry one.
#[derive(Module, Debug)]
pub struct EfficientNetLite {
    /// Stem convolution (3x3, stride 2).
    pub conv_stem: Conv2d,
    /// Stem batch norm (`None` once folded into the stem).
    pub bn0: Option<BatchNorm>,
    /// The MBConv blocks, all stages in order.
    pub blocks: Vec<MbConv>,
    /// 1x1 head convolution to 1280 channels.
    pub conv_head: Conv2d,
    /// Head batch norm (`None` once folded into the head convolution).
    pub bn1: Option<BatchNorm>,
    /// ImageNet classifier (1280 → 1000), kept only to check a port against the reference.
    pub fc: Option<Linear>,
}

impl EfficientNetLite {
    /// Builds a randomly initialised backbone of the given scale, with an ImageNet classifier
    /// when `imagenet_head` is true.
    pub fn new(scale: LiteScale, imagenet_head: bool, device: &Device) -> Self {
        let mut blocks = Vec::new();
        let mut cin = STEM;
        let last = STAGES.len() - 1;
        for (i, &(k, s, e, c, r)) in STAGES.iter().enumerate() {
            let cout = round_channels(c, scale.width);
            let repeats = if i == 0 || i == last {
                r
            } else {
                (r as f64 * scale.depth).ceil() as usize
            };
            for j in 0..repeats {
                let stride = if j == 0 { s } else { 1 };
                blocks.push(MbConv::new(cin, cout, k, stride, e, device));
                cin = cout;
            }
        }
        Self {
            conv_stem: conv(3, STEM, 3, 2, 1, device),
            bn0: Some(bn(STEM, device)),
            blocks,
            conv_head: conv(cin, HEAD, 1, 1, 1, device),
            bn1: Some(bn(HEAD, device)),
            fc: imagenet_head.then(|| LinearConfig::new(HEAD, 1000).init(device)),
        }
    }

    /// The Grad-CAM target: the output of the last convolutional block (head conv + BN + ReLU6),
    /// `[batch, 1280, h/32, w/32]`, through `ops`.
    pub fn feature_map(&self, x: Tensor<4>, ops: Operations) -> Tensor<4> {
        let n = self.blocks.len();
        self.feature_map_from(self.input_of_block(x, n, ops), n, ops)
    }

    /// The stem and the first `n` blocks: the input of block `n` (partial fine-tuning caches it).
    pub fn input_of_block(&self, x: Tensor<4>, n: usize, ops: Operations) -> Tensor<4> {
        let mut x = self.stem(x, ops);
        for b in &self.blocks[..n] {
            x = b.forward(x, ops);
        }
        x
    }

    /// The outputs after the first `after[i]` blocks, for each `i` (ascending counts), in one
    /// pass: the multi-scale features a segmentation decoder reads.
    pub fn stage_outputs(&self, x: Tensor<4>, after: &[usize], ops: Operations) -> Vec<Tensor<4>> {
        let mut x = self.stem(x, ops);
        let mut out = Vec::with_capacity(after.len());
        let mut done = 0;
        for &n in after {
            for b in &self.blocks[done..n] {
                x = b.forward(x, ops);
            }
            done = n;
            out.push(x.clone());
        }
        out
    }

    /// Blocks `n..` and the head convolution: the Grad-CAM target from the input of block `n`.
    pub fn feature_map_from(&self, mut x: Tensor<4>, n: usize, ops: Operations) -> Tensor<4> {
        for b in &self.blocks[n..] {
            x = b.forward(x, ops);
        }
        conv_bn_act(&self.conv_head, &self.bn1, x, Act::Relu6, ops)
    }

    /// The stem: convolution, batch norm, ReLU6.
    fn stem(&self, x: Tensor<4>, ops: Operations) -> Tensor<4> {
        relu6(opt_bn(&self.bn0, self.conv_stem.forward(x), ops), ops)
    }

    /// The backbone with every batch norm folded into the convolution before it (inference).
    pub fn fold_batchnorm(self) -> Self {
        let (conv_stem, bn0) = fold::conv_opt_bn(self.conv_stem, self.bn0);
        let (conv_head, bn1) = fold::conv_opt_bn(self.conv_head, self.bn1);
        Self {
            conv_stem,
            bn0,
            blocks: self
                .blocks
                .into_iter()
                .map(MbConv::fold_batchnorm)
                .collect(),
            conv_head,
            bn1,
            fc: self.fc,
        }
    }

    /// ImageNet logits, when the backbone has its classifier.
    pub fn imagenet_logits(&self, pooled: Tensor<2>) -> Option<Tensor<2>> {
        self.fc.as_ref().map(|fc| fc.forward(pooled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_rounding_matches_reference() {
        assert_eq!(round_channels(32, 1.0), 32);
        assert_eq!(round_channels(24, 1.1), 24);
        assert_eq!(round_channels(40, 1.1), 48);
        assert_eq!(round_channels(320, 1.1), 352);
    }

    #[test]
    fn lite0_has_sixteen_blocks_and_expected_shape() {
        let device = Device::flex();
        let m = EfficientNetLite::new(
            LiteScale {
                width: 1.0,
                depth: 1.0,
            },
            false,
            &device,
        );
        assert_eq!(m.blocks.len(), 16);
        let y = m.feature_map(Tensor::zeros([1, 3, 64, 64], &device), Operations::Own);
        assert_eq!(y.dims(), [1, HEAD, 2, 2]);
    }
}
