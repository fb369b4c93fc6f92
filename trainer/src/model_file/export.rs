//! `pneumoscope export`: a finished run → one self-describing model file.

use crate::data::Manifest;
use crate::machinery::precision::to_f16;
use crate::model_file::calibrate;
use crate::train::TrainConfig;
use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use pneumoscope::arch;
use pneumoscope::lungs::LungsFile;
use pneumoscope::model::Classifier;
use pneumoscope::model_file::{EnsembleFile, FileKind, Format, ModelFile, ModelHeader, format_of};
use pneumoscope::preprocess::InputRegion;
use std::path::Path;

/// Options of `export`.
#[derive(Clone, Debug, clap::Args)]
pub struct ExportOptions {
    /// Store weights in half precision (batch-norm and biases stay f32).
    #[arg(long)]
    pub f16: bool,
    /// Ask for test-time augmentation (mirror averaging) by default wherever the file is
    /// used.
    #[arg(long)]
    pub tta: bool,
    /// Leave out the out-of-distribution statistics (stored by default: they are fitted on the
    /// run's training split with the exported weights, so the run's manifest and images must
    /// be at hand).
    #[arg(long = "no-ood", action = clap::ArgAction::SetFalse)]
    pub ood: bool,
    /// Fit a temperature on the run's validation split and fold it into the head, so the
    /// file's probabilities are calibrated (the predicted class is unchanged); recorded in the
    /// header's `extra.calibration`.
    #[arg(long)]
    pub calibrate: bool,
}

impl Default for ExportOptions {
    /// The command line's defaults.
    fn default() -> Self {
        crate::machinery::args::defaults(&[])
    }
}

/// Packs `RUN/model.bpk` with its description into a model file at `out`.
pub fn pack(run: &Path, out: &Path, o: &ExportOptions) -> Result<ModelHeader> {
    let cfg: TrainConfig = serde_json::from_value(crate::machinery::fsutil::read_json::<
        serde_json::Value,
    >(&run.join("config.json"))?)
    .with_context(|| format!("{}: not a training run", run.display()))?;
    let spec = cfg.spec()?;
    let device = Device::flex();
    let framing = cfg.framing()?;
    let mut model = load_run_model(run, &spec, &device)?;
    let mut calibration = serde_json::Value::Null;
    if o.calibrate {
        let (t, fitted) = fit_calibration(&model, &cfg, &spec, &framing, &device)?;
        calibration = fitted;
        model = calibrate::fold_temperature(model, t);
    }
    if o.f16 {
        model = to_f16(model);
    }
    let mut header = ModelHeader {
        training: run_training(run, &cfg),
        data: run_data(&cfg),
        metrics: crate::machinery::fsutil::read_json::<serde_json::Value>(
            &run.join("metrics.json"),
        )
        .unwrap_or(serde_json::Value::Null),
        extra: serde_json::json!({ "tta": o.tta, "calibration": calibration }),
        ..header(
            &spec,
            o.f16,
            std::fs::read_to_string(run.join("weight_source.txt"))
                .unwrap_or_else(|_| "unknown".into()),
        )
    };
    header.region = cfg.region;
    let mut file = ModelFile::from_classifier(header, model)?;
    if o.ood {
        fit_ood(&mut file, &cfg, &spec, &framing, &device)?;
    }
    crate::machinery::fsutil::write_atomic(out, &file.to_bytes())?;
    if let (InputRegion::Lungs, Some(segmenter)) = (cfg.region, &cfg.lungs) {
        // Lung-focused input needs the segmenter beside the network at inference; it shares
        // an EfficientNet-Lite0 backbone, so another network gets it in an ensemble with one.
        if spec.name == pneumoscope::lungs::ENCODER {
            crate::lungs::embed(out, segmenter, out)?;
            return Ok(ModelFile::from_bytes(&std::fs::read(out)?)?.header);
        }
        eprintln!(
            "note: {} takes lung-focused input but cannot carry the segmenter itself (it shares \
             an {} backbone): use it in an ensemble with such a network and `lungs embed` the \
             ensemble",
            spec.name,
            pneumoscope::lungs::ENCODER
        );
    }
    Ok(file.header)
}

