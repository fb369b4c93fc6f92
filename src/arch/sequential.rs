//! The torchvision networks that are a `features` sequence followed by a `classifier` sequence:
//! AlexNet, VGG-16, SqueezeNet 1.0, MobileNetV2, MobileNetV3-Large and MNASNet 1.0, each built
//! exactly as torchvision defines it (same layers, same indices, same hyper-parameters).

use super::conv::Operations;
use super::fold;
use super::layers::{
    Act, ConvNormAct, ConvSpec, Fire, Layer, Residual, SqueezeExcitation, dropout, linear,
    make_divisible, max_pool, seq,
};
use crate::arch::global_avg_pool;
use burn::nn::Relu;
use burn::prelude::*;
use burn::tensor::module::adaptive_avg_pool2d;

/// `features` → pooling → `classifier`, with the Grad-CAM target inside `features` and the
/// replaced (ImageNet) layers at the end of `classifier`.
#[derive(Module, Debug)]
pub struct SequentialNet {
    /// torchvision's `features` (MNASNet: `layers`).
    pub features: Vec<Layer>,
    /// torchvision's `classifier`; its first `tail` layers belong to the backbone, the rest is
    /// the ImageNet classifier (present only for parity checks).
    pub classifier: Vec<Layer>,
    /// `features[..cam_split]` produces the Grad-CAM target.
    pub cam_split: usize,
    /// Pooling after `features`: 0 = global average, `k` > 0 = adaptive average to `k`x`k`
    /// then flatten (AlexNet, VGG).
    pub pool: usize,
    /// Number of leading `classifier` layers kept in front of the paper's head.
    pub tail: usize,
    /// SqueezeNet: the head reads the feature map itself and the classifier is a convolution
    /// followed by global average pooling.
    pub conv_classifier: bool,
}

impl SequentialNet {
    /// The Grad-CAM target activation, through `ops`.
    pub fn feature_map(&self, x: Tensor<4>, ops: Operations) -> Tensor<4> {
        seq(&self.features[..self.cam_split], x, ops)
    }

    /// What the paper's head reads, `[n, c, h, w]` (`h = w = 1` except for SqueezeNet).
    pub fn head_input(&self, map: Tensor<4>, ops: Operations) -> Tensor<4> {
        let x = seq(&self.features[self.cam_split..], map, ops);
        if self.conv_classifier {
            return x;
        }
        let flat = if self.pool == 0 {
            global_avg_pool(x)
        } else {
            adaptive_avg_pool2d(x, [self.pool, self.pool]).flatten(1, 3)
        };
        let [n, d] = flat.dims();
        let y = seq(
            &self.classifier[..self.tail],
            flat.reshape([n, 1, 1, d]),
            ops,
        );
        let d = y.dims()[3];
        y.reshape([n, d, 1, 1])
    }

    /// ImageNet logits from [`SequentialNet::head_input`], when the classifier was kept.
    pub fn imagenet_logits(&self, input: Tensor<4>, ops: Operations) -> Option<Tensor<2>> {
        if self.classifier.len() <= self.tail {
            return None;
        }
        let rest = &self.classifier[self.tail..];
        if self.conv_classifier {
            return Some(global_avg_pool(seq(rest, input, ops)));
        }
        let [n, d, _, _] = input.dims();
        let y = seq(rest, input.reshape([n, 1, 1, d]), ops);
        Some(y.flatten(1, 3))
    }

    /// The network with every batch norm that directly follows a convolution folded into it
    /// (inference).
    pub fn fold_batchnorm(mut self) -> Self {
        // The two sides of the Grad-CAM split fold apart: a batch norm right after the split
        // belongs to what the head reads, not to the Grad-CAM target.
        let after = self.features.split_off(self.cam_split);
        let mut features = fold::layers(std::mem::take(&mut self.features));
        features.extend(fold::layers(after));
        self.features = features;
        self.classifier = fold::layers(self.classifier);
        self
    }

    /// Drops the ImageNet classifier (keeps the layers up to the one the paper replaces).
    pub fn without_imagenet_head(mut self) -> Self {
        self.classifier.truncate(self.tail);
        self
    }
}

