//! Building blocks shared by the torchvision ports.
//!
//! [`Layer`] is a tagged layer that mirrors one entry of a PyTorch `nn.Sequential`, parameter-free
//! entries (ReLU, pooling, dropout) included, so that a `Vec<Layer>` has the same indices as the
//! `Sequential` it ports and torchvision's weight keys (`features.3.weight`) land on it without a
//! rename: the weight loader skips the enum's variant names.

use super::activation::relu;
use super::conv::Operations;
use burn::nn::activation::{HardSwish, Relu6};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d, Relu,
};
use burn::prelude::*;
use burn::tensor::activation::hard_sigmoid;

/// One entry of a ported `nn.Sequential`.
// Built once per model: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Layer {
    /// `nn.Conv2d`.
    Conv(Conv2d),
    /// `nn.BatchNorm2d`.
    Bn(BatchNorm),
    /// `nn.Linear` (applied to the last dimension).
    Linear(Linear),
    /// `nn.ReLU`.
    Relu(Relu),
    /// `nn.ReLU6`.
    Relu6(Relu6),
    /// `nn.Hardswish`.
    Hardswish(HardSwish),
    /// `nn.MaxPool2d`.
    MaxPool(MaxPool2d),
    /// `nn.AvgPool2d`.
    AvgPool(AvgPool2d),
    /// `nn.Dropout`.
    Dropout(Dropout),
    /// A nested `nn.Sequential` (e.g. torchvision's `Conv2dNormActivation`).
    Seq(Vec<Layer>),
    /// torchvision's `SqueezeExcitation` (MobileNetV3).
    Se(SqueezeExcitation),
    /// An inverted-residual block: a sequence with an optional identity shortcut.
    Residual(Residual),
    /// SqueezeNet's `Fire` module.
    Fire(Fire),
    /// The identity: where a batch norm was folded into the convolution before it.
    Identity(Identity),
}

/// The identity layer (a folded batch norm's place in a sequence, see [`super::fold`]).
#[derive(Module, Debug, Default)]
pub struct Identity;

impl Layer {
    /// Applies the layer through `ops`.
    pub fn forward(&self, x: Tensor<4>, ops: Operations) -> Tensor<4> {
        match self {
            Layer::Conv(m) => super::conv::forward(m, x, ops),
            Layer::Bn(m) => super::norm::forward(m, x, ops),
            Layer::Linear(m) => m.forward(x),
            Layer::Relu(_) => relu(x),
            Layer::Relu6(_) => super::activation::relu6(x, ops),
            Layer::Hardswish(m) => m.forward(x),
            Layer::MaxPool(m) => m.forward(x),
            Layer::AvgPool(m) => m.forward(x),
            Layer::Dropout(m) => m.forward(x),
            Layer::Seq(layers) => seq(layers, x, ops),
            Layer::Se(m) => m.forward(x),
            Layer::Residual(m) => m.forward(x, ops),
            Layer::Fire(m) => m.forward(x),
            Layer::Identity(_) => x,
        }
    }
}

/// Applies `layers` in order, through `ops`.
pub fn seq(layers: &[Layer], x: Tensor<4>, ops: Operations) -> Tensor<4> {
    layers.iter().fold(x, |x, l| l.forward(x, ops))
}

/// A block whose output is `layers(x)`, plus `x` when `residual`.
#[derive(Module, Debug)]
pub struct Residual {
    /// The block's layers (torchvision calls them `conv`, `block` or `layers`; the registry's
    /// key remap renames them to this field).
    pub layers: Vec<Layer>,
    /// Whether the input is added to the output.
    pub residual: bool,
}

impl Residual {
    /// Applies the block through `ops`.
    pub fn forward(&self, x: Tensor<4>, ops: Operations) -> Tensor<4> {
        let y = seq(&self.layers, x.clone(), ops);
        if self.residual { y + x } else { y }
    }
}

