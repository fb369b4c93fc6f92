//! Loading a model file and running it: classification and Grad-CAM from image bytes.

use crate::arch::global_avg_pool;
use crate::classes::{Class, NUM_CLASSES};
use crate::error::{Error, Result};
use crate::gradcam::{self, CamMap};
use crate::model::Classifier;
use crate::model_file::{ModelFile, ModelHeader};
use crate::ood::OodScore;
use crate::preprocess;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use image::GrayImage;
use serde::Serialize;

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
}

impl Prediction {
    /// Builds a prediction from one row of logits.
    pub fn from_logits(logits: &[f32]) -> Self {
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        let mut probabilities = [0f32; NUM_CLASSES];
        for (p, e) in probabilities.iter_mut().zip(&exp) {
            *p = e / sum;
        }
        Self::from_probabilities(probabilities)
    }

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
        }
    }
}

/// A loaded model ready to classify and explain images.
pub struct Engine {
    /// What the model file says about itself.
    pub header: ModelHeader,
    /// The network.
    pub model: Classifier,
    /// Where it runs.
    pub device: Device,
    /// Test-time augmentation: average the probabilities of the image and its mirror image.
    pub tta: bool,
}

impl Engine {
    /// Parses, verifies and loads a model file.
    pub fn load(bytes: &[u8], device: Device) -> Result<Self> {
        let file = ModelFile::from_bytes(bytes)?;
        let model = file.load_classifier(&device)?;
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
        if self.header.ood.is_some() {
            Tensor::cat(vec![probabilities, pooled], 1)
        } else {
            probabilities
        }
    }

    /// Splits the rows read back from [`Engine::outputs`] into predictions.
    fn predictions(&self, data: TensorData) -> Result<Vec<Prediction>> {
        let data: Vec<f32> = data.try_to_vec().map_err(read_error)?;
        let width = NUM_CLASSES + self.header.ood.as_ref().map_or(0, |o| o.dim);
        Ok(data
            .chunks(width)
            .map(|row| {
                let mut p = Prediction::from_probabilities([row[0], row[1], row[2], row[3]]);
                p.ood = self
                    .header
                    .ood
                    .as_ref()
                    .map(|o| o.score(&row[NUM_CLASSES..]));
                p
            })
            .collect())
    }

    /// Class probabilities of a batch of preprocessed images. Reads synchronously; use
    /// [`Engine::classify_batch_async`] on WebGPU.
    pub fn classify_batch(&self, images: &[Vec<f32>]) -> Result<Vec<Prediction>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        self.predictions(self.outputs(images).try_into_data().map_err(read_error)?)
    }

    /// [`Engine::classify_batch`] with asynchronous reads (the only kind WebGPU allows).
    pub async fn classify_batch_async(&self, images: &[Vec<f32>]) -> Result<Vec<Prediction>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let data = self.outputs(images).into_data_async().await;
        self.predictions(data.map_err(read_error)?)
    }

    /// Classifies one image given as encoded bytes (PNG, JPEG or DICOM).
    pub fn classify(&self, image: &[u8]) -> Result<Prediction> {
        let x = self.preprocess(image)?;
        Ok(self.classify_batch(&[x])?.remove(0))
    }

    /// [`Engine::classify`] with asynchronous reads.
    pub async fn classify_async(&self, image: &[u8]) -> Result<Prediction> {
        let x = self.preprocess(image)?;
        Ok(self.classify_batch_async(&[x]).await?.remove(0))
    }

    /// Decodes image bytes once into the grey `crop`x`crop` view the network sees (for
    /// display) and its normalised `[3, crop, crop]` input.
    pub fn view_and_input(&self, image: &[u8]) -> Result<(GrayImage, Vec<f32>)> {
        let img = preprocess::decode(image)?;
        let view = preprocess::eval_view(&img, &self.header.input);
        let x = preprocess::normalize_gray(&view, &self.header.input);
        Ok((view, x))
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

    /// Classifies one preprocessed image and keeps its Grad-CAM target activation, so that
    /// [`gradcam::grad_cam_from`] can explain it without running the backbone again.
    pub fn classify_keeping_activation(&self, x: Vec<f32>) -> Result<(Prediction, Tensor<4>)> {
        let (activation, probs) = self.activation(&x);
        let prediction = match probs {
            Some(p) => self.predictions(p.try_into_data().map_err(read_error)?)?,
            None => self.classify_batch(&[x])?,
        };
        Ok((
            prediction.into_iter().next().expect("one image"),
            activation,
        ))
    }

    /// [`Engine::classify_keeping_activation`] with asynchronous reads (the only kind WebGPU
    /// allows).
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

    /// [`Engine::explain`] of a preprocessed image: the backbone is called once, classification
    /// and Grad-CAM share its activation tensor. (A lazily evaluating backend may still
    /// recompute it: in the browser the Grad-CAM step took as long as before this sharing.)
    pub fn explain_input(&self, x: Vec<f32>, class: Option<Class>) -> Result<(Prediction, CamMap)> {
        let (prediction, activation) = self.classify_keeping_activation(x)?;
        let class = class.unwrap_or(prediction.top);
        let cam = gradcam::grad_cam_from(&self.model, activation, class.index())?;
        Ok((prediction, cam))
    }
}

fn read_error(e: impl std::fmt::Debug) -> Error {
    Error::Invalid(format!(
        "cannot read the probabilities back from the device: {e:?}"
    ))
}
