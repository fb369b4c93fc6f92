//! Adam as the trainer runs it: one pass over each parameter on the CPU backend.
//!
//! Burn 0.22's `Adam` updates a parameter with about a dozen tensor operations (two moment
//! updates, the bias-corrected step, the subtraction), each a pass over the values into a new
//! buffer: about a tenth of an EfficientNet-Lite0 training step on two cores. [`FusedAdam`]
//! computes the same update, with the same f32 operations in the same order, in one pass that
//! overwrites the parameter and both moments in place. Its state is Burn's `AdamState`, so a
//! checkpoint of either optimizer resumes with the other. Other backends, and every step of an
//! optimizer built for [`Operations::Burn`], go through Burn's `Adam`. Written
//! because Burn 0.22 has no fused optimizer step on the CPU; drop it when it does.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::optim::{
    Adam, AdamConfig, AdamState, AdaptiveMomentumState, LearningRate, ModuleOptimizer, Optimizer,
};
use burn::prelude::*;
use burn::tensor::DType;
use pneumoscope::arch::Operations;
use pneumoscope::arch::activation::in_place::{runs_on, values_mut};
use rayon::prelude::*;

/// Burn's `AdamConfig` defaults, which the trainer uses.
const BETA_1: f32 = 0.9;
const BETA_2: f32 = 0.999;
const EPSILON: f32 = 1e-5;

/// Values per parallel chunk: large enough that a chunk outweighs its scheduling.
const CHUNK: usize = 1 << 15;

/// The trainer's optimizer: [`FusedAdam`] over every parameter, with decoupled weight decay
/// `weight_decay` (AdamW; 0: Adam), its steps run through `operations`.
pub fn optimizer(weight_decay: f64, operations: Operations) -> ModuleOptimizer {
    ModuleOptimizer::from(FusedAdam {
        weight_decay,
        operations,
        ..FusedAdam::default()
    })
}

/// Adam with Burn's default settings, fused into one pass per parameter on the CPU backend,
/// and optionally AdamW's decoupled weight decay of the parameters of rank 2 and more
/// (convolution and linear weights; biases and batch norms are not decayed): before the Adam
/// step, `p ← p·(1 − lr·weight_decay)`, as Burn's `AdamW` does.
#[derive(Clone)]
pub struct FusedAdam {
    /// Burn's Adam with the same settings, for the tensors the fused pass does not take.
    burn: Adam,
    /// Decoupled weight decay (0: none).
    pub weight_decay: f64,
    /// [`Operations::Own`]: the fused pass where it applies; [`Operations::Burn`]: Burn's
    /// `Adam` for every step.
    pub operations: Operations,
}

impl Default for FusedAdam {
    fn default() -> Self {
        Self {
            burn: AdamConfig::new()
                .with_beta_1(BETA_1)
                .with_beta_2(BETA_2)
                .with_epsilon(EPSILON)
                .build(),
            weight_decay: 0.0,
            operations: Operations::Own,
        }
    }
}

impl FusedAdam {
    /// The factor a parameter of rank `rank` is multiplied by before a step at rate `lr`
    /// (`None`: no decay, which includes a rate of 0).
    fn decay(&self, rank: usize, lr: LearningRate) -> Option<f32> {
        let rate = lr * self.weight_decay;
        (rank >= 2 && rate != 0.0).then_some((1.0 - rate) as f32)
    }
}

/// The constants of one step at time `t` (1 for the first).
#[derive(Clone, Copy, Debug)]
struct StepFactors {
    /// `1 - β₁` and `1 - β₂`.
    keep: [f32; 2],
    /// `√(1 - β₂ᵗ) / (1 - β₁ᵗ)`.
    combined: f32,
    /// `ε·√(1 - β₂ᵗ)`.
    epsilon: f32,
    /// The learning rate.
    lr: f32,
    /// Weight decay's factor (1: none).
    decay: f32,
}

impl StepFactors {
    /// Computed as Burn's `Adam` computes them.
    fn new(t: usize, lr: LearningRate, keep: Option<f32>) -> Self {
        let t = t as i32;
        let bias_correction2_sqrt = (1.0 - BETA_2.powi(t)).sqrt();
        Self {
            keep: [1.0 - BETA_1, 1.0 - BETA_2],
            combined: bias_correction2_sqrt / (1.0 - BETA_1.powi(t)),
            epsilon: EPSILON * bias_correction2_sqrt,
            lr: lr as f32,
            decay: keep.unwrap_or(1.0),
        }
    }
}

