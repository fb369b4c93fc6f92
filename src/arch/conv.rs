//! Convolutions as training runs them: the depthwise convolution (`groups == channels in ==
//! channels out`) without a per-channel loop, and the 1x1 convolution as a matrix product.
//! [`forward`] routes a layer; inference and Grad-CAM keep Burn's convolution.
//!
//! Burn 0.22's generic backward of a grouped convolution runs one small convolution per group
//! for the weight gradient, and a grouped transposed convolution (again one per group) for the
//! input gradient: a depthwise layer of 1,152 channels runs 2,304 tiny convolutions per step.
//! Here, on the CPU backend (Flex) with autodiff, a depthwise convolution is one autodiff
//! operation of its own ([`native`], Burn's extension API): the forward is Flex's depthwise
//! convolution (a fast path already), the backward two kernels over all channels at once,
//!
//! - weight: `∂L/∂w[c, u, v] = Σ_{n,i,j} g[n, c, i, j] · x[n, c, s·i + u − p, s·j + v − p]`,
//! - input: `∂L/∂x[n, c, s·i + u − p, s·j + v − p] += g[n, c, i, j] · w[c, u, v]`,
//!
//! each a loop over `(channel, tap)` with contiguous rows inside, run on every core. Without a
//! tracked gradient (inference, Grad-CAM, frozen blocks), and on other backends (CubeCL's
//! grouped backward is its own), Burn's convolution runs as before. Every kernel here was
//! written because Burn 0.22 has none for this case; drop them when it does.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

/// Which operations a forward pass (and the optimiser step after it) runs: a value the network
/// carries ([`crate::model::Classifier::operations`]) and passes to every layer it applies, and
/// the trainer's optimiser holds. Both compute the same function; [`Operations::Burn`] is the
/// path before this module, [`super::activation`], [`super::norm`] and [`super::fused`], kept so
/// that `pneumoscope bench` can time both in one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Operations {
    /// This project's: the depthwise convolution, batch norm and ReLU6 as autodiff operations
    /// of their own, 1x1 convolutions as matrix products, fused inference convolutions.
    #[default]
    Own,
    /// Burn's own operations and their backward (for a depthwise layer the per-channel loop;
    /// in inference no fused convolutions).
    Burn,
}

/// Whether `conv` is a depthwise convolution (one input and one output channel per group, more
/// than one group).
pub fn is_depthwise(conv: &Conv2d) -> bool {
    let [cout, cin_per_group, _, _] = conv.weight.dims();
    conv.groups > 1 && cin_per_group == 1 && cout == conv.groups
}

/// Whether `conv` is a 1x1 convolution with stride 1, no padding and one group.
pub fn is_pointwise(conv: &Conv2d) -> bool {
    conv.kernel_size == [1, 1]
        && conv.stride == [1, 1]
        && conv.groups == 1
        && match &conv.padding {
            PaddingConfig2d::Valid | PaddingConfig2d::Same => true,
            PaddingConfig2d::Explicit(a, b, c, d) => a + b + c + d == 0,
        }
}

