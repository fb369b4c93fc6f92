//! A run's settings: what `train` reads from its command line and writes to `config.json`
//! (mode, imbalance, folds, schedule, optimisation, fine-tuning), with their defaults.

use crate::data::augment::Augment;
use crate::data::cache::Framing;
use crate::machinery::device::DeviceList;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use clap::builder::TypedValueParser;
use pneumoscope::arch::ArchSpec;
use pneumoscope::preprocess::InputRegion;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Training mode.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The paper's protocol: frozen backbone, cached features, head trained.
    Frozen,
    /// All layers trained.
    Finetune,
    /// The last `--tune-blocks` blocks of the backbone, its head convolution and the head
    /// trained; the blocks before them frozen, their output cached once per view like the
    /// frozen protocol's features (EfficientNet-Lite only).
    Partial,
}

/// Blocks partial fine-tuning trains when `--tune-blocks` is not given.
pub const DEFAULT_TUNE_BLOCKS: usize = 4;

/// How class imbalance is handled.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Imbalance {
    /// Cross-entropy weighted by inverse label frequency (the four classes and the partial
    /// label "pneumonia, pathogen unknown" counted apart).
    Weighted,
    /// Cross-entropy weighted by inverse frequency of label x population, so that the few
    /// adult images of a class weigh as much as its many paediatric ones.
    Group,
    /// Each epoch samples every label equally often (with replacement).
    Balanced,
    /// Nothing.
    None,
}

/// Patient-grouped cross-validation: which fold of train + val is this run's validation set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fold {
    /// 0-based fold index.
    pub index: usize,
    /// Number of folds.
    pub of: usize,
    /// Seed of the fold assignment.
    pub seed: u64,
}

/// Learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The same rate throughout (the paper).
    Constant,
    /// Cosine decay from the rate to zero over all steps.
    Cosine,
}

impl Schedule {
    /// Rate at `step` of `total` steps.
    pub fn lr(self, base: f64, step: usize, total: usize) -> f64 {
        match self {
            Schedule::Constant => base,
            Schedule::Cosine => {
                base * 0.5
                    * (1.0 + (std::f64::consts::PI * step as f64 / total.max(1) as f64).cos())
            }
        }
    }
}

/// How a run optimises: the settings `train` and `benchmark` share, flattened into both command
/// lines and into a run's `config.json`.
#[derive(Clone, Debug, Serialize, Deserialize, clap::Args)]
pub struct Optimisation {
    /// Epochs.
    #[arg(long, default_value_t = 40)]
    pub epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Seed of initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Device: cpu, vulkan[:N] or cuda[:N] (the latter two in builds with those features), or
    /// a comma-separated list of them for data-parallel training (`--devices cuda:0,cuda:1`):
    /// each step's batch (`--batch-size` in all) is split over the devices and their gradients
    /// added on the first (evaluation runs on the first).
    #[arg(long, visible_alias = "devices", default_value = "cpu")]
    pub device: DeviceList,
}

/// Everything that defines a run: the options of `train` (flattened into its command line,
/// whose defaults are [`TrainConfig::default`]) and the run's `RUN/config.json`.
#[derive(Clone, Debug, Serialize, Deserialize, clap::Args)]
pub struct TrainConfig {
    /// The manifest written by `data build`.
    #[arg(long)]
    pub data: PathBuf,
    /// Architecture.
    #[arg(long, default_value = "efficientnet_lite0")]
    pub arch: String,
    /// ImageNet weights (`.pth` or `.safetensors`); default: the architecture's published
    /// file in the weights cache (see `weights fetch`). A run's config names none only when it
    /// trains from random initialisation (`--allow-random-init`).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// `frozen` (the paper's protocol), `partial` (the last `--tune-blocks` blocks, the head
    /// convolution and the head; EfficientNet-Lite) or `finetune` (all layers).
    #[arg(long, value_enum, default_value = "frozen")]
    pub mode: Mode,
    /// Epochs, batch, learning rate, seed and devices (shared with `benchmark`).
    #[command(flatten)]
    #[serde(flatten)]
    pub optimisation: Optimisation,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value = "constant")]
    #[serde(default = "constant")]
    pub schedule: Schedule,
    /// Class-imbalance handling.
    #[arg(long, value_enum, default_value = "weighted")]
    pub imbalance: Imbalance,
    /// Augmentation (None: the evaluation transform only; `train --no-augment`).
    #[arg(skip = Some(Augment::default()))]
    pub augment: Option<Augment>,
    /// Frozen and partial modes: views cached per training image (1 = no augmentation; view 0
    /// is the evaluation transform, the others random augmentations drawn once).
    #[arg(long, default_value_t = 1)]
    pub views: usize,
    /// Dropout probability of the head (default: the paper's, 0.2; 0.5 for SqueezeNet's
    /// convolutional head).
    #[arg(long, value_parser = dropout_probability)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    /// Partial mode: how many of the backbone's last blocks are trained (default: 4).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tune_blocks: Option<usize>,
    /// Cross-validation: train on the other folds of train + val and validate on this one
    /// (`None`: the manifest's own train and val splits).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fold: Option<Fold>,
    /// Frozen and partial modes: keep the backbone outputs in this folder instead of the
    /// run's `features/` (a cross-validation keeps them beside the manifest; a final run with
    /// the same settings can read the same ones).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_cache: Option<PathBuf>,
    /// The part of each image the network is given: `whole`, or `lungs` (the lungs' bounding
    /// box and a margin, found by `--lungs`, cut from the full-size image before the usual
    /// resize; the whole image where no lung is found).
    #[arg(long = "input", default_value = "whole")]
    #[serde(default, skip_serializing_if = "InputRegion::is_whole")]
    pub region: InputRegion,
    /// `--input lungs`: the lung segmenter's own file (`web/models/lungs-v1.pneumoscope`),
    /// which finds the crop (and which `export` puts into the model file).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lungs: Option<PathBuf>,
    /// The side of the square the network is given, in pixels (default: the architecture's
    /// own, 224 for EfficientNet-Lite0); the resize before the crop scales alike. Networks whose
    /// head pools globally take any side (e.g. 320 for Lite0; the cost grows with the square).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_size: Option<usize>,
    /// Fine-tuning: LP-FT, learning rates per group, warm-up, weight decay, early stopping,
    /// batch norm (partial and finetune modes).
    #[command(flatten)]
    #[serde(flatten)]
    pub tuning: FineTuning,
}

