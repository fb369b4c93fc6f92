//! Loading a model file and running it: classification and Grad-CAM from image bytes.
//!
//! [`Engine`] is what every caller uses: it loads a single-network file or an ensemble file
//! and answers the same way for both. [`Network`] is one network of it.

use crate::arch::{Backbone, global_avg_pool};
use crate::classes::{Class, NUM_CLASSES};
use crate::error::{Error, Result};
use crate::gradcam::{self, CamMap};
use crate::lungs::{LungDecoder, LungMask, LungNet, Lungs, Rect};
use crate::model::Classifier;
use crate::model_file::{
    EnsembleFile, EnsembleHeader, FileKind, Format, ModelFile, ModelHeader, classifier_format,
};
use crate::ood::OodScore;
use crate::population::{PopulationEstimate, PopulationModel};
use crate::preprocess::{self, InputRegion};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use image::{DynamicImage, GrayImage};
use serde::Serialize;

/// An image as an engine's networks see it ([`Engine::frame`]).
#[derive(Clone, Debug)]
pub struct Framed {
    /// What the networks are given: the decoded image, or under lung-focused input its lung
    /// crop.
    pub image: DynamicImage,
    /// Under lung-focused input, the lung mask of `image` (found on the whole image, then
    /// resampled onto the crop).
    pub lungs: Option<LungMask>,
    /// Where `image` was cut from the decoded image, when it is a crop.
    pub crop: Option<Rect>,
}

impl Framed {
    /// The whole image.
    pub fn whole(image: DynamicImage) -> Self {
        Self {
            image,
            lungs: None,
            crop: None,
        }
    }

    /// The part `rect` of `image` squashed to a square of its longer side.
    pub fn cut(image: &DynamicImage, rect: Rect) -> DynamicImage {
        let side = rect.width.max(rect.height);
        preprocess::crop(image, rect).resize_exact(
            side,
            side,
            image::imageops::FilterType::Triangle,
        )
    }

    /// Lung-focused input: the part [`LungMask::crop_rect`] of `image`, squashed to a square
    /// of its longer side (so the usual transform cuts none of it), and the mask on it; or the
    /// whole image and its mask when the mask holds no lung.
    pub fn lungs(image: DynamicImage, mask: LungMask) -> Self {
        match mask.crop_rect() {
            Some(rect) => {
                let square = Self::cut(&image, rect);
                let side = square.width();
                let mut lungs = mask.within(rect);
                (lungs.width, lungs.height) = (side, side);
                Self {
                    image: square,
                    lungs: Some(lungs),
                    crop: Some(rect),
                }
            }
            None => Self {
                image,
                lungs: Some(mask),
                crop: None,
            },
        }
    }
}

/// The answer for one image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    /// Softmax probabilities in class order.
    pub probabilities: [f32; NUM_CLASSES],
    /// The most probable class.
    pub top: Class,
    /// How unlike the training X-rays the image is (`None` when the model file has no
    /// out-of-distribution statistics).
    pub ood: Option<OodScore>,
    /// Child or adult, estimated from the backbone's features (`None` when the model file has
    /// no population estimate).
    pub population: Option<PopulationEstimate>,
    /// Set when the model saw too few training images of the predicted class from the image's
    /// population for its answer to mean much (see [`crate::population`]).
    pub caution: Option<String>,
}

impl Prediction {
    /// Builds a prediction from probabilities.
    pub fn from_probabilities(probabilities: [f32; NUM_CLASSES]) -> Self {
        let top = (0..NUM_CLASSES)
            .max_by(|&a, &b| probabilities[a].total_cmp(&probabilities[b]))
            .and_then(Class::from_index)
            .expect("four classes");
        Self {
            probabilities,
            top,
            ood: None,
            population: None,
            caution: None,
        }
    }

    /// Sets the population estimate and, from it, the caution.
    fn with_population(mut self, model: &PopulationModel, adult_probability: f32) -> Self {
        let estimate = PopulationEstimate::of(adult_probability);
        self.caution = model.caution(self.top, estimate);
        self.population = Some(estimate);
        self
    }
}

/// One loaded network ready to classify and explain images (a single-network model file, or
/// one member of an ensemble).
pub struct Network {
    /// What the model file says about itself.
    pub header: ModelHeader,
    /// The network.
    pub model: Classifier,
    /// Where it runs.
    pub device: Device,
    /// Test-time augmentation: average the probabilities of the image and its mirror image.
    pub tta: bool,
}

impl Network {
    /// Parses, verifies and loads a single-network model file.
    pub fn load(bytes: &[u8], device: Device) -> Result<Self> {
        Self::from_file(ModelFile::from_bytes(bytes)?, device)
    }

