//! Loading published ImageNet weights (`.pth`, zip or legacy, and `.safetensors`) into a
//! backbone through `burn-store`, with the registry's key remap.

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::store::{
    ApplyResult, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use pneumoscope::arch::{ArchSpec, Backbone};
use pneumoscope::model_file::sha256_hex;
use std::path::Path;

/// The weight source of a backbone trained from random initialisation.
pub const RANDOM_INIT: &str = "random-init";

/// A backbone with ImageNet weights, and a line saying where they came from.
pub struct LoadedBackbone {
    /// The backbone.
    pub backbone: Backbone,
    /// `imagenet:<file> sha256:<hex>`.
    pub source: String,
}

/// Builds `spec`'s backbone and loads the weights file at `path` into it. With
/// `imagenet_head` the ImageNet classifier is kept (and must be in the file).
pub fn load_backbone(
    spec: &ArchSpec,
    path: &Path,
    imagenet_head: bool,
    device: &Device,
) -> Result<LoadedBackbone> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read weights file {}", path.display()))?;
    let sha = sha256_hex(&bytes);
    drop(bytes);
    let mut backbone = spec.build_backbone(imagenet_head, device);
    let result = apply_file(&mut backbone, spec, path)?;
    check_fit(&result, spec, path)?;
    tracing::debug!(
        applied = result.applied.len(),
        unused = result.unused.len(),
        "weights loaded"
    );
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    // Inference state (dropout off) until a fine-tuning run asks for training state.
    Ok(LoadedBackbone {
        backbone: backbone.valid(),
        source: format!("imagenet:{name} sha256:{sha}"),
    })
}

/// Loads a burn-store `store` into `backbone` the way the ports need: every Sequential index
/// kept as it is (parameter-free layers included, so indices must not be renumbered), a
/// partial load allowed (checked by [`check_fit`]), enum variants skipped, and `spec`'s key
/// remap. A macro because the stores share these builder methods without a common trait.
macro_rules! ported {
    ($backbone:expr, $store:expr, $spec:expr) => {{
        let mut store = $store
            .map_indices_contiguous(false)
            .allow_partial(true)
            .skip_enum_variants(true);
        for (from, to) in &$spec.key_remap {
            store = store.with_key_remapping(from.as_str(), to.as_str());
        }
        $backbone
            .load_from(&mut store)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }};
}

/// Loads the tensors of the weights file at `path` into `backbone`, read by its extension, with
/// `spec`'s key remap.
fn apply_file(backbone: &mut Backbone, spec: &ArchSpec, path: &Path) -> Result<ApplyResult> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    Ok(match ext.as_str() {
        // Safetensors files of PyTorch models (torchvision's, timm's) use PyTorch's parameter
        // names and layouts.
        "safetensors" => ported!(
            backbone,
            SafetensorsStore::from_file(path).with_from_adapter(PyTorchToBurnAdapter),
            spec
        )
        .with_context(|| format!("cannot load safetensors weights {}", path.display()))?,
        "pth" | "pt" | "bin" => ported!(backbone, PytorchStore::from_file(path), spec)
            .with_context(|| format!("cannot load PyTorch weights {}", path.display()))?,
        other => bail!(
            "{}: unsupported weights extension '{other}' (expected .pth, .pt or .safetensors)",
            path.display()
        ),
    })
}

/// Refuses a load where a tensor did not fit its parameter or a parameter got no tensor.
fn check_fit(result: &ApplyResult, spec: &ArchSpec, path: &Path) -> Result<()> {
    if !result.errors.is_empty() {
        bail!(
            "{}: {} tensors do not fit {} (first: {:?})",
            path.display(),
            result.errors.len(),
            spec.name,
            result.errors[0]
        );
    }
    if !result.missing.is_empty() {
        let names: Vec<_> = result
            .missing
            .iter()
            .take(5)
            .map(|(p, _)| p.as_str())
            .collect();
        bail!(
            "{}: {} parameters of {} are missing from the file (first: {}); is this the right \
             architecture?",
            path.display(),
            result.missing.len(),
            spec.name,
            names.join(", ")
        );
    }
    Ok(())
}
