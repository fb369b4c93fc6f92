//! Inference convolutions on the CPU backend (Flex without autodiff: `predict`, the reports and
//! the page, natively and in wasm) with the bias, the activation and a residual addition done
//! inside the convolution's own passes over memory.
//!
//! Run through Burn, a folded `relu6(conv(x) + b) (+ r)` is four or five passes over the
//! activation: Flex zero-fills the output, runs the convolution, adds the bias in a pass of its
//! own, then ReLU6 (in place, [`super::activation`]) and the residual addition each pass over it
//! again. Here:
//!
//! - a **1x1 convolution** (stride 1, no padding, one group) starts its output from the bias,
//!   or from the residual plus the bias (in the residual's own values), and lets the matrix
//!   product (the `gemm` crate, which Flex itself calls) accumulate into it: `y = r + b + W·x`;
//!   the activation follows in one pass;
//! - a **depthwise convolution** copies each channel's zero-padded plane into `s²` phase planes
//!   (`s` the stride: the even and odd rows and columns of a stride-2 convolution), so that
//!   every kernel tap becomes one long contiguous multiply-add over the whole output plane, in
//!   rows as wide as the phase planes, and a whole kernel row is added in one pass: the loops
//!   vectorise at every size, 7x7 included, where Flex's row-by-row loops are 7 elements long
//!   and its stride-2 loops scalar. Bias and activation are applied when the plane is written
//!   out.
//!
//! Both compute the same function as Burn's convolution followed by the bias, the activation
//! and the addition, up to the order of the floating-point sums (the tests compare them). Any
//! other tensor (autodiff, other backends, other dtypes) takes Burn's path. Written because Burn
//! 0.22 has no fused convolution on the CPU; drop it when it does.

use super::activation::in_place;
use super::conv::{Operations, is_depthwise, is_pointwise, padding_pairs};
use super::fold::opt_bn;
use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::TensorData;

/// What follows a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Nothing.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

impl Act {
    /// The activation as Burn's tensor operations compute it (this project's
    /// [`super::activation`], through `ops`).
    fn tensor(self, x: Tensor<4>, ops: Operations) -> Tensor<4> {
        match self {
            Act::Identity => x,
            Act::Relu => super::activation::relu(x),
            Act::Relu6 => super::activation::relu6(x, ops),
        }
    }

    /// The activation applied to values in place (bit for bit the function of [`Act::tensor`]),
    /// on every core natively.
    fn values(self, values: &mut [f32]) {
        match self {
            Act::Identity => {}
            Act::Relu => in_place::run(in_place::relu, values),
            Act::Relu6 => in_place::run(in_place::relu6, values),
        }
    }

    /// The activation of one value.
    #[inline]
    fn value(self, v: f32) -> f32 {
        match self {
            Act::Identity => v,
            Act::Relu => in_place::relu_value(v),
            Act::Relu6 => in_place::relu6_value(v),
        }
    }
}

/// `act(bn(conv(x)))`: fused on the CPU backend without autodiff once the batch norm is folded
/// (`bn` is `None`) and `ops` is [`Operations::Own`], through `ops` otherwise.
pub fn conv_bn_act(
    conv: &Conv2d,
    bn: &Option<BatchNorm>,
    x: Tensor<4>,
    act: Act,
    ops: Operations,
) -> Tensor<4> {
    match bn.is_none().then(|| fusable(conv, &x, None, ops)).flatten() {
        Some(kind) => fused(kind, conv, x, act, None),
        None => act.tensor(opt_bn(bn, super::conv::forward(conv, x, ops), ops), ops),
    }
}

/// `bn(conv(x)) + residual` (no addition when `residual` is `None`): fused on the CPU backend
/// without autodiff once the batch norm is folded and `ops` is [`Operations::Own`], through
/// `ops` otherwise.
pub fn conv_bn_add(
    conv: &Conv2d,
    bn: &Option<BatchNorm>,
    x: Tensor<4>,
    residual: Option<Tensor<4>>,
    ops: Operations,
) -> Tensor<4> {
    match bn
        .is_none()
        .then(|| fusable(conv, &x, residual.as_ref(), ops))
        .flatten()
    {
        Some(kind) => fused(kind, conv, x, Act::Identity, residual),
        None => {
            let y = opt_bn(bn, super::conv::forward(conv, x, ops), ops);
            match residual {
                Some(r) => y + r,
                None => y,
            }
        }
    }
}

