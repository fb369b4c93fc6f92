//! Fitting the out-of-distribution statistics of a model at export (see [`pneumoscope::ood`]):
//! a probabilistic-PCA Gaussian of the training images' pooled features, with the threshold
//! set on the validation split.

use crate::data::{Manifest, Split, cache};
use crate::train::{Extract, FeatureSource, extract_features};
use anyhow::{Result, bail};
use burn::prelude::*;
use nalgebra::{DMatrix, SymmetricEigen};
use pneumoscope::arch::ArchSpec;
use pneumoscope::model::Classifier;
use pneumoscope::ood::{Calibration, OodStats};

/// Principal directions kept (fewer when there are fewer training images).
pub const COMPONENTS: usize = 64;
/// Share of the validation images below the threshold.
pub const QUANTILE: f64 = 0.99;

/// The pooled features (the global average of the Grad-CAM target) of the training and
/// validation rows of a manifest: what the out-of-distribution statistics and the population
/// estimate are fitted on.
pub struct Pooled {
    /// Feature dimension.
    pub dim: usize,
    /// Training rows (manifest indices).
    pub train: Vec<usize>,
    /// Their features, `[train.len(), dim]` row-major.
    pub train_features: Vec<f32>,
    /// Validation rows.
    pub val: Vec<usize>,
    /// Their features.
    pub val_features: Vec<f32>,
}

/// Computes [`Pooled`] for `model` on `manifest`.
pub fn pooled(
    model: &Classifier,
    spec: &ArchSpec,
    manifest: &Manifest,
    framing: &cache::Framing,
    device: &Device,
) -> Result<Pooled> {
    let train = manifest.split_indices(Split::Train);
    if train.len() < 2 {
        bail!(
            "the out-of-distribution statistics need at least 2 training images; the manifest in {} has {}",
            manifest.root.display(),
            train.len()
        );
    }
    let squares = cache::load_or_build(manifest, spec.input.resize, framing)?;
    let val = manifest.split_indices(Split::Val);
    let src = FeatureSource {
        backbone: &model.backbone,
        spec,
        squares: &squares,
        device,
    };
    let features =
        |rows: &[usize], label: &str| extract_features(Extract::Pooled, &src, rows, None, label);
    Ok(Pooled {
        dim: spec.feature_dim,
        train_features: features(&train, "training-data statistics: train"),
        val_features: features(&val, "training-data statistics: val"),
        train,
        val,
    })
}

/// Fits the statistics on the training rows of `pooled` and calibrates the threshold on its
/// validation rows (on the training rows when there are none, which the calibration record
/// then says).
pub fn fit(pooled: &Pooled) -> Result<OodStats> {
    let d = pooled.dim;
    let train = &pooled.train;
    let mut stats = fit_gaussian(&pooled.train_features, d, COMPONENTS);
    let (split, rows, features) = if pooled.val.is_empty() {
        ("train", train.len(), &pooled.train_features)
    } else {
        ("val", pooled.val.len(), &pooled.val_features)
    };
    let mut distances: Vec<f64> = features
        .chunks_exact(d)
        .map(|f| stats.distance(f) as f64)
        .collect();
    distances.sort_by(f64::total_cmp);
    stats.threshold = crate::metrics::percentile(&distances, QUANTILE) as f32;
    stats.calibration = Calibration {
        fit_split: "train".into(),
        fit_n: train.len(),
        threshold_split: split.into(),
        threshold_n: rows,
        quantile: QUANTILE,
    };
    stats
        .validate(d)
        .map_err(|e| anyhow::anyhow!("fitting the out-of-distribution statistics: {e}"))?;
    Ok(stats)
}

/// The probabilistic-PCA Gaussian of `n` feature rows of dimension `d` (row-major), keeping at
/// most `k` directions. The threshold is left at 1 and the calibration empty.
pub fn fit_gaussian(features: &[f32], d: usize, k: usize) -> OodStats {
    let n = features.len() / d;
    let x = DMatrix::from_row_iterator(n, d, features.iter().map(|&v| v as f64));
    let mean = x.row_mean();
    let centred = DMatrix::from_fn(n, d, |i, j| x[(i, j)] - mean[j]);
    let cov = centred.tr_mul(&centred) / (n.saturating_sub(1).max(1) as f64);
    let eig = SymmetricEigen::new(cov);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let largest = eig.eigenvalues[order[0]].max(1e-12);
    // Directions with (almost) no variance carry no information about the data and would make
    // the distance explode: keep at most n - 1, and none below a millionth of the largest.
    let floor = largest * 1e-6;
    let k = k.min(n.saturating_sub(1)).min(d - 1).min(
        order
            .iter()
            .filter(|&&i| eig.eigenvalues[i] > floor)
            .count(),
    );
    let kept = &order[..k];
    let rest: f64 = order[k..]
        .iter()
        .map(|&i| eig.eigenvalues[i].max(0.0))
        .sum::<f64>()
        / (d - k) as f64;
    let mut basis = Vec::with_capacity(k * d);
    for &i in kept {
        basis.extend(eig.eigenvectors.column(i).iter().map(|&v| v as f32));
    }
    OodStats {
        method: "ppca-mahalanobis".into(),
        dim: d,
        mean: mean.iter().map(|&v| v as f32).collect(),
        basis,
        variances: kept.iter().map(|&i| eig.eigenvalues[i] as f32).collect(),
        residual_variance: rest.max(floor) as f32,
        threshold: 1.0,
        calibration: Calibration {
            fit_split: "train".into(),
            fit_n: n,
            threshold_split: String::new(),
            threshold_n: 0,
            quantile: 0.0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn gaussian_data_scores_near_one_and_outliers_far_above() {
        // 500 samples of a 10-dimensional Gaussian with very different variances per axis.
        let d = 10;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let sd: Vec<f64> = (0..d).map(|i| 0.1 + i as f64).collect();
        let sample = |rng: &mut ChaCha8Rng| -> Vec<f32> {
            (0..d)
                .map(|i| {
                    // Box-Muller.
                    let (u, v): (f64, f64) = (rng.random_range(1e-9..1.0), rng.random());
                    let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
                    (3.0 + z * sd[i]) as f32
                })
                .collect()
        };
        let train: Vec<f32> = (0..500).flat_map(|_| sample(&mut rng)).collect();
        let stats = fit_gaussian(&train, d, 4);
        assert_eq!(stats.variances.len(), 4);
        // The kept variances are the largest ones, about (d-1)^2, (d-2)^2, ...
        assert!((stats.variances[0] as f64 / 81.0 - 1.0).abs() < 0.2);
        // Fresh samples: mean squared distance ≈ 1 (distance² is a chi-square / d).
        let fresh: Vec<f32> = (0..500)
            .map(|_| stats.distance(&sample(&mut rng)).powi(2))
            .collect();
        let mean = fresh.iter().sum::<f32>() / fresh.len() as f32;
        assert!((0.8..1.25).contains(&mean), "mean squared distance {mean}");
        // A point 3 standard deviations out on every axis is far away.
        let outlier: Vec<f32> = (0..d).map(|i| (3.0 + 3.0 * sd[i]) as f32).collect();
        assert!(stats.distance(&outlier) > 2.0);
    }

    #[test]
    fn fewer_samples_than_dimensions_stay_finite() {
        let d = 50;
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let train: Vec<f32> = (0..8 * d).map(|_| rng.random::<f32>()).collect();
        let stats = fit_gaussian(&train, d, 64);
        assert!(stats.variances.len() <= 7);
        assert!(stats.validate(d).is_ok());
        assert!(stats.distance(&train[..d]).is_finite());
    }
}
