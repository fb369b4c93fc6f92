//! `predict` and `gradcam`: a model file applied to image files.

use crate::model_file::load_engine;
use anyhow::{Context, Result, anyhow};
use burn::prelude::*;
use pneumoscope::Class;
use pneumoscope::gradcam;
use std::path::Path;

/// One JSON line per image on stdout; unreadable images are reported on stderr. Returns the
/// number of failures.
pub fn predict(
    model: &Path,
    images: &[std::path::PathBuf],
    tta: bool,
    device: &Device,
) -> Result<usize> {
    let engine = load_engine(model, device)?;
    let engine = if tta { engine.with_tta(true) } else { engine };
    let mut failures = 0;
    for img in images {
        let res = std::fs::read(img)
            .map_err(|e| anyhow!("cannot read: {e}"))
            .and_then(|b| engine.classify(&b).map_err(|e| anyhow!("{e}")));
        match res {
            Ok(p) => {
                let probs: serde_json::Map<String, serde_json::Value> = Class::ALL
                    .iter()
                    .map(|c| {
                        (
                            c.name().to_string(),
                            serde_json::json!(p.probabilities[c.index()]),
                        )
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({
                        "file": img.display().to_string(),
                        "probabilities": probs,
                        "top": p.top,
                        "ood": p.ood,
                        "population": p.population,
                        "caution": p.caution,
                    })
                );
            }
            Err(e) => {
                eprintln!("error: {}: {e}", img.display());
                failures += 1;
            }
        }
    }
    Ok(failures)
}

/// Writes the Grad-CAM overlay of `image` to `out` (PNG) and, beside it, the raw map as
/// `.npy`. Prints one JSON line.
pub fn gradcam(
    model: &Path,
    image: &Path,
    out: &Path,
    class: Option<Class>,
    lungs: Option<&Path>,
    device: &Device,
) -> Result<()> {
    let engine = load_engine(model, device)?;
    let bytes = std::fs::read(image).with_context(|| format!("cannot read {}", image.display()))?;
    let (framed, view, x) = engine
        .prepare(&bytes)
        .map_err(|e| anyhow!("{}: {e}", image.display()))?;
    let (pred, cam) = engine
        .explain_input(x, class)
        .map_err(|e| anyhow!("{}: {e}", image.display()))?;
    let side = engine.input_size();
    let heat = cam.at_side(side);
    let mut picture = gradcam::overlay(&view, &heat, 0.45);
    let npy = out.with_extension("npy");
    crate::machinery::npy::write_f32(&npy, &[cam.height, cam.width], &cam.values)?;
    let mut line = serde_json::json!({
        "file": image.display().to_string(),
        "class": cam.class,
        "top": pred.top,
        "score": cam.score,
        "map": { "width": cam.width, "height": cam.height, "npy": npy.display().to_string() },
        "overlay": out.display().to_string(),
    });
    // The lung fields of the image the networks saw (the whole image, or under lung-focused
    // input its lung crop), mapped onto the crop the map covers: by the segmenter given, else
    // by the one the model file carries.
    let mask = match lungs {
        Some(path) => Some(crate::lungs::load(path, device)?.segment(&framed.image, device)?),
        None => match (framed.lungs, &engine.lungs) {
            (Some(mask), _) => Some(mask),
            (None, Some(l)) => Some(l.net.segment(&framed.image, device)?),
            (None, None) => None,
        },
    };
    if let Some(crop) = framed.crop {
        line["lung_crop"] = serde_json::json!(crop);
    }
    if let Some(mask) = mask {
        let input = &engine.display_network().header.input;
        let share = mask.share_of_cam(&heat, side, input);
        let crop = mask.on_crop(input, side, 0);
        pneumoscope::lungs::draw_outline(&mut picture, &crop);
        let stem = out.with_extension("");
        let heat_npy = stem.with_extension("heat.npy");
        let lungs_npy = stem.with_extension("lungs.npy");
        let mask_npy = stem.with_extension("mask.npy");
        crate::machinery::npy::write_f32(&heat_npy, &[side, side], &heat)?;
        let dilated = mask.on_crop(input, side, pneumoscope::lungs::SHARE_DILATION);
        crate::machinery::npy::write_f32(&lungs_npy, &[side, side], &dilated)?;
        crate::machinery::npy::write_f32(&mask_npy, &[side, side], &crop)?;
        line["lung_share"] = serde_json::json!(share);
        line["lung_area"] = serde_json::json!(mask.area_fraction());
        let shape = mask.shape();
        line["lung_shape"] = serde_json::json!(shape);
        line["lung_reason"] = serde_json::json!(shape.implausible());
        line["heat_npy"] = serde_json::json!(heat_npy.display().to_string());
        line["lungs_npy"] = serde_json::json!(lungs_npy.display().to_string());
        line["lung_mask_npy"] = serde_json::json!(mask_npy.display().to_string());
    }
    picture
        .save(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("{line}");
    Ok(())
}