/// The two layers this module fuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fusable {
    /// A 1x1 convolution, stride 1, no padding, one group.
    Pointwise,
    /// A depthwise convolution (without a residual).
    Depthwise,
}

/// Whether `conv` applied to `x` (and `residual`) is fused: `x`, the weights, the bias and the
/// residual are f32 tensors of the CPU backend without autodiff, the layer is a 1x1
/// convolution or, without a residual, a depthwise one, and
/// `ops` is [`Operations::Own`].
pub fn fusable(
    conv: &Conv2d,
    x: &Tensor<4>,
    residual: Option<&Tensor<4>>,
    ops: Operations,
) -> Option<Fusable> {
    let cpu = in_place::runs_on(x)
        && in_place::runs_on(&conv.weight.val())
        && conv
            .bias
            .as_ref()
            .is_none_or(|b| in_place::runs_on(&b.val()))
        && residual.is_none_or(in_place::runs_on);
    if !cpu || conv.dilation != [1, 1] || ops == Operations::Burn {
        None
    } else if is_pointwise(conv) {
        Some(Fusable::Pointwise)
    } else if is_depthwise(conv) && residual.is_none() {
        Some(Fusable::Depthwise)
    } else {
        None
    }
}

/// `act(conv(x) + residual)` for a layer [`fusable`] found to be of `kind`.
pub fn fused(
    kind: Fusable,
    conv: &Conv2d,
    x: Tensor<4>,
    act: Act,
    residual: Option<Tensor<4>>,
) -> Tensor<4> {
    let bias = conv.bias.as_ref().map(|b| values(b.val().into_data()));
    let [n, _, h, w] = x.dims();
    let weight = conv.weight.val();
    let [c, _, kh, kw] = weight.dims();
    let y = match kind {
        Fusable::Pointwise => {
            let residual = residual.map(flex);
            pointwise(&flex(x), &flex(weight), bias.as_deref(), act, residual)
        }
        Fusable::Depthwise => {
            let [(top, bottom), (left, right)] = padding_pairs(conv, h, w);
            let plane = Plane {
                input: [h, w],
                kernel: [kh, kw],
                stride: conv.stride,
                before: [top, left],
                output: [
                    (h + top + bottom - kh) / conv.stride[0] + 1,
                    (w + left + right - kw) / conv.stride[1] + 1,
                ],
            };
            let y = depthwise(&flex(x), &flex(weight), bias.as_deref(), act, &plane);
            let [oh, ow] = plane.output;
            FlexTensor::from_data(TensorData::new(y, [n, c, oh, ow]))
        }
    };
    Tensor::from_primitive::<Flex>(y)
}

/// The contiguous Flex tensor behind `t` (a tensor of the CPU backend).
fn flex(t: Tensor<4>) -> FlexTensor {
    let t = t
        .try_into_primitive::<Flex>()
        .unwrap_or_else(|_| unreachable!("a tensor on the Flex device is a Flex tensor"));
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        t
    } else {
        t.to_contiguous()
    }
}

/// The f32 values of a tensor's data.
fn values(data: TensorData) -> Vec<f32> {
    data.try_into_vec::<f32>()
        .unwrap_or_else(|_| unreachable!("checked to be f32"))
}

/// The values of a contiguous f32 Flex tensor.
fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .unwrap_or_else(|| unreachable!("a contiguous f32 tensor"))
}

