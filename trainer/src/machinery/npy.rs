//! Reading and writing float32 `.npy` arrays (through `npyz`).

use anyhow::{Context, Result, bail};
use npyz::WriterBuilder;
use std::path::Path;

/// Reads a float32 `.npy` file: its shape and values.
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .with_context(|| format!("{}: not a valid .npy file", path.display()))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if npy.order() != npyz::Order::C {
        bail!("{}: only C-ordered arrays are supported", path.display());
    }
    let values: Vec<f32> = npy
        .into_vec()
        .with_context(|| format!("{}: expected a float32 array", path.display()))?;
    Ok((shape, values))
}

/// Writes a float32 `.npy` file.
pub fn write_f32(path: &Path, shape: &[usize], values: &[f32]) -> Result<()> {
    let mut buf = Vec::new();
    let shape64: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&shape64)
        .writer(&mut buf)
        .begin_nd()?;
    w.extend(values.iter().copied())?;
    w.finish()?;
    std::fs::write(path, buf).with_context(|| format!("cannot write {}", path.display()))
}
