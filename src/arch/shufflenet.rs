//! ShuffleNetV2 x1.0 as torchvision defines it. Grad-CAM: `conv5`, the last 1x1 conv + BN + ReLU
//! (1024x7x7).

use super::conv::Operations;
use super::fold;
use super::layers::{ConvSpec, Layer, bn, max_pool, seq};
use burn::nn::pool::MaxPool2d;
use burn::nn::{Linear, Relu};
use burn::prelude::*;

const EPS: f64 = 1e-5;

/// One ShuffleNetV2 unit.
#[derive(Module, Debug)]
pub struct ShuffleUnit {
    /// Left branch (strided units only): depthwise 3x3 + BN, 1x1 + BN + ReLU.
    pub branch1: Vec<Layer>,
    /// Right branch: 1x1 + BN + ReLU, depthwise 3x3 + BN, 1x1 + BN + ReLU.
    pub branch2: Vec<Layer>,
    /// Stride of the depthwise convolutions.
    pub stride: usize,
}

impl ShuffleUnit {
    fn new(inp: usize, oup: usize, stride: usize, d: &Device) -> Self {
        let bf = oup / 2;
        let dw = |c: usize| {
            Layer::Conv(
                ConvSpec::new([c, c], 3)
                    .with_stride(stride)
                    .with_padding(1)
                    .with_groups(c)
                    .init(d),
            )
        };
        let pw = |a: usize, b: usize| Layer::Conv(ConvSpec::new([a, b], 1).init(d));
        let norm = |c: usize| Layer::Bn(bn(c, EPS, d));
        let branch1 = if stride > 1 {
            vec![dw(inp), norm(inp), pw(inp, bf), norm(bf), Layer::Relu(Relu)]
        } else {
            Vec::new()
        };
        let cin2 = if stride > 1 { inp } else { bf };
        Self {
            branch1,
            branch2: vec![
                pw(cin2, bf),
                norm(bf),
                Layer::Relu(Relu),
                dw(bf),
                norm(bf),
                pw(bf, bf),
                norm(bf),
                Layer::Relu(Relu),
            ],
            stride,
        }
    }

    fn fold_batchnorm(self) -> Self {
        Self {
            branch1: fold::layers(self.branch1),
            branch2: fold::layers(self.branch2),
            stride: self.stride,
        }
    }

    fn forward(&self, x: Tensor<4>, ops: Operations) -> Tensor<4> {
        let out = if self.stride == 1 {
            let c = x.dims()[1] / 2;
            let x1 = x.clone().narrow(1, 0, c);
            let x2 = x.narrow(1, c, c);
            Tensor::cat(vec![x1, seq(&self.branch2, x2, ops)], 1)
        } else {
            Tensor::cat(
                vec![
                    seq(&self.branch1, x.clone(), ops),
                    seq(&self.branch2, x, ops),
                ],
                1,
            )
        };
        channel_shuffle(out, 2)
    }
}

/// Interleaves the channels of `groups` groups.
fn channel_shuffle(x: Tensor<4>, groups: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, groups, c / groups, h, w])
        .swap_dims(1, 2)
        .reshape([b, c, h, w])
}

/// ShuffleNetV2 x1.0.
#[derive(Module, Debug)]
pub struct ShuffleNetV2 {
    /// Stem: 3x3 conv stride 2 + BN + ReLU.
    pub conv1: Vec<Layer>,
    /// 3x3 stride-2 max pooling.
    pub maxpool: MaxPool2d,
    /// Stage 2 (4 units).
    pub stage2: Vec<ShuffleUnit>,
    /// Stage 3 (8 units).
    pub stage3: Vec<ShuffleUnit>,
    /// Stage 4 (4 units).
    pub stage4: Vec<ShuffleUnit>,
    /// 1x1 conv to 1024 + BN + ReLU.
    pub conv5: Vec<Layer>,
    /// ImageNet classifier (1024 → 1000), kept only for parity checks.
    pub fc: Option<Linear>,
}

impl ShuffleNetV2 {
    /// A randomly initialised ShuffleNetV2 x1.0.
    pub fn new(imagenet_head: bool, d: &Device) -> Self {
        let stage = |inp: usize, oup: usize, n: usize| {
            (0..n)
                .map(|i| {
                    if i == 0 {
                        ShuffleUnit::new(inp, oup, 2, d)
                    } else {
                        ShuffleUnit::new(oup, oup, 1, d)
                    }
                })
                .collect()
        };
        Self {
            conv1: vec![
                Layer::Conv(
                    ConvSpec::new([3, 24], 3)
                        .with_stride(2)
                        .with_padding(1)
                        .init(d),
                ),
                Layer::Bn(bn(24, EPS, d)),
                Layer::Relu(Relu),
            ],
            maxpool: max_pool(3, 2, 1, false),
            stage2: stage(24, 116, 4),
            stage3: stage(116, 232, 8),
            stage4: stage(232, 464, 4),
            conv5: vec![
                Layer::Conv(ConvSpec::new([464, 1024], 1).init(d)),
                Layer::Bn(bn(1024, EPS, d)),
                Layer::Relu(Relu),
            ],
            fc: imagenet_head.then(|| super::layers::linear(1024, 1000, d)),
        }
    }

    /// The network with every batch norm folded into the convolution before it (inference).
    pub fn fold_batchnorm(self) -> Self {
        let stage = |s: Vec<ShuffleUnit>| s.into_iter().map(ShuffleUnit::fold_batchnorm).collect();
        Self {
            conv1: fold::layers(self.conv1),
            maxpool: self.maxpool,
            stage2: stage(self.stage2),
            stage3: stage(self.stage3),
            stage4: stage(self.stage4),
            conv5: fold::layers(self.conv5),
            fc: self.fc,
        }
    }

    /// The output of `conv5`, through `ops`.
    pub fn feature_map(&self, x: Tensor<4>, ops: Operations) -> Tensor<4> {
        let mut x = self.maxpool.forward(seq(&self.conv1, x, ops));
        for u in self.stage2.iter().chain(&self.stage3).chain(&self.stage4) {
            x = u.forward(x, ops);
        }
        seq(&self.conv5, x, ops)
    }
}