/// A 1x1 convolution `[n, ci, h, w]` → `[n, co, h, w]`: `act(residual + bias + W·x)`, the
/// residual's values reused for the output when it owns them.
///
/// (Tiling the product by columns so that the activation finds each tile in the cache was
/// tried: in wasm it was 4–35 % slower than this, the `gemm` crate's set-up per call
/// outweighing the cache.)
fn pointwise(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&[f32]>,
    act: Act,
    residual: Option<FlexTensor>,
) -> FlexTensor {
    let shape = x.layout().shape();
    let (n, ci, hw) = (shape[0], shape[1], shape[2] * shape[3]);
    let co = weight.layout().shape()[0];
    let bias_of = |ch: usize| bias.map_or(0.0, |b| b[ch]);
    let mut out = match residual {
        // Copy-on-write: a residual shared with another handle is copied first.
        Some(mut r) => {
            if bias.is_some() {
                for image in r.storage_mut::<f32>().chunks_exact_mut(co * hw) {
                    for (ch, row) in image.chunks_exact_mut(hw).enumerate() {
                        let b = bias_of(ch);
                        row.iter_mut().for_each(|v| *v += b);
                    }
                }
            }
            r
        }
        None => {
            let mut y = Vec::with_capacity(n * co * hw);
            for _ in 0..n {
                for ch in 0..co {
                    y.extend(std::iter::repeat_n(bias_of(ch), hw));
                }
            }
            FlexTensor::from_data(TensorData::new(y, [n, co, shape[2], shape[3]]))
        }
    };
    let y = out.storage_mut::<f32>();
    let (xs, ws) = (slice(x), slice(weight));
    for (b, image) in y.chunks_exact_mut(co * hw).enumerate() {
        // SAFETY: `image` is `co` rows of `hw` values, `ws` `co` rows of `ci` and the image's
        // part of `xs` `ci` rows of `hw`, all row-major, as the arguments say.
        unsafe {
            gemm::gemm(
                co,
                hw,
                ci,
                image.as_mut_ptr(),
                1,
                hw as isize,
                true,
                ws.as_ptr(),
                1,
                ci as isize,
                xs[b * ci * hw..].as_ptr(),
                1,
                hw as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism(co * hw * ci),
            );
        }
    }
    act.values(y);
    out
}

/// How the matrix product of `macs` multiply-adds runs: on every core natively when it is large
/// enough to outweigh the scheduling (Flex's threshold), on one thread in wasm.
fn parallelism(macs: usize) -> gemm::Parallelism {
    #[cfg(not(target_arch = "wasm32"))]
    if macs >= 192 * 192 * 192 {
        return gemm::Parallelism::Rayon(0);
    }
    let _ = macs;
    gemm::Parallelism::None
}

/// The geometry of one channel of a depthwise convolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plane {
    /// Input `[h, w]`.
    pub input: [usize; 2],
    /// Kernel `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Stride `[sh, sw]`.
    pub stride: [usize; 2],
    /// Padding before the first row and column `[top, left]` (the rest is implied by `output`).
    pub before: [usize; 2],
    /// Output `[oh, ow]`.
    pub output: [usize; 2],
}

impl Plane {
    /// Rows and columns of each phase plane: the output's, plus the largest tap offset.
    pub(crate) fn phase_size(&self) -> [usize; 2] {
        let [oh, ow] = self.output;
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        [oh + (kh - 1) / sh, ow + (kw - 1) / sw]
    }

    /// Where tap `(ky, kx)` reads in the [`phase_planes`]: the offset of the value that output
    /// `(0, 0)` multiplies; output `(y, x)` reads the value `y·wq + x` further on.
    pub(crate) fn tap_offset(&self, ky: usize, kx: usize) -> usize {
        let [sh, sw] = self.stride;
        let [hq, wq] = self.phase_size();
        ((ky % sh) * sw + kx % sw) * hq * wq + (ky / sh) * wq + kx / sw
    }
}

/// A depthwise convolution `[n, c, h, w]` with weights `[c, 1, kh, kw]`: `act(conv + bias)`,
/// the `[n, c, oh, ow]` values.
fn depthwise(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&[f32]>,
    act: Act,
    plane: &Plane,
) -> Vec<f32> {
    let shape = x.layout().shape();
    let c = shape[1];
    let [h, w] = plane.input;
    let [oh, ow] = plane.output;
    let [kh, kw] = plane.kernel;
    let (xs, ws) = (slice(x), slice(weight));
    let mut y = vec![0f32; shape[0] * c * oh * ow];
    let channel = |i: usize, out: &mut [f32], scratch: &mut Scratch| {
        let ch = i % c;
        let b = bias.map_or(0.0, |b| b[ch]);
        let taps = &ws[ch * kh * kw..][..kh * kw];
        depthwise_plane(&xs[i * h * w..][..h * w], taps, b, act, plane, out, scratch);
    };
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        y.par_chunks_mut(oh * ow)
            .enumerate()
            .for_each_init(Scratch::default, |s, (i, out)| channel(i, out, s));
    }
    #[cfg(target_arch = "wasm32")]
    {
        let mut s = Scratch::default();
        for (i, out) in y.chunks_mut(oh * ow).enumerate() {
            channel(i, out, &mut s);
        }
    }
    y
}

