//! `pneumoscope train`: the paper's transfer-learning protocol (`frozen`: backbone frozen, its
//! features computed once and cached, only the head trained) and full fine-tuning
//! (`finetune`), with class-imbalance handling, best epoch by validation macro-F1, a verified
//! checkpoint every epoch and `--resume`.

use crate::augment::Augment;
use crate::checkpoint::Checkpoints;
use crate::data::cache::{self, Framing, SquareCache};
use crate::data::{Label, Manifest, NUM_LABELS, Population, Split};
use crate::fsutil::{read_json, write_atomic};
use crate::metrics;
use crate::parallel::Devices;
use crate::tuning::{self, FineTuning, LrGroups};
use crate::weights;
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use burn::tensor::activation::softmax;
use clap::builder::TypedValueParser;
use pneumoscope::NUM_CLASSES;
use pneumoscope::arch::{self, ArchSpec, global_avg_pool};
use pneumoscope::model::{Classifier, Head};
use pneumoscope::model_file::sha256_hex;
use pneumoscope::preprocess::InputRegion;
use rand::Rng;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    pub device: String,
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
    /// Fine-tuning: LP-FT, learning rates per group, warm-up, weight decay, early stopping,
    /// batch norm (partial and finetune modes).
    #[command(flatten)]
    #[serde(flatten)]
    pub tuning: FineTuning,
}

impl Default for TrainConfig {
    /// The command line's defaults, with no manifest.
    fn default() -> Self {
        TrainConfig {
            data: PathBuf::new(),
            ..crate::commands::defaults(&["--data", "-"])
        }
    }
}

/// A probability in [0, 1).
fn dropout_probability(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..1.0).contains(&p) => Ok(p),
        _ => Err(format!("'{s}' is not a probability in [0, 1)")),
    }
}

/// One line of `epochs.csv`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Validation accuracy.
    pub val_accuracy: f64,
    /// Validation macro-F1.
    pub val_macro_f1: f64,
    /// Wall time of the epoch, seconds.
    pub seconds: f64,
}

/// Progress saved after each epoch (`RUN/state.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    epochs_done: usize,
    best_epoch: usize,
    best_val_macro_f1: f64,
    history: Vec<EpochLog>,
    /// Earlier versions: the last two checkpoints, oldest first (files beside `state.json`;
    /// the current layout keeps them in [`crate::checkpoint`]'s folders).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    checkpoints: Vec<CheckpointRef>,
    /// Single-checkpoint layout of earlier runs (`checkpoint.bpk`, `optimizer.bpk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checkpoint_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    optimizer_sha256: Option<String>,
}

/// Earlier versions: the files of the checkpoint written after one epoch, and their checksums.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CheckpointRef {
    epoch: usize,
    model: String,
    model_sha256: String,
    optimizer: String,
    optimizer_sha256: String,
}

impl CheckpointRef {
    /// Reads and verifies both files.
    fn read(&self, run: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for (name, sha) in [
            (&self.model, &self.model_sha256),
            (&self.optimizer, &self.optimizer_sha256),
        ] {
            let p = run.join(name);
            let b = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
            if &sha256_hex(&b) != sha {
                bail!(
                    "{}: checksum mismatch (corrupt or half-written)",
                    p.display()
                );
            }
            out.push(b);
        }
        let o = out.pop().unwrap();
        Ok((out.pop().unwrap(), o))
    }
}

fn constant() -> Schedule {
    Schedule::Constant
}

/// Weighted cross-entropy against a set of allowed classes per row:
/// `sum_i w_i * -log(sum_{c allowed in i} p_ic) / sum_i w_i`. A row that allows one class is
/// ordinary cross-entropy; the partial label "pneumonia, pathogen unknown" allows bacterial and
/// viral, so its loss is `-log(p_bacterial + p_viral)` and it never counts as either class.
pub fn partial_cross_entropy(
    logits: Tensor<2>,
    allowed: Tensor<2>,
    weights: Tensor<1>,
) -> Tensor<1> {
    let [n, _] = logits.dims();
    let lse = |x: Tensor<2>| {
        let m = x.clone().max_dim(1).detach();
        (x - m.clone()).exp().sum_dim(1).log() + m
    };
    // Classes not allowed are pushed to -1e30: exp() of them is exactly 0.
    let masked = logits.clone() + (allowed - 1.0) * 1e30;
    let nll = (lse(logits) - lse(masked)).reshape([n]);
    (nll * weights.clone()).sum() / weights.sum()
}

/// The loss of a batch of training rows: [`partial_cross_entropy`] of `logits` against their
/// labels, with their row weights.
fn batch_loss(
    logits: Tensor<2>,
    batch: &[usize],
    labels: &[usize],
    row_w: &[f32],
    d: &Device,
) -> Tensor<1> {
    let allowed: Vec<f32> = batch
        .iter()
        .flat_map(|&i| Label::allowed_of_index(labels[i]).map(|a| f32::from(u8::from(a))))
        .collect();
    let w: Vec<f32> = batch.iter().map(|&i| row_w[i]).collect();
    partial_cross_entropy(
        logits,
        Tensor::from_data(TensorData::new(allowed, [batch.len(), NUM_CLASSES]), d),
        Tensor::from_data(TensorData::new(w, [batch.len()]), d),
    )
}

/// Stacks normalised images into a tensor.
pub fn stack(images: &[Vec<f32>], size: usize, device: &Device) -> Tensor<4> {
    let flat: Vec<f32> = images.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [images.len(), 3, size, size]), device)
}

fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_to_vec().expect("f32 tensor")
}

fn probs_rows(v: Vec<f32>) -> Vec<[f32; NUM_CLASSES]> {
    v.chunks(NUM_CLASSES)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect()
}

/// What [`extract_features`] computes per image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extract {
    /// What the paper's head reads (`spec.head_dim()` values): the frozen protocol's cache.
    HeadInput,
    /// The global average of the Grad-CAM target (`spec.feature_dim` values): what the
    /// out-of-distribution score reads.
    Pooled,
    /// The input of backbone block `n` (partial fine-tuning's cache), `[c, h, w]` flattened.
    InputOfBlock(usize),
}

