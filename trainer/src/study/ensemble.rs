//! `pneumoscope ensemble`: several exported model files → one ensemble file whose answer is the
//! mean of its members' probabilities (see [`pneumoscope::inference::Engine`]).

use crate::data::Split;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use pneumoscope::lungs::LungsSection;
use pneumoscope::model_file::{EnsembleFile, ModelFile};
use std::path::{Path, PathBuf};

/// Packs the model files `members` into an ensemble file at `out`.
///
/// Every member must have been trained on the same split of the same data, or one member's
/// test images could be another's training images: their headers' image counts per split and
/// class must agree (the manifest's path may differ, as it was written relative to wherever
/// training ran). With `data`, the
/// ensemble is evaluated on its validation and test splits and the metrics are stored in the
/// header, as `export` stores a run's. `note` says how the members were chosen.
pub fn build(
    members: &[PathBuf],
    out: &Path,
    data: Option<&Path>,
    note: Option<&str>,
) -> Result<EnsembleFile> {
    let files = read_members(members)?;
    let extra = serde_json::json!({
        "note": note,
        "members": members.iter().zip(&files).map(|(p, f)| serde_json::json!({
            "file": p.file_name().map(|n| n.to_string_lossy().to_string()),
            "arch": f.header.arch,
            "mode": f.header.training.pointer("/config/mode"),
            "calibration": f.header.extra.get("calibration"),
        })).collect::<Vec<_>>(),
        "data": files[0].header.data,
    });
    // A member's lung segmenter serves the whole ensemble (lung-focused input needs it).
    let lungs = files.iter().enumerate().find_map(|(k, f)| {
        let section = f.header.lungs.as_ref()?;
        Some((
            LungsSection {
                encoder_network: k,
                segmenter: section.segmenter.clone(),
            },
            f.lungs.clone()?,
        ))
    });
    let mut file = EnsembleFile::new(files, serde_json::Value::Null, extra)?;
    if let Some((section, decoder)) = lungs {
        file = file.with_lungs(section, decoder);
    }
    if let Some(data) = data {
        file.header.metrics = evaluate_packed(&file, out, data)?;
    }
    crate::machinery::fsutil::write_atomic(out, &file.to_bytes())?;
    Ok(file)
}

/// Reads the member files; refuses members trained on other data than the first.
fn read_members(members: &[PathBuf]) -> Result<Vec<ModelFile>> {
    let files = members
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            ModelFile::from_bytes(&bytes).with_context(|| format!("{}", p.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let manifest_of = |f: &ModelFile| f.header.data.get("counts").cloned();
    if let Some((i, f)) = files
        .iter()
        .enumerate()
        .find(|(_, f)| manifest_of(f) != manifest_of(&files[0]))
    {
        bail!(
            "{} was trained on other data than {} (images per split and class: {} vs {}): \
             members must share one manifest and its split, or one member's test patients may \
             be another's training patients",
            members[i].display(),
            members[0].display(),
            manifest_of(f).unwrap_or_default(),
            manifest_of(&files[0]).unwrap_or_default()
        );
    }
    Ok(files)
}

/// The packed `file`'s metrics on the validation and test splits of `data`, evaluated from a
/// copy written beside `out`, exactly as every verb will load it.
fn evaluate_packed(file: &EnsembleFile, out: &Path, data: &Path) -> Result<serde_json::Value> {
    let tmp = out.with_extension("evaluating");
    crate::machinery::fsutil::write_atomic(&tmp, &file.to_bytes())?;
    let mut metrics = serde_json::Map::new();
    for split in [Split::Val, Split::Test] {
        let options = crate::study::evaluate::EvaluateOptions {
            model: tmp.clone(),
            data: data.to_path_buf(),
            split,
            out: None,
            tta: false,
            lungs: None,
        };
        let e = crate::study::evaluate::on_split(&options, &Device::flex());
        let e = e.inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        eprintln!(
            "{split}: macro-F1 {:.4}, accuracy {:.4} ({} images)",
            e.metrics.macro_f1, e.metrics.accuracy, e.metrics.n
        );
        metrics.insert(split.to_string(), serde_json::to_value(&e.metrics)?);
    }
    std::fs::remove_file(&tmp).ok();
    Ok(serde_json::Value::Object(metrics))
}