/// A 1x1 convolution as a matrix product `[1, co, ci] × [n, ci, h·w]`.
fn pointwise(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let [n, ci, h, w] = x.dims();
    let co = conv.weight.dims()[0];
    let y = conv
        .weight
        .val()
        .reshape([1, co, ci])
        .matmul(x.reshape([n, ci, h * w]))
        .reshape([n, co, h, w]);
    match &conv.bias {
        Some(b) => y + b.val().reshape([1, co, 1, 1]),
        None => y,
    }
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

/// Applies `conv` to `x` as training wants it: a depthwise convolution through this module's
/// operation, a 1x1 convolution (stride 1, no padding, one group) as a matrix product (its
/// autodiff backward is two matrix products, about twice as fast on the CPU as Burn's
/// convolution backward at 56x56), when a gradient is tracked through it (the input or the
/// weights); Burn's convolution otherwise (inference, Grad-CAM, frozen layers). All compute the
/// same function. With [`Operations::Burn`], always Burn's convolution.
pub fn forward(conv: &Conv2d, x: Tensor<4>, ops: Operations) -> Tensor<4> {
    if ops == Operations::Burn || conv.dilation != [1, 1] {
        return conv.forward(x);
    }
    let weight = conv.weight.val();
    if !(x.is_tracked() || weight.is_tracked()) {
        return conv.forward(x);
    }
    if is_pointwise(conv) {
        return pointwise(conv, x);
    }
    if !is_depthwise(conv) {
        return conv.forward(x);
    }
    // The operation exists on the CPU backend with autodiff, natively; elsewhere (`None`, and
    // on wasm) Burn's convolution runs.
    #[cfg(not(target_arch = "wasm32"))]
    {
        let [_, _, h, w] = x.dims();
        let pad = padding_pairs(conv, h, w);
        if let Some(y) = native::depthwise_conv2d(x.clone(), weight, conv.stride, pad) {
            return match &conv.bias {
                Some(b) => {
                    let c = y.dims()[1];
                    y + b.val().reshape([1, c, 1, 1])
                }
                None => y,
            };
        }
    }
    conv.forward(x)
}

/// Burn's own depthwise convolution (the reference the tests compare with): `x` `[n, c, h, w]`,
/// `weight` `[c, 1, kh, kw]`, `pad` `[(top, bottom), (left, right)]`.
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

/// The autodiff operation on the CPU backend and its kernels (native builds).
#[cfg(not(target_arch = "wasm32"))]
pub mod native {
    use super::super::{fused, lanes};
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::flex::FlexTensor;
    use burn::backend::{Autodiff, Flex};
    use burn::prelude::*;
    use burn::tensor::DType;
    use rayon::prelude::*;

    /// The shapes of one depthwise convolution.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Geometry {
        /// Batch, channels, input height and width.
        pub input: [usize; 4],
        /// Kernel height and width.
        pub kernel: [usize; 2],
        /// Output height and width.
        pub output: [usize; 2],
        /// Stride.
        pub stride: [usize; 2],
        /// Padding before (top, left); the padding after only decides the output size.
        pub pad: [usize; 2],
    }

    impl Geometry {
        /// The same geometry as the forward kernel of [`fused`] takes it, for one channel.
        pub(crate) fn plane(&self) -> fused::Plane {
            fused::Plane {
                input: [self.input[2], self.input[3]],
                kernel: self.kernel,
                stride: self.stride,
                before: self.pad,
                output: self.output,
            }
        }
    }

    /// `t` with its values contiguous in row-major order (a cheap handle when they already are).
    pub(crate) fn contiguous(t: &FlexTensor) -> FlexTensor {
        t.to_contiguous()
    }

    /// The values of a contiguous f32 tensor.
    pub(crate) fn values(t: &FlexTensor) -> &[f32] {
        t.as_slice::<f32>().expect("a contiguous f32 tensor")
    }

    /// `∂L/∂w` `[c, 1, kh, kw]` from the input `x` and the output gradient `g`: for each
    /// channel and image, the phase planes of the padded input (as the forward kernel builds
    /// them), then per tap one dot product per output row against a contiguous row of its
    /// phase plane.
    pub fn weight_grad(x: &[f32], g: &[f32], geo: &Geometry) -> Vec<f32> {
        let [n, c, h, w] = geo.input;
        let [kh, kw] = geo.kernel;
        let [ho, wo] = geo.output;
        let plane = geo.plane();
        let [_, wq] = plane.phase_size();
        let per_channel: Vec<Vec<f32>> = (0..c)
            .into_par_iter()
            .map_init(Vec::new, |phases, ch| {
                let mut acc = vec![0f64; kh * kw];
                for b in 0..n {
                    let xs = &x[(b * c + ch) * h * w..][..h * w];
                    let gs = &g[(b * c + ch) * ho * wo..][..ho * wo];
                    fused::phase_planes(xs, &plane, phases);
                    for u in 0..kh {
                        for v in 0..kw {
                            let tap = plane.tap_offset(u, v);
                            let sum: f32 = (0..ho)
                                .map(|i| {
                                    lanes::dot(&gs[i * wo..][..wo], &phases[tap + i * wq..][..wo])
                                })
                                .sum();
                            acc[u * kw + v] += sum as f64;
                        }
                    }
                }
                acc.into_iter().map(|v| v as f32).collect()
            })
            .collect();
        per_channel.concat()
    }

    /// `∂L/∂x` `[n, c, h, w]` from the weights `wt` and the output gradient `g`: the forward
    /// pass transposed. Each tap adds its weight times the output gradient's rows into
    /// contiguous rows of the phase planes of the padded input gradient; the planes are then
    /// read back into the unpadded layout.
    pub fn input_grad(wt: &[f32], g: &[f32], geo: &Geometry) -> Vec<f32> {
        let [n, c, h, w] = geo.input;
        let [kh, kw] = geo.kernel;
        let [ho, wo] = geo.output;
        let [sh, sw] = geo.stride;
        let [top, left] = geo.pad;
        let plane = geo.plane();
        let [hq, wq] = plane.phase_size();
        let size = hq * wq;
        let mut out = vec![0f32; n * c * h * w];
        out.par_chunks_mut(h * w).enumerate().for_each_init(
            Vec::new,
            |phases: &mut Vec<f32>, (i_plane, gx)| {
                let ch = i_plane % c;
                let gs = &g[i_plane * ho * wo..][..ho * wo];
                let taps = &wt[ch * kh * kw..][..kh * kw];
                phases.clear();
                phases.resize(sh * sw * size, 0.0);
                for u in 0..kh {
                    for v in 0..kw {
                        let t = taps[u * kw + v];
                        let tap = plane.tap_offset(u, v);
                        for i in 0..ho {
                            let dst = &mut phases[tap + i * wq..][..wo];
                            for (d, a) in dst.iter_mut().zip(&gs[i * wo..][..wo]) {
                                *d += a * t;
                            }
                        }
                    }
                }
                // Padded row y + top lies in phase row (y + top) % sh at row (y + top) / sh;
                // padded column x + left in phase column b = (x + left) % sw at (x + left) / sw.
                for (y, row) in gx.chunks_exact_mut(w).enumerate() {
                    let (a, r) = ((y + top) % sh, (y + top) / sh);
                    for b in 0..sw {
                        let src = &phases[(a * sw + b) * size + r * wq..][..wq];
                        // The first column x with (x + left) % sw == b.
                        let x0 = (b + sw - left % sw) % sw;
                        let dst = row.iter_mut().skip(x0).step_by(sw);
                        for (d, v) in dst.zip(&src[(x0 + left) / sw..]) {
                            *d = *v;
                        }
                    }
                }
            },
        );
        out
    }

    /// A tensor of the CPU backend from row-major `values`.
    pub(crate) fn tensor(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(values, shape))
    }

    #[derive(Debug)]
    struct DepthwiseBackward;

    impl Backward<Flex, 2> for DepthwiseBackward {
        type State = (FlexTensor, FlexTensor, Geometry);

        fn backward(
            self,
            ops: Ops<Self::State, 2>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let [node_x, node_w] = ops.parents;
            let grad = contiguous(&grads.consume::<Flex>(&ops.node));
            let (x, w, geo) = ops.state;
            if let Some(node) = node_w {
                let x = contiguous(&x);
                let [_, c, _, _] = geo.input;
                let [kh, kw] = geo.kernel;
                let gw = weight_grad(values(&x), values(&grad), &geo);
                grads.register::<Flex>(node.id, tensor(gw, [c, 1, kh, kw]));
            }
            if let Some(node) = node_x {
                let w = contiguous(&w);
                let gx = input_grad(values(&w), values(&grad), &geo);
                grads.register::<Flex>(node.id, tensor(gx, geo.input));
            }
        }
    }

    /// A depthwise convolution without bias as this module's autodiff operation: `x` `[n, c,
    /// h, w]`, `weight` `[c, 1, kh, kw]`, `pad` `[(top, bottom), (left, right)]`, dilation 1.
    /// `None` when the tensors are not f32 tensors of the CPU backend with autodiff (the
    /// operation exists only there).
    pub fn depthwise_conv2d(
        x: Tensor<4>,
        weight: Tensor<4>,
        stride: [usize; 2],
        pad: [(usize, usize); 2],
    ) -> Option<Tensor<4>> {
        type Ad = Autodiff<Flex, NoCheckpointing>;
        if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
            return None;
        }
        let [n, c, h, w] = x.dims();
        let [_, _, kh, kw] = weight.dims();
        let [(top, bottom), (left, right)] = pad;
        let (hp, wp) = (h + top + bottom, w + left + right);
        if hp < kh || wp < kw {
            return None;
        }
        let geo = Geometry {
            input: [n, c, h, w],
            kernel: [kh, kw],
            output: [(hp - kh) / stride[0] + 1, (wp - kw) / stride[1] + 1],
            stride,
            pad: [top, left],
        };
        let xa = x.try_into_primitive::<Ad>().ok()?;
        let wa = weight.try_into_primitive::<Ad>().ok()?;
        // The inference kernel of `fused` (phase planes, no padded copy), without bias or
        // activation: about twice as fast as Flex's depthwise convolution.
        let forward = |x: &FlexTensor, w: &FlexTensor, geo: &Geometry| {
            let [oh, ow] = geo.output;
            tensor(fused::depthwise_forward(x, w, geo), [n, c, oh, ow])
        };
        let out = match DepthwiseBackward
            .prepare::<NoCheckpointing>([xa.node(), wa.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (xp, wp) = (
                    contiguous(&xa.into_primitive()),
                    contiguous(&wa.into_primitive()),
                );
                let y = forward(&xp, &wp, &geo);
                prep.finish((xp, wp, geo), y)
            }
            OpsKind::UnTracked(prep) => {
                let (xp, wp) = (
                    contiguous(&xa.into_primitive()),
                    contiguous(&wa.into_primitive()),
                );
                prep.finish(forward(&xp, &wp, &geo))
            }
        };
        Some(Tensor::from_primitive::<Ad>(out))
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::native::depthwise_conv2d;
    use super::*;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

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

    /// Kernel, stride, input side, padding.
    type Case = (usize, usize, usize, [(usize, usize); 2]);

    /// Output, input gradient and weight gradient of the operation against Burn's grouped
    /// convolution, for the shapes the architectures use (3x3 and 5x5, stride 1 and 2,
    /// symmetric and TensorFlow "same" padding, odd and even sizes, no padding, rows shorter
    /// and longer than the lanes of [`super::super::lanes`]).
    #[test]
    fn the_operation_matches_burns_grouped_convolution() {
        let device = Device::flex().autodiff();
        let cases: [Case; 9] = [
            // Rows longer than the partial sums' lanes, at both strides.
            (3, 1, 40, [(1, 1), (1, 1)]),
            (5, 2, 41, [(1, 2), (1, 2)]),
            (3, 1, 9, [(1, 1), (1, 1)]),
            (3, 2, 10, [(0, 1), (0, 1)]),
            (5, 2, 11, [(1, 2), (1, 2)]),
            (5, 1, 8, [(2, 2), (2, 2)]),
            (3, 2, 9, [(1, 1), (1, 1)]),
            (3, 1, 7, [(0, 0), (0, 0)]),
            (5, 2, 7, [(2, 2), (2, 2)]),
        ];
        for (k, s, size, pad) in cases {
            let c = 6;
            let x0 =
                Tensor::<4>::random([3, c, size, size], Distribution::Normal(0.0, 1.0), &device);
            let w0 = Tensor::<4>::random([c, 1, k, k], Distribution::Normal(0.0, 1.0), &device);
            let run = |ours: bool, g: Option<&Tensor<4>>| {
                let x = x0.clone().detach().require_grad();
                let w = w0.clone().detach().require_grad();
                let y = if ours {
                    depthwise_conv2d(x.clone(), w.clone(), [s, s], pad).expect("Flex autodiff")
                } else {
                    reference_conv2d(x.clone(), w.clone(), None, [s, s], pad, [1, 1])
                };
                let g = g.cloned().unwrap_or_else(|| {
                    Tensor::<4>::random(y.dims(), Distribution::Normal(0.0, 1.0), &device).detach()
                });
                let grads = (y.clone() * g.clone()).sum().backward();
                (
                    y.detach(),
                    g,
                    x.grad(&grads).unwrap(),
                    w.grad(&grads).unwrap(),
                )
            };
            let (y_ref, g, gx_ref, gw_ref) = run(false, None);
            let (y, _, gx, gw) = run(true, Some(&g));
            assert_eq!(
                y.dims(),
                y_ref.dims(),
                "k={k} s={s} size={size} pad={pad:?}"
            );
            let (e, ex, ew) = (
                max_rel(&y, &y_ref),
                max_rel(&gx, &gx_ref),
                max_rel(&gw, &gw_ref),
            );
            assert!(
                e < 1e-5 && ex < 1e-5 && ew < 1e-5,
                "k={k} s={s} size={size} pad={pad:?}: output {e}, input grad {ex}, weight grad {ew}"
            );
        }
    }

    /// Through [`forward`] with real layers: depthwise (TensorFlow "same" padding, a bias) and
    /// pointwise (with and without bias), the same outputs and gradients as Burn's convolution.
    #[test]
    fn layers_route_through_the_operation_with_the_same_gradients() {
        let device = Device::flex().autodiff();
        for (kernel, groups, stride, padding, bias) in [
            (3, 8, 2, PaddingConfig2d::Same, false),
            (3, 8, 1, PaddingConfig2d::Explicit(1, 1, 1, 1), true),
            (1, 1, 1, PaddingConfig2d::Valid, false),
            (1, 1, 1, PaddingConfig2d::Explicit(0, 0, 0, 0), true),
        ] {
            let conv = Conv2dConfig::new([8, 8], [kernel, kernel])
                .with_stride([stride, stride])
                .with_groups(groups)
                .with_padding(padding)
                .with_bias(bias)
                .init(&device);
            assert!(is_depthwise(&conv) || is_pointwise(&conv));
            let x0 = Tensor::<4>::random([2, 8, 12, 12], Distribution::Normal(0.0, 1.0), &device);
            let grads_of = |ops: Operations| {
                let x = x0.clone().detach().require_grad();
                let y = forward(&conv, x.clone(), ops);
                let grads = (y.clone() * y.clone()).sum().backward();
                let gw = conv.weight.val().grad(&grads).unwrap();
                (y.detach(), x.grad(&grads).unwrap(), gw)
            };
            let (y_ref, gx_ref, gw_ref) = grads_of(Operations::Burn);
            let (y, gx, gw) = grads_of(Operations::Own);
            assert!(max_rel(&y, &y_ref) < 1e-5);
            assert!(max_rel(&gx, &gx_ref) < 1e-5);
            assert!(max_rel(&gw, &gw_ref) < 1e-5);
        }
    }
}