/// Shape `[c, h, w]` per image of `what` (runs one blank image through the backbone when it
/// depends on the architecture's blocks; `[0, 0, 0]` for a backbone without blocks).
pub fn extract_shape(
    what: Extract,
    backbone: &arch::Backbone,
    spec: &ArchSpec,
    device: &Device,
) -> [usize; 3] {
    match what {
        Extract::HeadInput => spec.head_shape,
        Extract::Pooled => [spec.feature_dim, 1, 1],
        Extract::InputOfBlock(n) => {
            let s = spec.input.crop;
            backbone
                .input_of_block(Tensor::zeros([1, 3, s, s], device), n)
                .map_or([0; 3], |t| {
                    let [_, c, h, w] = t.dims();
                    [c, h, w]
                })
        }
    }
}

/// Values per image of `what` (see [`extract_shape`]).
pub fn extract_dim(
    what: Extract,
    backbone: &arch::Backbone,
    spec: &ArchSpec,
    device: &Device,
) -> usize {
    extract_shape(what, backbone, spec, device).iter().product()
}

/// Where backbone features come from: a backbone, its architecture, the training images
/// (squared, resized) and the device it runs on.
pub struct FeatureSource<'a> {
    /// The backbone.
    pub backbone: &'a arch::Backbone,
    /// Its architecture.
    pub spec: &'a ArchSpec,
    /// The images.
    pub squares: &'a SquareCache,
    /// Where it runs.
    pub device: &'a Device,
}

/// Backbone features of the given manifest rows (one view each, augmented with its seed when
/// `augment` is given), `[n, dim]` row-major, computed in batches; `label` names the progress
/// bar.
pub fn extract_features(
    what: Extract,
    src: &FeatureSource,
    rows: &[usize],
    augment: Option<(&Augment, u64)>,
    label: &str,
) -> Vec<f32> {
    let FeatureSource {
        backbone,
        spec,
        squares,
        device,
    } = *src;
    let pb = crate::progress::bar(rows.len() as u64, label);
    let dim = extract_dim(what, backbone, spec, device);
    let mut out = Vec::with_capacity(rows.len() * dim);
    for chunk in rows.chunks(32) {
        let imgs: Vec<Vec<f32>> = chunk
            .par_iter()
            .map(|&i| {
                let sq = squares.image(i);
                match augment {
                    Some((a, seed)) => {
                        let mut rng =
                            ChaCha8Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9));
                        a.apply(&sq, &spec.input, &mut rng)
                    }
                    None => pneumoscope::preprocess::normalize_gray(&sq, &spec.input),
                }
            })
            .collect();
        let x = stack(&imgs, spec.input.crop, device);
        let f = match what {
            Extract::HeadInput => backbone.head_input(backbone.feature_map(x)).flatten(1, 3),
            Extract::Pooled => global_avg_pool(backbone.feature_map(x)),
            Extract::InputOfBlock(n) => backbone
                .input_of_block(x, n)
                .expect("checked by the caller: the backbone has blocks")
                .flatten(1, 3),
        };
        out.extend(to_vec(f));
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    out
}

fn features_cached(
    dir: &Path,
    name: &str,
    n: usize,
    dim: usize,
    compute: impl FnOnce() -> Vec<f32>,
) -> Result<(Vec<f32>, bool)> {
    let path = dir.join(format!("{name}.f32"));
    if let Ok(bytes) = std::fs::read(&path)
        && bytes.len() == n * dim * 4
    {
        return Ok((
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            true,
        ));
    }
    let v = compute();
    std::fs::create_dir_all(path.parent().unwrap())?;
    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
    write_atomic(&path, &bytes)?;
    Ok((v, false))
}

/// A fresh head, with the given dropout probability instead of the paper's.
fn new_head(spec: &ArchSpec, dropout: Option<f64>, device: &Device) -> Head {
    let mut head = Head::new(spec, device);
    if let Some(p) = dropout {
        head.dropout = burn::nn::DropoutConfig::new(p).init();
    }
    head
}

/// A classifier of `backbone` and its head on the main training device, with autodiff: a new
/// head, or under LP-FT (`--init-head`) the frozen run's trained head; the backbone's batch
/// norms frozen under `--bn frozen`.
fn trainable(
    backbone: arch::Backbone,
    spec: &ArchSpec,
    cfg: &TrainConfig,
    device: &Device,
) -> Result<Classifier> {
    let head = match &cfg.tuning.init_head {
        Some(from) => {
            let model = tuning::head_source(from, &cfg.arch, cfg.fold)?;
            let mut head = tuning::load_head(&model, spec, device)?;
            if let Some(p) = cfg.dropout {
                head.dropout = burn::nn::DropoutConfig::new(p).init();
            }
            eprintln!("LP-FT: the head starts from {}", model.display());
            head
        }
        None => new_head(spec, cfg.dropout, device),
    };
    let model = Classifier { backbone, head }.fork(device).train();
    Ok(match cfg.tuning.bn {
        tuning::BatchNorm::Train => model,
        tuning::BatchNorm::Frozen => {
            let (backbone, _) = tuning::freeze_batch_norms(model.backbone);
            Classifier { backbone, ..model }
        }
    })
}

/// The rows of a batch, each from one of the cached views drawn at random (view 0 when
/// there is only one).
fn pick_views(views: &[Vec<f32>], batch: &[usize], dim: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut x = Vec::with_capacity(batch.len() * dim);
    for &i in batch {
        let v = if views.len() > 1 {
            rng.random_range(0..views.len())
        } else {
            0
        };
        x.extend_from_slice(&views[v][i * dim..(i + 1) * dim]);
    }
    x
}

/// Wall-clock figures a run records in `timing.json`.
type Timing = serde_json::Map<String, serde_json::Value>;

