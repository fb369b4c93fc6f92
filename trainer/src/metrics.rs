//! Classification metrics: accuracy, per-class precision / recall / F1 / specificity / support,
//! macro and weighted averages, one-vs-rest ROC-AUC, expected calibration error, and bootstrap
//! confidence intervals that resample *patients* (images of one patient are not independent).

use pneumoscope::{Class, NUM_CLASSES};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::BTreeMap;

/// Per-class figures.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClassMetrics {
    /// Precision.
    pub precision: f64,
    /// Recall (sensitivity).
    pub recall: f64,
    /// F1.
    pub f1: f64,
    /// Specificity.
    pub specificity: f64,
    /// One-vs-rest ROC-AUC (NaN when the class or its complement is absent).
    pub auc: f64,
    /// Number of images of the class.
    pub support: usize,
}

/// A 95% interval.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Interval {
    /// 2.5th percentile.
    pub low: f64,
    /// 97.5th percentile.
    pub high: f64,
}

/// All metrics of one evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct Metrics {
    /// Number of images.
    pub n: usize,
    /// Number of patients.
    pub patients: usize,
    /// Accuracy.
    pub accuracy: f64,
    /// Macro-averaged F1.
    pub macro_f1: f64,
    /// Support-weighted F1.
    pub weighted_f1: f64,
    /// Support-weighted precision.
    pub weighted_precision: f64,
    /// Support-weighted recall.
    pub weighted_recall: f64,
    /// Macro-averaged one-vs-rest ROC-AUC.
    pub macro_auc: f64,
    /// Expected calibration error (15 equal-width bins of top-class confidence).
    pub ece: f64,
    /// 95% bootstrap interval of macro-F1 (patients resampled).
    pub macro_f1_ci: Interval,
    /// 95% bootstrap interval of accuracy (patients resampled).
    pub accuracy_ci: Interval,
    /// Per class, by name.
    pub per_class: BTreeMap<String, ClassMetrics>,
    /// Confusion matrix, rows = true class, columns = predicted class, in class order.
    pub confusion: [[usize; NUM_CLASSES]; NUM_CLASSES],
}

/// The index of the most probable class.
pub fn argmax(p: &[f32; NUM_CLASSES]) -> usize {
    (0..NUM_CLASSES)
        .max_by(|&a, &b| p[a].total_cmp(&p[b]))
        .unwrap()
}

/// Confusion matrix of predictions (rows with a partial label are left out).
pub fn confusion(
    probs: &[[f32; NUM_CLASSES]],
    labels: &[usize],
) -> [[usize; NUM_CLASSES]; NUM_CLASSES] {
    let mut m = [[0usize; NUM_CLASSES]; NUM_CLASSES];
    for (p, &l) in probs.iter().zip(labels) {
        // A partial label (pneumonia of unknown pathogen) has no row of its own.
        if l < NUM_CLASSES {
            m[l][argmax(p)] += 1;
        }
    }
    m
}

fn div(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

/// True positives, false positives and false negatives of class `c`.
fn tp_fp_fn(m: &[[usize; NUM_CLASSES]; NUM_CLASSES], c: usize) -> (f64, f64, f64) {
    let tp = m[c][c] as f64;
    let fp: f64 = (0..NUM_CLASSES)
        .filter(|&r| r != c)
        .map(|r| m[r][c] as f64)
        .sum();
    let fneg: f64 = (0..NUM_CLASSES)
        .filter(|&k| k != c)
        .map(|k| m[c][k] as f64)
        .sum();
    (tp, fp, fneg)
}

/// Accuracy and macro-F1 from a confusion matrix.
pub fn acc_f1(m: &[[usize; NUM_CLASSES]; NUM_CLASSES]) -> (f64, f64) {
    let total: usize = m.iter().flatten().sum();
    let correct: usize = (0..NUM_CLASSES).map(|i| m[i][i]).sum();
    let mut f1 = 0.0;
    for c in 0..NUM_CLASSES {
        let (tp, fp, fneg) = tp_fp_fn(m, c);
        f1 += div(2.0 * tp, 2.0 * tp + fp + fneg);
    }
    (div(correct as f64, total as f64), f1 / NUM_CLASSES as f64)
}

/// One-vs-rest ROC-AUC by the rank statistic (ties count one half).
pub fn auc(scores: &[f32], positive: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut ranks = vec![0f64; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[idx[k]] = r;
        }
        i = j + 1;
    }
    let np = positive.iter().filter(|&&p| p).count() as f64;
    let nn = positive.len() as f64 - np;
    if np == 0.0 || nn == 0.0 {
        return f64::NAN;
    }
    let sum: f64 = ranks
        .iter()
        .zip(positive)
        .filter(|(_, p)| **p)
        .map(|(r, _)| r)
        .sum();
    (sum - np * (np + 1.0) / 2.0) / (np * nn)
}

