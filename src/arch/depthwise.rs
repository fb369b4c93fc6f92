//! Depthwise convolution (`groups == channels in == channels out`) that trains without a
//! per-channel loop.
//!
//! Burn 0.22's generic backward of a grouped convolution runs one small convolution per group
//! for the weight gradient, and a grouped transposed convolution (again one per group) for the
//! input gradient: a depthwise layer of 1,152 channels runs 2,304 tiny convolutions per step.
//! Here the same convolution is written as a sum of `kh × kw` shifted (strided) slices of the
//! padded input, each scaled by one tap of every channel's kernel:
//!
//! `y[n, c, i, j] = b[c] + Σ_{u,v} w[c, 0, u, v] · x_pad[n, c, s·i + d·u, s·j + d·v]`
//!
//! Every term is an element-wise product over all channels at once, so autodiff's backward is
//! `kh × kw` products and sums over whole tensors (the weight gradient is a reduction of
//! `grad · slice`, the input gradient a scatter of `grad · w` back into the slice). The forward
//! of Burn's own convolution is kept whenever no gradient is tracked (inference, Grad-CAM,
//! frozen blocks): its depthwise forward is a fast path already.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::Slice;
use burn::tensor::module::conv2d;
use burn::tensor::ops::{ConvOptions, PadMode};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether tracked depthwise convolutions go through Burn's grouped convolution instead (the
/// path before this layer; kept so that `pneumoscope bench` can time both in one run).
static BURN_GROUPED_BACKWARD: AtomicBool = AtomicBool::new(false);

/// Sends every depthwise convolution through Burn's own grouped convolution and its
/// per-channel backward (`true`), or through the shifted slices (`false`, the default). For
/// benchmarks: both compute the same function.
pub fn use_burn_grouped_backward(on: bool) {
    BURN_GROUPED_BACKWARD.store(on, Ordering::Relaxed);
}

/// Whether `conv` is a depthwise convolution (one input and one output channel per group, more
/// than one group).
pub fn is_depthwise(conv: &Conv2d) -> bool {
    let [cout, cin_per_group, _, _] = conv.weight.dims();
    conv.groups > 1 && cin_per_group == 1 && cout == conv.groups
}

/// `(before, after)` padding of one spatial axis, as Burn's [`Conv2d`] computes it.
fn same_padding(kernel: usize, stride: usize, size: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = if out > 0 {
        ((out - 1) * stride + kernel).saturating_sub(size)
    } else {
        0
    };
    (total / 2, total - total / 2)
}

/// The `[(top, bottom), (left, right)]` padding `conv` applies to an input of `h`x`w`.
pub fn padding_pairs(conv: &Conv2d, h: usize, w: usize) -> [(usize, usize); 2] {
    let [kh, kw] = conv.kernel_size;
    match &conv.padding {
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Same => [
            same_padding(kh, conv.stride[0], h),
            same_padding(kw, conv.stride[1], w),
        ],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(*top, *bottom), (*left, *right)],
    }
}

/// Applies `conv` to `x`: through [`depthwise_conv2d`] when it is depthwise and a gradient is
/// tracked through it (the input or the weights), through Burn's convolution otherwise. The two
/// compute the same function.
pub fn forward(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    if !is_depthwise(conv) || BURN_GROUPED_BACKWARD.load(Ordering::Relaxed) {
        return conv.forward(x);
    }
    let weight = conv.weight.val();
    if !(x.is_tracked() || weight.is_tracked()) {
        return conv.forward(x);
    }
    let [_, _, h, w] = x.dims();
    let pad = padding_pairs(conv, h, w);
    depthwise_conv2d(
        x,
        weight,
        conv.bias.as_ref().map(|b| b.val()),
        conv.stride,
        pad,
        conv.dilation,
    )
}

/// Depthwise convolution as a sum of shifted slices (see the module documentation).
///
/// `x`: `[n, c, h, w]`; `weight`: `[c, 1, kh, kw]`; `bias`: `[c]`; `pad`: `[(top, bottom),
/// (left, right)]`.
pub fn depthwise_conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: [usize; 2],
    pad: [(usize, usize); 2],
    dilation: [usize; 2],
) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let [cw, one, kh, kw] = weight.dims();
    assert!(
        cw == c && one == 1,
        "depthwise weight {:?} for {c} channels",
        weight.dims()
    );
    let [(top, bottom), (left, right)] = pad;
    let x = if top + bottom + left + right > 0 {
        x.pad(
            [(0, 0), (0, 0), (top, bottom), (left, right)],
            PadMode::Constant(0.0),
        )
    } else {
        x
    };
    let (hp, wp) = (h + top + bottom, w + left + right);
    let span = |k: usize, d: usize| d * (k - 1) + 1;
    assert!(
        hp >= span(kh, dilation[0]) && wp >= span(kw, dilation[1]),
        "depthwise kernel {kh}x{kw} larger than the padded input {hp}x{wp}"
    );
    let ho = (hp - span(kh, dilation[0])) / stride[0] + 1;
    let wo = (wp - span(kw, dilation[1])) / stride[1] + 1;
    let taps = weight.reshape([c, kh * kw]);
    let mut out: Option<Tensor<4>> = None;
    for u in 0..kh {
        for v in 0..kw {
            let (y0, x0) = (u * dilation[0], v * dilation[1]);
            let window = x.clone().slice([
                Slice::new(0, Some(n as isize), 1),
                Slice::new(0, Some(c as isize), 1),
                Slice::new(
                    y0 as isize,
                    Some((y0 + (ho - 1) * stride[0] + 1) as isize),
                    stride[0] as isize,
                ),
                Slice::new(
                    x0 as isize,
                    Some((x0 + (wo - 1) * stride[1] + 1) as isize),
                    stride[1] as isize,
                ),
            ]);
            let k = u * kw + v;
            let tap = taps.clone().slice([0..c, k..k + 1]).reshape([1, c, 1, 1]);
            let term = window * tap;
            out = Some(match out {
                None => term,
                Some(o) => o + term,
            });
        }
    }
    let out = out.expect("a kernel has at least one tap");
    match bias {
        Some(b) => out + b.reshape([1, c, 1, 1]),
        None => out,
    }
}