/// The forward pass of the depthwise convolution that training runs
/// ([`super::conv::native::depthwise_conv2d`]): this module's kernel without bias or activation,
/// on contiguous `x` `[n, c, h, w]` and `weight` `[c, 1, kh, kw]`.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn depthwise_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    geo: &super::conv::native::Geometry,
) -> Vec<f32> {
    depthwise(x, weight, None, Act::Identity, &geo.plane())
}

/// Buffers reused from one channel to the next.
#[derive(Default)]
struct Scratch {
    /// The phase planes of the padded input.
    phases: Vec<f32>,
    /// The output rows, as wide as a phase plane.
    acc: Vec<f32>,
}

/// The phase planes of one channel's padded input, into `phases`: `sh·sw` planes of
/// [`Plane::phase_size`] values, plane `a·sw + b` holding the padded input's rows a, a + sh, …
/// and columns b, b + sw, … (zeros in the padding).
pub(crate) fn phase_planes(input: &[f32], plane: &Plane, phases: &mut Vec<f32>) {
    let [h, w] = plane.input;
    let [sh, sw] = plane.stride;
    let [top, left] = plane.before;
    let [hq, wq] = plane.phase_size();
    let size = hq * wq;
    phases.clear();
    phases.resize(sh * sw * size, 0.0);
    for a in 0..sh {
        for r in 0..hq {
            let Some(row) = (sh * r + a).checked_sub(top).filter(|&i| i < h) else {
                continue;
            };
            let src = &input[row * w..][..w];
            let mut planes = phases[a * sw * size..].chunks_exact_mut(size);
            let mut phase_row = || &mut planes.next().expect("sw phase planes")[r * wq..][..wq];
            match sw {
                // Columns left.. of the phase row hold the input row.
                1 => {
                    let dst = phase_row();
                    let start = left.min(wq);
                    let len = w.min(wq - start);
                    dst[start..start + len].copy_from_slice(&src[..len]);
                }
                2 => split_pairs(src, left, [phase_row(), phase_row()]),
                _ => (0..sw).for_each(|b| split_strided(src, left, sw, b, phase_row())),
            }
        }
    }
}

/// One channel: `out = act(bias + Σ taps · shifted input)`.
fn depthwise_plane(
    input: &[f32],
    taps: &[f32],
    bias: f32,
    act: Act,
    plane: &Plane,
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    let [kh, kw] = plane.kernel;
    let [oh, ow] = plane.output;
    let [_, wq] = plane.phase_size();
    let phases = &mut scratch.phases;
    phase_planes(input, plane, phases);
    // Output row y lies at y·wq in `acc`; columns ow.. of each row are never read.
    let len = (oh - 1) * wq + ow;
    let acc = &mut scratch.acc;
    acc.clear();
    acc.resize(len, bias);
    for ky in 0..kh {
        // The taps of kernel row `ky`, each reading the phase plane its column falls in.
        let src = |kx: usize| &phases[plane.tap_offset(ky, kx)..][..len];
        let row = &taps[ky * kw..][..kw];
        match kw {
            3 => taps_row::<3>(
                acc,
                std::array::from_fn(src),
                std::array::from_fn(|k| row[k]),
            ),
            5 => taps_row::<5>(
                acc,
                std::array::from_fn(src),
                std::array::from_fn(|k| row[k]),
            ),
            _ => (0..kw).for_each(|kx| taps_row::<1>(acc, [src(kx)], [row[kx]])),
        }
    }
    for (row, dst) in out.chunks_exact_mut(ow).enumerate() {
        for (d, &a) in dst.iter_mut().zip(&acc[row * wq..]) {
            *d = act.value(a);
        }
    }
}