/// SqueezeNet's `Fire` module: a 1x1 squeeze convolution, then 1x1 and 3x3 expand convolutions
/// side by side, each followed by ReLU, concatenated along the channels.
#[derive(Module, Debug)]
pub struct Fire {
    /// 1x1 squeeze convolution.
    pub squeeze: Conv2d,
    /// 1x1 expand convolution.
    pub expand1x1: Conv2d,
    /// 3x3 expand convolution (padding 1).
    pub expand3x3: Conv2d,
}

impl Fire {
    /// A randomly initialised module: `cin` → `squeeze` → `e1 + e3` channels.
    pub fn new(cin: usize, squeeze: usize, e1: usize, e3: usize, device: &Device) -> Self {
        Self {
            squeeze: ConvSpec::new([cin, squeeze], 1)
                .with_bias(true)
                .init(device),
            expand1x1: ConvSpec::new([squeeze, e1], 1).with_bias(true).init(device),
            expand3x3: ConvSpec::new([squeeze, e3], 3)
                .with_padding(1)
                .with_bias(true)
                .init(device),
        }
    }

    /// Applies the module.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let s = relu(self.squeeze.forward(x));
        Tensor::cat(
            vec![
                relu(self.expand1x1.forward(s.clone())),
                relu(self.expand3x3.forward(s)),
            ],
            1,
        )
    }
}

/// Squeeze-and-excitation as in torchvision's MobileNetV3: global average, 1x1 conv, ReLU, 1x1
/// conv, hard sigmoid, channel-wise scale.
#[derive(Module, Debug)]
pub struct SqueezeExcitation {
    /// Squeeze 1x1 convolution.
    pub fc1: Conv2d,
    /// Excite 1x1 convolution.
    pub fc2: Conv2d,
}

impl SqueezeExcitation {
    /// A randomly initialised block of `channels` squeezed to `squeeze`.
    pub fn new(channels: usize, squeeze: usize, device: &Device) -> Self {
        Self {
            fc1: Conv2dConfig::new([channels, squeeze], [1, 1]).init(device),
            fc2: Conv2dConfig::new([squeeze, channels], [1, 1]).init(device),
        }
    }

    /// Applies the block.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let s = x.clone().mean_dim(3).mean_dim(2);
        let s = hard_sigmoid(self.fc2.forward(relu(self.fc1.forward(s))), 1.0 / 6.0, 0.5);
        x * s
    }
}

/// A square convolution with PyTorch's symmetric padding, declared as torchvision declares its
/// layers: channels and kernel, then what differs from the defaults by name (stride 1, padding 0,
/// one group, no bias: most of these networks follow a convolution with a batch norm). A 3×3
/// depthwise convolution of 32 channels is
/// `ConvSpec::new([32, 32], 3).with_padding(1).with_groups(32).init(device)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvSpec {
    channels: [usize; 2],
    kernel: usize,
    stride: usize,
    padding: usize,
    groups: usize,
    bias: bool,
}

impl ConvSpec {
    /// A `kernel`×`kernel` convolution from `cin` to `cout` channels.
    pub fn new(channels: [usize; 2], kernel: usize) -> Self {
        Self {
            channels,
            kernel,
            stride: 1,
            padding: 0,
            groups: 1,
            bias: false,
        }
    }

    /// The stride in both directions.
    pub fn with_stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }

    /// The zero padding on every side.
    pub fn with_padding(self, padding: usize) -> Self {
        Self { padding, ..self }
    }

    /// The number of channel groups (`cin` for a depthwise convolution).
    pub fn with_groups(self, groups: usize) -> Self {
        Self { groups, ..self }
    }

    /// Whether the convolution adds a bias.
    pub fn with_bias(self, bias: bool) -> Self {
        Self { bias, ..self }
    }

    /// A randomly initialised convolution of this shape.
    pub fn init(self, device: &Device) -> Conv2d {
        let Self {
            channels,
            kernel,
            stride,
            padding,
            groups,
            bias,
        } = self;
        Conv2dConfig::new(channels, [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(
                padding, padding, padding, padding,
            ))
            .with_groups(groups)
            .with_bias(bias)
            .init(device)
    }
}

