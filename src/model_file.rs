//! The self-describing model file written by `pneumoscope export` and read by every verb and by
//! the browser library.
//!
//! Layout (all integers little-endian):
//!
//! | bytes | content |
//! |---|---|
//! | 12 | magic `PNEUMOSCOPE\0` |
//! | 4  | format version (`u32`, currently [`FORMAT_VERSION`]) |
//! | 4  | header length `n` (`u32`) |
//! | n  | header: UTF-8 JSON, [`ModelHeader`] |
//! | rest | payload: the classifier's weights as a Burn burnpack record |
//!
//! The header carries the SHA-256 and length of the payload, which are checked before anything
//! is decoded. The payload is data only (tensors and their names): loading a model file never
//! executes anything from it.

use crate::arch::{self, InputConfig};
use crate::classes::Class;
use crate::error::{Error, Result};
use crate::model::Classifier;
use crate::ood::OodStats;
use burn::module::Module;
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File magic.
pub const MAGIC: &[u8; 12] = b"PNEUMOSCOPE\0";
/// Current format version.
pub const FORMAT_VERSION: u32 = 1;
/// Largest header accepted, in bytes.
const MAX_HEADER: u32 = 16 << 20;

/// Everything a model file says about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelHeader {
    /// Format version (repeated from the binary prefix for readers of the JSON alone).
    pub format_version: u32,
    /// Architecture name in the registry.
    pub arch: String,
    /// Class names in output order.
    pub classes: Vec<Class>,
    /// Input transform.
    pub input: InputConfig,
    /// Grad-CAM target layer.
    pub gradcam_layer: String,
    /// Storage precision of the weights in the payload (`f32` or `f16`).
    pub weights_dtype: String,
    /// Where the backbone weights came from (e.g. `imagenet:<file> sha256:<hex>` or
    /// `random-init`).
    pub weight_source: String,
    /// Training protocol and settings (free-form JSON written by the trainer).
    pub training: serde_json::Value,
    /// Summary of the data the model was trained on (free-form JSON).
    pub data: serde_json::Value,
    /// Evaluation metrics (free-form JSON).
    pub metrics: serde_json::Value,
    /// Optional extras (test-time augmentation default, notes, ...).
    #[serde(default)]
    pub extra: serde_json::Value,
    /// Out-of-distribution statistics of the training features, when fitted at export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ood: Option<OodStats>,
    /// Version of the software that wrote the file.
    pub created_by: String,
    /// Length of the payload in bytes.
    pub payload_len: u64,
    /// SHA-256 of the payload, lowercase hex.
    pub payload_sha256: String,
}

/// A model file in memory.
#[derive(Clone, Debug)]
pub struct ModelFile {
    /// The header.
    pub header: ModelHeader,
    /// The weights (burnpack bytes).
    pub payload: Vec<u8>,
}

