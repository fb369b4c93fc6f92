//! Batch normalisation as training runs it: the batch statistics, the output and the gradients
//! in a few passes per channel.
//!
//! Burn 0.22's training batch norm is one autodiff operation, but its kernels are composed from
//! tensor operations: the statistics swap the batch and channel axes (a copy of the
//! activation) twice, the output takes five broadcast element-wise passes, and the backward
//! two more copies and about ten passes. Here, on the CPU backend (Flex) with autodiff, it is
//! one autodiff operation of its own (Burn's extension API, as [`super::conv`]'s depthwise
//! convolution) whose kernels run per channel on every core:
//!
//! - forward: `μ_c`, `σ²_c` (biased, as Burn's) over batch and space, then
//!   `y = γ_c (x − μ_c) / √(σ²_c + ε) + β_c`;
//! - backward: `∂β_c = Σ g`, `∂γ_c = Σ g x̂`, `∂x = γ_c / √(σ²_c + ε) · (g − mean(g) − x̂ ·
//!   mean(g x̂))`,
//!
//! sums in f64. The running statistics are updated as Burn's [`BatchNorm`] updates them.
//! Inference, frozen layers, other backends and wasm keep Burn's batch norm. Written because
//! Burn 0.22's CPU backend has no batch-norm kernel; drop it when it does.

use super::conv::Operations;
use burn::nn::BatchNorm;
use burn::prelude::*;

/// `bn` applied to `x`: this module's operation for a layer in training on the CPU backend with
/// autodiff, Burn's [`BatchNorm::forward`] otherwise (and always with [`Operations::Burn`]).
/// Both compute the same function and update the running statistics alike.
pub fn forward(bn: &BatchNorm, x: Tensor<4>, ops: Operations) -> Tensor<4> {
    // In wasm only Burn's path exists for a tracked tensor: both choices are the same there.
    #[cfg(target_arch = "wasm32")]
    let _ = ops;
    #[cfg(not(target_arch = "wasm32"))]
    {
        if ops == Operations::Own
            && x.device().is_autodiff()
            && bn.training.is_enabled()
            && let Some(out) =
                native::batch_norm_train(x.clone(), bn.gamma.val(), bn.beta.val(), bn.epsilon)
        {
            update_running(bn, out.mean, out.variance);
            return out.output;
        }
    }
    bn.forward(x)
}

/// Moves `bn`'s running statistics towards a batch's by its momentum (Burn's update).
#[cfg(not(target_arch = "wasm32"))]
fn update_running(bn: &BatchNorm, mean: Tensor<1>, variance: Tensor<1>) {
    let device = mean.device();
    let m = bn.momentum;
    let blend = |running: Tensor<1>, batch: Tensor<1>| {
        running
            .to_device(&device)
            .mul_scalar(1.0 - m)
            .add(batch.detach().mul_scalar(m))
            .detach()
    };
    bn.running_mean
        .update(blend(bn.running_mean.value_sync(), mean));
    bn.running_var
        .update(blend(bn.running_var.value_sync(), variance));
}

