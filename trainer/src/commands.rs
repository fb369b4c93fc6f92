//! The command line: every verb, its options and what it prints. Each verb's options are a
//! clap `Args` struct — the module that does the work owns it when the work needs the
//! settings (`train::TrainConfig`, `export::ExportOptions`, …) — and each verb is one short
//! function here.

use crate::bench::{forward, throughput};
use crate::model_file::export;
use crate::pretrained::fetch;
use crate::study::{breakdown, comparison, cv, ensemble, evaluate};
use crate::{data, inspect, lungs, train};
use anyhow::Result;
use burn::prelude::*;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Chest X-ray pneumonia classification by transfer learning (research and teaching tool, not
/// a medical device).
#[derive(Parser)]
#[command(name = "pneumoscope", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Dataset tools.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// The architecture registry: input, parameters, multiply-accumulates, Grad-CAM layer,
    /// head and published weights of each architecture.
    Archs,
    /// Published ImageNet weights of the architectures.
    Weights {
        #[command(subcommand)]
        command: WeightsCommand,
    },
    /// Train a classifier (frozen backbone or full fine-tuning).
    Train(Box<TrainArgs>),
    /// The lung segmenter: train it on image/mask pairs, or segment images.
    Lungs {
        #[command(subcommand)]
        command: LungsCommand,
    },
    /// Cross-validate an ensemble from finished cross-validations (`train --folds`) of the
    /// same manifest and folds: their out-of-fold probabilities averaged, nothing trained.
    CvEnsemble(CvEnsembleArgs),
    /// Cross-validations side by side: `OUT/study.md` (headline figures, mean ± sd over the
    /// folds, and each setting's cost) and `OUT/val-macro-f1.png` (validation macro-F1 per
    /// epoch). Trains nothing.
    Study(StudyArgs),
    /// Evaluate a model file on a split of a manifest: metrics, confusion matrix, reports.
    Evaluate(EvaluateArgs),
    /// Class probabilities of images: one JSON line per image.
    Predict(PredictArgs),
    /// Grad-CAM heatmap of an image over the view the network sees (PNG; the raw map beside
    /// it as .npy).
    Gradcam(GradcamArgs),
    /// Pack a finished run into one self-describing model file.
    Export(ExportArgs),
    /// Put several exported model files together into one ensemble file: it answers with the
    /// mean of its members' probabilities, and its Grad-CAM and out-of-distribution score are
    /// the mean of theirs. Every verb and the page load it like a single model.
    Ensemble(EnsembleArgs),
    /// Rewrite a model file of an earlier format (any kind) in the current one, whose header is
    /// sealed by a checksum; the file is verified as far as its format allows, and its content
    /// is kept.
    Upgrade(UpgradeArgs),
    /// Store a classifier file's (one network or an ensemble) matrices and kernels as int8 with
    /// an f32 scale per output channel, expanded to f32 when the file loads: about half the
    /// bytes of f16 weights. With images, the int8 file's answers are compared with the
    /// original's, and the file is written only if every probability moved by less than 0.01
    /// and no most probable class changed.
    Int8(Int8Args),
    /// The paper's comparison: train, export, evaluate and time each architecture, then write
    /// the comparison table and figures (`benchmark merge` joins shards run elsewhere).
    #[command(args_conflicts_with_subcommands = true)]
    Benchmark {
        #[command(subcommand)]
        merge: Option<BenchmarkCommand>,
        #[command(flatten)]
        options: Box<comparison::BenchmarkOptions>,
    },
    /// An untrained model file of an architecture (ImageNet backbone when its weights are given
    /// or fetched, else random-init; head untrained), marked as such: for checking that an
    /// architecture deploys (file size, browser backends, speed), never for diagnosis.
    Untrained(UntrainedArgs),
    /// Training and inference throughput of the Burn CPU backend beside PyTorch on the same
    /// shapes, and the frozen protocol's cached-features speed-up.
    Bench(BenchArgs),
    /// Raw logits of a preprocessed NCHW float32 `.npy` tensor (parity checks against PyTorch).
    Forward(forward::ForwardOptions),
}

#[derive(Subcommand)]
enum DataCommand {
    /// Build the 4-class manifest from source collections, split by patient.
    Build(data::build::BuildOptions),
}