impl Run<'_> {
    /// The frozen part's output for the run: `cfg.views` views of each training image (view 0
    /// the evaluation transform, the others augmentations drawn once) and view 0 of the
    /// validation images. Each view is computed once for every row of train + val (the
    /// *pool*, the same for every fold of a cross-validation) and kept in the feature cache
    /// (`cfg.feature_cache`, else `RUN/features/`) as `{tag}v{v}.f32`. Records the extraction
    /// time in `timing`.
    fn cached_inputs(
        &self,
        what: Extract,
        tag: &str,
        backbone: &arch::Backbone,
        timing: &mut Timing,
    ) -> Result<(Vec<Vec<f32>>, Vec<f32>)> {
        let (cfg, spec, device) = (self.cfg, &self.spec, &self.device);
        let dim = extract_dim(what, backbone, spec, device);
        let dir = cfg
            .feature_cache
            .clone()
            .unwrap_or_else(|| self.dir.join("features"));
        let mut pool: Vec<usize> = self
            .train_rows
            .iter()
            .chain(&self.val_rows)
            .copied()
            .collect();
        pool.sort_unstable();
        pool.dedup();
        let at: std::collections::HashMap<usize, usize> =
            pool.iter().enumerate().map(|(k, &i)| (i, k)).collect();
        let gather = |f: &[f32], rows: &[usize]| -> Vec<f32> {
            rows.iter()
                .flat_map(|i| f[at[i] * dim..(at[i] + 1) * dim].iter().copied())
                .collect()
        };
        let src = FeatureSource {
            backbone,
            spec,
            squares: &self.squares,
            device,
        };
        let t0 = Instant::now();
        let mut fresh = 0.0;
        let mut train_views = Vec::new();
        let mut val = Vec::new();
        for v in 0..cfg.views.max(1) {
            let aug = cfg
                .augment
                .as_ref()
                .filter(|_| v > 0)
                .map(|a| (a, cfg.optimisation.seed.wrapping_add(v as u64)));
            let t = Instant::now();
            let label = format!("{tag}view {v}").replace('-', " ");
            let (f, hit) = features_cached(&dir, &format!("{tag}v{v}"), pool.len(), dim, || {
                extract_features(what, &src, &pool, aug, &label)
            })?;
            if !hit {
                fresh += t.elapsed().as_secs_f64();
            }
            if v == 0 {
                val = gather(&f, &self.val_rows);
            }
            train_views.push(gather(&f, &self.train_rows));
        }
        timing.insert("feature_extraction_seconds".into(), fresh.into());
        timing.insert(
            "feature_extraction_wall_seconds".into(),
            t0.elapsed().as_secs_f64().into(),
        );
        Ok((train_views, val))
    }
}

/// Inverse-frequency weights `N / (K n_g)` of group indices (`K`: the groups present).
fn inverse_frequency(groups: &[usize], n_groups: usize) -> Vec<f32> {
    let mut cnt = vec![0usize; n_groups];
    for &g in groups {
        cnt[g] += 1;
    }
    let present = cnt.iter().filter(|&&c| c > 0).count().max(1);
    let n = groups.len() as f32;
    cnt.iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                n / (present as f32 * c as f32)
            }
        })
        .collect()
}

/// Label weights `N / (K n_l)` of the training labels (label indices, see
/// [`Label::index`]; `K` the labels present).
pub fn class_weights(labels: &[usize]) -> Vec<f32> {
    inverse_frequency(labels, NUM_LABELS)
}

/// Each training row's weight in the loss under `imbalance`.
pub fn row_weights(labels: &[usize], populations: &[Population], imbalance: Imbalance) -> Vec<f32> {
    match imbalance {
        Imbalance::Weighted => {
            let w = class_weights(labels);
            labels.iter().map(|&l| w[l]).collect()
        }
        Imbalance::Group => {
            let g: Vec<usize> = labels
                .iter()
                .zip(populations)
                .map(|(&l, p)| l * 2 + p.index())
                .collect();
            let w = inverse_frequency(&g, NUM_LABELS * 2);
            g.iter().map(|&k| w[k]).collect()
        }
        Imbalance::Balanced | Imbalance::None => vec![1.0; labels.len()],
    }
}

/// The training and validation rows of a run: the manifest's splits, or under `fold` the
/// other folds of train + val and this fold (patient-grouped, see [`crate::cv::folds`]).
pub fn run_rows(manifest: &Manifest, fold: Option<Fold>) -> (Vec<usize>, Vec<usize>) {
    match fold {
        None => (
            manifest.split_indices(Split::Train),
            manifest.split_indices(Split::Val),
        ),
        Some(f) => {
            let of = crate::cv::folds(manifest, f.of, f.seed);
            let pool = (0..manifest.records.len()).filter(|&i| of[i].is_some());
            let (val, train): (Vec<usize>, Vec<usize>) =
                pool.partition(|&i| of[i] == Some(f.index));
            (train, val)
        }
    }
}

/// The order of training rows for one epoch.
fn epoch_order(labels: &[usize], imbalance: Imbalance, rng: &mut ChaCha8Rng) -> Vec<usize> {
    match imbalance {
        Imbalance::Balanced => {
            let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); NUM_LABELS];
            for (i, &l) in labels.iter().enumerate() {
                by_class[l].push(i);
            }
            let present: Vec<&Vec<usize>> = by_class.iter().filter(|v| !v.is_empty()).collect();
            let mut order: Vec<usize> = (0..labels.len())
                .map(|k| {
                    let c = present[k % present.len()];
                    c[rng.random_range(0..c.len())]
                })
                .collect();
            order.shuffle(rng);
            order
        }
        _ => {
            let mut order: Vec<usize> = (0..labels.len()).collect();
            order.shuffle(rng);
            order
        }
    }
}

/// Runs (or resumes) a training run in `run`.
pub fn train(cfg: TrainConfig, run: &Path, resume: bool) -> Result<()> {
    let cfg = settle_config(cfg, run, resume)?;
    let (ctx, loaded) = Run::prepare(&cfg, run)?;
    let mut timing = Timing::new();
    let (model, val_probs) = match cfg.mode {
        Mode::Frozen => ctx.frozen(loaded.backbone, &mut timing)?,
        Mode::Partial => ctx.partial(loaded.backbone, &mut timing)?,
        Mode::Finetune => ctx.finetune(loaded.backbone, &mut timing)?,
    };
    ctx.finish(model, val_probs, timing, &loaded.source)
}