/// The trained classifier of a finished run (`RUN/model.bpk`).
fn load_run_model(run: &Path, spec: &arch::ArchSpec, device: &Device) -> Result<Classifier> {
    let model_path = run.join("model.bpk");
    if !model_path.is_file() {
        bail!(
            "{}: the run has not finished (no model.bpk); finish it with `pneumoscope train --resume`",
            run.display()
        );
    }
    let bytes = std::fs::read(&model_path)?;
    let rec = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
        .with_context(|| format!("{}: unreadable weights", model_path.display()))?;
    Classifier::new(spec, device)
        .try_load_record(rec)
        .with_context(|| format!("{}", model_path.display()))
}

/// A temperature fitted on the run's validation rows with a definite class (a partial label
/// has no single class to be calibrated towards), and the record of it for the header.
fn fit_calibration(
    model: &Classifier,
    cfg: &TrainConfig,
    spec: &arch::ArchSpec,
    framing: &crate::data::cache::Framing,
    device: &Device,
) -> Result<(f64, serde_json::Value)> {
    let manifest = Manifest::read(&cfg.data)
        .context("calibration needs the run's validation data (or leave out --calibrate)")?;
    let (_, mut rows) = crate::train::run_rows(&manifest, cfg.fold);
    rows.retain(|&i| manifest.records[i].label.class().is_some());
    if rows.is_empty() {
        bail!("{}: no validation rows to calibrate on", cfg.data.display());
    }
    let squares = crate::data::cache::load_or_build(&manifest, spec.input.resize, framing)?;
    let probs = crate::train::predict_rows(model, spec, &squares, &rows, device);
    let labels = manifest.labels(&rows);
    let t = calibrate::fit_temperature(&probs, &labels);
    let (before, after) = (
        calibrate::nll(&probs, &labels, 1.0),
        calibrate::nll(&probs, &labels, 1.0 / t),
    );
    eprintln!(
        "calibration: temperature {t:.3} fitted on {} validation images (NLL {before:.4} → {after:.4})",
        rows.len()
    );
    let record = serde_json::json!({
        "method": "temperature scaling, folded into the head's last layer",
        "temperature": t,
        "fitted_on": "val",
        "images": rows.len(),
        "val_nll_before": before,
        "val_nll_after": after,
    });
    Ok((t, record))
}

