//! `pneumoscope evaluate`: a model file on one split of a manifest → metrics, figures (the
//! confusion matrix, ROC curves) and reports.

use crate::data::{Manifest, Split};
use crate::metrics::{self, Metrics};
use crate::model_file::load_engine;
use crate::study::breakdown::{self, Breakdown};
use crate::study::report::{self, CamEntry, SourceBreakdown};
use crate::study::roc;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use pneumoscope::ood::OodScore;
use pneumoscope::{Class, NUM_CLASSES};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Grad-CAM examples per class in the report.
const CAMS_PER_CLASS: usize = 3;

/// Options of `evaluate`.
#[derive(Clone, Debug, clap::Args)]
pub struct EvaluateOptions {
    /// Model file written by `export`.
    #[arg(long)]
    pub model: PathBuf,
    /// Manifest.
    #[arg(long)]
    pub data: PathBuf,
    /// Split to evaluate.
    #[arg(long, default_value = "test")]
    pub split: Split,
    /// Folder for confusion_matrix.png, report.md, report.html, metrics.json, gradcam/.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Test-time augmentation: average over the image and its mirror image.
    #[arg(long)]
    pub tta: bool,
    /// Lung-segmenter file: adds where the evidence lies (the share of each Grad-CAM map
    /// inside the lung fields, per predicted class and source).
    #[arg(long)]
    pub lungs: Option<PathBuf>,
}

/// Evaluates the model on one split of the manifest; writes reports into `out` when given.
pub fn on_split(o: &EvaluateOptions, device: &Device) -> Result<Evaluation> {
    let engine = load_engine(&o.model, device)?;
    let engine = if o.tta { engine.with_tta(true) } else { engine };
    let manifest = Manifest::read(&o.data)?;
    let rows = manifest.split_indices(o.split);
    if rows.is_empty() {
        bail!("{}: no rows in split '{}'", o.data.display(), o.split);
    }
    let (probs, ood) = classify_rows(&engine, &manifest, &rows)?;
    let labels = manifest.labels(&rows);
    let pats = manifest.patients(&rows);
    let image_rows = breakdown_rows(&manifest, &rows, &probs);
    let lung_share = match &o.lungs {
        Some(path) => Some(lung_shares(&engine, path, &manifest, &rows, device)?),
        None => None,
    };
    let e = Evaluation {
        metrics: metrics::compute(&probs, &labels, &pats),
        sources: source_breakdown(&manifest, &rows, &labels, &probs),
        by_population: breakdown::of(&image_rows),
        roc: roc::of(&image_rows),
        ood: OodSummary::of(&ood),
        arch: engine.arch(),
        weight_source: engine.weight_source(),
        lung_share,
    };
    if let Some(out) = &o.out {
        std::fs::create_dir_all(out.join("gradcam"))
            .with_context(|| format!("cannot create {}", out.display()))?;
        write_predictions(&out.join("predictions.csv"), &manifest, &rows, &probs, &ood)?;
        let cams = gradcam_examples(&engine, &manifest, &rows, &labels, out)?;
        write_reports(out, o, &engine, &e, &cams)?;
    }
    Ok(e)
}

/// One image's class probabilities.
type Probabilities = [f32; NUM_CLASSES];

