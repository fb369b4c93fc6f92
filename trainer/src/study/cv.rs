//! Patient-grouped k-fold cross-validation on train + val (`pneumoscope train --folds K`): the
//! fold assignment, one training run per fold, and the summary across folds that settings and
//! ensemble members are chosen by. The test split takes no part.

use crate::data::{Label, Manifest, Population};
use crate::machinery::fsutil::write_atomic;
use crate::study::breakdown::{self, Breakdown, Row};
use crate::train::{self, Fold, TrainConfig};
use anyhow::{Context, Result, bail};
use pneumoscope::NUM_CLASSES;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the folds keep their backbone outputs: beside the manifest, under a key of everything
/// they depend on (the manifest's images, architecture, mode's cut, weights, augmentation,
/// seed), so that cross-validations of other head settings on the same data share them.
fn feature_cache(manifest: &Manifest, cfg: &TrainConfig) -> PathBuf {
    let images: String = manifest.records.iter().map(|r| r.sha256.as_str()).collect();
    let key = serde_json::json!({
        "images": pneumoscope::model_file::sha256_hex(images.as_bytes()),
        "arch": cfg.arch, "mode": cfg.mode, "tune_blocks": cfg.tune_blocks,
        "weights": cfg.weights, "augment": cfg.augment, "seed": cfg.optimisation.seed,
    });
    let mut key = key;
    if let Some(side) = cfg.input_size {
        key["input_size"] = serde_json::json!(side);
    }
    if !cfg.region.is_whole() {
        // Lung-focused input: the segmenter that found the crops too (by its file's bytes).
        let segmenter = cfg.lungs.as_ref().and_then(|p| std::fs::read(p).ok());
        key["region"] = serde_json::json!(cfg.region);
        key["lungs"] =
            serde_json::json!(segmenter.map(|b| pneumoscope::model_file::sha256_hex(&b)));
    }
    let key = pneumoscope::model_file::sha256_hex(key.to_string().as_bytes());
    manifest
        .root
        .join("cache")
        .join("features")
        .join(format!("{}-{}", cfg.arch, &key[..16]))
}

/// One fold's validation figures.
#[derive(Clone, Debug, Serialize)]
pub struct FoldResult {
    /// Fold index.
    pub fold: usize,
    /// Its run folder.
    pub run: PathBuf,
    /// Validation images.
    pub n: usize,
    /// The breakdown of its validation predictions.
    pub breakdown: Breakdown,
}

/// Mean and sample standard deviation of a figure across folds.
#[derive(Clone, Debug, Serialize)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Standard deviation (n - 1).
    pub sd: f64,
    /// Per fold.
    pub folds: Vec<f64>,
}

fn spread(v: Vec<f64>) -> Option<Spread> {
    if v.is_empty() {
        return None;
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let sd = if v.len() > 1 {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    Some(Spread { mean, sd, folds: v })
}

/// What `cv.json` holds.
#[derive(Clone, Debug, Serialize)]
pub struct CvSummary {
    /// The configuration every fold shares.
    pub config: TrainConfig,
    /// Folds.
    pub folds: usize,
    /// Seed of the fold assignment.
    pub fold_seed: u64,
    /// Headline figures across folds (mean, sd, per fold).
    pub spread: BTreeMap<String, Spread>,
    /// The breakdown of all out-of-fold predictions pooled (every train + val image predicted
    /// once, by the fold that did not train on it).
    pub pooled: Breakdown,
    /// Per fold.
    pub per_fold: Vec<FoldResult>,
}

/// Reads a run's `val_predictions.csv` into breakdown rows.
pub fn read_predictions(path: &Path) -> Result<Vec<Row>> {
    let mut rdr =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: malformed row {}", path.display(), i + 2))?;
        let bad = |what: &str| anyhow::anyhow!("{}: row {}: bad {what}", path.display(), i + 2);
        let label: Label = rec.get(2).unwrap_or("").parse().map_err(|_| bad("label"))?;
        let population = match rec.get(3).unwrap_or("") {
            "child" => Population::Child,
            "adult" => Population::Adult,
            _ => return Err(bad("population")),
        };
        let mut probs = [0f32; NUM_CLASSES];
        for (c, p) in probs.iter_mut().enumerate() {
            *p = rec
                .get(6 + c)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("probability"))?;
        }
        rows.push(Row {
            label: label.index(),
            population,
            source: rec.get(4).unwrap_or("").to_string(),
            patient: rec.get(5).unwrap_or("").to_string(),
            probs,
        });
    }
    Ok(rows)
}

