//! `pneumoscope benchmark`: the paper's comparison. For each architecture it trains with one
//! protocol (resuming a run left half-way), exports, evaluates on the test split and measures
//! inference speed, writing `OUT/results/ARCH.json`; then `merge` joins the results of one or
//! more output folders (the shards of a sweep spread over machines) into a table (Markdown,
//! CSV, HTML), a grid of confusion matrices and a grid of Grad-CAMs of the same test images.

use crate::data::Split;
use crate::study::table::esc;
use crate::train::{Mode, Optimisation, TrainConfig};
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use plotters::prelude::*;
use pneumoscope::arch::{self, ArchSpec};
use pneumoscope::model::footprint;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Options of `benchmark` (a sweep); `benchmark merge` takes none of them.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchmarkOptions {
    /// The manifest written by `data build`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// `all` or a comma-separated list of architectures (run in registry order).
    #[arg(long, default_value = "all", value_parser = select_archs)]
    pub archs: ArchNames,
    /// Protocol: `frozen` (the paper's), `partial` or `finetune`.
    #[arg(long, value_enum, default_value = "frozen")]
    pub mode: Mode,
    /// Output folder (runs, models, evaluations, results, comparison).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run only this machine's share of the architectures, `i/n` (1-based): architectures `k`
    /// with `k % n == i - 1`.
    #[arg(long, default_value = "1/1", value_parser = parse_shard)]
    pub shard: Shard,
    /// Epochs, batch, learning rate, seed and devices of every run.
    #[command(flatten)]
    pub optimisation: Optimisation,
    /// Architectures without fetched ImageNet weights train from random initialisation
    /// (marked in every output) instead of failing.
    #[arg(long)]
    pub allow_random_init: bool,
}

/// Architecture names, in registry order.
#[derive(Clone, Debug)]
pub struct ArchNames(pub Vec<String>);

/// This machine's share of a sweep, `i/n` (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// Which share.
    pub i: usize,
    /// Of how many.
    pub n: usize,
}

/// One architecture's line of the comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArchResult {
    /// Architecture.
    pub arch: String,
    /// Protocol.
    pub mode: Mode,
    /// `imagenet:<file> sha256:<hex>` or `random-init`.
    pub weight_source: String,
    /// Parameters of the classifier (paper's head included).
    pub parameters: usize,
    /// Multiply-accumulates per image, billions.
    pub gmacs: f64,
    /// Training wall time (feature extraction and epochs), seconds.
    pub train_seconds: f64,
    /// Best epoch (by validation macro-F1).
    pub best_epoch: Option<u64>,
    /// Validation macro-F1 of the best epoch.
    pub val_macro_f1: Option<f64>,
    /// Inference throughput of the exported model, Burn CPU backend, images per second.
    pub inference_img_s: f64,
    /// Batch of the throughput measurement.
    pub inference_batch: usize,
    /// Cores of the machine that measured it.
    pub cores: usize,
    /// Test-split metrics (the evaluation's JSON).
    pub test: serde_json::Value,
    /// Confusion-matrix figure, relative to the output folder.
    pub confusion_png: String,
    /// Grad-CAM overlays of the same test images for every architecture, relative to the
    /// output folder.
    pub gradcams: Vec<String>,
    /// The test images of those overlays.
    pub gradcam_images: Vec<String>,
}

impl ArchResult {
    fn random_init(&self) -> bool {
        self.weight_source == crate::pretrained::weights::RANDOM_INIT
    }
}

/// Parses `i/n`.
pub fn parse_shard(s: &str) -> Result<Shard> {
    let bad = || anyhow::anyhow!("--shard {s}: expected i/n with 1 <= i <= n (e.g. 2/3)");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i == 0 || i > n {
        return Err(bad());
    }
    Ok(Shard { i, n })
}

