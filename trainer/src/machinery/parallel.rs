//! Data-parallel training over several devices (`train --devices cuda:0,cuda:1`).
//!
//! Each step splits the batch into one shard per device, runs a replica of the module on each,
//! brings every replica's gradients to the main device (the first) and adds them there, and the
//! optimiser steps once on the main device; the next step's replicas are copies of the updated
//! module. This is burn-train's multi-device strategy with the optimisation on the main device
//! (`MultiDeviceOptim::OptimMainDevice`), built into this trainer's own epoch loop so that its
//! checkpoints and exact resume hold unchanged; the gradients move and add with burn-optim's
//! `GradientsParams::to_device` and `GradientsAccumulator`.
//!
//! Each shard's loss is scaled by its share of the batch's loss weight (its rows, or the sum of
//! its rows' class weights under weighted cross-entropy), so the summed gradient is the
//! gradient of the whole batch's loss: the same step as one device with the whole batch, up to
//! the order of floating-point additions. Two exceptions, as in PyTorch's DDP: dropout masks
//! are drawn per device, and BatchNorm (fine-tuning) normalises each shard with its own batch
//! statistics.
//!
//! Replicas on distinct devices run in parallel threads, each drawing its rows' random choices
//! (cached view, augmentation) from its own stream seeded from the step's. A device named twice
//! (`cpu,cpu`: the CPU backend is one device) runs its replicas one after the other on the
//! calling thread, drawing those choices exactly as a single-device run does (the dropout masks
//! still differ: each shard draws its own); that is the path machines without GPUs test.

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The devices of a run, as autodiff devices; the first is the main device.
#[derive(Clone, Debug)]
pub struct Devices {
    devices: Vec<Device>,
    distinct: bool,
}

impl Devices {
    /// Wraps the devices (at least one) of a run.
    pub fn new(devices: &[Device]) -> Self {
        assert!(!devices.is_empty(), "at least one device");
        let distinct = (1..devices.len()).all(|i| !devices[..i].contains(&devices[i]));
        Devices {
            devices: devices.iter().map(|d| d.clone().autodiff()).collect(),
            distinct,
        }
    }

    /// The main device (autodiff).
    pub fn main(&self) -> &Device {
        &self.devices[0]
    }

    /// Number of replicas per step.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Seeds each distinct device's generator for an epoch (the main device with `seed`
    /// itself, so a one-device run draws what it always drew).
    pub fn seed(&self, seed: u64) {
        let mut seen: Vec<&Device> = Vec::new();
        for d in &self.devices {
            if !seen.contains(&d) {
                d.seed(seed.wrapping_add(seen.len() as u64));
                seen.push(d);
            }
        }
    }

