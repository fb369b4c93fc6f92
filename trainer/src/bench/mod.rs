//! Measuring the core: throughput of inference and training against the reference
//! ([`throughput`]) and raw logits for the parity check with PyTorch ([`forward`]).

pub mod forward;
pub mod throughput;