/// The run's settings, written to `RUN/config.json`: the given ones for a new run; for a
/// resumed one those it was started with, where only the number of epochs may change.
fn settle_config(cfg: TrainConfig, run: &Path, resume: bool) -> Result<TrainConfig> {
    let cfg_path = run.join("config.json");
    let cfg = if resume {
        let saved: TrainConfig = read_json(&cfg_path)
            .with_context(|| format!("--resume: {} is not a run folder", run.display()))?;
        let epochs = cfg.optimisation.epochs;
        if saved.optimisation.epochs != epochs {
            eprintln!(
                "resuming with {epochs} epochs (was {})",
                saved.optimisation.epochs
            );
        }
        TrainConfig {
            optimisation: Optimisation {
                epochs,
                ..saved.optimisation
            },
            ..saved
        }
    } else {
        if run.join("state.json").exists() {
            bail!(
                "{} already holds a run; pass --resume to continue it or choose another --out",
                run.display()
            );
        }
        cfg
    };
    std::fs::create_dir_all(run).with_context(|| format!("cannot create {}", run.display()))?;
    write_atomic(&cfg_path, serde_json::to_string_pretty(&cfg)?.as_bytes())?;
    Ok(cfg)
}

/// What a run's training phases share: its settings and folder, its architecture, the data it
/// trains and validates on (rows, labels, loss weights, images) and its devices.
struct Run<'a> {
    cfg: &'a TrainConfig,
    dir: &'a Path,
    spec: ArchSpec,
    manifest: Manifest,
    squares: SquareCache,
    /// Where validation and the frozen parts run.
    device: Device,
    /// The autodiff devices a training step is spread over.
    replicas: Devices,
    train_rows: Vec<usize>,
    val_rows: Vec<usize>,
    train_labels: Vec<usize>,
    val_labels: Vec<usize>,
    /// Each training row's weight in the loss.
    row_w: Vec<f32>,
}

/// The trained classifier and, when they are at hand already, its validation probabilities.
type Trained = (Classifier, Option<Vec<[f32; NUM_CLASSES]>>);

impl<'a> Run<'a> {
    /// Checks the settings against the manifest and the architecture, and loads the data,
    /// the devices and the starting backbone.
    fn prepare(cfg: &'a TrainConfig, dir: &'a Path) -> Result<(Self, weights::LoadedBackbone)> {
        let manifest = Manifest::read(&cfg.data)?;
        let spec = arch::find(&cfg.arch)?;
        if cfg.mode == Mode::Partial && !spec.supports_partial() {
            bail!(
                "--mode partial: {} is not split into blocks here; partial fine-tuning supports \
                 the EfficientNet-Lite architectures (use frozen or finetune)",
                spec.name
            );
        }
        if cfg.mode == Mode::Frozen && cfg.tuning != FineTuning::default() {
            bail!(
                "--init-head, --backbone-lr-scale, --layer-decay, --warmup-epochs, \
                 --weight-decay, --patience and --bn are options of --mode partial and \
                 finetune; --mode frozen trains only a new head"
            );
        }
        let devices = crate::device::parse_list(&cfg.optimisation.device)?;
        let device = devices[0].clone();
        let replicas = Devices::new(&devices);
        if replicas.len() > 1 {
            eprintln!(
                "data-parallel training on {} devices ({}); each step's batch of {} is split between them",
                replicas.len(),
                cfg.optimisation.device,
                cfg.optimisation.batch_size
            );
        }
        let loaded = starting_backbone(cfg, &spec, &device)?;
        if let Some(f) = cfg.fold
            && (f.of < 2 || f.index >= f.of)
        {
            bail!(
                "fold {} of {}: need at least 2 folds and an index below their number",
                f.index,
                f.of
            );
        }
        let (train_rows, val_rows) = run_rows(&manifest, cfg.fold);
        if train_rows.is_empty() || val_rows.is_empty() {
            bail!(
                "{}: the manifest needs train and val rows (build it with --val > 0)",
                cfg.data.display()
            );
        }
        let train_labels = manifest.labels(&train_rows);
        let val_labels = manifest.labels(&val_rows);
        let framing = Framing::of(cfg)?;
        let squares = cache::load_or_build(&manifest, spec.input.resize, &framing)?;
        let row_w = row_weights(
            &train_labels,
            &manifest.populations(&train_rows),
            cfg.imbalance,
        );
        replicas.main().seed(cfg.optimisation.seed);
        let run = Run {
            cfg,
            dir,
            spec,
            manifest,
            squares,
            device,
            replicas,
            train_rows,
            val_rows,
            train_labels,
            val_labels,
            row_w,
        };
        Ok((run, loaded))
    }

    /// The paper's protocol: the backbone's head inputs cached, only the head trained.
    fn frozen(&self, backbone: arch::Backbone, timing: &mut Timing) -> Result<Trained> {
        let (spec, device) = (&self.spec, &self.device);
        let dim = spec.head_dim();
        let shape = spec.head_shape;
        let (train_views, val_feats) =
            self.cached_inputs(Extract::HeadInput, "", &backbone, timing)?;
        let head = new_head(spec, self.cfg.dropout, self.replicas.main());
        let val_x = Tensor::<2>::from_data(
            TensorData::new(val_feats, [self.val_rows.len(), dim]),
            device,
        );
        let groups = LrGroups::new(&FineTuning::default(), spec, None)?;
        let head = self.train_loop(
            head,
            &groups,
            timing,
            |m: &Head, batch: &[usize], rng: &mut ChaCha8Rng, d: &Device| {
                let x = pick_views(&train_views, batch, dim, rng);
                let x = Tensor::<2>::from_data(TensorData::new(x, [batch.len(), dim]), d);
                self.batch_loss(m.forward_rows(x, shape), batch, d)
            },
            |m: &Head| {
                probs_rows(to_vec(softmax(
                    m.valid().forward_rows(val_x.clone(), shape),
                    1,
                )))
            },
        )?;
        // The validation probabilities from the cached features: the backbone is not run
        // again.
        let val_probs = probs_rows(to_vec(softmax(
            head.valid().fork(device).forward_rows(val_x, shape),
            1,
        )));
        let model = Classifier {
            backbone,
            head: head.valid().fork(device),
        };
        Ok((model, Some(val_probs)))
    }

