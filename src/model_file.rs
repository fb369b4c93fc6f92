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
//! | 32 | SHA-256 of the 20 bytes above and the header (the header's seal) |
//! | n  | header: UTF-8 JSON, [`ModelHeader`] |
//! | `payload_len` | payload: the classifier's weights as a Burn burnpack record |
//! | rest | optional lung section: a lung segmenter's decoder (see below) |
//!
//! **Every byte is covered by one chain of SHA-256 checksums, checked before any value of the
//! header is used.** The seal covers the prefix and the header; the header carries the length
//! and SHA-256 of the payload (and of each part after it), which are checked before anything is
//! decoded. A damaged or edited file is refused with a message that names the part: the
//! header, the weights, a member of an ensemble, the lung segmenter. The header's values are
//! then checked too (sizes, ranges, finite numbers, class order), so a file written by a buggy
//! exporter gets a clear error rather than strange numbers. The payload is data only (tensors
//! and their names): loading a model file never executes anything from it.
//!
//! Files of the earlier format versions (1, 2 and 3: the same layout without the seal) still
//! load; their header cannot be verified, which [`Format::notice`] says ("header not verified
//! (format v1)") and the CLI and the page repeat. `pneumoscope upgrade` rewrites such a file in
//! the current format.
//!
//! An **ensemble file** (written by `pneumoscope ensemble`) has the same prefix with format
//! version [`ENSEMBLE_FORMAT_VERSION`]; its header is an [`EnsembleHeader`] and its payload the
//! complete single-network model files of its members, one after the other. Each member keeps
//! its own header and checksum; the ensemble header lists their lengths and checksums too, and
//! the checksum of the whole payload. A reader that knows only single networks refuses such a
//! file with a clear message instead of misreading it.
//!
//! Either kind may carry a **lung segmenter** ([`crate::lungs::LungsSection`] in the header's
//! `lungs`): the weights of its decoder follow the payload, with their own length and
//! SHA-256; its encoder is the backbone of one of the file's networks, named by position.

use crate::arch::{self, InputConfig};
use crate::classes::Class;
use crate::error::{Error, Result};
use crate::lungs::LungsSection;
use crate::model::Classifier;
use crate::ood::OodStats;
use crate::population::PopulationModel;
use crate::preprocess::InputRegion;
use burn::module::Module;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File magic.
pub const MAGIC: &[u8; 12] = b"PNEUMOSCOPE\0";
/// Format version of a single-network model file.
pub const FORMAT_VERSION: u32 = 4;
/// Format version of an ensemble file (several single-network files in one).
pub const ENSEMBLE_FORMAT_VERSION: u32 = 5;
/// Largest header accepted, in bytes.
const MAX_HEADER: u32 = 16 << 20;
/// Length of the prefix before the seal: magic, version, header length.
const PREFIX: usize = 20;
/// Length of the seal (a SHA-256).
const SEAL: usize = 32;

/// What a file holds, as its format version says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// One classifier network ([`ModelFile`]).
    Network,
    /// Several classifier networks ([`EnsembleFile`]).
    Ensemble,
    /// A lung segmenter on its own ([`crate::lungs::LungsFile`]).
    LungSegmenter,
}

/// A format version this build reads: what kind of file it is, and whether its header is
/// sealed by a checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    /// The version number in the file's prefix.
    pub version: u32,
    /// What the file holds.
    pub kind: FileKind,
    /// Whether a SHA-256 of the prefix and header follows the prefix (versions 4 to 6); the
    /// earlier versions 1 to 3 have the same layout without it.
    pub sealed: bool,
}

impl Format {
    /// The format of a version number, if this build reads it.
    pub fn of(version: u32) -> Option<Self> {
        use FileKind::*;
        let (kind, sealed) = match version {
            1 => (Network, false),
            2 => (Ensemble, false),
            3 => (LungSegmenter, false),
            FORMAT_VERSION => (Network, true),
            ENSEMBLE_FORMAT_VERSION => (Ensemble, true),
            crate::lungs::LUNGS_FORMAT_VERSION => (LungSegmenter, true),
            _ => return None,
        };
        Some(Self {
            version,
            kind,
            sealed,
        })
    }

    /// The version this build writes for a kind of file.
    pub fn current(kind: FileKind) -> u32 {
        match kind {
            FileKind::Network => FORMAT_VERSION,
            FileKind::Ensemble => ENSEMBLE_FORMAT_VERSION,
            FileKind::LungSegmenter => crate::lungs::LUNGS_FORMAT_VERSION,
        }
    }

    /// What a reader should be told about a file of this format: nothing for a sealed one;
    /// "header not verified (format vN)" for an earlier one.
    pub fn notice(&self) -> Option<String> {
        (!self.sealed).then(|| {
            format!(
                "header not verified (format v{}; `pneumoscope upgrade` rewrites it as v{})",
                self.version,
                Self::current(self.kind)
            )
        })
    }

    /// Where the header starts.
    fn header_start(&self) -> usize {
        if self.sealed { PREFIX + SEAL } else { PREFIX }
    }
}

/// The format version written in a header, checked against the file's prefix.
pub(crate) trait Versioned {
    /// The header's `format_version`.
    fn format_version(&self) -> u32;
}

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
    /// Storage precision of the weights in the payload.
    pub weights_dtype: WeightsDtype,
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
    /// The child/adult estimate and the training images per class and population, when
    /// fitted at export (see [`crate::population`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub population: Option<PopulationModel>,
    /// A lung segmenter whose decoder follows the payload (see [`LungsSection`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lungs: Option<LungsSection>,
    /// The part of the image the network is given (absent: the whole image). Lung-focused
    /// input needs the file's lung segmenter.
    #[serde(default, skip_serializing_if = "InputRegion::is_whole")]
    pub region: InputRegion,
    /// Version of the software that wrote the file.
    pub created_by: String,
    /// Length of the payload in bytes (the weights; a lung section follows it).
    pub payload_len: u64,
    /// SHA-256 of the payload, lowercase hex.
    pub payload_sha256: String,
}

