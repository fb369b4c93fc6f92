//! The error type of the core library.

use thiserror::Error;

/// Everything that can go wrong in the core library. Messages are written for the person who
/// supplied the input: they say what is wrong and, where it helps, what to do.
#[derive(Debug, Error)]
pub enum Error {
    /// An image could not be decoded or is out of range.
    #[error("cannot read image: {0}")]
    Image(String),
    /// A model file is corrupt, truncated, foreign or of an unsupported version.
    #[error("invalid model file: {0}")]
    ModelFile(String),
    /// Weights could not be applied to an architecture.
    #[error("cannot load weights: {0}")]
    Weights(String),
    /// An architecture name is not in the registry.
    #[error("unknown architecture '{0}' (known: {1})")]
    UnknownArch(String, String),
    /// A request that makes no sense for this model (bad class index, wrong input shape, ...).
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of the core library.
pub type Result<T> = std::result::Result<T, Error>;