    /// Partial fine-tuning: the input of the first trained block cached, the last blocks, the
    /// head convolution and the head trained.
    fn partial(&self, backbone: arch::Backbone, timing: &mut Timing) -> Result<Trained> {
        let (spec, device) = (&self.spec, &self.device);
        let blocks = backbone
            .block_count()
            .expect("checked by prepare: an architecture with blocks");
        let tune = self.cfg.tune_blocks.unwrap_or(DEFAULT_TUNE_BLOCKS);
        if tune == 0 || tune > blocks {
            bail!(
                "--tune-blocks {tune}: {} has {blocks} blocks; choose 1 to {blocks}",
                spec.name
            );
        }
        let cut = blocks - tune;
        let what = Extract::InputOfBlock(cut);
        let shape = extract_shape(what, &backbone, spec, device);
        let dim: usize = shape.iter().product();
        let (train_views, val_feats) =
            self.cached_inputs(what, &format!("block{cut}-"), &backbone, timing)?;
        let model = trainable(backbone, spec, self.cfg, self.replicas.main())?;
        let groups = LrGroups::new(&self.cfg.tuning, spec, Some(blocks))?;
        let rows4 = |x: Vec<f32>, n: usize, d: &Device| {
            Tensor::<4>::from_data(TensorData::new(x, [n, shape[0], shape[1], shape[2]]), d)
        };
        let model = self.train_loop(
            model,
            &groups,
            timing,
            |m: &Classifier, batch: &[usize], rng: &mut ChaCha8Rng, d: &Device| {
                let x = pick_views(&train_views, batch, dim, rng);
                let map = m
                    .backbone
                    .feature_map_from(rows4(x, batch.len(), d), cut)
                    .expect("a backbone with blocks");
                self.batch_loss(m.logits_from_map(map), batch, d)
            },
            |m: &Classifier| {
                let v = m.valid().fork(device);
                let mut out = Vec::new();
                for chunk in val_feats.chunks(64 * dim) {
                    let x = rows4(chunk.to_vec(), chunk.len() / dim, device);
                    let map = v.backbone.feature_map_from(x, cut).expect("blocks");
                    out.extend(probs_rows(to_vec(softmax(v.logits_from_map(map), 1))));
                }
                out
            },
        )?;
        Ok((model.valid().fork(device), None))
    }

    /// Full fine-tuning: every layer trained on augmented images.
    fn finetune(&self, backbone: arch::Backbone, timing: &mut Timing) -> Result<Trained> {
        let (spec, device) = (&self.spec, &self.device);
        let blocks = backbone.block_count();
        let model = trainable(backbone, spec, self.cfg, self.replicas.main())?;
        let groups = LrGroups::new(&self.cfg.tuning, spec, blocks)?;
        let aug = self.cfg.augment.unwrap_or_else(Augment::none);
        let val_imgs: Vec<Vec<f32>> = self
            .val_rows
            .par_iter()
            .map(|&i| pneumoscope::preprocess::normalize_gray(&self.squares.image(i), &spec.input))
            .collect();
        let model = self.train_loop(
            model,
            &groups,
            timing,
            |m: &Classifier, batch: &[usize], rng: &mut ChaCha8Rng, d: &Device| {
                let seeds: Vec<u64> = batch.iter().map(|_| rng.random()).collect();
                let imgs: Vec<Vec<f32>> = batch
                    .par_iter()
                    .zip(seeds)
                    .map(|(&i, s)| {
                        aug.apply(
                            &self.squares.image(self.train_rows[i]),
                            &spec.input,
                            &mut ChaCha8Rng::seed_from_u64(s),
                        )
                    })
                    .collect();
                let x = stack(&imgs, spec.input.crop, d);
                self.batch_loss(m.forward(x), batch, d)
            },
            |m: &Classifier| {
                let v = m.valid().fork(device);
                let mut out = Vec::new();
                for chunk in val_imgs.chunks(32) {
                    out.extend(probs_rows(to_vec(softmax(
                        v.forward(stack(chunk, spec.input.crop, device)),
                        1,
                    ))));
                }
                out
            },
        )?;
        Ok((model.valid().fork(device), None))
    }

    /// [`batch_loss`] of a batch of training rows.
    fn batch_loss(&self, logits: Tensor<2>, batch: &[usize], d: &Device) -> Tensor<1> {
        batch_loss(logits, batch, &self.train_labels, &self.row_w, d)
    }

    /// The epoch loop every mode shares. `loss` runs one training batch (indices into the
    /// training rows) on a device; a step spreads the batch over the replicas' devices (see
    /// [`crate::parallel`]); `val_probs` gives validation probabilities; `groups` gives each
    /// parameter's share of the step's learning rate. A checkpoint is saved after every epoch;
    /// a resumed run starts after its newest one that verifies. Stops early after
    /// `--patience` epochs without a better validation macro-F1. Returns the best module (by
    /// validation macro-F1).
    fn train_loop<M: Module>(
        &self,
        module: M,
        groups: &LrGroups,
        timing: &mut Timing,
        loss: impl Fn(&M, &[usize], &mut ChaCha8Rng, &Device) -> Tensor<1> + Sync,
        val_probs: impl Fn(&M) -> Vec<[f32; NUM_CLASSES]>,
    ) -> Result<M> {
        let cfg = self.cfg;
        let opt = &cfg.optimisation;
        let mut optim = crate::adam::optimizer(cfg.tuning.weight_decay);
        let (mut progress, mut module) = Progress::resume(self.dir, module, &mut optim)?;
        // A shard's share of a batch's loss: the sum of its rows' weights (the loss's
        // normaliser is the sum of the batch's weights).
        let row_w = &self.row_w;
        let shard_weight = |rows: &[usize]| -> f64 { rows.iter().map(|&i| row_w[i] as f64).sum() };
        let n = self.train_labels.len();
        let steps_per_epoch = n.div_ceil(opt.batch_size);
        let total_steps = opt.epochs * steps_per_epoch;
        let warmup = (cfg.tuning.warmup_epochs * steps_per_epoch as f64).round() as usize;
        let remaining = opt.epochs.saturating_sub(progress.state.epochs_done);
        let pb = crate::progress::bar((remaining * steps_per_epoch) as u64, "training");
        let t_train = Instant::now();
        for epoch in progress.state.epochs_done + 1..=opt.epochs {
            let state = &progress.state;
            if let Some(p) = cfg.tuning.patience
                && state.epochs_done >= state.best_epoch + p
            {
                crate::progress::println(
                    &pb,
                    format!(
                        "early stop: no better validation macro-F1 in the {p} epochs after epoch {}",
                        state.best_epoch
                    ),
                );
                timing.insert("stopped_early_after_epoch".into(), state.epochs_done.into());
                break;
            }
            let t0 = Instant::now();
            let epoch_seed = opt.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64);
            let mut rng = ChaCha8Rng::seed_from_u64(epoch_seed);
            // The backend's generator (dropout masks) restarts each epoch too, so a resumed
            // run draws exactly what an uninterrupted one would.
            self.replicas.seed(epoch_seed);
            let order = epoch_order(&self.train_labels, cfg.imbalance, &mut rng);
            let mut total = 0.0;
            for (b, batch) in order.chunks(opt.batch_size).enumerate() {
                let step = (epoch - 1) * steps_per_epoch + b;
                let lr = tuning::lr_at(cfg.schedule, opt.lr, step, total_steps, warmup);
                let (lv, grads) =
                    self.replicas
                        .step(&module, batch, &mut rng, &loss, &shard_weight);
                total += lv as f64 * batch.len() as f64;
                module = optim.step(groups.at(lr), module, grads);
                pb.inc(1);
                if pb.is_hidden() && (b + 1) % 20 == 0 {
                    let rate = ((b + 1) * opt.batch_size) as f64 / t0.elapsed().as_secs_f64();
                    log_step(&pb, t_train, (epoch, b + 1, steps_per_epoch), lv, rate);
                }
            }
            let probs = val_probs(&module);
            let (acc, f1) = metrics::acc_f1(&metrics::confusion(&probs, &self.val_labels));
            let log = EpochLog {
                epoch,
                train_loss: total / n as f64,
                val_accuracy: acc,
                val_macro_f1: f1,
                seconds: t0.elapsed().as_secs_f64(),
            };
            crate::progress::println(
                &pb,
                format!(
                    "epoch {epoch:>3}/{}: loss {:.4}  val acc {:.4}  val macro-F1 {:.4}  ({:.1}s)",
                    opt.epochs, log.train_loss, acc, f1, log.seconds
                ),
            );
            progress.save(log, &module, &optim)?;
        }
        pb.finish_and_clear();
        timing.insert(
            "training_seconds_this_session".into(),
            t_train.elapsed().as_secs_f64().into(),
        );
        let state = &progress.state;
        timing.insert(
            "epoch_seconds".into(),
            serde_json::to_value(state.history.iter().map(|h| h.seconds).collect::<Vec<_>>())?,
        );
        timing.insert("best_epoch".into(), state.best_epoch.into());
        if let Some(b) = tuning::peak_rss_bytes() {
            timing.insert("peak_rss_bytes_this_session".into(), b.into());
        }
        progress.best(module)
    }
}

