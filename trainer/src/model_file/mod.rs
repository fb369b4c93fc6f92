//! What goes into a model file: a finished run packed with its description ([`export`]), the
//! temperature ([`calibrate`]), the
//! out-of-distribution statistics ([`ood`]) and the child/adult estimate ([`population`]);
//! int8 weights ([`int8`]); and loading a model file with a message that names it
//! ([`load_engine`]).

pub mod calibrate;
pub mod export;
pub mod int8;
pub mod ood;
pub mod population;

use anyhow::{Context, Result, anyhow};
use burn::prelude::Device;
use pneumoscope::inference::Engine;
use std::path::Path;

/// Loads a model file with a message naming it on failure. A file of an earlier format,
/// whose header carries no checksum, is loaded with a warning on stderr that says so.
pub fn load_engine(path: &Path, device: &Device) -> Result<Engine> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read model file {}", path.display()))?;
    let engine =
        Engine::load(&bytes, device.clone()).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if let Some(notice) = engine.notice() {
        eprintln!("warning: {}: {notice}", path.display());
    }
    Ok(engine)
}
