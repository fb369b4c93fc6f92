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
//! | `payload_len` | payload: the classifier's weights as a Burn burnpack record |
//! | rest | optional lung section: a lung segmenter's decoder (see below) |
//!
//! The header carries the SHA-256 and length of the payload, which are checked before anything
//! is decoded. The payload is data only (tensors and their names): loading a model file never
//! executes anything from it.
//!
//! An **ensemble file** (written by `pneumoscope ensemble`) has the same prefix with format
//! version [`ENSEMBLE_FORMAT_VERSION`]; its header is an [`EnsembleHeader`] and its payload the
//! complete single-network model files of its members, one after the other. Each member keeps
//! its own header and checksum; the ensemble header lists their lengths and checksums too, and
//! the checksum of the whole payload. A reader that knows only version 1 refuses such a file
//! with a clear message instead of misreading it.
//!
//! Either kind may carry a **lung segmenter** ([`crate::lungs::LungsSection`] in the header's
//! `lungs`): the weights of its decoder follow the payload, with their own length and
//! SHA-256; its encoder is the backbone of one of the file's networks, named by position. A
//! file without one is byte for byte what earlier builds wrote; an earlier build refuses a
//! file with one as padded.

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
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File magic.
pub const MAGIC: &[u8; 12] = b"PNEUMOSCOPE\0";
/// Format version of a single-network model file.
pub const FORMAT_VERSION: u32 = 1;
/// Format version of an ensemble file (several single-network files in one).
pub const ENSEMBLE_FORMAT_VERSION: u32 = 2;
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

/// A model file in memory.
#[derive(Clone, Debug)]
pub struct ModelFile {
    /// The header.
    pub header: ModelHeader,
    /// The weights (burnpack bytes).
    pub payload: Vec<u8>,
    /// The lung decoder's weights, when the header declares a lung section.
    pub lungs: Option<Vec<u8>>,
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
        Ok(Self {
            header,
            payload,
            lungs: None,
        })
    }

    /// The file with a lung segmenter's decoder added (or replaced): `decoder` is its weights,
    /// `section` its description (length and checksum filled in here).
    pub fn with_lungs(mut self, section: LungsSection, decoder: Vec<u8>) -> Self {
        self.header.lungs = Some(sealed(section, &decoder));
        self.lungs = Some(decoder);
        self
    }

    /// Serialises the file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let lungs = self.lungs.as_deref().unwrap_or_default();
        assemble(FORMAT_VERSION, &self.header, &[&self.payload, lungs])
    }

    /// The header alone (magic, version and JSON checked; the payload neither copied nor
    /// verified): enough to decide how to load the file.
    pub fn read_header(bytes: &[u8]) -> Result<ModelHeader> {
        let (header, _) = Self::split(bytes)?;
        Ok(header)
    }

    /// Magic, version and header of a single-network file, and its payload.
    fn split(bytes: &[u8]) -> Result<(ModelHeader, &[u8])> {
        match format_version(bytes)? {
            FORMAT_VERSION => split_header(bytes),
            ENSEMBLE_FORMAT_VERSION => Err(Error::ModelFile(
                "this is an ensemble file (several networks); load it as a whole \
                 (`inference::Engine`), not as a single network"
                    .into(),
            )),
            v => unreachable!("format_version accepted {v}"),
        }
    }

    /// Parses and verifies a file: magic, version, header, payload length and checksum, known
    /// architecture and class order. The weights themselves are decoded by
    /// [`ModelFile::load_classifier`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |m: String| Error::ModelFile(m);
        let (header, rest) = Self::split(bytes)?;
        let (payload, lungs) = split_lungs(rest, header.payload_len, header.lungs.as_ref(), 1)?;
        verify_payload(
            payload,
            header.payload_len,
            &header.payload_sha256,
            "weights",
        )?;
        let spec = arch::find(&header.arch).map_err(|e| bad(e.to_string()))?;
        if let Some(l) = &header.lungs {
            check_encoder(l, &[header.arch.as_str()])?;
        }
        if let Some(p) = &header.population {
            p.validate(spec.feature_dim).map_err(bad)?;
        }
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
            lungs: lungs.map(<[u8]>::to_vec),
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

/// Checks the magic bytes and returns the format version: [`FORMAT_VERSION`] or
/// [`ENSEMBLE_FORMAT_VERSION`].
pub fn format_version(bytes: &[u8]) -> Result<u32> {
    if bytes.len() < 20 || &bytes[..12] != MAGIC {
        return Err(Error::ModelFile(
            "not a Pneumoscope model file (wrong magic bytes; expected a file written by \
             `pneumoscope export` or `pneumoscope ensemble`)"
                .into(),
        ));
    }
    match u32::from_le_bytes(bytes[12..16].try_into().unwrap()) {
        v @ (FORMAT_VERSION | ENSEMBLE_FORMAT_VERSION) => Ok(v),
        crate::lungs::LUNGS_FORMAT_VERSION => Err(Error::ModelFile(
            "this is a lung segmenter file (`pneumoscope lungs train`), not a classifier; \
             give it where a lung segmenter is asked for (`--lungs`)"
                .into(),
        )),
        v => Err(Error::ModelFile(format!(
            "format version {v} is not supported (this build reads versions {FORMAT_VERSION} \
             and {ENSEMBLE_FORMAT_VERSION}; a newer Pneumoscope may read it)"
        ))),
    }
}

