//! `pneumoscope`: the native command line of Pneumoscope — dataset building, training,
//! evaluation, reports, prediction, Grad-CAM, export and benchmarks.

mod augment;
mod bench;
mod benchmark;
mod breakdown;
mod calibrate;
mod cli;
mod cv;
mod data;
mod device;
mod ensemble;
mod evaluate;
mod export;
mod fetch;
mod forward;
mod fsutil;
mod lungs;
mod metrics;
mod npy;
mod ood;
mod parallel;
mod population;
mod progress;
mod report;
mod train;
mod weights;

use anyhow::Result;
use burn::prelude::*;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Chest X-ray pneumonia classification by transfer learning (research and teaching tool, not
/// a medical device).
#[derive(Parser)]
#[command(name = "pneumoscope", version, about)]
struct Cli {
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
    CvEnsemble {
        /// Output folder (cv.json, cv.md).
        #[arg(long)]
        out: PathBuf,
        /// The cross-validation folders of the members.
        #[arg(required = true)]
        members: Vec<PathBuf>,
    },
    /// Evaluate a model file on a split of a manifest: metrics, confusion matrix, reports.
    Evaluate {
        /// Model file written by `export`.
        #[arg(long)]
        model: PathBuf,
        /// Manifest.
        #[arg(long)]
        data: PathBuf,
        /// Split to evaluate.
        #[arg(long, default_value = "test")]
        split: data::Split,
        /// Folder for confusion_matrix.png, report.md, report.html, metrics.json, gradcam/.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Test-time augmentation: average over the image and its mirror image.
        #[arg(long)]
        tta: bool,
        /// Lung-segmenter file: adds where the evidence lies (the share of each Grad-CAM map
        /// inside the lung fields, per predicted class and source).
        #[arg(long)]
        lungs: Option<PathBuf>,
    },
    /// Class probabilities of images: one JSON line per image.
    Predict {
        /// Model file.
        #[arg(long)]
        model: PathBuf,
        /// Images (PNG, JPEG or DICOM).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Test-time augmentation: average over the image and its mirror image.
        #[arg(long)]
        tta: bool,
    },
    /// Grad-CAM heatmap of an image over the view the network sees (PNG; the raw map beside
    /// it as .npy).
    Gradcam {
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
    },
    /// Pack a finished run into one self-describing model file.
    Export {
        /// Run folder.
        #[arg(long)]
        run: PathBuf,
        /// Output model file.
        #[arg(long)]
        out: PathBuf,
        /// Store weights in half precision (batch-norm and biases stay f32).
        #[arg(long)]
        f16: bool,
        /// Ask for test-time augmentation (mirror averaging) by default wherever the file is
        /// used.
        #[arg(long)]
        tta: bool,
        /// Leave out the out-of-distribution statistics (they are fitted on the run's training
        /// split, so the run's manifest and images must be at hand).
        #[arg(long)]
        no_ood: bool,
        /// Fit a temperature on the run's validation split and fold it into the head, so the
        /// file's probabilities are calibrated (the predicted class is unchanged).
        #[arg(long)]
        calibrate: bool,
    },
    /// Put several exported model files together into one ensemble file: it answers with the
    /// mean of its members' probabilities, and its Grad-CAM and out-of-distribution score are
    /// the mean of theirs. Every verb and the page load it like a single model.
    Ensemble {
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
    },
    /// Rewrite a model file of an earlier format (any kind) in the current one, whose header is
    /// sealed by a checksum; the file is verified as far as its format allows, and its content
    /// is kept.
    Upgrade {
        /// The model file to read.
        model: PathBuf,
        /// Where to write the upgraded file (may be the same path).
        #[arg(long)]
        out: PathBuf,
    },
    /// The paper's comparison: train, export, evaluate and time each architecture, then write
    /// the comparison table and figures (`benchmark merge` joins shards run elsewhere).
    #[command(args_conflicts_with_subcommands = true)]
    Benchmark {
        #[command(subcommand)]
        merge: Option<BenchmarkCommand>,
        #[command(flatten)]
        args: Box<BenchmarkArgs>,
    },
    /// An untrained model file of an architecture (ImageNet backbone when its weights are given
    /// or fetched, else random-init; head untrained), marked as such: for checking that an
    /// architecture deploys (file size, browser backends, speed), never for diagnosis.
    Untrained {
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
    },
    /// Training and inference throughput of the Burn CPU backend beside PyTorch on the same
    /// shapes, and the frozen protocol's cached-features speed-up.
    Bench {
        /// Architecture.
        #[arg(long, default_value = "efficientnet_lite0")]
        arch: String,
        /// Batch size.
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        /// Timed iterations (after one warm-up).
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Python with torch and timm for the reference run (default: the test venv,
        /// `$HOME/.cache/pneumoscope/venv/bin/python`, when it exists).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Skip the PyTorch reference.
        #[arg(long)]
        no_reference: bool,
        /// Images (train + val) in the frozen-protocol estimate.
        #[arg(long, default_value_t = 3849)]
        images: usize,
        /// Epochs in the frozen-protocol estimate.
        #[arg(long, default_value_t = 40)]
        epochs: usize,
        /// Also write the numbers as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Burn device: cpu, vulkan or cuda (the latter two in builds with those features); for
        /// a GPU device the PyTorch reference runs on CUDA when it can.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Raw logits of a preprocessed NCHW float32 `.npy` tensor (parity checks against PyTorch).
    Forward {
        /// Architecture name (see the registry).
        #[arg(long)]
        arch: String,
        /// Weights file (`.pth` or `.safetensors`).
        #[arg(long)]
        weights: PathBuf,
        /// Input: a `.npy` (N x 3 x H x W, float32), or an image put through the ImageNet
        /// reference transform of the weights (RGB, bicubic resize, mean/std).
        #[arg(long)]
        input: PathBuf,
        /// Output `.npy` of logits (or pooled features when the weights have no classifier).
        #[arg(long)]
        out: PathBuf,
        /// Also write the Grad-CAM map of the first image at the architecture's Grad-CAM layer
        /// (`[h, w]`, maximum 1) to this `.npy`.
        #[arg(long)]
        cam_out: Option<PathBuf>,
        /// ImageNet class the Grad-CAM map explains (default: the top-1 class).
        #[arg(long, requires = "cam_out")]
        cam_class: Option<usize>,
        /// Fold every batch norm into the convolution before it first, as inference does.
        #[arg(long)]
        fold_batchnorm: bool,
    },
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

/// Options of `benchmark`.
#[derive(clap::Args)]
struct BenchmarkArgs {
    /// The manifest written by `data build`.
    #[arg(long)]
    data: Option<PathBuf>,
    /// `all` or a comma-separated list of architectures.
    #[arg(long, default_value = "all")]
    archs: String,
    /// Protocol: `frozen` (the paper's), `partial` or `finetune`.
    #[arg(long, value_enum, default_value = "frozen")]
    mode: train::Mode,
    /// Output folder (runs, models, evaluations, results, comparison).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only this machine's share of the architectures, `i/n` (1-based).
    #[arg(long, default_value = "1/1")]
    shard: String,
    /// Epochs.
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Architectures without fetched ImageNet weights train from random initialisation
    /// (marked in every output) instead of failing.
    #[arg(long)]
    allow_random_init: bool,
    /// Device: cpu, vulkan[:N] or cuda[:N] (the latter two in builds with those features), or
    /// a comma-separated list for data-parallel training (evaluation runs on the first).
    #[arg(long, visible_alias = "devices", default_value = "cpu")]
    device: String,
}

/// `weights` subcommands.
#[derive(Subcommand)]
enum LungsCommand {
    /// Train the decoder on the frozen EfficientNet-Lite0 encoder, evaluate it on held-out
    /// pairs (Dice, IoU per source) and write RUN/lungs.pneumoscope.
    Train {
        /// `pairs.csv` (image, mask, source; paths relative to its folder).
        #[arg(long)]
        pairs: PathBuf,
        /// Run folder.
        #[arg(long)]
        out: PathBuf,
        /// EfficientNet-Lite0 ImageNet weights (default: the weights cache).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Share of each source's pairs held out for evaluation.
        #[arg(long, default_value_t = 0.2)]
        held_out: f64,
        /// Epochs.
        #[arg(long, default_value_t = 40)]
        epochs: usize,
        /// Batch size.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Learning rate (Adam).
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        /// Seed of the split, the order and the initialisation.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// At most this many pairs per source (quick runs).
        #[arg(long)]
        limit: Option<usize>,
        /// Store the weights in half precision.
        #[arg(long)]
        f16: bool,
        /// Continue an interrupted run in --out.
        #[arg(long)]
        resume: bool,
    },
    /// Dice and IoU of a segmenter on the pairs its header lists as held out.
    Evaluate {
        /// Lung-segmenter file.
        #[arg(long)]
        model: PathBuf,
        /// `pairs.csv` holding its held-out pairs.
        #[arg(long)]
        pairs: PathBuf,
    },
    /// Put a segmenter into a classifier's model file, so that one file carries both: only its
    /// decoder is stored (f16); its encoder is the backbone of the file's EfficientNet-Lite0
    /// network, which must compute the segmenter's encoder features (a frozen ImageNet
    /// backbone; a fine-tuned one is refused).
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
    Shapes {
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
    },
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

/// Options of `train`.
#[derive(clap::Args)]
struct TrainArgs {
    /// The manifest written by `data build`.
    #[arg(long)]
    data: PathBuf,
    /// Architecture.
    #[arg(long, default_value = "efficientnet_lite0")]
    arch: String,
    /// ImageNet weights (`.pth` or `.safetensors`); default: the architecture's published
    /// file in the weights cache (see `weights fetch`).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Train from random initialisation when no ImageNet weights are available (the run, the
    /// model file and its reports are marked `random-init`).
    #[arg(long)]
    allow_random_init: bool,
    /// `frozen` (the paper's protocol), `partial` (the last `--tune-blocks` blocks, the head
    /// convolution and the head; EfficientNet-Lite) or `finetune` (all layers).
    #[arg(long, value_enum, default_value = "frozen")]
    mode: train::Mode,
    /// Partial mode: how many of the backbone's last blocks are trained.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    tune_blocks: Option<u64>,
    /// Epochs.
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value = "constant")]
    schedule: train::Schedule,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Class-imbalance handling.
    #[arg(long, value_enum, default_value = "weighted")]
    imbalance: train::Imbalance,
    /// Disable the paper's augmentation.
    #[arg(long)]
    no_augment: bool,
    /// Frozen and partial modes: views cached per training image (1 = no augmentation).
    #[arg(long, default_value_t = 1)]
    views: usize,
    /// Dropout probability of the head (default: the paper's, 0.2; 0.5 for SqueezeNet's
    /// convolutional head).
    #[arg(long, value_parser = dropout_probability)]
    dropout: Option<f64>,
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
    /// Frozen and partial modes: keep the backbone outputs in this folder instead of the
    /// run's `features/` (a cross-validation keeps them beside the manifest; a final run with
    /// the same settings can read the same ones).
    #[arg(long)]
    feature_cache: Option<PathBuf>,
    /// Device: cpu, vulkan[:N] or cuda[:N] (the latter two in builds with those features), or
    /// a comma-separated list of them for data-parallel training (`--devices cuda:0,cuda:1`):
    /// each step's batch (`--batch-size` in all) is split over the devices and their gradients
    /// added on the first.
    #[arg(long, visible_alias = "devices", default_value = "cpu")]
    device: String,
    /// The part of each image the network is given: `whole`, or `lungs` (the lungs' bounding
    /// box and a margin, found by `--lungs`, cut from the full-size image before the usual
    /// resize; the whole image where no lung is found).
    #[arg(long = "input", default_value = "whole")]
    region: pneumoscope::preprocess::InputRegion,
    /// `--input lungs`: the lung segmenter's own file (`web/models/lungs-v1.pneumoscope`).
    #[arg(long)]
    lungs: Option<PathBuf>,
}

/// A probability in [0, 1).
fn dropout_probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..1.0).contains(&p) => Ok(p),
        _ => Err(format!("'{s}' is not a probability in [0, 1)")),
    }
}

