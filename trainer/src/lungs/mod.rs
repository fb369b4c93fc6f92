//! `pneumoscope lungs train | evaluate | predict | embed`: the lung segmenter of
//! [`pneumoscope::lungs`].
//!
//! Training reads `pairs.csv` (image, mask, source), holds out a share of the pairs of each
//! source (split by image, seeded), and trains the decoder on the frozen ImageNet encoder. The
//! encoder's stage outputs are computed once per training view (the image and its mirror image,
//! the only augmentation: anything else would need the encoder again every epoch). Each epoch
//! is a checkpoint; `--resume` continues to the same result as an uninterrupted run. At the
//! end the segmenter is evaluated on the held-out pairs at each mask's own size (Dice and IoU
//! per source, with image-bootstrap intervals) and written as `lungs.pneumoscope`.

use crate::machinery::checkpoint::Checkpoints;
use crate::machinery::fsutil::write_atomic;
use crate::metrics::percentile;
use anyhow::{Context, Result, anyhow, bail};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use burn::tensor::activation::{log_sigmoid, sigmoid};
use image::{GrayImage, Rgb, RgbImage};
use pneumoscope::arch::efficientnet_lite::EfficientNetLite;
use pneumoscope::arch::{self, Backbone, Operations};
use pneumoscope::inference::Engine;
use pneumoscope::lungs::{
    self, INPUT_SIDE, LungDecoder, LungMask, LungNet, LungsFile, LungsHeader, MASK_SIDE, TAPS,
};
use pneumoscope::model_file::sha256_hex;
use rand::SeedableRng;
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One image with its lung mask.
#[derive(Clone, Debug)]
pub struct Pair {
    /// The image.
    pub image: PathBuf,
    /// Its mask (255 = lung), at the image's size.
    pub mask: PathBuf,
    /// Where the mask came from (`openist`: hand-drawn; `cohen`: lungVAE).
    pub source: String,
}

/// Reads `pairs.csv` (columns `image`, `mask`, `source`; paths relative to the file's folder).
/// Rows whose files are missing are returned apart, with their line and reason.
pub fn read_pairs(path: &Path) -> Result<(Vec<Pair>, Vec<String>)> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut r = csv::Reader::from_path(path)
        .with_context(|| format!("cannot read pairs file {}", path.display()))?;
    let headers = r.headers()?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| anyhow!("{}: no column '{name}'", path.display()))
    };
    let (ci, cm, cs) = (col("image")?, col("mask")?, col("source")?);
    let (mut pairs, mut rejected) = (Vec::new(), Vec::new());
    for (i, row) in r.records().enumerate() {
        let line = i + 2;
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                rejected.push(format!("{}:{line}: {e}", path.display()));
                continue;
            }
        };
        let field = |c: usize| row.get(c).unwrap_or("").trim().to_string();
        let (image, mask) = (dir.join(field(ci)), dir.join(field(cm)));
        let missing = [&image, &mask].into_iter().find(|p| !p.is_file());
        if let Some(p) = missing {
            rejected.push(format!(
                "{}:{line}: {} does not exist",
                path.display(),
                p.display()
            ));
            continue;
        }
        pairs.push(Pair {
            image,
            mask,
            source: field(cs),
        });
    }
    if pairs.is_empty() {
        bail!("{}: no usable pairs", path.display());
    }
    Ok((pairs, rejected))
}