    /// Loads a parsed and verified model file.
    pub fn from_file(file: ModelFile, device: Device) -> Result<Self> {
        let model = file.load_classifier(&device)?.fold_batchnorm();
        // A model exported with `--tta` asks for mirror averaging by default.
        let tta = file
            .header
            .extra
            .get("tta")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        Ok(Self {
            header: file.header,
            model,
            device,
            tta,
        })
    }

    /// Turns test-time augmentation (image + mirror image, probabilities averaged) on or off;
    /// the default comes from the model file (`extra.tta`).
    pub fn with_tta(mut self, tta: bool) -> Self {
        self.tta = tta;
        self
    }

    /// Side of the square input.
    pub fn input_size(&self) -> usize {
        self.header.input.crop
    }

    /// Decodes and preprocesses image bytes into a `[3, s, s]` vector.
    pub fn preprocess(&self, image: &[u8]) -> Result<Vec<f32>> {
        preprocess::preprocess(image, &self.header.input)
    }

    /// Stacks preprocessed images into a `[n, 3, s, s]` tensor.
    pub fn batch(&self, images: &[Vec<f32>]) -> Tensor<4> {
        let s = self.input_size();
        let flat: Vec<f32> = images.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(flat, [images.len(), 3, s, s]), &self.device)
    }

    /// The softmax probabilities `[n, 4]` of a batch (mirror-averaged when TTA is on),
    /// followed, when the model file has out-of-distribution statistics, by the pooled features
    /// `[n, d]` of the images themselves: one tensor, so one read from the device.
    fn outputs(&self, images: &[Vec<f32>]) -> Tensor<2> {
        let x = self.batch(images);
        let n = images.len();
        if self.tta {
            let map = self
                .model
                .feature_map(Tensor::cat(vec![x.clone(), x.flip([3])], 0));
            let pooled = global_avg_pool(map.clone());
            let p = softmax(self.model.logits_from_map(map), 1);
            let p = (p.clone().narrow(0, 0, n) + p.narrow(0, n, n)) / 2.0;
            self.with_features(p, pooled.narrow(0, 0, n))
        } else {
            let map = self.model.feature_map(x);
            let pooled = global_avg_pool(map.clone());
            let p = softmax(self.model.logits_from_map(map), 1);
            self.with_features(p, pooled)
        }
    }

    /// Appends the pooled features to the probabilities when the OOD score needs them.
    fn with_features(&self, probabilities: Tensor<2>, pooled: Tensor<2>) -> Tensor<2> {
        if self.feature_width() > 0 {
            Tensor::cat(vec![probabilities, pooled], 1)
        } else {
            probabilities
        }
    }

    /// Splits the rows read back from [`Network::outputs`] into predictions.
    fn predictions(&self, data: TensorData) -> Result<Vec<Prediction>> {
        let data: Vec<f32> = data.try_to_vec().map_err(read_error)?;
        let width = NUM_CLASSES + self.feature_width();
        Ok(data
            .chunks(width)
            .map(|row| {
                let mut p = Prediction::from_probabilities([row[0], row[1], row[2], row[3]]);
                let pooled = &row[NUM_CLASSES..];
                p.ood = self.header.ood.as_ref().map(|o| o.score(pooled));
                match &self.header.population {
                    Some(m) => p.with_population(m, m.adult_probability(pooled)),
                    None => p,
                }
            })
            .collect())
    }

    /// Pooled feature values read back beside the probabilities: the backbone's feature
    /// dimension when the out-of-distribution score or the population estimate needs them.
    fn feature_width(&self) -> usize {
        // Both are checked against the architecture's feature dimension on load.
        let h = &self.header;
        h.ood
            .as_ref()
            .map(|o| o.dim)
            .or(h.population.as_ref().map(|p| p.dim))
            .unwrap_or(0)
    }

    /// [`Network::classify_batch_async`], blocking until the result is read (native callers).
    pub fn classify_batch(&self, images: &[Vec<f32>]) -> Result<Vec<Prediction>> {
        crate::block_on(self.classify_batch_async(images))
    }

    /// Class probabilities of a batch of preprocessed images.
    pub async fn classify_batch_async(&self, images: &[Vec<f32>]) -> Result<Vec<Prediction>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let data = self.outputs(images).into_data_async().await;
        self.predictions(data.map_err(read_error)?)
    }

    /// The Grad-CAM target activation of one preprocessed image, and the class probabilities
    /// computed from it (not yet read back) unless TTA needs the mirror image too.
    fn activation(&self, x: &[f32]) -> (Tensor<4>, Option<Tensor<2>>) {
        let input = self.batch(&[x.to_vec()]);
        let activation = self.model.feature_map(input).detach();
        let probs = (!self.tta).then(|| {
            let pooled = global_avg_pool(activation.clone());
            let p = softmax(self.model.logits_from_map(activation.clone()), 1);
            self.with_features(p, pooled)
        });
        (activation, probs)
    }

    /// Grad-CAM of one image for `class` (the predicted class when `None`), with the
    /// prediction.
    pub fn explain(&self, image: &[u8], class: Option<Class>) -> Result<(Prediction, CamMap)> {
        self.explain_input(self.preprocess(image)?, class)
    }

    /// [`Network::classify_keeping_activation_async`], blocking until the result is read
    /// (native callers).
    pub fn classify_keeping_activation(&self, x: Vec<f32>) -> Result<(Prediction, Tensor<4>)> {
        crate::block_on(self.classify_keeping_activation_async(x))
    }

    /// Classifies one preprocessed image and keeps its Grad-CAM target activation, so that
    /// [`gradcam::grad_cam_from`] can explain it without running the backbone again.
    pub async fn classify_keeping_activation_async(
        &self,
        x: Vec<f32>,
    ) -> Result<(Prediction, Tensor<4>)> {
        let (activation, probs) = self.activation(&x);
        let prediction = match probs {
            Some(p) => self.predictions(p.into_data_async().await.map_err(read_error)?)?,
            None => self.classify_batch_async(&[x]).await?,
        };
        Ok((
            prediction.into_iter().next().expect("one image"),
            activation,
        ))
    }

    /// [`Network::explain`] of a preprocessed image: the backbone is called once, classification
    /// and Grad-CAM share its activation tensor. (A lazily evaluating backend may still
    /// recompute it: in the browser the Grad-CAM step took as long as before this sharing.)
    pub fn explain_input(&self, x: Vec<f32>, class: Option<Class>) -> Result<(Prediction, CamMap)> {
        let (prediction, activation) = self.classify_keeping_activation(x)?;
        let class = class.unwrap_or(prediction.top);
        let cam = gradcam::grad_cam_from(&self.model, activation, class)?;
        Ok((prediction, cam))
    }
}

