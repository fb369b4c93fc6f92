//! `pneumoscope train`: the paper's transfer-learning protocol (`frozen`: backbone frozen, its
//! features computed once and cached, only the head trained) and full fine-tuning
//! (`finetune`), with class-imbalance handling, best epoch by validation macro-F1, a verified
//! checkpoint every epoch and `--resume`.

use crate::augment::Augment;
use crate::data::cache::{self, SquareCache};
use crate::data::{Manifest, Split};
use crate::fsutil::write_atomic;
use crate::metrics;
use crate::parallel::Devices;
use crate::weights;
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::AdamConfig;
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use burn::tensor::activation::softmax;
use pneumoscope::NUM_CLASSES;
use pneumoscope::arch::{self, ArchSpec, global_avg_pool};
use pneumoscope::model::{Classifier, Head};
use pneumoscope::model_file::sha256_hex;
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
    /// Cross-entropy weighted by inverse class frequency.
    Weighted,
    /// Each epoch samples every class equally often (with replacement).
    Balanced,
    /// Nothing.
    None,
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

/// Everything that defines a run; saved as `RUN/config.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The manifest.
    pub data: PathBuf,
    /// Architecture.
    pub arch: String,
    /// ImageNet weights file; `None` only for a random-init run (`--allow-random-init`).
    pub weights: Option<PathBuf>,
    /// Mode.
    pub mode: Mode,
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Learning rate (Adam).
    pub lr: f64,
    /// Learning-rate schedule.
    #[serde(default = "constant")]
    pub schedule: Schedule,
    /// Seed of initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Imbalance handling.
    pub imbalance: Imbalance,
    /// Augmentation (None: the evaluation transform only).
    pub augment: Option<Augment>,
    /// Frozen and partial modes: number of cached views of each training image (view 0 is the
    /// evaluation transform, the others random augmentations drawn once).
    pub views: usize,
    /// Device name, or a comma-separated list for data-parallel training.
    pub device: String,
    /// Dropout probability of the head (`None`: the paper's, 0.2; 0.5 for SqueezeNet's
    /// convolutional head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout: Option<f64>,
    /// Partial mode: how many of the backbone's last blocks are trained (`None`:
    /// [`DEFAULT_TUNE_BLOCKS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tune_blocks: Option<usize>,
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
    /// The last two checkpoints, oldest first.
    #[serde(default)]
    checkpoints: Vec<CheckpointRef>,
    /// Single-checkpoint layout of earlier runs (`checkpoint.bpk`, `optimizer.bpk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    checkpoint_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    optimizer_sha256: Option<String>,
}

/// The files of the checkpoint written after one epoch, and their checksums.
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

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: malformed JSON", path.display()))
}

