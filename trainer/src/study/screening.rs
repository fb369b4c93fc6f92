//! `pneumoscope study`: several cross-validations side by side (`train --folds`), as the model
//! card shows them: one Markdown table of the headline figures (mean ± sd over the folds run)
//! with what each setting costs (seconds per epoch, one-time feature extraction, peak memory),
//! and a figure of validation macro-F1 per epoch (mean over folds, and their range).

use crate::machinery::fsutil::read_json;
use anyhow::{Context, Result, bail};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One cross-validation of the study: its label and folder.
#[derive(Clone, Debug)]
pub struct Setting {
    /// The row's label in the table and the figure.
    pub label: String,
    /// The cross-validation folder (`cv.json`, `fold-K/`).
    pub dir: PathBuf,
}

impl std::str::FromStr for Setting {
    type Err = String;
    /// `LABEL=DIR`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once('=') {
            Some((l, d)) if !l.is_empty() && !d.is_empty() => Ok(Setting {
                label: l.into(),
                dir: d.into(),
            }),
            _ => Err(format!("'{s}': expected LABEL=CV_FOLDER")),
        }
    }
}

/// The figures of the table, in its column order: (key in `cv.json`, column header).
const COLUMNS: [(&str, &str); 6] = [
    (
        "macro_f1_children_and_covid19",
        "macro-F1 children + COVID-19",
    ),
    (
        "macro_f1_all_with_a_class",
        "macro-F1 every image with a class",
    ),
    ("adult_normal_called_covid19", "adult normal → COVID-19"),
    ("adult_normal_called_pneumonia", "adult normal → pneumonia"),
    ("adult_pneumonia_called_normal", "NIH pneumonia → normal"),
    ("adult_covid19_recall", "COVID-19 recall"),
];

/// What one setting's folders say.
struct Read {
    label: String,
    folds: Vec<usize>,
    of: usize,
    /// Each headline figure per fold read (in the order of `folds`), where every fold has it.
    figures: BTreeMap<String, Vec<f64>>,
    /// Validation macro-F1 per epoch, per fold.
    curves: Vec<Vec<f64>>,
    epoch_seconds: Vec<f64>,
    extraction_seconds: f64,
    peak_rss: u64,
}

/// The setting's cross-validation, restricted to the folds of `only` when given.
fn read(s: &Setting, only: Option<&[usize]>) -> Result<Read> {
    let cv = read_json::<serde_json::Value>(&s.dir.join("cv.json")).with_context(|| {
        format!(
            "{}: not a finished cross-validation (train --folds writes cv.json)",
            s.dir.display()
        )
    })?;
    let of = cv["folds"].as_u64().unwrap_or(0) as usize;
    let folds: Vec<usize> = cv["per_fold"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["fold"].as_u64())
                .map(|f| f as usize)
                .collect()
        })
        .unwrap_or_default();
    let keep: Vec<usize> = (0..folds.len())
        .filter(|&i| only.is_none_or(|o| o.contains(&folds[i])))
        .collect();
    if keep.is_empty() {
        bail!(
            "{}: none of the folds asked for was run (it ran {folds:?})",
            s.dir.display()
        );
    }
    let mut figures = BTreeMap::new();
    for (k, _) in COLUMNS {
        let per_fold: Vec<f64> = cv["spread"][k]["folds"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
            .unwrap_or_default();
        // A figure some fold lacks cannot be matched to its folds: left out.
        if per_fold.len() == folds.len() {
            figures.insert(k.to_string(), keep.iter().map(|&i| per_fold[i]).collect());
        }
    }
    let folds: Vec<usize> = keep.iter().map(|&i| folds[i]).collect();
    let mut r = Read {
        label: s.label.clone(),
        folds: folds.clone(),
        of,
        figures,
        curves: Vec::new(),
        epoch_seconds: Vec::new(),
        extraction_seconds: 0.0,
        peak_rss: 0,
    };
    for f in folds {
        let run = s.dir.join(format!("fold-{f}"));
        let mut rd = csv::Reader::from_path(run.join("epochs.csv"))
            .with_context(|| format!("cannot read {}", run.join("epochs.csv").display()))?;
        let mut curve = Vec::new();
        for rec in rd.deserialize::<crate::train::EpochLog>() {
            let rec =
                rec.with_context(|| format!("{}: malformed", run.join("epochs.csv").display()))?;
            curve.push(rec.val_macro_f1);
            r.epoch_seconds.push(rec.seconds);
        }
        r.curves.push(curve);
        if let Ok(t) = read_json::<serde_json::Value>(&run.join("timing.json")) {
            r.extraction_seconds += t["feature_extraction_seconds"].as_f64().unwrap_or(0.0);
            r.peak_rss = r
                .peak_rss
                .max(t["peak_rss_bytes_this_session"].as_u64().unwrap_or(0));
        }
    }
    Ok(r)
}

