//! What an epoch feeds the network: the rows of a run, their loss weights against class and
//! population imbalance, the order of an epoch, the views of a batch, and the loss.

use super::config::*;
use crate::data::{Label, Manifest, NUM_LABELS, Population, Split};
use burn::prelude::*;
use pneumoscope::NUM_CLASSES;
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Weighted cross-entropy against a set of allowed classes per row:
/// `sum_i w_i * -log(sum_{c allowed in i} p_ic) / sum_i w_i`. A row that allows one class is
/// ordinary cross-entropy; the partial label "pneumonia, pathogen unknown" allows bacterial and
/// viral, so its loss is `-log(p_bacterial + p_viral)` and it never counts as either class.
pub fn partial_cross_entropy(
    logits: Tensor<2>,
    allowed: Tensor<2>,
    weights: Tensor<1>,
) -> Tensor<1> {
    let [n, _] = logits.dims();
    let lse = |x: Tensor<2>| {
        let m = x.clone().max_dim(1).detach();
        (x - m.clone()).exp().sum_dim(1).log() + m
    };
    // Classes not allowed are pushed to -1e30: exp() of them is exactly 0.
    let masked = logits.clone() + (allowed - 1.0) * 1e30;
    let nll = (lse(logits) - lse(masked)).reshape([n]);
    (nll * weights.clone()).sum() / weights.sum()
}

/// The loss of a batch of training rows: [`partial_cross_entropy`] of `logits` against their
/// labels, with their row weights.
pub(super) fn batch_loss(
    logits: Tensor<2>,
    batch: &[usize],
    labels: &[usize],
    row_w: &[f32],
    d: &Device,
) -> Tensor<1> {
    let allowed: Vec<f32> = batch
        .iter()
        .flat_map(|&i| Label::allowed_of_index(labels[i]).map(|a| f32::from(u8::from(a))))
        .collect();
    let w: Vec<f32> = batch.iter().map(|&i| row_w[i]).collect();
    partial_cross_entropy(
        logits,
        Tensor::from_data(TensorData::new(allowed, [batch.len(), NUM_CLASSES]), d),
        Tensor::from_data(TensorData::new(w, [batch.len()]), d),
    )
}

/// Stacks normalised images into a tensor.
pub fn stack(images: &[Vec<f32>], size: usize, device: &Device) -> Tensor<4> {
    let flat: Vec<f32> = images.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [images.len(), 3, size, size]), device)
}

pub(super) fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec().expect("f32 tensor")
}

pub(super) fn probs_rows(v: Vec<f32>) -> Vec<[f32; NUM_CLASSES]> {
    v.chunks(NUM_CLASSES)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect()
}

/// The rows of a batch, each from one of the cached views drawn at random (view 0 when
/// there is only one).
pub(super) fn pick_views(
    views: &[Vec<f32>],
    batch: &[usize],
    dim: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<f32> {
    let mut x = Vec::with_capacity(batch.len() * dim);
    for &i in batch {
        let v = if views.len() > 1 {
            rng.random_range(0..views.len())
        } else {
            0
        };
        x.extend_from_slice(&views[v][i * dim..(i + 1) * dim]);
    }
    x
}

/// Inverse-frequency weights `N / (K n_g)` of group indices (`K`: the groups present).
pub(super) fn inverse_frequency(groups: &[usize], n_groups: usize) -> Vec<f32> {
    let mut cnt = vec![0usize; n_groups];
    for &g in groups {
        cnt[g] += 1;
    }
    let present = cnt.iter().filter(|&&c| c > 0).count().max(1);
    let n = groups.len() as f32;
    cnt.iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                n / (present as f32 * c as f32)
            }
        })
        .collect()
}

/// Label weights `N / (K n_l)` of the training labels (label indices, see
/// [`Label::index`]; `K` the labels present).
pub fn class_weights(labels: &[usize]) -> Vec<f32> {
    inverse_frequency(labels, NUM_LABELS)
}

/// Each training row's weight in the loss under `imbalance`.
pub fn row_weights(labels: &[usize], populations: &[Population], imbalance: Imbalance) -> Vec<f32> {
    match imbalance {
        Imbalance::Weighted => {
            let w = class_weights(labels);
            labels.iter().map(|&l| w[l]).collect()
        }
        Imbalance::Group => {
            let g: Vec<usize> = labels
                .iter()
                .zip(populations)
                .map(|(&l, p)| l * 2 + p.index())
                .collect();
            let w = inverse_frequency(&g, NUM_LABELS * 2);
            g.iter().map(|&k| w[k]).collect()
        }
        Imbalance::Balanced | Imbalance::None => vec![1.0; labels.len()],
    }
}

/// The training and validation rows of a run: the manifest's splits, or under `fold` the
/// other folds of train + val and this fold (patient-grouped, see [`crate::data::folds::folds`]).
pub fn run_rows(manifest: &Manifest, fold: Option<Fold>) -> (Vec<usize>, Vec<usize>) {
    match fold {
        None => (
            manifest.split_indices(Split::Train),
            manifest.split_indices(Split::Val),
        ),
        Some(f) => {
            let of = crate::data::folds::folds(manifest, f.of, f.seed);
            let pool = (0..manifest.records.len()).filter(|&i| of[i].is_some());
            let (val, train): (Vec<usize>, Vec<usize>) =
                pool.partition(|&i| of[i] == Some(f.index));
            (train, val)
        }
    }
}

