//! # Pneumoscope core
//!
//! The platform-neutral half of Pneumoscope, compiled both natively (for the trainer and the CLI)
//! and for `wasm32-unknown-unknown` (for the browser):
//!
//! - [`classes`]: the four classes and their fixed order;
//! - [`arch`]: the registry of architectures (builder, weight-key remap, Grad-CAM layer, input
//!   configuration) and their Burn implementations;
//! - [`model`]: a backbone with the paper's classification head;
//! - [`preprocess`]: image decoding (PNG, JPEG and, through [`dicom`], DICOM) and the
//!   evaluation transform, shared by every caller;
//! - [`gradcam`]: Grad-CAM on the architecture's target layer;
//! - [`model_file`]: the self-describing model file written by `pneumoscope export`;
//! - [`ood`]: the out-of-distribution score (distance to the training features);
//! - [`inference`]: load a model file, classify an image, explain it;
//! - [`lungs`]: the lung segmenter, its file, and the share of a Grad-CAM map inside the lungs;
//! - [`population`]: the child/adult estimate and the caution it gives;
//! - [`fuzzing`]: the bodies of the fuzz targets in `fuzz/`, replayed by the tests;
//! - `web` (wasm32 only): the JavaScript API of `pkg/`, built with `wasm-bindgen`.
//!
//! This is a research and teaching tool, not a medical device.

pub mod arch;
pub mod classes;
pub mod dicom;
pub mod error;
pub mod fuzzing;
pub mod gradcam;
pub mod inference;
pub mod int8;
pub mod lungs;
pub mod model;
pub mod model_file;
pub mod ood;
pub mod population;
pub mod preprocess;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
mod wasm_libc;

/// Runs an operation written once as `async` to completion on the calling thread: the blocking
/// form of the core's operations, for native callers. Every device read in the core is
/// asynchronous, the only kind WebGPU in a browser allows; on the CPU backend it is ready at
/// once, on a native GPU backend this waits for the device. (The browser awaits the `async`
/// form instead: its WebGPU reads need the event loop.)
pub fn block_on<F: std::future::Future>(operation: F) -> F::Output {
    futures_lite::future::block_on(operation)
}
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use classes::{Class, NUM_CLASSES};
pub use error::{Error, Result};
