//! Whose X-ray is it, a child's or an adult's, and does the model know enough of that
//! population to say what it says?
//!
//! The public data mix populations unevenly: every COVID-19 image is an adult's, most
//! paediatric images are pneumonia, and adult bacterial or viral pneumonia with a known pathogen
//! is rare. A model file therefore records, per class, how many of its training images came
//! from children and from adults ([`PopulationModel::training_counts`]), and carries a small
//! logistic regression on the backbone's pooled features that estimates an image's population
//! (fitted by `pneumoscope export` on the training split; its accuracy per source, measured on
//! the validation split, is recorded beside it).
//!
//! When the predicted class had fewer than [`PopulationModel::min_training_images`] training
//! images from the image's estimated population, the prediction carries a *caution*: the model
//! has seen too few such cases for its probability to mean much. An adult X-ray called COVID-19
//! carries none (adult COVID-19 images are plentiful in training), so the caution never
//! excuses that error.

use crate::classes::{Class, NUM_CLASSES};
use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Default [`PopulationModel::min_training_images`].
pub const MIN_TRAINING_IMAGES: usize = 100;

/// The population estimate and the training counts (stored in the model file header).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PopulationModel {
    /// Method name, `logistic-regression`.
    pub method: String,
    /// Feature dimension `d` (the pooled Grad-CAM target).
    pub dim: usize,
    /// Mean of each feature over the fit's images (base64 of little-endian f32).
    #[serde(with = "crate::ood::f32_base64")]
    pub mean: Vec<f32>,
    /// One over the standard deviation of each feature (base64 of little-endian f32).
    #[serde(with = "crate::ood::f32_base64")]
    pub inv_std: Vec<f32>,
    /// Weights on the standardised features (base64 of little-endian f32).
    #[serde(with = "crate::ood::f32_base64")]
    pub weights: Vec<f32>,
    /// Bias: `P(adult) = sigmoid(weights · (f - mean) * inv_std + bias)`.
    pub bias: f32,
    /// Training images per class (by name) and population: `{"viral": {"child": 756, "adult": 9}}`.
    pub training_counts: BTreeMap<String, BTreeMap<String, usize>>,
    /// A class with fewer training images than this from the image's population is cautioned.
    pub min_training_images: usize,
    /// How the estimate was fitted and how well it does (free-form JSON: split, images,
    /// accuracy per source on the validation split).
    pub fit: serde_json::Value,
}

/// The estimate for one image.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct PopulationEstimate {
    /// Probability that the X-ray is an adult's.
    pub adult_probability: f32,
    /// `adult` when `adult_probability >= 0.5`, else `child`.
    pub population: &'static str,
}

impl PopulationEstimate {
    /// The estimate of a probability.
    pub fn of(adult_probability: f32) -> Self {
        Self {
            adult_probability,
            population: if adult_probability >= 0.5 {
                "adult"
            } else {
                "child"
            },
        }
    }
}