/// The backbone a run starts from: the ImageNet weights its config names, else random
/// initialisation (with a warning).
fn starting_backbone(
    cfg: &TrainConfig,
    spec: &ArchSpec,
    device: &Device,
) -> Result<weights::LoadedBackbone> {
    Ok(match &cfg.weights {
        Some(w) => weights::load_backbone(spec, w, false, device)?,
        None => {
            eprintln!(
                "warning: {} starts from random initialisation (no ImageNet weights); the run \
                 and every file made from it say so",
                spec.name
            );
            weights::LoadedBackbone {
                backbone: spec.build_backbone(false, device).valid(),
                source: weights::RANDOM_INIT.to_string(),
            }
        }
    })
}

/// A progress line every 20 steps where no progress bar is drawn (logs, CI): the step, its
/// loss, images per second and the time left.
fn log_step(
    pb: &indicatif::ProgressBar,
    t_train: Instant,
    (epoch, step, steps): (usize, usize, usize),
    loss: f32,
    img_s: f64,
) {
    let done = pb.position().max(1) as f64;
    let left = pb.length().unwrap_or(0).saturating_sub(pb.position()) as f64;
    let eta = t_train.elapsed().as_secs_f64() / done * left;
    eprintln!(
        "epoch {epoch} step {step}/{steps}: loss {loss:.4} ({img_s:.1} img/s, ETA {:.0} min)",
        eta / 60.0
    );
}

/// A run's progress and its checkpoints ([`crate::checkpoint`]): resumed from, saved after
/// every epoch (the module, the optimizer and the best module so far), the last two kept;
/// `RUN/state.json` and `RUN/epochs.csv` are copies for people and scripts.
struct Progress {
    dir: PathBuf,
    state: State,
    /// The best module so far, as a record.
    best: Vec<u8>,
    store: Checkpoints,
}

/// A checkpoint read back: the progress and the records of the module, the optimizer and the
/// best module.
struct Resumed {
    state: State,
    model: Vec<u8>,
    optimizer: Vec<u8>,
    best: Vec<u8>,
}

/// Files of a training checkpoint.
const MODEL: &str = "model.bpk";
const OPTIMIZER: &str = "optimizer.bpk";
const BEST: &str = "best.bpk";

impl Progress {
    /// A new run's progress, or a resumed run's: `module` and `optim` loaded from the newest
    /// checkpoint that verifies (a corrupt one falls back to the one before). Runs of earlier
    /// versions (checkpoint files beside `state.json`) resume too, and go on in the current
    /// layout.
    fn resume<M: Module>(
        dir: &Path,
        module: M,
        optim: &mut burn::optim::ModuleOptimizer,
    ) -> Result<(Self, M)> {
        let store = Checkpoints::new(dir, 2);
        let Resumed {
            state,
            model: m,
            optimizer: o,
            best,
        } = match store.latest::<State>()? {
            Some(mut saved) => Resumed {
                model: saved.take(MODEL)?,
                optimizer: saved.take(OPTIMIZER)?,
                best: saved.take(BEST)?,
                state: saved.state,
            },
            None => match Self::legacy(dir)? {
                Some(loaded) => loaded,
                None => {
                    let fresh = State {
                        epochs_done: 0,
                        best_epoch: 0,
                        best_val_macro_f1: -1.0,
                        history: Vec::new(),
                        checkpoints: Vec::new(),
                        checkpoint_sha256: None,
                        optimizer_sha256: None,
                    };
                    let progress = Progress {
                        dir: dir.to_path_buf(),
                        state: fresh,
                        best: Vec::new(),
                        store,
                    };
                    return Ok((progress, module));
                }
            },
        };
        let rec = ModuleRecord::from_bytes(Bytes::from_bytes_vec(m)).map_err(|e| {
            anyhow::anyhow!(
                "checkpoint of epoch {}: unreadable model: {e:?}",
                state.epochs_done
            )
        })?;
        let module = module
            .try_load_record(rec)
            .map_err(|e| anyhow::anyhow!("checkpoint of epoch {}: {e:?}", state.epochs_done))?;
        *optim = std::mem::replace(optim, crate::adam::optimizer(0.0))
            .from_bytes(Bytes::from_bytes_vec(o))
            .map_err(|e| {
                anyhow::anyhow!(
                    "checkpoint of epoch {}: optimizer: {e:?}",
                    state.epochs_done
                )
            })?;
        eprintln!(
            "resuming after epoch {} (best so far: epoch {}, val macro-F1 {:.4})",
            state.epochs_done, state.best_epoch, state.best_val_macro_f1
        );
        let progress = Progress {
            dir: dir.to_path_buf(),
            state,
            best,
            store,
        };
        Ok((progress, module))
    }

