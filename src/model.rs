//! A backbone with the paper's classification head:
//! Linear(n→256) → ReLU → Dropout(0.2) → Linear(256→4).

use crate::arch::{ArchSpec, Backbone, global_avg_pool};
use crate::classes::NUM_CLASSES;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

/// Hidden width of the paper's head.
pub const HEAD_HIDDEN: usize = 256;
/// Dropout probability of the paper's head.
pub const HEAD_DROPOUT: f64 = 0.2;

/// The paper's classification head.
#[derive(Module, Debug)]
pub struct Head {
    /// Linear(n→256).
    pub fc1: Linear,
    /// Dropout(0.2), active only while training.
    pub dropout: Dropout,
    /// Linear(256→4).
    pub fc2: Linear,
}

impl Head {
    /// A randomly initialised head over `features` inputs.
    pub fn new(features: usize, device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(features, HEAD_HIDDEN).init(device),
            dropout: DropoutConfig::new(HEAD_DROPOUT).init(),
            fc2: LinearConfig::new(HEAD_HIDDEN, NUM_CLASSES).init(device),
        }
    }

    /// Logits `[batch, 4]` from pooled features `[batch, n]`.
    pub fn forward(&self, pooled: Tensor<2>) -> Tensor<2> {
        self.fc2
            .forward(self.dropout.forward(relu(self.fc1.forward(pooled))))
    }
}

/// A whole classifier: backbone + head.
#[derive(Module, Debug)]
pub struct Classifier {
    /// Feature extractor.
    pub backbone: Backbone,
    /// Classification head.
    pub head: Head,
}

impl Classifier {
    /// A randomly initialised classifier of the given architecture (no ImageNet classifier).
    pub fn new(spec: &ArchSpec, device: &Device) -> Self {
        Self {
            backbone: spec.build_backbone(false, device),
            head: Head::new(spec.feature_dim, device),
        }
    }

    /// The Grad-CAM target activation.
    pub fn feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        self.backbone.feature_map(x)
    }

    /// Pooled features `[batch, feature_dim]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        global_avg_pool(self.feature_map(x))
    }

    /// Logits `[batch, 4]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.head.forward(self.features(x))
    }
}