/// The architectures of a file's networks, read from its header alone (nothing verified
/// beyond the prefix and the JSON): one for a single-network file, the members of an ensemble.
pub fn network_archs(bytes: &[u8]) -> Result<Vec<String>> {
    Ok(match format_version(bytes)? {
        ENSEMBLE_FORMAT_VERSION => split_header::<EnsembleHeader>(bytes)?
            .0
            .members
            .into_iter()
            .map(|m| m.arch)
            .collect(),
        _ => vec![split_header::<ModelHeader>(bytes)?.0.arch],
    })
}

/// The JSON header after the prefix, and the payload after it.
pub(crate) fn split_header<H: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<(H, &[u8])> {
    let hlen = u32::from_le_bytes(bytes[16..20].try_into().unwrap());
    if hlen > MAX_HEADER || 20 + hlen as usize > bytes.len() {
        return Err(Error::ModelFile(format!(
            "truncated header (declares {hlen} bytes, the file has {} after the prefix)",
            bytes.len() - 20
        )));
    }
    let header: H = serde_json::from_slice(&bytes[20..20 + hlen as usize])
        .map_err(|e| Error::ModelFile(format!("unreadable header: {e}")))?;
    Ok((header, &bytes[20 + hlen as usize..]))
}

/// The prefix, the JSON header and the payload, in the layout every version shares.
pub(crate) fn assemble(version: u32, header: &impl Serialize, payload: &[&[u8]]) -> Vec<u8> {
    let header = serde_json::to_vec_pretty(header).expect("header serialises");
    let len: usize = payload.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(20 + header.len() + len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
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
        return Err(Error::ModelFile(format!(
            "checksum mismatch (the {what} are corrupt: sha256 {sum}, expected {sha256})"
        )));
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
    pub combine: String,
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

/// An ensemble file in memory: its header and its verified members.
#[derive(Clone, Debug)]
pub struct EnsembleFile {
    /// The header.
    pub header: EnsembleHeader,
    /// The members, each a complete single-network model file.
    pub members: Vec<ModelFile>,
    /// The lung decoder's weights, when the header declares a lung section.
    pub lungs: Option<Vec<u8>>,
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
        let mut whole = Sha256::new();
        for p in &payloads {
            whole.update(p);
        }
        let header = EnsembleHeader {
            format_version: ENSEMBLE_FORMAT_VERSION,
            classes: Class::ALL.to_vec(),
            combine: COMBINE_MEAN.into(),
            members: members
                .iter()
                .zip(&payloads)
                .map(|(m, p)| MemberEntry {
                    arch: m.header.arch.clone(),
                    len: p.len() as u64,
                    sha256: sha256_hex(p),
                })
                .collect(),
            metrics,
            extra,
            lungs: None,
            created_by: format!("pneumoscope {}", env!("CARGO_PKG_VERSION")),
            payload_len: payloads.iter().map(|p| p.len() as u64).sum(),
            payload_sha256: whole
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        };
        Ok(Self {
            header,
            members,
            lungs: None,
        })
    }

    /// The file with a lung segmenter's decoder added (or replaced); see
    /// [`ModelFile::with_lungs`].
    pub fn with_lungs(mut self, section: LungsSection, decoder: Vec<u8>) -> Self {
        self.header.lungs = Some(sealed(section, &decoder));
        self.lungs = Some(decoder);
        self
    }

    /// Serialises the file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let payloads: Vec<Vec<u8>> = self.members.iter().map(ModelFile::to_bytes).collect();
        let mut parts: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        parts.extend(self.lungs.as_deref());
        assemble(ENSEMBLE_FORMAT_VERSION, &self.header, &parts)
    }

    /// Parses and verifies an ensemble file: prefix, header, the whole payload's length and
    /// checksum, then each member as a model file of its own (a damaged member is named by
    /// its position and architecture).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if format_version(bytes)? != ENSEMBLE_FORMAT_VERSION {
            return Err(Error::ModelFile(
                "a single-network model file, not an ensemble".into(),
            ));
        }
        let (header, rest): (EnsembleHeader, _) = split_header(bytes)?;
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
        if header.classes != Class::ALL {
            return Err(Error::ModelFile(format!(
                "unexpected classes {:?} (expected normal, bacterial, viral, covid19)",
                header.classes
            )));
        }
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
        let spec = arch::find(arch).unwrap();
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
            population: None,
            lungs: None,
            region: Default::default(),
            created_by: "test".into(),
            payload_len: 0,
            payload_sha256: String::new(),
        }
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
        assert_eq!(format_version(&bytes).unwrap(), ENSEMBLE_FORMAT_VERSION);
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
        future[12] = 4;
        let msg = format_version(&future).unwrap_err().to_string();
        assert!(msg.contains("format version 4"), "{msg}");
    }
}