fn relu() -> Layer {
    Layer::Relu(Relu)
}

fn conv_b(cin: usize, cout: usize, k: usize, stride: usize, pad: usize, d: &Device) -> Layer {
    Layer::Conv(
        ConvSpec::new([cin, cout], k)
            .with_stride(stride)
            .with_padding(pad)
            .with_bias(true)
            .init(d),
    )
}

/// AlexNet (torchvision's "one weird trick" variant). Grad-CAM: `features.11`, the ReLU after the
/// last convolution (256x13x13 at 224 px).
pub fn alexnet(imagenet_head: bool, d: &Device) -> SequentialNet {
    let features = vec![
        conv_b(3, 64, 11, 4, 2, d),
        relu(),
        Layer::MaxPool(max_pool(3, 2, 0, false)),
        conv_b(64, 192, 5, 1, 2, d),
        relu(),
        Layer::MaxPool(max_pool(3, 2, 0, false)),
        conv_b(192, 384, 3, 1, 1, d),
        relu(),
        conv_b(384, 256, 3, 1, 1, d),
        relu(),
        conv_b(256, 256, 3, 1, 1, d),
        relu(),
        Layer::MaxPool(max_pool(3, 2, 0, false)),
    ];
    let hidden = vec![
        Layer::Dropout(dropout(0.5)),
        Layer::Linear(linear(256 * 6 * 6, 4096, d)),
        relu(),
        Layer::Dropout(dropout(0.5)),
        Layer::Linear(linear(4096, 4096, d)),
        relu(),
    ];
    fully_connected(features, hidden, 12, 6, imagenet_head, d)
}

/// VGG-16 (configuration D, no batch norm). Grad-CAM: `features.29`, the ReLU after the last
/// convolution (512x14x14).
pub fn vgg16(imagenet_head: bool, d: &Device) -> SequentialNet {
    const CFG: [usize; 18] = [
        64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
    ];
    let mut features = Vec::new();
    let mut cin = 3;
    for c in CFG {
        if c == 0 {
            features.push(Layer::MaxPool(max_pool(2, 2, 0, false)));
        } else {
            features.push(conv_b(cin, c, 3, 1, 1, d));
            features.push(relu());
            cin = c;
        }
    }
    let hidden = vec![
        Layer::Linear(linear(512 * 7 * 7, 4096, d)),
        relu(),
        Layer::Dropout(dropout(0.5)),
        Layer::Linear(linear(4096, 4096, d)),
        relu(),
        Layer::Dropout(dropout(0.5)),
    ];
    fully_connected(features, hidden, 30, 7, imagenet_head, d)
}

/// AlexNet's and VGG's shape: `features`, average pooling to `pool`x`pool` and flattening,
/// then the six `hidden` layers of the classifier (the backbone's) and, when kept, the ImageNet
/// layer after them. `features[..cam_split]` gives the Grad-CAM target.
fn fully_connected(
    features: Vec<Layer>,
    mut hidden: Vec<Layer>,
    cam_split: usize,
    pool: usize,
    imagenet_head: bool,
    d: &Device,
) -> SequentialNet {
    let tail = hidden.len();
    if imagenet_head {
        hidden.push(Layer::Linear(linear(4096, 1000, d)));
    }
    SequentialNet {
        features,
        classifier: hidden,
        cam_split,
        pool,
        tail,
        conv_classifier: false,
    }
}

/// SqueezeNet 1.0. Grad-CAM: `features.12`, the last Fire module (512x13x13). The paper's head
/// replaces `classifier.1` by a 1x1 convolution to the classes.
pub fn squeezenet1_0(imagenet_head: bool, d: &Device) -> SequentialNet {
    let pool = || Layer::MaxPool(max_pool(3, 2, 0, true));
    let fire = |cin, s, e| Layer::Fire(Fire::new(cin, s, e, e, d));
    let features = vec![
        conv_b(3, 96, 7, 2, 0, d),
        relu(),
        pool(),
        fire(96, 16, 64),
        fire(128, 16, 64),
        fire(128, 32, 128),
        pool(),
        fire(256, 32, 128),
        fire(256, 48, 192),
        fire(384, 48, 192),
        fire(384, 64, 256),
        pool(),
        fire(512, 64, 256),
    ];
    let classifier = if imagenet_head {
        vec![
            Layer::Dropout(dropout(0.5)),
            conv_b(512, 1000, 1, 1, 0, d),
            relu(),
        ]
    } else {
        Vec::new()
    };
    SequentialNet {
        features,
        classifier,
        cam_split: 13,
        pool: 0,
        tail: 0,
        conv_classifier: true,
    }
}