/// Expected calibration error over 15 bins of top-class confidence.
pub fn ece(probs: &[[f32; NUM_CLASSES]], labels: &[usize]) -> f64 {
    const BINS: usize = 15;
    let mut conf = [0f64; BINS];
    let mut acc = [0f64; BINS];
    let mut cnt = [0usize; BINS];
    for (p, &l) in probs.iter().zip(labels) {
        let k = argmax(p);
        let c = p[k] as f64;
        let b = ((c * BINS as f64) as usize).min(BINS - 1);
        conf[b] += c;
        acc[b] += (k == l) as u8 as f64;
        cnt[b] += 1;
    }
    let n = labels.len().max(1) as f64;
    (0..BINS)
        .filter(|&b| cnt[b] > 0)
        .map(|b| (acc[b] - conf[b]).abs() / n)
        .sum()
}

/// The `q` quantile of sorted values (linear interpolation between order statistics).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Computes every metric. `patients` groups images for the bootstrap (1000 resamples, seeded).
pub fn compute(probs: &[[f32; NUM_CLASSES]], labels: &[usize], patients: &[String]) -> Metrics {
    // Rows with a partial label (index NUM_CLASSES: pneumonia of unknown pathogen) have no
    // class to score against; they are reported by `crate::study::breakdown`.
    let keep: Vec<usize> = (0..labels.len())
        .filter(|&i| labels[i] < NUM_CLASSES)
        .collect();
    if keep.len() < labels.len() {
        let pick = |v: &[usize]| keep.iter().map(|&i| v[i]).collect::<Vec<_>>();
        let probs: Vec<_> = keep.iter().map(|&i| probs[i]).collect();
        let pats: Vec<String> = keep.iter().map(|&i| patients[i].clone()).collect();
        return compute(&probs, &pick(labels), &pats);
    }
    let m = confusion(probs, labels);
    let (accuracy, macro_f1) = acc_f1(&m);
    let n = labels.len();
    let mut per_class = BTreeMap::new();
    let (mut wf1, mut wp, mut wr) = (0.0, 0.0, 0.0);
    let mut aucs = Vec::new();
    for c in 0..NUM_CLASSES {
        let cm = class_metrics(&m, probs, labels, c);
        if cm.auc.is_finite() {
            aucs.push(cm.auc);
        }
        let w = cm.support as f64 / n.max(1) as f64;
        wf1 += w * cm.f1;
        wp += w * cm.precision;
        wr += w * cm.recall;
        per_class.insert(Class::ALL[c].name().to_string(), cm);
    }
    let Bootstrap {
        patients: groups,
        macro_f1: f1s,
        accuracy: accs,
    } = bootstrap(probs, labels, patients);
    Metrics {
        n,
        patients: groups,
        accuracy,
        macro_f1,
        weighted_f1: wf1,
        weighted_precision: wp,
        weighted_recall: wr,
        macro_auc: if aucs.is_empty() {
            f64::NAN
        } else {
            aucs.iter().sum::<f64>() / aucs.len() as f64
        },
        ece: ece(probs, labels),
        macro_f1_ci: Interval {
            low: percentile(&f1s, 0.025),
            high: percentile(&f1s, 0.975),
        },
        accuracy_ci: Interval {
            low: percentile(&accs, 0.025),
            high: percentile(&accs, 0.975),
        },
        per_class,
        confusion: m,
    }
}

