//! ROC curves of an evaluation, per population: adults' pneumonia against adult normals and
//! children's against children's normals, both on `1 − p(normal)`, and COVID-19 against every
//! other adult image with a label, on `p(COVID-19)`; each with its AUROC and a 95 % interval
//! from resampling patients. Also the AUROC of pneumonia against normals within each source
//! that has both. Written to `roc.png` and `roc.json` by `evaluate`. (Plotted with plotters'
//! path element: its line-series feature is not enabled in this build.)

use crate::data::Population;
use crate::metrics::{Interval, percentile};
use crate::study::breakdown::Row;
use crate::study::report::ensure_font;
use anyhow::{Context, Result};
use plotters::prelude::*;
use pneumoscope::Class;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bootstrap resamples of each interval.
const RESAMPLES: usize = 1000;

/// One image on a curve: its score, whether it is a positive, its patient.
type Scored<'a> = (f64, bool, &'a str);

/// One ROC curve.
#[derive(Clone, Debug, Serialize)]
pub struct Curve {
    /// What the positives and negatives are.
    pub name: String,
    /// Positive images.
    pub positives: usize,
    /// Negative images.
    pub negatives: usize,
    /// Area under the curve (ties count one half).
    pub auroc: f64,
    /// 95 % interval of the area, patients resampled.
    pub ci: Interval,
    /// `(false-positive rate, true-positive rate)` from (0, 0) to (1, 1), one point per
    /// distinct score.
    pub points: Vec<(f64, f64)>,
}

/// The curves of an evaluation, and the AUROC of pneumonia against normals per source.
#[derive(Clone, Debug, Serialize)]
pub struct Curves {
    /// The population curves (those with positives and negatives).
    pub curves: Vec<Curve>,
    /// Pneumonia (any pathogen, COVID-19 included) against normals, within each source that
    /// has both.
    pub pneumonia_vs_normal_by_source: Vec<Curve>,
}

/// Area under the ROC curve of `scored` (Mann–Whitney: the chance that a positive scores above
/// a negative, ties one half); `None` without positives or negatives.
pub fn auroc(scored: &[Scored]) -> Option<f64> {
    let mut s: Vec<&Scored> = scored.iter().collect();
    s.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut positives) = (0.0, 0usize);
    let mut i = 0;
    while i < s.len() {
        let mut j = i;
        while j < s.len() && s[j].0 == s[i].0 {
            j += 1;
        }
        // Ranks i+1..=j share their mean.
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        for e in &s[i..j] {
            if e.1 {
                rank_sum += mean_rank;
                positives += 1;
            }
        }
        i = j;
    }
    let negatives = s.len() - positives;
    (positives > 0 && negatives > 0).then(|| {
        (rank_sum - (positives * (positives + 1)) as f64 / 2.0) / (positives * negatives) as f64
    })
}

