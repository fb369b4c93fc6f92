//! ReLU and ReLU6 as this project runs them on the CPU backend.
//!
//! - **Training** (autodiff, tracked input): Burn 0.22 composes `clamp(0, 6)` from `clamp_max`
//!   and `clamp_min`, each a comparison and a masked fill, and autodiff differentiates both
//!   masked fills: four passes over the activation forward and two more backward, on every
//!   ReLU6 of the EfficientNet-Lite family and MobileNetV2 (about a tenth of a Lite0 training
//!   step). Here ReLU6 is one autodiff operation of its own ([`native`], Burn's extension API,
//!   as [`super::conv`]'s depthwise convolution): the forward clamps in one pass and keeps its
//!   output; the backward passes the gradient where the output lies strictly between 0 and 6
//!   (PyTorch's `hardtanh` backward).
//! - **Inference** (the CPU backend without autodiff, natively and in the browser): Flex runs
//!   `clamp` and `relu` as a scalar loop with a branch per element (about a sixth of a Lite0
//!   forward pass on one core). Here both overwrite the activation in place ([`in_place`]), in a
//!   loop the compiler turns into SIMD (SSE/AVX natively, SIMD128 in wasm).
//!
//! Both compute exactly Burn's function, NaN and signed zero included. Everywhere else (other
//! backends, untracked autodiff tensors) Burn's `relu` and `relu6` run. Written because Burn
//! 0.22 has no fused or vectorised clamp on the CPU; drop it when it does.

use super::conv::Operations;
use burn::prelude::*;

/// ReLU6 of `x`: this module's autodiff operation where a gradient is tracked on the CPU
/// backend, the in-place kernel on the CPU backend without autodiff, Burn's `relu6` otherwise
/// (and always in training with [`Operations::Burn`]). All compute the same function.
pub fn relu6(x: Tensor<4>, ops: Operations) -> Tensor<4> {
    // In wasm only Burn's path exists for a tracked tensor: both choices are the same there.
    #[cfg(target_arch = "wasm32")]
    let _ = ops;
    #[cfg(not(target_arch = "wasm32"))]
    {
        if x.is_tracked()
            && ops == Operations::Own
            && let Some(y) = native::relu6(x.clone())
        {
            return y;
        }
    }
    in_place::apply(x, in_place::relu6, burn::tensor::activation::relu6)
}

/// ReLU of `x`: the in-place kernel on the CPU backend without autodiff, Burn's `relu`
/// otherwise. Both compute the same function.
pub fn relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    in_place::apply(x, in_place::relu, burn::tensor::activation::relu)
}

/// Activations computed in place on the CPU backend without autodiff (inference).
pub mod in_place {
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::prelude::*;
    use burn::tensor::DType;

    /// Elements per parallel chunk (native builds): large enough that a chunk outweighs its
    /// scheduling.
    #[cfg(not(target_arch = "wasm32"))]
    const CHUNK: usize = 1 << 16;

    /// Whether the kernels run on `x`: an f32 tensor of the CPU backend without autodiff.
    pub fn runs_on<const D: usize>(x: &Tensor<D>) -> bool {
        let device = x.device();
        !device.is_autodiff() && device == Device::flex() && x.dtype() == DType::F32
    }

    /// `kernel` applied to the values of `x` when [`runs_on`] holds: in place when `x` owns its
    /// values, on a copy otherwise (a tensor shared with another handle keeps its values).
    /// `otherwise(x)` for any other tensor.
    pub fn apply<const D: usize>(
        x: Tensor<D>,
        kernel: fn(&mut [f32]),
        otherwise: impl FnOnce(Tensor<D>) -> Tensor<D>,
    ) -> Tensor<D> {
        if !runs_on(&x) {
            return otherwise(x);
        }
        let mut t = x
            .try_into_primitive::<Flex>()
            .unwrap_or_else(|_| unreachable!("a tensor on the Flex device is a Flex tensor"));
        if !t.is_contiguous() {
            t = t.to_contiguous();
        }
        run(kernel, values_mut(&mut t));
        Tensor::from_primitive::<Flex>(t)
    }

