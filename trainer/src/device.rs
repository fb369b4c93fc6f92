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
    probe(Device::vulkan(Default::default()), "Vulkan")
}
#[cfg(not(feature = "vulkan"))]
fn vulkan() -> Result<Device> {
    bail!(
        "this build has no Vulkan support; rebuild with `cargo build --release -p pneumoscope-trainer --features vulkan`"
    )
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Device> {
    probe(Device::cuda(0), "CUDA")
}

/// Starts a GPU device with one tiny operation: the runtime panics (on its own thread, then on
/// ours) when there is no adapter or driver, which becomes a clear error here.
#[cfg(any(feature = "vulkan", feature = "cuda"))]
fn probe(device: Device, name: &str) -> Result<Device> {
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = std::panic::catch_unwind(|| {
        Tensor::<1>::zeros([1], &device).into_data();
    });
    std::panic::set_hook(quiet);
    started.map(|_| device.clone()).map_err(|_| {
        anyhow::anyhow!(
            "no {name} device could be started on this machine (no adapter or driver found)"
        )
    })
}
#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Device> {
    bail!(
        "this build has no CUDA support; rebuild with `cargo build --release -p pneumoscope-trainer --features cuda`"
    )
}