/// The architectures named by `--archs` (`all` or a comma-separated list), in registry order.
pub fn select_archs(list: &str) -> Result<ArchNames> {
    let all: Vec<String> = arch::registry()
        .iter()
        .map(|a| a.name.to_string())
        .collect();
    if list == "all" {
        return Ok(ArchNames(all));
    }
    let wanted: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for w in &wanted {
        arch::find(w)?;
    }
    Ok(ArchNames(
        all.into_iter()
            .filter(|a| wanted.contains(&a.as_str()))
            .collect(),
    ))
}

/// Runs this shard's architectures, then merges what the output folder holds.
pub fn sweep(o: &BenchmarkOptions) -> Result<()> {
    let (Some(data), Some(out)) = (o.data.as_deref(), o.out.as_deref()) else {
        bail!("benchmark needs --data MANIFEST and --out DIR");
    };
    if o.mode == Mode::Partial {
        let whole: Vec<&str> = o
            .archs
            .0
            .iter()
            .filter(|a| arch::find(a).is_ok_and(|s| !s.supports_partial()))
            .map(String::as_str)
            .collect();
        if !whole.is_empty() {
            anyhow::bail!(
                "--mode partial: {} not split into blocks here; partial fine-tuning supports \
                 the EfficientNet-Lite architectures (choose them with --archs)",
                whole.join(", ")
            );
        }
    }
    let Shard { i, n } = o.shard;
    let mine: Vec<&String> = o
        .archs
        .0
        .iter()
        .enumerate()
        .filter(|(k, _)| k % n == i - 1)
        .map(|(_, a)| a)
        .collect();
    std::fs::create_dir_all(out.join("results"))
        .with_context(|| format!("cannot create {}", out.display()))?;
    let mut failed = Vec::new();
    for (k, name) in mine.iter().enumerate() {
        println!("[{}/{}] {name} ({:?})", k + 1, mine.len(), o.mode);
        let spec = arch::find(name)?;
        match run_one(o, data, out, &spec) {
            Ok(r) => println!(
                "{name}: test macro-F1 {:.4}, accuracy {:.4}, {:.1} img/s, trained in {:.0} s, weights {}",
                r.test["macro_f1"].as_f64().unwrap_or(f64::NAN),
                r.test["accuracy"].as_f64().unwrap_or(f64::NAN),
                r.inference_img_s,
                r.train_seconds,
                r.weight_source
            ),
            Err(e) => {
                eprintln!("error: {name}: {e:#}");
                failed.push(name.to_string());
            }
        }
    }
    let any = std::fs::read_dir(out.join("results"))?.next().is_some();
    if any {
        merge(&[out.to_path_buf()], out)?;
    }
    if !failed.is_empty() {
        bail!(
            "{} architectures failed: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// One architecture of the sweep: trains (or resumes) its run, exports, evaluates on the
/// test split and times it; a finished result is read back instead.
fn run_one(o: &BenchmarkOptions, data: &Path, out: &Path, spec: &ArchSpec) -> Result<ArchResult> {
    let result_path = out.join("results").join(format!("{}.json", spec.name));
    let run_dir = out.join("runs").join(spec.name);
    let model_path = out
        .join("models")
        .join(format!("{}.pneumoscope", spec.name));
    let eval_rel = format!("eval/{}", spec.name);
    let eval_dir = out.join(&eval_rel);
    if let Ok(bytes) = std::fs::read(&result_path)
        && let Ok(r) = serde_json::from_slice::<ArchResult>(&bytes)
        && model_path.is_file()
    {
        println!("{}: already done ({})", spec.name, result_path.display());
        return Ok(r);
    }
    if !run_dir.join("model.bpk").is_file() {
        train_arch(o, data, spec, &run_dir)?;
    }
    std::fs::create_dir_all(model_path.parent().unwrap())?;
    let header = crate::model_file::export::pack(
        &run_dir,
        &model_path,
        &crate::model_file::export::ExportOptions {
            ood: false,
            ..Default::default()
        },
    )?;
    let device = o.optimisation.device.open()?.swap_remove(0);
    let e = crate::study::evaluate::on_split(
        &crate::study::evaluate::EvaluateOptions {
            model: model_path.clone(),
            data: data.to_path_buf(),
            split: Split::Test,
            out: Some(eval_dir.clone()),
            tta: false,
            lungs: None,
        },
        &device,
    )?;
    let (inference_img_s, inference_batch) = throughput(&model_path)?;
    let timing: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run_dir.join("timing.json")).context("the run has no timing.json")?,
    )?;
    let train_seconds = timing["feature_extraction_seconds"].as_f64().unwrap_or(0.0)
        + timing["epoch_seconds"]
            .as_array()
            .map_or(0.0, |a| a.iter().filter_map(|v| v.as_f64()).sum());
    let gradcams = gradcam_panel(&eval_dir, &eval_rel);
    let r = ArchResult {
        arch: spec.name.to_string(),
        mode: o.mode,
        weight_source: header.weight_source.clone(),
        parameters: footprint(spec).parameters,
        gmacs: spec.gmacs,
        train_seconds,
        best_epoch: timing["best_epoch"].as_u64(),
        val_macro_f1: header.training["best_val_macro_f1"].as_f64(),
        inference_img_s,
        inference_batch,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        test: {
            let mut v = serde_json::to_value(&e.metrics)?;
            v["split"] = serde_json::json!("test");
            v
        },
        confusion_png: format!("{eval_rel}/confusion_matrix.png"),
        gradcam_images: gradcams.iter().map(|g| g.1.clone()).collect(),
        gradcams: gradcams.into_iter().map(|g| g.0).collect(),
    };
    crate::machinery::fsutil::write_atomic(
        &result_path,
        serde_json::to_string_pretty(&r)?.as_bytes(),
    )?;
    Ok(r)
}

/// Trains one architecture with the sweep's settings and `train`'s defaults for the rest,
/// resuming a run left half-way.
fn train_arch(o: &BenchmarkOptions, data: &Path, spec: &ArchSpec, run_dir: &Path) -> Result<()> {
    let resume = run_dir.join("state.json").is_file();
    let weights = if resume {
        None // the run's config.json names them
    } else {
        crate::pretrained::fetch::resolve_weights(spec.name, None, o.allow_random_init)?
    };
    let cfg = TrainConfig {
        data: data.to_path_buf(),
        arch: spec.name.to_string(),
        weights,
        mode: o.mode,
        optimisation: o.optimisation.clone(),
        ..TrainConfig::default()
    };
    crate::train::train(cfg, run_dir, resume)
}

/// The evaluation's Grad-CAM panel (`gradcam.csv`): each overlay, relative to the output
/// folder, with its test image.
fn gradcam_panel(eval_dir: &Path, eval_rel: &str) -> Vec<(String, String)> {
    let mut gradcams: Vec<(String, String)> = Vec::new();
    let csv = eval_dir.join("gradcam.csv");
    if let Ok(mut r) = csv::Reader::from_path(&csv) {
        for rec in r.records().flatten() {
            gradcams.push((format!("{eval_rel}/{}", &rec[0]), rec[1].to_string()));
        }
    }
    gradcams
}

/// Images per second of the exported model on the Burn CPU backend (batch 16, after one
/// warm-up batch, best of three timed batches).
fn throughput(model: &Path) -> Result<(f64, usize)> {
    let engine = crate::model_file::load_engine(model, &Device::flex())?;
    let batch = 16;
    let x = vec![engine.blank_input(); batch];
    engine.classify_batch(&x)?;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        engine.classify_batch(&x)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok((batch as f64 / best, batch))
}

/// Reads the results of `dirs` (each with `results/*.json`) and writes the comparison into
/// `out`. Figures are referenced relative to their own folder and copied when `out` differs.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<Vec<ArchResult>> {
    let mut found: Vec<(ArchResult, PathBuf)> = Vec::new();
    for dir in dirs {
        let res = dir.join("results");
        let entries = std::fs::read_dir(&res).with_context(|| {
            format!(
                "{}: no results/ folder (not a benchmark output)",
                dir.display()
            )
        })?;
        for entry in entries {
            let p = entry?.path();
            if p.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let r: ArchResult = serde_json::from_slice(&std::fs::read(&p)?)
                .with_context(|| format!("{}: not a benchmark result", p.display()))?;
            if let Some((prev, from)) = found
                .iter()
                .find(|(f, _)| f.arch == r.arch && f.mode == r.mode)
            {
                bail!(
                    "{} ({:?}) is in both {} and {}; merge each architecture once",
                    prev.arch,
                    prev.mode,
                    from.display(),
                    dir.display()
                );
            }
            found.push((r, dir.clone()));
        }
    }
    if found.is_empty() {
        bail!(
            "no results to merge in {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let order: Vec<&str> = arch::registry().iter().map(|a| a.name).collect();
    found.sort_by_key(|(r, _)| {
        (
            order.iter().position(|n| *n == r.arch),
            format!("{:?}", r.mode),
        )
    });
    std::fs::create_dir_all(out)?;
    let out_abs = out.canonicalize()?;
    // Figures of other folders are copied under out/figures/<arch>/ so the outputs stay
    // relative to `out`.
    let mut results = Vec::new();
    for (mut r, dir) in found {
        if dir.canonicalize()? != out_abs {
            let prefix = format!("figures/{}", r.arch);
            let copy = |rel: &str| -> Result<String> {
                let dst = format!("{prefix}/{}", rel.rsplit('/').next().unwrap_or(rel));
                std::fs::create_dir_all(out.join(&prefix))?;
                std::fs::copy(dir.join(rel), out.join(&dst))
                    .with_context(|| format!("cannot copy {}", dir.join(rel).display()))?;
                Ok(dst)
            };
            r.confusion_png = copy(&r.confusion_png)?;
            r.gradcams = r.gradcams.iter().map(|g| copy(g)).collect::<Result<_>>()?;
        }
        results.push(r);
    }
    std::fs::write(out.join("comparison.csv"), csv_table(&results)?)?;
    std::fs::write(out.join("comparison.md"), markdown(&results))?;
    std::fs::write(out.join("comparison.html"), html(&results))?;
    confusion_grid(out, &results)?;
    gradcam_grid(out, &results)?;
    println!(
        "wrote {} ({} architectures)",
        out.join("comparison.md").display(),
        results.len()
    );
    Ok(results)
}

const CLASSES: [&str; 4] = ["normal", "bacterial", "viral", "covid19"];

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn weights_label(r: &ArchResult) -> String {
    if r.random_init() {
        "random-init".into()
    } else if let Some(rest) = r.weight_source.strip_prefix("imagenet:") {
        format!(
            "ImageNet ({})",
            rest.split_whitespace().next().unwrap_or(rest)
        )
    } else {
        r.weight_source.clone()
    }
}

/// Column headers and rows of the comparison.
fn rows(results: &[ArchResult]) -> (Vec<String>, Vec<Vec<String>>) {
    let mut head: Vec<String> = [
        "architecture",
        "protocol",
        "weights",
        "parameters (M)",
        "GMACs",
        "train time (s)",
        "inference (img/s, CPU)",
        "accuracy",
        "macro-F1",
        "macro-F1 95% CI",
        "macro AUC",
    ]
    .map(String::from)
    .to_vec();
    for c in CLASSES {
        for m in ["P", "R", "F1"] {
            head.push(format!("{c} {m}"));
        }
    }
    let body = results
        .iter()
        .map(|r| {
            let t = &r.test;
            let mut row = vec![
                r.arch.clone(),
                format!("{:?}", r.mode).to_lowercase(),
                weights_label(r),
                format!("{:.1}", r.parameters as f64 / 1e6),
                format!("{:.2}", r.gmacs),
                format!("{:.0}", r.train_seconds),
                format!("{:.1}", r.inference_img_s),
                format!("{:.4}", f(&t["accuracy"])),
                format!("{:.4}", f(&t["macro_f1"])),
                format!(
                    "{:.3}–{:.3}",
                    f(&t["macro_f1_ci"]["low"]),
                    f(&t["macro_f1_ci"]["high"])
                ),
                format!("{:.3}", f(&t["macro_auc"])),
            ];
            for c in CLASSES {
                let pc = &t["per_class"][c];
                for m in ["precision", "recall", "f1"] {
                    row.push(format!("{:.3}", f(&pc[m])));
                }
            }
            row
        })
        .collect();
    (head, body)
}

fn csv_table(results: &[ArchResult]) -> Result<Vec<u8>> {
    let (head, body) = rows(results);
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&head)?;
    for r in body {
        w.write_record(&r)?;
    }
    Ok(w.into_inner()?)
}

fn caveat(results: &[ArchResult]) -> String {
    let random: Vec<&str> = results
        .iter()
        .filter(|r| r.random_init())
        .map(|r| r.arch.as_str())
        .collect();
    let mut s = String::new();
    if !random.is_empty() {
        s.push_str(&format!(
            "**Random-init rows** ({}) had no ImageNet weights on the machine that ran them: their \
             backbones are random, so their numbers measure the pipeline, not the architecture, \
             and must not be compared with the paper. Fetch the weights (`pneumoscope weights \
             fetch all`) and run again for the real comparison.\n\n",
            random.join(", ")
        ));
    }
    s.push_str(
        "Test split of the manifest (patients disjoint from training and validation). Macro-F1 \
         CI: 95% bootstrap over patients. Inference: the exported model on the Burn CPU backend, \
         batch 16, best of three batches, on the machine that ran each row. GMACs: \
         multiply-accumulates per image of the ImageNet network at its input size. A research \
         and teaching tool, not a medical device.\n",
    );
    s
}

fn markdown(results: &[ArchResult]) -> String {
    let (head, body) = rows(results);
    let mut s = String::from("# Pneumoscope benchmark: the paper's architectures\n\n");
    s.push_str(&caveat(results));
    s.push('\n');
    s.push_str(&format!("| {} |\n", head.join(" | ")));
    s.push_str(&format!("|{}\n", "---|".repeat(head.len())));
    for r in body {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s.push_str("\n![confusion matrices](confusion_grid.png)\n\n![Grad-CAM](gradcam_grid.png)\n");
    s
}

fn html(results: &[ArchResult]) -> String {
    let (head, body) = rows(results);
    let mut s = String::from(
        "<!doctype html><meta charset=utf-8><title>Pneumoscope benchmark</title>\
         <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
         td,th{border:1px solid #bbb;padding:.25em .5em;text-align:right}td:first-child,th{text-align:left}\
         tr.random td{color:#777;font-style:italic}img{max-width:100%}</style>\
         <h1>Pneumoscope benchmark: the paper's architectures</h1>",
    );
    for para in caveat(results)
        .split("\n\n")
        .filter(|p| !p.trim().is_empty())
    {
        s.push_str(&format!("<p>{}</p>", esc(&para.replace("**", ""))));
    }
    s.push_str("<table><tr>");
    for h in &head {
        s.push_str(&format!("<th>{}</th>", esc(h)));
    }
    s.push_str("</tr>");
    for (r, row) in results.iter().zip(body) {
        let class = if r.random_init() { " class=random" } else { "" };
        s.push_str(&format!("<tr{class}>"));
        for c in row {
            s.push_str(&format!("<td>{}</td>", esc(&c)));
        }
        s.push_str("</tr>");
    }
    s.push_str(
        "</table><h2>Confusion matrices</h2><img src=confusion_grid.png alt=\"confusion matrices\">\
         <h2>Grad-CAM (the same test images for every architecture)</h2>\
         <img src=gradcam_grid.png alt=\"Grad-CAM grid\">",
    );
    s
}

fn plot_err<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    anyhow::Error::new(e).context("drawing failed")
}

/// The confusion-matrix figures of all architectures tiled, three per row.
fn confusion_grid(out: &Path, results: &[ArchResult]) -> Result<()> {
    let (cw, ch) = (500u32, 260u32);
    let cols = 3u32;
    let rows_n = (results.len() as u32).div_ceil(cols);
    let mut grid = image::RgbImage::from_pixel(cw * cols, ch * rows_n, image::Rgb([255, 255, 255]));
    for (k, r) in results.iter().enumerate() {
        let img = image::open(out.join(&r.confusion_png))
            .with_context(|| format!("cannot read {}", out.join(&r.confusion_png).display()))?
            .to_rgb8();
        let small = image::imageops::resize(&img, cw, ch, image::imageops::FilterType::Triangle);
        let (x, y) = ((k as u32 % cols) * cw, (k as u32 / cols) * ch);
        image::imageops::replace(&mut grid, &small, x as i64, y as i64);
    }
    grid.save(out.join("confusion_grid.png"))
        .context("cannot write confusion_grid.png")
}

/// Rows: architectures; columns: the same test images; each cell the Grad-CAM overlay.
fn gradcam_grid(out: &Path, results: &[ArchResult]) -> Result<()> {
    let cols = results.iter().map(|r| r.gradcams.len()).max().unwrap_or(0) as u32;
    if cols == 0 {
        return Ok(());
    }
    let (cell, label, top) = (160u32, 190u32, 28u32);
    let (w, h) = (label + cell * cols, top + cell * results.len() as u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    crate::study::report::ensure_font()?;
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        // Column headers: the true class of each test image (overlays are named CLASS-k.png).
        if let Some(first) = results.iter().max_by_key(|r| r.gradcams.len()) {
            for (j, g) in first.gradcams.iter().enumerate() {
                let stem = g.rsplit('/').next().unwrap_or(g);
                let class = stem.split('-').next().unwrap_or(stem);
                let x = (label + j as u32 * cell + 8) as i32;
                root.draw(&Text::new(
                    format!("true: {class}"),
                    (x, 6),
                    ("sans-serif", 14),
                ))
                .map_err(plot_err)?;
            }
        }
        for (k, r) in results.iter().enumerate() {
            let y = (top + k as u32 * cell + cell / 2) as i32;
            root.draw(&Text::new(r.arch.clone(), (8, y - 10), ("sans-serif", 16)))
                .map_err(plot_err)?;
            let note = if r.random_init() {
                "random-init".to_string()
            } else {
                "ImageNet".to_string()
            };
            root.draw(&Text::new(
                note,
                (8, y + 10),
                ("sans-serif", 13)
                    .into_font()
                    .color(&RGBColor(110, 110, 110)),
            ))
            .map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    let mut grid = image::RgbImage::from_raw(w, h, buf).expect("buffer size");
    for (k, r) in results.iter().enumerate() {
        for (j, g) in r.gradcams.iter().enumerate() {
            let img = image::open(out.join(g))
                .with_context(|| format!("cannot read {}", out.join(g).display()))?
                .to_rgb8();
            let small = image::imageops::resize(
                &img,
                cell - 4,
                cell - 4,
                image::imageops::FilterType::Triangle,
            );
            image::imageops::replace(
                &mut grid,
                &small,
                (label + j as u32 * cell + 2) as i64,
                (top + k as u32 * cell + 2) as i64,
            );
        }
    }
    grid.save(out.join("gradcam_grid.png"))
        .context("cannot write gradcam_grid.png")
}
