//! The lung-segmenter file: its header, the lung section a classifier's file carries, and
//! reading and writing both.

use super::net::*;
use super::*;
use crate::error::{Error, Result};
use crate::model_file::{self, MAGIC, sha256_hex};
use burn::module::Module;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// What a lung file holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LungsKind {
    /// A lung segmenter.
    #[default]
    #[serde(rename = "lung segmenter")]
    LungSegmenter,
}

/// What a lung-segmenter file says about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LungsHeader {
    /// Format version ([`LUNGS_FORMAT_VERSION`]).
    pub format_version: u32,
    /// What the file holds (written `"lung segmenter"`).
    pub kind: LungsKind,
    /// Encoder architecture ([`ENCODER`]).
    pub encoder: String,
    /// Side of the square input (aspect not kept).
    pub input_side: usize,
    /// Side of the predicted grid.
    pub mask_side: usize,
    /// Storage precision of the weights.
    pub weights_dtype: model_file::WeightsDtype,
    /// Where the encoder weights came from.
    pub weight_source: String,
    /// Training settings and data (free-form JSON).
    pub training: serde_json::Value,
    /// Held-out Dice and IoU (free-form JSON).
    pub metrics: serde_json::Value,
    /// Version of the software that wrote the file.
    pub created_by: String,
    /// Length of the payload in bytes.
    pub payload_len: u64,
    /// SHA-256 of the payload, lowercase hex.
    pub payload_sha256: String,
}

impl LungsHeader {
    /// Checks that this build can run the segmenter the header describes.
    pub fn check(&self) -> Result<()> {
        if self.encoder != ENCODER || self.input_side != INPUT_SIDE || self.mask_side != MASK_SIDE {
            return Err(Error::ModelFile(format!(
                "unsupported segmenter ({} at {} px, grid {}; this build reads {ENCODER} at \
                 {INPUT_SIDE} px, grid {MASK_SIDE})",
                self.encoder, self.input_side, self.mask_side
            )));
        }
        Ok(())
    }
}

/// A lung segmenter carried inside a classifier's model file: the decoder's weights only, after
/// the classifier's payload; the encoder is the backbone of one of the file's networks, an
/// EfficientNet-Lite0 whose backbone the decoder was trained on (ImageNet's, kept frozen in the
/// classifier's training, or the classifier's own fine-tuned one with `lungs train
/// --encoder-model`), so the segmenter adds about 0.1 MB (f16) and the page still downloads one
/// file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LungsSection {
    /// The network of the file (0-based, in file order) whose backbone is the encoder.
    pub encoder_network: usize,
    /// The segmenter's description, as in its own file; `payload_len` and `payload_sha256`
    /// are those of the decoder's weights.
    pub segmenter: LungsHeader,
}

/// A lung segmenter ready to run beside a classifier: its description and its network.
pub struct Lungs {
    /// What the segmenter says about itself.
    pub header: LungsHeader,
    /// The network (encoder shared with a classifier's backbone, batch norms folded).
    pub net: LungNet,
}

/// A lung-segmenter file: the model-file prefix with version [`LUNGS_FORMAT_VERSION`], a
/// [`LungsHeader`] and the [`LungNet`]'s weights (a Burn record).
#[derive(Clone, Debug)]
pub struct LungsFile {
    /// The header.
    pub header: LungsHeader,
    /// The weights.
    pub payload: Vec<u8>,
    /// The format it was read in (the current one for a file built in memory).
    pub format: model_file::Format,
}

impl model_file::Versioned for LungsHeader {
    fn format_version(&self) -> u32 {
        self.format_version
    }
}

impl LungsFile {
    /// Packs a segmenter. The header's length and checksum are filled in here.
    pub fn new(header: LungsHeader, model: LungNet) -> Result<Self> {
        let payload = model_file::record_bytes(model, "the weights")?;
        let header = LungsHeader {
            format_version: LUNGS_FORMAT_VERSION,
            payload_len: payload.len() as u64,
            payload_sha256: sha256_hex(&payload),
            ..header
        };
        Ok(Self {
            header,
            payload,
            format: model_file::Format::of(LUNGS_FORMAT_VERSION).expect("current version"),
        })
    }

    /// Serialises the file in the current format (version, length and checksum derived from
    /// the weights).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut header = self.header.clone();
        header.format_version = LUNGS_FORMAT_VERSION;
        header.payload_len = self.payload.len() as u64;
        header.payload_sha256 = sha256_hex(&self.payload);
        model_file::assemble(LUNGS_FORMAT_VERSION, &header, &[&self.payload])
    }

    /// Parses and verifies a file: prefix, version, the header's seal, payload length and
    /// checksum, and the segmenter's shape.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 20 || &bytes[..12] != MAGIC {
            return Err(Error::ModelFile(
                "not a Pneumoscope file (wrong magic bytes; expected a lung segmenter written \
                 by `pneumoscope lungs train`)"
                    .into(),
            ));
        }
        let format = model_file::verified_format(bytes)?;
        if format.kind != model_file::FileKind::LungSegmenter {
            return Err(Error::ModelFile(format!(
                "format version {} is not a lung segmenter (version \
                 {LUNGS_FORMAT_VERSION}); is this a classifier's model file?",
                format.version
            )));
        }
        let parsed: model_file::Parsed<'_, LungsHeader> = model_file::split_header(bytes)?;
        let (header, payload) = (parsed.header, parsed.rest);
        model_file::verify_payload(
            payload,
            header.payload_len,
            &header.payload_sha256,
            "weights",
        )?;
        header.check()?;
        Ok(Self {
            header,
            payload: payload.to_vec(),
            format,
        })
    }

    /// Builds the segmenter and loads its weights on `device`, batch norms folded (inference).
    pub fn load(&self, device: &Device) -> Result<LungNet> {
        let record = crate::int8::record(&self.payload, "unreadable segmenter weights")?;
        let net = LungNet::new(device)
            .try_load_record(record.cast_to_module_dtype())
            .map_err(|source| Error::Record {
                what: "the weights do not fit the lung segmenter".into(),
                source,
            })?;
        Ok(net.valid().fold_batchnorm())
    }
}

/// A random-init segmenter's header for tests (length and checksum filled in by the file).
#[cfg(test)]
pub(crate) fn test_header() -> LungsHeader {
    LungsHeader {
        format_version: LUNGS_FORMAT_VERSION,
        kind: LungsKind::LungSegmenter,
        encoder: ENCODER.into(),
        input_side: INPUT_SIDE,
        mask_side: MASK_SIDE,
        weights_dtype: model_file::WeightsDtype::F32,
        weight_source: "random-init".into(),
        training: serde_json::Value::Null,
        metrics: serde_json::Value::Null,
        created_by: "test".into(),
        payload_len: 0,
        payload_sha256: String::new(),
    }
}