/// One Adam update of parameter `p` with gradient `g`, moments `m1` and `m2` (updated in
/// place), in the order of Burn's tensor operations.
#[inline]
fn update(f: &StepFactors, p: &mut f32, m1: &mut f32, m2: &mut f32, g: f32, first: bool) {
    if first {
        *m1 = g * f.keep[0];
        *m2 = (g * g) * f.keep[1];
    } else {
        *m1 = *m1 * BETA_1 + g * f.keep[0];
        *m2 = *m2 * BETA_2 + (g * g) * f.keep[1];
    }
    let step = (*m1 * f.combined) / (m2.sqrt() + f.epsilon);
    if f.decay != 1.0 {
        *p *= f.decay;
    }
    *p -= step * f.lr;
}

/// [`update`] over whole slices, in chunks on every core. `m1` and `m2` are overwritten on
/// the `first` step.
pub fn update_all(
    t: usize,
    lr: LearningRate,
    keep: Option<f32>,
    p: &mut [f32],
    [m1, m2]: [&mut [f32]; 2],
    g: &[f32],
    first: bool,
) {
    let f = StepFactors::new(t, lr, keep);
    p.par_chunks_mut(CHUNK)
        .zip(m1.par_chunks_mut(CHUNK))
        .zip(m2.par_chunks_mut(CHUNK))
        .zip(g.par_chunks(CHUNK))
        .for_each(|(((p, m1), m2), g)| {
            for (((p, m1), m2), g) in p.iter_mut().zip(m1).zip(m2).zip(g) {
                update(&f, p, m1, m2, *g, first);
            }
        });
}

/// `t` (a tensor the fused pass takes) as a contiguous Flex tensor.
fn contiguous<const D: usize>(t: Tensor<D>) -> FlexTensor {
    t.try_into_primitive::<Flex>()
        .unwrap_or_else(|_| unreachable!("a tensor on the Flex device is a Flex tensor"))
        .to_contiguous()
}

/// Whether the fused pass takes this step: the parameter, its gradient and its moments are
/// f32 tensors of the CPU backend without autodiff ([`runs_on`]), and there is no
/// AMSGrad maximum.
fn fusable<const D: usize>(
    tensor: &Tensor<D>,
    grad: &Tensor<D>,
    state: Option<&AdamState<D>>,
) -> bool {
    runs_on(tensor)
        && runs_on(grad)
        && state.is_none_or(|s| {
            let m = &s.momentum;
            m.max_moment_2.is_none() && runs_on(&m.moment_1) && runs_on(&m.moment_2)
        })
}

/// The fused step of a [`fusable`] parameter.
fn fused<const D: usize>(
    lr: LearningRate,
    keep: Option<f32>,
    tensor: Tensor<D>,
    grad: Tensor<D>,
    state: Option<AdamState<D>>,
) -> (Tensor<D>, AdamState<D>) {
    let mut p = contiguous(tensor);
    let g = contiguous(grad);
    let (t, first, mut m1, mut m2) = match state {
        Some(s) => {
            let m = s.momentum;
            (
                m.time + 1,
                false,
                contiguous(m.moment_1),
                contiguous(m.moment_2),
            )
        }
        None => {
            let zeros = || FlexTensor::empty(p.layout().shape().clone(), DType::F32);
            (1, true, zeros(), zeros())
        }
    };
    update_all(
        t,
        lr,
        keep,
        values_mut(&mut p),
        [values_mut(&mut m1), values_mut(&mut m2)],
        g.as_slice::<f32>().expect("a contiguous f32 tensor"),
        first,
    );
    let back = Tensor::<D>::from_primitive::<Flex>;
    let momentum = AdaptiveMomentumState::new(t, back(m1), back(m2));
    (back(p), AdamState::new(momentum))
}

