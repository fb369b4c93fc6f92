//! ReLU6 as training runs it: one pass forward and one backward.
//!
//! Burn 0.22 composes `clamp(0, 6)` from `clamp_max` and `clamp_min`, each a comparison and a
//! masked fill, and autodiff differentiates both masked fills: four passes over the activation
//! forward and two more backward, on every ReLU6 of the EfficientNet-Lite family and
//! MobileNetV2 (about a tenth of a Lite0 training step on the CPU backend). Here, on the CPU
//! backend (Flex) with autodiff and a tracked input, ReLU6 is one autodiff operation of its own
//! (Burn's extension API, as [`super::conv`]'s depthwise convolution): the forward clamps in one
//! pass and keeps its output; the backward passes the gradient where the output lies strictly
//! between 0 and 6 (PyTorch's `hardtanh` backward). Without a tracked input, on other backends
//! and on wasm, Burn's `relu6` runs. Written because Burn 0.22 has no fused clamp; drop it when
//! it does.

use burn::prelude::*;

/// ReLU6 of `x`: this module's operation where a gradient is tracked on the CPU backend, Burn's
/// `relu6` otherwise (and always while [`super::conv::use_burn_operations`] is on). Both compute
/// the same function.
pub fn relu6(x: Tensor<4>) -> Tensor<4> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        if x.is_tracked()
            && !super::conv::burn_operations()
            && let Some(y) = native::relu6(x.clone())
        {
            return y;
        }
    }
    burn::tensor::activation::relu6(x)
}

/// The autodiff operation on the CPU backend (native builds).
#[cfg(not(target_arch = "wasm32"))]
pub mod native {
    use super::super::conv::native::{contiguous, tensor, values};
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::flex::FlexTensor;
    use burn::backend::{Autodiff, Flex};
    use burn::prelude::*;
    use burn::tensor::DType;
    use rayon::prelude::*;

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

    /// `g` where `y` lies strictly between 0 and 6, else 0.
    pub fn pass_inside(g: &[f32], y: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
            .for_each(|(o, (g, y))| {
                for ((o, g), y) in o.iter_mut().zip(g).zip(y) {
                    *o = if *y > 0.0 && *y < 6.0 { *g } else { 0.0 };
                }
            });
        out
    }

    /// `x` clamped to [0, 6] (NaN stays NaN, as in Burn's clamp).
    pub fn clamp(x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, x)| {
                for (o, x) in o.iter_mut().zip(x) {
                    *o = if x.is_nan() { *x } else { x.clamp(0.0, 6.0) };
                }
            });
        out
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

    /// Untracked input (inference, Grad-CAM) goes through Burn's `relu6`, with the same values.
    #[test]
    fn untracked_input_keeps_burns_path() {
        let device = Device::flex();
        let x = Tensor::<4>::random([1, 2, 3, 4], Distribution::Normal(3.0, 4.0), &device);
        let a: Vec<f32> = relu6(x.clone()).into_data().try_to_vec().unwrap();
        let b: Vec<f32> = burn::tensor::activation::relu6(x)
            .into_data()
            .try_to_vec()
            .unwrap();
        assert_eq!(a, b);
    }
}