/// Largest input side a header may ask for, in pixels.
const MAX_SIDE: usize = 2048;
/// Smallest input side a header may ask for, in pixels.
const MIN_SIDE: usize = 16;

impl ModelHeader {
    /// The header every model file of `spec` starts from: the current format, the four classes,
    /// the architecture's input transform and Grad-CAM layer, f32 weights, no statistics and
    /// an empty payload (which [`ModelFile::from_classifier`] fills in). Callers set training,
    /// data, metrics and extras with struct update syntax.
    pub fn new(
        spec: &arch::ArchSpec,
        weight_source: impl Into<String>,
        created_by: impl Into<String>,
    ) -> Self {
        ModelHeader {
            format_version: FORMAT_VERSION,
            arch: spec.name.into(),
            classes: Class::ALL.to_vec(),
            input: spec.input.clone(),
            gradcam_layer: spec.gradcam_layer.into(),
            weights_dtype: WeightsDtype::F32,
            weight_source: weight_source.into(),
            training: serde_json::Value::Null,
            data: serde_json::Value::Null,
            metrics: serde_json::Value::Null,
            extra: serde_json::Value::Null,
            ood: None,
            population: None,
            lungs: None,
            region: Default::default(),
            created_by: created_by.into(),
            payload_len: 0,
            payload_sha256: String::new(),
        }
    }

    /// Checks the header's values: a known architecture, the four classes in their order,
    /// input sizes and normalisation in range, a known weight precision, the Grad-CAM layer of
    /// the architecture, and finite, consistent out-of-distribution and population statistics.
    /// A model file is untrusted input, and a buggy exporter should get a clear error.
    pub fn validate(&self) -> Result<()> {
        let bad = Error::InvalidHeader;
        let spec = arch::find(&self.arch).map_err(|e| bad(e.to_string()))?;
        check_classes(&self.classes).map_err(|e| bad(e.to_string()))?;
        check_input(&self.input)?;
        if self.gradcam_layer != spec.gradcam_layer {
            return Err(bad(format!(
                "Grad-CAM layer {:?}; {} explains at {:?}",
                self.gradcam_layer, spec.name, spec.gradcam_layer
            )));
        }
        if let Some(tta) = self.extra.get("tta")
            && !tta.is_boolean()
        {
            return Err(bad(format!("extra.tta is {tta}, not true or false")));
        }
        if let Some(p) = &self.population {
            p.validate(spec.feature_dim)?;
        }
        if let Some(ood) = &self.ood {
            ood.validate(spec.feature_dim)?;
        }
        if let Some(l) = &self.lungs {
            l.segmenter.check()?;
        }
        Ok(())
    }
}

/// Checks an input configuration: sides in [`MIN_SIDE`, `MAX_SIDE`], the crop no larger than
/// the resize, means in [0, 1] and standard deviations in (0, 1].
fn check_input(input: &InputConfig) -> Result<()> {
    let InputConfig {
        resize,
        crop,
        mean,
        std,
    } = input;
    if !(MIN_SIDE..=MAX_SIDE).contains(crop) || !(*crop..=MAX_SIDE).contains(resize) {
        return Err(Error::InvalidHeader(format!(
            "input crop {crop} px after a resize to {resize} px (expected \
             {MIN_SIDE} <= crop <= resize <= {MAX_SIDE})"
        )));
    }
    if !mean.iter().all(|m| (0.0..=1.0).contains(m)) {
        return Err(Error::InvalidHeader(format!(
            "input mean {mean:?} (expected values in [0, 1])"
        )));
    }
    if !std.iter().all(|s| *s > 0.0 && *s <= 1.0) {
        return Err(Error::InvalidHeader(format!(
            "input std {std:?} (expected values in (0, 1])"
        )));
    }
    Ok(())
}

/// Checks that a file's classes are the four known ones, in their order.
fn check_classes(classes: &[Class]) -> Result<()> {
    if classes != Class::ALL {
        return Err(Error::ModelFile(format!(
            "unexpected classes {classes:?} (expected normal, bacterial, viral, covid19)"
        )));
    }
    Ok(())
}

/// The error for a lung-segmenter file given where a classifier is expected.
fn not_a_classifier() -> Error {
    Error::ModelFile(
        "this is a lung segmenter file (`pneumoscope lungs train`), not a classifier; give it \
         where a lung segmenter is asked for (`--lungs`)"
            .into(),
    )
}

/// A model file in memory.
#[derive(Clone, Debug)]
pub struct ModelFile {
    /// The header.
    pub header: ModelHeader,
    /// The weights (burnpack bytes).
    pub payload: Vec<u8>,
    /// The lung decoder's weights, when the header declares a lung section.
    pub lungs: Option<Vec<u8>>,
    /// The format it was read in (the current one for a file built in memory).
    pub format: Format,
}

impl Versioned for ModelHeader {
    fn format_version(&self) -> u32 {
        self.format_version
    }
}

impl Versioned for EnsembleHeader {
    fn format_version(&self) -> u32 {
        self.format_version
    }
}

/// The format of files this build writes.
fn current(kind: FileKind) -> Format {
    Format::of(Format::current(kind)).expect("the current versions are known")
}

