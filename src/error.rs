//! The error type of the core library.

use thiserror::Error;

/// Everything that can go wrong in the core library. Messages are written for the person who
/// supplied the input: they say what is wrong and, where it helps, what to do.
#[derive(Debug, Error)]
pub enum Error {
    /// An image could not be decoded (unreadable, corrupt, unsupported) or is out of range.
    #[error("cannot read image: {0}")]
    Decode(String),
    /// Not a model file at all: its first bytes are not Pneumoscope's magic.
    #[error(
        "invalid model file: not a Pneumoscope model file (wrong magic bytes; expected a file \
         written by `pneumoscope export` or `pneumoscope ensemble`)"
    )]
    NotAModelFile,
    /// A model file of a format version this build does not read.
    #[error(
        "invalid model file: format version {found} is not supported (this build reads \
         versions {oldest_sealed} to {newest}, and 1 to 3, their earlier unsealed forms; a newer \
         Pneumoscope may read it)"
    )]
    UnsupportedVersion {
        /// The version the file's prefix gives.
        found: u32,
        /// The first sealed version.
        oldest_sealed: u32,
        /// The newest version this build reads.
        newest: u32,
    },
    /// The seal over a model file's prefix and header does not match: one of them was changed.
    #[error(
        "invalid model file: header checksum mismatch (the header or the prefix before it is \
         corrupt or was edited; a model file cannot be changed by hand, export it again)"
    )]
    HeaderChecksum,
    /// A payload's SHA-256 is not the one its header declares.
    #[error(
        "invalid model file: checksum mismatch (the {part} are corrupt: sha256 {found}, expected {expected})"
    )]
    Checksum {
        /// Which payload: "weights", "member models", "lung segmenter weights", ...
        part: String,
        /// The checksum of the bytes found.
        found: String,
        /// The checksum the header declares.
        expected: String,
    },
    /// A model file's header holds a value this build cannot use (sizes, ranges, statistics).
    #[error("invalid model file: invalid header: {0}")]
    InvalidHeader(String),
    /// A model file is otherwise corrupt, truncated, inconsistent or of the wrong kind.
    #[error("invalid model file: {0}")]
    ModelFile(String),
    /// A weights record could not be read, written or applied; Burn's error is the source.
    #[error("invalid model file: {what}: {source}")]
    Record {
        /// What was being done: "unreadable weights", "the weights do not fit the lung
        /// decoder", ...
        what: String,
        /// Burn's error.
        #[source]
        source: burn::store::RecordError,
    },
    /// Weights could not be applied to an architecture.
    #[error("cannot load weights: {0}")]
    Weights(String),
    /// An architecture name is not in the registry.
    #[error("unknown architecture '{0}' (known: {1})")]
    UnknownArch(String, String),
    /// A result could not be read back from the device (a lost GPU device, or data of an
    /// unexpected type).
    #[error("cannot read {what} back from the device: {source}")]
    DeviceRead {
        /// What was being read: "the probabilities", "the Grad-CAM map", ...
        what: &'static str,
        /// The backend's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A request that makes no sense for this model (bad class index, wrong input shape, ...).
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of the core library.
pub type Result<T> = std::result::Result<T, Error>;