fn classifier_dropout_linear(cin: usize, imagenet_head: bool, d: &Device) -> Vec<Layer> {
    let mut c = vec![Layer::Dropout(dropout(0.2))];
    if imagenet_head {
        c.push(Layer::Linear(linear(cin, 1000, d)));
    }
    c
}

/// MobileNetV2 (width 1.0). Grad-CAM: `features.18`, the last 1x1 conv + BN + ReLU6
/// (1280x7x7).
pub fn mobilenet_v2(imagenet_head: bool, d: &Device) -> SequentialNet {
    // (expansion, channels, repeats, stride)
    const CFG: [(usize, usize, usize, usize); 7] = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];
    const EPS: f64 = 1e-5;
    let mut features = vec![
        ConvNormAct::new([3, 32], 3, Act::Relu6)
            .with_stride(2)
            .with_eps(EPS)
            .init(d),
    ];
    let mut cin = 32;
    for (t, c, n, s) in CFG {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let hidden = cin * t;
            let mut layers = Vec::new();
            if t != 1 {
                layers.push(
                    ConvNormAct::new([cin, hidden], 1, Act::Relu6)
                        .with_eps(EPS)
                        .init(d),
                );
            }
            layers.push(
                ConvNormAct::new([hidden, hidden], 3, Act::Relu6)
                    .with_stride(stride)
                    .with_groups(hidden)
                    .with_eps(EPS)
                    .init(d),
            );
            layers.push(Layer::Conv(ConvSpec::new([hidden, c], 1).init(d)));
            layers.push(Layer::Bn(super::layers::bn(c, EPS, d)));
            features.push(Layer::Residual(Residual {
                layers,
                residual: stride == 1 && cin == c,
            }));
            cin = c;
        }
    }
    features.push(
        ConvNormAct::new([cin, 1280], 1, Act::Relu6)
            .with_eps(EPS)
            .init(d),
    );
    SequentialNet {
        cam_split: features.len(),
        features,
        classifier: classifier_dropout_linear(1280, imagenet_head, d),
        pool: 0,
        tail: 1,
        conv_classifier: false,
    }
}