/// A module's parameters as the bytes of a Burn record (a payload, a lung section); `what` names
/// them in the error.
pub(crate) fn record_bytes(module: impl Module, what: &str) -> Result<Vec<u8>> {
    Ok(module
        .into_record()
        .into_bytes()
        .map_err(|source| Error::Record {
            what: format!("cannot serialise {what}"),
            source,
        })?
        .to_vec())
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
        let payload = record_bytes(model, "the weights")?;
        header.format_version = FORMAT_VERSION;
        header.payload_len = payload.len() as u64;
        header.payload_sha256 = sha256_hex(&payload);
        Ok(Self {
            header,
            payload,
            lungs: None,
            format: current(FileKind::Network),
        })
    }

    /// The file with a lung segmenter's decoder added (or replaced): `decoder` is its weights,
    /// `section` its description (length and checksum filled in here).
    pub fn with_lungs(mut self, section: LungsSection, decoder: Vec<u8>) -> Self {
        self.header.lungs = Some(sealed(section, &decoder));
        self.lungs = Some(decoder);
        self
    }

    /// The file with its network's matrices and kernels stored as int8 with a scale per output
    /// channel ([`crate::int8`]); the lung section is kept as it is. Refused for a file whose
    /// weights are int8 already.
    pub fn to_int8(mut self) -> Result<Self> {
        if self.header.weights_dtype == WeightsDtype::I8 {
            return Err(Error::ModelFile(
                "the weights are int8 already (weights_dtype i8)".into(),
            ));
        }
        self.payload = crate::int8::quantize(&self.payload)?;
        self.header.weights_dtype = WeightsDtype::I8;
        Ok(self)
    }

    /// Serialises the file in the current format. The header's version, lengths and checksums
    /// are derived from the parts, whatever the in-memory header says.
    pub fn to_bytes(&self) -> Vec<u8> {
        let lungs = self.lungs.as_deref().unwrap_or_default();
        let mut header = self.header.clone();
        header.format_version = FORMAT_VERSION;
        header.payload_len = self.payload.len() as u64;
        header.payload_sha256 = sha256_hex(&self.payload);
        if let (Some(section), Some(decoder)) = (header.lungs.take(), self.lungs.as_deref()) {
            header.lungs = Some(sealed(section, decoder));
        }
        assemble(FORMAT_VERSION, &header, &[&self.payload, lungs])
    }

    /// The header alone (magic, version, seal and JSON checked; the payload neither copied
    /// nor verified): enough to decide how to load the file.
    pub fn read_header(bytes: &[u8]) -> Result<ModelHeader> {
        Ok(Self::split(bytes)?.header)
    }

    /// Magic, version, seal and header of a single-network file, and its payload.
    fn split(bytes: &[u8]) -> Result<Parsed<'_, ModelHeader>> {
        match verified_format(bytes)?.kind {
            FileKind::Network => split_header(bytes),
            FileKind::Ensemble => Err(Error::ModelFile(
                "this is an ensemble file (several networks); load it as a whole \
                 (`inference::Engine`), not as a single network"
                    .into(),
            )),
            FileKind::LungSegmenter => Err(not_a_classifier()),
        }
    }

    /// Parses and verifies a file: magic, version, the header's seal, payload length and
    /// checksum, then the header's values ([`ModelHeader::validate`]). The weights themselves
    /// are decoded by [`ModelFile::load_classifier`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let Parsed {
            header,
            rest,
            format,
        } = Self::split(bytes)?;
        let (payload, lungs) = split_lungs(rest, header.payload_len, header.lungs.as_ref(), 1)?;
        verify_payload(
            payload,
            header.payload_len,
            &header.payload_sha256,
            "weights",
        )?;
        header.validate()?;
        if let Some(l) = &header.lungs {
            check_encoder(l, &[header.arch.as_str()])?;
        }
        Ok(Self {
            header,
            payload: payload.to_vec(),
            lungs: lungs.map(<[u8]>::to_vec),
            format,
        })
    }

    /// Builds the classifier the file describes and loads its weights on `device`.
    pub fn load_classifier(&self, device: &Device) -> Result<Classifier> {
        let spec = arch::find(&self.header.arch)?;
        let record = crate::int8::record(&self.payload, "unreadable weights")?;
        let model = Classifier::new(&spec, device)
            .try_load_record(record.cast_to_module_dtype())
            .map_err(|source| Error::Record {
                what: format!("the weights do not fit architecture {}", self.header.arch),
                source,
            })?;
        // Inference state: dropout off, batch norm on running statistics, whatever the input.
        Ok(model.valid())
    }
}

/// Checks the magic bytes and returns the file's format, if this build reads it.
pub fn format_of(bytes: &[u8]) -> Result<Format> {
    if bytes.len() < PREFIX || &bytes[..12] != MAGIC {
        return Err(Error::NotAModelFile);
    }
    let v = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    Format::of(v).ok_or(Error::UnsupportedVersion {
        found: v,
        oldest_sealed: FORMAT_VERSION,
        newest: crate::lungs::LUNGS_FORMAT_VERSION,
    })
}

/// [`format_of`], with the header's seal checked in a sealed format: a damaged prefix or
/// header (a changed version number included) is refused here, before anything in it is used.
pub fn verified_format(bytes: &[u8]) -> Result<Format> {
    let format = format_of(bytes)?;
    header_bytes(bytes, format)?;
    Ok(format)
}

/// The header's bytes, its seal checked in a sealed format.
fn header_bytes(bytes: &[u8], format: Format) -> Result<&[u8]> {
    let start = format.header_start();
    let hlen = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    let end = start.saturating_add(hlen as usize);
    if hlen > MAX_HEADER || end > bytes.len() {
        return Err(Error::ModelFile(format!(
            "truncated header (declares {hlen} bytes, the file has {} after the prefix)",
            bytes.len().saturating_sub(start)
        )));
    }
    if format.sealed {
        let mut seal = Sha256::new();
        seal.update(&bytes[..PREFIX]);
        seal.update(&bytes[start..end]);
        if seal.finalize().as_slice() != &bytes[PREFIX..start] {
            return Err(Error::HeaderChecksum);
        }
    }
    Ok(&bytes[start..end])
}

/// The verified format of a classifier's file (one network or an ensemble); a lung
/// segmenter's file is refused with a message that says what it is.
pub fn classifier_format(bytes: &[u8]) -> Result<Format> {
    let format = verified_format(bytes)?;
    if format.kind == FileKind::LungSegmenter {
        return Err(not_a_classifier());
    }
    Ok(format)
}

/// The architectures of a file's networks, read from its header alone (nothing verified
/// beyond the prefix and the JSON): one for a single-network file, the members of an ensemble.
pub fn network_archs(bytes: &[u8]) -> Result<Vec<String>> {
    Ok(match classifier_format(bytes)?.kind {
        FileKind::Ensemble => split_header::<EnsembleHeader>(bytes)?
            .header
            .members
            .into_iter()
            .map(|m| m.arch)
            .collect(),
        _ => vec![split_header::<ModelHeader>(bytes)?.header.arch],
    })
}