/// A batch norm with the given epsilon.
pub fn bn(channels: usize, eps: f64, device: &Device) -> BatchNorm {
    BatchNormConfig::new(channels)
        .with_epsilon(eps)
        .init(device)
}

/// A max pooling with PyTorch's padding and rounding.
pub fn max_pool(kernel: usize, stride: usize, padding: usize, ceil: bool) -> MaxPool2d {
    MaxPool2dConfig::new([kernel, kernel])
        .with_strides([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            padding, padding, padding, padding,
        ))
        .with_ceil_mode(ceil)
        .init()
}

/// An average pooling without padding.
pub fn avg_pool(kernel: usize, stride: usize) -> AvgPool2d {
    AvgPool2dConfig::new([kernel, kernel])
        .with_strides([stride, stride])
        .init()
}

/// A linear layer.
pub fn linear(din: usize, dout: usize, device: &Device) -> Linear {
    LinearConfig::new(din, dout).init(device)
}

/// A dropout layer.
pub fn dropout(p: f64) -> Dropout {
    DropoutConfig::new(p).init()
}

/// The activation of torchvision's `Conv2dNormActivation`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    /// No activation.
    None,
    /// ReLU.
    Relu,
    /// ReLU6.
    Relu6,
    /// Hardswish.
    Hardswish,
}

/// torchvision's `Conv2dNormActivation`: convolution without bias (padding `(k-1)/2`), batch
/// norm, activation — as a nested sequence whose indices match the published keys. Stride 1, one
/// group and PyTorch's batch-norm epsilon (1e-5) unless said otherwise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvNormAct {
    conv: ConvSpec,
    eps: f64,
    act: Act,
}

impl ConvNormAct {
    /// A `kernel`×`kernel` block from `cin` to `cout` channels ending in `act`.
    pub fn new(channels: [usize; 2], kernel: usize, act: Act) -> Self {
        Self {
            conv: ConvSpec::new(channels, kernel).with_padding((kernel - 1) / 2),
            eps: 1e-5,
            act,
        }
    }

    /// The convolution's stride.
    pub fn with_stride(self, stride: usize) -> Self {
        Self {
            conv: self.conv.with_stride(stride),
            ..self
        }
    }

    /// The convolution's channel groups.
    pub fn with_groups(self, groups: usize) -> Self {
        Self {
            conv: self.conv.with_groups(groups),
            ..self
        }
    }

    /// The batch norm's epsilon.
    pub fn with_eps(self, eps: f64) -> Self {
        Self { eps, ..self }
    }

    /// The randomly initialised block.
    pub fn init(self, device: &Device) -> Layer {
        let cout = self.conv.channels[1];
        let mut v = vec![
            Layer::Conv(self.conv.init(device)),
            Layer::Bn(bn(cout, self.eps, device)),
        ];
        match self.act {
            Act::None => {}
            Act::Relu => v.push(Layer::Relu(Relu)),
            Act::Relu6 => v.push(Layer::Relu6(Relu6)),
            Act::Hardswish => v.push(Layer::Hardswish(HardSwish)),
        }
        Layer::Seq(v)
    }
}

/// torchvision's `_make_divisible`: `v` rounded to a multiple of `divisor`, never more than 10%
/// below `v`.
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new = ((v + d / 2.0) as usize / divisor * divisor).max(divisor);
    if (new as f64) < 0.9 * v {
        new += divisor;
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_divisible_matches_torchvision() {
        // Squeeze widths of MobileNetV3-Large's SE blocks: 72/4, 120/4, 480/4, 672/4, 960/4.
        assert_eq!(make_divisible(18.0, 8), 24);
        assert_eq!(make_divisible(30.0, 8), 32);
        assert_eq!(make_divisible(120.0, 8), 120);
        assert_eq!(make_divisible(168.0, 8), 168);
        assert_eq!(make_divisible(240.0, 8), 240);
        assert_eq!(make_divisible(4.0, 8), 8);
    }
}