    /// A run saved by an earlier version: `state.json` naming checkpoint files beside it (the
    /// last two, `checkpoint-NNNN.bpk` and `optimizer-NNNN.bpk`, or one `checkpoint.bpk` and
    /// `optimizer.bpk`) and `best-module.bpk`. `None` when the run has no state yet.
    fn legacy(dir: &Path) -> Result<Option<Resumed>> {
        let Ok(mut saved) = read_json::<State>(&dir.join("state.json")) else {
            return Ok(None);
        };
        saved.upgrade_single_checkpoint();
        for r in saved.checkpoints.clone().iter().rev() {
            match r.read(dir) {
                Ok((m, o)) => {
                    let best_path = dir.join("best-module.bpk");
                    let best = std::fs::read(&best_path)
                        .with_context(|| format!("cannot read {}", best_path.display()))?;
                    saved.epochs_done = r.epoch;
                    saved.history.truncate(r.epoch);
                    saved.checkpoints.clear();
                    return Ok(Some(Resumed {
                        state: saved,
                        model: m,
                        optimizer: o,
                        best,
                    }));
                }
                Err(e) => eprintln!("warning: {e:#}; trying the previous checkpoint"),
            }
        }
        Err(crate::checkpoint::unresumable(dir))
    }

    /// Records a finished epoch: the best module when it is the best so far, then a checkpoint
    /// of the module, the optimizer and the best module, `epochs.csv` and `state.json`. Files of
    /// an earlier version's layout go once the first checkpoint of this one is current.
    fn save<M: Module>(
        &mut self,
        log: EpochLog,
        module: &M,
        optim: &burn::optim::ModuleOptimizer,
    ) -> Result<()> {
        let state = &mut self.state;
        let epoch = log.epoch;
        let f1 = log.val_macro_f1;
        state.history.push(log);
        let m = module
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| anyhow::anyhow!("epoch {epoch}: the module's record: {e:?}"))?;
        if f1 > state.best_val_macro_f1 {
            state.best_val_macro_f1 = f1;
            state.best_epoch = epoch;
            self.best = m.to_vec();
        }
        let o = optim
            .into_bytes()
            .map_err(|e| anyhow::anyhow!("epoch {epoch}: the optimizer's record: {e:?}"))?;
        state.epochs_done = epoch;
        self.store.save(
            epoch,
            &*state,
            &[(MODEL, &m), (OPTIMIZER, &o), (BEST, &self.best)],
        )?;
        write_epochs_csv(&self.dir.join("epochs.csv"), &state.history)?;
        write_atomic(
            &self.dir.join("state.json"),
            serde_json::to_string_pretty(&state)?.as_bytes(),
        )?;
        for e in std::fs::read_dir(&self.dir)?.filter_map(|e| e.ok()) {
            let n = e.file_name().to_string_lossy().into_owned();
            let legacy = (n.starts_with("checkpoint") || n.starts_with("optimizer"))
                && n.ends_with(".bpk")
                || n == "best-module.bpk";
            if legacy {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// The best module of the run, loaded into `module`.
    fn best<M: Module>(&self, module: M) -> Result<M> {
        let rec = ModuleRecord::from_bytes(Bytes::from_bytes_vec(self.best.clone()))
            .map_err(|e| anyhow::anyhow!("{}: the best module: {e:?}", self.dir.display()))?;
        module
            .try_load_record(rec)
            .map_err(|e| anyhow::anyhow!("{}: the best module: {e:?}", self.dir.display()))
    }
}

impl State {
    /// Runs of an earlier layout kept one checkpoint (`checkpoint.bpk`, `optimizer.bpk`),
    /// named by two checksums; it becomes the run's one checkpoint entry.
    fn upgrade_single_checkpoint(&mut self) {
        if self.checkpoints.is_empty()
            && let (Some(m), Some(o)) =
                (self.checkpoint_sha256.take(), self.optimizer_sha256.take())
        {
            self.checkpoints.push(CheckpointRef {
                epoch: self.epochs_done,
                model: "checkpoint.bpk".into(),
                model_sha256: m,
                optimizer: "optimizer.bpk".into(),
                optimizer_sha256: o,
            });
        }
    }
}

fn write_epochs_csv(path: &Path, history: &[EpochLog]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for h in history {
        w.serialize(h)?;
    }
    write_atomic(path, &w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)
}

/// Probabilities of the given rows under the evaluation transform.
pub fn predict_rows(
    model: &Classifier,
    spec: &ArchSpec,
    squares: &SquareCache,
    rows: &[usize],
    device: &Device,
) -> Vec<[f32; NUM_CLASSES]> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(32) {
        let imgs: Vec<Vec<f32>> = chunk
            .par_iter()
            .map(|&i| pneumoscope::preprocess::normalize_gray(&squares.image(i), &spec.input))
            .collect();
        out.extend(probs_rows(to_vec(softmax(
            model.forward(stack(&imgs, spec.input.crop, device)),
            1,
        ))));
    }
    out
}

/// Writes `val_predictions.csv`: manifest row, path, label, population, source, patient and
/// the four probabilities of each validation row.
fn write_predictions(
    path: &Path,
    manifest: &Manifest,
    rows: &[usize],
    probs: &[[f32; NUM_CLASSES]],
) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["row", "path", "label", "population", "source", "patient"];
    header.extend(pneumoscope::Class::ALL.iter().map(|c| c.name()));
    w.write_record(&header)?;
    for (&i, p) in rows.iter().zip(probs) {
        let r = &manifest.records[i];
        let mut rec = vec![
            i.to_string(),
            r.path.clone(),
            r.label.to_string(),
            r.population().to_string(),
            r.source.clone(),
            r.patient.clone(),
        ];
        rec.extend(p.iter().map(|v| v.to_string()));
        w.write_record(&rec)?;
    }
    write_atomic(path, &w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)
}