/// A file's header, what follows it, and the format it was read in.
pub(crate) struct Parsed<'a, H> {
    /// The header (sealed formats: its seal checked; nothing else verified yet).
    pub header: H,
    /// The bytes after the header.
    pub rest: &'a [u8],
    /// The file's format.
    pub format: Format,
}

/// The JSON header after the prefix, and what follows it. In a sealed format the seal is
/// checked before the JSON is read; in every format the header's own `format_version` must be
/// the prefix's.
pub(crate) fn split_header<H: serde::de::DeserializeOwned + Versioned>(
    bytes: &[u8],
) -> Result<Parsed<'_, H>> {
    let format = format_of(bytes)?;
    let text = header_bytes(bytes, format)?;
    let end = format.header_start() + text.len();
    let header: H = serde_json::from_slice(text)
        .map_err(|e| Error::ModelFile(format!("unreadable header: {e}")))?;
    if header.format_version() != format.version {
        return Err(Error::ModelFile(format!(
            "invalid header: it says format version {}, the file's prefix {}",
            header.format_version(),
            format.version
        )));
    }
    Ok(Parsed {
        header,
        rest: &bytes[end..],
        format,
    })
}

/// The prefix, the header's seal (sealed formats), the JSON header and the payload.
pub(crate) fn assemble(version: u32, header: &impl Serialize, payload: &[&[u8]]) -> Vec<u8> {
    let format = Format::of(version).expect("a version this build reads");
    let header = serde_json::to_vec_pretty(header).expect("header serialises");
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(PREFIX + SEAL + header.len() + len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    if format.sealed {
        let mut seal = Sha256::new();
        seal.update(&out);
        seal.update(&header);
        out.extend_from_slice(&seal.finalize());
    }
    out.extend_from_slice(&header);
    for p in payload {
        out.extend_from_slice(p);
    }
    out
}

/// Checks a payload against the length and checksum its header declares.
pub(crate) fn verify_payload(payload: &[u8], len: u64, sha256: &str, what: &str) -> Result<()> {
    if payload.len() as u64 != len {
        return Err(Error::ModelFile(format!(
            "truncated or padded {what} (expected {len} bytes, found {})",
            payload.len()
        )));
    }
    let sum = sha256_hex(payload);
    if sum != sha256 {
        return Err(Error::Checksum {
            part: what.to_string(),
            found: sum,
            expected: sha256.to_string(),
        });
    }
    Ok(())
}

/// A lung section with the decoder's length and checksum filled in.
fn sealed(mut section: LungsSection, decoder: &[u8]) -> LungsSection {
    section.segmenter.payload_len = decoder.len() as u64;
    section.segmenter.payload_sha256 = sha256_hex(decoder);
    section
}

/// Splits what follows a header into the payload of `payload_len` bytes and, when the header
/// declares a lung section, the decoder's weights after it (length and checksum verified).
/// `networks` is the number of networks in the file.
fn split_lungs<'a>(
    rest: &'a [u8],
    payload_len: u64,
    lungs: Option<&LungsSection>,
    networks: usize,
) -> Result<(&'a [u8], Option<&'a [u8]>)> {
    let Some(section) = lungs else {
        return Ok((rest, None));
    };
    let decoder_len = section.segmenter.payload_len;
    let want = payload_len.saturating_add(decoder_len);
    if rest.len() as u64 != want {
        return Err(Error::ModelFile(format!(
            "truncated or padded file (the header declares {payload_len} bytes of weights and \
             {decoder_len} of lung segmenter, {want} in all; found {})",
            rest.len()
        )));
    }
    if section.encoder_network >= networks {
        return Err(Error::ModelFile(format!(
            "the lung section names network {} as its encoder; the file has {networks}",
            section.encoder_network + 1
        )));
    }
    section.segmenter.check()?;
    let (payload, decoder) = rest.split_at(payload_len as usize);
    verify_payload(
        decoder,
        decoder_len,
        &section.segmenter.payload_sha256,
        "lung segmenter weights",
    )?;
    Ok((payload, Some(decoder)))
}

/// Checks that the network a lung section names is of the encoder's architecture.
fn check_encoder(section: &LungsSection, archs: &[&str]) -> Result<()> {
    let arch = archs[section.encoder_network];
    if arch != crate::lungs::ENCODER {
        return Err(Error::ModelFile(format!(
            "the lung segmenter's encoder is network {} ({arch}); it must be {}",
            section.encoder_network + 1,
            crate::lungs::ENCODER
        )));
    }
    Ok(())
}

/// One member as the ensemble header lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MemberEntry {
    /// Architecture of the member.
    pub arch: String,
    /// Length of the member's complete model file in bytes.
    pub len: u64,
    /// SHA-256 of the member's complete model file, lowercase hex.
    pub sha256: String,
}

/// What an ensemble file says about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EnsembleHeader {
    /// Format version ([`ENSEMBLE_FORMAT_VERSION`]).
    pub format_version: u32,
    /// Class names in output order (every member has the same).
    pub classes: Vec<Class>,
    /// How the members' answers are combined.
    pub combine: Combine,
    /// The members, in payload order.
    pub members: Vec<MemberEntry>,
    /// Evaluation metrics of the ensemble as a whole (free-form JSON).
    pub metrics: serde_json::Value,
    /// Notes (how the members were chosen, ...).
    #[serde(default)]
    pub extra: serde_json::Value,
    /// A lung segmenter whose decoder follows the member files (see [`LungsSection`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lungs: Option<LungsSection>,
    /// Version of the software that wrote the file.
    pub created_by: String,
    /// Length of the payload (all member files) in bytes; a lung section follows it.
    pub payload_len: u64,
    /// SHA-256 of the payload, lowercase hex.
    pub payload_sha256: String,
}

/// How an ensemble combines its members: the mean of their probabilities.
pub const COMBINE_MEAN: &str = "mean of the members' probabilities";

