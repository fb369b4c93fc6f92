//! One training run: its settings, data, caches and devices prepared once ([`Run::prepare`]),
//! and what it writes when finished (model, metrics, predictions, timing).

use super::batches::*;
use super::config::*;
use super::features::*;
use crate::data::Manifest;
use crate::data::cache::{self, SquareCache};
use crate::machinery::fsutil::write_atomic;
use crate::machinery::parallel::Devices;
use crate::metrics;
use crate::pretrained::weights;
use anyhow::{Result, bail};
use burn::module::Module;
use burn::prelude::*;
use pneumoscope::NUM_CLASSES;
use pneumoscope::arch::ArchSpec;
use pneumoscope::model::Classifier;
use std::path::Path;

/// Wall-clock figures a run records in `timing.json`.
pub(super) type Timing = serde_json::Map<String, serde_json::Value>;

/// What a run's training phases share: its settings and folder, its architecture, the data it
/// trains and validates on (rows, labels, loss weights, images) and its devices.
pub(super) struct Run<'a> {
    pub(super) cfg: &'a TrainConfig,
    pub(super) dir: &'a Path,
    pub(super) spec: ArchSpec,
    pub(super) manifest: Manifest,
    pub(super) squares: SquareCache,
    /// Where validation and the frozen parts run.
    pub(super) device: Device,
    /// The autodiff devices a training step is spread over.
    pub(super) replicas: Devices,
    pub(super) train_rows: Vec<usize>,
    pub(super) val_rows: Vec<usize>,
    pub(super) train_labels: Vec<usize>,
    pub(super) val_labels: Vec<usize>,
    /// Each training row's weight in the loss.
    pub(super) row_w: Vec<f32>,
}

/// The trained classifier and, when they are at hand already, its validation probabilities.
pub(super) type Trained = (Classifier, Option<Vec<[f32; NUM_CLASSES]>>);

impl<'a> Run<'a> {
    /// Checks the settings against the manifest and the architecture, and loads the data,
    /// the devices and the starting backbone.
    pub(super) fn prepare(
        cfg: &'a TrainConfig,
        dir: &'a Path,
    ) -> Result<(Self, weights::LoadedBackbone)> {
        let manifest = Manifest::read(&cfg.data)?;
        let spec = cfg.spec()?;
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
        let devices = cfg.optimisation.device.open()?;
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
        let framing = cfg.framing()?;
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
}

/// Writes `val_predictions.csv`: manifest row, path, label, population, source, patient and
/// the four probabilities of each validation row.
pub(super) fn write_predictions(
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
    pub(super) fn finish(
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
        let bytes = model.into_record().into_bytes()?;
        write_atomic(&run.join("model.bpk"), &bytes)?;
        println!("wrote {}", run.join("model.bpk").display());
        Ok(())
    }
}

/// The backbone a run starts from: the ImageNet weights its config names, else random
/// initialisation (with a warning).
pub(super) fn starting_backbone(
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