/// The order of training rows for one epoch.
pub(super) fn epoch_order(
    labels: &[usize],
    imbalance: Imbalance,
    rng: &mut ChaCha8Rng,
) -> Vec<usize> {
    match imbalance {
        Imbalance::Balanced => {
            let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); NUM_LABELS];
            for (i, &l) in labels.iter().enumerate() {
                by_class[l].push(i);
            }
            let present: Vec<&Vec<usize>> = by_class.iter().filter(|v| !v.is_empty()).collect();
            let mut order: Vec<usize> = (0..labels.len())
                .map(|k| {
                    let c = present[k % present.len()];
                    c[rng.random_range(0..c.len())]
                })
                .collect();
            order.shuffle(rng);
            order
        }
        _ => {
            let mut order: Vec<usize> = (0..labels.len()).collect();
            order.shuffle(rng);
            order
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::loss::CrossEntropyLossConfig;

    pub(super) fn rows(v: Tensor<2>) -> Vec<f32> {
        v.into_data().try_to_vec::<f32>().unwrap()
    }

    /// With one allowed class per row it is Burn's weighted cross-entropy; with bacterial and
    /// viral allowed it is `-log(p_b + p_v)`, and its gradient is `softmax - q`, where `q` is
    /// the softmax renormalised over the allowed classes.
    #[test]
    pub(super) fn partial_cross_entropy_against_its_definition() {
        let ad = Device::flex().autodiff();
        let logits = [
            1.0f32, 2.0, 0.5, -1.0, 0.2, -0.3, 1.5, 3.0, -2.0, 0.0, 0.7, 0.1,
        ];
        let x = || Tensor::<2>::from_data(TensorData::new(logits.to_vec(), [3, 4]), &ad);
        let labels = [1usize, 3, 0];
        let w = [0.5f32, 2.0, 1.0];
        let onehot: Vec<f32> = labels
            .iter()
            .flat_map(|&l| (0..4).map(move |c| f32::from(u8::from(c == l))))
            .collect();
        let ours = partial_cross_entropy(
            x(),
            Tensor::from_data(TensorData::new(onehot, [3, 4]), &ad),
            Tensor::from_data(TensorData::new(w.to_vec(), [3]), &ad),
        );
        let burn = CrossEntropyLossConfig::new()
            .with_weights(Some(vec![w[2], w[0], 1.0, w[1]]))
            .init(&ad)
            .forward(
                x(),
                Tensor::from_data(TensorData::new(labels.map(|l| l as i64).to_vec(), [3]), &ad),
            );
        let (a, b): (f32, f32) = (ours.into_scalar(), burn.into_scalar());
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");

        // The partial label on the first row alone.
        let x0 = Tensor::<2>::from_data(TensorData::new(logits[..4].to_vec(), [1, 4]), &ad)
            .require_grad();
        let allowed = Label::Pneumonia.allowed().map(|a| f32::from(u8::from(a)));
        let loss = partial_cross_entropy(
            x0.clone(),
            Tensor::from_data(TensorData::new(allowed.to_vec(), [1, 4]), &ad),
            Tensor::from_data(TensorData::new(vec![3.0f32], [1]), &ad),
        );
        let e: Vec<f64> = logits[..4].iter().map(|&v| (v as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        let p: Vec<f64> = e.iter().map(|v| v / z).collect();
        let want = -(p[1] + p[2]).ln();
        let got: f32 = loss.clone().into_scalar();
        let got = got as f64;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        let g = loss.backward();
        let grad = rows(x0.grad(&g).unwrap());
        for c in 0..4 {
            let q = if allowed[c] > 0.0 {
                p[c] / (p[1] + p[2])
            } else {
                0.0
            };
            assert!(
                (grad[c] as f64 - (p[c] - q)).abs() < 1e-5,
                "class {c}: {} vs {}",
                grad[c],
                p[c] - q
            );
        }
    }

    #[test]
    pub(super) fn group_weights_balance_label_and_population() {
        use Population::*;
        let labels = [0, 0, 0, 0, 0, 0, 3, 3];
        let pops = [Child, Child, Child, Child, Adult, Adult, Adult, Adult];
        let w = row_weights(&labels, &pops, Imbalance::Group);
        // Three groups of 4, 2 and 2 images: each group's weights sum to 8 / 3.
        let sum = |idx: &[usize]| idx.iter().map(|&i| w[i]).sum::<f32>();
        for g in [&[0, 1, 2, 3][..], &[4, 5], &[6, 7]] {
            assert!((sum(g) - 8.0 / 3.0).abs() < 1e-5);
        }
        let w = row_weights(&labels, &pops, Imbalance::Weighted);
        assert!((w[0] - 8.0 / 12.0).abs() < 1e-6 && (w[6] - 2.0).abs() < 1e-6);
    }
}