/// Lowercase hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl ModelFile {
    /// Packs a classifier and its description. `header.payload_len` and
    /// `header.payload_sha256` are filled in here.
    pub fn from_classifier(mut header: ModelHeader, model: Classifier) -> Result<Self> {
        let bytes = model
            .into_record()
            .into_bytes()
            .map_err(|e| Error::ModelFile(format!("cannot serialise the weights: {e:?}")))?;
        let payload: Vec<u8> = bytes.to_vec();
        header.format_version = FORMAT_VERSION;
        header.payload_len = payload.len() as u64;
        header.payload_sha256 = sha256_hex(&payload);
        Ok(Self { header, payload })
    }

    /// Serialises the file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = serde_json::to_vec_pretty(&self.header).expect("header serialises");
        let mut out = Vec::with_capacity(20 + header.len() + self.payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.payload);
        out
    }

    /// The header alone (magic, version and JSON checked; the payload neither copied nor
    /// verified): enough to decide how to load the file.
    pub fn read_header(bytes: &[u8]) -> Result<ModelHeader> {
        let (header, _) = Self::split(bytes)?;
        Ok(header)
    }

    /// Magic, version and header of a file, and its payload.
    fn split(bytes: &[u8]) -> Result<(ModelHeader, &[u8])> {
        let bad = |m: String| Error::ModelFile(m);
        if bytes.len() < 20 || &bytes[..12] != MAGIC {
            return Err(bad(
                "not a Pneumoscope model file (wrong magic bytes; expected a file written by \
                 `pneumoscope export`)"
                    .into(),
            ));
        }
        let version = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
        if version != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {version} is not supported (this build reads version {FORMAT_VERSION})"
            )));
        }
        let hlen = u32::from_le_bytes(bytes[16..20].try_into().unwrap());
        if hlen > MAX_HEADER || 20 + hlen as usize > bytes.len() {
            return Err(bad(format!(
                "truncated header (declares {hlen} bytes, the file has {} after the prefix)",
                bytes.len() - 20
            )));
        }
        let header: ModelHeader = serde_json::from_slice(&bytes[20..20 + hlen as usize])
            .map_err(|e| bad(format!("unreadable header: {e}")))?;
        Ok((header, &bytes[20 + hlen as usize..]))
    }

    /// Parses and verifies a file: magic, version, header, payload length and checksum, known
    /// architecture and class order. The weights themselves are decoded by
    /// [`ModelFile::load_classifier`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |m: String| Error::ModelFile(m);
        let (header, payload) = Self::split(bytes)?;
        if payload.len() as u64 != header.payload_len {
            return Err(bad(format!(
                "truncated or padded weights (expected {} bytes, found {})",
                header.payload_len,
                payload.len()
            )));
        }
        let sum = sha256_hex(payload);
        if sum != header.payload_sha256 {
            return Err(bad(format!(
                "checksum mismatch (the weights are corrupt: sha256 {sum}, expected {})",
                header.payload_sha256
            )));
        }
        let spec = arch::find(&header.arch).map_err(|e| bad(e.to_string()))?;
        if let Some(ood) = &header.ood {
            ood.validate(spec.feature_dim).map_err(bad)?;
        }
        if header.classes != Class::ALL {
            return Err(bad(format!(
                "unexpected classes {:?} (expected normal, bacterial, viral, covid19)",
                header.classes
            )));
        }
        Ok(Self {
            header,
            payload: payload.to_vec(),
        })
    }

    /// Builds the classifier the file describes and loads its weights on `device`.
    pub fn load_classifier(&self, device: &Device) -> Result<Classifier> {
        let spec = arch::find(&self.header.arch)?;
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(self.payload.clone()))
            .map_err(|e| Error::ModelFile(format!("unreadable weights: {e:?}")))?;
        let model = Classifier::new(&spec, device)
            .try_load_record(record.cast_to_module_dtype())
            .map_err(|e| {
                Error::ModelFile(format!(
                    "the weights do not fit architecture {}: {e:?}",
                    self.header.arch
                ))
            })?;
        // Inference state: dropout off, batch norm on running statistics, whatever the input.
        Ok(model.valid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch;

    fn header() -> ModelHeader {
        let spec = arch::find("efficientnet_lite0").unwrap();
        ModelHeader {
            format_version: FORMAT_VERSION,
            arch: spec.name.into(),
            classes: Class::ALL.to_vec(),
            input: spec.input.clone(),
            gradcam_layer: spec.gradcam_layer.into(),
            weights_dtype: "f32".into(),
            weight_source: "random-init".into(),
            training: serde_json::Value::Null,
            data: serde_json::Value::Null,
            metrics: serde_json::Value::Null,
            extra: serde_json::Value::Null,
            ood: None,
            created_by: "test".into(),
            payload_len: 0,
            payload_sha256: String::new(),
        }
    }

    #[test]
    fn round_trip_gives_identical_outputs_and_damage_is_caught() {
        let device = Device::flex();
        let spec = arch::find("efficientnet_lite0").unwrap();
        let model = Classifier::new(&spec, &device);
        let x = Tensor::<4>::random([1, 3, 64, 64], burn::tensor::Distribution::Default, &device);
        let before: Vec<f32> = model.forward(x.clone()).into_data().try_to_vec().unwrap();
        let bytes = ModelFile::from_classifier(header(), model)
            .unwrap()
            .to_bytes();
        let loaded = ModelFile::from_bytes(&bytes)
            .unwrap()
            .load_classifier(&device)
            .unwrap();
        let after: Vec<f32> = loaded.forward(x).into_data().try_to_vec().unwrap();
        assert_eq!(before, after);

        let mut flipped = bytes.clone();
        let n = flipped.len() - 10;
        flipped[n] ^= 1;
        assert!(
            ModelFile::from_bytes(&flipped)
                .unwrap_err()
                .to_string()
                .contains("checksum")
        );
        assert!(
            ModelFile::from_bytes(&bytes[..bytes.len() - 1])
                .unwrap_err()
                .to_string()
                .contains("truncated")
        );
        assert!(
            ModelFile::from_bytes(b"PK\x03\x04 zip")
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
        let mut other = header();
        other.arch = "resnet9000".into();
        let foreign = ModelFile {
            header: other,
            payload: vec![],
        };
        let mut f = foreign.clone();
        f.header.payload_sha256 = sha256_hex(&[]);
        assert!(
            ModelFile::from_bytes(&f.to_bytes())
                .unwrap_err()
                .to_string()
                .contains("unknown architecture")
        );
    }
}