/// `benchmark` subcommands.
#[derive(Subcommand)]
enum BenchmarkCommand {
    /// Join the results of several benchmark output folders (shards) into one comparison.
    Merge {
        /// Output folders of `benchmark` runs.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Folder for the joined comparison.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `lungs` subcommands.
#[derive(Subcommand)]
enum LungsCommand {
    /// Train the decoder on the frozen EfficientNet-Lite0 encoder, evaluate it on held-out
    /// pairs (Dice, IoU per source) and write RUN/lungs.pneumoscope.
    Train(LungsTrainArgs),
    /// Dice and IoU of a segmenter on the pairs its header lists as held out.
    Evaluate {
        /// Lung-segmenter file, or a classifier's model file that carries one.
        #[arg(long)]
        model: PathBuf,
        /// `pairs.csv` holding its held-out pairs.
        #[arg(long)]
        pairs: PathBuf,
    },
    /// Put a segmenter into a classifier's model file, so that one file carries both: only its
    /// decoder is stored (f16); its encoder is the backbone of the file's EfficientNet-Lite0
    /// network, which must compute the segmenter's encoder features (the backbone it was
    /// trained on: ImageNet's, or the file's own with `lungs train --encoder-model`; any other
    /// is refused).
    Embed {
        /// Classifier's model file (single network or ensemble).
        #[arg(long)]
        model: PathBuf,
        /// Lung-segmenter file (`lungs train`).
        #[arg(long)]
        lungs: PathBuf,
        /// Model file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// How the lung-plausibility rules score a manifest's images (per split x population x
    /// source), the CT slices and lateral views its build left out, and other images: shares
    /// flagged, reasons, area and balance percentiles (JSON).
    Shapes(LungsShapesArgs),
    /// Lung masks of images: IMAGE-lungs.png and IMAGE-lungs-overlay.png in --out, one JSON
    /// line per image.
    Predict {
        /// Lung-segmenter file, or a model file that carries one.
        #[arg(long)]
        model: PathBuf,
        /// Images (PNG, JPEG or DICOM).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Options of `lungs train`.
#[derive(clap::Args)]
struct LungsTrainArgs {
    #[command(flatten)]
    config: lungs::LungsConfig,
    /// Run folder.
    #[arg(long)]
    out: PathBuf,
    /// Continue an interrupted run in --out.
    #[arg(long)]
    resume: bool,
}

/// Options of `lungs shapes`.
#[derive(clap::Args)]
struct LungsShapesArgs {
    /// Lung-segmenter file, or a model file that carries one.
    #[arg(long)]
    model: PathBuf,
    /// `manifest.csv` of `data build`.
    #[arg(long)]
    manifest: PathBuf,
    /// `excluded.csv` of the same build (its CT slices and non-frontal views are scored).
    #[arg(long)]
    excluded: Option<PathBuf>,
    /// At most this many images per group.
    #[arg(long)]
    limit: Option<usize>,
    /// Write the JSON here too, with every image's shape and reason.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Other images to score (photos, ...).
    images: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum WeightsCommand {
    /// Download (or copy from --weights-dir) the ImageNet weights of architectures into the
    /// cache, verified against the SHA-256 prefix of their published file names; an interrupted
    /// download resumes where it stopped.
    Fetch {
        /// Architectures (registry names), or `all`.
        #[arg(required = true)]
        archs: Vec<String>,
        /// Cache folder (default: $PNEUMOSCOPE_WEIGHTS, else ~/.cache/pneumoscope/weights).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Offline machines: take the files from this folder (published file names) instead of
        /// downloading them.
        #[arg(long)]
        weights_dir: Option<PathBuf>,
        /// Download from this address (a mirror holding the published file names) instead of
        /// the official one.
        #[arg(long)]
        base_url: Option<String>,
    },
    /// List the architectures, their published weight files and whether the cache holds them.
    List {
        /// Cache folder (default: $PNEUMOSCOPE_WEIGHTS, else ~/.cache/pneumoscope/weights).
        #[arg(long)]
        cache: Option<PathBuf>,
    },
}

/// Options of `train`: the run's settings and what only this call needs.
#[derive(clap::Args)]
struct TrainArgs {
    #[command(flatten)]
    config: train::TrainConfig,
    /// Train from random initialisation when no ImageNet weights are available (the run, the
    /// model file and its reports are marked `random-init`).
    #[arg(long)]
    allow_random_init: bool,
    /// Disable the paper's augmentation.
    #[arg(long)]
    no_augment: bool,
    /// Radiograph augmentations added to the paper's (intensity, blur, noise, borders).
    #[command(flatten)]
    radiograph: crate::data::augment::Radiograph,
    /// Run folder.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in `--out` from its last verified checkpoint.
    #[arg(long)]
    resume: bool,
    /// Patient-grouped cross-validation on train + val: one run per fold in `OUT/fold-K`
    /// (validated on that fold, trained on the others), then `OUT/cv.json` and `OUT/cv.md`
    /// with every figure's mean and spread across folds. The test split takes no part.
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..))]
    folds: Option<u64>,
    /// Seed of the fold assignment.
    #[arg(long, default_value_t = 7)]
    fold_seed: u64,
    /// With `--folds`: run only these folds (comma-separated, 0-based), e.g. to screen
    /// settings on a fixed subset before a full cross-validation; the summary covers them.
    #[arg(long, value_delimiter = ',', requires = "folds")]
    only_folds: Vec<usize>,
}

/// Options of `study`.
#[derive(clap::Args)]
struct StudyArgs {
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// The cross-validations, each as LABEL=FOLDER (the folder of `train --folds`).
    #[arg(required = true)]
    settings: Vec<crate::study::screening::Setting>,
    /// Only these folds of each (comma-separated, 0-based): a screening on a subset of folds
    /// beside the others on the same folds.
    #[arg(long, value_delimiter = ',')]
    only_folds: Vec<usize>,
}

/// Options of `cv-ensemble`.
#[derive(clap::Args)]
struct CvEnsembleArgs {
    /// Output folder (cv.json, cv.md).
    #[arg(long)]
    out: PathBuf,
    /// The cross-validation folders of the members.
    #[arg(required = true)]
    members: Vec<PathBuf>,
}

/// Options of `evaluate`.
#[derive(clap::Args)]
struct EvaluateArgs {
    #[command(flatten)]
    options: evaluate::EvaluateOptions,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Options of `predict`.
#[derive(clap::Args)]
struct PredictArgs {
    /// Model file.
    #[arg(long)]
    model: PathBuf,
    /// Images (PNG, JPEG or DICOM).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Test-time augmentation: average over the image and its mirror image.
    #[arg(long)]
    tta: bool,
}

/// Options of `gradcam`.
#[derive(clap::Args)]
struct GradcamArgs {
    /// Model file.
    #[arg(long)]
    model: PathBuf,
    /// Image.
    image: PathBuf,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
    /// Class to explain (default: the predicted class).
    #[arg(long)]
    class: Option<pneumoscope::Class>,
    /// Lung-segmenter file: adds the share of the map inside the lung fields
    /// (`lung_share`) and draws their outline (default: the segmenter the model file
    /// carries, if any).
    #[arg(long)]
    lungs: Option<PathBuf>,
}

/// Options of `export`.
#[derive(clap::Args)]
struct ExportArgs {
    /// Run folder.
    #[arg(long)]
    run: PathBuf,
    /// Output model file.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    options: export::ExportOptions,
}

/// Options of `ensemble`.
#[derive(clap::Args)]
struct EnsembleArgs {
    /// Output ensemble file.
    #[arg(long)]
    out: PathBuf,
    /// Evaluate the ensemble on this manifest's validation and test splits (the members'
    /// own manifest) and store the metrics in the file.
    #[arg(long)]
    data: Option<PathBuf>,
    /// How the members were chosen (stored in the file).
    #[arg(long)]
    note: Option<String>,
    /// Member model files (at least two), written by `pneumoscope export`.
    #[arg(required = true, num_args = 2..)]
    members: Vec<PathBuf>,
}

/// Options of `upgrade`.
#[derive(clap::Args)]
struct UpgradeArgs {
    /// The model file to read.
    model: PathBuf,
    /// Where to write the upgraded file (may be the same path).
    #[arg(long)]
    out: PathBuf,
}

/// Options of `int8`.
#[derive(clap::Args)]
struct Int8Args {
    /// The model file to read (f32 or f16 weights).
    model: PathBuf,
    /// Where to write the int8 file.
    #[arg(long)]
    out: PathBuf,
    /// Images (PNG, JPEG, DICOM) to compare the two files' answers on.
    #[arg(long, num_args = 1..)]
    check: Vec<PathBuf>,
}

/// Options of `untrained`.
#[derive(clap::Args)]
struct UntrainedArgs {
    /// Architecture.
    #[arg(long)]
    arch: String,
    /// Output model file.
    #[arg(long)]
    out: PathBuf,
    /// Backbone weights (default: the fetched published file, else random-init).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Store weights in half precision.
    #[arg(long)]
    f16: bool,
}

/// Options of `bench`.
#[derive(clap::Args)]
struct BenchArgs {
    #[command(flatten)]
    options: throughput::BenchOptions,
    /// Also write the numbers as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl Cli {
    /// Carries out the verb.
    pub fn run(self) -> Result<()> {
        match self.command {
            Command::Data {
                command: DataCommand::Build(opts),
            } => data_build(&opts),
            Command::Archs => {
                print!("{}", archs_table());
                Ok(())
            }
            Command::Weights { command } => weights_command(command),
            Command::Train(a) => train_command(*a),
            Command::Lungs { command } => lungs_command(command),
            Command::CvEnsemble(a) => cv_ensemble(a),
            Command::Study(a) => {
                let only = (!a.only_folds.is_empty()).then_some(a.only_folds.as_slice());
                print!(
                    "{}",
                    crate::study::screening::write(&a.settings, only, &a.out)?
                );
                println!("wrote {}", a.out.join("study.md").display());
                Ok(())
            }
            Command::Evaluate(a) => evaluate_command(a),
            Command::Predict(a) => {
                let failures = inspect::predict(&a.model, &a.images, a.tta, &Device::flex())?;
                fail_if_any(failures, a.images.len(), "classified")
            }
            Command::Gradcam(a) => inspect::gradcam(
                &a.model,
                &a.image,
                &a.out,
                a.class,
                a.lungs.as_deref(),
                &Device::flex(),
            ),
            Command::Export(a) => export_command(a),
            Command::Ensemble(a) => ensemble_command(a),
            Command::Upgrade(a) => upgrade_command(a),
            Command::Int8(a) => int8_command(a),
            Command::Benchmark {
                merge: Some(BenchmarkCommand::Merge { dirs, out }),
                ..
            } => comparison::merge(&dirs, &out).map(|_| ()),
            Command::Benchmark { options, .. } => comparison::sweep(&options),
            Command::Untrained(a) => untrained_command(a),
            Command::Bench(a) => bench_command(a),
            Command::Forward(o) => {
                let dims = forward::logits(&o, &Device::flex())?;
                println!("wrote {} {:?}", o.out.display(), dims);
                Ok(())
            }
        }
    }
}

/// An error when some of `n` inputs failed.
fn fail_if_any(failures: usize, n: usize, what: &str) -> Result<()> {
    if failures > 0 {
        anyhow::bail!("{failures} of {n} images could not be {what}");
    }
    Ok(())
}

fn data_build(opts: &data::build::BuildOptions) -> Result<()> {
    let summary = data::build::build(opts)?;
    print!("{}", data::build::table(&summary));
    println!("wrote {}", opts.out.join("manifest.csv").display());
    Ok(())
}

/// The registry as a Markdown table (`archs`).
fn archs_table() -> String {
    let mut t = "| name | input (resize → crop) | parameters | GMACs | Grad-CAM layer | paper's head | ImageNet weights |\n|---|---|---|---|---|---|---|\n".to_string();
    for spec in pneumoscope::arch::registry() {
        let f = pneumoscope::model::footprint(spec);
        let head = match spec.head {
            pneumoscope::arch::HeadKind::Mlp => format!("MLP on {}", spec.head_shape[0]),
            pneumoscope::arch::HeadKind::Conv => "1x1 conv on 512x13x13".to_string(),
        };
        t += &format!(
            "| `{}` | {} → {} | {:.1} M | {:.2} | {} | {head} | `{}` |\n",
            spec.name,
            spec.input.resize,
            spec.input.crop,
            f.parameters as f64 / 1e6,
            spec.gmacs,
            spec.gradcam_layer,
            spec.weights.file
        );
    }
    t
}

fn train_command(a: TrainArgs) -> Result<()> {
    let mut cfg = a.config;
    if a.radiograph.any() {
        if a.no_augment {
            anyhow::bail!("--no-augment and --aug-* contradict each other");
        }
        if let Some(aug) = cfg.augment.as_mut() {
            aug.radiograph = a.radiograph;
        }
    }
    if a.no_augment {
        cfg.augment = None;
    }
    // A resumed run keeps the weights its config.json names (a cross-validation's folds yet
    // to start need them named).
    if !(a.resume && a.folds.is_none()) {
        cfg.weights = fetch::resolve_weights(&cfg.arch, cfg.weights.take(), a.allow_random_init)?;
    }
    if cfg.region == pneumoscope::preprocess::InputRegion::Lungs && cfg.lungs.is_none() {
        anyhow::bail!("--input lungs needs the lung segmenter: --lungs FILE");
    }
    match a.folds {
        Some(k) => {
            let only = (!a.only_folds.is_empty()).then_some(a.only_folds.as_slice());
            let s = cv::cross_validate(cfg, &a.out, (k as usize, a.fold_seed), only, a.resume)?;
            println!("cross-validation, {k} folds: {}", cv::line(&s));
            println!("wrote {}", a.out.join("cv.md").display());
        }
        None => train::train(cfg, &a.out, a.resume)?,
    }
    Ok(())
}

fn cv_ensemble(a: CvEnsembleArgs) -> Result<()> {
    let s = cv::ensemble(&a.members, &a.out)?;
    println!(
        "ensemble cross-validation, {} folds: {}",
        s.folds,
        cv::line(&s)
    );
    println!("wrote {}", a.out.join("cv.md").display());
    Ok(())
}

fn evaluate_command(a: EvaluateArgs) -> Result<()> {
    let o = &a.options;
    let e = evaluate::on_split(o, &Device::flex())?;
    if a.json {
        let mut v = serde_json::to_value(&e.metrics)?;
        v["split"] = serde_json::json!(o.split);
        v["by_source"] = serde_json::json!(e.sources);
        v["by_population"] = serde_json::to_value(&e.by_population)?;
        v["ood"] = serde_json::json!(e.ood);
        v["arch"] = serde_json::json!(e.arch);
        v["weight_source"] = serde_json::json!(e.weight_source);
        v["lung_share"] = serde_json::json!(e.lung_share);
        println!("{v}");
        return Ok(());
    }
    println!("model: {}, weights {}", e.arch, e.weight_source);
    evaluate::print_table(&e.metrics);
    println!("\n{}", breakdown::markdown(&e.by_population));
    if let Some(l) = &e.lung_share {
        println!("{}", l.markdown());
    }
    if let Some(s) = &e.ood {
        println!(
            "out-of-distribution: {} of {} images flagged ({:.1}%), median score {:.2}",
            s.flagged,
            s.n,
            100.0 * s.rate,
            s.median_score
        );
    }
    if let Some(out) = &o.out {
        println!("wrote {}", out.join("report.html").display());
    }
    Ok(())
}

fn lungs_command(command: LungsCommand) -> Result<()> {
    match command {
        LungsCommand::Train(a) => {
            let mut cfg = a.config;
            if cfg.encoder_model.is_none() {
                cfg.weights =
                    fetch::resolve_weights(pneumoscope::lungs::ENCODER, cfg.weights, false)?;
            }
            let file = lungs::train(&cfg, &a.out, a.resume)?;
            let metrics = std::fs::read_to_string(a.out.join("metrics.json"))?;
            println!("{metrics}");
            println!("wrote {}", file.display());
        }
        LungsCommand::Evaluate { model, pairs } => {
            let m = lungs::evaluate_file(&model, &pairs)?;
            println!("{}", serde_json::to_string_pretty(&m)?);
        }
        LungsCommand::Shapes(a) => {
            let summary = lungs::shapes(
                &a.model,
                &a.manifest,
                a.excluded.as_deref(),
                &a.images,
                a.limit,
            )?;
            if let Some(out) = a.out {
                let all = serde_json::to_string_pretty(&summary)?;
                crate::machinery::fsutil::write_atomic(&out, all.as_bytes())?;
            }
            // Per image only in --out; the groups here.
            let mut groups = summary;
            groups.as_object_mut().map(|o| o.remove("images"));
            println!("{}", serde_json::to_string_pretty(&groups)?);
        }
        LungsCommand::Embed { model, lungs, out } => {
            println!("{}", lungs::embed(&model, &lungs, &out)?);
        }
        LungsCommand::Predict { model, images, out } => {
            let failures = lungs::predict(&model, &images, &out)?;
            fail_if_any(failures, images.len(), "segmented")?;
        }
    }
    Ok(())
}

fn export_command(a: ExportArgs) -> Result<()> {
    let h = export::pack(&a.run, &a.out, &a.options)?;
    println!(
        "wrote {} ({}, {} weights, payload sha256 {})",
        a.out.display(),
        h.arch,
        h.weights_dtype,
        h.payload_sha256
    );
    Ok(())
}

fn ensemble_command(a: EnsembleArgs) -> Result<()> {
    let e = ensemble::build(&a.members, &a.out, a.data.as_deref(), a.note.as_deref())?;
    let archs: Vec<&str> = e.header.members.iter().map(|m| m.arch.as_str()).collect();
    println!(
        "wrote {} (ensemble of {}: {}, payload sha256 {})",
        a.out.display(),
        e.members.len(),
        archs.join(" + "),
        e.header.payload_sha256
    );
    Ok(())
}

fn upgrade_command(a: UpgradeArgs) -> Result<()> {
    let (from, to) = export::upgrade(&a.model, &a.out)?;
    let sealed_now = if from.sealed {
        ""
    } else {
        ", header now sealed"
    };
    println!(
        "wrote {} (format v{} → v{to}{sealed_now})",
        a.out.display(),
        from.version
    );
    Ok(())
}

fn int8_command(a: Int8Args) -> Result<()> {
    let r = crate::model_file::int8::convert(&a.model, &a.out, &a.check, &Device::flex())?;
    let mb = |b: usize| b as f64 / 1e6;
    if r.images > 0 {
        let (d, worst) = r.largest_change.clone().unwrap_or_default();
        println!(
            "{} images: largest probability change {d:.4} ({}), most probable class changed on {}",
            r.images,
            worst.display(),
            r.top_changed.len()
        );
        for f in &r.top_changed {
            println!("  class changed: {}", f.display());
        }
    }
    if !r.passes() {
        anyhow::bail!(
            "the int8 weights move the answers too far (a probability by {} or more, or a \
             most probable class); {} not written",
            crate::model_file::int8::MAX_PROBABILITY_CHANGE,
            a.out.display()
        );
    }
    println!(
        "wrote {} ({:.2} MB, was {:.2} MB)",
        a.out.display(),
        mb(r.bytes_after),
        mb(r.bytes_before)
    );
    Ok(())
}

fn untrained_command(a: UntrainedArgs) -> Result<()> {
    let spec = pneumoscope::arch::find(&a.arch)?;
    let weights = fetch::resolve_weights(&a.arch, a.weights, true)?;
    let h = export::untrained(&spec, weights.as_deref(), &a.out, a.f16)?;
    println!(
        "wrote {} ({}, {} weights from {}, UNTRAINED head)",
        a.out.display(),
        h.arch,
        h.weights_dtype,
        h.weight_source
    );
    Ok(())
}

fn bench_command(a: BenchArgs) -> Result<()> {
    let r = throughput::measure(&a.options)?;
    print!("{}", throughput::table(&r));
    if let Some(j) = a.json {
        std::fs::write(&j, serde_json::to_string_pretty(&r)?)?;
    }
    Ok(())
}

fn weights_command(command: WeightsCommand) -> Result<()> {
    match command {
        WeightsCommand::Fetch {
            archs,
            cache,
            weights_dir,
            base_url,
        } => {
            let specs = if archs.iter().any(|a| a == "all") {
                pneumoscope::arch::registry().to_vec()
            } else {
                archs
                    .iter()
                    .map(|a| pneumoscope::arch::find(a))
                    .collect::<std::result::Result<_, _>>()?
            };
            let o = fetch::FetchOptions {
                cache: cache.unwrap_or_else(fetch::default_cache),
                weights_dir,
                base_url,
            };
            fetch_all(&specs, &o)
        }
        WeightsCommand::List { cache } => {
            let cache = cache.unwrap_or_else(fetch::default_cache);
            for spec in pneumoscope::arch::registry() {
                let here = fetch::cached(spec, &cache)
                    .map_or("-".to_string(), |p| p.display().to_string());
                let url = spec
                    .weights
                    .url()
                    .unwrap_or_else(|| spec.weights.note.to_string());
                println!(
                    "{:<20} {:<42} {here}\n{:<20} {url}",
                    spec.name, spec.weights.file, ""
                );
            }
            Ok(())
        }
    }
}

/// Fetches every architecture's weights, reporting each failure and going on.
fn fetch_all(specs: &[pneumoscope::arch::ArchSpec], o: &fetch::FetchOptions) -> Result<()> {
    let mut failed = 0;
    for spec in specs {
        match fetch::fetch(spec, o) {
            Ok((path, how)) => println!("{}: {} ({how:?})", spec.name, path.display()),
            Err(e) => {
                eprintln!("error: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} weight files could not be fetched",
            specs.len()
        );
    }
    Ok(())
}
