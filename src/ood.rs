//! Out-of-distribution score: how unlike the training X-rays an image is, measured in the
//! backbone's pooled feature space.
//!
//! The statistics are fitted by `pneumoscope export` and stored in the model file
//! ([`crate::model_file::ModelHeader::ood`]): the mean of the training images' pooled features,
//! the top `k` principal directions with their variances, and the mean variance of the
//! remaining directions (a probabilistic-PCA Gaussian). An image's distance is the Mahalanobis
//! distance under that Gaussian, divided by the square root of the feature dimension:
//!
//! `distance² = (Σᵢ zᵢ² / λᵢ + ‖r‖² / σ²) / d`, with `z` the coordinates of `f − mean` on the
//! principal directions, `λ` their variances, `r` the rest of `f − mean` and `σ²` the residual
//! variance.
//!
//! The threshold is calibrated on images the fit never saw (the validation split): the distance
//! that a fixed share of them (for example 99%) stay below. `score = distance / threshold`, so a
//! score above 1 means "further from the training data than almost every validation X-ray", and
//! the image is flagged: a photo, a CT slice, a lateral view or an image from a very different
//! population. A flagged image's prediction should not be trusted.

use crate::error::Error;
use serde::{Deserialize, Serialize};

/// The fitted statistics (stored in the model file).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OodStats {
    /// Method name, `ppca-mahalanobis`.
    pub method: String,
    /// Feature dimension `d`.
    pub dim: usize,
    /// Mean feature vector, `d` values (stored as base64 of little-endian f32).
    #[serde(with = "f32_base64")]
    pub mean: Vec<f32>,
    /// Principal directions, `k` rows of `d` values (row-major, unit length; stored as base64
    /// of little-endian f32).
    #[serde(with = "f32_base64")]
    pub basis: Vec<f32>,
    /// Variance along each principal direction, `k` values.
    pub variances: Vec<f32>,
    /// Mean variance of the directions not kept.
    pub residual_variance: f32,
    /// Distance at the calibration quantile: `score = distance / threshold`.
    pub threshold: f32,
    /// Where the statistics and the threshold come from.
    pub calibration: Calibration,
}

/// How the statistics were fitted and the threshold chosen.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    /// Split the Gaussian was fitted on (`train`).
    pub fit_split: String,
    /// Images in it.
    pub fit_n: usize,
    /// Split the threshold was chosen on (`val`).
    pub threshold_split: String,
    /// Images in it.
    pub threshold_n: usize,
    /// Share of that split below the threshold (e.g. 0.99).
    pub quantile: f64,
}

/// The score of one image.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct OodScore {
    /// `distance / threshold`: above 1 is out of distribution.
    pub score: f32,
    /// Whether `score > 1`.
    pub flagged: bool,
}

impl OodStats {
    /// Number of principal directions kept.
    pub fn components(&self) -> usize {
        self.variances.len()
    }

    /// Checks that the sizes agree (a model file is untrusted input).
    pub fn validate(&self, feature_dim: usize) -> crate::Result<()> {
        let d = self.dim;
        let k = self.components();
        if d != feature_dim {
            return Err(Error::InvalidHeader(format!(
                "out-of-distribution statistics of dimension {d}, the architecture has {feature_dim} features"
            )));
        }
        if self.mean.len() != d || self.basis.len() != k * d {
            return Err(Error::InvalidHeader(format!(
                "out-of-distribution statistics have inconsistent sizes (mean {}, basis {} for {k} x {d})",
                self.mean.len(),
                self.basis.len()
            )));
        }
        let positive = |v: f32| v.is_finite() && v > 0.0;
        if !self.variances.iter().all(|&v| positive(v))
            || !positive(self.residual_variance)
            || !positive(self.threshold)
        {
            return Err(Error::InvalidHeader(
                "out-of-distribution statistics have non-positive variances".into(),
            ));
        }
        Ok(())
    }

    /// The distance of one pooled feature vector (`d` values) from the training data.
    pub fn distance(&self, features: &[f32]) -> f32 {
        let d = self.dim;
        let centred: Vec<f64> = features
            .iter()
            .zip(&self.mean)
            .map(|(f, m)| (*f - *m) as f64)
            .collect();
        let total: f64 = centred.iter().map(|v| v * v).sum();
        let mut explained = 0.0f64;
        let mut d2 = 0.0f64;
        for (row, &var) in self.basis.chunks_exact(d).zip(&self.variances) {
            let z: f64 = row.iter().zip(&centred).map(|(b, c)| *b as f64 * c).sum();
            explained += z * z;
            d2 += z * z / var as f64;
        }
        let residual = (total - explained).max(0.0);
        d2 += residual / self.residual_variance as f64;
        ((d2 / d as f64).sqrt()) as f32
    }

    /// The score of one pooled feature vector.
    pub fn score(&self, features: &[f32]) -> OodScore {
        let score = self.distance(features) / self.threshold;
        OodScore {
            score,
            // A non-finite distance (from non-finite features) is flagged too.
            flagged: score > 1.0 || score.is_nan(),
        }
    }
}

/// Long `f32` arrays in the JSON header as base64 of their little-endian bytes: a quarter of
/// the size of decimal text, and exact.
pub(crate) mod f32_base64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &[f32], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = STANDARD.decode(text.as_bytes()).map_err(D::Error::custom)?;
        if bytes.len() % 4 != 0 {
            return Err(D::Error::custom(
                "a base64 float array whose length is not a multiple of 4 bytes",
            ));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> OodStats {
        // Two dimensions; one principal direction along x with variance 4, residual variance 1.
        OodStats {
            method: "ppca-mahalanobis".into(),
            dim: 2,
            mean: vec![1.0, 1.0],
            basis: vec![1.0, 0.0],
            variances: vec![4.0],
            residual_variance: 1.0,
            threshold: 2.0,
            calibration: Calibration {
                fit_split: "train".into(),
                fit_n: 10,
                threshold_split: "val".into(),
                threshold_n: 10,
                quantile: 0.99,
            },
        }
    }

    #[test]
    fn distance_is_the_scaled_mahalanobis_distance() {
        let s = stats();
        assert_eq!(s.distance(&[1.0, 1.0]), 0.0);
        // z = 2 along x (variance 4) → 1; residual 3 along y (variance 1) → 9; (1 + 9) / 2 = 5.
        assert!((s.distance(&[3.0, 4.0]) - 5f32.sqrt()).abs() < 1e-6);
        let near = s.score(&[1.5, 1.0]);
        assert!(!near.flagged && near.score < 1.0);
        let far = s.score(&[1.0, 5.0]);
        assert!(far.flagged && far.score > 1.0);
        // A non-finite feature is flagged, never silently accepted.
        assert!(s.score(&[f32::NAN, 1.0]).flagged);
    }

    #[test]
    fn statistics_survive_json_exactly() {
        let mut s = stats();
        s.mean = vec![0.1, -3.25e-7];
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains(r#""mean":"zczMPal7rrQ=""#), "{text}");
        assert_eq!(serde_json::from_str::<OodStats>(&text).unwrap(), s);
        let broken = text.replace("zczMPal7rrQ=", "zczMPal7rr");
        assert!(serde_json::from_str::<OodStats>(&broken).is_err());
    }

    #[test]
    fn inconsistent_statistics_are_refused() {
        let s = stats();
        assert!(s.validate(2).is_ok());
        assert!(s.validate(3).is_err());
        let mut bad = s.clone();
        bad.basis.pop();
        assert!(bad.validate(2).is_err());
        let mut bad = s;
        bad.variances[0] = 0.0;
        assert!(bad.validate(2).is_err());
    }
}