/// Class probabilities and out-of-distribution scores of the manifest's `rows`.
fn classify_rows(
    engine: &pneumoscope::inference::Engine,
    manifest: &Manifest,
    rows: &[usize],
) -> Result<(Vec<Probabilities>, Vec<Option<OodScore>>)> {
    let pb = crate::machinery::progress::bar(rows.len() as u64, "evaluating");
    let mut probs: Vec<[f32; NUM_CLASSES]> = Vec::with_capacity(rows.len());
    let mut ood: Vec<Option<OodScore>> = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(32) {
        let imgs: Vec<pneumoscope::inference::Input> = chunk
            .par_iter()
            .map(|&i| {
                let p = manifest.resolve(&manifest.records[i]);
                let b =
                    std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
                engine
                    .preprocess(&b)
                    .with_context(|| format!("{}", p.display()))
            })
            .collect::<Result<_>>()?;
        for p in engine.classify_batch(&imgs)? {
            probs.push(p.probabilities);
            ood.push(p.ood);
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok((probs, ood))
}

/// The evaluated images as the breakdown and the ROC curves see them.
fn breakdown_rows(
    manifest: &Manifest,
    rows: &[usize],
    probs: &[[f32; NUM_CLASSES]],
) -> Vec<breakdown::Row> {
    rows.iter()
        .zip(probs)
        .map(|(&i, p)| {
            let r = &manifest.records[i];
            breakdown::Row {
                label: r.label.index(),
                population: r.population(),
                source: r.source.clone(),
                patient: r.patient.clone(),
                probs: *p,
            }
        })
        .collect()
}

/// Per source: images, accuracy (a partial label is right when the prediction is one of the
/// classes it allows) and predictions per class.
fn source_breakdown(
    manifest: &Manifest,
    rows: &[usize],
    labels: &[usize],
    probs: &[[f32; NUM_CLASSES]],
) -> SourceBreakdown {
    let mut by_source: BTreeMap<String, (usize, usize, [usize; NUM_CLASSES])> = BTreeMap::new();
    for (k, &i) in rows.iter().enumerate() {
        let e = by_source
            .entry(manifest.records[i].source.clone())
            .or_insert((0, 0, [0; NUM_CLASSES]));
        let pred = pneumoscope::inference::Prediction::from_probabilities(probs[k])
            .top
            .index();
        e.0 += 1;
        e.1 += usize::from(crate::data::Label::allowed_of_index(labels[k])[pred]);
        e.2[pred] += 1;
    }
    by_source
        .into_iter()
        .map(|(s, (n, ok, pred))| (s, n, ok as f64 / n as f64, pred))
        .collect()
}

/// The report's Grad-CAM panel: the first [`CAMS_PER_CLASS`] rows of each class, their
/// overlays written into `out/gradcam/`.
fn gradcam_examples(
    engine: &pneumoscope::inference::Engine,
    manifest: &Manifest,
    rows: &[usize],
    labels: &[usize],
    out: &Path,
) -> Result<Vec<CamEntry>> {
    let mut cams = Vec::new();
    for c in Class::ALL {
        let picked = rows
            .iter()
            .enumerate()
            .filter(|(k, _)| labels[*k] == c.index())
            .take(CAMS_PER_CLASS);
        for (j, (_, &i)) in picked.enumerate() {
            let p = manifest.resolve(&manifest.records[i]);
            let bytes = std::fs::read(&p)?;
            let (view, x) = engine.view_and_input(&bytes)?;
            let (pred, cam) = engine.explain_input(x, None)?;
            let name = format!("gradcam/{}-{j}.png", c.name());
            pneumoscope::gradcam::overlay(&view, &cam.upsample(engine.input_size()), 0.45)
                .save(out.join(&name))?;
            cams.push(CamEntry {
                file: p.display().to_string(),
                truth: c,
                predicted: pred.top,
                confidence: pred.probabilities[pred.top.index()],
                overlay: name,
            });
        }
    }
    Ok(cams)
}

/// The title and the description line of the reports.
fn report_title(
    o: &EvaluateOptions,
    engine: &pneumoscope::inference::Engine,
    e: &Evaluation,
) -> (String, String) {
    // A figure may travel without its table: it says itself when the backbone is random.
    let random = if engine
        .networks
        .iter()
        .any(|n| n.header.weight_source == crate::pretrained::weights::RANDOM_INIT)
    {
        " (random-init backbone)"
    } else {
        ""
    };
    let split = o.split;
    let title = format!(
        "Pneumoscope evaluation: {}{random} on the {split} split",
        engine.arch()
    );
    let ood_line = match &e.ood {
        Some(o) => format!(
            " Out-of-distribution warning: {} of {} images flagged ({:.1}%; median score {:.2}).",
            o.flagged,
            o.n,
            100.0 * o.rate,
            o.median_score
        ),
        None => String::new(),
    };
    let desc = format!(
        "Model: {} ({}), weights {}; data: {}, split '{split}'; test-time augmentation {}.{ood_line}",
        engine.arch(),
        engine.weights_dtype(),
        engine.weight_source(),
        o.data.display(),
        if engine.tta() {
            "on (image and mirror image averaged)"
        } else {
            "off"
        }
    );
    (title, desc)
}

/// Writes the confusion matrix, report.md, report.html, metrics.json, lung_share.json and
/// the Grad-CAM panel as data (gradcam.csv: overlay, image, truth, prediction) into `out`.
fn write_reports(
    out: &Path,
    o: &EvaluateOptions,
    engine: &pneumoscope::inference::Engine,
    e: &Evaluation,
    cams: &[CamEntry],
) -> Result<()> {
    let (title, desc) = report_title(o, engine, e);
    let m = &e.metrics;
    report::confusion_png(&out.join("confusion_matrix.png"), &m.confusion, &title)?;
    let report = report::Report {
        title: &title,
        model_desc: &desc,
        metrics: m,
        sources: &e.sources,
        by_population: &e.by_population,
        cams,
    };
    let mut md = report.markdown();
    if let Some(l) = &e.lung_share {
        std::fs::write(
            out.join("lung_share.json"),
            serde_json::to_string_pretty(&l)?,
        )?;
        md += &l.markdown();
    }
    e.roc.png(&out.join("roc.png"), &title)?;
    std::fs::write(out.join("roc.json"), serde_json::to_string_pretty(&e.roc)?)?;
    md += &e.roc.markdown();
    std::fs::write(out.join("report.md"), md)?;
    std::fs::write(out.join("report.html"), report.html())?;
    std::fs::write(out.join("metrics.json"), serde_json::to_string_pretty(m)?)?;
    let mut w = csv::Writer::from_path(out.join("gradcam.csv"))?;
    w.write_record(["overlay", "image", "truth", "predicted", "confidence"])?;
    for c in cams {
        w.write_record([
            c.overlay.as_str(),
            c.file.as_str(),
            c.truth.name(),
            c.predicted.name(),
            &format!("{:.4}", c.confidence),
        ])?;
    }
    w.flush()?;
    Ok(())
}

/// Where the evidence lies: the share of each image's Grad-CAM map (predicted class) inside
/// the dilated lung fields, summarised per predicted class and source.
#[derive(Clone, Debug, Serialize)]
pub struct LungShares {
    /// The segmenter file.
    pub segmenter: String,
    /// Per predicted class, then per source (and `all`).
    pub by_class: BTreeMap<String, BTreeMap<String, ShareSummary>>,
    /// Images whose lung segmentation found no lung (their share is not counted).
    pub no_lungs: usize,
}

/// Distribution of lung shares.
#[derive(Clone, Debug, Serialize)]
pub struct ShareSummary {
    /// Images.
    pub n: usize,
    /// Median share.
    pub median: f64,
    /// First quartile.
    pub q1: f64,
    /// Third quartile.
    pub q3: f64,
    /// Share of the images with less than half of the evidence inside the lungs.
    pub below_half: f64,
}

impl ShareSummary {
    fn of(v: &mut [f64]) -> Self {
        v.sort_by(f64::total_cmp);
        Self {
            n: v.len(),
            median: metrics::percentile(v, 0.5),
            q1: metrics::percentile(v, 0.25),
            q3: metrics::percentile(v, 0.75),
            below_half: v.iter().filter(|&&x| x < 0.5).count() as f64 / v.len() as f64,
        }
    }
}

impl LungShares {
    /// The summary as a Markdown section of the report.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "\n## Where the evidence lies\n\nShare of each image's Grad-CAM map (for the predicted class) inside the lung fields found by `{}` (dilated by {} of {} grid pixels), per predicted class and source.\n\n| predicted | source | images | median | quartiles | under half inside |\n|---|---|---|---|---|---|\n",
            self.segmenter,
            pneumoscope::lungs::SHARE_DILATION,
            pneumoscope::lungs::MASK_SIDE
        );
        for (class, sources) in &self.by_class {
            for (source, s) in sources {
                out += &format!(
                    "| {class} | {source} | {} | {:.2} | {:.2}–{:.2} | {:.0} % |\n",
                    s.n,
                    s.median,
                    s.q1,
                    s.q3,
                    100.0 * s.below_half
                );
            }
        }
        if self.no_lungs > 0 {
            out += &format!("\n{} images had no lung found.\n", self.no_lungs);
        }
        out
    }
}

