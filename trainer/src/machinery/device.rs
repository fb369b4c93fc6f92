//! Choosing the compute devices: the pure-Rust CPU backend (Flex, multi-threaded) by default,
//! Vulkan or CUDA when the trainer was built with the `vulkan` or `cuda` feature. A list of
//! devices (`cuda:0,cuda:1`) is what data-parallel training runs on (see [`crate::machinery::parallel`]).

use anyhow::{Context, Result, bail};
use burn::prelude::*;

/// Parses one device: `cpu`, `vulkan`, `vulkan:N` (the N-th discrete GPU), `cuda` or `cuda:N`.
/// A list is taken by [`parse_list`]; here it is refused, so a verb that runs on one device
/// says so instead of silently using the first.
pub fn parse(name: &str) -> Result<Device> {
    if name.contains(',') {
        bail!("'{name}': this command runs on one device (only `train` takes a list)");
    }
    let (kind, index) = match name.split_once(':') {
        Some((k, i)) => {
            let i: usize = i
                .parse()
                .with_context(|| format!("device '{name}': '{i}' is not a device index"))?;
            (k, Some(i))
        }
        None => (name, None),
    };
    match kind {
        "cpu" if index.is_none() => Ok(Device::flex()),
        "cpu" => bail!("device '{name}': the CPU device has no index (write `cpu`)"),
        "vulkan" => vulkan(index),
        "cuda" => cuda(index),
        other => bail!("unknown device '{other}' (expected cpu, vulkan[:N] or cuda[:N])"),
    }
}

/// Parses a comma-separated list of devices of one kind (`cpu`, `cuda:0,cuda:1`,
/// `vulkan:0,vulkan:1`); the first is the main device. `cpu,cpu` names the one CPU device
/// twice: its replicas then run one after the other (the data-parallel path on a machine
/// without GPUs).
pub fn parse_list(names: &str) -> Result<Vec<Device>> {
    let names: Vec<&str> = names.split(',').map(str::trim).collect();
    if names.iter().any(|n| n.is_empty()) {
        bail!("device list '{}': empty entry", names.join(","));
    }
    let kinds: Vec<&str> = names
        .iter()
        .map(|n| n.split(':').next().unwrap_or(n))
        .collect();
    if kinds.iter().any(|k| *k != kinds[0]) {
        bail!(
            "device list '{}': all devices must be of one kind",
            names.join(",")
        );
    }
    names.iter().map(|n| parse(n)).collect()
}

#[cfg(feature = "vulkan")]
fn vulkan(index: Option<usize>) -> Result<Device> {
    use burn::tensor::DeviceKind;
    let kind = index.map_or(DeviceKind::DefaultDevice, DeviceKind::DiscreteGpu);
    probe(Device::vulkan(kind), "Vulkan")
}
#[cfg(not(feature = "vulkan"))]
fn vulkan(_index: Option<usize>) -> Result<Device> {
    bail!(
        "this build has no Vulkan support; rebuild with `cargo build --release -p pneumoscope-trainer --features vulkan`"
    )
}

#[cfg(feature = "cuda")]
fn cuda(index: Option<usize>) -> Result<Device> {
    probe(Device::cuda(index.unwrap_or(0)), "CUDA")
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
fn cuda(_index: Option<usize>) -> Result<Device> {
    bail!(
        "this build has no CUDA support; rebuild with `cargo build --release -p pneumoscope-trainer --features cuda`"
    )
}