/// How an ensemble combines its members' answers; written as [`COMBINE_MEAN`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Combine {
    /// The mean of the members' probabilities.
    #[default]
    MeanProbabilities,
}

impl From<Combine> for String {
    fn from(c: Combine) -> String {
        match c {
            Combine::MeanProbabilities => COMBINE_MEAN.to_string(),
        }
    }
}

impl TryFrom<String> for Combine {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            COMBINE_MEAN => Ok(Combine::MeanProbabilities),
            _ => Err(format!(
                "members combined by {s:?}; this build knows the {COMBINE_MEAN}"
            )),
        }
    }
}

/// Storage precision of a model file's weights (`"f32"`, `"f16"` or `"i8"` in its header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum WeightsDtype {
    /// Single precision.
    #[default]
    F32,
    /// Half precision (matrices and kernels; vectors stay f32).
    F16,
    /// Matrices and kernels as 8-bit integers with an f32 scale per output channel, expanded
    /// to f32 when the file loads ([`crate::int8`]); vectors keep their precision.
    I8,
}

impl WeightsDtype {
    /// The name the header writes: `"f32"`, `"f16"` or `"i8"`.
    pub fn as_str(self) -> &'static str {
        match self {
            WeightsDtype::F32 => "f32",
            WeightsDtype::F16 => "f16",
            WeightsDtype::I8 => "i8",
        }
    }
}

impl std::fmt::Display for WeightsDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<WeightsDtype> for String {
    fn from(d: WeightsDtype) -> String {
        d.as_str().to_string()
    }
}

impl TryFrom<String> for WeightsDtype {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        match s.as_str() {
            "f32" => Ok(WeightsDtype::F32),
            "f16" => Ok(WeightsDtype::F16),
            "i8" => Ok(WeightsDtype::I8),
            _ => Err(format!("weights precision {s:?} (expected f32, f16 or i8)")),
        }
    }
}

/// An ensemble file in memory: its header and its verified members.
#[derive(Clone, Debug)]
pub struct EnsembleFile {
    /// The header.
    pub header: EnsembleHeader,
    /// The members, each a complete single-network model file.
    pub members: Vec<ModelFile>,
    /// The lung decoder's weights, when the header declares a lung section.
    pub lungs: Option<Vec<u8>>,
    /// The format it was read in (the current one for a file built in memory).
    pub format: Format,
}

/// The member entries of an ensemble header, and the length and SHA-256 of the whole payload,
/// for members serialised as `payloads`.
fn member_entries(members: &[ModelFile], payloads: &[Vec<u8>]) -> (Vec<MemberEntry>, u64, String) {
    let mut whole = Sha256::new();
    for p in payloads {
        whole.update(p);
    }
    let entries = members
        .iter()
        .zip(payloads)
        .map(|(m, p)| MemberEntry {
            arch: m.header.arch.clone(),
            len: p.len() as u64,
            sha256: sha256_hex(p),
        })
        .collect();
    let len = payloads.iter().map(|p| p.len() as u64).sum();
    let sha = whole
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (entries, len, sha)
}

impl EnsembleFile {
    /// Puts single-network model files together. Needs at least two; `metrics` and `extra`
    /// describe the ensemble as a whole.
    pub fn new(
        members: Vec<ModelFile>,
        metrics: serde_json::Value,
        extra: serde_json::Value,
    ) -> Result<Self> {
        if members.len() < 2 {
            return Err(Error::Invalid(format!(
                "an ensemble needs at least two member models ({} given)",
                members.len()
            )));
        }
        let payloads: Vec<Vec<u8>> = members.iter().map(ModelFile::to_bytes).collect();
        let (entries, payload_len, payload_sha256) = member_entries(&members, &payloads);
        let header = EnsembleHeader {
            format_version: ENSEMBLE_FORMAT_VERSION,
            classes: Class::ALL.to_vec(),
            combine: Combine::MeanProbabilities,
            members: entries,
            metrics,
            extra,
            lungs: None,
            created_by: format!("pneumoscope {}", env!("CARGO_PKG_VERSION")),
            payload_len,
            payload_sha256,
        };
        Ok(Self {
            header,
            members,
            lungs: None,
            format: current(FileKind::Ensemble),
        })
    }

    /// The file with a lung segmenter's decoder added (or replaced); see
    /// [`ModelFile::with_lungs`].
    pub fn with_lungs(mut self, section: LungsSection, decoder: Vec<u8>) -> Self {
        self.header.lungs = Some(sealed(section, &decoder));
        self.lungs = Some(decoder);
        self
    }