    /// One training step's loss (of the whole batch) and gradients (on the main device).
    ///
    /// `loss(module, rows, rng, device)` computes the mean loss of `rows` with the module on
    /// `device`; `weight(rows)` is the share of the loss's normaliser those rows carry (their
    /// count, or their summed class weights).
    pub fn step<M, L, W>(
        &self,
        module: &M,
        batch: &[usize],
        rng: &mut ChaCha8Rng,
        loss: &L,
        weight: &W,
    ) -> (f32, GradientsParams)
    where
        M: Module,
        L: Fn(&M, &[usize], &mut ChaCha8Rng, &Device) -> Tensor<1> + Sync,
        W: Fn(&[usize]) -> f64,
    {
        if self.devices.len() == 1 {
            let l = loss(module, batch, rng, self.main());
            let v = l.clone().into_scalar::<f32>();
            return (v, GradientsParams::from_grads(l.backward(), module));
        }
        let total = weight(batch);
        let shards = split(batch, self.devices.len());
        let mut accumulator = GradientsAccumulator::<M>::new();
        let mut value = 0.0f64;
        if self.distinct {
            // Each replica draws from its own stream, seeded from the step's.
            let seeds: Vec<u64> = shards.iter().map(|_| rng.random()).collect();
            let results = std::thread::scope(|s| {
                let handles: Vec<_> = shards
                    .iter()
                    .zip(&self.devices)
                    .zip(seeds)
                    .filter(|((shard, _), _)| !shard.is_empty())
                    .map(|((shard, device), seed)| {
                        let replica = module.clone().fork(device);
                        let share = weight(shard) / total;
                        s.spawn(move || {
                            let mut rng = ChaCha8Rng::seed_from_u64(seed);
                            let l = loss(&replica, shard, &mut rng, device) * share;
                            let v = l.clone().into_scalar::<f32>();
                            (v, GradientsParams::from_grads(l.backward(), &replica))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .collect::<Vec<_>>()
            });
            for (v, grads) in results {
                value += v as f64;
                accumulator.accumulate(module, grads.to_device(self.main(), module));
            }
        } else {
            for (shard, device) in shards.iter().zip(&self.devices) {
                if shard.is_empty() {
                    continue;
                }
                let l = loss(module, shard, rng, device) * (weight(shard) / total);
                value += l.clone().into_scalar::<f32>() as f64;
                let grads = GradientsParams::from_grads(l.backward(), module);
                accumulator.accumulate(module, grads);
            }
        }
        (value as f32, accumulator.grads())
    }
}

/// Splits `batch` into `n` contiguous shards whose sizes differ by at most one (the first ones
/// larger); shards are empty when the batch has fewer than `n` rows.
pub fn split(batch: &[usize], n: usize) -> Vec<&[usize]> {
    let (q, r) = (batch.len() / n, batch.len() % n);
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    for i in 0..n {
        let len = q + usize::from(i < r);
        out.push(&batch[start..start + len]);
        start += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::nn::{Linear, LinearConfig};

    #[test]
    fn shards_cover_the_batch_in_order() {
        let b: Vec<usize> = (0..10).collect();
        let s = split(&b, 3);
        assert_eq!(s, vec![&b[0..4], &b[4..7], &b[7..10]]);
        assert_eq!(split(&b[..1], 2), vec![&b[0..1], &b[1..1]]);
    }

    /// The summed shard gradients are the whole batch's gradient, with and without class
    /// weights in the loss, and the reported loss is the whole batch's loss.
    #[test]
    fn shard_gradients_add_up_to_the_batch_gradient() {
        let cpu = Device::flex();
        let ad = cpu.clone().autodiff();
        let layer: Linear = LinearConfig::new(6, 4).init(&ad);
        let n = 7;
        let x: Vec<f32> = (0..n * 6)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let labels = [0usize, 1, 2, 3, 1, 1, 2];
        let class_w = [0.5f32, 2.0, 1.0, 3.0];
        for weighted in [false, true] {
            let loss = |m: &Linear, rows: &[usize], _: &mut ChaCha8Rng, d: &Device| {
                let xs: Vec<f32> = rows
                    .iter()
                    .flat_map(|&r| x[r * 6..r * 6 + 6].to_vec())
                    .collect();
                let xs = Tensor::<2>::from_data(TensorData::new(xs, [rows.len(), 6]), d);
                let y: Vec<i64> = rows.iter().map(|&r| labels[r] as i64).collect();
                let y = Tensor::<1, Int>::from_data(TensorData::new(y, [rows.len()]), d);
                CrossEntropyLossConfig::new()
                    .with_weights(weighted.then(|| class_w.to_vec()))
                    .init(d)
                    .forward(m.forward(xs), y)
            };
            let weight = |rows: &[usize]| {
                if weighted {
                    rows.iter().map(|&r| class_w[labels[r]] as f64).sum()
                } else {
                    rows.len() as f64
                }
            };
            let batch: Vec<usize> = (0..n).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let one = Devices::new(std::slice::from_ref(&cpu));
            let (l1, g1) = one.step(&layer, &batch, &mut rng, &loss, &weight);
            // Three replicas on the one CPU device, one after another; and the same three
            // treated as distinct devices: copies of the module in their own threads, their
            // gradients moved to the main device.
            let three = [cpu.clone(), cpu.clone(), cpu.clone()];
            let sequential = Devices::new(&three);
            assert!(!sequential.distinct);
            let threaded = Devices {
                distinct: true,
                ..sequential.clone()
            };
            for (devices, path) in [(sequential, "sequential"), (threaded, "threaded")] {
                let (l3, g3) = devices.step(&layer, &batch, &mut rng, &loss, &weight);
                assert!((l1 - l3).abs() < 1e-6, "{path}: loss {l1} vs {l3}");
                let bias = layer.bias.as_ref().unwrap().id;
                let pairs = [
                    (
                        g1.get::<2>(layer.weight.id).unwrap().into_data(),
                        g3.get::<2>(layer.weight.id).unwrap().into_data(),
                    ),
                    (
                        g1.get::<1>(bias).unwrap().into_data(),
                        g3.get::<1>(bias).unwrap().into_data(),
                    ),
                ]
                .map(|(a, b)| {
                    (
                        a.try_to_vec::<f32>().unwrap(),
                        b.try_to_vec::<f32>().unwrap(),
                    )
                });
                for (a, b) in pairs {
                    let max = a.iter().fold(0f32, |m, v| m.max(v.abs()));
                    assert!(max > 1e-3, "a gradient that is not zero");
                    for (u, v) in a.iter().zip(&b) {
                        assert!(
                            (u - v).abs() <= 1e-6 * max.max(1.0),
                            "{path}, weighted={weighted}: {u} vs {v}"
                        );
                    }
                }
            }
        }
    }
}