/// Writes `OUT/study.md` and `OUT/val-macro-f1.png` for the settings (each restricted to the
/// folds of `only` when given, so that a screening on a subset of folds is compared with the
/// others on the same folds), and returns the table.
pub fn write(settings: &[Setting], only: Option<&[usize]>, out: &Path) -> Result<String> {
    if settings.is_empty() {
        bail!("no cross-validation given (LABEL=CV_FOLDER ...)");
    }
    let rows: Vec<Read> = settings
        .iter()
        .map(|s| read(s, only))
        .collect::<Result<_>>()?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let table = markdown(&rows);
    crate::machinery::fsutil::write_atomic(&out.join("study.md"), table.as_bytes())?;
    curves_png(&rows, &out.join("val-macro-f1.png"))?;
    Ok(table)
}

fn markdown(rows: &[Read]) -> String {
    let mut t = String::from("| setting | folds |");
    for (_, h) in COLUMNS {
        t += &format!(" {h} |");
    }
    t += " s / epoch | one-time extraction, s / fold | peak memory |\n|---|---|";
    t += &"---|".repeat(COLUMNS.len() + 3);
    t += "\n";
    for r in rows {
        let folds = if r.folds.len() == r.of {
            format!("{}", r.of)
        } else {
            let run: Vec<String> = r.folds.iter().map(|f| f.to_string()).collect();
            format!("{} of {}", run.join(", "), r.of)
        };
        t += &format!("| {} | {folds} |", r.label);
        for (k, _) in COLUMNS {
            t += &match r.figures.get(k) {
                Some(v) if v.len() > 1 => {
                    let n = v.len() as f64;
                    let m = v.iter().sum::<f64>() / n;
                    let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
                    format!(" {m:.3} ± {sd:.3} |")
                }
                Some(v) if v.len() == 1 => format!(" {:.3} |", v[0]),
                _ => " – |".into(),
            };
        }
        let n = r.epoch_seconds.len().max(1) as f64;
        let per_epoch = r.epoch_seconds.iter().sum::<f64>() / n;
        let per_fold = r.extraction_seconds / r.folds.len().max(1) as f64;
        t += &format!(
            " {per_epoch:.1} | {per_fold:.0} | {:.2} GB |\n",
            r.peak_rss as f64 / 1e9
        );
    }
    t
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Validation macro-F1 per epoch: each setting's mean over its folds as a line, the folds'
/// range as a band.
fn curves_png(rows: &[Read], path: &Path) -> Result<()> {
    crate::study::report::ensure_font()?;
    let epochs = rows
        .iter()
        .flat_map(|r| r.curves.iter().map(Vec::len))
        .max()
        .unwrap_or(1)
        .max(2);
    let all = rows.iter().flat_map(|r| r.curves.iter().flatten().copied());
    let lo = all.clone().fold(1.0f64, f64::min).min(0.9) - 0.02;
    let hi = all.fold(0.0f64, f64::max).max(lo + 0.1) + 0.02;
    let (w, h) = (900u32, 560u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)
            .with_context(|| format!("drawing {}", path.display()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Validation macro-F1 per epoch (mean over folds; band: their range)",
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(1f64..epochs as f64, lo..hi)
            .with_context(|| format!("drawing {}", path.display()))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("validation macro-F1")
            .draw()
            .with_context(|| format!("drawing {}", path.display()))?;
        for (i, r) in rows.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let n = r.curves.iter().map(Vec::len).max().unwrap_or(0);
            let at = |e: usize| -> Vec<f64> {
                r.curves.iter().filter_map(|c| c.get(e).copied()).collect()
            };
            let mean: Vec<(f64, f64)> = (0..n)
                .map(|e| {
                    let v = at(e);
                    ((e + 1) as f64, v.iter().sum::<f64>() / v.len() as f64)
                })
                .collect();
            if r.curves.len() > 1 {
                let upper =
                    (0..n).map(|e| ((e + 1) as f64, at(e).into_iter().fold(f64::MIN, f64::max)));
                let lower = (0..n)
                    .rev()
                    .map(|e| ((e + 1) as f64, at(e).into_iter().fold(f64::MAX, f64::min)));
                chart
                    .draw_series(std::iter::once(Polygon::new(
                        upper.chain(lower).collect::<Vec<_>>(),
                        colour.mix(0.15),
                    )))
                    .with_context(|| format!("drawing {}", path.display()))?;
            }
            chart
                .draw_series(std::iter::once(PathElement::new(
                    mean,
                    colour.stroke_width(2),
                )))
                .with_context(|| format!("drawing {}", path.display()))?
                .label(format!(
                    "{} ({} fold{})",
                    r.label,
                    r.curves.len(),
                    if r.curves.len() == 1 { "" } else { "s" }
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .label_font(("sans-serif", 14))
            .draw()
            .with_context(|| format!("drawing {}", path.display()))?;
        root.present()
            .with_context(|| format!("drawing {}", path.display()))?;
    }
    image::RgbImage::from_raw(w, h, buf)
        .expect("buffer size")
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}