/// One padded input row split into its two phase rows at stride 2: padded column `j` (input
/// column `j − left`) goes to row `j % 2`, column `j / 2`. Input columns are taken in pairs,
/// which compiles to whole-vector shuffles.
fn split_pairs(src: &[f32], left: usize, [even, odd]: [&mut [f32]; 2]) {
    let wq = even.len();
    // Input column 2p lands in row left % 2 at p + left / 2, column 2p + 1 in the other row at
    // p + (left + 1) / 2.
    let (first, second) = if left.is_multiple_of(2) {
        (even, odd)
    } else {
        (odd, even)
    };
    let (o1, o2) = (left / 2, left.div_ceil(2));
    let n = (src.len() / 2)
        .min(wq.saturating_sub(o1))
        .min(wq.saturating_sub(o2));
    let pairs = first[o1.min(wq)..][..n]
        .iter_mut()
        .zip(&mut second[o2.min(wq)..][..n]);
    for ((x, y), pair) in pairs.zip(src.chunks_exact(2)) {
        *x = pair[0];
        *y = pair[1];
    }
    // The columns the pairs left out: an odd width's last one, or none.
    for (col, &v) in src.iter().enumerate().skip(2 * n) {
        let (row, q) = if col.is_multiple_of(2) {
            (&mut *first, col / 2 + o1)
        } else {
            (&mut *second, col / 2 + o2)
        };
        if let Some(d) = row.get_mut(q) {
            *d = v;
        }
    }
}

/// Phase `b` of one padded input row at stride `sw`: phase column `q` holds input column
/// `sw·q + b − left`, where that is inside the row, so `q` runs from ⌈(left − b) / sw⌉ up to
/// ⌈(w + left − b) / sw⌉.
fn split_strided(src: &[f32], left: usize, sw: usize, b: usize, dst: &mut [f32]) {
    let first = left.saturating_sub(b).div_ceil(sw);
    let end = (src.len() + left)
        .saturating_sub(b)
        .div_ceil(sw)
        .min(dst.len());
    if first < end {
        let cols = src[sw * first + b - left..].iter().step_by(sw);
        for (d, &v) in dst[first..end].iter_mut().zip(cols) {
            *d = v;
        }
    }
}

