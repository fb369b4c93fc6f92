//! Choosing the compute devices: the pure-Rust CPU backend (Flex, multi-threaded) by default,
//! Vulkan or CUDA when the trainer was built with the `vulkan` or `cuda` feature. A list of
//! devices (`cuda:0,cuda:1`) is what data-parallel training runs on (see [`crate::machinery::parallel`]).

use anyhow::{Context, Result, bail};
use burn::prelude::*;

/// A compute device as the command line names it: `cpu`, `vulkan`, `vulkan:N` (the N-th
/// discrete GPU), `cuda` or `cuda:N`. Naming one checks only its spelling; [`DeviceName::open`]
/// starts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceName {
    /// The pure-Rust CPU backend (Flex).
    Cpu,
    /// A Vulkan device: the default one, or the N-th discrete GPU.
    Vulkan(Option<usize>),
    /// A CUDA device: the first, or the N-th.
    Cuda(Option<usize>),
}

impl std::str::FromStr for DeviceName {
    type Err = anyhow::Error;
    fn from_str(name: &str) -> Result<Self> {
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
            "cpu" if index.is_none() => Ok(DeviceName::Cpu),
            "cpu" => bail!("device '{name}': the CPU device has no index (write `cpu`)"),
            "vulkan" => Ok(DeviceName::Vulkan(index)),
            "cuda" => Ok(DeviceName::Cuda(index)),
            other => bail!("unknown device '{other}' (expected cpu, vulkan[:N] or cuda[:N])"),
        }
    }
}

impl std::fmt::Display for DeviceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, index) = match self {
            DeviceName::Cpu => ("cpu", None),
            DeviceName::Vulkan(i) => ("vulkan", *i),
            DeviceName::Cuda(i) => ("cuda", *i),
        };
        match index {
            Some(i) => write!(f, "{kind}:{i}"),
            None => f.write_str(kind),
        }
    }
}

impl DeviceName {
    /// Starts the device (a clear error when this build or machine has none of its kind).
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceName::Cpu => Ok(Device::flex()),
            DeviceName::Vulkan(index) => vulkan(index),
            DeviceName::Cuda(index) => cuda(index),
        }
    }

    /// Whether this is the CPU backend.
    pub fn is_cpu(self) -> bool {
        self == DeviceName::Cpu
    }
}

/// A comma-separated list of devices of one kind (`cpu`, `cuda:0,cuda:1`, `vulkan:0,vulkan:1`),
/// the first the main device: what data-parallel training runs on (`--devices`). `cpu,cpu`
/// names the one CPU device twice: its replicas then run one after the other (the
/// data-parallel path on a machine without GPUs). Written as the list's text in a run's
/// `config.json`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceList(Vec<DeviceName>);

impl std::str::FromStr for DeviceList {
    type Err = anyhow::Error;
    fn from_str(names: &str) -> Result<Self> {
        let names: Vec<&str> = names.split(',').map(str::trim).collect();
        if names.iter().any(|n| n.is_empty()) {
            bail!("device list '{}': empty entry", names.join(","));
        }
        let list = names
            .iter()
            .map(|n| n.parse())
            .collect::<Result<Vec<DeviceName>>>()?;
        let kind = |d: &DeviceName| std::mem::discriminant(d);
        if list.iter().any(|d| kind(d) != kind(&list[0])) {
            bail!(
                "device list '{}': all devices must be of one kind",
                names.join(",")
            );
        }
        Ok(DeviceList(list))
    }
}

impl std::fmt::Display for DeviceList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&names.join(","))
    }
}

impl From<DeviceList> for String {
    fn from(l: DeviceList) -> String {
        l.to_string()
    }
}

impl TryFrom<String> for DeviceList {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse().map_err(|e: anyhow::Error| format!("{e:#}"))
    }
}

impl Default for DeviceList {
    /// The CPU.
    fn default() -> Self {
        DeviceList(vec![DeviceName::Cpu])
    }
}

impl DeviceList {
    /// Starts every device of the list, in order.
    pub fn open(&self) -> Result<Vec<Device>> {
        self.0.iter().map(|d| d.open()).collect()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_read_and_write_as_their_text() {
        for text in ["cpu", "cpu,cpu", "cuda:0,cuda:1", "vulkan", "vulkan:1"] {
            let list: DeviceList = text.parse().unwrap();
            assert_eq!(list.to_string(), text);
            let json = serde_json::to_string(&list).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<DeviceList>(&json).unwrap(), list);
        }
        let bad = serde_json::from_str::<DeviceList>("\"cpu,cuda\"").unwrap_err();
        assert!(
            bad.to_string().contains("all devices must be of one kind"),
            "{bad}"
        );
        assert_eq!(DeviceList::default().to_string(), "cpu");
        assert!("cpu,cpu".parse::<DeviceName>().is_err());
    }
}
