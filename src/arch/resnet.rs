//! ResNet-50 and its wide and grouped (ResNeXt) variants, as torchvision defines them (stride on
//! the 3x3 convolution, "ResNet v1.5"). Grad-CAM: `layer4`, the output of the last bottleneck
//! (2048x7x7).

use super::activation::relu;
use super::conv::Operations;
use super::fold::{self, opt_bn};
use super::layers::{ConvSpec, Layer, bn, max_pool, seq};
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, Linear};
use burn::prelude::*;

const EPS: f64 = 1e-5;

/// Width and grouping of a ResNet-50 variant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResNetShape {
    /// Groups of the 3x3 convolutions (32 for ResNeXt-50 32x4d).
    pub groups: usize,
    /// Channels per group at the first stage (64 for ResNet-50, 128 for Wide ResNet-50-2, 4 for
    /// ResNeXt-50 32x4d).
    pub width_per_group: usize,
}

/// A bottleneck block: 1x1, 3x3 (strided, grouped), 1x1 with expansion 4.
#[derive(Module, Debug)]
pub struct Bottleneck {
    /// 1x1 reduction.
    pub conv1: Conv2d,
    /// Batch norm after `conv1` (`None` once folded).
    pub bn1: Option<BatchNorm>,
    /// 3x3 convolution.
    pub conv2: Conv2d,
    /// Batch norm after `conv2` (`None` once folded).
    pub bn2: Option<BatchNorm>,
    /// 1x1 expansion.
    pub conv3: Conv2d,
    /// Batch norm after `conv3` (`None` once folded).
    pub bn3: Option<BatchNorm>,
    /// Projection shortcut (1x1 conv + BN), empty for the identity.
    pub downsample: Vec<Layer>,
}

impl Bottleneck {
    fn forward(&self, x: Tensor<4>, ops: Operations) -> Tensor<4> {
        let identity = if self.downsample.is_empty() {
            x.clone()
        } else {
            seq(&self.downsample, x.clone(), ops)
        };
        let y = relu(opt_bn(&self.bn1, self.conv1.forward(x), ops));
        let y = relu(opt_bn(&self.bn2, self.conv2.forward(y), ops));
        let y = opt_bn(&self.bn3, self.conv3.forward(y), ops);
        relu(y + identity)
    }

    fn fold_batchnorm(self) -> Self {
        let (conv1, bn1) = fold::conv_opt_bn(self.conv1, self.bn1);
        let (conv2, bn2) = fold::conv_opt_bn(self.conv2, self.bn2);
        let (conv3, bn3) = fold::conv_opt_bn(self.conv3, self.bn3);
        Self {
            conv1,
            bn1,
            conv2,
            bn2,
            conv3,
            bn3,
            downsample: fold::layers(self.downsample),
        }
    }
}

/// A ResNet-50-shaped network.
#[derive(Module, Debug)]
pub struct ResNet {
    /// 7x7 stem convolution, stride 2.
    pub conv1: Conv2d,
    /// Stem batch norm (`None` once folded).
    pub bn1: Option<BatchNorm>,
    /// 3x3 max pooling, stride 2.
    pub maxpool: MaxPool2d,
    /// Stage 1 (3 blocks).
    pub layer1: Vec<Bottleneck>,
    /// Stage 2 (4 blocks).
    pub layer2: Vec<Bottleneck>,
    /// Stage 3 (6 blocks).
    pub layer3: Vec<Bottleneck>,
    /// Stage 4 (3 blocks).
    pub layer4: Vec<Bottleneck>,
    /// ImageNet classifier (2048 → 1000), kept only for parity checks.
    pub fc: Option<Linear>,
}

impl ResNet {
    /// A randomly initialised network of the given shape.
    pub fn new(shape: ResNetShape, imagenet_head: bool, d: &Device) -> Self {
        let mut inplanes = 64;
        let mut stage = |planes: usize, blocks: usize, stride: usize| {
            let width = planes * shape.width_per_group / 64 * shape.groups;
            (0..blocks)
                .map(|i| {
                    let s = if i == 0 { stride } else { 1 };
                    let downsample = if i == 0 && (s != 1 || inplanes != planes * 4) {
                        vec![
                            Layer::Conv(
                                ConvSpec::new([inplanes, planes * 4], 1)
                                    .with_stride(s)
                                    .init(d),
                            ),
                            Layer::Bn(bn(planes * 4, EPS, d)),
                        ]
                    } else {
                        Vec::new()
                    };
                    let b = Bottleneck {
                        conv1: ConvSpec::new([inplanes, width], 1).init(d),
                        bn1: Some(bn(width, EPS, d)),
                        conv2: ConvSpec::new([width, width], 3)
                            .with_stride(s)
                            .with_padding(1)
                            .with_groups(shape.groups)
                            .init(d),
                        bn2: Some(bn(width, EPS, d)),
                        conv3: ConvSpec::new([width, planes * 4], 1).init(d),
                        bn3: Some(bn(planes * 4, EPS, d)),
                        downsample,
                    };
                    inplanes = planes * 4;
                    b
                })
                .collect::<Vec<_>>()
        };
        let layer1 = stage(64, 3, 1);
        let layer2 = stage(128, 4, 2);
        let layer3 = stage(256, 6, 2);
        let layer4 = stage(512, 3, 2);
        Self {
            conv1: ConvSpec::new([3, 64], 7)
                .with_stride(2)
                .with_padding(3)
                .init(d),
            bn1: Some(bn(64, EPS, d)),
            maxpool: max_pool(3, 2, 1, false),
            layer1,
            layer2,
            layer3,
            layer4,
            fc: imagenet_head.then(|| super::layers::linear(2048, 1000, d)),
        }
    }

    /// The output of `layer4`, through `ops`.
    pub fn feature_map(&self, x: Tensor<4>, ops: Operations) -> Tensor<4> {
        let mut x = self
            .maxpool
            .forward(relu(opt_bn(&self.bn1, self.conv1.forward(x), ops)));
        for b in self
            .layer1
            .iter()
            .chain(&self.layer2)
            .chain(&self.layer3)
            .chain(&self.layer4)
        {
            x = b.forward(x, ops);
        }
        x
    }

    /// The network with every batch norm folded into the convolution before it (inference).
    pub fn fold_batchnorm(self) -> Self {
        let (conv1, bn1) = fold::conv_opt_bn(self.conv1, self.bn1);
        let stage = |s: Vec<Bottleneck>| s.into_iter().map(Bottleneck::fold_batchnorm).collect();
        Self {
            conv1,
            bn1,
            maxpool: self.maxpool,
            layer1: stage(self.layer1),
            layer2: stage(self.layer2),
            layer3: stage(self.layer3),
            layer4: stage(self.layer4),
            fc: self.fc,
        }
    }
}