/// The figures the spread is reported for, from one breakdown.
fn headline(b: &Breakdown) -> Vec<(&'static str, Option<f64>)> {
    let adult = b
        .groups
        .iter()
        .find(|g| g.population == "adult" && g.source == "all");
    let r = |f: fn(&breakdown::Group) -> &Option<breakdown::Rate>| {
        adult.and_then(|g| f(g).as_ref().map(|r| r.value))
    };
    vec![
        (
            "macro_f1_children_and_covid19",
            b.children_and_covid19.as_ref().map(|m| m.macro_f1),
        ),
        (
            "macro_f1_all_with_a_class",
            b.all_with_a_class.as_ref().map(|m| m.macro_f1),
        ),
        (
            "adult_normal_called_covid19",
            r(|g| &g.normal_called_covid19),
        ),
        (
            "adult_normal_called_pneumonia",
            r(|g| &g.normal_called_pneumonia),
        ),
        (
            "adult_pneumonia_called_covid19",
            r(|g| &g.pneumonia_called_covid19),
        ),
        (
            "adult_pneumonia_called_normal",
            r(|g| &g.pneumonia_called_normal),
        ),
        ("adult_covid19_recall", r(|g| &g.covid19_recall)),
    ]
}

/// Trains (or resumes) every fold of `cfg` into `out/fold-K`, then writes `out/cv.json` and
/// `out/cv.md`. Folds whose run has finished are not trained again.
/// `only`: run just these folds (a screening subset); the summary covers them.
pub fn cross_validate(
    cfg: TrainConfig,
    out: &Path,
    (k, seed): (usize, u64),
    only: Option<&[usize]>,
    resume: bool,
) -> Result<CvSummary> {
    if k < 2 {
        bail!("--folds {k}: cross-validation needs at least 2 folds");
    }
    if let Some(&bad) = only.and_then(|o| o.iter().find(|&&i| i >= k)) {
        bail!("--only-folds {bad}: folds are numbered 0 to {}", k - 1);
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let marker = out.join("cv-config.json");
    if marker.exists() && !resume {
        bail!(
            "{} already holds a cross-validation; pass --resume to continue it or choose another --out",
            out.display()
        );
    }
    let manifest = Manifest::read(&cfg.data)?;
    let cfg = TrainConfig {
        fold: None,
        feature_cache: Some(
            cfg.feature_cache
                .clone()
                .unwrap_or_else(|| feature_cache(&manifest, &cfg)),
        ),
        ..cfg
    };
    write_atomic(
        &marker,
        serde_json::to_string_pretty(
            &serde_json::json!({"config": cfg, "folds": k, "fold_seed": seed}),
        )?
        .as_bytes(),
    )?;
    let mut per_fold = Vec::new();
    let mut pooled = Vec::new();
    for index in (0..k).filter(|i| only.is_none_or(|o| o.contains(i))) {
        let dir = out.join(format!("fold-{index}"));
        if !dir.join("model.bpk").is_file() {
            eprintln!("fold {} of {k}", index + 1);
            let fold_cfg = TrainConfig {
                fold: Some(Fold { index, of: k, seed }),
                ..cfg.clone()
            };
            train::train(fold_cfg, &dir, dir.join("state.json").is_file())?;
        }
        let rows = read_predictions(&dir.join("val_predictions.csv"))?;
        per_fold.push(FoldResult {
            fold: index,
            run: dir,
            n: rows.len(),
            breakdown: breakdown::of(&rows),
        });
        pooled.extend(rows);
    }
    summarise(cfg, (k, seed), per_fold, &pooled, out)
}

/// The summary of finished folds: every headline figure's spread across them, the pooled
/// breakdown; written to `out/cv.json` and `out/cv.md`.
fn summarise(
    config: TrainConfig,
    (folds, fold_seed): (usize, u64),
    per_fold: Vec<FoldResult>,
    pooled: &[Row],
    out: &Path,
) -> Result<CvSummary> {
    let mut values: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for f in &per_fold {
        for (name, v) in headline(&f.breakdown) {
            if let Some(v) = v {
                values.entry(name).or_default().push(v);
            }
        }
    }
    let summary = CvSummary {
        config,
        folds,
        fold_seed,
        spread: values
            .into_iter()
            .filter_map(|(n, v)| spread(v).map(|s| (n.to_string(), s)))
            .collect(),
        pooled: breakdown::of(pooled),
        per_fold,
    };
    write_atomic(
        &out.join("cv.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    write_atomic(&out.join("cv.md"), markdown(&summary).as_bytes())?;
    Ok(summary)
}

/// The summary as Markdown: the spread table, then the pooled breakdown.
pub fn markdown(s: &CvSummary) -> String {
    let mut out = format!(
        "# Cross-validation: {} {} ({} folds by patient, seed {}), imbalance {:?}\n\n",
        s.config.arch,
        format!("{:?}", s.config.mode).to_lowercase(),
        s.folds,
        s.fold_seed,
        s.config.imbalance
    );
    if s.per_fold.len() < s.folds {
        let run: Vec<String> = s.per_fold.iter().map(|f| f.fold.to_string()).collect();
        out += &format!(
            "Folds run: {} of the {} (a screening subset).\n\n",
            run.join(", "),
            s.folds
        );
    }
    out += "| figure | mean | sd | per fold |\n|---|---|---|---|\n";
    for (name, sp) in &s.spread {
        let folds: Vec<String> = sp.folds.iter().map(|v| format!("{v:.3}")).collect();
        out += &format!(
            "| {name} | {:.3} | {:.3} | {} |\n",
            sp.mean,
            sp.sd,
            folds.join(", ")
        );
    }
    out += "\n## Out-of-fold predictions, pooled\n\n";
    out += &breakdown::markdown(&s.pooled);
    out
}

/// One line for the terminal: the headline means and spreads.
pub fn line(s: &CvSummary) -> String {
    s.spread
        .iter()
        .map(|(n, sp)| format!("{n} {:.3} ± {:.3}", sp.mean, sp.sd))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The cross-validation of an ensemble, without training anything: the folds of several
/// cross-validations of the same manifest and fold seed, their out-of-fold probabilities
/// averaged image by image (what `pneumoscope ensemble` does with the finished networks).
/// Writes `out/cv.json` and `out/cv.md` like [`run`].
pub fn ensemble(dirs: &[PathBuf], out: &Path) -> Result<CvSummary> {
    if dirs.len() < 2 {
        bail!("an ensemble cross-validation needs at least 2 cross-validation folders");
    }
    let read_cfg = |d: &Path| -> Result<(TrainConfig, usize, u64)> {
        let v: serde_json::Value = serde_json::from_slice(
            &std::fs::read(d.join("cv-config.json"))
                .with_context(|| format!("{}: not a cross-validation folder", d.display()))?,
        )?;
        Ok((
            serde_json::from_value(v["config"].clone())?,
            v["folds"].as_u64().unwrap_or(0) as usize,
            v["fold_seed"].as_u64().unwrap_or(0),
        ))
    };
    let (first, k, seed) = read_cfg(&dirs[0])?;
    let mut archs = vec![first.arch.clone()];
    for d in &dirs[1..] {
        let (c, k2, s2) = read_cfg(d)?;
        if c.data != first.data || k2 != k || s2 != seed {
            bail!(
                "{}: another manifest, fold count or fold seed than {}",
                d.display(),
                dirs[0].display()
            );
        }
        archs.push(c.arch);
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut per_fold = Vec::new();
    let mut pooled = Vec::new();
    for index in 0..k {
        let mut rows: Option<Vec<Row>> = None;
        for d in dirs {
            let path = d.join(format!("fold-{index}/val_predictions.csv"));
            let these = read_predictions(&path)?;
            rows = Some(match rows {
                None => these,
                Some(mut acc) => {
                    if acc.len() != these.len()
                        || acc.iter().zip(&these).any(|(a, b)| a.patient != b.patient)
                    {
                        bail!("{}: not the same validation rows", path.display());
                    }
                    for (a, b) in acc.iter_mut().zip(&these) {
                        for (p, q) in a.probs.iter_mut().zip(b.probs) {
                            *p += q;
                        }
                    }
                    acc
                }
            });
        }
        let mut rows = rows.expect("at least two folders");
        for r in &mut rows {
            r.probs.iter_mut().for_each(|p| *p /= dirs.len() as f32);
        }
        per_fold.push(FoldResult {
            fold: index,
            run: out.to_path_buf(),
            n: rows.len(),
            breakdown: breakdown::of(&rows),
        });
        pooled.extend(rows);
    }
    let config = TrainConfig {
        arch: format!("ensemble of {}", archs.join(" + ")),
        ..first
    };
    summarise(config, (k, seed), per_fold, &pooled, out)
}