/// One image preprocessed for every network of an [`Engine`]: a `[3, s, s]` vector per
/// network, `s` being that network's input size.
#[derive(Clone, Debug, PartialEq)]
pub struct Input(pub Vec<Vec<f32>>);

/// A loaded model file, single network or ensemble: classifies and explains images.
///
/// An ensemble answers with the mean of its networks' probabilities; its out-of-distribution
/// score is the mean of the networks' scores (flagged above 1, as for one network); its Grad-CAM
/// is the mean of the networks' maps for the same class, each resized to the largest input and
/// the mean rescaled to a maximum of 1.
pub struct Engine {
    /// The networks: one for a single-network file, the members of an ensemble otherwise.
    pub networks: Vec<Network>,
    /// The ensemble's own header, for an ensemble file.
    pub ensemble: Option<EnsembleHeader>,
    /// The lung segmenter the file carries, if any (its encoder is one network's backbone).
    pub lungs: Option<Lungs>,
    /// The file's format: whether its header was verified (see [`Engine::notice`]).
    pub format: Format,
}

impl Engine {
    /// What the user should be told about the file itself: "header not verified (format vN)"
    /// for a file of an earlier format, whose header carries no checksum; nothing otherwise.
    pub fn notice(&self) -> Option<String> {
        self.format.notice()
    }

    /// The population estimate that decides an ensemble's caution: the first network's that
    /// has one.
    pub fn population_model(&self) -> Option<&PopulationModel> {
        self.networks
            .iter()
            .find_map(|n| n.header.population.as_ref())
    }

    /// Parses, verifies and loads a model file of either kind, with the lung segmenter it
    /// carries.
    pub fn load(bytes: &[u8], device: Device) -> Result<Self> {
        let format = classifier_format(bytes)?;
        let (networks, ensemble, section) = if format.kind == FileKind::Ensemble {
            let file = EnsembleFile::from_bytes(bytes)?;
            let networks = file
                .members
                .into_iter()
                .map(|m| Network::from_file(m, device.clone()))
                .collect::<Result<Vec<_>>>()?;
            let section = file.header.lungs.clone().zip(file.lungs);
            (networks, Some(file.header), section)
        } else {
            let file = ModelFile::from_bytes(bytes)?;
            let section = file.header.lungs.clone().zip(file.lungs.clone());
            (
                vec![Network::from_file(file, device.clone())?],
                None,
                section,
            )
        };
        let lungs = match section {
            None => None,
            Some((section, decoder)) => {
                let Backbone::EfficientNetLite(encoder) =
                    &networks[section.encoder_network].model.backbone
                else {
                    return Err(Error::ModelFile(format!(
                        "the lung segmenter's encoder, network {}, is not an EfficientNet-Lite",
                        section.encoder_network + 1
                    )));
                };
                let decoder = LungDecoder::from_bytes(&decoder, &device)?;
                Some(Lungs {
                    header: section.segmenter,
                    net: LungNet::from_parts(encoder.clone(), decoder),
                })
            }
        };
        let region = networks[0].header.region;
        if let Some(n) = networks.iter().find(|n| n.header.region != region) {
            return Err(Error::ModelFile(format!(
                "the ensemble's members are given different parts of the image ({} takes the \
                 {region} image, {} the {} image); their Grad-CAM maps could not be averaged",
                networks[0].header.arch, n.header.arch, n.header.region
            )));
        }
        Ok(Self {
            networks,
            ensemble,
            lungs,
            format,
        })
    }