/// MobileNetV3-Large. Grad-CAM: `features.16`, the last 1x1 conv + BN + Hardswish (960x7x7).
/// The paper's head replaces the whole classifier.
pub fn mobilenet_v3_large(imagenet_head: bool, d: &Device) -> SequentialNet {
    // (input, kernel, expanded, output, squeeze-excitation, hardswish, stride)
    const CFG: [(usize, usize, usize, usize, bool, bool, usize); 15] = [
        (16, 3, 16, 16, false, false, 1),
        (16, 3, 64, 24, false, false, 2),
        (24, 3, 72, 24, false, false, 1),
        (24, 5, 72, 40, true, false, 2),
        (40, 5, 120, 40, true, false, 1),
        (40, 5, 120, 40, true, false, 1),
        (40, 3, 240, 80, false, true, 2),
        (80, 3, 200, 80, false, true, 1),
        (80, 3, 184, 80, false, true, 1),
        (80, 3, 184, 80, false, true, 1),
        (80, 3, 480, 112, true, true, 1),
        (112, 3, 672, 112, true, true, 1),
        (112, 5, 672, 160, true, true, 2),
        (160, 5, 960, 160, true, true, 1),
        (160, 5, 960, 160, true, true, 1),
    ];
    const EPS: f64 = 1e-3;
    let mut features = vec![
        ConvNormAct::new([3, 16], 3, Act::Hardswish)
            .with_stride(2)
            .with_eps(EPS)
            .init(d),
    ];
    for (cin, k, exp, cout, se, hs, stride) in CFG {
        let act = if hs { Act::Hardswish } else { Act::Relu };
        let mut layers = Vec::new();
        if exp != cin {
            layers.push(ConvNormAct::new([cin, exp], 1, act).with_eps(EPS).init(d));
        }
        layers.push(
            ConvNormAct::new([exp, exp], k, act)
                .with_stride(stride)
                .with_groups(exp)
                .with_eps(EPS)
                .init(d),
        );
        if se {
            let squeeze = make_divisible(exp as f64 / 4.0, 8);
            layers.push(Layer::Se(SqueezeExcitation::new(exp, squeeze, d)));
        }
        layers.push(
            ConvNormAct::new([exp, cout], 1, Act::None)
                .with_eps(EPS)
                .init(d),
        );
        features.push(Layer::Residual(Residual {
            layers,
            residual: stride == 1 && cin == cout,
        }));
    }
    features.push(
        ConvNormAct::new([160, 960], 1, Act::Hardswish)
            .with_eps(EPS)
            .init(d),
    );
    let classifier = if imagenet_head {
        vec![
            Layer::Linear(linear(960, 1280, d)),
            Layer::Hardswish(burn::nn::activation::HardSwish),
            Layer::Dropout(dropout(0.2)),
            Layer::Linear(linear(1280, 1000, d)),
        ]
    } else {
        Vec::new()
    };
    SequentialNet {
        cam_split: features.len(),
        features,
        classifier,
        pool: 0,
        tail: 0,
        conv_classifier: false,
    }
}

/// MNASNet 1.0. Grad-CAM: `layers.16`, the ReLU after the last 1x1 convolution (1280x7x7).
pub fn mnasnet1_0(imagenet_head: bool, d: &Device) -> SequentialNet {
    const EPS: f64 = 1e-5;
    let bn = |c| Layer::Bn(super::layers::bn(c, EPS, d));
    let conv_nb = |cin, cout, k, s, g| {
        Layer::Conv(
            ConvSpec::new([cin, cout], k)
                .with_stride(s)
                .with_padding(k / 2)
                .with_groups(g)
                .init(d),
        )
    };
    let mut layers = vec![
        conv_nb(3, 32, 3, 2, 1),
        bn(32),
        relu(),
        conv_nb(32, 32, 3, 1, 32),
        bn(32),
        relu(),
        conv_nb(32, 16, 1, 1, 1),
        bn(16),
    ];
    // (input, output, kernel, stride, expansion, repeats)
    const STACKS: [(usize, usize, usize, usize, usize, usize); 6] = [
        (16, 24, 3, 2, 3, 3),
        (24, 40, 5, 2, 3, 3),
        (40, 80, 5, 2, 6, 3),
        (80, 96, 3, 1, 6, 2),
        (96, 192, 5, 2, 6, 4),
        (192, 320, 3, 1, 6, 1),
    ];
    for (cin, cout, k, s, e, r) in STACKS {
        let mut stack = Vec::new();
        for i in 0..r {
            let (inp, stride) = if i == 0 { (cin, s) } else { (cout, 1) };
            let mid = inp * e;
            stack.push(Layer::Residual(Residual {
                layers: vec![
                    conv_nb(inp, mid, 1, 1, 1),
                    bn(mid),
                    relu(),
                    conv_nb(mid, mid, k, stride, mid),
                    bn(mid),
                    relu(),
                    conv_nb(mid, cout, 1, 1, 1),
                    bn(cout),
                ],
                residual: inp == cout && stride == 1,
            }));
        }
        layers.push(Layer::Seq(stack));
    }
    layers.extend([conv_nb(320, 1280, 1, 1, 1), bn(1280), relu()]);
    SequentialNet {
        cam_split: layers.len(),
        features: layers,
        classifier: classifier_dropout_linear(1280, imagenet_head, d),
        pool: 0,
        tail: 1,
        conv_classifier: false,
    }
}