impl PopulationModel {
    /// Checks sizes and values (a model file is untrusted input).
    pub fn validate(&self, feature_dim: usize) -> crate::Result<()> {
        if self.dim != feature_dim {
            return Err(Error::InvalidHeader(format!(
                "population estimate: dimension {} where the backbone gives {feature_dim}",
                self.dim
            )));
        }
        for (name, v) in [
            ("mean", &self.mean),
            ("inv_std", &self.inv_std),
            ("weights", &self.weights),
        ] {
            if v.len() != self.dim {
                return Err(Error::InvalidHeader(format!(
                    "population estimate: {name} has {} values, expected {}",
                    v.len(),
                    self.dim
                )));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::InvalidHeader(format!(
                    "population estimate: {name} is not finite"
                )));
            }
        }
        if !self.bias.is_finite() {
            return Err(Error::InvalidHeader(
                "population estimate: bias is not finite".into(),
            ));
        }
        for (class, by_pop) in &self.training_counts {
            class.parse::<Class>().map_err(|e| {
                Error::InvalidHeader(format!("population estimate: training counts: {e}"))
            })?;
            if let Some(p) = by_pop.keys().find(|p| *p != "child" && *p != "adult") {
                return Err(Error::InvalidHeader(format!(
                    "population estimate: training counts name population '{p}' (expected child or adult)"
                )));
            }
        }
        Ok(())
    }

    /// `P(adult)` of an image's pooled features.
    pub fn adult_probability(&self, pooled: &[f32]) -> f32 {
        let z: f32 = pooled
            .iter()
            .zip(&self.mean)
            .zip(&self.inv_std)
            .zip(&self.weights)
            .map(|(((f, m), s), w)| (f - m) * s * w)
            .sum::<f32>()
            + self.bias;
        1.0 / (1.0 + (-z).exp())
    }

    /// The estimate for an image's pooled features.
    pub fn estimate(&self, pooled: &[f32]) -> PopulationEstimate {
        PopulationEstimate::of(self.adult_probability(pooled))
    }

    /// Training images of `class` from `population` (`child` / `adult`).
    pub fn training_images(&self, class: Class, population: &str) -> usize {
        self.training_counts
            .get(class.name())
            .and_then(|m| m.get(population))
            .copied()
            .unwrap_or(0)
    }

    /// The caution for a prediction of `class` on an image estimated as `estimate`, when the
    /// model saw fewer than [`PopulationModel::min_training_images`] such images in training.
    pub fn caution(&self, class: Class, estimate: PopulationEstimate) -> Option<String> {
        let pop = estimate.population;
        let n = self.training_images(class, pop);
        (n < self.min_training_images).then(|| {
            let who = if pop == "adult" { "adults" } else { "children" };
            format!(
                "This looks like {an} {pop}'s X-ray, and the model saw only {n} X-rays of {who} \
                 with {what} in training (fewer than {min}): treat \"{what}\" here as \
                 unreliable.",
                an = if pop == "adult" { "an" } else { "a" },
                what = describe(class),
                min = self.min_training_images
            )
        })
    }
}

/// The class in words.
fn describe(class: Class) -> &'static str {
    match class {
        Class::Normal => "no pneumonia",
        Class::Bacterial => "bacterial pneumonia",
        Class::Viral => "viral pneumonia",
        Class::Covid19 => "COVID-19",
    }
}

/// Training counts `[child, adult]` per class (in class order), as the header stores them.
pub fn counts_map(counts: &[[usize; 2]; NUM_CLASSES]) -> BTreeMap<String, BTreeMap<String, usize>> {
    Class::ALL
        .iter()
        .map(|c| {
            let [child, adult] = counts[c.index()];
            (
                c.name().to_string(),
                BTreeMap::from([("child".to_string(), child), ("adult".to_string(), adult)]),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> PopulationModel {
        PopulationModel {
            method: "logistic-regression".into(),
            dim: 2,
            mean: vec![1.0, 0.0],
            inv_std: vec![0.5, 1.0],
            weights: vec![2.0, -1.0],
            bias: 0.0,
            training_counts: counts_map(&[[700, 400], [1400, 30], [750, 9], [0, 240]]),
            min_training_images: MIN_TRAINING_IMAGES,
            fit: serde_json::Value::Null,
        }
    }

    #[test]
    fn estimate_and_caution() {
        let m = model();
        // z = (3 - 1) * 0.5 * 2 + (0 - 0) = 2.
        let p = m.adult_probability(&[3.0, 0.0]);
        assert!((p - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
        let adult = m.estimate(&[3.0, 0.0]);
        assert_eq!(adult.population, "adult");
        let child = m.estimate(&[-3.0, 0.0]);
        assert_eq!(child.population, "child");
        // Adult viral: 9 training images → caution; adult COVID-19: 240 → none.
        let c = m.caution(Class::Viral, adult).unwrap();
        assert!(c.contains("only 9") && c.contains("viral pneumonia"), "{c}");
        assert!(m.caution(Class::Covid19, adult).is_none());
        assert!(m.caution(Class::Normal, adult).is_none());
        // A child called COVID-19: none in training.
        assert!(m.caution(Class::Covid19, child).unwrap().contains("only 0"));
        m.validate(2).unwrap();
        assert!(m.validate(3).is_err());
        let mut bad = model();
        bad.weights[1] = f32::NAN;
        assert!(bad.validate(2).is_err());
    }
}
