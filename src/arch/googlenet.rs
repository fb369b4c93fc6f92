//! GoogLeNet (Inception v1) as torchvision defines it, in the configuration of its published
//! ImageNet weights: batch-normalised convolutions (eps 1e-3), `transform_input` on (the network
//! re-normalises an ImageNet-normalised input to the [-1, 1] scaling the weights were trained
//! with), auxiliary classifiers absent (their tensors in the file are ignored). Grad-CAM:
//! `inception5b` (1024x7x7).

use super::activation::relu;
use super::conv::Operations;
use super::fold::{self, opt_bn};
use super::layers::{ConvSpec, bn, max_pool};
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, Linear};
use burn::prelude::*;

const EPS: f64 = 1e-3;

/// Convolution without bias, batch norm, ReLU.
#[derive(Module, Debug)]
pub struct BasicConv2d {
    /// The convolution.
    pub conv: Conv2d,
    /// Its batch norm (`None` once folded).
    pub bn: Option<BatchNorm>,
}

impl BasicConv2d {
    fn new(cin: usize, cout: usize, k: usize, stride: usize, pad: usize, d: &Device) -> Self {
        Self {
            conv: ConvSpec::new([cin, cout], k)
                .with_stride(stride)
                .with_padding(pad)
                .init(d),
            bn: Some(bn(cout, EPS, d)),
        }
    }

    fn forward(&self, x: Tensor<4>, ops: Operations) -> Tensor<4> {
        relu(opt_bn(&self.bn, self.conv.forward(x), ops))
    }

    fn fold_batchnorm(self) -> Self {
        let (conv, bn) = fold::conv_opt_bn(self.conv, self.bn);
        Self { conv, bn }
    }
}

fn fold_all(layers: Vec<BasicConv2d>) -> Vec<BasicConv2d> {
    layers
        .into_iter()
        .map(BasicConv2d::fold_batchnorm)
        .collect()
}

fn chain(layers: &[BasicConv2d], x: Tensor<4>, ops: Operations) -> Tensor<4> {
    layers.iter().fold(x, |x, l| l.forward(x, ops))
}

/// An inception module: four branches concatenated.
#[derive(Module, Debug)]
pub struct Inception {
    /// 1x1.
    pub branch1: BasicConv2d,
    /// 1x1 then 3x3.
    pub branch2: Vec<BasicConv2d>,
    /// 1x1 then 3x3 (torchvision keeps the 3x3 its first release used in place of 5x5).
    pub branch3: Vec<BasicConv2d>,
    /// 3x3 max pooling (stride 1, ceil mode) then 1x1; torchvision's `branch4.1`.
    pub branch4: Vec<BasicConv2d>,
    /// The pooling of `branch4`.
    pub pool: MaxPool2d,
}

impl Inception {
    /// A module reading `cin` channels, from the widths in torchvision's order: the 1x1
    /// branch, the 3x3 branch's reduction and output, the second 3x3 branch's reduction and
    /// output, and the pooling branch's projection.
    fn new([cin, c1, c3r, c3, c5r, c5, pp]: [usize; 7], d: &Device) -> Self {
        Self {
            branch1: BasicConv2d::new(cin, c1, 1, 1, 0, d),
            branch2: vec![
                BasicConv2d::new(cin, c3r, 1, 1, 0, d),
                BasicConv2d::new(c3r, c3, 3, 1, 1, d),
            ],
            branch3: vec![
                BasicConv2d::new(cin, c5r, 1, 1, 0, d),
                BasicConv2d::new(c5r, c5, 3, 1, 1, d),
            ],
            branch4: vec![BasicConv2d::new(cin, pp, 1, 1, 0, d)],
            pool: max_pool(3, 1, 1, true),
        }
    }

    fn fold_batchnorm(self) -> Self {
        Self {
            branch1: self.branch1.fold_batchnorm(),
            branch2: fold_all(self.branch2),
            branch3: fold_all(self.branch3),
            branch4: fold_all(self.branch4),
            pool: self.pool,
        }
    }

    fn forward(&self, x: Tensor<4>, ops: Operations) -> Tensor<4> {
        Tensor::cat(
            vec![
                self.branch1.forward(x.clone(), ops),
                chain(&self.branch2, x.clone(), ops),
                chain(&self.branch3, x.clone(), ops),
                chain(&self.branch4, self.pool.forward(x), ops),
            ],
            1,
        )
    }
}

