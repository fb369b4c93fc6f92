//! The run machinery every long job shares: checkpoints ([`checkpoint`]), atomic files
//! ([`fsutil`]), progress bars ([`progress`]), compute devices ([`device`], [`parallel`]),
//! the optimiser ([`adam`]), half-precision copies ([`precision`]), `.npy` arrays ([`npy`]) and
//! the command line's defaults as values ([`args`]). The bottom floor: it imports no other
//! room of the trainer.

pub mod adam;
pub mod args;
pub mod checkpoint;
pub mod device;
pub mod fsutil;
pub mod npy;
pub mod parallel;
pub mod precision;
pub mod progress;
