//! Evaluation reports: the confusion-matrix figure, `report.md`, `report.html` with a Grad-CAM
//! panel, and the per-source breakdown that exposes the paediatric-vs-adult shortcut.

use crate::metrics::Metrics;
use crate::study::breakdown::Breakdown;
use crate::study::table::{Table, esc};
use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;
use pneumoscope::{Class, NUM_CLASSES};
use std::path::Path;
use std::sync::Once;

/// Fonts tried, in order, for text in figures.
const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

static FONT: Once = Once::new();

/// Registers a font for figure text (DejaVu Sans); an error says what to install.
pub fn ensure_font() -> Result<()> {
    FONT.call_once(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return;
                }
            }
        }
    });
    let probe = plotters::style::FontDesc::new(FontFamily::SansSerif, 12.0, FontStyle::Normal);
    probe.box_size("x").map(|_| ()).map_err(|_| {
        anyhow!("no font for figures: install DejaVu Sans (Debian: fonts-dejavu-core)")
    })
}

/// Draws the confusion matrix twice, as counts and row-normalised, into a PNG.
pub fn confusion_png(
    path: &Path,
    m: &[[usize; NUM_CLASSES]; NUM_CLASSES],
    title: &str,
) -> Result<()> {
    ensure_font()?;
    let (w, h) = (1000u32, 520u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 22))?;
        let panels = root.split_evenly((1, 2));
        for (pi, panel) in panels.iter().enumerate() {
            confusion_panel(panel, m, pi == 1)?;
        }
        root.present()?;
    }
    image::RgbImage::from_raw(w, h, buf)
        .expect("buffer size")
        .save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Side of a cell of the confusion matrix, in pixels.
const CELL: i32 = 80;
/// Top left corner of the matrix in its panel.
const ORIGIN: (i32, i32) = (120, 60);

/// One panel of the confusion figure: counts, or `normalised` by row.
fn confusion_panel(
    panel: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    m: &[[usize; NUM_CLASSES]; NUM_CLASSES],
    normalised: bool,
) -> Result<()> {
    let (x0, y0) = ORIGIN;
    let caption = if normalised {
        "row-normalised (recall on the diagonal)"
    } else {
        "counts"
    };
    panel.draw(&Text::new(caption, (x0, 20), ("sans-serif", 16)))?;
    let largest = m.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    for (r, row) in m.iter().enumerate() {
        let total: usize = row.iter().sum();
        for (c, &v) in row.iter().enumerate() {
            let frac = if total == 0 {
                0.0
            } else {
                v as f64 / total as f64
            };
            let (shade, label) = if normalised {
                (frac, format!("{:.2}", frac))
            } else {
                (v as f64 / largest, v.to_string())
            };
            confusion_cell(panel, (r, c), shade, label)?;
        }
        panel.draw(&Text::new(
            Class::ALL[r].name(),
            (20, y0 + r as i32 * CELL + 30),
            ("sans-serif", 15),
        ))?;
    }
    for c in 0..NUM_CLASSES {
        panel.draw(&Text::new(
            Class::ALL[c].name(),
            (x0 + c as i32 * CELL + 8, y0 + 4 * CELL + 10),
            ("sans-serif", 15),
        ))?;
    }
    panel.draw(&Text::new(
        "true ↓  predicted →",
        (x0, y0 + 4 * CELL + 35),
        ("sans-serif", 14),
    ))?;
    Ok(())
}

/// The cell of true class `r` and predicted class `c`: shaded by `shade` (0–1), with `label`.
fn confusion_cell(
    panel: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    (r, c): (usize, usize),
    shade: f64,
    label: String,
) -> Result<()> {
    let color = RGBColor(
        (255.0 - 200.0 * shade) as u8,
        (255.0 - 150.0 * shade) as u8,
        255,
    );
    let (x, y) = (ORIGIN.0 + c as i32 * CELL, ORIGIN.1 + r as i32 * CELL);
    panel.draw(&Rectangle::new(
        [(x, y), (x + CELL, y + CELL)],
        color.filled(),
    ))?;
    panel.draw(&Rectangle::new(
        [(x, y), (x + CELL, y + CELL)],
        BLACK.stroke_width(1),
    ))?;
    let fg = if shade > 0.6 { WHITE } else { BLACK };
    panel.draw(&Text::new(
        label,
        (x + 22, y + 30),
        ("sans-serif", 18).into_font().color(&fg),
    ))?;
    Ok(())
}