/// The labels of a batch of training rows, as a tensor.
fn label_tensor(batch: &[usize], labels: &[usize], device: &Device) -> Tensor<1, Int> {
    let y: Vec<i64> = batch.iter().map(|&i| labels[i] as i64).collect();
    Tensor::from_data(TensorData::new(y, [batch.len()]), device)
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

/// Backbone features of the given manifest rows (one view each), `[n, dim]` row-major,
/// computed in batches on `device`.
#[allow(clippy::too_many_arguments)]
pub fn extract_features(
    what: Extract,
    backbone: &arch::Backbone,
    spec: &ArchSpec,
    squares: &SquareCache,
    rows: &[usize],
    augment: Option<(&Augment, u64)>,
    device: &Device,
    label: &str,
) -> Vec<f32> {
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
    run: &Path,
    name: &str,
    n: usize,
    dim: usize,
    compute: impl FnOnce() -> Vec<f32>,
) -> Result<(Vec<f32>, bool)> {
    let path = run.join("features").join(format!("{name}.f32"));
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

/// A classifier of `backbone` and a new head on the main training device, with autodiff.
fn trainable(
    backbone: arch::Backbone,
    spec: &ArchSpec,
    cfg: &TrainConfig,
    device: &Device,
) -> Classifier {
    Classifier {
        backbone,
        head: new_head(spec, cfg.dropout, device),
    }
    .fork(device)
    .train()
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

/// The frozen part's output for the run: `cfg.views` views of each training image (view 0 the
/// evaluation transform, the others augmentations drawn once) and the validation images,
/// each computed once and kept in `RUN/features/` (`{tag}train-v{v}.f32`, `{tag}val.f32`).
/// Records the extraction time in `timing`.
#[allow(clippy::too_many_arguments)]
fn cached_inputs(
    what: Extract,
    tag: &str,
    cfg: &TrainConfig,
    run: &Path,
    backbone: &arch::Backbone,
    spec: &ArchSpec,
    squares: &SquareCache,
    (train_rows, val_rows): (&[usize], &[usize]),
    device: &Device,
    timing: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(Vec<Vec<f32>>, Vec<f32>)> {
    let dim = extract_dim(what, backbone, spec, device);
    let t0 = Instant::now();
    let mut fresh = 0.0;
    let mut cached = |name: String, rows: &[usize], aug: Option<(&Augment, u64)>| {
        let t = Instant::now();
        let label = name.replace('-', " ");
        let (f, hit) = features_cached(run, &name, rows.len(), dim, || {
            extract_features(what, backbone, spec, squares, rows, aug, device, &label)
        })?;
        if !hit {
            fresh += t.elapsed().as_secs_f64();
        }
        anyhow::Ok(f)
    };
    let mut train_views = Vec::new();
    for v in 0..cfg.views.max(1) {
        let aug = cfg
            .augment
            .as_ref()
            .filter(|_| v > 0)
            .map(|a| (a, cfg.seed.wrapping_add(v as u64)));
        train_views.push(cached(format!("{tag}train-v{v}"), train_rows, aug)?);
    }
    let val = cached(format!("{tag}val"), val_rows, None)?;
    timing.insert("feature_extraction_seconds".into(), fresh.into());
    timing.insert(
        "feature_extraction_wall_seconds".into(),
        t0.elapsed().as_secs_f64().into(),
    );
    Ok((train_views, val))
}

/// Class weights `N / (4 n_c)` of the training labels.
pub fn class_weights(labels: &[usize]) -> Vec<f32> {
    let mut cnt = [0usize; NUM_CLASSES];
    for &l in labels {
        cnt[l] += 1;
    }
    let n = labels.len() as f32;
    cnt.iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                n / (NUM_CLASSES as f32 * c as f32)
            }
        })
        .collect()
}

/// The order of training rows for one epoch.
fn epoch_order(labels: &[usize], imbalance: Imbalance, rng: &mut ChaCha8Rng) -> Vec<usize> {
    match imbalance {
        Imbalance::Balanced => {
            let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); NUM_CLASSES];
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
pub fn run(cfg: TrainConfig, run: &Path, resume: bool) -> Result<()> {
    let cfg_path = run.join("config.json");
    let cfg = if resume {
        let saved: TrainConfig = read_json(&cfg_path)
            .with_context(|| format!("--resume: {} is not a run folder", run.display()))?;
        if saved.epochs != cfg.epochs {
            eprintln!("resuming with {} epochs (was {})", cfg.epochs, saved.epochs);
        }
        TrainConfig {
            epochs: cfg.epochs,
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

    let manifest = Manifest::read(&cfg.data)?;
    let spec = arch::find(&cfg.arch)?;
    if cfg.mode == Mode::Partial && !spec.supports_partial() {
        bail!(
            "--mode partial: {} is not split into blocks here; partial fine-tuning supports \
             the EfficientNet-Lite architectures (use frozen or finetune)",
            spec.name
        );
    }
    let devices = crate::device::parse_list(&cfg.device)?;
    let device = devices[0].clone();
    let replicas = Devices::new(&devices);
    let ad = replicas.main().clone();
    if replicas.len() > 1 {
        eprintln!(
            "data-parallel training on {} devices ({}); each step's batch of {} is split between them",
            replicas.len(),
            cfg.device,
            cfg.batch_size
        );
    }
    let loaded = match &cfg.weights {
        Some(w) => weights::load_backbone(&spec, w, false, &device)?,
        None => {
            eprintln!(
                "warning: {} starts from random initialisation (no ImageNet weights); the run \
                 and every file made from it say so",
                spec.name
            );
            weights::LoadedBackbone {
                backbone: spec.build_backbone(false, &device).valid(),
                source: weights::RANDOM_INIT.to_string(),
            }
        }
    };
    let train_rows = manifest.split_indices(Split::Train);
    let val_rows = manifest.split_indices(Split::Val);
    if train_rows.is_empty() || val_rows.is_empty() {
        bail!(
            "{}: the manifest needs train and val rows (build it with --val > 0)",
            cfg.data.display()
        );
    }
    let train_labels = manifest.labels(&train_rows);
    let val_labels = manifest.labels(&val_rows);
    let squares = cache::load_or_build(&manifest, spec.input.resize)?;
    let loss_weights = (cfg.imbalance == Imbalance::Weighted).then(|| class_weights(&train_labels));
    // Built on each replica's device (the class weights are a tensor).
    let loss_fn = |d: &Device| {
        CrossEntropyLossConfig::new()
            .with_weights(loss_weights.clone())
            .init(d)
    };
    let mut optim = AdamConfig::new().init();
    ad.seed(cfg.seed);
    let mut timing = serde_json::Map::new();
    let backbone = loaded.backbone;

    let model = match cfg.mode {
        Mode::Frozen => {
            let dim = spec.head_dim();
            let shape = spec.head_shape;
            let (train_views, val_feats) = cached_inputs(
                Extract::HeadInput,
                "",
                &cfg,
                run,
                &backbone,
                &spec,
                &squares,
                (&train_rows, &val_rows),
                &device,
                &mut timing,
            )?;
            let head = new_head(&spec, cfg.dropout, &ad);
            let val_x =
                Tensor::<2>::from_data(TensorData::new(val_feats, [val_rows.len(), dim]), &device);
            let head = train_loop(
                &cfg,
                run,
                head,
                &mut optim,
                &train_labels,
                &val_labels,
                &mut timing,
                &replicas,
                |m: &Head, batch: &[usize], rng: &mut ChaCha8Rng, d: &Device| {
                    let x = pick_views(&train_views, batch, dim, rng);
                    let x = Tensor::<2>::from_data(TensorData::new(x, [batch.len(), dim]), d);
                    let y = label_tensor(batch, &train_labels, d);
                    loss_fn(d).forward(m.forward_rows(x, shape), y)
                },
                |m: &Head| {
                    probs_rows(to_vec(softmax(
                        m.valid().forward_rows(val_x.clone(), shape),
                        1,
                    )))
                },
            )?;
            Classifier {
                backbone,
                head: head.valid().fork(&device),
            }
        }
        Mode::Partial => {
            let blocks = backbone
                .block_count()
                .expect("checked above: an architecture with blocks");
            let tune = cfg.tune_blocks.unwrap_or(DEFAULT_TUNE_BLOCKS);
            if tune == 0 || tune > blocks {
                bail!(
                    "--tune-blocks {tune}: {} has {blocks} blocks; choose 1 to {blocks}",
                    spec.name
                );
            }
            let cut = blocks - tune;
            let what = Extract::InputOfBlock(cut);
            let shape = extract_shape(what, &backbone, &spec, &device);
            let dim: usize = shape.iter().product();
            let (train_views, val_feats) = cached_inputs(
                what,
                &format!("block{cut}-"),
                &cfg,
                run,
                &backbone,
                &spec,
                &squares,
                (&train_rows, &val_rows),
                &device,
                &mut timing,
            )?;
            let model = trainable(backbone, &spec, &cfg, &ad);
            let rows4 = |x: Vec<f32>, n: usize, d: &Device| {
                Tensor::<4>::from_data(TensorData::new(x, [n, shape[0], shape[1], shape[2]]), d)
            };
            let model = train_loop(
                &cfg,
                run,
                model,
                &mut optim,
                &train_labels,
                &val_labels,
                &mut timing,
                &replicas,
                |m: &Classifier, batch: &[usize], rng: &mut ChaCha8Rng, d: &Device| {
                    let x = pick_views(&train_views, batch, dim, rng);
                    let map = m
                        .backbone
                        .feature_map_from(rows4(x, batch.len(), d), cut)
                        .expect("a backbone with blocks");
                    let y = label_tensor(batch, &train_labels, d);
                    loss_fn(d).forward(m.logits_from_map(map), y)
                },
                |m: &Classifier| {
                    let v = m.valid().fork(&device);
                    let mut out = Vec::new();
                    for chunk in val_feats.chunks(64 * dim) {
                        let x = rows4(chunk.to_vec(), chunk.len() / dim, &device);
                        let map = v.backbone.feature_map_from(x, cut).expect("blocks");
                        out.extend(probs_rows(to_vec(softmax(v.logits_from_map(map), 1))));
                    }
                    out
                },
            )?;
            model.valid().fork(&device)
        }
        Mode::Finetune => {
            let model = trainable(backbone, &spec, &cfg, &ad);
            let aug = cfg.augment.unwrap_or(Augment {
                min_scale: 1.0,
                max_rotation: 0.0,
                hflip: false,
            });
            let val_imgs: Vec<Vec<f32>> = val_rows
                .par_iter()
                .map(|&i| pneumoscope::preprocess::normalize_gray(&squares.image(i), &spec.input))
                .collect();
            let model = train_loop(
                &cfg,
                run,
                model,
                &mut optim,
                &train_labels,
                &val_labels,
                &mut timing,
                &replicas,
                |m: &Classifier, batch: &[usize], rng: &mut ChaCha8Rng, d: &Device| {
                    let seeds: Vec<u64> = batch.iter().map(|_| rng.random()).collect();
                    let imgs: Vec<Vec<f32>> = batch
                        .par_iter()
                        .zip(seeds)
                        .map(|(&i, s)| {
                            aug.apply(
                                &squares.image(train_rows[i]),
                                &spec.input,
                                &mut ChaCha8Rng::seed_from_u64(s),
                            )
                        })
                        .collect();
                    let x = stack(&imgs, spec.input.crop, d);
                    let y = label_tensor(batch, &train_labels, d);
                    loss_fn(d).forward(m.forward(x), y)
                },
                |m: &Classifier| {
                    let v = m.valid().fork(&device);
                    let mut out = Vec::new();
                    for chunk in val_imgs.chunks(32) {
                        out.extend(probs_rows(to_vec(softmax(
                            v.forward(stack(chunk, spec.input.crop, &device)),
                            1,
                        ))));
                    }
                    out
                },
            )?;
            model.valid().fork(&device)
        }
    };
    finish(
        run,
        &spec,
        model,
        &manifest,
        &squares,
        &device,
        timing,
        &loaded.source,
    )
}

/// The epoch loop shared by both modes. `loss` runs one training batch (indices into the
/// training rows) on a device; a step spreads the batch over `replicas`' devices (see
/// [`crate::parallel`]); `val_probs` gives validation probabilities. Returns the best module.
#[allow(clippy::too_many_arguments)]
fn train_loop<M: Module>(
    cfg: &TrainConfig,
    run: &Path,
    mut module: M,
    optim: &mut burn::optim::ModuleOptimizer,
    train_labels: &[usize],
    val_labels: &[usize],
    timing: &mut serde_json::Map<String, serde_json::Value>,
    replicas: &Devices,
    loss: impl Fn(&M, &[usize], &mut ChaCha8Rng, &Device) -> Tensor<1> + Sync,
    val_probs: impl Fn(&M) -> Vec<[f32; NUM_CLASSES]>,
) -> Result<M> {
    let best_path = run.join("best-module.bpk");
    let state_path = run.join("state.json");
    let mut state = State {
        epochs_done: 0,
        best_epoch: 0,
        best_val_macro_f1: -1.0,
        history: Vec::new(),
        checkpoints: Vec::new(),
        checkpoint_sha256: None,
        optimizer_sha256: None,
    };
    if let Ok(mut saved) = read_json::<State>(&state_path) {
        if saved.checkpoints.is_empty()
            && let (Some(m), Some(o)) = (
                saved.checkpoint_sha256.take(),
                saved.optimizer_sha256.take(),
            )
        {
            saved.checkpoints.push(CheckpointRef {
                epoch: saved.epochs_done,
                model: "checkpoint.bpk".into(),
                model_sha256: m,
                optimizer: "optimizer.bpk".into(),
                optimizer_sha256: o,
            });
        }
        // The newest checkpoint that verifies; a corrupt one falls back to the one before.
        let mut loaded = None;
        for r in saved.checkpoints.iter().rev() {
            match r.read(run) {
                Ok(files) => {
                    loaded = Some((r.clone(), files));
                    break;
                }
                Err(e) => eprintln!("warning: {e:#}; trying the previous checkpoint"),
            }
        }
        let Some((r, (m, o))) = loaded else {
            bail!(
                "{}: no checkpoint of this run verifies (corrupt or missing); delete the run folder to start again",
                run.display()
            );
        };
        let rec = ModuleRecord::from_bytes(Bytes::from_bytes_vec(m))
            .map_err(|e| anyhow::anyhow!("{}: unreadable checkpoint: {e:?}", r.model))?;
        module = module
            .try_load_record(rec)
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", r.model))?;
        *optim = std::mem::replace(optim, AdamConfig::new().init())
            .from_bytes(Bytes::from_bytes_vec(o))
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", r.optimizer))?;
        saved.epochs_done = r.epoch;
        saved.history.truncate(r.epoch);
        saved.checkpoints.retain(|c| c.epoch <= r.epoch);
        eprintln!(
            "resuming after epoch {} (best so far: epoch {}, val macro-F1 {:.4})",
            r.epoch, saved.best_epoch, saved.best_val_macro_f1
        );
        state = saved;
    }
    // A shard's share of a batch's loss: its rows, or their class weights when the loss is
    // weighted (its normaliser is then the sum of the batch's weights).
    let class_w = class_weights(train_labels);
    let shard_weight = |rows: &[usize]| -> f64 {
        match cfg.imbalance {
            Imbalance::Weighted => rows.iter().map(|&i| class_w[train_labels[i]] as f64).sum(),
            _ => rows.len() as f64,
        }
    };
    let n = train_labels.len();
    let steps_per_epoch = n.div_ceil(cfg.batch_size);
    let remaining = cfg.epochs.saturating_sub(state.epochs_done);
    let pb = crate::progress::bar((remaining * steps_per_epoch) as u64, "training");
    let t_train = Instant::now();
    for epoch in state.epochs_done + 1..=cfg.epochs {
        let t0 = Instant::now();
        let epoch_seed = cfg.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64);
        let mut rng = ChaCha8Rng::seed_from_u64(epoch_seed);
        // The backend's generator (dropout masks) restarts each epoch too, so a resumed run
        // draws exactly what an uninterrupted one would.
        replicas.seed(epoch_seed);
        let order = epoch_order(train_labels, cfg.imbalance, &mut rng);
        let mut total = 0.0;
        for (b, batch) in order.chunks(cfg.batch_size).enumerate() {
            let step = (epoch - 1) * steps_per_epoch + b;
            let lr = cfg.schedule.lr(cfg.lr, step, cfg.epochs * steps_per_epoch);
            let (lv, grads) = replicas.step(&module, batch, &mut rng, &loss, &shard_weight);
            total += lv as f64 * batch.len() as f64;
            module = optim.step(lr, module, grads);
            pb.inc(1);
            if pb.is_hidden() && (b + 1) % 20 == 0 {
                let done = pb.position().max(1) as f64;
                let left = pb.length().unwrap_or(0).saturating_sub(pb.position()) as f64;
                let eta = t_train.elapsed().as_secs_f64() / done * left;
                eprintln!(
                    "epoch {epoch} step {}/{steps_per_epoch}: loss {lv:.4} ({:.1} img/s, ETA {:.0} min)",
                    b + 1,
                    ((b + 1) * cfg.batch_size) as f64 / t0.elapsed().as_secs_f64(),
                    eta / 60.0
                );
            }
        }
        let probs = val_probs(&module);
        let (acc, f1) = metrics::acc_f1(&metrics::confusion(&probs, val_labels));
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
                cfg.epochs, log.train_loss, acc, f1, log.seconds
            ),
        );
        state.history.push(log);
        if f1 > state.best_val_macro_f1 {
            state.best_val_macro_f1 = f1;
            state.best_epoch = epoch;
            let b = module
                .clone()
                .into_record()
                .into_bytes()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            write_atomic(&best_path, &b)?;
        }
        let m = module
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let o = optim.into_bytes().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let r = CheckpointRef {
            epoch,
            model: format!("checkpoint-{epoch:04}.bpk"),
            model_sha256: sha256_hex(&m),
            optimizer: format!("optimizer-{epoch:04}.bpk"),
            optimizer_sha256: sha256_hex(&o),
        };
        write_atomic(&run.join(&r.model), &m)?;
        write_atomic(&run.join(&r.optimizer), &o)?;
        state.checkpoints.push(r);
        let stale: Vec<CheckpointRef> = if state.checkpoints.len() > 2 {
            state
                .checkpoints
                .drain(..state.checkpoints.len() - 2)
                .collect()
        } else {
            Vec::new()
        };
        state.epochs_done = epoch;
        write_epochs_csv(&run.join("epochs.csv"), &state.history)?;
        write_atomic(
            &state_path,
            serde_json::to_string_pretty(&state)?.as_bytes(),
        )?;
        // Only once the state no longer names them.
        for c in stale {
            let _ = std::fs::remove_file(run.join(&c.model));
            let _ = std::fs::remove_file(run.join(&c.optimizer));
        }
    }
    pb.finish_and_clear();
    timing.insert(
        "training_seconds_this_session".into(),
        t_train.elapsed().as_secs_f64().into(),
    );
    timing.insert(
        "epoch_seconds".into(),
        serde_json::to_value(state.history.iter().map(|h| h.seconds).collect::<Vec<_>>())?,
    );
    timing.insert("best_epoch".into(), state.best_epoch.into());
    let best = std::fs::read(&best_path)
        .with_context(|| format!("cannot read {}", best_path.display()))?;
    let rec = ModuleRecord::from_bytes(Bytes::from_bytes_vec(best))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    module
        .try_load_record(rec)
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", best_path.display()))
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

#[allow(clippy::too_many_arguments)]
fn finish(
    run: &Path,
    spec: &ArchSpec,
    model: Classifier,
    manifest: &Manifest,
    squares: &SquareCache,
    device: &Device,
    timing: serde_json::Map<String, serde_json::Value>,
    weight_source: &str,
) -> Result<()> {
    let mut report = serde_json::Map::new();
    for split in [Split::Val, Split::Test] {
        let rows = manifest.split_indices(split);
        if rows.is_empty() {
            continue;
        }
        let probs = predict_rows(&model, spec, squares, &rows, device);
        let labels = manifest.labels(&rows);
        let pats = manifest.patients(&rows);
        let m = metrics::compute(&probs, &labels, &pats);
        println!(
            "{split}: accuracy {:.4}  macro-F1 {:.4} [{:.4}, {:.4}]  (n = {})",
            m.accuracy, m.macro_f1, m.macro_f1_ci.low, m.macro_f1_ci.high, m.n
        );
        report.insert(split.to_string(), serde_json::to_value(&m)?);
    }
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