    /// The part of the image the networks are given (the same for all of them).
    pub fn region(&self) -> InputRegion {
        self.networks[0].header.region
    }

    fn lung_net(&self) -> Result<&LungNet> {
        self.lungs.as_ref().map(|l| &l.net).ok_or_else(|| {
            Error::ModelFile(
                "the model takes lung-focused input but its file carries no lung segmenter".into(),
            )
        })
    }

    /// [`Engine::frame_async`], blocking until the lung mask is read (native callers).
    pub fn frame(&self, img: DynamicImage) -> Result<Framed> {
        crate::block_on(self.frame_async(img))
    }

    /// Frames a decoded image for the networks: with lung-focused input, segments it and
    /// cuts out the lungs ([`Framed::lungs`]); otherwise keeps it whole.
    pub async fn frame_async(&self, img: DynamicImage) -> Result<Framed> {
        match self.region() {
            InputRegion::Whole => Ok(Framed::whole(img)),
            InputRegion::Lungs => {
                let mask = self
                    .lung_net()?
                    .segment_async(&img, &self.networks[0].device)
                    .await?;
                Ok(Framed::lungs(img, mask))
            }
        }
    }

    /// Turns test-time augmentation on or off for every network (the default comes from each
    /// network's file).
    pub fn with_tta(mut self, tta: bool) -> Self {
        self.networks = self.networks.into_iter().map(|n| n.with_tta(tta)).collect();
        self
    }

    /// Whether any network averages the image with its mirror image.
    pub fn tta(&self) -> bool {
        self.networks.iter().any(|n| n.tta)
    }

    /// The network whose input is largest: its view of the image is the one shown under the
    /// Grad-CAM map.
    pub fn display_network(&self) -> &Network {
        // `max_by_key` keeps the last of equals; reversed, that is the first network.
        self.networks
            .iter()
            .rev()
            .max_by_key(|n| n.input_size())
            .expect("an engine has at least one network")
    }

    /// Side of the square image the Grad-CAM map covers (the largest network input).
    pub fn input_size(&self) -> usize {
        self.display_network().input_size()
    }

    /// The architecture, or for an ensemble `ensemble of N: a + b + ...`.
    pub fn arch(&self) -> String {
        match self.networks.as_slice() {
            [one] => one.header.arch.clone(),
            many => format!(
                "ensemble of {}: {}",
                many.len(),
                many.iter()
                    .map(|n| n.header.arch.as_str())
                    .collect::<Vec<_>>()
                    .join(" + ")
            ),
        }
    }

    /// Where the backbone weights came from (the distinct sources of the networks, joined).
    pub fn weight_source(&self) -> String {
        self.distinct(|h| h.weight_source.as_str())
    }

    /// Storage precision of the weights (the distinct precisions of the networks, joined).
    pub fn weights_dtype(&self) -> String {
        self.distinct(|h| h.weights_dtype.as_str())
    }

    fn distinct<'a>(&'a self, field: impl Fn(&'a ModelHeader) -> &'a str) -> String {
        let mut seen: Vec<&str> = Vec::new();
        for n in &self.networks {
            let v = field(&n.header);
            if !seen.contains(&v) {
                seen.push(v);
            }
        }
        seen.join("; ")
    }

    /// [`Engine::preprocess_async`], blocking (native callers).
    pub fn preprocess(&self, image: &[u8]) -> Result<Input> {
        crate::block_on(self.preprocess_async(image))
    }

    /// Decodes image bytes (PNG, JPEG or DICOM) once and preprocesses them for every network
    /// (lung-focused input reads its mask back from the device).
    pub async fn preprocess_async(&self, image: &[u8]) -> Result<Input> {
        let framed = self.frame_async(preprocess::decode(image)?).await?;
        Ok(self.inputs(&framed.image))
    }