/// Burn's own convolution with the same arguments as [`depthwise_conv2d`] (the reference the
/// tests compare with).
pub fn reference_conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: [usize; 2],
    [(top, bottom), (left, right)]: [(usize, usize); 2],
    dilation: [usize; 2],
) -> Tensor<4> {
    let c = weight.dims()[0];
    conv2d(
        x,
        weight,
        bias,
        ConvOptions::new_with_padding(stride, [(top, bottom), (left, right)], dilation, c),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// A depthwise convolution with the arguments of [`depthwise_conv2d`].
    type DepthwiseFn = fn(
        Tensor<4>,
        Tensor<4>,
        Option<Tensor<1>>,
        [usize; 2],
        [(usize, usize); 2],
        [usize; 2],
    ) -> Tensor<4>;

    /// Kernel, stride, input side, padding, bias.
    type Case = (usize, usize, usize, [(usize, usize); 2], bool);

    fn max_rel(a: &Tensor<4>, b: &Tensor<4>) -> f32 {
        let a: Vec<f32> = a.clone().into_data().try_to_vec().unwrap();
        let b: Vec<f32> = b.clone().into_data().try_to_vec().unwrap();
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / scale)
            .fold(0f32, f32::max)
    }

    /// Output, input gradient and weight gradient of the shifted-slice layer against Burn's
    /// grouped convolution, for the shapes the architectures use (3x3 and 5x5, stride 1 and 2,
    /// symmetric and TensorFlow "same" padding, with and without bias).
    #[test]
    fn shifted_slices_match_burns_grouped_convolution() {
        let device = Device::flex().autodiff();
        let cases: [Case; 6] = [
            (3, 1, 9, [(1, 1), (1, 1)], false),
            (3, 2, 10, [(0, 1), (0, 1)], false),
            (5, 2, 11, [(1, 2), (1, 2)], true),
            (5, 1, 8, [(2, 2), (2, 2)], true),
            (3, 2, 9, [(1, 1), (1, 1)], false),
            (3, 1, 7, [(0, 0), (0, 0)], true),
        ];
        for (k, s, size, pad, with_bias) in cases {
            let c = 6;
            let x0 =
                Tensor::<4>::random([2, c, size, size], Distribution::Normal(0.0, 1.0), &device);
            let w0 = Tensor::<4>::random([c, 1, k, k], Distribution::Normal(0.0, 1.0), &device);
            let b0 = Tensor::<1>::random([c], Distribution::Normal(0.0, 1.0), &device);
            let grads = |f: DepthwiseFn, g: &Tensor<4>| {
                let x = x0.clone().detach().require_grad();
                let w = w0.clone().detach().require_grad();
                let y = f(x.clone(), w.clone(), None, [s, s], pad, [1, 1]);
                let grads = (y * g.clone()).sum().backward();
                (x.grad(&grads).unwrap(), w.grad(&grads).unwrap())
            };
            let b = with_bias.then(|| b0.clone().without_autodiff());
            let y_ref = reference_conv2d(
                x0.clone().without_autodiff(),
                w0.clone().without_autodiff(),
                b.clone(),
                [s, s],
                pad,
                [1, 1],
            );
            let y = depthwise_conv2d(
                x0.clone().without_autodiff(),
                w0.clone().without_autodiff(),
                b,
                [s, s],
                pad,
                [1, 1],
            );
            assert_eq!(
                y.dims(),
                y_ref.dims(),
                "k={k} s={s} size={size} pad={pad:?}"
            );
            let e = max_rel(&y, &y_ref);
            assert!(e < 1e-5, "output differs by {e} (k={k} s={s} pad={pad:?})");
            // A loss that weights every output differently.
            let g =
                Tensor::<4>::random(y_ref.dims(), Distribution::Normal(0.0, 1.0), &device).detach();
            let (gx_ref, gw_ref) = grads(reference_conv2d, &g);
            let (gx, gw) = grads(depthwise_conv2d, &g);
            let (ex, ew) = (max_rel(&gx, &gx_ref), max_rel(&gw, &gw_ref));
            assert!(
                ex < 1e-5 && ew < 1e-5,
                "gradients differ: input {ex}, weight {ew} (k={k} s={s} pad={pad:?})"
            );
        }
    }
}