#[derive(Subcommand)]
enum DataCommand {
    /// Build the 4-class manifest from source collections, split by patient.
    Build(data::build::BuildOptions),
}

fn main() {
    // Like other Unix tools, end quietly when the reader of our output goes away
    // (`pneumoscope archs | head`) instead of panicking on the broken pipe.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data { command } => match command {
            DataCommand::Build(opts) => {
                let summary = data::build::run(&opts)?;
                print!("{}", data::build::table(&summary));
                println!("wrote {}", opts.out.join("manifest.csv").display());
            }
        },
        Command::Archs => {
            println!(
                "| name | input (resize → crop) | parameters | GMACs | Grad-CAM layer | paper's head | ImageNet weights |\n|---|---|---|---|---|---|---|"
            );
            for spec in pneumoscope::arch::registry() {
                let f = pneumoscope::model::footprint(spec);
                println!(
                    "| `{}` | {} → {} | {:.1} M | {:.2} | {} | {} | `{}` |",
                    spec.name,
                    spec.input.resize,
                    spec.input.crop,
                    f.parameters as f64 / 1e6,
                    spec.gmacs,
                    spec.gradcam_layer,
                    match spec.head {
                        pneumoscope::arch::HeadKind::Mlp =>
                            format!("MLP on {}", spec.head_shape[0]),
                        pneumoscope::arch::HeadKind::Conv => "1x1 conv on 512x13x13".to_string(),
                    },
                    spec.weights.file
                );
            }
        }
        Command::Weights { command } => weights_command(command)?,
        Command::Train(a) => {
            // A resumed run keeps the weights its config.json names (a cross-validation's
            // folds yet to start need them named).
            let weights = if a.resume && a.folds.is_none() {
                a.weights.clone()
            } else {
                resolve_weights(&a.arch, a.weights.clone(), a.allow_random_init)?
            };
            let cfg = train::TrainConfig {
                data: a.data,
                arch: a.arch,
                weights,
                mode: a.mode,
                epochs: a.epochs,
                batch_size: a.batch_size,
                lr: a.lr,
                schedule: a.schedule,
                seed: a.seed,
                imbalance: a.imbalance,
                augment: (!a.no_augment).then(augment::Augment::default),
                views: a.views,
                device: a.device,
                dropout: a.dropout,
                tune_blocks: a.tune_blocks.map(|n| n as usize),
                fold: None,
                feature_cache: a.feature_cache,
                region: a.region,
                lungs: a.lungs,
            };
            if cfg.region == pneumoscope::preprocess::InputRegion::Lungs && cfg.lungs.is_none() {
                anyhow::bail!("--input lungs needs the lung segmenter: --lungs FILE");
            }
            match a.folds {
                Some(k) => {
                    let s = cv::run(cfg, &a.out, k as usize, a.fold_seed, a.resume)?;
                    println!("cross-validation, {k} folds: {}", cv::line(&s));
                    println!("wrote {}", a.out.join("cv.md").display());
                }
                None => train::run(cfg, &a.out, a.resume)?,
            }
        }
        Command::CvEnsemble { out, members } => {
            let s = cv::ensemble(&members, &out)?;
            println!(
                "ensemble cross-validation, {} folds: {}",
                s.folds,
                cv::line(&s)
            );
            println!("wrote {}", out.join("cv.md").display());
        }
        Command::Evaluate {
            model,
            data,
            split,
            out,
            json,
            tta,
            lungs,
        } => {
            let e = evaluate::run(
                &model,
                &data,
                split,
                out.as_deref(),
                tta,
                lungs.as_deref(),
                &Device::flex(),
            )?;
            if json {
                let mut v = serde_json::to_value(&e.metrics)?;
                v["split"] = serde_json::json!(split);
                v["by_source"] = serde_json::json!(e.sources);
                v["by_population"] = serde_json::to_value(&e.by_population)?;
                v["ood"] = serde_json::json!(e.ood);
                v["arch"] = serde_json::json!(e.arch);
                v["weight_source"] = serde_json::json!(e.weight_source);
                v["lung_share"] = serde_json::json!(e.lung_share);
                println!("{v}");
            } else {
                println!("model: {}, weights {}", e.arch, e.weight_source);
                evaluate::print_table(&e.metrics);
                println!("\n{}", breakdown::markdown(&e.by_population));
                if let Some(l) = &e.lung_share {
                    println!("{}", l.markdown());
                }
                if let Some(o) = &e.ood {
                    println!(
                        "out-of-distribution: {} of {} images flagged ({:.1}%), median score {:.2}",
                        o.flagged,
                        o.n,
                        100.0 * o.rate,
                        o.median_score
                    );
                }
                if let Some(o) = out {
                    println!("wrote {}", o.join("report.html").display());
                }
            }
        }
        Command::Lungs { command } => match command {
            LungsCommand::Train {
                pairs,
                out,
                weights,
                held_out,
                epochs,
                batch_size,
                lr,
                seed,
                limit,
                f16,
                resume,
            } => {
                let weights = resolve_weights(pneumoscope::lungs::ENCODER, weights, false)?
                    .expect("weights are required");
                let cfg = lungs::LungsConfig {
                    pairs,
                    weights,
                    held_out,
                    epochs,
                    batch_size,
                    lr,
                    seed,
                    limit,
                    f16,
                };
                let file = lungs::train(&cfg, &out, resume)?;
                let metrics = std::fs::read_to_string(out.join("metrics.json"))?;
                println!("{metrics}");
                println!("wrote {}", file.display());
            }
            LungsCommand::Evaluate { model, pairs } => {
                let m = lungs::evaluate_file(&model, &pairs)?;
                println!("{}", serde_json::to_string_pretty(&m)?);
            }
            LungsCommand::Shapes {
                model,
                manifest,
                excluded,
                limit,
                out,
                images,
            } => {
                let summary =
                    lungs::shapes(&model, &manifest, excluded.as_deref(), &images, limit)?;
                if let Some(out) = out {
                    let all = serde_json::to_string_pretty(&summary)?;
                    crate::fsutil::write_atomic(&out, all.as_bytes())?;
                }
                // Per image only in --out; the groups here.
                let mut groups = summary;
                groups.as_object_mut().map(|o| o.remove("images"));
                println!("{}", serde_json::to_string_pretty(&groups)?);
            }
            LungsCommand::Embed { model, lungs, out } => {
                let summary = lungs::embed(&model, &lungs, &out)?;
                println!("{summary}");
            }
            LungsCommand::Predict { model, images, out } => {
                let failures = lungs::predict(&model, &images, &out)?;
                if failures > 0 {
                    anyhow::bail!(
                        "{failures} of {} images could not be segmented",
                        images.len()
                    );
                }
            }
        },
        Command::Predict { model, images, tta } => {
            let failures = cli::predict(&model, &images, tta, &Device::flex())?;
            if failures > 0 {
                anyhow::bail!(
                    "{failures} of {} images could not be classified",
                    images.len()
                );
            }
        }
        Command::Gradcam {
            model,
            image,
            out,
            class,
            lungs,
        } => {
            cli::gradcam(
                &model,
                &image,
                &out,
                class,
                lungs.as_deref(),
                &Device::flex(),
            )?;
        }
        Command::Export {
            run,
            out,
            f16,
            tta,
            no_ood,
            calibrate,
        } => {
            let h = export::run(&run, &out, f16, tta, !no_ood, calibrate)?;
            println!(
                "wrote {} ({}, {} weights, payload sha256 {})",
                out.display(),
                h.arch,
                h.weights_dtype,
                h.payload_sha256
            );
        }
        Command::Ensemble {
            out,
            data,
            note,
            members,
        } => {
            let e = ensemble::run(&members, &out, data.as_deref(), note.as_deref())?;
            println!(
                "wrote {} (ensemble of {}: {}, payload sha256 {})",
                out.display(),
                e.members.len(),
                e.header
                    .members
                    .iter()
                    .map(|m| m.arch.as_str())
                    .collect::<Vec<_>>()
                    .join(" + "),
                e.header.payload_sha256
            );
        }
        Command::Upgrade { model, out } => {
            let (from, to) = export::upgrade(&model, &out)?;
            println!(
                "wrote {} (format v{} → v{}{})",
                out.display(),
                from.version,
                to,
                if from.sealed {
                    ""
                } else {
                    ", header now sealed"
                }
            );
        }
        Command::Benchmark { merge, args } => match merge {
            Some(BenchmarkCommand::Merge { dirs, out }) => {
                benchmark::merge(&dirs, &out)?;
            }
            None => {
                let (Some(data), Some(out)) = (args.data, args.out) else {
                    anyhow::bail!("benchmark needs --data MANIFEST and --out DIR");
                };
                benchmark::run(&benchmark::BenchmarkOptions {
                    data,
                    archs: benchmark::select_archs(&args.archs)?,
                    mode: args.mode,
                    out,
                    shard: benchmark::parse_shard(&args.shard)?,
                    epochs: args.epochs,
                    batch_size: args.batch_size,
                    lr: args.lr,
                    seed: args.seed,
                    allow_random_init: args.allow_random_init,
                    device: args.device,
                })?;
            }
        },
        Command::Untrained {
            arch,
            out,
            weights,
            f16,
        } => {
            let spec = pneumoscope::arch::find(&arch)?;
            let weights = resolve_weights(&arch, weights, true)?;
            let h = export::untrained(&spec, weights.as_deref(), &out, f16)?;
            println!(
                "wrote {} ({}, {} weights from {}, UNTRAINED head)",
                out.display(),
                h.arch,
                h.weights_dtype,
                h.weight_source
            );
        }
        Command::Bench {
            arch,
            batch_size,
            iters,
            python,
            no_reference,
            images,
            epochs,
            json,
            device,
        } => {
            let python = if no_reference {
                None
            } else {
                let default = std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(".cache/pneumoscope/venv/bin/python"));
                match python.or(default.filter(|p| p.exists())) {
                    Some(p) => Some(p),
                    None => anyhow::bail!(
                        "no PyTorch reference: create the venv with `cargo xtask venv`, pass --python, or --no-reference"
                    ),
                }
            };
            let r = bench::run(&bench::BenchOptions {
                arch,
                batch: batch_size,
                iters,
                python,
                images,
                epochs,
                device,
            })?;
            print!("{}", bench::table(&r));
            if let Some(j) = json {
                std::fs::write(&j, serde_json::to_string_pretty(&r)?)?;
            }
        }
        Command::Forward {
            arch,
            weights,
            input,
            out,
            cam_out,
            cam_class,
            fold_batchnorm,
        } => {
            let cam = cam_out.as_deref().map(|p| forward::CamRequest {
                out: p,
                class: cam_class,
            });
            let fold = if fold_batchnorm {
                forward::BatchNorm::Folded
            } else {
                forward::BatchNorm::Kept
            };
            let dims = forward::run(&arch, &weights, &input, &out, cam, fold, &Device::flex())?;
            println!("wrote {} {:?}", out.display(), dims);
        }
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
            let mut failed = 0;
            for spec in &specs {
                match fetch::fetch(spec, &o) {
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
        }
    }
    Ok(())
}

/// The weights a training run starts from: the given file, else the cached published file,
/// else nothing when random initialisation is allowed.
fn resolve_weights(
    arch: &str,
    given: Option<PathBuf>,
    allow_random: bool,
) -> Result<Option<PathBuf>> {
    if given.is_some() {
        return Ok(given);
    }
    let spec = pneumoscope::arch::find(arch)?;
    let cache = fetch::default_cache();
    if let Some(p) = fetch::cached(&spec, &cache) {
        return Ok(Some(p));
    }
    if allow_random {
        return Ok(None);
    }
    anyhow::bail!(
        "no ImageNet weights for {arch}: {} is not in {} — run `pneumoscope weights fetch {arch}` \
         (or pass --weights FILE); to train from random initialisation instead, pass \
         --allow-random-init",
        spec.weights.file,
        cache.display()
    )
}