impl Optimizer for FusedAdam {
    type State<const D: usize> = AdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let keep = self.decay(D, lr);
        if self.operations == Operations::Burn || !fusable(&tensor, &grad, state.as_ref()) {
            let tensor = match keep {
                Some(k) => tensor.mul_scalar(k),
                None => tensor,
            };
            return self.burn.step(lr, tensor, grad, state);
        }
        let (tensor, state) = fused(lr, keep, tensor, grad, state);
        (tensor, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        Adam::to_device(state, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::GradientsParams;
    use burn::tensor::Distribution;

    /// A convolution and a linear layer: parameters of rank 1, 2 and 4, and a linear weight
    /// whose gradient arrives transposed.
    #[derive(Module, Debug)]
    struct Net {
        conv: Conv2d,
        linear: Linear,
    }

    impl Net {
        fn new(device: &Device) -> Self {
            Self {
                conv: Conv2dConfig::new([3, 8], [3, 3]).init(device),
                linear: LinearConfig::new(8 * 6 * 6, 5).init(device),
            }
        }

        fn loss(&self, x: Tensor<4>) -> Tensor<1> {
            let h = self.conv.forward(x).flatten::<2>(1, 3);
            let y = self.linear.forward(h);
            (y.clone() * y).sum()
        }
    }

    fn params(net: &Net) -> Vec<Vec<f32>> {
        let mut out = Vec::new();
        for t in [
            net.conv.weight.val().flatten::<1>(0, 3),
            net.conv.bias.as_ref().unwrap().val(),
            net.linear.weight.val().flatten::<1>(0, 1),
            net.linear.bias.as_ref().unwrap().val(),
        ] {
            out.push(t.into_data().try_to_vec().unwrap());
        }
        out
    }

    /// One step of `optim` from `net` per batch of `x`, at a falling learning rate; `done`
    /// steps were taken before.
    fn train(mut net: Net, optim: &mut ModuleOptimizer, x: &[Tensor<4>], done: usize) -> Net {
        for (i, x) in x.iter().enumerate() {
            let grads = GradientsParams::from_grads(net.loss(x.clone()).backward(), &net);
            net = optim.step(1e-2 / (done + i + 1) as f64, net, grads);
        }
        net
    }

    /// A network and `steps` random batches on the CPU backend with autodiff.
    fn setup(steps: usize) -> (Net, Vec<Tensor<4>>) {
        let device = Device::flex().autodiff();
        let x = (0..steps)
            .map(|_| Tensor::<4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &device))
            .collect();
        (Net::new(&device), x)
    }

    /// Five steps give exactly the parameters of Burn's `Adam` with its default settings, fused
    /// or (built for Burn's operations) through Burn's `Adam` itself.
    #[test]
    fn five_steps_equal_burns_adam() {
        let (net, x) = setup(5);
        let ours = train(net.clone(), &mut optimizer(0.0, Operations::Own), &x, 0);
        let through_burn = train(net.clone(), &mut optimizer(0.0, Operations::Burn), &x, 0);
        let burns = train(net.clone(), &mut AdamConfig::new().init(), &x, 0);
        let (ours, burns, start) = (params(&ours), params(&burns), params(&net));
        assert_eq!(ours, burns);
        assert_eq!(params(&through_burn), burns);
        assert_ne!(ours, start, "the parameters moved");
    }

    /// With weight decay, one step gives Burn's `AdamW` for the weights (rank 2 and 4; to an
    /// ulp, since `AdamW` orders its bias corrections differently) and exactly Burn's `Adam`
    /// for the biases, which are not decayed.
    #[test]
    fn weight_decay_is_adamw_for_weights_only() {
        let (net, x) = setup(1);
        let wd = 0.3;
        let ours = params(&train(
            net.clone(),
            &mut optimizer(wd, Operations::Own),
            &x,
            0,
        ));
        let adamw = burn::optim::AdamWConfig::new()
            .with_beta_1(BETA_1)
            .with_beta_2(BETA_2)
            .with_epsilon(EPSILON)
            .with_weight_decay(wd as f32);
        let adamw = params(&train(net.clone(), &mut adamw.init(), &x, 0));
        let adam = params(&train(net.clone(), &mut AdamConfig::new().init(), &x, 0));
        // [conv weight, conv bias, linear weight, linear bias]
        for k in [0, 2] {
            let off = ours[k]
                .iter()
                .zip(&adamw[k])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(off < 1e-7, "parameter {k}: {off}");
        }
        assert_eq!(ours[1], adam[1]);
        assert_eq!(ours[3], adam[3]);
        assert_ne!(ours[0], adam[0], "the decay changed the weights");
    }

    /// A checkpoint of either optimizer resumes in either, with the same steps as an
    /// uninterrupted run.
    #[test]
    fn checkpoints_resume_in_either_optimizer() {
        let (net, x) = setup(4);
        let straight = params(&train(
            net.clone(),
            &mut optimizer(0.0, Operations::Own),
            &x,
            0,
        ));
        let burns = || AdamConfig::new().init();
        for (saved_by, resumed_by) in [
            (optimizer(0.0, Operations::Own), burns()),
            (burns(), optimizer(0.0, Operations::Own)),
            (
                optimizer(0.0, Operations::Own),
                optimizer(0.0, Operations::Own),
            ),
        ] {
            let mut first = saved_by;
            let half = train(net.clone(), &mut first, &x[..2], 0);
            let bytes = first.into_bytes().expect("optimizer record");
            let mut second = resumed_by.from_bytes(bytes).expect("readable record");
            let resumed = train(half, &mut second, &x[2..], 2);
            assert_eq!(params(&resumed), straight);
        }
    }
}