    /// The values of a contiguous f32 Flex tensor, for writing. Copy-on-write: they are copied
    /// first when another handle shares them.
    pub fn values_mut(t: &mut FlexTensor) -> &mut [f32] {
        let start = t.layout().start_offset();
        let n = t.layout().num_elements();
        &mut t.storage_mut::<f32>()[start..start + n]
    }

    /// `kernel` over `values`, in chunks on every core natively, in one call in wasm.
    pub fn run(kernel: fn(&mut [f32]), values: &mut [f32]) {
        #[cfg(not(target_arch = "wasm32"))]
        {
            use rayon::prelude::*;
            values.par_chunks_mut(CHUNK).for_each(kernel);
        }
        #[cfg(target_arch = "wasm32")]
        kernel(values);
    }

    /// `v` clamped to [0, 6] (`f32::clamp`: NaN stays NaN, -0 stays -0, as in Burn's clamp).
    #[inline]
    pub fn relu6_value(v: f32) -> f32 {
        v.clamp(0.0, 6.0)
    }

    /// [`relu6_value`] of every value.
    pub fn relu6(values: &mut [f32]) {
        for v in values {
            *v = relu6_value(*v);
        }
    }

    /// `max(v, 0)` with NaN kept (Burn's `relu`: `v` where `v > 0` or NaN, else +0).
    #[inline]
    pub fn relu_value(v: f32) -> f32 {
        if v > 0.0 || v.is_nan() { v } else { 0.0 }
    }

    /// [`relu_value`] of every value.
    pub fn relu(values: &mut [f32]) {
        for v in values {
            *v = relu_value(*v);
        }
    }
}

/// The autodiff operation on the CPU backend (native builds).
#[cfg(not(target_arch = "wasm32"))]
pub mod native {
    use super::super::conv::native::{contiguous, tensor, values};
    use super::super::lanes;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::flex::FlexTensor;
    use burn::backend::{Autodiff, Flex};
    use burn::prelude::*;
    use burn::tensor::DType;

    /// Elements per parallel chunk: large enough that a chunk outweighs its scheduling.
    const CHUNK: usize = 1 << 16;

    #[derive(Debug)]
    struct Relu6Backward;

    impl Backward<Flex, 1> for Relu6Backward {
        /// The output and its shape.
        type State = (FlexTensor, [usize; 4]);

        fn backward(
            self,
            ops: Ops<Self::State, 1>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let [node] = ops.parents;
            let grad = contiguous(&grads.consume::<Flex>(&ops.node));
            let (y, shape) = ops.state;
            if let Some(node) = node {
                let gx = pass_inside(values(&grad), values(&y));
                grads.register::<Flex>(node.id, tensor(gx, shape));
            }
        }
    }

    /// `g` where `y` lies strictly between 0 and 6, else 0: a mask of the bits of `g`, without
    /// a branch, so that the loop is vectorised.
    pub fn pass_inside(g: &[f32], y: &[f32]) -> Vec<f32> {
        lanes::zip_map(g, y, CHUNK, |_| {
            |g: f32, y: f32| {
                let inside = (y > 0.0) & (y < 6.0);
                f32::from_bits(g.to_bits() & (inside as u32).wrapping_neg())
            }
        })
    }

    /// `x` clamped to [0, 6] (NaN stays NaN, as in Burn's clamp).
    pub fn clamp(x: &[f32]) -> Vec<f32> {
        lanes::map(x, CHUNK, |_| super::in_place::relu6_value)
    }