/// `acc[i] += Σ_k taps[k] · srcs[k][i]`: a whole kernel row in one pass over `acc` (the sum
/// in the order of the taps, as one pass per tap would add them).
#[inline(always)]
fn taps_row<const K: usize>(acc: &mut [f32], srcs: [&[f32]; K], taps: [f32; K]) {
    let n = acc.len();
    let srcs = srcs.map(|s| &s[..n]);
    for i in 0..n {
        let mut sum = acc[i];
        for k in 0..K {
            sum += taps[k] * srcs[k][i];
        }
        acc[i] = sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    /// Largest absolute difference between two tensors, relative to the largest value.
    fn rel_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        let scale: f32 = b.clone().abs().max().into_scalar();
        let diff: f32 = (a - b).abs().max().into_scalar();
        diff / scale.max(1e-12)
    }

    fn layer(
        [ci, co]: [usize; 2],
        k: usize,
        stride: usize,
        groups: usize,
        padding: PaddingConfig2d,
        device: &Device,
    ) -> Conv2d {
        let mut conv = Conv2dConfig::new([ci, co], [k, k])
            .with_stride([stride, stride])
            .with_groups(groups)
            .with_padding(padding)
            .with_bias(true)
            .init(device);
        // A bias of the size of the activations, so that adding it is visible.
        conv.bias = conv.bias.map(|b| {
            burn::module::Param::from_tensor(b.val().random_like(Distribution::Normal(0.0, 1.0)))
        });
        conv
    }

    #[test]
    fn depthwise_equals_burns_convolution_bias_and_activation() {
        let device = Device::flex();
        let cases = [
            // (channels, kernel, stride, padding, input size): every depthwise shape of the
            // EfficientNet-Lite family and MobileNetV2, odd sizes and explicit padding, each
            // way of splitting the padded input into phase planes.
            (8, 3, 1, PaddingConfig2d::Same, 15),
            (8, 3, 2, PaddingConfig2d::Same, 16),
            (8, 5, 2, PaddingConfig2d::Same, 14),
            (6, 5, 1, PaddingConfig2d::Same, 7),
            (6, 5, 2, PaddingConfig2d::Same, 13),
            (4, 3, 2, PaddingConfig2d::Explicit(1, 1, 1, 1), 11),
            (4, 3, 1, PaddingConfig2d::Valid, 9),
            (4, 5, 1, PaddingConfig2d::Explicit(2, 2, 2, 2), 1),
            // Odd left padding at stride 2, and stride 3 (the general phase split).
            (4, 5, 2, PaddingConfig2d::Explicit(3, 3, 3, 3), 12),
            (4, 3, 3, PaddingConfig2d::Explicit(1, 1, 1, 1), 10),
            (4, 5, 3, PaddingConfig2d::Explicit(2, 2, 2, 2), 13),
        ];
        for (c, k, s, pad, size) in cases {
            let conv = layer([c, c], k, s, c, pad.clone(), &device);
            let x = Tensor::<4>::random([2, c, size, size], Distribution::Normal(0., 2.), &device);
            for act in [Act::Identity, Act::Relu, Act::Relu6] {
                let burn = act.tensor(conv.forward(x.clone()), Operations::Burn);
                let kind = fusable(&conv, &x, None, Operations::Own);
                assert_eq!(kind, Some(Fusable::Depthwise));
                let ours = conv_bn_act(&conv, &None, x.clone(), act, Operations::Own);
                assert_eq!(ours.dims(), burn.dims(), "{pad:?} k{k} s{s} {size}px");
                let d = rel_diff(ours, burn);
                assert!(d < 1e-6, "{pad:?} k{k} s{s} {size}px {act:?}: {d}");
            }
        }
    }

    #[test]
    fn pointwise_equals_burns_convolution_bias_residual_and_activation() {
        let device = Device::flex();
        let conv = layer([24, 40], 1, 1, 1, PaddingConfig2d::Same, &device);
        let x = Tensor::<4>::random([3, 24, 9, 11], Distribution::Normal(0., 1.), &device);
        let r = Tensor::<4>::random([3, 40, 9, 11], Distribution::Normal(0., 1.), &device);
        for act in [Act::Identity, Act::Relu6] {
            let burn = act.tensor(conv.forward(x.clone()), Operations::Burn);
            assert_eq!(
                fusable(&conv, &x, None, Operations::Own),
                Some(Fusable::Pointwise)
            );
            let d = rel_diff(
                conv_bn_act(&conv, &None, x.clone(), act, Operations::Own),
                burn,
            );
            assert!(d < 1e-6, "{act:?}: {d}");
        }
        let burn = conv.forward(x.clone()) + r.clone();
        // The residual is shared with `r`: its values are copied, and `r` keeps its own.
        let before = r.clone().into_data();
        let d = rel_diff(
            conv_bn_add(&conv, &None, x.clone(), Some(r.clone()), Operations::Own),
            burn,
        );
        assert!(d < 1e-6, "residual: {d}");
        assert_eq!(
            r.into_data(),
            before,
            "the residual's values must not change"
        );
    }

    #[test]
    fn other_tensors_take_burns_path() {
        let device = Device::flex();
        let conv = layer([4, 8], 3, 1, 1, PaddingConfig2d::Same, &device);
        let x = Tensor::<4>::zeros([1, 4, 5, 5], &device);
        assert_eq!(
            fusable(&conv, &x, None, Operations::Own),
            None,
            "a 3x3 dense layer"
        );
        let pointwise = layer([4, 8], 1, 1, 1, PaddingConfig2d::Valid, &device);
        assert_eq!(
            fusable(&pointwise, &x, None, Operations::Burn),
            None,
            "Burn's operations asked for"
        );
        let ad = device.autodiff();
        let dw = layer([4, 4], 3, 1, 4, PaddingConfig2d::Same, &ad);
        let x = Tensor::<4>::ones([1, 4, 5, 5], &ad);
        assert_eq!(fusable(&dw, &x, None, Operations::Own), None, "autodiff");
        let y = conv_bn_act(&dw, &None, x.clone(), Act::Relu6, Operations::Own);
        let d = rel_diff(
            y,
            super::super::activation::relu6(dw.forward(x), Operations::Burn),
        );
        assert_eq!(d, 0.0);
    }
}