/// GoogLeNet.
#[derive(Module, Debug)]
pub struct GoogLeNet {
    /// 7x7 stem, stride 2.
    pub conv1: BasicConv2d,
    /// 1x1.
    pub conv2: BasicConv2d,
    /// 3x3.
    pub conv3: BasicConv2d,
    /// Inception 3a.
    pub inception3a: Inception,
    /// Inception 3b.
    pub inception3b: Inception,
    /// Inception 4a.
    pub inception4a: Inception,
    /// Inception 4b.
    pub inception4b: Inception,
    /// Inception 4c.
    pub inception4c: Inception,
    /// Inception 4d.
    pub inception4d: Inception,
    /// Inception 4e.
    pub inception4e: Inception,
    /// Inception 5a.
    pub inception5a: Inception,
    /// Inception 5b.
    pub inception5b: Inception,
    /// 3x3 stride-2 max pooling in ceil mode (maxpool1–3).
    pub pool3: MaxPool2d,
    /// 2x2 stride-2 max pooling in ceil mode (maxpool4).
    pub pool2: MaxPool2d,
    /// ImageNet classifier (1024 → 1000), kept only for parity checks.
    pub fc: Option<Linear>,
}

impl GoogLeNet {
    /// The network with every batch norm folded into its convolution (inference).
    pub fn fold_batchnorm(self) -> Self {
        Self {
            conv1: self.conv1.fold_batchnorm(),
            conv2: self.conv2.fold_batchnorm(),
            conv3: self.conv3.fold_batchnorm(),
            inception3a: self.inception3a.fold_batchnorm(),
            inception3b: self.inception3b.fold_batchnorm(),
            inception4a: self.inception4a.fold_batchnorm(),
            inception4b: self.inception4b.fold_batchnorm(),
            inception4c: self.inception4c.fold_batchnorm(),
            inception4d: self.inception4d.fold_batchnorm(),
            inception4e: self.inception4e.fold_batchnorm(),
            inception5a: self.inception5a.fold_batchnorm(),
            inception5b: self.inception5b.fold_batchnorm(),
            ..self
        }
    }

    /// A randomly initialised GoogLeNet.
    pub fn new(imagenet_head: bool, d: &Device) -> Self {
        let inc = |widths| Inception::new(widths, d);
        Self {
            conv1: BasicConv2d::new(3, 64, 7, 2, 3, d),
            conv2: BasicConv2d::new(64, 64, 1, 1, 0, d),
            conv3: BasicConv2d::new(64, 192, 3, 1, 1, d),
            inception3a: inc([192, 64, 96, 128, 16, 32, 32]),
            inception3b: inc([256, 128, 128, 192, 32, 96, 64]),
            inception4a: inc([480, 192, 96, 208, 16, 48, 64]),
            inception4b: inc([512, 160, 112, 224, 24, 64, 64]),
            inception4c: inc([512, 128, 128, 256, 24, 64, 64]),
            inception4d: inc([512, 112, 144, 288, 32, 64, 64]),
            inception4e: inc([528, 256, 160, 320, 32, 128, 128]),
            inception5a: inc([832, 256, 160, 320, 32, 128, 128]),
            inception5b: inc([832, 384, 192, 384, 48, 128, 128]),
            pool3: max_pool(3, 2, 0, true),
            pool2: max_pool(2, 2, 0, true),
            fc: imagenet_head.then(|| super::layers::linear(1024, 1000, d)),
        }
    }

    /// torchvision's `_transform_input`: from ImageNet normalisation to `(x - 0.5) / 0.5`.
    fn transform_input(x: Tensor<4>) -> Tensor<4> {
        const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
        const STD: [f32; 3] = [0.229, 0.224, 0.225];
        let channels = (0..3)
            .map(|c| x.clone().narrow(1, c, 1) * (STD[c] / 0.5) + ((MEAN[c] - 0.5) / 0.5))
            .collect();
        Tensor::cat(channels, 1)
    }

    /// The output of `inception5b`, through `ops`.
    pub fn feature_map(&self, x: Tensor<4>, ops: Operations) -> Tensor<4> {
        let x = Self::transform_input(x);
        let x = self.pool3.forward(self.conv1.forward(x, ops));
        let x = self.conv3.forward(self.conv2.forward(x, ops), ops);
        let x = self.pool3.forward(x);
        let x = self
            .inception3b
            .forward(self.inception3a.forward(x, ops), ops);
        let x = self.pool3.forward(x);
        let x = self.inception4a.forward(x, ops);
        let x = self.inception4b.forward(x, ops);
        let x = self.inception4c.forward(x, ops);
        let x = self.inception4d.forward(x, ops);
        let x = self.inception4e.forward(x, ops);
        let x = self.pool2.forward(x);
        self.inception5b
            .forward(self.inception5a.forward(x, ops), ops)
    }
}