    fn inputs(&self, img: &image::DynamicImage) -> Input {
        let mut done: Vec<(&crate::arch::InputConfig, Vec<f32>)> = Vec::new();
        let mut out = Vec::with_capacity(self.networks.len());
        for n in &self.networks {
            let cfg = &n.header.input;
            let x = match done.iter().find(|(c, _)| *c == cfg) {
                Some((_, x)) => x.clone(),
                None => {
                    let x = preprocess::normalize_gray(
                        &preprocess::to_square_gray(img, cfg.resize),
                        cfg,
                    );
                    done.push((cfg, x.clone()));
                    x
                }
            };
            out.push(x);
        }
        Input(out)
    }

    /// A constant input of the right shapes (for timing).
    pub fn blank_input(&self) -> Input {
        Input(
            self.networks
                .iter()
                .map(|n| vec![0.1; 3 * n.input_size() * n.input_size()])
                .collect(),
        )
    }

    /// Decodes image bytes once into the grey view the largest network sees (for display) and
    /// the input of every network.
    pub fn view_and_input(&self, image: &[u8]) -> Result<(GrayImage, Input)> {
        let (_, view, x) = self.prepare(image)?;
        Ok((view, x))
    }

    /// Decodes and frames image bytes once: the framed image (with its lung mask under
    /// lung-focused input), the grey view the largest network sees and every network's input.
    pub fn prepare(&self, image: &[u8]) -> Result<(Framed, GrayImage, Input)> {
        let framed = self.frame(preprocess::decode(image)?)?;
        let view = preprocess::eval_view(&framed.image, &self.display_network().header.input);
        let x = self.inputs(&framed.image);
        Ok((framed, view, x))
    }

    /// Network `k`'s share of a batch of inputs.
    fn column(inputs: &[Input], k: usize) -> Vec<Vec<f32>> {
        inputs.iter().map(|x| x.0[k].clone()).collect()
    }

    /// [`Engine::classify_batch_async`], blocking until the result is read (native callers).
    pub fn classify_batch(&self, inputs: &[Input]) -> Result<Vec<Prediction>> {
        crate::block_on(self.classify_batch_async(inputs))
    }

    /// Class probabilities of a batch of preprocessed images.
    pub async fn classify_batch_async(&self, inputs: &[Input]) -> Result<Vec<Prediction>> {
        let mut per_network = Vec::with_capacity(self.networks.len());
        for (k, n) in self.networks.iter().enumerate() {
            per_network.push(n.classify_batch_async(&Self::column(inputs, k)).await?);
        }
        Ok(mean_predictions(per_network, self.population_model()))
    }

    /// [`Engine::classify_async`], blocking (native callers).
    pub fn classify(&self, image: &[u8]) -> Result<Prediction> {
        crate::block_on(self.classify_async(image))
    }

    /// Classifies one image given as encoded bytes (PNG, JPEG or DICOM).
    pub async fn classify_async(&self, image: &[u8]) -> Result<Prediction> {
        let x = self.preprocess_async(image).await?;
        Ok(self.classify_batch_async(&[x]).await?.remove(0))
    }

    /// Classifies one preprocessed image and keeps every network's Grad-CAM target
    /// activation, so that [`Engine::grad_cam`] can explain it without running the backbones
    /// again.
    pub fn classify_keeping_activations(&self, x: Input) -> Result<(Prediction, Vec<Tensor<4>>)> {
        let mut predictions = Vec::with_capacity(self.networks.len());
        let mut activations = Vec::with_capacity(self.networks.len());
        for (n, x) in self.networks.iter().zip(x.0) {
            let (p, a) = n.classify_keeping_activation(x)?;
            predictions.push(vec![p]);
            activations.push(a);
        }
        Ok((
            mean_predictions(predictions, self.population_model()).remove(0),
            activations,
        ))
    }

    /// Grad-CAM for `class` from the activations kept by
    /// [`Engine::classify_keeping_activations`].
    pub fn grad_cam(&self, activations: Vec<Tensor<4>>, class: Class) -> Result<CamMap> {
        crate::block_on(self.grad_cam_async(activations, class))
    }

    /// [`Engine::grad_cam`], awaiting each map's read from the device (the browser's form).
    pub async fn grad_cam_async(
        &self,
        activations: Vec<Tensor<4>>,
        class: Class,
    ) -> Result<CamMap> {
        let mut cams = Vec::with_capacity(self.networks.len());
        for (n, a) in self.networks.iter().zip(activations) {
            cams.push(gradcam::grad_cam_from_async(&n.model, a, class).await?);
        }
        Ok(self.mean_cam(cams))
    }