impl TrainConfig {
    /// The run's architecture at its input side (`--input-size`, else the architecture's own).
    pub fn spec(&self) -> Result<ArchSpec> {
        let spec = pneumoscope::arch::find(&self.arch)?;
        Ok(match self.input_size {
            Some(side) if side != spec.input.crop => spec
                .at_input_side(side)
                .with_context(|| format!("--input-size {side}"))?,
            _ => spec,
        })
    }

    /// How this run frames each image (`--input`; loads the segmenter of `--input lungs`).
    pub fn framing(&self) -> Result<Framing> {
        match self.region {
            InputRegion::Whole => Ok(Framing::Whole),
            InputRegion::Lungs => {
                let Some(path) = &self.lungs else {
                    bail!("--input lungs needs the lung segmenter (--lungs FILE)");
                };
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let net = crate::lungs::load_bytes(path, &bytes, &Device::flex())?.net;
                Ok(Framing::lungs(net, &bytes))
            }
        }
    }
}

impl Default for TrainConfig {
    /// The command line's defaults, with no manifest.
    fn default() -> Self {
        TrainConfig {
            data: PathBuf::new(),
            ..crate::machinery::args::defaults(&["--data", "-"])
        }
    }
}

/// A probability in [0, 1).
pub(super) fn dropout_probability(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..1.0).contains(&p) => Ok(p),
        _ => Err(format!("'{s}' is not a probability in [0, 1)")),
    }
}

pub(super) fn constant() -> Schedule {
    Schedule::Constant
}

/// Batch-norm layers of the backbone while it is trained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BatchNorm {
    /// Batch statistics in training, running statistics updated, scale and shift trained.
    #[default]
    Train,
    /// Running statistics kept as they are (ImageNet's), scale and shift not trained.
    Frozen,
}

/// The fine-tuning settings of a run (flattened into `train`'s options and `config.json`; a
/// run of an earlier version, which has none of them, reads as the defaults, which change
/// nothing).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default)]
pub struct FineTuning {
    /// LP-FT: start the head from a frozen run's trained head instead of a random one. A run
    /// folder (`RUN/model.bpk`), a cross-validation folder (each fold takes its own
    /// `fold-K/model.bpk`, trained on the same folds) or a `model.bpk`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_head: Option<PathBuf>,
    /// The backbone's learning rate as a fraction of `--lr` (the head's).
    #[arg(long, default_value_t = 1.0, value_parser = nonnegative)]
    pub backbone_lr_scale: f64,
    /// Layer-wise decay (EfficientNet-Lite): block `i` of `n` trains at `d^(n-1-i)` times the
    /// backbone's rate, the stem at `d^n`, the head convolution at the backbone's rate.
    #[arg(long, default_value_t = 1.0, value_parser = unit_interval)]
    pub layer_decay: f64,
    /// Linear warm-up from 0 over this many epochs (fractions allowed), then the schedule over
    /// the remaining steps.
    #[arg(long, default_value_t = 0.0, value_parser = nonnegative)]
    pub warmup_epochs: f64,
    /// Decoupled weight decay (AdamW) of the weights of rank 2 and more (convolutions and
    /// linear layers; biases and batch norms are not decayed).
    #[arg(long, default_value_t = 0.0, value_parser = nonnegative)]
    pub weight_decay: f64,
    /// Early stopping: stop when validation macro-F1 has not improved for this many epochs
    /// (the best epoch's model is kept, as always).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patience: Option<usize>,
    /// Batch norm of the trained backbone layers: `train` or `frozen`.
    #[arg(long, value_enum, default_value = "train")]
    pub bn: BatchNorm,
}

impl Default for FineTuning {
    fn default() -> Self {
        Self {
            init_head: None,
            backbone_lr_scale: 1.0,
            layer_decay: 1.0,
            warmup_epochs: 0.0,
            weight_decay: 0.0,
            patience: None,
            bn: BatchNorm::Train,
        }
    }
}

pub(super) fn nonnegative(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a number ≥ 0")),
    }
}

pub(super) fn unit_interval(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!("'{s}' is not in (0, 1]")),
    }
}