/// One Grad-CAM panel entry.
pub struct CamEntry {
    /// Image file.
    pub file: String,
    /// True class.
    pub truth: Class,
    /// Predicted class.
    pub predicted: Class,
    /// Probability of the predicted class.
    pub confidence: f32,
    /// Overlay PNG, relative to the report.
    pub overlay: String,
}

/// Per-source rows: source → (n, accuracy, predicted-class counts).
pub type SourceBreakdown = Vec<(String, usize, f64, [usize; NUM_CLASSES])>;

/// The headline figures: images, patients, accuracy and macro-F1 with their patient-bootstrap
/// intervals, the weighted figures, macro ROC-AUC and the calibration error.
fn summary_table(m: &Metrics) -> Table {
    let mut t = Table::new(&["metric", "value"]);
    let with_ci = |v: f64, ci: &crate::metrics::Interval| {
        format!("{} % (95% CI {}–{})", pct(v), pct(ci.low), pct(ci.high))
    };
    let rows = [
        ("images", m.n.to_string()),
        ("patients", m.patients.to_string()),
        ("accuracy", with_ci(m.accuracy, &m.accuracy_ci)),
        ("macro-F1", with_ci(m.macro_f1, &m.macro_f1_ci)),
        ("weighted F1", format!("{} %", pct(m.weighted_f1))),
        (
            "weighted precision",
            format!("{} %", pct(m.weighted_precision)),
        ),
        ("weighted recall", format!("{} %", pct(m.weighted_recall))),
        ("macro ROC-AUC", format!("{:.4}", m.macro_auc)),
        ("expected calibration error", format!("{:.4}", m.ece)),
    ];
    for (k, v) in rows {
        t.rows.push(vec![k.to_string(), v]);
    }
    t
}

/// Counts of each true class (rows) against each predicted class (columns).
fn confusion_table(m: &Metrics) -> Table {
    let mut header = vec!["true \\ predicted"];
    header.extend(Class::ALL.iter().map(|c| c.name()));
    let mut t = Table::new(&header);
    for (r, row) in m.confusion.iter().enumerate() {
        let mut cells = vec![Class::ALL[r].name().to_string()];
        cells.extend(row.iter().map(|v| v.to_string()));
        t.rows.push(cells);
    }
    t
}

/// Precision, recall, F1, specificity, ROC-AUC and support of each class.
fn per_class_table(m: &Metrics) -> Table {
    let mut t = Table::new(&[
        "class",
        "precision",
        "recall",
        "F1",
        "specificity",
        "ROC-AUC",
        "support",
    ]);
    for c in Class::ALL {
        let pc = &m.per_class[c.name()];
        t.rows.push(vec![
            c.name().to_string(),
            pct(pc.precision),
            pct(pc.recall),
            pct(pc.f1),
            pct(pc.specificity),
            format!("{:.4}", pc.auc),
            pc.support.to_string(),
        ]);
    }
    t
}

/// Per source: images, accuracy and the predictions of each class.
fn source_table(sources: &SourceBreakdown) -> Table {
    let mut t = Table::new(&[
        "source",
        "images",
        "accuracy",
        "predicted normal",
        "bacterial",
        "viral",
        "covid19",
    ]);
    for (src, n, acc, pred) in sources {
        let mut row = vec![src.clone(), n.to_string(), format!("{} %", pct(*acc))];
        row.extend(pred.iter().map(|p| p.to_string()));
        t.rows.push(row);
    }
    t
}

fn pct(v: f64) -> String {
    format!("{:.1}", 100.0 * v)
}

/// What an evaluation report shows, rendered as Markdown ([`Report::markdown`]) or as HTML
/// ([`Report::html`]).
pub struct Report<'a> {
    /// The report's heading.
    pub title: &'a str,
    /// The model and data evaluated, in a sentence.
    pub model_desc: &'a str,
    /// The metrics of every image.
    pub metrics: &'a Metrics,
    /// Per source: images, accuracy and predictions.
    pub sources: &'a SourceBreakdown,
    /// Per population and source: the shortcut's mistakes.
    pub by_population: &'a Breakdown,
    /// The Grad-CAM panel.
    pub cams: &'a [CamEntry],
}

