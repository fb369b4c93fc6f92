//! Folding batch normalisation into the preceding convolution for inference.
//!
//! In inference a batch norm is the per-channel affine map `y = γ (x − μ) / √(σ² + ε) + β`
//! with its running statistics. After a convolution `x = W * i + b` it folds into the
//! convolution's weights and bias:
//!
//! `W' = W · γ / √(σ² + ε)` (per output channel), `b' = β + (b − μ) · γ / √(σ² + ε)`,
//!
//! so the folded network computes the same function with one element-wise pass less per
//! convolution. Folding happens once, when a model is loaded for inference
//! ([`crate::model::Classifier::fold_batchnorm`]); training keeps its batch norms.

use super::conv::Operations;
use super::layers::{Identity, Layer};
use burn::module::Param;
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::prelude::*;

/// `conv` followed by `bn`, as one convolution with a bias.
pub fn conv_bn(conv: Conv2d, bn: &BatchNorm) -> Conv2d {
    let gamma = bn.gamma.val();
    let beta = bn.beta.val();
    let mean = bn.running_mean.value();
    let var = bn.running_var.value();
    let c = gamma.dims()[0];
    let scale = gamma / (var + bn.epsilon).sqrt(); // [c]
    let weight = conv.weight.val() * scale.clone().reshape([c, 1, 1, 1]);
    let bias = match &conv.bias {
        Some(b) => b.val(),
        None => Tensor::zeros([c], &scale.device()),
    };
    let bias = beta + (bias - mean) * scale;
    Conv2d {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(bias)),
        ..conv
    }
}

/// A convolution and its optional batch norm, folded: the batch norm becomes `None`.
pub fn conv_opt_bn(conv: Conv2d, bn: Option<BatchNorm>) -> (Conv2d, Option<BatchNorm>) {
    match bn {
        Some(bn) => (conv_bn(conv, &bn), None),
        None => (conv, None),
    }
}

/// Applies an optional batch norm (`None` once folded) through `ops`.
pub fn opt_bn(bn: &Option<BatchNorm>, x: Tensor<4>, ops: Operations) -> Tensor<4> {
    match bn {
        Some(bn) => super::norm::forward(bn, x, ops),
        None => x,
    }
}

/// A ported `nn.Sequential` with every convolution directly followed by a batch norm folded;
/// the batch norm's entry becomes [`Layer::Identity`], so indices stay those of the PyTorch
/// module. Nested sequences and blocks are folded too.
pub fn layers(layers: Vec<Layer>) -> Vec<Layer> {
    let mut out: Vec<Layer> = Vec::with_capacity(layers.len());
    for layer in layers {
        let layer = match layer {
            Layer::Bn(bn) => match out.pop() {
                Some(Layer::Conv(conv)) => {
                    out.push(Layer::Conv(conv_bn(conv, &bn)));
                    Layer::Identity(Identity)
                }
                previous => {
                    out.extend(previous);
                    Layer::Bn(bn)
                }
            },
            Layer::Seq(inner) => Layer::Seq(self::layers(inner)),
            Layer::Residual(mut r) => {
                r.layers = self::layers(r.layers);
                Layer::Residual(r)
            }
            other => other,
        };
        out.push(layer);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::layers::{ConvSpec, bn};
    use burn::module::Module;
    use burn::tensor::Distribution;

    /// A batch norm with non-trivial running statistics and affine parameters.
    pub(crate) fn trained_bn(c: usize, device: &Device) -> BatchNorm {
        let mut b = bn(c, 1e-3, device);
        let r = |lo: f64, hi: f64| Tensor::<1>::random([c], Distribution::Uniform(lo, hi), device);
        b.gamma = Param::from_tensor(r(0.5, 1.5));
        b.beta = Param::from_tensor(r(-0.5, 0.5));
        b.running_mean = burn::module::RunningState::new(r(-0.3, 0.3));
        b.running_var = burn::module::RunningState::new(r(0.2, 2.0));
        b
    }

    #[test]
    fn a_folded_convolution_computes_conv_then_batch_norm() {
        let device = Device::flex();
        for (groups, bias) in [(1, false), (1, true), (8, false)] {
            let c = ConvSpec::new([8, 8], 3)
                .with_padding(1)
                .with_groups(groups)
                .with_bias(bias)
                .init(&device);
            let b = trained_bn(8, &device);
            let x = Tensor::<4>::random([2, 8, 9, 9], Distribution::Normal(0.0, 1.0), &device);
            let want = b.forward(c.forward(x.clone()));
            let got = conv_bn(c.clone(), &b).forward(x);
            let diff: f32 = (want.clone() - got).abs().max().into_scalar();
            let scale: f32 = want.abs().max().into_scalar();
            assert!(diff <= 1e-5 * scale, "groups {groups}: {diff} of {scale}");
        }
        // Folding a sequence keeps its length (the PyTorch indices).
        let seq = vec![
            Layer::Conv(ConvSpec::new([3, 4], 3).with_padding(1).init(&device)),
            Layer::Bn(trained_bn(4, &device)),
            Layer::Bn(trained_bn(4, &device)),
        ];
        let folded = layers(seq);
        assert_eq!(folded.len(), 3);
        assert!(matches!(folded[1], Layer::Identity(_)));
        assert!(
            matches!(folded[2], Layer::Bn(_)),
            "a batch norm after a batch norm stays"
        );
        assert_eq!(
            folded.iter().map(|l| l.num_params()).sum::<usize>(),
            4 * 3 * 9 + 4 + 4 * 4,
            "conv weights, the new bias, the remaining batch norm (affine and running statistics)"
        );
    }
}