/// The curve's points, from the highest score down.
fn points(scored: &[Scored]) -> Vec<(f64, f64)> {
    let mut s: Vec<&Scored> = scored.iter().collect();
    s.sort_by(|a, b| b.0.total_cmp(&a.0));
    let p = s.iter().filter(|e| e.1).count().max(1) as f64;
    let n = s.iter().filter(|e| !e.1).count().max(1) as f64;
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut out = vec![(0.0, 0.0)];
    let mut i = 0;
    while i < s.len() {
        let mut j = i;
        while j < s.len() && s[j].0 == s[i].0 {
            if s[j].1 {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            j += 1;
        }
        out.push((fp / n, tp / p));
        i = j;
    }
    out
}

/// The curve of `scored`, with a patient-bootstrap interval of its area; `None` without
/// positives or negatives.
fn curve(name: &str, scored: &[Scored]) -> Option<Curve> {
    let area = auroc(scored)?;
    let mut by_patient: BTreeMap<&str, Vec<Scored>> = BTreeMap::new();
    for &e in scored {
        by_patient.entry(e.2).or_default().push(e);
    }
    let patients: Vec<&Vec<Scored>> = by_patient.values().collect();
    let mut rng = ChaCha8Rng::seed_from_u64(12345);
    let mut areas: Vec<f64> = (0..RESAMPLES)
        .filter_map(|_| {
            let sample: Vec<Scored> = (0..patients.len())
                .flat_map(|_| {
                    patients[rng.random_range(0..patients.len())]
                        .iter()
                        .copied()
                })
                .collect();
            auroc(&sample)
        })
        .collect();
    areas.sort_by(f64::total_cmp);
    Some(Curve {
        name: name.to_string(),
        positives: scored.iter().filter(|e| e.1).count(),
        negatives: scored.iter().filter(|e| !e.1).count(),
        auroc: area,
        ci: Interval {
            low: percentile(&areas, 0.025),
            high: percentile(&areas, 0.975),
        },
        points: points(scored),
    })
}

/// Whether a label is pneumonia of any pathogen (COVID-19 and an unknown pathogen,
/// [`crate::data::PNEUMONIA_UNKNOWN`], included).
fn is_pneumonia(label: usize) -> bool {
    label != Class::Normal.index()
}

/// `1 − p(normal)`.
fn not_normal(r: &Row) -> f64 {
    1.0 - f64::from(r.probs[Class::Normal.index()])
}

/// The curves of an evaluation's rows.
pub fn of(rows: &[Row]) -> Curves {
    let scored = |keep: &dyn Fn(&Row) -> bool,
                  positive: &dyn Fn(&Row) -> bool,
                  score: &dyn Fn(&Row) -> f64| {
        rows.iter()
            .filter(|r| keep(r))
            .map(|r| (score(r), positive(r), r.patient.as_str()))
            .collect::<Vec<Scored>>()
    };
    let normal = Class::Normal.index();
    let covid = Class::Covid19.index();
    let in_population = |p: Population| move |r: &Row| r.population == p;
    let non_covid_pneumonia = |r: &Row| r.label != covid && is_pneumonia(r.label);
    let adults = in_population(Population::Adult);
    let children = in_population(Population::Child);
    let curves = [
        curve(
            "adults: pneumonia (not COVID-19) vs normal, 1 − p(normal)",
            &scored(
                &|r| adults(r) && (r.label == normal || non_covid_pneumonia(r)),
                &|r| r.label != normal,
                &not_normal,
            ),
        ),
        curve(
            "adults: COVID-19 vs every other label, p(COVID-19)",
            &scored(&|r| adults(r), &|r| r.label == covid, &|r| {
                f64::from(r.probs[covid])
            }),
        ),
        curve(
            "children: pneumonia vs normal, 1 − p(normal)",
            &scored(&|r| children(r), &|r| r.label != normal, &not_normal),
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    let sources: BTreeSet<&str> = rows.iter().map(|r| r.source.as_str()).collect();
    let pneumonia_vs_normal_by_source = sources
        .into_iter()
        .filter_map(|s| {
            curve(
                &format!("{s}: pneumonia vs normal, 1 − p(normal)"),
                &scored(&|r| r.source == s, &|r| r.label != normal, &not_normal),
            )
        })
        .collect();
    Curves {
        curves,
        pneumonia_vs_normal_by_source,
    }
}

impl Curve {
    /// `AUROC 0.912 [0.880, 0.940], 120 vs 80`.
    pub fn summary(&self) -> String {
        format!(
            "AUROC {:.3} [{:.3}, {:.3}], {} vs {}",
            self.auroc, self.ci.low, self.ci.high, self.positives, self.negatives
        )
    }
}

impl Curves {
    /// A Markdown section: each curve's AUROC, then per source.
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "\n## ROC curves\n\n![ROC curves](roc.png)\n\n| curve | AUROC [95 % CI] | positives | negatives |\n|---|---|---:|---:|\n",
        );
        for c in self
            .curves
            .iter()
            .chain(&self.pneumonia_vs_normal_by_source)
        {
            s += &format!(
                "| {} | {:.3} [{:.3}, {:.3}] | {} | {} |\n",
                c.name, c.auroc, c.ci.low, c.ci.high, c.positives, c.negatives
            );
        }
        s
    }

    /// Draws the population curves and the diagonal into a PNG.
    pub fn png(&self, path: &Path, title: &str) -> Result<()> {
        ensure_font()?;
        let (w, h) = (900u32, 820u32);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 18))
                .margin(16)
                .x_label_area_size(44)
                .y_label_area_size(52)
                .build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
            chart
                .configure_mesh()
                .x_desc("false-positive rate")
                .y_desc("true-positive rate")
                .draw()?;
            chart.draw_series(std::iter::once(PathElement::new(
                [(0.0, 0.0), (1.0, 1.0)],
                BLACK.mix(0.3).stroke_width(1),
            )))?;
            let colours = [
                RGBColor(31, 119, 180),
                RGBColor(214, 39, 40),
                RGBColor(44, 160, 44),
            ];
            for (c, colour) in self.curves.iter().zip(colours) {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        c.points.clone(),
                        colour.stroke_width(2),
                    )))?
                    .label(format!("{}: {}", c.name, c.summary()))
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 12))
                .draw()?;
            root.present()?;
        }
        image::RgbImage::from_raw(w, h, buf)
            .expect("buffer size")
            .save(path)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Perfect, reversed and tied scores; the area equals the share of (positive, negative)
    /// pairs in order; the curve runs from (0, 0) to (1, 1).
    #[test]
    fn area_counts_ordered_pairs_and_ties_half() {
        let s = |v: &[(f64, bool)]| -> Vec<Scored<'static>> {
            v.iter().map(|&(x, p)| (x, p, "p")).collect()
        };
        assert_eq!(auroc(&s(&[(0.9, true), (0.1, false)])), Some(1.0));
        assert_eq!(auroc(&s(&[(0.1, true), (0.9, false)])), Some(0.0));
        assert_eq!(auroc(&s(&[(0.5, true), (0.5, false)])), Some(0.5));
        // Positives 0.8, 0.4; negatives 0.6, 0.2: 3 of 4 pairs in order.
        let mixed = s(&[(0.8, true), (0.4, true), (0.6, false), (0.2, false)]);
        assert_eq!(auroc(&mixed), Some(0.75));
        let pts = points(&mixed);
        assert_eq!(pts.first(), Some(&(0.0, 0.0)));
        assert_eq!(pts.last(), Some(&(1.0, 1.0)));
        assert_eq!(auroc(&s(&[(0.5, true)])), None);
    }
}
