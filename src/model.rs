//! A backbone with the paper's classification head: Linear(n→256) → ReLU → Dropout(0.2) →
//! Linear(256→4) on the backbone's features, or, for SqueezeNet, Dropout(0.5) → 1x1 convolution
//! to 4 classes → ReLU → global average.

use crate::arch::activation::relu;
use crate::arch::{ArchSpec, Backbone, HeadKind, Operations, global_avg_pool};
use crate::classes::NUM_CLASSES;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;

/// Hidden width of the paper's head.
pub const HEAD_HIDDEN: usize = 256;
/// Dropout probability of the paper's head.
pub const HEAD_DROPOUT: f64 = 0.2;
/// Dropout probability of SqueezeNet's classifier, kept in front of its replaced convolution.
pub const CONV_HEAD_DROPOUT: f64 = 0.5;

/// The paper's classification head (one of the two forms, the other layers absent).
#[derive(Module, Debug)]
pub struct Head {
    /// Linear(n→256) (MLP head).
    pub fc1: Option<Linear>,
    /// Dropout, active only while training.
    pub dropout: Dropout,
    /// Linear(256→4) (MLP head).
    pub fc2: Option<Linear>,
    /// 1x1 convolution to the classes (SqueezeNet's head).
    pub conv: Option<Conv2d>,
}

impl Head {
    /// A randomly initialised head of the kind `spec` uses, reading `spec.head_shape`.
    pub fn new(spec: &ArchSpec, device: &Device) -> Self {
        match spec.head {
            HeadKind::Mlp => Self {
                fc1: Some(LinearConfig::new(spec.head_dim(), HEAD_HIDDEN).init(device)),
                dropout: DropoutConfig::new(HEAD_DROPOUT).init(),
                fc2: Some(LinearConfig::new(HEAD_HIDDEN, NUM_CLASSES).init(device)),
                conv: None,
            },
            HeadKind::Conv => Self {
                fc1: None,
                dropout: DropoutConfig::new(CONV_HEAD_DROPOUT).init(),
                fc2: None,
                conv: Some(
                    Conv2dConfig::new([spec.head_shape[0], NUM_CLASSES], [1, 1]).init(device),
                ),
            },
        }
    }

    /// Logits `[batch, 4]` from the head input `[batch, c, h, w]`.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<2> {
        if let Some(conv) = &self.conv {
            return global_avg_pool(relu(conv.forward(self.dropout.forward(input))));
        }
        let (Some(fc1), Some(fc2)) = (&self.fc1, &self.fc2) else {
            unreachable!("a head has either a convolution or two linear layers")
        };
        fc2.forward(self.dropout.forward(relu(fc1.forward(input.flatten(1, 3)))))
    }

    /// Logits from head inputs stored as rows `[batch, c*h*w]` (the frozen protocol's cache).
    pub fn forward_rows(&self, rows: Tensor<2>, shape: [usize; 3]) -> Tensor<2> {
        let n = rows.dims()[0];
        self.forward(rows.reshape([n, shape[0], shape[1], shape[2]]))
    }
}

/// A whole classifier: backbone + head, and the operations its forward passes run.
#[derive(Module, Debug)]
pub struct Classifier {
    /// Feature extractor.
    pub backbone: Backbone,
    /// Classification head.
    pub head: Head,
    /// The operations every forward pass of this classifier runs ([`Operations::Own`] unless
    /// set with [`Classifier::with_operations`]); not part of the saved weights.
    #[module(skip)]
    pub operations: Operations,
}

impl Classifier {
    /// A randomly initialised classifier of the given architecture (no ImageNet classifier).
    pub fn new(spec: &ArchSpec, device: &Device) -> Self {
        Self {
            backbone: spec.build_backbone(false, device),
            head: Head::new(spec, device),
            operations: Operations::default(),
        }
    }

    /// A classifier of `backbone` and `head`, running this project's operations.
    pub fn from_parts(backbone: Backbone, head: Head) -> Self {
        Self {
            backbone,
            head,
            operations: Operations::default(),
        }
    }