impl Report<'_> {
    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let m = self.metrics;
        let mut s = format!("# {}\n\n{}\n\n", self.title, self.model_desc);
        s += "> Research and teaching tool, not a medical device. Not for diagnosis.\n\n";
        s += &format!(
            "## Summary\n\n{}\nConfidence intervals: 1000 bootstrap resamples of patients.\n\n",
            summary_table(m).markdown()
        );
        s += &format!(
            "## Children and adults\n\n{CHILDREN_AND_ADULTS}\n\n{}\n",
            crate::study::breakdown::markdown(self.by_population)
        );
        s += &format!("## Per class\n\n{}", per_class_table(m).markdown());
        s += &format!(
            "\n## Confusion matrix\n\n![confusion matrix](confusion_matrix.png)\n\n{}",
            confusion_table(m).markdown()
        );
        s += "\n## By source (shortcut check)\n\nIn the public collections every COVID-19 image comes from adults (often figures cut from papers) and the Kermany images from children aged 1–5, so a model can tell the classes apart by age or image source instead of by disease. The table shows what the model predicts per source; a source whose images are all predicted as one class is a warning sign, and results on a single-source external set are the honest test.\n\n";
        s += &source_table(self.sources).markdown();
        if !self.cams.is_empty() {
            s += "\n## Grad-CAM\n\nMaps of the predicted class at the last convolutional block, over the image the network sees.\n\n| image | true | predicted | map |\n|---|---|---|---|\n";
            for e in self.cams {
                s += &format!(
                    "| {} | {} | {} ({:.2}) | ![]({}) |\n",
                    Path::new(&e.file)
                        .file_name()
                        .map(|f| f.to_string_lossy().to_string())
                        .unwrap_or_default(),
                    e.truth,
                    e.predicted,
                    e.confidence,
                    e.overlay
                );
            }
        }
        s
    }

    /// The HTML report (self-contained apart from the PNGs beside it).
    pub fn html(&self) -> String {
        let m = self.metrics;
        let mut s = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{t}</title><style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2rem auto;padding:0 1rem;color:#222}}table{{border-collapse:collapse;margin:1rem 0}}td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}}th:first-child,td:first-child{{text-align:left}}.note{{background:#fff4d6;padding:.6rem 1rem;border-left:4px solid #e0a800}}.cams{{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:1rem}}figure{{margin:0}}figcaption{{font-size:.85rem}}img{{max-width:100%}}</style></head><body><h1>{t}</h1><p>{d}</p><p class=\"note\">Research and teaching tool, not a medical device. Not for diagnosis.</p>",
            t = esc(self.title),
            d = esc(self.model_desc)
        );
        s += &format!("<h2>Summary</h2>{}", summary_table(m).html());
        s += &format!(
            "<h2>Children and adults</h2><p>{}</p>{}",
            esc(CHILDREN_AND_ADULTS),
            crate::study::breakdown::html(self.by_population)
        );
        s += &format!("<h2>Per class</h2>{}", per_class_table(m).html());
        s += "<h2>Confusion matrix</h2><img src=\"confusion_matrix.png\" alt=\"confusion matrix, counts and row-normalised\">";
        s += "<h2>By source (shortcut check)</h2><p>Every COVID-19 image of the public collections comes from adults, the Kermany images from children aged 1–5: a model can separate the classes by age or source. A source predicted as a single class is a warning sign.</p>";
        s += &source_table(self.sources).html();
        if !self.cams.is_empty() {
            s += "<h2>Grad-CAM</h2><p>Maps of the predicted class at the last convolutional block.</p><div class=\"cams\">";
            for e in self.cams {
                let name = Path::new(&e.file)
                    .file_name()
                    .map(|f| f.to_string_lossy().to_string())
                    .unwrap_or_default();
                s += &format!(
                    "<figure><img src=\"{}\" alt=\"Grad-CAM of {}\"><figcaption>{}<br>true <b>{}</b>, predicted <b>{}</b> ({:.2})</figcaption></figure>",
                    esc(&e.overlay),
                    esc(&name),
                    esc(&name),
                    e.truth,
                    e.predicted,
                    e.confidence
                );
            }
            s += "</div>";
        }
        s += "</body></html>\n";
        s
    }
}

/// What the "Children and adults" section says before its tables.
const CHILDREN_AND_ADULTS: &str = "Every public COVID-19 image is an adult's and most paediatric images are pneumonia, so a model can learn \"adult\" instead of \"COVID-19\". These are the headline figures: the four-class macro-F1 on the paper's population (children and COVID-19), and per population and source what adult normals, pneumonia of unknown pathogen (NIH ChestX-ray14: bacterial or viral, never COVID-19) and COVID-19 images were called.";