    /// The file with every member's weights stored as int8 ([`ModelFile::to_int8`]); the lung
    /// section is kept as it is.
    pub fn to_int8(self) -> Result<Self> {
        let members = self
            .members
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let arch = m.header.arch.clone();
                m.to_int8()
                    .map_err(|e| Error::ModelFile(format!("member {} ({arch}): {e}", i + 1)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { members, ..self })
    }

    /// Serialises the file in the current format, members included. The header's version,
    /// member entries, lengths and checksums are derived from the parts.
    pub fn to_bytes(&self) -> Vec<u8> {
        let payloads: Vec<Vec<u8>> = self.members.iter().map(ModelFile::to_bytes).collect();
        let mut header = self.header.clone();
        header.format_version = ENSEMBLE_FORMAT_VERSION;
        (header.members, header.payload_len, header.payload_sha256) =
            member_entries(&self.members, &payloads);
        if let (Some(section), Some(decoder)) = (header.lungs.take(), self.lungs.as_deref()) {
            header.lungs = Some(sealed(section, decoder));
        }
        let mut parts: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        parts.extend(self.lungs.as_deref());
        assemble(ENSEMBLE_FORMAT_VERSION, &header, &parts)
    }

    /// Parses and verifies an ensemble file: prefix, the header's seal, the whole payload's
    /// length and checksum, the header's values, then each member as a model file of its own
    /// (a damaged member is named by its position and architecture).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if classifier_format(bytes)?.kind != FileKind::Ensemble {
            return Err(Error::ModelFile(
                "a single-network model file, not an ensemble".into(),
            ));
        }
        let Parsed {
            header,
            rest,
            format,
        }: Parsed<'_, EnsembleHeader> = split_header(bytes)?;
        let (payload, lungs) = split_lungs(
            rest,
            header.payload_len,
            header.lungs.as_ref(),
            header.members.len(),
        )?;
        verify_payload(
            payload,
            header.payload_len,
            &header.payload_sha256,
            "member models",
        )?;
        check_classes(&header.classes)?;
        if header.members.len() < 2 {
            return Err(Error::ModelFile(format!(
                "an ensemble lists {} member(s); it needs at least two",
                header.members.len()
            )));
        }
        for (i, m) in header.members.iter().enumerate() {
            arch::find(&m.arch).map_err(|e| Error::ModelFile(format!("member {}: {e}", i + 1)))?;
        }
        if let Some(l) = &header.lungs {
            let archs: Vec<&str> = header.members.iter().map(|m| m.arch.as_str()).collect();
            check_encoder(l, &archs)?;
        }
        let mut members = Vec::with_capacity(header.members.len());
        let mut at = 0usize;
        for (i, m) in header.members.iter().enumerate() {
            let end = at.saturating_add(m.len as usize);
            let part = payload.get(at..end).ok_or_else(|| {
                Error::ModelFile(format!(
                    "member {} ({}) runs past the end of the file",
                    i + 1,
                    m.arch
                ))
            })?;
            let name = format!("member {} ({})", i + 1, m.arch);
            verify_payload(part, m.len, &m.sha256, &format!("{name} bytes"))?;
            let file = ModelFile::from_bytes(part)
                .map_err(|e| Error::ModelFile(format!("{name}: {e}")))?;
            if file.header.arch != m.arch {
                return Err(Error::ModelFile(format!(
                    "{name}: the member's own header says {}",
                    file.header.arch
                )));
            }
            members.push(file);
            at = end;
        }
        if at != payload.len() {
            return Err(Error::ModelFile(format!(
                "{} bytes after the last member",
                payload.len() - at
            )));
        }
        Ok(Self {
            header,
            members,
            lungs: lungs.map(<[u8]>::to_vec),
            format,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::arch;

    /// A random-init header of `arch` for tests (payload fields filled in by
    /// [`ModelFile::from_classifier`]).
    pub(crate) fn header_of(arch: &str) -> ModelHeader {
        ModelHeader::new(&arch::find(arch).unwrap(), "random-init", "test")
    }

    fn header() -> ModelHeader {
        header_of("efficientnet_lite0")
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
            lungs: None,
            format: current(FileKind::Network),
        };
        assert!(
            ModelFile::from_bytes(&foreign.to_bytes())
                .unwrap_err()
                .to_string()
                .contains("unknown architecture")
        );
    }

    /// Int8 weights: a quarter of the f32 payload (plus scales), the same outputs to within the
    /// rounding of the weights, the header says so; a second conversion, an int8 tensor without
    /// its scales and scales without their tensor are refused, naming the tensor.
    #[test]
    fn int8_weights_load_close_to_f32_and_damage_is_named() {
        let device = Device::flex();
        let spec = arch::find("efficientnet_lite0").unwrap();
        let model = Classifier::new(&spec, &device).valid();
        let x = Tensor::<4>::random([2, 3, 96, 96], burn::tensor::Distribution::Default, &device);
        let feats = |m: &Classifier| -> Vec<f32> {
            m.features(x.clone()).into_data().try_to_vec().unwrap()
        };
        let before = feats(&model);
        let file = ModelFile::from_classifier(header(), model).unwrap();
        let f32_len = file.payload.len();
        let int8 = file.to_int8().unwrap();
        assert!(
            int8.payload.len() * 10 < f32_len * 3,
            "{} vs {f32_len} bytes",
            int8.payload.len()
        );
        let bytes = int8.to_bytes();
        let loaded = ModelFile::from_bytes(&bytes).unwrap();
        assert_eq!(loaded.header.weights_dtype, WeightsDtype::I8);
        let after = feats(&loaded.load_classifier(&device).unwrap());
        let scale = before.iter().fold(0f32, |m, v| m.max(v.abs()));
        let off = before
            .iter()
            .zip(&after)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(off < 0.05 * scale, "features moved by {off} of {scale}");
        assert!(off > 0.0, "the weights were rounded");
        let again = loaded.to_int8().unwrap_err().to_string();
        assert!(again.contains("int8 already"), "{again}");

        // The scales of one kernel dropped, then a stray scale vector.
        let q = crate::int8::quantize(&file_payload()).unwrap();
        let tensors = burn_pack::Reader::from_bytes(burn::tensor::Bytes::from_bytes_vec(q))
            .unwrap()
            .into_tensors()
            .unwrap();
        let scale_of = tensors
            .iter()
            .find(|t| t.name.ends_with(crate::int8::SCALE_SUFFIX))
            .unwrap()
            .name
            .clone();
        let kernel = scale_of
            .strip_suffix(crate::int8::SCALE_SUFFIX)
            .unwrap()
            .to_string();
        let without = |drop: &str| {
            let kept: Vec<_> = tensors.iter().filter(|t| t.name != drop).cloned().collect();
            burn_pack::Writer::new(kept).into_bytes().unwrap().to_vec()
        };
        let e = crate::int8::record(&without(&scale_of), "weights")
            .unwrap_err()
            .to_string();
        assert!(e.contains(&kernel) && e.contains("no scales"), "{e}");
        let e = crate::int8::record(&without(&kernel), "weights")
            .unwrap_err()
            .to_string();
        assert!(e.contains(&kernel) && e.contains("belong to no"), "{e}");
    }

    /// The f32 payload of a small random network.
    fn file_payload() -> Vec<u8> {
        small_file().payload
    }

    /// A small single-network file: SqueezeNet 1.0, random init, with a header as the
    /// exporter writes it (the payload fields filled in).
    fn small_file() -> ModelFile {
        let spec = arch::find("squeezenet1_0").unwrap();
        let model = Classifier::new(&spec, &Device::flex());
        let mut h = header_of("squeezenet1_0");
        h.extra = serde_json::json!({"tta": false, "note": "byte-flip test"});
        ModelFile::from_classifier(h, model).unwrap()
    }

    /// The part of a damaged file a refusal names, by the message.
    fn part_named(message: &str) -> &'static str {
        for (needle, part) in [
            ("magic", "magic"),
            ("format version", "version"),
            ("header", "header"),
            ("lung segmenter weights", "lungs"),
            ("weights", "weights"),
            ("member models", "members"),
        ] {
            if message.contains(needle) {
                return part;
            }
        }
        panic!("a refusal that names no part: {message}")
    }