    /// ReLU6 as this module's autodiff operation. `None` when `x` is not an f32 tensor of the
    /// CPU backend with autodiff (the operation exists only there).
    pub fn relu6(x: Tensor<4>) -> Option<Tensor<4>> {
        type Ad = Autodiff<Flex, NoCheckpointing>;
        if x.dtype() != DType::F32 {
            return None;
        }
        let shape = x.dims();
        let xa = x.try_into_primitive::<Ad>().ok()?;
        let prep = Relu6Backward
            .prepare::<NoCheckpointing>([xa.node()])
            .compute_bound()
            .stateful();
        let xp = contiguous(&xa.into_primitive());
        let y = tensor(clamp(values(&xp)), shape);
        let out = match prep {
            OpsKind::Tracked(prep) => prep.finish((y.clone(), shape), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Some(Tensor::from_primitive::<Ad>(out))
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// Output and input gradient equal Burn's `relu6` (inputs spread over both bends).
    #[test]
    fn the_operation_matches_burns_relu6() {
        let device = Device::flex().autodiff();
        let x0 = Tensor::<4>::random([3, 5, 9, 11], Distribution::Normal(3.0, 4.0), &device);
        let g = Tensor::<4>::random([3, 5, 9, 11], Distribution::Normal(0.0, 1.0), &device);
        let run = |ours: bool| {
            let x = x0.clone().detach().require_grad();
            let y = if ours {
                native::relu6(x.clone()).expect("Flex autodiff")
            } else {
                burn::tensor::activation::relu6(x.clone())
            };
            let grads = (y.clone() * g.clone().detach()).sum().backward();
            let y: Vec<f32> = y.into_data().try_to_vec().unwrap();
            let gx: Vec<f32> = x.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
            (y, gx)
        };
        let (y, gx) = run(true);
        let (y_burn, gx_burn) = run(false);
        assert_eq!(y, y_burn);
        assert_eq!(gx, gx_burn);
        let clipped = y.iter().filter(|v| **v == 0.0 || **v == 6.0).count();
        assert!(
            clipped > 20 && clipped < y.len() - 20,
            "both bends and the slope are hit"
        );
    }

    /// Values with both bends, NaN, infinities and both zeros, as a `[2, 3, 4, 5]` tensor.
    fn awkward(device: &Device) -> Tensor<4> {
        let mut v: Vec<f32> = (0..120).map(|i| (i as f32 - 50.0) * 0.17).collect();
        v[..6].copy_from_slice(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0, 6.0]);
        Tensor::from_data(TensorData::new(v, [2, 3, 4, 5]), device)
    }

    fn bits<const D: usize>(x: Tensor<D>) -> Vec<u32> {
        let v: Vec<f32> = x.into_data().try_to_vec().unwrap();
        v.iter().map(|v| v.to_bits()).collect()
    }

    /// Inference on the CPU backend: the in-place kernels give Burn's `relu6` and `relu` bit for
    /// bit (NaN and signed zero included), on a contiguous tensor, on a transposed one and on
    /// one shared with another handle, whose values stay as they were.
    #[test]
    fn in_place_kernels_match_burn_bit_for_bit() {
        let device = Device::flex();
        let x = awkward(&device);
        let before = bits(x.clone());
        assert!(in_place::runs_on(&x), "the kernels run");
        for t in [x.clone(), x.clone().swap_dims(1, 3)] {
            assert_eq!(
                bits(relu6(t.clone(), Operations::Own)),
                bits(burn::tensor::activation::relu6(t.clone()))
            );
            assert_eq!(
                bits(relu(t.clone())),
                bits(burn::tensor::activation::relu(t))
            );
        }
        assert_eq!(bits(x.clone()), before, "a shared tensor keeps its values");
        let flat = x.clone().reshape([6, 20]);
        assert_eq!(
            bits(relu(flat.clone())),
            bits(burn::tensor::activation::relu(flat))
        );
        let y: Vec<f32> = relu6(x, Operations::Own).into_data().try_to_vec().unwrap();
        assert!(y[0].is_nan() && y[1] == 6.0 && y[2] == 0.0 && y[3].is_sign_negative());
        assert!(y.iter().any(|v| *v > 0.0 && *v < 6.0));
    }

    /// Autodiff tensors (even untracked ones) take Burn's path.
    #[test]
    fn autodiff_tensors_take_burns_path() {
        let device = Device::flex().autodiff();
        let x = awkward(&device);
        assert!(!in_place::runs_on(&x));
        assert_eq!(
            bits(relu6(x.clone(), Operations::Own)),
            bits(burn::tensor::activation::relu6(x))
        );
    }
}