    /// One network's map as it is; several resized to the largest input and averaged.
    fn mean_cam(&self, mut cams: Vec<CamMap>) -> CamMap {
        if cams.len() == 1 {
            return cams.remove(0);
        }
        let size = self.input_size();
        let mut values = vec![0f32; size * size];
        for cam in &cams {
            for (v, u) in values.iter_mut().zip(cam.upsample(size)) {
                *v += u / cams.len() as f32;
            }
        }
        let score = cams.iter().map(|c| c.score).sum::<f32>() / cams.len() as f32;
        gradcam::normalised(values, [size, size], cams[0].class, score)
    }

    /// Grad-CAM of one image for `class` (the predicted class when `None`), with the
    /// prediction.
    pub fn explain(&self, image: &[u8], class: Option<Class>) -> Result<(Prediction, CamMap)> {
        self.explain_input(self.preprocess(image)?, class)
    }

    /// [`Engine::explain`] of a preprocessed image: each backbone is called once,
    /// classification and Grad-CAM share its activation tensor.
    pub fn explain_input(&self, x: Input, class: Option<Class>) -> Result<(Prediction, CamMap)> {
        let (prediction, activations) = self.classify_keeping_activations(x)?;
        let class = class.unwrap_or(prediction.top);
        let cam = self.grad_cam(activations, class)?;
        Ok((prediction, cam))
    }
}

/// Milliseconds spent on each part of one explained image, by the clock the caller passes to
/// [`Engine::explain_timed_async`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Decoding the bytes and preprocessing them for every network (and the displayed view).
    pub preprocess_ms: f64,
    /// Every network's forward pass and the read of its probabilities, summed.
    pub inference_ms: f64,
    /// Every network's Grad-CAM (head forward and backward, map read), and averaging the maps
    /// of an ensemble, summed.
    pub gradcam_ms: f64,
    /// Segmenting the lungs, when the model file carries a segmenter (under lung-focused
    /// input before the networks run, to find the crop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lungs_ms: Option<f64>,
    /// The same per network, in the order of the model file.
    pub members: Vec<MemberTimings>,
}

/// One network's share of [`Timings`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MemberTimings {
    /// The network's architecture.
    pub arch: String,
    /// Its forward pass and the read of its probabilities.
    pub inference_ms: f64,
    /// Its Grad-CAM.
    pub gradcam_ms: f64,
}

/// One image classified and explained, with the timings of each step.
pub struct Explanation {
    /// The grey image the largest network sees (what the map is drawn over).
    pub view: GrayImage,
    /// The (ensemble's) prediction.
    pub prediction: Prediction,
    /// The (ensemble's) Grad-CAM map.
    pub cam: CamMap,
    /// The lung fields of the image the networks saw, when the model file carries a
    /// segmenter.
    pub lungs: Option<LungMask>,
    /// Under lung-focused input, where the networks' crop lies in the decoded image.
    pub crop: Option<Rect>,
    /// How long each step took.
    pub timings: Timings,
}

impl Engine {
    /// Decodes, classifies and explains one image (the predicted class when `class` is
    /// `None`), timing every step with `clock` (milliseconds, e.g. `performance.now()` in the
    /// browser). Reads asynchronously, so it runs on every backend, WebGPU included.
    pub async fn explain_timed_async(
        &self,
        image: &[u8],
        class: Option<Class>,
        clock: impl Fn() -> f64,
    ) -> Result<Explanation> {
        let mut timings = Timings::default();
        let t0 = clock();
        let img = preprocess::decode(image)?;
        let decode_ms = clock() - t0;
        let framed = if self.region() == InputRegion::Lungs {
            let t = clock();
            let framed = self.frame_async(img).await?;
            timings.lungs_ms = Some(clock() - t);
            framed
        } else {
            Framed::whole(img)
        };
        let t = clock();
        let view = preprocess::eval_view(&framed.image, &self.display_network().header.input);
        let x = self.inputs(&framed.image);
        timings.preprocess_ms = decode_ms + clock() - t;
        let mut predictions = Vec::with_capacity(self.networks.len());
        let mut activations = Vec::with_capacity(self.networks.len());
        for (n, x) in self.networks.iter().zip(x.0) {
            let t = clock();
            let (p, a) = n.classify_keeping_activation_async(x).await?;
            predictions.push(vec![p]);
            activations.push(a);
            timings.members.push(MemberTimings {
                arch: n.header.arch.clone(),
                inference_ms: clock() - t,
                gradcam_ms: 0.0,
            });
        }
        let prediction = mean_predictions(predictions, self.population_model()).remove(0);
        let class = class.unwrap_or(prediction.top);
        let mut cams = Vec::with_capacity(self.networks.len());
        for ((n, a), m) in self
            .networks
            .iter()
            .zip(activations)
            .zip(&mut timings.members)
        {
            let t = clock();
            cams.push(gradcam::grad_cam_from_async(&n.model, a, class).await?);
            m.gradcam_ms = clock() - t;
        }
        let t = clock();
        let cam = self.mean_cam(cams);
        let combine_ms = clock() - t;
        timings.inference_ms = timings.members.iter().map(|m| m.inference_ms).sum();
        timings.gradcam_ms = timings.members.iter().map(|m| m.gradcam_ms).sum::<f64>() + combine_ms;
        let crop = framed.crop;
        let lungs = match (framed.lungs, &self.lungs) {
            (Some(mask), _) => Some(mask),
            (None, None) => None,
            (None, Some(l)) => {
                let t = clock();
                let mask = l
                    .net
                    .segment_async(&framed.image, &self.networks[0].device)
                    .await?;
                timings.lungs_ms = Some(clock() - t);
                Some(mask)
            }
        };
        Ok(Explanation {
            view,
            prediction,
            cam,
            lungs,
            crop,
            timings,
        })
    }
}