/// Splits pairs into training and held-out indices: per source, a seeded shuffle, the first
/// `round(held_out * n)` held out (at least one where a source has two or more pairs).
pub fn split(pairs: &[Pair], held_out: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut by_source: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in pairs.iter().enumerate() {
        by_source.entry(p.source.as_str()).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (_, mut idx) in by_source {
        idx.shuffle(&mut rng);
        let mut k = (held_out * idx.len() as f64).round() as usize;
        if idx.len() >= 2 {
            k = k.clamp(1, idx.len() - 1);
        }
        test.extend_from_slice(&idx[..k.min(idx.len())]);
        train.extend_from_slice(&idx[k.min(idx.len())..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// Decodes a pair: the image, and its mask as lung / not lung at the image's size.
fn load_pair(p: &Pair) -> Result<(image::DynamicImage, GrayImage)> {
    let bytes =
        std::fs::read(&p.image).with_context(|| format!("cannot read {}", p.image.display()))?;
    let img = pneumoscope::preprocess::decode(&bytes)
        .map_err(|e| anyhow!("{}: {e}", p.image.display()))?;
    let mask = image::open(&p.mask)
        .map_err(|e| anyhow!("{}: not a readable mask image: {e}", p.mask.display()))?
        .to_luma8();
    if mask.dimensions() != (img.width(), img.height()) {
        bail!(
            "{}: the mask is {}x{} but its image {} is {}x{}",
            p.mask.display(),
            mask.width(),
            mask.height(),
            p.image.display(),
            img.width(),
            img.height()
        );
    }
    Ok((img, mask))
}

/// The training target: the mask's lung share on the `MASK_SIDE`² grid, in [0, 1].
fn target(mask: &GrayImage) -> Vec<f32> {
    let small = image::imageops::resize(
        mask,
        MASK_SIDE as u32,
        MASK_SIDE as u32,
        image::imageops::FilterType::Triangle,
    );
    small.as_raw().iter().map(|&v| v as f32 / 255.0).collect()
}

fn mirror(plane: &[f32], side: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(plane.len());
    for row in plane.chunks(side) {
        out.extend(row.iter().rev());
    }
    out
}

/// One training view: the encoder's stage outputs and the target grid.
struct View {
    taps: Vec<Vec<f32>>,
    target: Vec<f32>,
}

/// Settings of `lungs train`: its command-line options and the run's `lungs-config.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, clap::Args)]
pub struct LungsConfig {
    /// `pairs.csv` (image, mask, source; paths relative to its folder).
    #[arg(long)]
    pub pairs: PathBuf,
    /// EfficientNet-Lite0 ImageNet weights (default: the weights cache; a run's config always
    /// names them).
    #[arg(long, conflicts_with = "encoder_model")]
    pub weights: Option<PathBuf>,
    /// Take the encoder from this exported classifier file (single network or ensemble: its
    /// EfficientNet-Lite0 network), not from ImageNet weights: the decoder is then trained on a
    /// fine-tuned backbone, and `lungs embed` accepts that file's network as its encoder.
    #[arg(long)]
    #[serde(default)]
    pub encoder_model: Option<PathBuf>,
    /// Share of each source's pairs held out for evaluation.
    #[arg(long, default_value_t = 0.2)]
    pub held_out: f64,
    /// Epochs.
    #[arg(long, default_value_t = 40)]
    pub epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Seed of the split, the order and the decoder's initialisation.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// At most this many pairs per source (quick runs).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Store the weights in half precision.
    #[arg(long)]
    pub f16: bool,
}

/// A run's progress: kept in its checkpoints ([`crate::machinery::checkpoint`]), with a copy in
/// `RUN/state.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    epochs_done: usize,
    losses: Vec<f64>,
    /// Earlier versions: the checksums of `decoder.bpk` and `optimizer.bpk` beside
    /// `state.json` (the current layout keeps them in the checkpoint folders).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    decoder_sha256: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    optimizer_sha256: String,
}

/// Files of a decoder checkpoint.
const DECODER: &str = "decoder.bpk";
const OPTIMIZER: &str = "optimizer.bpk";

/// A decoder checkpoint read back: the progress and the two records.
struct SavedDecoder {
    state: State,
    decoder: Vec<u8>,
    optimizer: Vec<u8>,
}

/// The newest checkpoint of a run that verifies; from a run of an earlier version, the files
/// beside `state.json`. `None` for a run with none.
fn saved_decoder(run: &Path) -> Result<Option<SavedDecoder>> {
    if let Some(mut saved) = Checkpoints::new(run, 2).latest::<State>()? {
        let (decoder, optimizer) = (saved.take(DECODER)?, saved.take(OPTIMIZER)?);
        return Ok(Some(SavedDecoder {
            state: saved.state,
            decoder,
            optimizer,
        }));
    }
    let state_path = run.join("state.json");
    if !state_path.exists() {
        return Ok(None);
    }
    let state: State = crate::machinery::fsutil::read_json(&state_path)?;
    let (d, o) = (
        std::fs::read(run.join(DECODER)),
        std::fs::read(run.join(OPTIMIZER)),
    );
    match (d, o) {
        (Ok(d), Ok(o))
            if sha256_hex(&d) == state.decoder_sha256
                && sha256_hex(&o) == state.optimizer_sha256 =>
        {
            Ok(Some(SavedDecoder {
                state,
                decoder: d,
                optimizer: o,
            }))
        }
        _ => Err(crate::machinery::checkpoint::unresumable(run)),
    }
}

/// Loss of a batch: binary cross-entropy on the logits plus the soft Dice loss.
fn loss(logits: Tensor<4>, target: Tensor<4>) -> Tensor<1> {
    let bce = (target.clone() * log_sigmoid(logits.clone())
        + (target.clone().neg() + 1.0) * log_sigmoid(logits.clone().neg()))
    .mean()
    .neg();
    let p = sigmoid(logits);
    let inter = (p.clone() * target.clone()).sum();
    let dice = (inter * 2.0 + 1.0) / (p.sum() + target.sum() + 1.0);
    bce + dice.neg() + 1.0
}

/// `lungs train`: trains, evaluates on the held-out pairs and writes `RUN/lungs.pneumoscope`.
/// With `resume` it continues the run in `run` (the same settings; `epochs` may be raised).
pub fn train(cfg: &LungsConfig, run: &Path, resume: bool) -> Result<PathBuf> {
    let device = Device::flex();
    // The encoder first: a file it cannot come from is refused before the run folder exists.
    let (encoder, weight_source, encoder_note) = match &cfg.encoder_model {
        Some(file) => encoder_from_model(file, cfg.f16, &device)?,
        None => {
            let spec = arch::find(lungs::ENCODER)?;
            let weights = cfg
                .weights
                .as_deref()
                .context("lungs train: no encoder weights named")?;
            let loaded = crate::pretrained::weights::load_backbone(&spec, weights, false, &device)?;
            let Backbone::EfficientNetLite(encoder) = loaded.backbone else {
                bail!("the lung encoder must be {}", lungs::ENCODER);
            };
            (encoder, loaded.source, "frozen (ImageNet)".to_string())
        }
    };
    check_run(cfg, run, resume)?;
    let (pairs, train_idx, test_idx) = select_pairs(cfg)?;
    let encoder = encoder.valid();
    let fast = encoder.clone().fold_batchnorm();
    let t0 = Instant::now();
    let views = encode_views(&fast, &pairs, &train_idx, &device)?;
    let encode_s = t0.elapsed().as_secs_f64();
    let t_train = Instant::now();
    let (decoder, state) = fit_decoder(cfg, run, resume, &views, &tap_shapes(&fast, &device))?;
    let train_s = t_train.elapsed().as_secs_f64();

    // The segmenter as it will be used: encoder and decoder, inference state, batch norms folded.
    let mut net = LungNet::from_parts(encoder, decoder.valid().to_device(&device));
    if cfg.f16 {
        net = crate::machinery::precision::to_f16(net);
    }
    let header = LungsHeader {
        format_version: lungs::LUNGS_FORMAT_VERSION,
        kind: pneumoscope::lungs::LungsKind::LungSegmenter,
        encoder: lungs::ENCODER.into(),
        input_side: INPUT_SIDE,
        mask_side: MASK_SIDE,
        weights_dtype: if cfg.f16 {
            pneumoscope::model_file::WeightsDtype::F16
        } else {
            pneumoscope::model_file::WeightsDtype::F32
        },
        weight_source,
        training: serde_json::json!({
            "pairs": cfg.pairs.display().to_string(),
            "train_pairs": train_idx.len(),
            "held_out_pairs": test_idx.len(),
            "held_out": test_idx.iter().map(|&i| pairs[i].image.display().to_string()).collect::<Vec<_>>(),
            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
            "augmentation": "mirror image",
            "loss": "binary cross-entropy + soft Dice",
            "encoder": encoder_note,
            "final_loss": state.losses.last(),
            "encode_seconds": encode_s, "train_seconds_this_session": train_s,
        }),
        metrics: serde_json::Value::Null,
        created_by: format!("pneumoscope {}", env!("CARGO_PKG_VERSION")),
        payload_len: 0,
        payload_sha256: String::new(),
    };
    let held: Vec<&Pair> = test_idx.iter().map(|&i| &pairs[i]).collect();
    write_segmenter(LungsFile::new(header, net)?, &held, run, &device)
}

/// The backbone of the first EfficientNet-Lite0 network of an exported classifier file (its
/// weights as stored, batch norms not folded), where it came from (the file's name and
/// SHA-256), and a note for the segmenter's header.
/// With `f16`, a network not stored in f16 is refused: its rounded copy would no longer be the
/// file's backbone.
fn encoder_from_model(
    file: &Path,
    f16: bool,
    device: &Device,
) -> Result<(EfficientNetLite, String, String)> {
    use pneumoscope::model_file::{EnsembleFile, FileKind, ModelFile, classifier_format};
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let named = |e: pneumoscope::error::Error| anyhow!("{}: {e}", file.display());
    let members = match classifier_format(&bytes).map_err(named)?.kind {
        FileKind::Ensemble => EnsembleFile::from_bytes(&bytes).map_err(named)?.members,
        _ => vec![ModelFile::from_bytes(&bytes).map_err(named)?],
    };
    let (k, member) = members
        .iter()
        .enumerate()
        .find(|(_, m)| m.header.arch == lungs::ENCODER)
        .with_context(|| format!("{}: no {} network in it", file.display(), lungs::ENCODER))?;
    let dtype = member.header.weights_dtype;
    if f16 && dtype != pneumoscope::model_file::WeightsDtype::F16 {
        bail!(
            "{}: network {} is stored as {dtype:?}, and --f16 would round the segmenter's copy \
             of it, which would then differ from the file's backbone (export it with --f16, or \
             leave --f16 out)",
            file.display(),
            k + 1
        );
    }
    let model = member.load_classifier(device).map_err(named)?;
    let Backbone::EfficientNetLite(encoder) = model.backbone else {
        bail!(
            "{}: network {} is not an EfficientNet-Lite",
            file.display(),
            k + 1
        );
    };
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let source = format!(
        "network {} of {name} (sha256 {})",
        k + 1,
        sha256_hex(&bytes)
    );
    let note = format!(
        "frozen here; the backbone of network {} of {name}, as trained there ({})",
        k + 1,
        member.header.weight_source
    );
    Ok((encoder, source, note))
}

/// A new run must not overwrite one; a resumed one keeps its settings (only the number of
/// epochs may change: a finished run can be trained further). Writes `lungs-config.json`.
fn check_run(cfg: &LungsConfig, run: &Path, resume: bool) -> Result<()> {
    std::fs::create_dir_all(run).with_context(|| format!("cannot create {}", run.display()))?;
    let cfg_path = run.join("lungs-config.json");
    if resume {
        let saved: LungsConfig = serde_json::from_slice(
            &std::fs::read(&cfg_path)
                .with_context(|| format!("--resume: no {} to resume", cfg_path.display()))?,
        )?;
        if saved
            != (LungsConfig {
                epochs: saved.epochs,
                ..cfg.clone()
            })
        {
            bail!(
                "--resume: {} was started with other settings ({}; only --epochs may change)",
                run.display(),
                cfg_path.display()
            );
        }
    } else if run.join("state.json").exists() {
        bail!(
            "{} already holds a run; pass --resume to continue it, or choose another --out",
            run.display()
        );
    }
    write_atomic(&cfg_path, serde_json::to_string_pretty(cfg)?.as_bytes())
}

/// The pairs (at most `limit` per source), and which of them train and which are held out.
fn select_pairs(cfg: &LungsConfig) -> Result<(Vec<Pair>, Vec<usize>, Vec<usize>)> {
    let (mut pairs, rejected) = read_pairs(&cfg.pairs)?;
    for r in &rejected {
        eprintln!("rejected: {r}");
    }
    if let Some(limit) = cfg.limit {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        pairs.retain(|p| {
            let n = seen.entry(p.source.clone()).or_default();
            *n += 1;
            *n <= limit
        });
    }
    let (train_idx, test_idx) = split(&pairs, cfg.held_out, cfg.seed);
    eprintln!(
        "{} pairs: {} for training, {} held out",
        pairs.len(),
        train_idx.len(),
        test_idx.len()
    );
    Ok((pairs, train_idx, test_idx))
}

/// The encoder's stage outputs of every training view (each image and its mirror image),
/// computed once.
fn encode_views(
    fast: &EfficientNetLite,
    pairs: &[Pair],
    train_idx: &[usize],
    device: &Device,
) -> Result<Vec<View>> {
    let pb = crate::machinery::progress::bar(train_idx.len() as u64, "encoding");
    let mut views = Vec::with_capacity(2 * train_idx.len());
    let plane = INPUT_SIDE * INPUT_SIDE;
    for &i in train_idx {
        let (img, mask) = load_pair(&pairs[i])?;
        let x = lungs::input(&img);
        let t = target(&mask);
        let flipped: Vec<f32> = x
            .chunks(plane)
            .flat_map(|c| mirror(c, INPUT_SIDE))
            .collect();
        let batch: Vec<f32> = x.into_iter().chain(flipped).collect();
        let xt = Tensor::<4>::from_data(
            TensorData::new(batch, [2, 3, INPUT_SIDE, INPUT_SIDE]),
            device,
        );
        let taps: Vec<Vec<f32>> = fast
            .stage_outputs(xt, &TAPS, Operations::Own)
            .into_iter()
            .map(|t| t.into_data().try_into_vec::<f32>().expect("f32"))
            .collect();
        for v in 0..2 {
            views.push(View {
                taps: taps
                    .iter()
                    .map(|all| {
                        let n = all.len() / 2;
                        all[v * n..(v + 1) * n].to_vec()
                    })
                    .collect(),
                target: if v == 0 {
                    t.clone()
                } else {
                    mirror(&t, MASK_SIDE)
                },
            });
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(views)
}

/// `[c, h, w]` of each encoder stage the decoder reads.
fn tap_shapes(fast: &EfficientNetLite, device: &Device) -> Vec<[usize; 3]> {
    let x = Tensor::<4>::zeros([1, 3, INPUT_SIDE, INPUT_SIDE], device);
    fast.stage_outputs(x, &TAPS, Operations::Own)
        .iter()
        .map(|t| {
            let [_, c, h, w] = t.dims();
            [c, h, w]
        })
        .collect()
}

/// Trains the decoder on the cached views (resuming from the run's checkpoint), saving a
/// checkpoint after every epoch.
fn fit_decoder(
    cfg: &LungsConfig,
    run: &Path,
    resume: bool,
    views: &[View],
    tap_shapes: &[[usize; 3]],
) -> Result<(LungDecoder, State)> {
    let ad = Device::flex().autodiff();
    ad.seed(cfg.seed);
    let mut decoder = LungDecoder::new(&ad);
    let mut optim = crate::machinery::adam::optimizer(0.0, Operations::Own);
    let store = Checkpoints::new(run, 2);
    let mut state = State::default();
    if resume && let Some(saved) = saved_decoder(run)? {
        state = saved.state;
        let rec =
            ModuleRecord::from_bytes(Bytes::from_bytes_vec(saved.decoder)).context(DECODER)?;
        decoder = decoder.load_record(rec);
        optim = optim
            .from_bytes(Bytes::from_bytes_vec(saved.optimizer))
            .context(OPTIMIZER)?;
        eprintln!("resuming after epoch {}", state.epochs_done);
    }
    for epoch in state.epochs_done + 1..=cfg.epochs {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_mul(1_000_003) + epoch as u64);
        let mut order: Vec<usize> = (0..views.len()).collect();
        order.shuffle(&mut rng);
        let mut total = 0.0;
        for batch in order.chunks(cfg.batch_size) {
            let (taps, y) = decoder_batch(views, batch, tap_shapes, &ad);
            let l = loss(decoder.forward(taps), y);
            total += l.clone().into_scalar::<f32>() as f64 * batch.len() as f64;
            let grads = GradientsParams::from_grads(l.backward(), &decoder);
            decoder = optim.step(cfg.lr, decoder, grads);
        }
        let epoch_loss = total / views.len() as f64;
        eprintln!("epoch {epoch:>3}/{}: loss {epoch_loss:.4}", cfg.epochs);
        state.losses.push(epoch_loss);
        state.epochs_done = epoch;
        let d = decoder.clone().into_record().into_bytes()?;
        let o = optim.into_bytes()?;
        state.decoder_sha256.clear();
        state.optimizer_sha256.clear();
        store.save(epoch, &state, &[(DECODER, &d), (OPTIMIZER, &o)])?;
        write_atomic(
            &run.join("state.json"),
            serde_json::to_string_pretty(&state)?.as_bytes(),
        )?;
        // An earlier version's checkpoint beside state.json goes once this one is current.
        for f in [DECODER, OPTIMIZER] {
            let _ = std::fs::remove_file(run.join(f));
        }
    }
    // Once more after the loop: a run killed just after its last checkpoint became current
    // resumes with no epoch left, and its copy of the progress must still be the last one.
    write_atomic(
        &run.join("state.json"),
        serde_json::to_string_pretty(&state)?.as_bytes(),
    )?;
    Ok((decoder, state))
}

/// One training batch of the decoder: the stage outputs of the views and their targets.
fn decoder_batch(
    views: &[View],
    batch: &[usize],
    tap_shapes: &[[usize; 3]],
    ad: &Device,
) -> (Vec<Tensor<4>>, Tensor<4>) {
    let n = batch.len();
    let taps: Vec<Tensor<4>> = tap_shapes
        .iter()
        .enumerate()
        .map(|(k, &[c, h, w])| {
            let data: Vec<f32> = batch
                .iter()
                .flat_map(|&v| views[v].taps[k].iter().copied())
                .collect();
            Tensor::from_data(TensorData::new(data, [n, c, h, w]), ad)
        })
        .collect();
    let y: Vec<f32> = batch
        .iter()
        .flat_map(|&v| views[v].target.iter().copied())
        .collect();
    let y = Tensor::from_data(TensorData::new(y, [n, 1, MASK_SIDE, MASK_SIDE]), ad);
    (taps, y)
}

/// Evaluates the segmenter on the held-out pairs through its file, exactly as every user of
/// it will load it; writes `held_out.csv`, `metrics.json` and `RUN/lungs.pneumoscope` (the
/// metrics in its header). Returns the file's path.
fn write_segmenter(
    file: LungsFile,
    held: &[&Pair],
    run: &Path,
    device: &Device,
) -> Result<PathBuf> {
    let model = file.load(device)?;
    let (scores, metrics) = evaluate(&model, held, device)?;
    let mut w = csv::Writer::from_writer(Vec::new());
    for s in &scores {
        w.serialize(s)?;
    }
    write_atomic(&run.join("held_out.csv"), &w.into_inner()?)?;
    write_atomic(
        &run.join("metrics.json"),
        serde_json::to_string_pretty(&metrics)?.as_bytes(),
    )?;
    // The metrics go into the header; the payload and its checksum stay as they are.
    let file = LungsFile {
        header: LungsHeader {
            metrics,
            ..file.header
        },
        ..file
    };
    let out = run.join("lungs.pneumoscope");
    write_atomic(&out, &file.to_bytes())?;
    Ok(out)
}

/// Scores of one held-out pair.
#[derive(Clone, Debug, Serialize)]
pub struct Score {
    /// The image.
    pub image: String,
    /// Source of its mask.
    pub source: String,
    /// Dice at the mask's size.
    pub dice: f64,
    /// IoU at the mask's size.
    pub iou: f64,
    /// Predicted lung share of the image.
    pub area: f64,
}

/// Mean with a 95 % image-bootstrap interval (1000 resamples, seeded).
fn mean_ci(values: &[f64]) -> serde_json::Value {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(12345);
    let mut boot: Vec<f64> = (0..1000)
        .map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    boot.sort_by(f64::total_cmp);
    serde_json::json!({
        "mean": mean, "low": percentile(&boot, 0.025), "high": percentile(&boot, 0.975),
        "min": values.iter().copied().fold(f64::INFINITY, f64::min), "n": n,
    })
}

/// Dice and IoU of the segmenter on pairs, per image and per source.
pub fn evaluate(
    model: &LungNet,
    pairs: &[&Pair],
    device: &Device,
) -> Result<(Vec<Score>, serde_json::Value)> {
    let mut scores = Vec::new();
    for p in pairs {
        let (img, mask) = load_pair(p)?;
        let pred = model.segment(&img, device)?.to_image();
        let a: Vec<bool> = pred.as_raw().iter().map(|&v| v >= 128).collect();
        let b: Vec<bool> = mask.as_raw().iter().map(|&v| v >= 128).collect();
        let (dice, iou) = lungs::dice_iou(&a, &b);
        scores.push(Score {
            image: p.image.display().to_string(),
            source: p.source.clone(),
            dice,
            iou,
            area: a.iter().filter(|&&v| v).count() as f64 / a.len() as f64,
        });
    }
    let mut by_source = serde_json::Map::new();
    let mut sources: Vec<&str> = scores.iter().map(|s| s.source.as_str()).collect();
    sources.sort_unstable();
    sources.dedup();
    for s in sources {
        let of: Vec<&Score> = scores.iter().filter(|x| x.source == s).collect();
        by_source.insert(
            s.into(),
            serde_json::json!({
                "dice": mean_ci(&of.iter().map(|x| x.dice).collect::<Vec<_>>()),
                "iou": mean_ci(&of.iter().map(|x| x.iou).collect::<Vec<_>>()),
            }),
        );
    }
    let metrics = serde_json::json!({
        "held_out": {
            "dice": mean_ci(&scores.iter().map(|x| x.dice).collect::<Vec<_>>()),
            "iou": mean_ci(&scores.iter().map(|x| x.iou).collect::<Vec<_>>()),
        },
        "by_source": by_source,
    });
    Ok((scores, metrics))
}

/// `lungs evaluate`: Dice and IoU of a segmenter (its own file, or a classifier's file that
/// carries one) on the pairs of `pairs` that its header lists as held out (the pairs it never
/// trained on).
pub fn evaluate_file(model: &Path, pairs: &Path) -> Result<serde_json::Value> {
    let device = Device::flex();
    let lungs = load_with_header(model, &device)?;
    let held: Vec<String> = serde_json::from_value(lungs.header.training["held_out"].clone())
        .map_err(|_| anyhow!("{}: the header lists no held-out pairs", model.display()))?;
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let held: std::collections::BTreeSet<Option<String>> =
        held.iter().map(|h| name(Path::new(h))).collect();
    let (all, _) = read_pairs(pairs)?;
    let chosen: Vec<&Pair> = all
        .iter()
        .filter(|p| held.contains(&name(&p.image)))
        .collect();
    if chosen.len() != held.len() {
        bail!(
            "{}: {} of the {} held-out pairs of {} are in it",
            pairs.display(),
            chosen.len(),
            held.len(),
            model.display()
        );
    }
    Ok(evaluate(&lungs.net, &chosen, &device)?.1)
}

/// Reads and verifies a lung segmenter and loads it for inference: a segmenter's own file, or a
/// classifier's model file that carries one.
pub fn load(path: &Path, device: &Device) -> Result<LungNet> {
    Ok(load_with_header(path, device)?.net)
}

/// [`load`], with the segmenter's header.
fn load_with_header(path: &Path, device: &Device) -> Result<lungs::Lungs> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    load_bytes(path, &bytes, device)
}

/// [`load`] from the bytes of the file at `path` (named in errors), already read.
pub fn load_bytes(path: &Path, bytes: &[u8], device: &Device) -> Result<lungs::Lungs> {
    let named = |e: pneumoscope::Error| anyhow!("{}: {e}", path.display());
    let format = pneumoscope::model_file::format_of(bytes).map_err(named)?;
    if format.kind == pneumoscope::model_file::FileKind::LungSegmenter {
        let file = LungsFile::from_bytes(bytes).map_err(named)?;
        let net = file.load(device).map_err(named)?;
        return Ok(lungs::Lungs {
            header: file.header,
            net,
        });
    }
    let engine = Engine::load(bytes, device.clone()).map_err(named)?;
    match engine.lungs {
        Some(l) => Ok(l),
        None => bail!(
            "{}: this model file carries no lung segmenter (add one with `pneumoscope lungs \
             embed`, or give a segmenter's own file)",
            path.display()
        ),
    }
}

/// A fixed, image-like input of the segmenter (smooth gradients and edges), for comparing
/// encoders.
fn probe_input(device: &Device) -> Tensor<4> {
    let n = INPUT_SIDE;
    let plane: Vec<f32> = (0..n * n)
        .map(|i| {
            let (x, y) = ((i % n) as f32 / n as f32, (i / n) as f32 / n as f32);
            ((x * 9.0).sin() * (y * 5.0).cos() + if (x - 0.5).abs() < 0.2 { 0.5 } else { -0.5 })
                .clamp(-1.0, 1.0)
        })
        .collect();
    let data: Vec<f32> = plane.iter().cycle().take(3 * n * n).copied().collect();
    Tensor::from_data(TensorData::new(data, [1, 3, n, n]), device)
}

/// Largest absolute difference of two lists of tensors, relative to the largest absolute value
/// of the second.
fn relative_difference(a: Vec<Tensor<4>>, b: Vec<Tensor<4>>) -> f32 {
    let mut diff = 0f32;
    let mut scale = 0f32;
    for (a, b) in a.into_iter().zip(b) {
        diff = diff.max((a - b.clone()).abs().max().into_scalar::<f32>());
        scale = scale.max(b.abs().max().into_scalar::<f32>());
    }
    diff / scale.max(f32::MIN_POSITIVE)
}

/// The network of `engine` whose backbone can serve as `seg`'s encoder, and how far its features
/// on the probe `x` are from the segmenter's own encoder's (relative to their scale): the first
/// EfficientNet-Lite0 network, refused where it does not compute the same features.
fn shared_encoder(engine: &Engine, seg: &LungNet, x: Tensor<4>) -> Result<(usize, f32)> {
    let k = engine
        .networks
        .iter()
        .position(|n| n.header.arch == lungs::ENCODER)
        .with_context(|| {
            format!(
                "no {} network to share its backbone with the segmenter",
                lungs::ENCODER
            )
        })?;
    let Backbone::EfficientNetLite(encoder) = &engine.networks[k].model.backbone else {
        bail!("network {} is not an EfficientNet-Lite", k + 1);
    };
    let d = relative_difference(
        encoder.stage_outputs(x.clone(), &TAPS, Operations::Own),
        seg.taps(x),
    );
    if d > 1e-5 {
        bail!(
            "network {}'s backbone does not compute the segmenter's encoder features \
             (largest difference {d:.2e} of their scale): it was fine-tuned, or comes from \
             other weights; the segmenter cannot share it (train a decoder on this file's own \
             backbone: `lungs train --encoder-model`)",
            k + 1
        );
    }
    Ok((k, d))
}

/// `lungs embed`: writes `out`, the classifier's model file `model` with the segmenter of
/// `segmenter` inside it (its decoder in f16; its encoder is the backbone of the file's
/// EfficientNet-Lite0 network, which must compute the segmenter's encoder features: the
/// backbone the decoder was trained on, ImageNet's frozen one or, after `lungs train
/// --encoder-model`, that file's own; any other is refused). Returns a summary.
pub fn embed(model: &Path, segmenter: &Path, out: &Path) -> Result<serde_json::Value> {
    let device = Device::flex();
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let bytes = read(model)?;
    let seg_bytes = read(segmenter)?;
    let seg_file =
        LungsFile::from_bytes(&seg_bytes).map_err(|e| anyhow!("{}: {e}", segmenter.display()))?;
    let seg = seg_file
        .load(&device)
        .map_err(|e| anyhow!("{}: {e}", segmenter.display()))?;
    let engine =
        Engine::load(&bytes, device.clone()).map_err(|e| anyhow!("{}: {e}", model.display()))?;
    let x = probe_input(&device);
    let (k, d) = shared_encoder(&engine, &seg, x.clone())
        .map_err(|e| anyhow!("{}: {e}", model.display()))?;
    let decoder = crate::machinery::precision::to_f16(seg.decoder.clone())
        .to_bytes()
        .map_err(|e| anyhow!("{e}"))?;
    let section = lungs::LungsSection {
        encoder_network: k,
        segmenter: LungsHeader {
            weights_dtype: pneumoscope::model_file::WeightsDtype::F16,
            ..seg_file.header.clone()
        },
    };
    let written = match pneumoscope::model_file::classifier_format(&bytes)?.kind {
        pneumoscope::model_file::FileKind::Ensemble => {
            pneumoscope::model_file::EnsembleFile::from_bytes(&bytes)?
                .with_lungs(section, decoder.clone())
                .to_bytes()
        }
        _ => pneumoscope::model_file::ModelFile::from_bytes(&bytes)?
            .with_lungs(section, decoder.clone())
            .to_bytes(),
    };
    // What was written reads back and segments as the segmenter's own file does.
    let back = Engine::load(&written, device.clone())
        .map_err(|e| anyhow!("the file written does not read back: {e}"))?;
    let net = &back.lungs.as_ref().expect("a lung section was written").net;
    let agreement = relative_difference(vec![net.forward(x.clone())], vec![seg.forward(x)]);
    if agreement > 1e-4 {
        bail!("the embedded segmenter's logits differ from its own file's by {agreement:.2e}");
    }
    write_atomic(out, &written)?;
    Ok(serde_json::json!({
        "model": out.display().to_string(),
        "encoder_network": k + 1,
        "encoder_difference": d,
        "logit_difference": agreement,
        "decoder_bytes": decoder.len(),
        "file_bytes": written.len(),
        "added_bytes": written.len() as i64 - bytes.len() as i64,
    }))
}

/// The image in grey with the lung fields tinted and outlined.
pub fn overlay(img: &image::DynamicImage, mask: &GrayImage) -> RgbImage {
    let grey = img.to_luma8();
    let (w, h) = grey.dimensions();
    let inside = |x: u32, y: u32| mask.get_pixel(x, y).0[0] >= 128;
    let edges = lungs::edge(w, h, (w.max(h) / 256).max(1) as i64, inside);
    RgbImage::from_fn(w, h, |x, y| {
        let g = grey.get_pixel(x, y).0[0];
        if edges[(y * w + x) as usize] {
            Rgb([0, 255, 120])
        } else if inside(x, y) {
            Rgb([g / 2, g / 2 + 64, g / 2])
        } else {
            Rgb([g, g, g])
        }
    })
}

/// `lungs predict`: a mask PNG and an overlay PNG per image in `out`, one JSON line each.
/// Returns how many images failed (each named with its reason on stderr).
pub fn predict(model: &Path, images: &[PathBuf], out: &Path) -> Result<usize> {
    let device = Device::flex();
    let net = load(model, &device)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut failures = 0;
    for path in images {
        let result = (|| -> Result<serde_json::Value> {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let img = pneumoscope::preprocess::decode(&bytes).map_err(|e| anyhow!("{e}"))?;
            let mask: LungMask = net.segment(&img, &device)?;
            let shape = mask.shape();
            let png = mask.to_image();
            let stem = path
                .file_stem()
                .map_or("image".into(), |s| s.to_string_lossy().into_owned());
            let mask_path = out.join(format!("{stem}-lungs.png"));
            let overlay_path = out.join(format!("{stem}-lungs-overlay.png"));
            png.save(&mask_path)
                .with_context(|| format!("cannot write {}", mask_path.display()))?;
            overlay(&img, &png)
                .save(&overlay_path)
                .with_context(|| format!("cannot write {}", overlay_path.display()))?;
            Ok(serde_json::json!({
                "file": path.display().to_string(),
                "lung_area": mask.area_fraction(),
                "shape": shape,
                "implausible": shape.implausible(),
                "mask": mask_path.display().to_string(),
                "overlay": overlay_path.display().to_string(),
            }))
        })();
        match result {
            Ok(v) => println!("{v}"),
            Err(e) => {
                failures += 1;
                eprintln!("error: {}: {e:#}", path.display());
            }
        }
    }
    Ok(failures)
}

/// One group of images in [`shapes`]: how the plausibility rules score them.
#[derive(Default)]
struct ShapeGroup {
    areas: Vec<f64>,
    halves: Vec<f64>,
    reasons: BTreeMap<String, usize>,
    flagged: usize,
    unreadable: usize,
}

impl ShapeGroup {
    fn add(&mut self, shape: &lungs::LungShape) {
        self.areas.push(shape.area_fraction as f64);
        self.halves.push(shape.halves as f64);
        if let Some(r) = shape.implausible() {
            self.flagged += 1;
            // The reason's kind, without its figures.
            let kind = r.split(" (").next().unwrap_or(&r);
            let kind = if kind.starts_with("the lung fields cover") {
                "area out of bounds"
            } else if kind.starts_with("the lung fields lie mostly") {
                "on one side"
            } else {
                kind
            };
            *self.reasons.entry(kind.to_string()).or_default() += 1;
        }
    }

    fn summary(mut self) -> serde_json::Value {
        self.areas.sort_by(f64::total_cmp);
        self.halves.sort_by(f64::total_cmp);
        let n = self.areas.len();
        let q = |v: &[f64], p: f64| (percentile(v, p) * 1000.0).round() / 1000.0;
        serde_json::json!({
            "images": n,
            "unreadable": self.unreadable,
            "flagged": self.flagged,
            "flagged_share": if n > 0 { self.flagged as f64 / n as f64 } else { f64::NAN },
            "reasons": self.reasons,
            "area": { "p0.5": q(&self.areas, 0.005), "p1": q(&self.areas, 0.01),
                      "median": q(&self.areas, 0.5), "p99": q(&self.areas, 0.99),
                      "p99.5": q(&self.areas, 0.995) },
            "halves": { "p0.5": q(&self.halves, 0.005), "p1": q(&self.halves, 0.01),
                        "median": q(&self.halves, 0.5) },
        })
    }
}

/// `lungs shapes`: the lung shapes ([`lungs::LungShape`]) of a manifest's images per split x
/// population x source, of the images an `excluded.csv` left out for their modality or view
/// (CT slices, lateral views), and of any other images given, with how often and why the
/// plausibility rules ([`lungs::PLAUSIBLE`]) flag them: the figures that choose those bounds
/// (on train and validation) and that say what they catch. At most `limit` images per group.
pub fn shapes(
    model: &Path,
    manifest: &Path,
    excluded: Option<&Path>,
    others: &[PathBuf],
    limit: Option<usize>,
) -> Result<serde_json::Value> {
    let device = Device::flex();
    let net = load(model, &device)?;
    let m = crate::data::Manifest::read(manifest)?;
    let mut jobs: Vec<(String, PathBuf)> = m
        .records
        .iter()
        .map(|r| {
            (
                format!("{}/{}/{}", r.split, r.population(), r.source),
                m.resolve(r),
            )
        })
        .collect();
    if let Some(path) = excluded {
        let mut rdr = csv::Reader::from_path(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        for row in rdr.records() {
            let row = row.with_context(|| format!("{}: malformed row", path.display()))?;
            let (file, reason) = (row.get(0).unwrap_or(""), row.get(1).unwrap_or(""));
            // Left out for what the image is (CT, a lateral view), not for its finding.
            if reason.starts_with("modality") || reason.starts_with("view") {
                let kind = reason.split(" is not").next().unwrap_or(reason);
                jobs.push((format!("excluded/{kind}"), PathBuf::from(file)));
            }
        }
    }
    jobs.extend(
        others
            .iter()
            .map(|p| ("given images".to_string(), p.clone())),
    );
    let mut taken: BTreeMap<String, usize> = BTreeMap::new();
    jobs.retain(|(g, _)| {
        let k = taken.entry(g.clone()).or_default();
        *k += 1;
        limit.is_none_or(|l| *k <= l)
    });
    let bar = crate::machinery::progress::bar(jobs.len() as u64, "lung shapes");
    let mut groups: BTreeMap<String, ShapeGroup> = BTreeMap::new();
    let mut rows = Vec::new();
    for (group, path) in &jobs {
        let g = groups.entry(group.clone()).or_default();
        let img = std::fs::read(path)
            .map_err(|e| anyhow!("{e}"))
            .and_then(|b| pneumoscope::preprocess::decode(&b).map_err(|e| anyhow!("{e}")))
            .and_then(|img| Ok(net.segment(&img, &device)?));
        match img {
            Ok(mask) => {
                let shape = mask.shape();
                g.add(&shape);
                rows.push(serde_json::json!({
                    "group": group, "path": path.display().to_string(), "shape": shape,
                    "implausible": shape.implausible(),
                }));
            }
            Err(_) => g.unreadable += 1,
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let bounds = lungs::PLAUSIBLE;
    Ok(serde_json::json!({
        "model": model.display().to_string(),
        "bounds": { "area": [bounds.area.0, bounds.area.1], "halves": bounds.halves },
        "groups": groups.into_iter().map(|(k, g)| (k, g.summary())).collect::<BTreeMap<_, _>>(),
        "images": rows,
    }))
}
