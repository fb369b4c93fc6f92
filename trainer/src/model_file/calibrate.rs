//! Temperature scaling (Guo et al., 2017): one scalar `T` fitted on the validation split so that
//! `softmax(logits / T)` minimises the negative log-likelihood, then folded into the head's last
//! layer, so that every reader of the model file (CLI, page, embeddable element) gets calibrated
//! probabilities without knowing about it. The predicted class never changes.

use burn::module::Param;
use burn::prelude::*;
use pneumoscope::NUM_CLASSES;
use pneumoscope::model::Classifier;

/// Mean negative log-likelihood of `labels` under `softmax(log(probs) * s)`.
///
/// Log-probabilities serve as logits: softmax ignores a per-row shift, so
/// `softmax(log p * s) = softmax(z * s)` for the logits `z` that gave `p`.
pub fn nll(probs: &[[f32; NUM_CLASSES]], labels: &[usize], s: f64) -> f64 {
    let mut total = 0.0;
    for (p, &y) in probs.iter().zip(labels) {
        let z: Vec<f64> = p.iter().map(|&v| (v as f64).max(1e-12).ln() * s).collect();
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        total += lse - z[y];
    }
    total / probs.len().max(1) as f64
}

/// The temperature minimising [`nll`] (searched over 0.05–20; the NLL is convex in `1 / T`,
/// so a golden-section search on `ln T` finds it).
pub fn fit_temperature(probs: &[[f32; NUM_CLASSES]], labels: &[usize]) -> f64 {
    let f = |ln_t: f64| nll(probs, labels, (-ln_t).exp());
    let (mut a, mut b) = (0.05f64.ln(), 20f64.ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..80 {
        if fc < fd {
            (b, d, fd) = (d, c, fc);
            c = b - g * (b - a);
            fc = f(c);
        } else {
            (a, c, fc) = (c, d, fd);
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    let t = ((a + b) / 2.0).exp();
    // Never worse than leaving the model as it is.
    if f(t.ln()) <= f(0.0) { t } else { 1.0 }
}

/// Divides the model's logits by `t` by scaling the head's last layer (the second linear
/// layer, or SqueezeNet's convolution, whose ReLU and average commute with a positive scale).
pub fn fold_temperature(mut model: Classifier, t: f64) -> Classifier {
    assert!(t > 0.0, "a temperature is positive");
    let s = (1.0 / t) as f32;
    let scale = |p: Param<Tensor<2>>| p.map(|w| w * s);
    if let Some(fc2) = model.head.fc2.as_mut() {
        fc2.weight = scale(fc2.weight.clone());
        fc2.bias = fc2.bias.clone().map(|b| b.map(|v| v * s));
    }
    if let Some(conv) = model.head.conv.as_mut() {
        conv.weight = conv.weight.clone().map(|w| w * s);
        conv.bias = conv.bias.clone().map(|b| b.map(|v| v * s));
    }
    model
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softmax(z: &[f64]) -> [f32; NUM_CLASSES] {
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        [0, 1, 2, 3].map(|i| (e[i] / s) as f32)
    }

    #[test]
    fn recovers_the_temperature_of_overconfident_probabilities() {
        // Labels drawn from softmax(z); the model reports softmax(3 z): T = 3 undoes it.
        let mut state = 7u64;
        let mut uniform = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut probs, mut labels) = (Vec::new(), Vec::new());
        for _ in 0..4000 {
            let z: Vec<f64> = (0..NUM_CLASSES).map(|_| 2.0 * uniform() - 1.0).collect();
            let p = softmax(&z);
            let (mut u, mut y) = (uniform() as f32, 0);
            while y < NUM_CLASSES - 1 && u > p[y] {
                u -= p[y];
                y += 1;
            }
            labels.push(y);
            probs.push(softmax(&z.iter().map(|v| 3.0 * v).collect::<Vec<_>>()));
        }
        let t = fit_temperature(&probs, &labels);
        assert!((t - 3.0).abs() < 0.3, "T = {t}");
        assert!(nll(&probs, &labels, 1.0 / t) < nll(&probs, &labels, 1.0));
    }
}
