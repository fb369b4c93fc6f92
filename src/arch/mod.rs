//! The architecture registry: one entry per supported backbone, used by every verb of the CLI
//! and by the browser library. An entry says how to build the backbone, how to rename the keys
//! of its published ImageNet weights, which layer Grad-CAM targets, and what input it expects.

pub mod efficientnet_lite;

use crate::error::{Error, Result};
use burn::prelude::*;
use efficientnet_lite::{EfficientNetLite, LiteScale};
use serde::{Deserialize, Serialize};

/// How a backbone is built.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ArchKind {
    /// EfficientNet-Lite at the given scale.
    EfficientNetLite(LiteScale),
}

/// Input configuration of an architecture: the evaluation transform is "resize the shorter side
/// to `resize`, centre-crop `crop`, scale to [0, 1], normalise with `mean`/`std`".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputConfig {
    /// Shorter side after resizing, in pixels.
    pub resize: usize,
    /// Side of the square centre crop fed to the network, in pixels.
    pub crop: usize,
    /// Per-channel mean (RGB) subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation (RGB).
    pub std: [f32; 3],
}

/// One registry entry.
#[derive(Clone, Debug)]
pub struct ArchSpec {
    /// Registry name (torchvision's name where torchvision has the model).
    pub name: &'static str,
    /// How to build it.
    pub kind: ArchKind,
    /// What input it expects.
    pub input: InputConfig,
    /// Channels of the feature map Grad-CAM targets (and of the pooled features).
    pub feature_dim: usize,
    /// Human-readable name of the Grad-CAM target layer.
    pub gradcam_layer: &'static str,
    /// Regex rewrites `(pattern, replacement)` from the published weight keys to this port's
    /// module paths, applied in order.
    pub key_remap: &'static [(&'static str, &'static str)],
    /// File name of the published ImageNet weights.
    pub weights_file: &'static str,
}

const LITE_REMAP: &[(&str, &str)] = &[(r"(^|\.)_", "$1")];

/// Every supported architecture.
pub fn registry() -> Vec<ArchSpec> {
    let lite = |name, width, depth, size: usize, weights_file| ArchSpec {
        name,
        kind: ArchKind::EfficientNetLite(LiteScale { width, depth }),
        input: InputConfig {
            resize: size * 8 / 7,
            crop: size,
            mean: [0.5; 3],
            std: [0.5; 3],
        },
        feature_dim: efficientnet_lite::HEAD,
        gradcam_layer: "conv_head+bn1+relu6 (output of the last convolutional block)",
        key_remap: LITE_REMAP,
        weights_file,
    };
    vec![
        lite(
            "efficientnet_lite0",
            1.0,
            1.0,
            224,
            "efficientnet-lite0-57934424.pth",
        ),
        lite(
            "efficientnet_lite1",
            1.0,
            1.1,
            240,
            "efficientnet-lite1.pth",
        ),
        lite(
            "efficientnet_lite2",
            1.1,
            1.2,
            260,
            "efficientnet-lite2.pth",
        ),
    ]
}

/// Looks an architecture up by name.
pub fn find(name: &str) -> Result<ArchSpec> {
    registry()
        .into_iter()
        .find(|a| a.name == name)
        .ok_or_else(|| {
            let known: Vec<_> = registry().iter().map(|a| a.name).collect();
            Error::UnknownArch(name.to_string(), known.join(", "))
        })
}

/// A backbone of any registered architecture.
#[derive(Module, Debug)]
pub enum Backbone {
    /// EfficientNet-Lite family.
    EfficientNetLite(EfficientNetLite),
}

impl ArchSpec {
    /// Builds a randomly initialised backbone; `imagenet_head` keeps the ImageNet classifier
    /// (for parity checks against the reference implementation).
    pub fn build_backbone(&self, imagenet_head: bool, device: &Device) -> Backbone {
        match self.kind {
            ArchKind::EfficientNetLite(scale) => {
                Backbone::EfficientNetLite(EfficientNetLite::new(scale, imagenet_head, device))
            }
        }
    }
}

impl Backbone {
    /// The activation Grad-CAM targets, `[batch, feature_dim, h, w]`.
    pub fn feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Backbone::EfficientNetLite(m) => m.feature_map(x),
        }
    }

    /// ImageNet logits from pooled features, if the backbone kept its ImageNet classifier.
    pub fn imagenet_logits(&self, pooled: Tensor<2>) -> Option<Tensor<2>> {
        match self {
            Backbone::EfficientNetLite(m) => m.imagenet_logits(pooled),
        }
    }

    /// Drops the ImageNet classifier, if any.
    pub fn without_imagenet_head(self) -> Self {
        match self {
            Backbone::EfficientNetLite(mut m) => {
                m.fc = None;
                Backbone::EfficientNetLite(m)
            }
        }
    }
}

/// Global average pooling of a feature map to `[batch, channels]`.
pub fn global_avg_pool(map: Tensor<4>) -> Tensor<2> {
    map.mean_dim(3).mean_dim(2).flatten(1, 3)
}