    #[test]
    fn refusals_are_typed() {
        let bytes = small_file().to_bytes();
        let mut b = bytes.clone();
        b[0] ^= 0xff;
        assert!(matches!(
            ModelFile::from_bytes(&b),
            Err(Error::NotAModelFile)
        ));
        let mut b = bytes.clone();
        b[12..16].copy_from_slice(&99u32.to_le_bytes());
        assert!(matches!(
            ModelFile::from_bytes(&b),
            Err(Error::UnsupportedVersion { found: 99, .. })
        ));
        let mut b = bytes.clone();
        let last = b.len() - 1;
        b[last] ^= 0x01;
        assert!(matches!(
            ModelFile::from_bytes(&b),
            Err(Error::Checksum { ref part, .. }) if part == "weights"
        ));
        // An image that does not decode is a decode error, whatever its kind.
        for bad in [&b""[..], b"not an image", &bytes[..64]] {
            assert!(matches!(
                crate::preprocess::decode(bad),
                Err(Error::Decode(_))
            ));
        }
    }

    #[test]
    fn every_byte_of_the_header_and_a_sample_of_the_payload_is_covered() {
        let file = small_file();
        let bytes = file.to_bytes();
        assert_eq!(format_of(&bytes).unwrap(), current(FileKind::Network));
        let hlen = u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize;
        let payload_at = PREFIX + SEAL + hlen;
        // A changed version number is either unknown or caught by the seal.
        let expected = |i: usize, part: &str| match i {
            0..12 => part == "magic",
            12..16 => part == "version" || part == "header",
            _ if i < payload_at => part == "header",
            _ => part == "weights",
        };
        let refused = |at: usize, mask: u8| {
            let mut b = bytes.clone();
            b[at] ^= mask;
            match ModelFile::from_bytes(&b) {
                Ok(_) => panic!("byte {at} ^ {mask:#04x} was accepted"),
                Err(e) => {
                    let msg = e.to_string();
                    let part = part_named(&msg);
                    assert!(expected(at, part), "byte {at} ^ {mask:#04x}: {msg}");
                }
            }
        };
        // Every byte of the prefix, the seal and the header, one bit and all bits.
        for at in 0..payload_at {
            refused(at, 0x01);
            refused(at, 0xff);
        }
        // A few hundred bytes of the payload, spread over it.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..300 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = payload_at + (state % (bytes.len() - payload_at) as u64) as usize;
            refused(at, 1 << (state >> 61));
        }
        // Two edits by hand: the input mean, and a number further on.
        let text = String::from_utf8_lossy(&bytes[PREFIX + SEAL..payload_at]).into_owned();
        let edited = text.replacen("0.485", "0.985", 1);
        assert_ne!(edited, text);
        let mut b = bytes[..PREFIX + SEAL].to_vec();
        b.extend_from_slice(edited.as_bytes());
        b.extend_from_slice(&bytes[payload_at..]);
        let e = ModelFile::from_bytes(&b).unwrap_err();
        assert!(matches!(e, Error::HeaderChecksum), "{e}");
        assert!(e.to_string().contains("header checksum mismatch"), "{e}");
        // Read back unchanged, the file is the bytes it came from.
        assert_eq!(ModelFile::from_bytes(&bytes).unwrap().to_bytes(), bytes);
    }

    #[test]
    fn a_lung_section_and_ensemble_members_are_covered_and_named() {
        let device = Device::flex();
        let spec = arch::find("efficientnet_lite0").unwrap();
        let decoder = vec![7u8; 999];
        let section = LungsSection {
            encoder_network: 0,
            segmenter: crate::lungs::test_header(),
        };
        let lite = ModelFile::from_classifier(header(), Classifier::new(&spec, &device))
            .unwrap()
            .with_lungs(section, decoder);
        let bytes = lite.to_bytes();
        let mut b = bytes.clone();
        *b.last_mut().unwrap() ^= 1;
        let msg = ModelFile::from_bytes(&b).unwrap_err().to_string();
        assert_eq!(part_named(&msg), "lungs", "{msg}");
        // An ensemble: its header, then each member's bytes, by the whole payload's checksum.
        let e = EnsembleFile::new(
            vec![small_file(), small_file()],
            serde_json::Value::Null,
            serde_json::Value::Null,
        )
        .unwrap();
        let bytes = e.to_bytes();
        let hlen = u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize;
        let payload_at = PREFIX + SEAL + hlen;
        for at in (16..payload_at).step_by(7) {
            let mut b = bytes.clone();
            b[at] ^= 0x20;
            let msg = EnsembleFile::from_bytes(&b).unwrap_err().to_string();
            assert_eq!(part_named(&msg), "header", "byte {at}: {msg}");
        }
        for at in (payload_at..bytes.len()).step_by(bytes.len() / 50) {
            let mut b = bytes.clone();
            b[at] ^= 0x20;
            let msg = EnsembleFile::from_bytes(&b).unwrap_err().to_string();
            assert_eq!(part_named(&msg), "members", "byte {at}: {msg}");
        }
        assert_eq!(EnsembleFile::from_bytes(&bytes).unwrap().to_bytes(), bytes);
    }

    #[test]
    fn earlier_formats_load_with_a_notice_and_upgrade_to_a_sealed_file() {
        let file = small_file();
        let mut h = file.header.clone();
        h.format_version = 1;
        let legacy = assemble(1, &h, &[&file.payload]);
        let read = ModelFile::from_bytes(&legacy).unwrap();
        assert!(!read.format.sealed);
        let notice = read.format.notice().unwrap();
        assert!(
            notice.starts_with("header not verified (format v1"),
            "{notice}"
        );
        // Without a seal, an edit of the header goes unseen: the reason for the notice.
        let edited =
            String::from_utf8(legacy[20..20 + legacy.len() - 20 - file.payload.len()].to_vec())
                .unwrap()
                .replacen("byte-flip test", "byte-flip tesT", 1);
        let mut b = legacy[..20].to_vec();
        b.extend_from_slice(edited.as_bytes());
        b.extend_from_slice(&file.payload);
        assert!(ModelFile::from_bytes(&b).is_ok());
        // Written again, it is the current format, sealed, with the same header otherwise.
        let upgraded = read.to_bytes();
        let back = ModelFile::from_bytes(&upgraded).unwrap();
        assert!(back.format.sealed && back.format.notice().is_none());
        assert_eq!(
            back.header,
            ModelHeader {
                format_version: FORMAT_VERSION,
                ..h
            }
        );
        assert_eq!(upgraded, file.to_bytes());
        // The header's version must be the prefix's.
        let mut h2 = file.header.clone();
        h2.format_version = 1;
        let msg = ModelFile::from_bytes(&assemble(FORMAT_VERSION, &h2, &[&file.payload]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("says format version 1"), "{msg}");
    }

    #[test]
    fn header_values_are_checked() {
        let file = small_file();
        let refused = |edit: &dyn Fn(&mut ModelHeader), want: &str| {
            let mut f = file.clone();
            edit(&mut f.header);
            let msg = ModelFile::from_bytes(&f.to_bytes())
                .unwrap_err()
                .to_string();
            assert!(msg.contains(want), "expected {want:?}: {msg}");
        };
        refused(&|h| h.input.mean[1] = 1.5, "input mean");
        refused(&|h| h.input.std[0] = 0.0, "input std");
        refused(&|h| h.input.crop = h.input.resize + 1, "input crop");
        refused(&|h| h.input.crop = 4, "input crop");
        // A precision this build does not know is refused when the header is read.
        let mut v = serde_json::to_value(&file.header).unwrap();
        v["weights_dtype"] = "f8".into();
        let msg = serde_json::from_value::<ModelHeader>(v)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("weights precision \"f8\""), "{msg}");
        refused(&|h| h.gradcam_layer = "features.0".into(), "Grad-CAM layer");
        refused(
            &|h| h.extra = serde_json::json!({"tta": "yes"}),
            "extra.tta",
        );
        refused(&|h| h.classes.swap(0, 1), "unexpected classes");
        refused(&|h| h.arch = "resnet9000".into(), "unknown architecture");
        // A non-finite number cannot be written as JSON: it reads back as null and is refused.
        refused(&|h| h.input.mean[0] = f32::NAN, "unreadable header");
    }

    #[test]
    fn ensembles_round_trip_and_name_a_damaged_member() {
        let device = Device::flex();
        let member = |arch: &str| {
            let spec = arch::find(arch).unwrap();
            ModelFile::from_classifier(header_of(arch), Classifier::new(&spec, &device)).unwrap()
        };
        let (a, b) = (member("squeezenet1_0"), member("efficientnet_lite0"));
        let single = a.to_bytes();
        assert!(
            EnsembleFile::new(
                vec![a.clone()],
                serde_json::Value::Null,
                serde_json::Value::Null
            )
            .unwrap_err()
            .to_string()
            .contains("at least two")
        );
        let e = EnsembleFile::new(
            vec![a, b],
            serde_json::json!({"test": {"macro_f1": 0.5}}),
            serde_json::Value::Null,
        )
        .unwrap();
        let bytes = e.to_bytes();
        assert_eq!(format_of(&bytes).unwrap().version, ENSEMBLE_FORMAT_VERSION);
        assert_eq!(
            network_archs(&bytes).unwrap(),
            ["squeezenet1_0", "efficientnet_lite0"]
        );
        let back = EnsembleFile::from_bytes(&bytes).unwrap();
        assert_eq!(back.header, e.header);
        assert_eq!(back.members[1].payload, e.members[1].payload);
        // Each kind refuses to be read as the other, saying what it is.
        let err = |r: Result<ModelFile>| r.unwrap_err().to_string();
        assert!(err(ModelFile::from_bytes(&bytes)).contains("ensemble"));
        assert!(
            EnsembleFile::from_bytes(&single)
                .unwrap_err()
                .to_string()
                .contains("single-network")
        );
        // A flipped byte in the last member: the whole payload's checksum catches it.
        let mut flipped = bytes.clone();
        let n = flipped.len() - 10;
        flipped[n] ^= 1;
        let msg = EnsembleFile::from_bytes(&flipped).unwrap_err().to_string();
        assert!(msg.contains("checksum"), "{msg}");
        // The same damage with the whole payload's checksum updated: the member's own entry
        // names it.
        let mut forged = back.clone();
        forged.members[1].payload[5] ^= 1;
        let mut h = forged.header.clone();
        let parts: Vec<Vec<u8>> = forged.members.iter().map(ModelFile::to_bytes).collect();
        h.payload_sha256 = sha256_hex(&parts.concat());
        let forged = assemble(ENSEMBLE_FORMAT_VERSION, &h, &[&parts.concat()]);
        let msg = EnsembleFile::from_bytes(&forged).unwrap_err().to_string();
        assert!(
            msg.contains("member 2 (efficientnet_lite0)") && msg.contains("checksum"),
            "{msg}"
        );
        let msg = EnsembleFile::from_bytes(&bytes[..bytes.len() - 100])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("truncated"), "{msg}");
        let mut future = bytes.clone();
        future[12] = 7;
        let msg = format_of(&future).unwrap_err().to_string();
        assert!(msg.contains("format version 7"), "{msg}");
    }
}