/// The header's `training`: the run's config and its best epoch.
fn run_training(run: &Path, cfg: &TrainConfig) -> serde_json::Value {
    let history = std::fs::read_to_string(run.join("state.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
    serde_json::json!({
        "config": cfg,
        "best_epoch": history.as_ref().and_then(|h| h.get("best_epoch").cloned()),
        "best_val_macro_f1": history.as_ref().and_then(|h| h.get("best_val_macro_f1").cloned()),
    })
}

/// The header's `data`: the manifest, and its images per split and class and its sources
/// when it is at hand.
fn run_data(cfg: &TrainConfig) -> serde_json::Value {
    match Manifest::read(&cfg.data) {
        Ok(m) => {
            let summary = crate::data::build::counts(&m.records);
            let sources: std::collections::BTreeSet<_> =
                m.records.iter().map(|r| r.source.clone()).collect();
            serde_json::json!({ "manifest": cfg.data, "counts": summary, "sources": sources })
        }
        Err(_) => serde_json::json!({ "manifest": cfg.data }),
    }
}

/// Fits the out-of-distribution statistics and the population estimate on the run's training
/// split, with the file's own (exported) weights, and stores them in the file's header.
fn fit_ood(
    file: &mut ModelFile,
    cfg: &TrainConfig,
    spec: &arch::ArchSpec,
    framing: &crate::data::cache::Framing,
    device: &Device,
) -> Result<()> {
    let manifest = Manifest::read(&cfg.data).context(
        "the out-of-distribution statistics need the run's training data (or pass --no-ood)",
    )?;
    let exported = file.load_classifier(device)?;
    let pooled = crate::model_file::ood::pooled(&exported, spec, &manifest, framing, device)?;
    file.header.ood = Some(crate::model_file::ood::fit(&pooled)?);
    let population = crate::model_file::population::fit(&pooled, &manifest)?;
    eprintln!("population estimate: {}", population.fit);
    file.header.population = Some(population);
    Ok(())
}

/// The header fields every model file of `spec` shares; the caller fills in training, data,
/// metrics and extras.
fn header(spec: &arch::ArchSpec, f16: bool, weight_source: String) -> ModelHeader {
    ModelHeader {
        weights_dtype: if f16 {
            pneumoscope::model_file::WeightsDtype::F16
        } else {
            pneumoscope::model_file::WeightsDtype::F32
        },
        ..ModelHeader::new(
            spec,
            weight_source,
            format!("pneumoscope {}", env!("CARGO_PKG_VERSION")),
        )
    }
}

/// An untrained model file of `spec`: the backbone from `weights` (ImageNet) or random, the
/// head untrained. Its header says so (`training.untrained`), and the page warns. For checking
/// that an architecture deploys (size, backend limits, speed), never for diagnosis.
pub fn untrained(
    spec: &arch::ArchSpec,
    weights: Option<&Path>,
    out: &Path,
    f16: bool,
) -> Result<ModelHeader> {
    let device = Device::flex();
    let loaded = match weights {
        Some(w) => crate::pretrained::weights::load_backbone(spec, w, false, &device)?,
        None => crate::pretrained::weights::LoadedBackbone {
            backbone: spec.build_backbone(false, &device).valid(),
            source: crate::pretrained::weights::RANDOM_INIT.to_string(),
        },
    };
    let mut model = Classifier::from_parts(
        loaded.backbone,
        pneumoscope::model::Head::new(spec, &device),
    );
    if f16 {
        model = to_f16(model);
    }
    let header = ModelHeader {
        training: serde_json::json!({ "untrained": true }),
        extra: serde_json::json!({
            "untrained": true,
            "note": "untrained head: for deployment and speed checks only, its outputs mean nothing",
        }),
        ..header(spec, f16, loaded.source)
    };
    let file = ModelFile::from_classifier(header, model)?;
    crate::machinery::fsutil::write_atomic(out, &file.to_bytes())?;
    Ok(file.header)
}

/// `pneumoscope upgrade`: reads a model file of any format this build knows (one network, an
/// ensemble or a lung segmenter), verifies it as far as its format allows, and writes it to
/// `out` in the current format, whose header is sealed by a checksum. The header's content
/// is kept as it is, save its format version. Returns the format read and the version
/// written.
pub fn upgrade(input: &Path, out: &Path) -> Result<(Format, u32)> {
    let bytes = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let named = |e: pneumoscope::Error| anyhow::anyhow!("{}: {e}", input.display());
    let format = format_of(&bytes).map_err(named)?;
    let written = match format.kind {
        FileKind::Network => ModelFile::from_bytes(&bytes).map_err(named)?.to_bytes(),
        FileKind::Ensemble => EnsembleFile::from_bytes(&bytes).map_err(named)?.to_bytes(),
        FileKind::LungSegmenter => LungsFile::from_bytes(&bytes).map_err(named)?.to_bytes(),
    };
    // What is written reads back as the same kind, sealed.
    let back = format_of(&written)?;
    if back.kind != format.kind || !back.sealed {
        bail!(
            "the upgraded file does not read back as a sealed {:?}",
            format.kind
        );
    }
    crate::machinery::fsutil::write_atomic(out, &written)?;
    Ok((format, back.version))
}