/// Combines per-network predictions (`[network][image]`) image by image: the mean of the
/// probabilities, of the out-of-distribution scores and of the adult probabilities of the
/// networks that have them; the caution is decided anew for the combined class by
/// `population` (the first member's, whose training data every member shares).
fn mean_predictions(
    mut per_network: Vec<Vec<Prediction>>,
    population: Option<&PopulationModel>,
) -> Vec<Prediction> {
    if per_network.len() == 1 {
        return per_network.remove(0);
    }
    let n = per_network.len() as f32;
    (0..per_network[0].len())
        .map(|i| {
            let mut probabilities = [0f32; NUM_CLASSES];
            for net in &per_network {
                for (p, q) in probabilities.iter_mut().zip(net[i].probabilities) {
                    *p += q / n;
                }
            }
            let mut combined = Prediction::from_probabilities(probabilities);
            let scores: Vec<f32> = per_network
                .iter()
                .filter_map(|net| net[i].ood.map(|o| o.score))
                .collect();
            if !scores.is_empty() {
                let score = scores.iter().sum::<f32>() / scores.len() as f32;
                combined.ood = Some(OodScore {
                    score,
                    flagged: score > 1.0 || score.is_nan(),
                });
            }
            let adult: Vec<f32> = per_network
                .iter()
                .filter_map(|net| net[i].population.map(|p| p.adult_probability))
                .collect();
            match population {
                Some(m) if !adult.is_empty() => {
                    combined.with_population(m, adult.iter().sum::<f32>() / adult.len() as f32)
                }
                _ => combined,
            }
        })
        .collect()
}

