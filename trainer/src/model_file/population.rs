//! Fitting the population estimate of a model at export (see [`pneumoscope::population`]): a
//! logistic regression of child vs adult on the standardised pooled features of the training
//! rows, each population weighted equally, with its accuracy per source on the validation rows;
//! and the training images per class and population.

use crate::data::{Manifest, Population};
use crate::model_file::ood::Pooled;
use anyhow::{Result, bail};
use pneumoscope::NUM_CLASSES;
use pneumoscope::population::{MIN_TRAINING_IMAGES, PopulationModel, counts_map};
use std::collections::BTreeMap;

/// Gradient-descent steps of the fit.
const STEPS: usize = 400;
/// Step size.
const RATE: f32 = 0.5;
/// L2 penalty on the weights.
const L2: f32 = 1e-3;

/// Fits the estimate on `pooled`'s training rows; records the training counts of `manifest`'s
/// training rows (partial labels are not counted under any class).
pub fn fit(pooled: &Pooled, manifest: &Manifest) -> Result<PopulationModel> {
    let d = pooled.dim;
    let y: Vec<f32> = pooled
        .train
        .iter()
        .map(|&i| {
            f32::from(u8::from(
                manifest.records[i].population() == Population::Adult,
            ))
        })
        .collect();
    let n = y.len();
    let adults = y.iter().filter(|&&v| v > 0.5).count();
    let mut model = PopulationModel {
        method: "logistic-regression".into(),
        dim: d,
        mean: vec![0.0; d],
        inv_std: vec![1.0; d],
        weights: vec![0.0; d],
        bias: 0.0,
        training_counts: counts_map(&training_counts(pooled, manifest)),
        min_training_images: MIN_TRAINING_IMAGES,
        fit: serde_json::Value::Null,
    };
    if adults == 0 || adults == n {
        // One population only: nothing to tell apart; the estimate says that population.
        let p = if adults == 0 { -20.0 } else { 20.0 };
        model.bias = p;
        model.fit = serde_json::json!({
            "split": "train", "images": n,
            "note": "the training data hold one population only; the estimate always names it",
        });
        return Ok(model);
    }
    let z = standardise(&mut model, &pooled.train_features, n);
    descend(&mut model, &z, &y, adults);
    if model.weights.iter().any(|v| !v.is_finite()) || !model.bias.is_finite() {
        bail!("fitting the population estimate diverged");
    }
    // Accuracy per source (and per population) on the validation rows.
    let (rows, feats, split) = if pooled.val.is_empty() {
        (&pooled.train, &pooled.train_features, "train")
    } else {
        (&pooled.val, &pooled.val_features, "val")
    };
    let accuracy = accuracy(&model, manifest, rows, feats);
    model.fit = serde_json::json!({
        "fitted_on": "train", "images": n, "adults": adults,
        "evaluated_on": split, "accuracy": accuracy,
    });
    Ok(model)
}

/// The training images per class and population (partial labels under no class).
fn training_counts(pooled: &Pooled, manifest: &Manifest) -> [[usize; 2]; NUM_CLASSES] {
    let mut counts = [[0usize; 2]; NUM_CLASSES];
    for &i in &pooled.train {
        let r = &manifest.records[i];
        if let Some(c) = r.label.class() {
            counts[c.index()][r.population().index()] += 1;
        }
    }
    counts
}

/// Sets `model`'s per-feature mean and inverse deviation from the `n` rows of `x`; returns the
/// standardised rows.
fn standardise(model: &mut PopulationModel, x: &[f32], n: usize) -> Vec<f32> {
    let d = model.dim;
    for j in 0..d {
        let (mut s, mut s2) = (0f64, 0f64);
        for r in 0..n {
            let v = x[r * d + j] as f64;
            s += v;
            s2 += v * v;
        }
        let mean = s / n as f64;
        let var = (s2 / n as f64 - mean * mean).max(0.0);
        model.mean[j] = mean as f32;
        model.inv_std[j] = (1.0 / (var.sqrt() + 1e-6)) as f32;
    }
    (0..n * d)
        .map(|k| (x[k] - model.mean[k % d]) * model.inv_std[k % d])
        .collect()
}

/// [`STEPS`] steps of full-batch gradient descent on the weighted, L2-penalised logistic loss of
/// the standardised rows `z` against `y` (1 = adult), each population weighing one half.
fn descend(model: &mut PopulationModel, z: &[f32], y: &[f32], adults: usize) {
    let d = model.dim;
    let n = y.len();
    let w_adult = 0.5 / adults as f32;
    let w_child = 0.5 / (n - adults) as f32;
    for _ in 0..STEPS {
        let mut g = vec![0f32; d];
        let mut gb = 0f32;
        for r in 0..n {
            let row = &z[r * d..(r + 1) * d];
            let logit: f32 = row
                .iter()
                .zip(&model.weights)
                .map(|(a, b)| a * b)
                .sum::<f32>()
                + model.bias;
            let p = 1.0 / (1.0 + (-logit).exp());
            let w = if y[r] > 0.5 { w_adult } else { w_child };
            let e = w * (p - y[r]);
            for (gj, zj) in g.iter_mut().zip(row) {
                *gj += e * zj;
            }
            gb += e;
        }
        for (wj, gj) in model.weights.iter_mut().zip(&g) {
            *wj -= RATE * (gj + L2 * *wj);
        }
        model.bias -= RATE * gb;
    }
}

/// How often the estimate names the right population, per source and per population, on `rows`
/// of `manifest` with their pooled features `feats`.
fn accuracy(
    model: &PopulationModel,
    manifest: &Manifest,
    rows: &[usize],
    feats: &[f32],
) -> BTreeMap<String, serde_json::Value> {
    let d = model.dim;
    let mut per: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (k, &i) in rows.iter().enumerate() {
        let r = &manifest.records[i];
        let est = model.estimate(&feats[k * d..(k + 1) * d]);
        let ok = est.population == r.population().name();
        for key in [
            format!("source:{}", r.source),
            format!("population:{}", r.population()),
        ] {
            let e = per.entry(key).or_default();
            e.0 += usize::from(ok);
            e.1 += 1;
        }
    }
    per.into_iter()
        .map(|(k, (ok, n))| {
            (
                k,
                serde_json::json!({"correct": ok, "images": n, "accuracy": ok as f64 / n as f64}),
            )
        })
        .collect()
}