/// The autodiff operation on the CPU backend and its kernels (native builds).
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
    use rayon::prelude::*;

    /// A batch's normalised output and its statistics (detached).
    pub struct Trained {
        /// The normalised, scaled and shifted activation.
        pub output: Tensor<4>,
        /// Per-channel mean.
        pub mean: Tensor<1>,
        /// Per-channel biased variance.
        pub variance: Tensor<1>,
    }

    /// Per-channel statistics of a `[n, c, h, w]` activation.
    #[derive(Debug, Clone)]
    pub struct Stats {
        /// The activation's shape.
        pub shape: [usize; 4],
        /// Per-channel mean.
        pub mean: Vec<f32>,
        /// Per-channel biased variance.
        pub variance: Vec<f32>,
        /// Per-channel `1 / √(σ² + ε)`.
        pub inv_std: Vec<f32>,
    }

    /// The planes (`h·w` values each) of channel `ch` of `x`, batch by batch.
    fn planes(x: &[f32], shape: [usize; 4], ch: usize) -> impl Iterator<Item = &[f32]> {
        let [n, c, h, w] = shape;
        (0..n).map(move |b| &x[(b * c + ch) * h * w..][..h * w])
    }

    /// Mean and biased variance of each channel of `x` (two passes, sums in f64).
    pub fn stats(x: &[f32], shape: [usize; 4], epsilon: f64) -> Stats {
        let [n, c, h, w] = shape;
        let count = (n * h * w) as f64;
        let per: Vec<(f32, f32, f32)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let sum: f64 = planes(x, shape, ch)
                    .map(|p| lanes::sum(p, |v| v as f64))
                    .sum();
                let mean = sum / count;
                let sq: f64 = planes(x, shape, ch)
                    .map(|p| lanes::sum(p, |v| (v as f64 - mean).powi(2)))
                    .sum();
                let var = sq / count;
                (
                    mean as f32,
                    var as f32,
                    (1.0 / (var + epsilon).sqrt()) as f32,
                )
            })
            .collect();
        Stats {
            shape,
            mean: per.iter().map(|p| p.0).collect(),
            variance: per.iter().map(|p| p.1).collect(),
            inv_std: per.iter().map(|p| p.2).collect(),
        }
    }

    /// `γ (x − μ) / √(σ² + ε) + β`, plane by plane.
    pub fn normalise(x: &[f32], s: &Stats, gamma: &[f32], beta: &[f32]) -> Vec<f32> {
        let [_, c, h, w] = s.shape;
        lanes::map(x, h * w, |plane| {
            let ch = plane % c;
            let scale = gamma[ch] * s.inv_std[ch];
            let shift = beta[ch] - s.mean[ch] * scale;
            move |x| x * scale + shift
        })
    }

    /// The gradients of `x`, `γ` and `β` from the output gradient `g`.
    pub fn gradients(
        x: &[f32],
        g: &[f32],
        s: &Stats,
        gamma: &[f32],
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let [n, c, h, w] = s.shape;
        let count = (n * h * w) as f64;
        // Σ g and Σ g·x̂ per channel.
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mean, inv) = (s.mean[ch], s.inv_std[ch]);
                planes(x, s.shape, ch).zip(planes(g, s.shape, ch)).fold(
                    (0f64, 0f64),
                    |(sg, sgx), (xp, gp)| {
                        let (a, b) = lanes::sum2(xp, gp, |x, g| (g, g * (x - mean) * inv));
                        (sg + a as f64, sgx + b as f64)
                    },
                )
            })
            .collect();
        let gx = lanes::zip_map(x, g, h * w, |plane| {
            let ch = plane % c;
            let (mean, inv) = (s.mean[ch], s.inv_std[ch]);
            let mean_g = (sums[ch].0 / count) as f32;
            let mean_gx = (sums[ch].1 / count) as f32;
            let scale = gamma[ch] * inv;
            move |x, g| scale * (g - mean_g - (x - mean) * inv * mean_gx)
        });
        let dgamma = sums.iter().map(|s| s.1 as f32).collect();
        let dbeta = sums.iter().map(|s| s.0 as f32).collect();
        (gx, dgamma, dbeta)
    }

    fn vector(values: Vec<f32>) -> FlexTensor {
        let n = values.len();
        FlexTensor::from_data(TensorData::new(values, [n]))
    }

    #[derive(Debug)]
    struct BatchNormBackward;

    impl Backward<Flex, 3> for BatchNormBackward {
        /// The input, γ and the batch's statistics.
        type State = (FlexTensor, FlexTensor, Stats);

        fn backward(
            self,
            ops: Ops<Self::State, 3>,
            grads: &mut Gradients,
            _checkpointer: &mut Checkpointer,
        ) {
            let [node_x, node_gamma, node_beta] = ops.parents;
            let grad = contiguous(&grads.consume::<Flex>(&ops.node));
            let (x, gamma, stats) = ops.state;
            let (gx, dgamma, dbeta) = gradients(values(&x), values(&grad), &stats, values(&gamma));
            if let Some(node) = node_x {
                grads.register::<Flex>(node.id, tensor(gx, stats.shape));
            }
            if let Some(node) = node_gamma {
                grads.register::<Flex>(node.id, vector(dgamma));
            }
            if let Some(node) = node_beta {
                grads.register::<Flex>(node.id, vector(dbeta));
            }
        }
    }

    /// A training batch norm of `x` `[n, c, h, w]` as this module's autodiff operation. `None`
    /// when the tensors are not f32 tensors of the CPU backend with autodiff (the operation
    /// exists only there).
    pub fn batch_norm_train(
        x: Tensor<4>,
        gamma: Tensor<1>,
        beta: Tensor<1>,
        epsilon: f64,
    ) -> Option<Trained> {
        type Ad = Autodiff<Flex, NoCheckpointing>;
        if [x.dtype(), gamma.dtype(), beta.dtype()] != [DType::F32; 3] {
            return None;
        }
        let device = x.device();
        let shape = x.dims();
        let xa = x.try_into_primitive::<Ad>().ok()?;
        let ga = gamma.try_into_primitive::<Ad>().ok()?;
        let ba = beta.try_into_primitive::<Ad>().ok()?;
        let prep = BatchNormBackward
            .prepare::<NoCheckpointing>([xa.node(), ga.node(), ba.node()])
            .compute_bound()
            .stateful();
        let xp = contiguous(&xa.into_primitive());
        let gp = contiguous(&ga.into_primitive());
        let bp = contiguous(&ba.into_primitive());
        let stats = stats(values(&xp), shape, epsilon);
        let y = tensor(
            normalise(values(&xp), &stats, values(&gp), values(&bp)),
            shape,
        );
        let c = shape[1];
        let mean = Tensor::<1>::from_data(TensorData::new(stats.mean.clone(), [c]), &device);
        let variance =
            Tensor::<1>::from_data(TensorData::new(stats.variance.clone(), [c]), &device);
        let out = match prep {
            OpsKind::Tracked(prep) => prep.finish((xp, gp, stats), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Some(Trained {
            output: Tensor::from_primitive::<Ad>(out),
            mean: mean.detach(),
            variance: variance.detach(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::BatchNormConfig;
    use burn::tensor::Distribution;

    fn vec_of<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec().unwrap()
    }

    fn max_rel(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / scale)
            .fold(0f32, f32::max)
    }

    /// Output, running statistics and the gradients of the input, γ and β equal Burn's batch
    /// norm in training (odd sizes, a shifted and scaled input, γ and β away from 1 and 0).
    #[test]
    fn the_operation_matches_burns_batch_norm() {
        let device = Device::flex().autodiff();
        let x0 = Tensor::<4>::random([3, 5, 7, 9], Distribution::Normal(2.0, 3.0), &device);
        let g = Tensor::<4>::random([3, 5, 7, 9], Distribution::Normal(0.0, 1.0), &device);
        let gamma = Tensor::<1>::random([5], Distribution::Normal(1.0, 0.5), &device);
        let beta = Tensor::<1>::random([5], Distribution::Normal(0.0, 0.5), &device);
        let run = |ops: Operations| {
            let mut bn = BatchNormConfig::new(5).init(&device);
            bn.gamma = burn::module::Param::from_tensor(gamma.clone());
            bn.beta = burn::module::Param::from_tensor(beta.clone());
            let x = x0.clone().detach().require_grad();
            let y = forward(&bn, x.clone(), ops);
            let grads = (y.clone() * g.clone().detach()).sum().backward();
            vec![
                vec_of(y),
                vec_of(x.grad(&grads).unwrap()),
                vec_of(bn.gamma.grad(&grads).unwrap()),
                vec_of(bn.beta.grad(&grads).unwrap()),
                vec_of(bn.running_mean.value_sync()),
                vec_of(bn.running_var.value_sync()),
            ]
        };
        let ours = run(Operations::Own);
        let burn = run(Operations::Burn);
        // The running mean moved by the momentum (0.1) towards the batch mean (about 2).
        assert!(
            ours[4].iter().all(|m| (0.1..0.3).contains(m)),
            "running mean {:?}",
            ours[4]
        );
        let names = [
            "output",
            "∂x",
            "∂γ",
            "∂β",
            "running mean",
            "running variance",
        ];
        for ((a, b), name) in ours.iter().zip(&burn).zip(names) {
            let e = max_rel(a, b);
            println!("{name}: {e:.2e} of the largest value");
            assert!(e < 1e-4, "{name} differs by {e}");
        }
    }
}