    /// The classifier running its forward passes through `operations` (the same function;
    /// `pneumoscope bench` times both).
    pub fn with_operations(self, operations: Operations) -> Self {
        Self { operations, ..self }
    }

    /// The classifier for inference, with its batch norms folded into the convolutions before
    /// them (see [`crate::arch::fold`]). Not for training: the batch norms are gone.
    pub fn fold_batchnorm(self) -> Self {
        Self {
            backbone: self.backbone.fold_batchnorm(),
            ..self
        }
    }

    /// The Grad-CAM target activation.
    pub fn feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        self.backbone.feature_map(x, self.operations)
    }

    /// Logits `[batch, 4]` from the Grad-CAM target activation.
    pub fn logits_from_map(&self, map: Tensor<4>) -> Tensor<2> {
        self.head
            .forward(self.backbone.head_input(map, self.operations))
    }

    /// Global average of the Grad-CAM target, `[batch, feature_dim]` (what the
    /// out-of-distribution score reads).
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        global_avg_pool(self.feature_map(x))
    }

    /// Logits `[batch, 4]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.logits_from_map(self.feature_map(x))
    }
}

/// Size facts of a classifier, read from its parameter shapes without allocating its weights.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Footprint {
    /// Number of trainable parameters (batch-norm running statistics excluded).
    pub parameters: usize,
    /// Module path of the largest parameter tensor.
    pub largest_tensor: String,
    /// Its size in bytes as f32, the precision it has on a device.
    pub largest_tensor_bytes: u64,
}

/// The [`Footprint`] of `spec`'s classifier. A WebGPU device must hold the largest tensor in
/// one buffer; the browser library checks this before choosing WebGPU.
pub fn footprint(spec: &ArchSpec) -> Footprint {
    struct Visit {
        path: Vec<String>,
        out: Footprint,
    }
    impl burn::module::ModuleVisitor for Visit {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            // Enum variants are not part of the published names.
            if !container_type.starts_with("Enum:") {
                self.path.push(name.to_string());
            } else {
                self.path.push(String::new());
            }
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            let n = param.lazy_shape().num_elements();
            let running = self.path.last().is_some_and(|p| p.starts_with("running_"));
            if !running {
                self.out.parameters += n;
            }
            let bytes = 4 * n as u64;
            if bytes > self.out.largest_tensor_bytes {
                self.out.largest_tensor_bytes = bytes;
                let parts: Vec<&str> = self
                    .path
                    .iter()
                    .map(String::as_str)
                    .filter(|p| !p.is_empty())
                    .collect();
                self.out.largest_tensor = parts.join(".");
            }
        }
    }
    let model = Classifier::new(spec, &Device::flex());
    let mut v = Visit {
        path: Vec::new(),
        out: Footprint {
            parameters: 0,
            largest_tensor: String::new(),
            largest_tensor_bytes: 0,
        },
    };
    model.visit(&mut v);
    v.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footprint_names_the_largest_tensor() {
        let f = footprint(&crate::arch::find("vgg16").unwrap());
        // classifier.0: Linear(512·7·7 → 4096), the tensor that decides whether VGG-16 fits a
        // WebGPU buffer.
        assert_eq!(f.largest_tensor_bytes, 4 * 25088 * 4096);
        assert!(f.largest_tensor.contains("classifier.0"), "{f:?}");
        // torchvision: 138,357,544 parameters with the ImageNet classifier; without it and with
        // the paper's head (4096·256 + 256 + 256·4 + 4) and BN-free VGG: 134,260,544 + 1,049,860.
        assert_eq!(f.parameters, 134_260_544 + 1_049_860);
        // torchvision's ResNet-50 has 25,557,032 parameters, 2,049,000 of them in its fc.
        let r = footprint(&crate::arch::find("resnet50").unwrap());
        assert_eq!(
            r.parameters,
            25_557_032 - 2_049_000 + 2048 * 256 + 256 + 256 * 4 + 4
        );
        let lite = footprint(&crate::arch::find("efficientnet_lite0").unwrap());
        assert!(lite.largest_tensor_bytes < 2 << 20);
    }
}