/// Class `c`'s one-vs-rest metrics from the confusion matrix `m` (AUC from the scores).
fn class_metrics(
    m: &[[usize; NUM_CLASSES]; NUM_CLASSES],
    probs: &[[f32; NUM_CLASSES]],
    labels: &[usize],
    c: usize,
) -> ClassMetrics {
    let (tp, fp, fneg) = tp_fp_fn(m, c);
    let tn = labels.len() as f64 - tp - fp - fneg;
    let scores: Vec<f32> = probs.iter().map(|p| p[c]).collect();
    let pos: Vec<bool> = labels.iter().map(|&l| l == c).collect();
    ClassMetrics {
        precision: div(tp, tp + fp),
        recall: div(tp, tp + fneg),
        f1: div(2.0 * tp, 2.0 * tp + fp + fneg),
        specificity: div(tn, tn + fp),
        auc: auc(&scores, &pos),
        support: m[c].iter().sum::<usize>(),
    }
}

/// The bootstrap over patients: how many there are, and the sorted macro-F1 and accuracy of
/// each resample.
struct Bootstrap {
    patients: usize,
    macro_f1: Vec<f64>,
    accuracy: Vec<f64>,
}

/// 1000 resamples of the patients (seeded), each image of a drawn patient counted.
fn bootstrap(probs: &[[f32; NUM_CLASSES]], labels: &[usize], patients: &[String]) -> Bootstrap {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in patients.iter().enumerate() {
        groups.entry(p.as_str()).or_default().push(i);
    }
    let groups: Vec<Vec<usize>> = groups.into_values().collect();
    let mut rng = ChaCha8Rng::seed_from_u64(12345);
    let (mut f1s, mut accs) = (Vec::new(), Vec::new());
    if !groups.is_empty() {
        for _ in 0..1000 {
            let mut mm = [[0usize; NUM_CLASSES]; NUM_CLASSES];
            for _ in 0..groups.len() {
                for &i in &groups[rng.random_range(0..groups.len())] {
                    mm[labels[i]][argmax(&probs[i])] += 1;
                }
            }
            let (a, f) = acc_f1(&mm);
            accs.push(a);
            f1s.push(f);
        }
    }
    f1s.sort_by(f64::total_cmp);
    accs.sort_by(f64::total_cmp);
    Bootstrap {
        patients: groups.len(),
        macro_f1: f1s,
        accuracy: accs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert_eq!(percentile(&v, 1.0), 5.0);
        assert_eq!(percentile(&v, 0.875), 4.5);
    }

    #[test]
    fn auc_matches_hand_computation() {
        // Perfect, inverted and tied rankings.
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), 1.0);
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), 0.0);
        assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &[false, true, false, true]), 0.5);
        // 3 positives, 2 negatives: pairs (p > n) = 5 of 6.
        let a = auc(
            &[0.9, 0.3, 0.7, 0.4, 0.2],
            &[true, true, true, false, false],
        );
        assert!((a - 5.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn f1_and_confusion_on_a_known_case() {
        let p = |c: usize| {
            let mut v = [0.0f32; 4];
            v[c] = 1.0;
            v
        };
        let probs = vec![p(0), p(0), p(1), p(1), p(2), p(3), p(2)];
        let labels = vec![0, 1, 1, 1, 2, 3, 3];
        let pats: Vec<String> = (0..7).map(|i| format!("p{i}")).collect();
        let m = compute(&probs, &labels, &pats);
        assert_eq!(m.confusion[1][0], 1);
        assert!((m.accuracy - 5.0 / 7.0).abs() < 1e-12);
        // F1: normal 2/3, bacterial 4/5, viral 2/3, covid 2/3.
        let expect = (2.0 / 3.0 + 0.8 + 2.0 / 3.0 + 2.0 / 3.0) / 4.0;
        assert!((m.macro_f1 - expect).abs() < 1e-12);
        assert!(m.macro_f1_ci.low <= m.macro_f1 && m.macro_f1 <= m.macro_f1_ci.high);
        assert!((m.per_class["bacterial"].specificity - 1.0).abs() < 1e-12);
    }
}