fn read_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::DeviceRead {
        what: "the probabilities",
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch;
    use crate::model_file::EnsembleFile;

    /// A random-init model file of `arch` (a distinct random network each call).
    fn member(arch: &str) -> ModelFile {
        let spec = arch::find(arch).unwrap();
        ModelFile::from_classifier(
            crate::model_file::tests::header_of(arch),
            crate::model::Classifier::new(&spec, &Device::flex()),
        )
        .unwrap()
    }

    fn png() -> Vec<u8> {
        let img = image::GrayImage::from_fn(300, 260, |x, y| {
            image::Luma([((x * 7 + y * 3) % 251) as u8])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn an_ensemble_answers_with_the_mean_of_its_networks() {
        let device = Device::flex();
        let (a, b) = (member("efficientnet_lite0"), member("efficientnet_lite1"));
        let one = |f: &ModelFile| Engine::load(&f.to_bytes(), device.clone()).unwrap();
        let (ea, eb) = (one(&a), one(&b));
        let both = EnsembleFile::new(vec![a, b], serde_json::Value::Null, serde_json::Value::Null)
            .unwrap()
            .to_bytes();
        let e = Engine::load(&both, device.clone()).unwrap();
        assert_eq!(
            e.arch(),
            "ensemble of 2: efficientnet_lite0 + efficientnet_lite1"
        );
        assert_eq!(e.input_size(), 240, "the larger input shows the map");
        let image = png();
        let (pa, pb, p) = (
            ea.classify(&image).unwrap(),
            eb.classify(&image).unwrap(),
            e.classify(&image).unwrap(),
        );
        for k in 0..NUM_CLASSES {
            let mean = (pa.probabilities[k] + pb.probabilities[k]) / 2.0;
            assert!(
                (p.probabilities[k] - mean).abs() < 1e-6,
                "{p:?} vs {pa:?}, {pb:?}"
            );
        }
        // Grad-CAM: the mean of the two maps for the same class, at 240x240, maximum 1.
        let class = Class::Viral;
        let (_, ca) = ea.explain(&image, Some(class)).unwrap();
        let (_, cb) = eb.explain(&image, Some(class)).unwrap();
        let (_, c) = e.explain(&image, Some(class)).unwrap();
        assert_eq!((c.width, c.height, c.class), (240, 240, class));
        let mut want: Vec<f32> = ca
            .upsample(240)
            .iter()
            .zip(cb.upsample(240))
            .map(|(u, v)| (u + v) / 2.0)
            .collect();
        let max = want.iter().cloned().fold(0f32, f32::max);
        if max > 0.0 {
            want.iter_mut().for_each(|v| *v /= max);
        }
        let diff = want
            .iter()
            .zip(&c.values)
            .map(|(u, v)| (u - v).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "ensemble map differs from the mean by {diff}");
        // Out-of-distribution: the mean of the networks' scores, flagged above 1.
        let with = |s: f32| Prediction {
            ood: Some(OodScore {
                score: s,
                flagged: s > 1.0,
            }),
            ..pa.clone()
        };
        let m = mean_predictions(vec![vec![with(0.5)], vec![with(1.7)]], None).remove(0);
        assert_eq!(
            m.ood,
            Some(OodScore {
                score: 1.1,
                flagged: true
            })
        );
    }

    /// A lung section: carried by single files and ensembles, its encoder the named network's
    /// backbone, refused when damaged, truncated or naming the wrong network.
    #[test]
    fn lung_focused_input_needs_its_segmenter_and_one_region_per_ensemble() {
        let device = Device::flex();
        let mut focused = member("efficientnet_lite0");
        focused.header.region = InputRegion::Lungs;
        let e = Engine::load(&focused.to_bytes(), device.clone()).unwrap();
        assert_eq!(e.region(), InputRegion::Lungs);
        let err = e.classify(&png()).unwrap_err().to_string();
        assert!(err.contains("carries no lung segmenter"), "{err}");
        let mixed = EnsembleFile::new(
            vec![focused, member("efficientnet_lite1")],
            serde_json::Value::Null,
            serde_json::Value::Null,
        )
        .unwrap()
        .to_bytes();
        let err = Engine::load(&mixed, device).err().unwrap().to_string();
        assert!(err.contains("different parts of the image"), "{err}");
    }

    #[test]
    fn a_lung_section_rides_in_the_model_file() {
        use crate::lungs::LungsSection;
        let device = Device::flex();
        let decoder = LungDecoder::new(&device);
        let bytes = decoder.clone().to_bytes().unwrap();
        let section = |k: usize| LungsSection {
            encoder_network: k,
            segmenter: crate::lungs::test_header(),
        };
        let x = Tensor::<4>::from_data(
            TensorData::new(
                (0..3 * 64 * 64)
                    .map(|i| ((i % 97) as f32 / 48.0) - 1.0)
                    .collect(),
                [1, 3, 64, 64],
            ),
            &device,
        );
        let expect = |e: &Engine, k: usize| {
            let Backbone::EfficientNetLite(enc) = &e.networks[k].model.backbone else {
                panic!("a Lite backbone")
            };
            let want = LungNet::from_parts(enc.clone(), decoder.clone()).forward(x.clone());
            let got = e
                .lungs
                .as_ref()
                .expect("a segmenter")
                .net
                .forward(x.clone());
            let d = (got - want).abs().max().into_scalar::<f32>();
            assert!(d < 1e-6, "embedded segmenter differs by {d}");
        };
        // A single network.
        let single = member("efficientnet_lite0");
        let plain = single.to_bytes();
        let with = single
            .clone()
            .with_lungs(section(0), bytes.clone())
            .to_bytes();
        let e = Engine::load(&with, device.clone()).unwrap();
        expect(&e, 0);
        assert!(
            Engine::load(&plain, device.clone())
                .unwrap()
                .lungs
                .is_none()
        );
        // The last byte is the decoder's: a flip is named, a cut is refused.
        let mut bad = with.clone();
        *bad.last_mut().unwrap() ^= 1;
        let err = Engine::load(&bad, device.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("lung segmenter weights are corrupt"), "{err}");
        let err = Engine::load(&with[..with.len() - 1], device.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("of lung segmenter"), "{err}");
        // An ensemble whose second network is the encoder.
        let ens = EnsembleFile::new(
            vec![member("efficientnet_lite1"), member("efficientnet_lite0")],
            serde_json::Value::Null,
            serde_json::Value::Null,
        )
        .unwrap();
        let e = Engine::load(
            &ens.clone().with_lungs(section(1), bytes.clone()).to_bytes(),
            device.clone(),
        )
        .unwrap();
        expect(&e, 1);
        let err = Engine::load(
            &ens.clone().with_lungs(section(0), bytes.clone()).to_bytes(),
            device.clone(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("must be efficientnet_lite0"), "{err}");
        let err = Engine::load(&ens.with_lungs(section(2), bytes).to_bytes(), device)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("names network 3"), "{err}");
    }
}