fn lung_shares(
    engine: &pneumoscope::inference::Engine,
    path: &Path,
    manifest: &Manifest,
    rows: &[usize],
    device: &Device,
) -> Result<LungShares> {
    let net = crate::lungs::load(path, device)?;
    let input = engine.display_network().header.input.clone();
    let side = engine.input_size();
    let mut groups: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let mut no_lungs = 0;
    let pb = crate::machinery::progress::bar(rows.len() as u64, "lung shares");
    for &i in rows {
        let r = &manifest.records[i];
        let p = manifest.resolve(r);
        let bytes = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let (framed, _, x) = engine
            .prepare(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        let (pred, cam) = engine.explain_input(x, None)?;
        // The lungs of what the networks saw (under lung-focused input, its own mask).
        let mask = match framed.lungs {
            Some(mask) => mask,
            None => net.segment(&framed.image, device)?,
        };
        match mask.share_of_cam(&cam.upsample(side), side, &input) {
            Some(share) if mask.area_fraction() > 0.0 => {
                let class = groups.entry(pred.top.name().to_string()).or_default();
                for key in ["all", r.source.as_str()] {
                    class.entry(key.to_string()).or_default().push(share as f64);
                }
            }
            _ => no_lungs += 1,
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(LungShares {
        segmenter: path.display().to_string(),
        by_class: groups
            .into_iter()
            .map(|(c, sources)| {
                (
                    c,
                    sources
                        .into_iter()
                        .map(|(s, mut v)| (s, ShareSummary::of(&mut v)))
                        .collect(),
                )
            })
            .collect(),
        no_lungs,
    })
}

/// What [`run`] measured.
pub struct Evaluation {
    /// The metrics.
    pub metrics: Metrics,
    /// Accuracy and predictions per data source.
    pub sources: SourceBreakdown,
    /// Per population and source: what adult normals, pneumonia of unknown pathogen and
    /// COVID-19 were called, with intervals; four-class metrics on children + COVID-19.
    pub by_population: Breakdown,
    /// ROC curves per population (adult and child pneumonia vs normal, adult COVID-19) and
    /// the AUROC of pneumonia vs normal per source.
    pub roc: roc::Curves,
    /// How many images the out-of-distribution score flagged (when the model has one).
    pub ood: Option<OodSummary>,
    /// Architecture of the evaluated model.
    pub arch: String,
    /// Where its backbone weights came from (`random-init` when not from ImageNet).
    pub weight_source: String,
    /// Where the evidence lies, when a lung segmenter was given.
    pub lung_share: Option<LungShares>,
}

/// The out-of-distribution scores of an evaluated split.
#[derive(Clone, Debug, Serialize)]
pub struct OodSummary {
    /// Images scored.
    pub n: usize,
    /// Images with a score above 1.
    pub flagged: usize,
    /// `flagged / n`.
    pub rate: f64,
    /// Median score.
    pub median_score: f32,
}

impl OodSummary {
    fn of(scores: &[Option<OodScore>]) -> Option<Self> {
        let mut s: Vec<f64> = scores
            .iter()
            .map(|o| o.map(|o| o.score as f64))
            .collect::<Option<_>>()?;
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        let flagged = scores.iter().flatten().filter(|o| o.flagged).count();
        Some(Self {
            n: s.len(),
            flagged,
            rate: flagged as f64 / s.len() as f64,
            median_score: crate::metrics::percentile(&s, 0.5) as f32,
        })
    }
}

/// One row per evaluated image: truth, probabilities, prediction and OOD score.
fn write_predictions(
    path: &Path,
    manifest: &Manifest,
    rows: &[usize],
    probs: &[[f32; NUM_CLASSES]],
    ood: &[Option<OodScore>],
) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut head = vec!["path", "label", "patient", "source"];
    head.extend(Class::ALL.iter().map(|c| c.name()));
    head.extend(["top", "ood_score", "ood_flagged"]);
    w.write_record(&head)?;
    for (k, &i) in rows.iter().enumerate() {
        let r = &manifest.records[i];
        let top = pneumoscope::inference::Prediction::from_probabilities(probs[k]).top;
        let mut rec = vec![
            r.path.clone(),
            r.label.name().to_string(),
            r.patient.clone(),
            r.source.clone(),
        ];
        rec.extend(probs[k].iter().map(|p| format!("{p:.6}")));
        rec.push(top.name().to_string());
        rec.push(ood[k].map_or(String::new(), |o| format!("{:.4}", o.score)));
        rec.push(ood[k].map_or(String::new(), |o| o.flagged.to_string()));
        w.write_record(&rec)?;
    }
    let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::machinery::fsutil::write_atomic(path, &bytes)
}

/// Human-readable summary.
pub fn print_table(m: &Metrics) {
    println!(
        "n = {} images of {} patients\naccuracy  {:.4}  [{:.4}, {:.4}]\nmacro-F1  {:.4}  [{:.4}, {:.4}]\nweighted F1 {:.4}   macro AUC {:.4}   ECE {:.4}",
        m.n,
        m.patients,
        m.accuracy,
        m.accuracy_ci.low,
        m.accuracy_ci.high,
        m.macro_f1,
        m.macro_f1_ci.low,
        m.macro_f1_ci.high,
        m.weighted_f1,
        m.macro_auc,
        m.ece
    );
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>11} {:>8} {:>8}",
        "class", "precision", "recall", "F1", "specificity", "AUC", "support"
    );
    for c in Class::ALL {
        let p = &m.per_class[c.name()];
        println!(
            "{:<10} {:>9.4} {:>9.4} {:>9.4} {:>11.4} {:>8.4} {:>8}",
            c.name(),
            p.precision,
            p.recall,
            p.f1,
            p.specificity,
            p.auc,
            p.support
        );
    }
}