impl Run<'_> {
    /// Writes the run's results: validation metrics (`metrics.json`) and predictions
    /// (`val_predictions.csv`), `timing.json`, `weight_source.txt` and the model
    /// (`model.bpk`).
    fn finish(
        &self,
        model: Classifier,
        val_probs: Option<Vec<[f32; NUM_CLASSES]>>,
        timing: Timing,
        weight_source: &str,
    ) -> Result<()> {
        let (run, val_rows, manifest) = (self.dir, &self.val_rows, &self.manifest);
        // Only the run's own validation rows: the test split is looked at once, at the end
        // of a study, with `pneumoscope evaluate`, never by every training run.
        let mut report = serde_json::Map::new();
        let probs = val_probs.unwrap_or_else(|| {
            predict_rows(&model, &self.spec, &self.squares, val_rows, &self.device)
        });
        let labels = manifest.labels(val_rows);
        let pats = manifest.patients(val_rows);
        let m = metrics::compute(&probs, &labels, &pats);
        println!(
            "val: accuracy {:.4}  macro-F1 {:.4} [{:.4}, {:.4}]  (n = {}, {} of them pneumonia of \
             unknown pathogen, left out of these figures)",
            m.accuracy,
            m.macro_f1,
            m.macro_f1_ci.low,
            m.macro_f1_ci.high,
            m.n,
            labels.iter().filter(|&&l| l >= NUM_CLASSES).count()
        );
        report.insert("val".into(), serde_json::to_value(&m)?);
        write_predictions(&run.join("val_predictions.csv"), manifest, val_rows, &probs)?;
        write_atomic(
            &run.join("metrics.json"),
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )?;
        write_atomic(
            &run.join("timing.json"),
            serde_json::to_string_pretty(&timing)?.as_bytes(),
        )?;
        write_atomic(&run.join("weight_source.txt"), weight_source.as_bytes())?;
        let bytes = model
            .into_record()
            .into_bytes()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        write_atomic(&run.join("model.bpk"), &bytes)?;
        println!("wrote {}", run.join("model.bpk").display());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::loss::CrossEntropyLossConfig;

    fn rows(v: Tensor<2>) -> Vec<f32> {
        v.into_data().try_to_vec::<f32>().unwrap()
    }

    /// With one allowed class per row it is Burn's weighted cross-entropy; with bacterial and
    /// viral allowed it is `-log(p_b + p_v)`, and its gradient is `softmax - q`, where `q` is
    /// the softmax renormalised over the allowed classes.
    #[test]
    fn partial_cross_entropy_against_its_definition() {
        let ad = Device::flex().autodiff();
        let logits = [
            1.0f32, 2.0, 0.5, -1.0, 0.2, -0.3, 1.5, 3.0, -2.0, 0.0, 0.7, 0.1,
        ];
        let x = || Tensor::<2>::from_data(TensorData::new(logits.to_vec(), [3, 4]), &ad);
        let labels = [1usize, 3, 0];
        let w = [0.5f32, 2.0, 1.0];
        let onehot: Vec<f32> = labels
            .iter()
            .flat_map(|&l| (0..4).map(move |c| f32::from(u8::from(c == l))))
            .collect();
        let ours = partial_cross_entropy(
            x(),
            Tensor::from_data(TensorData::new(onehot, [3, 4]), &ad),
            Tensor::from_data(TensorData::new(w.to_vec(), [3]), &ad),
        );
        let burn = CrossEntropyLossConfig::new()
            .with_weights(Some(vec![w[2], w[0], 1.0, w[1]]))
            .init(&ad)
            .forward(
                x(),
                Tensor::from_data(TensorData::new(labels.map(|l| l as i64).to_vec(), [3]), &ad),
            );
        let (a, b): (f32, f32) = (ours.into_scalar(), burn.into_scalar());
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");

        // The partial label on the first row alone.
        let x0 = Tensor::<2>::from_data(TensorData::new(logits[..4].to_vec(), [1, 4]), &ad)
            .require_grad();
        let allowed = Label::Pneumonia.allowed().map(|a| f32::from(u8::from(a)));
        let loss = partial_cross_entropy(
            x0.clone(),
            Tensor::from_data(TensorData::new(allowed.to_vec(), [1, 4]), &ad),
            Tensor::from_data(TensorData::new(vec![3.0f32], [1]), &ad),
        );
        let e: Vec<f64> = logits[..4].iter().map(|&v| (v as f64).exp()).collect();
        let z: f64 = e.iter().sum();
        let p: Vec<f64> = e.iter().map(|v| v / z).collect();
        let want = -(p[1] + p[2]).ln();
        let got: f32 = loss.clone().into_scalar();
        let got = got as f64;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        let g = loss.backward();
        let grad = rows(x0.grad(&g).unwrap());
        for c in 0..4 {
            let q = if allowed[c] > 0.0 {
                p[c] / (p[1] + p[2])
            } else {
                0.0
            };
            assert!(
                (grad[c] as f64 - (p[c] - q)).abs() < 1e-5,
                "class {c}: {} vs {}",
                grad[c],
                p[c] - q
            );
        }
    }

    #[test]
    fn group_weights_balance_label_and_population() {
        use Population::*;
        let labels = [0, 0, 0, 0, 0, 0, 3, 3];
        let pops = [Child, Child, Child, Child, Adult, Adult, Adult, Adult];
        let w = row_weights(&labels, &pops, Imbalance::Group);
        // Three groups of 4, 2 and 2 images: each group's weights sum to 8 / 3.
        let sum = |idx: &[usize]| idx.iter().map(|&i| w[i]).sum::<f32>();
        for g in [&[0, 1, 2, 3][..], &[4, 5], &[6, 7]] {
            assert!((sum(g) - 8.0 / 3.0).abs() < 1e-5);
        }
        let w = row_weights(&labels, &pops, Imbalance::Weighted);
        assert!((w[0] - 8.0 / 12.0).abs() < 1e-6 && (w[6] - 2.0).abs() < 1e-6);
    }
}
