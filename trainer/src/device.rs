//! Choosing the compute device: the pure-Rust CPU backend (Flex, multi-threaded) by default,
//! Vulkan or CUDA when the trainer was built with the `vulkan` or `cuda` feature.

use anyhow::{Result, bail};
use burn::prelude::*;

/// Parses `cpu`, `vulkan` or `cuda` into a device.
pub fn parse(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::flex()),
        "vulkan" => vulkan(),
        "cuda" => cuda(),
        other => bail!("unknown device '{other}' (expected cpu, vulkan or cuda)"),
    }
}

#[cfg(feature = "vulkan")]
fn vulkan() -> Result<Device> {
    Ok(Device::vulkan(Default::default()))
}
#[cfg(not(feature = "vulkan"))]
fn vulkan() -> Result<Device> {
    bail!(
        "this build has no Vulkan support; rebuild with `cargo build --release -p pneumoscope-trainer --features vulkan`"
    )
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Device> {
    Ok(Device::cuda(0))
}
#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Device> {
    bail!(
        "this build has no CUDA support; rebuild with `cargo build --release -p pneumoscope-trainer --features cuda`"
    )
}
