//! DenseNet-161 as torchvision defines it (growth 48, blocks 6/12/36/24, 96 initial features,
//! bottleneck width 4). Grad-CAM: `features.norm5` followed by the ReLU the forward applies
//! (2208x7x7).

use super::activation::relu;
use super::conv::Operations;
use super::fold::{self, opt_bn};
use super::layers::{ConvSpec, avg_pool, bn, max_pool};
use super::norm;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AvgPool2d, MaxPool2d};
use burn::nn::{BatchNorm, Linear};
use burn::prelude::*;

const EPS: f64 = 1e-5;
const GROWTH: usize = 48;
const BLOCKS: [usize; 4] = [6, 12, 36, 24];
const INIT: usize = 96;
const BN_SIZE: usize = 4;
/// Channels of the last feature map.
pub const FEATURES: usize = 2208;

/// One dense layer: BN, ReLU, 1x1 conv, BN, ReLU, 3x3 conv; its output is concatenated to its
/// input.
#[derive(Module, Debug)]
pub struct DenseLayer {
    /// First batch norm.
    pub norm1: BatchNorm,
    /// 1x1 bottleneck convolution.
    pub conv1: Conv2d,
    /// Second batch norm.
    pub norm2: BatchNorm,
    /// 3x3 convolution producing `GROWTH` channels.
    pub conv2: Conv2d,
}

/// A dense block (torchvision names its layers `denselayer1`…; the key remap renumbers them).
#[derive(Module, Debug)]
pub struct DenseBlock {
    /// The block's layers in order.
    pub layers: Vec<DenseLayer>,
}

/// A transition: BN, ReLU, 1x1 conv halving the channels, 2x2 average pooling.
#[derive(Module, Debug)]
pub struct Transition {
    /// Batch norm.
    pub norm: BatchNorm,
    /// 1x1 convolution.
    pub conv: Conv2d,
    /// 2x2 average pooling.
    pub pool: AvgPool2d,
}

/// torchvision's `features` of DenseNet-161.
#[derive(Module, Debug)]
pub struct DenseFeatures {
    /// 7x7 stem convolution.
    pub conv0: Conv2d,
    /// Stem batch norm.
    pub norm0: Option<BatchNorm>,
    /// Stem max pooling.
    pub pool0: MaxPool2d,
    /// Dense block 1.
    pub denseblock1: DenseBlock,
    /// Transition 1.
    pub transition1: Transition,
    /// Dense block 2.
    pub denseblock2: DenseBlock,
    /// Transition 2.
    pub transition2: Transition,
    /// Dense block 3.
    pub denseblock3: DenseBlock,
    /// Transition 3.
    pub transition3: Transition,
    /// Dense block 4.
    pub denseblock4: DenseBlock,
    /// Final batch norm.
    pub norm5: BatchNorm,
}

/// DenseNet-161.
#[derive(Module, Debug)]
pub struct DenseNet {
    /// The convolutional part.
    pub features: DenseFeatures,
    /// ImageNet classifier (2208 → 1000), kept only for parity checks.
    pub classifier: Option<Linear>,
}

impl DenseNet {
    /// A randomly initialised DenseNet-161.
    pub fn new(imagenet_head: bool, d: &Device) -> Self {
        let block = |mut ch: usize, n: usize| {
            let layers = (0..n)
                .map(|_| {
                    let l = DenseLayer {
                        norm1: bn(ch, EPS, d),
                        conv1: ConvSpec::new([ch, BN_SIZE * GROWTH], 1).init(d),
                        norm2: bn(BN_SIZE * GROWTH, EPS, d),
                        conv2: ConvSpec::new([BN_SIZE * GROWTH, GROWTH], 3)
                            .with_padding(1)
                            .init(d),
                    };
                    ch += GROWTH;
                    l
                })
                .collect();
            (DenseBlock { layers }, ch)
        };
        let transition = |c: usize| Transition {
            norm: bn(c, EPS, d),
            conv: ConvSpec::new([c, c / 2], 1).init(d),
            pool: avg_pool(2, 2),
        };
        let (denseblock1, c1) = block(INIT, BLOCKS[0]);
        let transition1 = transition(c1);
        let (denseblock2, c2) = block(c1 / 2, BLOCKS[1]);
        let transition2 = transition(c2);
        let (denseblock3, c3) = block(c2 / 2, BLOCKS[2]);
        let transition3 = transition(c3);
        let (denseblock4, c4) = block(c3 / 2, BLOCKS[3]);
        debug_assert_eq!(c4, FEATURES);
        Self {
            features: DenseFeatures {
                conv0: ConvSpec::new([3, INIT], 7)
                    .with_stride(2)
                    .with_padding(3)
                    .init(d),
                norm0: Some(bn(INIT, EPS, d)),
                pool0: max_pool(3, 2, 1, false),
                denseblock1,
                transition1,
                denseblock2,
                transition2,
                denseblock3,
                transition3,
                denseblock4,
                norm5: bn(c4, EPS, d),
            },
            classifier: imagenet_head.then(|| super::layers::linear(c4, 1000, d)),
        }
    }

    /// The network with its stem batch norm folded into the stem convolution (inference). The
    /// other batch norms come before a ReLU and a convolution (pre-activation) and cannot fold.
    pub fn fold_batchnorm(mut self) -> Self {
        let (conv0, norm0) = fold::conv_opt_bn(self.features.conv0, self.features.norm0);
        self.features.conv0 = conv0;
        self.features.norm0 = norm0;
        self
    }

    /// `relu(features(x))`, through `ops`.
    pub fn feature_map(&self, x: Tensor<4>, ops: Operations) -> Tensor<4> {
        let f = &self.features;
        let mut x = f
            .pool0
            .forward(relu(opt_bn(&f.norm0, f.conv0.forward(x), ops)));
        let stages: [(&DenseBlock, Option<&Transition>); 4] = [
            (&f.denseblock1, Some(&f.transition1)),
            (&f.denseblock2, Some(&f.transition2)),
            (&f.denseblock3, Some(&f.transition3)),
            (&f.denseblock4, None),
        ];
        for (block, transition) in stages {
            for l in &block.layers {
                let y = relu(norm::forward(&l.norm1, x.clone(), ops));
                let y = relu(norm::forward(&l.norm2, l.conv1.forward(y), ops));
                let y = l.conv2.forward(y);
                x = Tensor::cat(vec![x, y], 1);
            }
            if let Some(t) = transition {
                x = t
                    .pool
                    .forward(t.conv.forward(relu(norm::forward(&t.norm, x, ops))));
            }
        }
        relu(norm::forward(&f.norm5, x, ops))
    }
}
